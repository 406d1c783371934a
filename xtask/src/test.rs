//! `cargo xtask test`: set up if needed, build (the eBPF object from source), check the committed
//! eBPF object against it (prebuilt.rs), run unit tests, then the root end-to-end tests (one at a
//! time: they share the kernel's tracepoints and the loopback ports).

use anyhow::{bail, Result};

use crate::{
    build,
    exec::{cargo, exec, is_root, workspace_root},
    go, prebuilt, setup,
};

/// The package holding the end-to-end tests (tests/).
const E2E_PACKAGE: &str = "tracegap-tests";

#[derive(clap::Args)]
pub struct Options {
    /// Only run end-to-end tests whose name contains this.
    #[arg(long)]
    pub filter: Option<String>,
    /// Skip the unit tests.
    #[arg(long)]
    pub e2e_only: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and need root (CAP_BPF, CAP_PERFMON): \
             run `sudo -E cargo xtask test`, or run as root"
        );
    }
    setup::run(setup::Scope::Test, setup::Mode::Quiet)?;
    // The Go shop, its load generator and Jaeger (tests/tests/go_shop.rs), built beside the Rust
    // builds: on a fresh clone it downloads its modules for minutes, time the Rust compile can
    // use. A failure is reported with its reason and fails those tests, not the others.
    let go_build = std::thread::spawn(go::build);
    let built = build::build(&build::Options::default())?;
    let agent = built.binary.clone();

    let mut failures = Vec::new();
    // The committed eBPF object must be what its sources build into (agent-ebpf/prebuilt/).
    if let Err(e) = prebuilt::verify(&built) {
        eprintln!("test: prebuilt eBPF object: {e:#}");
        failures.push(format!("prebuilt eBPF object: {e:#}"));
    }
    if !opts.e2e_only {
        let mut unit = cargo();
        unit.current_dir(workspace_root()).args([
            "test",
            "--release",
            "--no-fail-fast",
            "--workspace",
            "--exclude",
            E2E_PACKAGE,
        ]);
        build::agent_build_env(&mut unit);
        if let Err(e) = exec(&mut unit) {
            failures.push(format!("unit tests: {e:#}"));
        }
    }

    let go_bin = match go_build.join() {
        Ok(Ok(dir)) => Some(dir),
        Ok(Err(e)) => {
            failures.push(format!("Go build: {e:#}"));
            None
        }
        Err(_) => {
            failures.push("Go build: the build thread panicked".to_owned());
            None
        }
    };

    let mut e2e = cargo();
    e2e.current_dir(workspace_root())
        // Every suite runs even when one fails: CI shows all failures at once.
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "--package",
            E2E_PACKAGE,
            "--",
        ])
        .arg("--test-threads=1");
    if let Some(filter) = &opts.filter {
        e2e.arg(filter);
    }
    build::agent_build_env(&mut e2e);
    e2e.env("TRACEGAP_AGENT_BIN", &agent);
    if let Some(dir) = &go_bin {
        e2e.env(go::BIN_DIR_ENV, dir);
    }
    if let Err(e) = exec(&mut e2e) {
        failures.push(format!("end-to-end tests: {e:#}"));
    }

    // A seconds-long run of the benchmark so that it never rots; its numbers are not asserted.
    if opts.filter.is_none() {
        if let Err(e) = crate::bench::smoke() {
            failures.push(format!("bench smoke: {e:#}"));
        }
    }

    if !failures.is_empty() {
        bail!(
            "{} test suite(s) failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    eprintln!("test: all suites passed");
    Ok(())
}
