//! `cargo xtask run [-- AGENT ARGS]`: set up what the agent needs, build it, run it as root.
//!
//! The agent's exit status is xtask's: a bad flag is reported once, by the agent, and never
//! wrapped in an error of xtask's own. A Ctrl-C on the terminal reaches the agent and xtask
//! alike (one process group); xtask waits for the agent to write its final report and detach,
//! and a SIGTERM sent to xtask alone is passed on to the agent.

use std::{
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{build, exec::is_root, setup};

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    build: build::Options,
    /// Arguments for the agent (after `--`), e.g. `-- --output json`.
    #[arg(last = true)]
    agent_args: Vec<String>,
}

/// Sets up, builds and runs the agent with `subcommand` and the arguments after `--`; returns
/// the exit code to leave with (the agent's).
pub fn run(opts: Options, subcommand: &[&str]) -> Result<i32> {
    setup::run(setup::Scope::Run, setup::Mode::Quiet)?;
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
    cmd.args(subcommand).args(&opts.agent_args);
    // Before the spawn, so that no signal is missed; a handler (unlike SIG_IGN) is reset to the
    // default in the child at exec, so the agent still gets the signals it installs its own
    // handlers for.
    catch_stop_signals();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {}", agent.display()))?;
    let status = wait_forwarding_signals(&mut child)?;
    Ok(exit_code(status))
}

/// The last SIGINT or SIGTERM xtask received (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn remember_signal(signal: libc::c_int) {
    RECEIVED.store(signal, Ordering::SeqCst);
}

fn catch_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                remember_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Waits for the agent. A SIGTERM xtask receives goes on to the agent; a SIGINT does not (the
/// terminal sends it to the whole foreground process group, so the agent has it already).
fn wait_forwarding_signals(child: &mut Child) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for the agent")? {
            return Ok(status);
        }
        if RECEIVED.swap(0, Ordering::SeqCst) == libc::SIGTERM {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
