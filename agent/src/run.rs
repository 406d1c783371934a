//! The agent's main loop: capture → pipeline → report, until a shutdown signal.

use std::{future::Future, io::IsTerminal as _, time::Duration};

use anyhow::Context as _;

use crate::{
    capture::Capture,
    cli::{Args, Output},
    pipeline::Pipeline,
    report::Reporter,
};

/// Ring buffer records handled per wake-up before other work gets a turn.
const BATCH: usize = 1024;
/// How often the JSON lines and the table are refreshed.
const PRINT_EVERY: Duration = Duration::from_secs(1);
/// How often exited processes are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        log::error!("cannot install signal handlers; stop the agent with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => log::info!("SIGINT: stopping"),
        _ = term.recv() => log::info!("SIGTERM: stopping"),
    }
}

enum Wake {
    Shutdown,
    Events(std::io::Result<()>),
    Report,
    Sweep,
}

pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let output = args.output.unwrap_or(if std::io::stdout().is_terminal() {
        Output::Table
    } else {
        Output::Json
    });
    let mut capture = Capture::start(args.capture_bytes, args.ring_buffer_bytes)
        .context("starting the kernel capture")?;
    let mut pipeline = Pipeline::new();
    let mut reporter = Reporter::new(output, Box::new(std::io::stdout()));
    let mut report_tick = tokio::time::interval(PRINT_EVERY);
    let mut sweep_tick = tokio::time::interval(SWEEP_EVERY);
    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let shutdown = async {
        tokio::select! {
            () = shutdown => {}
            () = deadline => log::info!("--duration elapsed: stopping"),
        }
    };
    tokio::pin!(shutdown);
    let mut batch = Vec::with_capacity(BATCH);

    loop {
        let wake = tokio::select! {
            biased;
            () = &mut shutdown => Wake::Shutdown,
            r = capture.next_batch(BATCH, &mut batch) => Wake::Events(r),
            _ = report_tick.tick() => Wake::Report,
            _ = sweep_tick.tick() => Wake::Sweep,
        };
        match wake {
            Wake::Shutdown => break,
            Wake::Events(r) => {
                r.context("reading the ring buffer")?;
                for event in batch.drain(..) {
                    pipeline.handle(event);
                }
            }
            Wake::Report => {
                capture.flush_logs();
                let kernel = capture.counters();
                if let Err(e) = reporter.tick(&mut pipeline, &kernel) {
                    log::warn!("writing the report failed: {e}");
                }
            }
            Wake::Sweep => pipeline.sweep(),
        }
    }

    // Whatever the kernel captured before the signal is still reported.
    capture.drain_now(&mut batch);
    for event in batch.drain(..) {
        pipeline.handle(event);
    }
    let kernel = capture.counters();
    let attached = capture.attached();
    drop(capture);
    log::info!("detached {attached} programs");
    reporter
        .finish(&mut pipeline, &kernel)
        .context("writing the final report")?;
    Ok(())
}
