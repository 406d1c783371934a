//! `cargo xtask run [-- AGENT ARGS]`: set up if needed, build, run the agent as root.

use std::process::Command;

use anyhow::{bail, Result};

use crate::{
    build,
    exec::{exec, is_root},
    setup,
};

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    build: build::Options,
    /// Arguments for the agent (after `--`), e.g. `-- --output json`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    setup::run(setup::Mode::Quiet)?;
    let agent = build::run(&opts.build)?;
    let mut cmd = if is_root() {
        Command::new(&agent)
    } else if which("sudo") {
        eprintln!("run: the agent loads eBPF programs and needs root; running it with sudo");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&agent);
        c
    } else {
        bail!(
            "the agent loads eBPF programs and needs root, and sudo is not installed: run as root"
        );
    };
    cmd.args(&opts.agent_args);
    exec(&mut cmd)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
