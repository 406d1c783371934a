//! `cargo xtask setup`: installs the eBPF toolchain measured in shared/EBPF-TOOLCHAIN.md on a
//! fresh Debian 12 machine, and mounts the kernel filesystems the agent needs.
//!
//! Every step checks first and only acts when something is missing, so a second run is fast.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::exec::{cargo, cargo_bin_dir, exec, is_root};

/// Debian packages: Debian's rustc 1.96 with a prebuilt `core` for bpfel-unknown-none (rustup has
/// no rust-src here, so `-Z build-std` is impossible), LLVM 22 for bpf-linker, and the tools the
/// end-to-end tests drive. rustc-web 1.96 and the `-bpf` package come from bookworm-security.
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "curl",
    "iproute2",
    "bpftool",
    "python3",
];
/// Only for the tests, not in the image (deploy/Dockerfile): Go's crypto/tls capture tests build
/// a Go HTTPS client and server (Go 1.19 on bookworm).
const TEST_APT_PACKAGES: &[&str] = &["golang-go"];

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
    "grpcio==1.85.3",
    "opentelemetry-instrumentation-grpc==0.66b2",
];
const PIP_IMPORT_CHECK: &str = "import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, \
     grpc, opentelemetry.instrumentation.grpc";

const BPFFS: &str = "/sys/fs/bpf";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Say what is checked and done.
    Verbose,
    /// Say only what is done (used by run/test before building).
    Quiet,
}

pub fn run(mode: Mode) -> Result<()> {
    let started = Instant::now();
    let missing_packages = missing_apt_packages()?;
    let bpf_rustc_ok = bpf_rustc_is_recent();
    let linker_ok = bpf_linker_installed();
    let mounts = missing_mounts()?;
    let pip_ok = python_sdk_installed();

    if missing_packages.is_empty() && bpf_rustc_ok && linker_ok && mounts.is_empty() && pip_ok {
        if mode == Mode::Verbose {
            eprintln!(
                "setup: everything present (apt packages, {BPF_RUSTC} >= 1.{MIN_BPF_RUSTC_MINOR}, \
                 bpf-linker, Python test fixtures, bpffs) — checked in {:.2?}",
                started.elapsed()
            );
        }
        return Ok(());
    }

    if !is_root() {
        let mut needs = Vec::new();
        if !missing_packages.is_empty() || !bpf_rustc_ok {
            needs.push(format!(
                "installing apt packages ({})",
                if missing_packages.is_empty() {
                    "rustc-web upgrade".to_owned()
                } else {
                    missing_packages.join(" ")
                }
            ));
        }
        if !mounts.is_empty() {
            needs.push(format!("mounting {}", mounts.join(" and ")));
        }
        if !needs.is_empty() {
            bail!(
                "setup needs root for: {}. Run `sudo -E cargo xtask setup` (or run as root).",
                needs.join("; ")
            );
        }
    }

    if !missing_packages.is_empty() || !bpf_rustc_ok {
        let mut to_install = missing_packages.clone();
        if !bpf_rustc_ok && !to_install.iter().any(|p| p == "rustc-web") {
            to_install.extend(["rustc-web".to_owned(), "libstd-rust-web-dev-bpf".to_owned()]);
        }
        eprintln!(
            "setup: apt-get update (rustc-web 1.96 and its BPF core come from bookworm-security)"
        );
        exec(Command::new("apt-get").args(["update", "-q"]))?;
        eprintln!("setup: apt-get install {}", to_install.join(" "));
        exec(
            Command::new("apt-get")
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

    for mount in &mounts {
        mount_fs(mount)?;
    }
    eprintln!("setup: done in {:.1?}", started.elapsed());
    Ok(())
}

fn missing_apt_packages() -> Result<Vec<String>> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${db:Status-Abbrev}\n"])
        .args(APT_PACKAGES)
        .args(TEST_APT_PACKAGES)
        .output()
        .context("failed to run dpkg-query: is this a Debian machine?")?;
    // dpkg-query exits 1 when some package is unknown; the listed lines are still valid.
    let listed = String::from_utf8_lossy(&output.stdout);
    Ok(APT_PACKAGES
        .iter()
        .chain(TEST_APT_PACKAGES)
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

fn missing_mounts() -> Result<Vec<&'static str>> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("failed to read /proc/mounts")?;
    let mounted = |fstype: &str, dir: &str| {
        mounts.lines().any(|line| {
            let mut f = line.split_whitespace();
            let (_, mountpoint, ty) = (f.next(), f.next(), f.next());
            mountpoint == Some(dir) && ty == Some(fstype)
        })
    };
    let mut missing = Vec::new();
    if !mounted("bpf", BPFFS) {
        missing.push(BPFFS);
    }
    Ok(missing)
}

fn mount_fs(dir: &str) -> Result<()> {
    let fstype = "bpf";
    eprintln!("setup: mount -t {fstype} {fstype} {dir}");
    exec(Command::new("mount").args(["-t", fstype, fstype, dir]))
}
