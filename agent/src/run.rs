//! The agent's main loop: capture → pipeline → report, until a shutdown signal.

use std::{future::Future, io::IsTerminal as _, time::Duration};

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::{
    attribute::k8s,
    capture::Capture,
    cli::{Args, Output},
    otlp::{self, ExportBatch, ReceiverConfig, ReceiverStats},
    pipeline::{CaptureStatus, Pipeline},
    report::{otlp as export, Reporter},
    snapshot::Snapshot,
};

/// Export batches waiting for the pipeline; more are dropped and counted by the receiver.
const EXPORT_QUEUE: usize = 4096;

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
    Export(ExportBatch),
}

pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let output = args.output.unwrap_or(if std::io::stdout().is_terminal() {
        Output::Table
    } else {
        Output::Json
    });
    let mut capture = Capture::start(args.capture_bytes, args.ring_buffer_bytes, args.tls.is_on())
        .context("starting the kernel capture")?;
    let (export_tx, mut export_rx) = mpsc::channel(EXPORT_QUEUE);
    let receiver_stats = Arc::new(ReceiverStats::default());
    let (stop_receiver, receiver_stopped) = oneshot::channel::<()>();
    let receiver_config = ReceiverConfig {
        grpc_listen: args.otlp_grpc_listen,
        http_listen: args.otlp_http_listen,
        forward_to: args.forward_to.clone(),
        max_message_bytes: usize::try_from(args.otlp_max_message_bytes).unwrap_or(usize::MAX),
        max_connections: usize::try_from(args.otlp_max_connections).unwrap_or(usize::MAX),
        header_read_timeout_secs: args.otlp_header_timeout.as_secs(),
        body_read_timeout_secs: args.otlp_body_timeout.as_secs(),
        ..ReceiverConfig::default()
    };
    let receiver = otlp::serve(
        receiver_config,
        export_tx,
        Arc::clone(&receiver_stats),
        async {
            let _stopped: Result<(), _> = receiver_stopped.await;
        },
    )
    .await
    .context("starting the OTLP receiver")?;
    log::info!(
        "OTLP receiver: grpc={} http={}",
        receiver
            .grpc_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
        receiver
            .http_addr()
            .map_or_else(|| "off".to_owned(), |a| a.to_string()),
    );
    // Kept alive for the whole run: dropping it stops the pod watch.
    let pod_watcher = k8s::start_in_cluster();
    let mut pipeline = Pipeline::new(
        args.span_grace,
        pod_watcher.as_ref().map(|w| w.index().clone()),
    );
    // Before the first tick: a bad OTEL_EXPORTER_OTLP_* setting stops the agent at startup.
    let mut exporter =
        export::FindingsExporter::from_env(args.otlp_endpoint.as_deref(), args.report_interval)
            .context("configuring the OTLP export of findings")?
            .map(|x| x.with_path_template(args.path_template.is_on()));
    let mut ring_lag_ms = 0;
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
            Some(batch) = export_rx.recv() => Wake::Export(batch),
        };
        match wake {
            Wake::Shutdown => break,
            Wake::Events(r) => {
                r.context("reading the ring buffer")?;
                if let Some(Ok(last)) = batch.last() {
                    ring_lag_ms = export::ring_lag_ms(last.monotonic_ns());
                }
                for event in batch.drain(..) {
                    pipeline.handle(event);
                }
            }
            Wake::Export(batch) => pipeline.handle_export(&batch),
            Wake::Report => {
                capture.flush_logs();
                capture.rescan_tls();
                let snapshot = with_receiver(
                    pipeline.tick(
                        std::time::SystemTime::now(),
                        capture_status(&capture, ring_lag_ms),
                    ),
                    &receiver_stats,
                );
                if let Some(x) = &mut exporter {
                    x.offer(&snapshot);
                }
                if let Err(e) = reporter.tick(&snapshot) {
                    log::warn!("writing the report failed: {e}");
                }
            }
            Wake::Sweep => pipeline.sweep(),
        }
    }

    // Whatever the kernel captured and the receiver accepted before the signal is reported.
    capture.drain_now(&mut batch);
    for event in batch.drain(..) {
        pipeline.handle(event);
    }
    let _receiver_gone: Result<(), _> = stop_receiver.send(());
    receiver.wait().await;
    while let Ok(export) = export_rx.try_recv() {
        pipeline.handle_export(&export);
    }
    let status = capture_status(&capture, ring_lag_ms);
    let attached = capture.attached();
    drop(capture);
    log::info!("detached {attached} programs");
    let snapshot = with_receiver(pipeline.finish(status), &receiver_stats);
    reporter
        .finish(&snapshot)
        .context("writing the final report")?;
    // After the local report, which must not wait for a slow backend (bounded: 5 s).
    if let Some(mut x) = exporter {
        x.offer(&snapshot);
        x.shutdown().await;
    }
    Ok(())
}

/// The capture's own counts, for the pipeline's snapshot.
fn capture_status(capture: &Capture, ring_lag_ms: u64) -> CaptureStatus {
    CaptureStatus {
        kernel: capture.counters(),
        go_tls_too_old: capture.go_tls_too_old() as u64,
        ring_lag_ms,
    }
}

/// Adds the OTLP receiver's counters to a snapshot.
fn with_receiver(mut snapshot: Snapshot, receiver: &ReceiverStats) -> Snapshot {
    snapshot.receiver = Some(receiver.named().to_vec());
    snapshot
}
