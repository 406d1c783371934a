//! CI mode: `tracegap check [options] -- COMMAND [ARGS...]`. Attaches, runs COMMAND (an
//! integration test suite, a compose-style script, a smoke test), follows its whole process tree
//! through the kernel's fork records, judges those processes (all with `--all`), and fails the
//! build that breaks traces: COMMAND's own non-zero status if it failed, else 1 when a finding at
//! or above `--fail-on` concerns the tree or a service's coverage is below `--require-coverage`,
//! else 0. Writes a summary to stdout and, on request, JUnit XML, Markdown and JSON files.

mod summary;

use std::{future::Future, path::Path, process::ExitStatus};

use anyhow::Context as _;
use tokio::process::Command;

use self::summary::Summary;
use crate::{
    cli::CheckArgs,
    correlate::instrumentation::INSTRUMENTATION_SETTLE,
    session::{Session, Step, TICK_EVERY},
};

/// Runs the check; returns the exit code to leave with.
pub async fn run(args: CheckArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<i32> {
    let mut session = Session::start(&args.agent, args.span_grace).await?;
    let (program, rest) = args
        .command
        .split_first()
        .context("no COMMAND to run (tracegap check [OPTIONS] -- COMMAND [ARGS...])")?;
    let mut child = Command::new(program)
        .args(rest)
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("starting {program}"))?;
    let root = child
        .id()
        .context("the command exited before it could be followed")?;
    session.pipeline_mut().follow_tree(root);
    log::info!(
        "check: running {} (pid {root}) and its descendants",
        args.command.join(" ")
    );

    tokio::pin!(shutdown);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            () = &mut shutdown => {
                log::warn!("check: interrupted; the command (pid {root}) keeps running");
                let end = session.finish().await;
                let summary = Summary::new(&args, None, end, root);
                summary.write(&args)?;
                return Ok(130);
            }
            step = session.step() => {
                let _step: Step = step?;
            }
        }
    };
    // The verdicts the rules still owe: requests without context wait for their process to show
    // it exports spans, outbound contexts for their spans.
    let wait = args.span_grace.max(INSTRUMENTATION_SETTLE) + 2 * TICK_EVERY;
    log::info!(
        "check: {} exited ({status}); judging for {} more",
        args.command.join(" "),
        humantime::format_duration(wait)
    );
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            () = &mut shutdown => break,
            step = session.step() => {
                let _step: Step = step?;
            }
        }
    }
    let end = session.finish().await;
    let summary = Summary::new(&args, Some(status), end, root);
    summary.write(&args)?;
    Ok(summary.exit_code())
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Writes `contents` to `path`, naming the file in the error.
fn write_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}
