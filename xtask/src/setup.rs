//! `cargo xtask setup`: installs what each task needs on a fresh Debian 12 machine, and no more.
//!
//! Three scopes, each a superset of the one before: [`Scope::Run`] is what building and running
//! the agent needs (the eBPF toolchain measured in shared/EBPF-TOOLCHAIN.md); [`Scope::Bench`]
//! adds the load tools; [`Scope::Test`] adds the clients, servers and SDKs the end-to-end tests
//! drive (and the bench's tools, since the tests run a smoke bench). Every step checks first and
//! only acts when something is missing, so a second run is fast.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::exec::{cargo, cargo_bin_dir, exec, is_root};

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

/// The compiler used for the eBPF crate (see agent/build.rs).
pub const BPF_RUSTC: &str = "/usr/bin/rustc";
const BPF_CORE_DIR: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13";
const MIN_BPF_RUSTC_MINOR: u32 = 96;

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
    fn apt_packages(self) -> Vec<&'static str> {
        let mut packages = RUN_APT_PACKAGES.to_vec();
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

pub fn run(scope: Scope, mode: Mode) -> Result<()> {
    let started = Instant::now();
    let missing_packages = missing_apt_packages(&scope.apt_packages())?;
    let bpf_rustc_ok = bpf_rustc_is_recent();
    let linker_ok = bpf_linker_installed();
    let pip_ok = !scope.needs_python_sdk() || python_sdk_installed();

    if missing_packages.is_empty() && bpf_rustc_ok && linker_ok && pip_ok {
        if mode == Mode::Verbose {
            eprintln!(
                "setup ({scope:?}): everything present ({} apt packages, {BPF_RUSTC} >= \
                 1.{MIN_BPF_RUSTC_MINOR}, bpf-linker{}) — checked in {:.2?}",
                scope.apt_packages().len(),
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
        if !bpf_rustc_is_recent() {
            bail!(
                "{BPF_RUSTC} is still older than 1.{MIN_BPF_RUSTC_MINOR} or {BPF_CORE_DIR} is missing \
                 after installing rustc-web/libstd-rust-web-dev-bpf: is bookworm-security in the apt sources?"
            );
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

fn bpf_rustc_is_recent() -> bool {
    if !Path::new(BPF_CORE_DIR).is_dir() {
        return false;
    }
    let Ok(output) = Command::new(BPF_RUSTC).arg("--version").output() else {
        return false;
    };
    // "rustc 1.96.0 (...)"
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1)?.parse::<u32>().ok())
        .is_some_and(|minor| minor >= MIN_BPF_RUSTC_MINOR)
}

fn bpf_linker_installed() -> bool {
    let linker = cargo_bin_dir().join("bpf-linker");
    Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
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
        let run = Scope::Run.apt_packages();
        for pkg in TEST_APT_PACKAGES.iter().chain(BENCH_APT_PACKAGES) {
            assert!(!run.contains(pkg), "{pkg} is installed for `run`");
        }
        assert!(!Scope::Run.needs_python_sdk());
    }

    #[test]
    fn scopes_grow() {
        let (run, bench, test) = (
            Scope::Run.apt_packages(),
            Scope::Bench.apt_packages(),
            Scope::Test.apt_packages(),
        );
        assert!(run.iter().all(|p| bench.contains(p)));
        assert!(bench.iter().all(|p| test.contains(p)));
    }
}
