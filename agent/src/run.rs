//! The modes: watching the host (the live table or JSON lines, and the OTLP export) until a
//! shutdown signal, or a check (see `check`).

use std::{future::Future, io::IsTerminal as _};

use anyhow::Context as _;

use crate::{
    check,
    cli::{Args, Command, Output, WatchArgs},
    report::{otlp as export, Reporter},
    session::{Session, Step},
};

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

/// Runs the mode `args` name; returns the exit code to leave with.
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<i32> {
    match args.command {
        Some(Command::Check(check)) => check::run(check, shutdown).await,
        None => watch(args.watch, shutdown).await.map(|()| 0),
    }
}

async fn watch(args: WatchArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let output = args.output.unwrap_or(if std::io::stdout().is_terminal() {
        Output::Table
    } else {
        Output::Json
    });
    let mut session = Session::start(&args.agent, args.span_grace).await?;
    // Before the first tick: a bad OTEL_EXPORTER_OTLP_* setting stops the agent at startup.
    let mut exporter =
        export::FindingsExporter::from_env(args.otlp_endpoint.as_deref(), args.report_interval)
            .context("configuring the OTLP export of findings")?
            .map(|x| x.with_path_template(args.path_template.is_on()));
    let mut annotations = export::AnnotationExporter::from_env(
        args.otlp_endpoint.as_deref(),
        args.trace_annotations.map(|s| s.is_on()),
        args.path_template.is_on(),
    )
    .context("configuring the trace annotations")?;
    if annotations.is_some() {
        session
            .pipeline_mut()
            .annotate(args.trace_annotation_interval);
    }
    let mut reporter = Reporter::new(output, Box::new(std::io::stdout()));
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

    loop {
        let step = tokio::select! {
            biased;
            () = &mut shutdown => break,
            step = session.step() => step?,
        };
        if let Step::Tick(snapshot) = step {
            if let Some(x) = &mut exporter {
                x.offer(&snapshot);
            }
            if let Some(x) = &mut annotations {
                x.offer(&snapshot);
            }
            if let Err(e) = reporter.tick(&snapshot) {
                log::warn!("writing the report failed: {e}");
            }
        }
    }

    // Whatever the kernel captured and the receiver accepted before the signal is reported.
    let end = session.finish().await;
    reporter
        .finish(&end.snapshot)
        .context("writing the final report")?;
    // After the local report, which must not wait for a slow backend (bounded: 5 s).
    if let Some(mut x) = annotations {
        x.offer(&end.snapshot);
        x.shutdown().await;
    }
    if let Some(mut x) = exporter {
        x.offer(&end.snapshot);
        x.shutdown().await;
    }
    Ok(())
}
