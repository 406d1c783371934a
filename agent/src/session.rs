//! One attached agent: the kernel capture, the OTLP receiver and the pipeline, driven one step
//! at a time until its owner stops it. `watch` (the live table and JSON lines) and `check` (CI
//! mode) each drive one.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent_common::SocketKey;
use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::{
    attribute::k8s::{self, PodWatcher},
    capture::{Capture, CaptureConfig, DecodeError, Record},
    cli::AgentArgs,
    findings::Finding,
    otlp::{self, ExportBatch, ReceiverConfig, ReceiverHandle, ReceiverStats},
    pipeline::{CaptureStatus, Pipeline, SpanIntakeConfig},
    report::otlp::ring_lag_ms,
    snapshot::Snapshot,
};

/// Export batches waiting for the pipeline; more are dropped and counted by the receiver.
const EXPORT_QUEUE: usize = 4096;
/// Ring buffer records handled per wake-up before other work gets a turn.
const BATCH: usize = 1024;
/// How often verdicts due are judged and a snapshot is published.
pub const TICK_EVERY: Duration = Duration::from_secs(1);
/// How often exited processes are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// What one step did.
pub enum Step {
    /// Records or an export were handled, or the sweep ran.
    Handled,
    /// A tick: verdicts due were judged; the snapshot is for the outputs.
    Tick(Box<Snapshot>),
}

/// The end of a session: the last snapshot, every finding held, and the process tree followed.
pub struct Final {
    pub snapshot: Snapshot,
    pub findings: Vec<Finding>,
    pub tree: Option<HashSet<u32>>,
}

pub struct Session {
    capture: Capture,
    pipeline: Pipeline,
    receiver: ReceiverHandle,
    stop_receiver: oneshot::Sender<()>,
    exports: mpsc::Receiver<ExportBatch>,
    receiver_stats: Arc<ReceiverStats>,
    /// Kept alive for the whole session: dropping it stops the pod watch.
    _pods: Option<PodWatcher>,
    tick: tokio::time::Interval,
    sweep: tokio::time::Interval,
    batch: Vec<Result<Record, DecodeError>>,
    ring_lag_ms: u64,
}

enum Wake {
    Events(std::io::Result<()>),
    Tick,
    Sweep,
    Export(ExportBatch),
}

impl Session {
    /// Attaches the programs and starts the receiver.
    pub async fn start(args: &AgentArgs, span_grace: Duration) -> anyhow::Result<Self> {
        let (export_tx, exports) = mpsc::channel(EXPORT_QUEUE);
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
        // After the receiver, whose ports the kernel side needs: exports to it are its own,
        // unless only the wire is read.
        let port = |addr: Option<std::net::SocketAddr>| addr.map_or(0, |a| a.port());
        let receiver_ports = if args.span_intake.receiver() {
            (port(receiver.grpc_addr()), port(receiver.http_addr()))
        } else {
            (0, 0)
        };
        let capture = Capture::start(&CaptureConfig {
            capture_bytes: args.capture_bytes,
            max_capture_rate: args.max_capture_rate,
            ring_bytes: args.ring_buffer_bytes,
            tls: args.tls.is_on(),
            export_max_bytes: if args.span_intake.wire() {
                args.span_intake_max_bytes
            } else {
                0
            },
            receiver_ports,
        })
        .context("starting the kernel capture")?;
        // Loading the object and reading every TLS library and Go executable for its probes
        // allocates tens of MiB for a moment; give them back now rather than keep them as RSS.
        release_freed_memory();
        let pods = k8s::start_in_cluster();
        let pipeline = Pipeline::new(
            span_grace,
            pods.as_ref().map(|w| w.index().clone()),
            SpanIntakeConfig {
                use_receiver: args.span_intake.receiver(),
                max_bytes: args.span_intake_max_bytes as usize,
            },
        );
        Ok(Self {
            capture,
            pipeline,
            receiver,
            stop_receiver,
            exports,
            receiver_stats,
            _pods: pods,
            tick: tokio::time::interval(TICK_EVERY),
            sweep: tokio::time::interval(SWEEP_EVERY),
            batch: Vec::with_capacity(BATCH),
            ring_lag_ms: 0,
        })
    }

    /// The pipeline, to tell it what the owner knows (e.g. a process tree to follow).
    pub fn pipeline_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }

    /// Waits for the next thing to do and does it. Cancel-safe: every await comes before the
    /// work, which is done in the poll that finishes it.
    pub async fn step(&mut self) -> anyhow::Result<Step> {
        let wake = tokio::select! {
            biased;
            r = self.capture.next_batch(BATCH, &mut self.batch) => Wake::Events(r),
            _ = self.tick.tick() => Wake::Tick,
            _ = self.sweep.tick() => Wake::Sweep,
            Some(batch) = self.exports.recv() => Wake::Export(batch),
        };
        match wake {
            Wake::Events(r) => {
                r.context("reading the ring buffer")?;
                if let Some(Ok(last)) = self.batch.last() {
                    self.ring_lag_ms = ring_lag_ms(last.monotonic_ns());
                }
                for record in self.batch.drain(..) {
                    self.pipeline.handle(record);
                }
                for conn in self.pipeline.take_export_connections() {
                    self.capture.mark_export(
                        SocketKey {
                            tgid: conn.key.pid,
                            fd: conn.key.fd,
                        },
                        conn.key.tls,
                        conn.h2,
                    );
                }
            }
            Wake::Export(batch) => self.pipeline.handle_export(&batch),
            Wake::Tick => {
                self.capture.flush_logs();
                self.capture.rescan_tls();
                let snapshot = self.pipeline.tick(SystemTime::now(), self.capture_status());
                return Ok(Step::Tick(Box::new(self.with_receiver(snapshot))));
            }
            Wake::Sweep => {
                self.pipeline.sweep();
                // A burst (a flood of records, a large export) leaves freed memory behind.
                release_freed_memory();
            }
        }
        Ok(Step::Handled)
    }

    /// Handles whatever the kernel captured and the receiver accepted until now, detaches
    /// every program and stops the receiver.
    pub async fn finish(mut self) -> Final {
        self.capture.drain_now(&mut self.batch);
        for record in self.batch.drain(..) {
            self.pipeline.handle(record);
        }
        let status = self.capture_status();
        let _receiver_gone: Result<(), _> = self.stop_receiver.send(());
        self.receiver.wait().await;
        while let Ok(export) = self.exports.try_recv() {
            self.pipeline.handle_export(&export);
        }
        let attached = self.capture.attached();
        drop(self.capture);
        log::info!("detached {attached} programs");
        let snapshot = self.pipeline.finish(status);
        let snapshot = Self::add_receiver(snapshot, &self.receiver_stats);
        Final {
            snapshot,
            findings: self.pipeline.findings().cloned().collect(),
            tree: self.pipeline.tree().cloned(),
        }
    }

    fn capture_status(&self) -> CaptureStatus {
        CaptureStatus {
            kernel: self.capture.counters(),
            go_tls_too_old: self.capture.go_tls_too_old() as u64,
            ring_lag_ms: self.ring_lag_ms,
        }
    }

    fn with_receiver(&self, snapshot: Snapshot) -> Snapshot {
        Self::add_receiver(snapshot, &self.receiver_stats)
    }

    fn add_receiver(mut snapshot: Snapshot, receiver: &ReceiverStats) -> Snapshot {
        snapshot.receiver = Some(receiver.named().to_vec());
        snapshot
    }
}

/// Returns memory the allocator holds freed to the kernel: glibc keeps freed heap for reuse,
/// so one startup scan or burst would otherwise stay in the agent's RSS for good.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
