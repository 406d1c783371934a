//! `cargo xtask setup`: installs what each task needs on a fresh Debian 12 machine, and no more.
//!
//! Three scopes, each a superset of the one before: [`Scope::Run`] is what building and running
//! the agent needs (the eBPF toolchain measured in shared/EBPF-TOOLCHAIN.md); [`Scope::Bench`]
//! adds the load tools; [`Scope::Test`] adds the clients, servers and SDKs the end-to-end tests
//! drive (and the bench's tools, since the tests run a smoke bench). Every step checks first and
//! only acts when something is missing, so a second run is fast.
//!
//! The BPF toolchain is installed only when something needs it: `test` always (CI rebuilds the
//! eBPF object and compares it with the committed one), `run` and `bench` only when the
//! committed object (agent-ebpf/prebuilt/) no longer matches the sources. An installed
//! toolchain, by either route of xtask/src/bpf_toolchain.rs (Debian's rustc-web, or rustup
//! nightly with rust-src), is used as it is.

use std::{process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::{
    ebpf_object::{
        self,
        toolchain::{self, Route},
    },
    exec::{cargo, exec, is_root, workspace_root},
};

/// What a task needs installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scope {
    /// Build and run the agent (`cargo xtask run`, `build`).
    Run,
    /// Also the benchmark's load tools (`cargo xtask bench`).
    Bench,
    /// Also the end-to-end tests' clients, servers and SDKs (`cargo xtask test`).
    Test,
}

/// Debian's rustc 1.96 with a prebuilt `core` for bpfel-unknown-none (rustup has no rust-src
/// here, so `-Z build-std` is impossible), and LLVM 22 for bpf-linker. rustc-web 1.96 and the
/// `-bpf` package come from bookworm-security.
const RUN_APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];
/// The benchmark: nginx as the server, wrk for saturation (Debian has no wrk2, vegeta or oha;
/// the fixed-rate load is the bench's own generator), bpftool for the kernel floor and
/// `bpf_stats`, curl to check the server.
const BENCH_APT_PACKAGES: &[&str] = &["nginx-light", "wrk", "bpftool", "curl"];
/// The end-to-end tests: curl and Python clients and servers, iproute2 for network namespaces,
/// bpftool to check that programs are detached, and Debian's Go 1.19 to check the Go TLS
/// probes on an older Go than the one on PATH.
const TEST_APT_PACKAGES: &[&str] = &["curl", "iproute2", "bpftool", "python3", "golang-go"];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13";

/// The OpenTelemetry Python SDK, grpcio and the OpenTelemetry gRPC interceptors, for the
/// instrumented applications the end-to-end tests run (tests/fixtures/otel_app.py and
/// grpc_app.py). Pinned so that test runs are repeatable.
const PIP_PACKAGES: &[&str] = &[
    "opentelemetry-sdk==1.45.2",
    "opentelemetry-exporter-otlp-proto-http==1.45.2",
    "opentelemetry-exporter-otlp-proto-grpc==1.45.2",
    "grpcio==1.85.3",
    "opentelemetry-instrumentation-grpc==0.66b2",
];
const PIP_IMPORT_CHECK: &str = "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, \
     opentelemetry.exporter.otlp.proto.grpc, grpc, opentelemetry.instrumentation.grpc";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Say what is checked and done.
    Verbose,
    /// Say only what is done (used by run/test/bench before building).
    Quiet,
}

impl Scope {
    /// The apt packages of this scope; the BPF toolchain's only with `bpf_toolchain`.
    fn apt_packages(self, bpf_toolchain: bool) -> Vec<&'static str> {
        let mut packages = if bpf_toolchain {
            RUN_APT_PACKAGES.to_vec()
        } else {
            Vec::new()
        };
        if self >= Scope::Bench {
            packages.extend(BENCH_APT_PACKAGES);
        }
        if self >= Scope::Test {
            packages.extend(TEST_APT_PACKAGES);
        }
        packages.sort_unstable();
        packages.dedup();
        packages
    }

    fn needs_python_sdk(self) -> bool {
        self >= Scope::Test
    }
}

/// What setup does about the BPF toolchain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BpfPlan {
    /// A complete route is installed: use it, install nothing.
    Use(Route),
    /// None is installed and none is needed: the committed object matches the sources, and
    /// the task does not rebuild it.
    Prebuilt,
    /// Install the Debian route (what is missing of it).
    Install,
}

/// `test` rebuilds the object from source (CI compares it with the committed one); `run` and
/// `bench` need a toolchain only when the committed object is stale.
fn bpf_plan(scope: Scope, installed: Option<Route>, prebuilt_fresh: bool) -> BpfPlan {
    match installed {
        Some(route) => BpfPlan::Use(route),
        None if prebuilt_fresh && scope < Scope::Test => BpfPlan::Prebuilt,
        None => BpfPlan::Install,
    }
}

pub fn run(scope: Scope, mode: Mode) -> Result<()> {
    run_with(scope, mode, false)
}

/// What `cargo xtask prebuilt` needs: the BPF toolchain, whatever the committed object.
pub fn bpf_toolchain(mode: Mode) -> Result<()> {
    run_with(Scope::Run, mode, true)
}

fn run_with(scope: Scope, mode: Mode, rebuild: bool) -> Result<()> {
    let started = Instant::now();
    let found = toolchain::Found::detect();
    let installed = found.toolchain().map(|tc| tc.compiler.route);
    let root = workspace_root();
    let prebuilt = ebpf_object::sources_sha256(&root)
        .map_err(|e| format!("{e:#}"))
        .and_then(|sources| ebpf_object::fresh_prebuilt(&root, &sources));
    let plan = bpf_plan(scope, installed, prebuilt.is_ok() && !rebuild);
    if mode == Mode::Verbose {
        eprintln!("setup: BPF toolchain found:\n{}", indent(&found.report()));
    }
    match plan {
        BpfPlan::Use(route) if mode == Mode::Verbose => {
            eprintln!(
                "setup: using the {} route: the agent's build builds the eBPF object from source",
                route.name()
            );
        }
        BpfPlan::Use(_) => {}
        BpfPlan::Prebuilt => eprintln!(
            "setup: no BPF toolchain installed, and none needed: the committed {} matches the \
             sources, so the agent builds with stable Rust alone",
            ebpf_object::PREBUILT_OBJECT
        ),
        BpfPlan::Install => eprintln!(
            "setup: installing the BPF toolchain (Debian route): {}",
            match (&prebuilt, rebuild, scope) {
                (_, true, _) =>
                    "`cargo xtask prebuilt` builds the eBPF object from source".to_owned(),
                (_, false, Scope::Test) =>
                    "the tests rebuild the eBPF object from source".to_owned(),
                (Err(why), _, _) => format!(
                    "the committed {} cannot be used ({why})",
                    ebpf_object::PREBUILT_OBJECT
                ),
                (Ok(_), _, _) => "no usable route is installed".to_owned(),
            }
        ),
    }

    let install_bpf = plan == BpfPlan::Install;
    let wanted = scope.apt_packages(install_bpf);
    // No dpkg-query when there is nothing to ask about (`run` with the prebuilt object works on
    // any distribution).
    let missing_packages = if wanted.is_empty() {
        Vec::new()
    } else {
        missing_apt_packages(&wanted)?
    };
    let bpf_rustc_ok = !install_bpf || found.debian.is_ok();
    let linker_ok = !install_bpf || found.linker.is_ok();
    let pip_ok = !scope.needs_python_sdk() || python_sdk_installed();

    if missing_packages.is_empty() && bpf_rustc_ok && linker_ok && pip_ok {
        if mode == Mode::Verbose {
            eprintln!(
                "setup ({scope:?}): nothing to install ({} apt packages checked{}) — in {:.2?}",
                wanted.len(),
                if scope.needs_python_sdk() {
                    ", Python test fixtures"
                } else {
                    ""
                },
                started.elapsed()
            );
        }
        return Ok(());
    }

    if !is_root() && (!missing_packages.is_empty() || !bpf_rustc_ok) {
        bail!(
            "setup needs root to install apt packages ({}). Run `sudo -E cargo xtask setup` (or \
             run as root).",
            if missing_packages.is_empty() {
                "rustc-web upgrade".to_owned()
            } else {
                missing_packages.join(" ")
            }
        );
    }

    if !missing_packages.is_empty() || !bpf_rustc_ok {
        let mut to_install = missing_packages.clone();
        if !bpf_rustc_ok && !to_install.iter().any(|p| p == "rustc-web") {
            to_install.extend(["rustc-web".to_owned(), "libstd-rust-web-dev-bpf".to_owned()]);
        }
        eprintln!(
            "setup: apt-get update (rustc-web 1.96 and its BPF core come from bookworm-security)"
        );
        exec(apt().args(["update", "-q"]))?;
        eprintln!("setup: apt-get install {}", to_install.join(" "));
        exec(
            apt()
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&to_install)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if install_bpf {
            if let Err(why) = toolchain::Found::detect().debian {
                bail!(
                    "after installing rustc-web/libstd-rust-web-dev-bpf the Debian route is still \
                     incomplete: {why}. Is bookworm-security in the apt sources (and is {} unset)?",
                    toolchain::RUSTC_ENV
                );
            }
        }
        if to_install.iter().any(|p| p == "nginx-light") {
            // Debian starts the packaged nginx on port 80; the benchmark runs its own instance.
            let _stopped: std::io::Result<std::process::ExitStatus> = Command::new("systemctl")
                .stdout(std::io::stderr())
                .args(["disable", "--now", "nginx"])
                .status();
        }
    }

    if !linker_ok {
        eprintln!(
            "setup: cargo install bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about 1.5 minutes)"
        );
        exec(
            cargo()
                .args(["install", "bpf-linker", "--version"])
                .arg(format!("~{BPF_LINKER_VERSION}"))
                .args(["--no-default-features", "--features", "llvm-22"])
                // Without LLVM_PREFIX its build script looks in /usr: "unable to find -lLLVM".
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env_remove("RUSTC")
                .env_remove("CARGO_TARGET_DIR"),
        )?;
    }

    if !pip_ok {
        eprintln!(
            "setup: pip install {} (test fixtures)",
            PIP_PACKAGES.join(" ")
        );
        exec(
            Command::new("python3")
                .stdout(std::io::stderr())
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(PIP_PACKAGES),
        )?;
    }

    eprintln!("setup ({scope:?}): done in {:.1?}", started.elapsed());
    Ok(())
}

/// apt-get with its progress on stderr: stdout belongs to the agent that `cargo xtask run`
/// starts next (`cargo xtask run -- --output json > findings.jsonl`).
fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.stdout(std::io::stderr());
    cmd
}

fn missing_apt_packages(packages: &[&str]) -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(packages)
        .output()
        .context("failed to run dpkg-query: is this a Debian machine?")?;
    // dpkg-query exits 1 when some package is unknown; the listed lines are still valid.
    let listed = String::from_utf8_lossy(&output.stdout);
    Ok(packages
        .iter()
        .filter(|pkg| {
            !listed.lines().any(|line| {
                let mut parts = line.split_whitespace();
                parts.next() == Some(pkg) && parts.next() == Some("ii")
            })
        })
        .map(|pkg| (*pkg).to_owned())
        .collect())
}

/// Each line of `text`, indented.
fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn python_sdk_installed() -> bool {
    Command::new("python3")
        .args(["-c", PIP_IMPORT_CHECK])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_the_agent_installs_no_test_or_bench_package() {
        let run = Scope::Run.apt_packages(true);
        for pkg in TEST_APT_PACKAGES.iter().chain(BENCH_APT_PACKAGES) {
            assert!(!run.contains(pkg), "{pkg} is installed for `run`");
        }
        assert!(!Scope::Run.needs_python_sdk());
    }

    #[test]
    fn scopes_grow() {
        for bpf in [false, true] {
            let (run, bench, test) = (
                Scope::Run.apt_packages(bpf),
                Scope::Bench.apt_packages(bpf),
                Scope::Test.apt_packages(bpf),
            );
            assert!(run.iter().all(|p| bench.contains(p)));
            assert!(bench.iter().all(|p| test.contains(p)));
        }
    }

    #[test]
    fn a_fresh_prebuilt_object_installs_no_bpf_toolchain_for_run_or_bench() {
        for scope in [Scope::Run, Scope::Bench] {
            assert_eq!(bpf_plan(scope, None, true), BpfPlan::Prebuilt);
        }
        assert!(Scope::Run.apt_packages(false).is_empty());
        for pkg in RUN_APT_PACKAGES {
            assert!(!Scope::Bench.apt_packages(false).contains(pkg), "{pkg}");
        }
    }

    #[test]
    fn a_stale_prebuilt_object_or_the_tests_install_the_debian_route() {
        for scope in [Scope::Run, Scope::Bench, Scope::Test] {
            assert_eq!(bpf_plan(scope, None, false), BpfPlan::Install);
        }
        assert_eq!(bpf_plan(Scope::Test, None, true), BpfPlan::Install);
    }

    #[test]
    fn an_installed_route_is_used_as_it_is() {
        for route in [Route::Debian, Route::RustupNightly] {
            for scope in [Scope::Run, Scope::Test] {
                for fresh in [false, true] {
                    assert_eq!(bpf_plan(scope, Some(route), fresh), BpfPlan::Use(route));
                }
            }
        }
    }
}
