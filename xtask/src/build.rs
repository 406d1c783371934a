//! `cargo xtask build`: builds the agent; its build script builds the eBPF object from source
//! when the BPF toolchain is installed, and otherwise embeds the committed object if it matches
//! the sources (agent/build.rs).

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    ebpf_object,
    exec::{cargo, path_with_cargo_bin, workspace_root},
};

#[derive(clap::Args, Default)]
// The group id defaults to the struct name; `run` flattens these into its own `Options`, and
// two groups named "Options" make clap's debug assertions panic at start.
#[group(id = "build_options")]
pub struct Options {
    /// Build without optimisations (faster to compile, slower to run).
    #[arg(long)]
    pub debug: bool,
}

/// Environment for every cargo call that builds the agent. The same for every task (run, test,
/// bench): a variable the build script watches that differs between them would rerun it and
/// recompile the agent each time one follows another.
pub fn agent_build_env(cmd: &mut std::process::Command) {
    cmd.env("PATH", path_with_cargo_bin());
}

/// The agent binary and the eBPF object its build script chose.
pub struct Built {
    pub binary: PathBuf,
    /// agent/build.rs's OUT_DIR: the object, its manifest, and its origin.
    pub out_dir: PathBuf,
}

impl Built {
    pub fn object(&self) -> PathBuf {
        self.out_dir.join(ebpf_object::OUT_OBJECT)
    }

    pub fn manifest(&self) -> Result<ebpf_object::Manifest> {
        ebpf_object::Manifest::read(&self.out_dir.join(ebpf_object::OUT_MANIFEST))
    }

    /// Whether the embedded object was built from source here.
    pub fn built_from_source(&self) -> Result<bool> {
        let path = self.out_dir.join(ebpf_object::OUT_ORIGIN);
        let origin = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        Ok(origin == ebpf_object::ORIGIN_SOURCE)
    }
}

/// Builds the agent (and its eBPF object); returns the agent binary's path.
pub fn run(opts: &Options) -> Result<PathBuf> {
    Ok(build(opts)?.binary)
}

/// Builds the agent and finds the eBPF object its build script left.
pub fn build(opts: &Options) -> Result<Built> {
    build_with("build", opts)
}

/// `cargo SUBCOMMAND` (build or check) of the agent; finds the eBPF object its build script
/// left.
pub fn build_with(subcommand: &str, opts: &Options) -> Result<Built> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root()).args([
        subcommand,
        "--package",
        "agent",
        "--bin",
        "tracegap",
        "--message-format=json-render-diagnostics",
    ]);
    if !opts.debug {
        cmd.arg("--release");
    }
    agent_build_env(&mut cmd);
    let out_dir = agent_out_dir(&mut cmd)?;
    Ok(Built {
        binary: agent_binary(opts.debug),
        out_dir,
    })
}

/// Runs a cargo command with JSON messages on stdout (diagnostics rendered on stderr, as
/// usual) and returns the OUT_DIR of the agent's build script: the one holding the object.
fn agent_out_dir(cmd: &mut std::process::Command) -> Result<PathBuf> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo's stdout")?;
    let mut out_dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo's messages")?;
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "build-script-executed" {
            continue;
        }
        if let Some(dir) = message["out_dir"].as_str().map(Path::new) {
            if dir.join(ebpf_object::OUT_ORIGIN).is_file() {
                out_dir = Some(dir.to_path_buf());
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    out_dir.context("cargo reported no build script output holding the eBPF object")
}

pub fn agent_binary(debug: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target
        .join(if debug { "debug" } else { "release" })
        .join("tracegap")
}
