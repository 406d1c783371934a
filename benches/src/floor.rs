//! The floor: tracegap's object with only its two empty programs (agent-ebpf floor.rs)
//! attached to the raw `sys_enter`/`sys_exit` tracepoints. xtask runs the syscall loops while
//! this holds them, so what any raw syscall tracepoint costs is measured in the same run as the
//! agent, and the agent's figures are reported above it.

use std::{io::Read as _, path::PathBuf};

use agent_common::FLOOR_PROGRAMS;
use anyhow::{Context as _, Result};
use aya::{programs::RawTracePoint, Ebpf};
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Options {
    /// The eBPF object holding the floor programs (agent-ebpf/prebuilt/tracegap.bpf.o).
    #[arg(long)]
    object: PathBuf,
}

/// Attaches the floor programs, says so on stdout, and holds them until stdin closes (the
/// links are the process's: they go when it exits, however it exits).
pub fn run(opts: &Options) -> Result<Value> {
    let mut ebpf = Ebpf::load_file(&opts.object)
        .with_context(|| format!("loading {}", opts.object.display()))?;
    for (name, tracepoint) in FLOOR_PROGRAMS {
        let program: &mut RawTracePoint = ebpf
            .program_mut(name)
            .with_context(|| format!("{name} is not in {}", opts.object.display()))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        program
            .attach(tracepoint)
            .with_context(|| format!("attaching {name} to {tracepoint}"))?;
    }
    println!("{}", json!({ "attached": FLOOR_PROGRAMS.len() }));
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    drop(ebpf);
    Ok(json!({ "detached": FLOOR_PROGRAMS.len() }))
}
