//! `cargo xtask build`: the agent's build script builds and embeds the eBPF object; this makes a
//! missing eBPF toolchain an error instead of the build script's warning.

use std::path::PathBuf;

use anyhow::Result;

use crate::exec::{cargo, exec, path_with_cargo_bin, workspace_root};

#[derive(clap::Args, Default)]
// The group id defaults to the struct name; `run` flattens these into its own `Options`, and
// two groups named "Options" make clap's debug assertions panic at start.
#[group(id = "build_options")]
pub struct Options {
    /// Build without optimisations (faster to compile, slower to run).
    #[arg(long)]
    pub debug: bool,
}

/// Environment for every cargo call that builds the agent.
pub fn agent_build_env(cmd: &mut std::process::Command) {
    cmd.env("PATH", path_with_cargo_bin())
        .env("TRACEGAP_REQUIRE_EBPF", "1");
}

/// Builds the agent (and its eBPF object); returns the agent binary's path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["build", "--package", "agent", "--bin", "tracegap"]);
    if !opts.debug {
        cmd.arg("--release");
    }
    agent_build_env(&mut cmd);
    exec(&mut cmd)?;
    Ok(agent_binary(opts.debug))
}

pub fn agent_binary(debug: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target
        .join(if debug { "debug" } else { "release" })
        .join("tracegap")
}
