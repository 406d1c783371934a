//! `cargo xtask fuzz --seconds N`: runs every cargo-fuzz target in fuzz/ for N seconds each
//! (nightly, libFuzzer with AddressSanitizer), installing cargo-fuzz if missing. Crashers are
//! left under fuzz/artifacts/<target>/ and fail the run; a crasher becomes a regression unit
//! test in the agent (none found so far: 90 s per target, see tests/README-reliability-section.md).

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::exec::{cargo_bin_dir, exec, path_with_cargo_bin, workspace_root};

/// The targets in fuzz/Cargo.toml.
pub const TARGETS: &[&str] = &[
    "http_request",
    "traceparent",
    "trace_headers",
    "otlp_decode",
    "path_template",
    "h2_stream",
];

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Only this target (default: all).
    #[arg(long)]
    pub target: Option<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    ensure_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("fuzz");
    let targets: Vec<&str> = match &opts.target {
        Some(t) if TARGETS.contains(&t.as_str()) => vec![t.as_str()],
        Some(t) => bail!("unknown fuzz target {t}; targets: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    let mut failures = Vec::new();
    for target in targets {
        eprintln!("fuzz: {target} for {} s", opts.seconds);
        // The corpus lives in fuzz/corpus/<target> (kept small: `cargo fuzz cmin` before a
        // commit); -max_len keeps inputs near the capture cap.
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            .env("PATH", path_with_cargo_bin())
            // Nested under `cargo xtask`: let rustup pick nightly, not the outer toolchain.
            .env_remove("RUSTC")
            .env_remove("CARGO")
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["+nightly", "fuzz", "run", "-O", target, "--"])
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg("-max_len=8192")
            .arg("-print_final_stats=1");
        if let Err(e) = exec(&mut cmd) {
            failures.push(format!("{target}: {e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} fuzz target(s) failed (crashers under fuzz/artifacts/):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
    eprintln!("fuzz: all targets ran {} s without a crash", opts.seconds);
    Ok(())
}

/// cargo-fuzz is a cargo subcommand from crates.io; nightly comes from rustup.
fn ensure_cargo_fuzz() -> Result<()> {
    if cargo_bin_dir().join("cargo-fuzz").is_file() {
        return Ok(());
    }
    eprintln!("fuzz: installing cargo-fuzz");
    exec(Command::new("cargo").args(["install", "cargo-fuzz"]))
        .context("installing cargo-fuzz (needs crates.io)")?;
    let nightly = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output();
    if !nightly.is_ok_and(|o| o.status.success()) {
        exec(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .context("installing the nightly toolchain (cargo-fuzz needs it)")?;
    }
    Ok(())
}
