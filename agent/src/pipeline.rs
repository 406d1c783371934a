//! Wiring only: every captured event and every span export flows through the stages once, in
//! order, one way, on one task (no locks):
//!
//! ```text
//! capture ─► parse ─► attribute ─► correlate ─► findings ─► snapshot (each tick) ─► report
//! otlp receiver ───────────────────┘
//! ```

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    attribute::{k8s::PodIndex, process::ProcessInfo, Attributor, Subject},
    capture::{CapturedEvent, DecodeError, Record},
    correlate::{Correlator, Raised, Sender},
    findings::{Annotation, FindingKey, FindingStore, MAX_FINDINGS},
    model::{Direction, KernelCounters},
    otlp::{Attribution, ExportBatch},
    parse::{export::ExportConnection, Parser, Request},
    snapshot::{AgentCounters, AnnotationCounters, FindingBrief, ProcessRow, Snapshot},
};

/// Where the span rules get their spans (`--span-intake`).
#[derive(Clone, Copy, Debug)]
pub struct SpanIntakeConfig {
    pub use_receiver: bool,
    /// Largest export read off the wire.
    pub max_bytes: usize,
}

/// What the pipeline is given besides events: the kernel's and the capture's own counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct CaptureStatus {
    pub kernel: KernelCounters,
    /// Go executables not probed for being too old.
    pub go_tls_too_old: u64,
    pub ring_lag_ms: u64,
}

pub struct Pipeline {
    parser: Parser,
    attributor: Attributor,
    correlator: Correlator,
    findings: FindingStore,
    events: u64,
    process_records: u64,
    decode_errors: u64,
    /// Findings raised and not yet recorded (reused buffer).
    raised: Vec<Raised>,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    boot_offset: Duration,
    /// Spans from the receiver are used (`--span-intake receiver|both`).
    use_receiver: bool,
    /// Receiver batches not used (`--span-intake wire`).
    receiver_batches_ignored: u64,
    /// HTTP/2 connections found to carry trace exports, for the kernel to read whole.
    export_connections: Vec<ExportConnection>,
    /// `--trace-annotations`: findings placed in their traces, at most one per identity per
    /// interval.
    annotations: Option<Annotations>,
}

/// Findings placed in their traces, for the next snapshot.
struct Annotations {
    /// Shortest interval between two annotations of one finding identity.
    min_interval: Duration,
    /// When each identity was last annotated (occurrence time).
    last: HashMap<FindingKey, SystemTime>,
    pending: Vec<Annotation>,
    published: u64,
    rate_limited: u64,
    dropped: u64,
}

/// Annotations held for one snapshot; past it they are dropped (counted).
const MAX_PENDING_ANNOTATIONS: usize = 4096;

impl Annotations {
    /// Whether an occurrence of `key` at `at` is annotated (counted when not).
    fn admit(&mut self, key: &FindingKey, at: SystemTime) -> bool {
        if let Some(last) = self.last.get(key) {
            if at.duration_since(*last).unwrap_or_default() < self.min_interval {
                self.rate_limited += 1;
                return false;
            }
        }
        if self.pending.len() >= MAX_PENDING_ANNOTATIONS {
            self.dropped += 1;
            return false;
        }
        if self.last.len() >= 2 * MAX_FINDINGS {
            let horizon = at
                .checked_sub(self.min_interval)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            self.last.retain(|_, t| *t >= horizon);
        }
        self.last.insert(key.clone(), at);
        true
    }
}

impl Pipeline {
    pub fn new(span_grace: Duration, pods: Option<PodIndex>, intake: SpanIntakeConfig) -> Self {
        Self {
            parser: Parser::new(intake.max_bytes),
            attributor: Attributor::new(pods),
            correlator: Correlator::new(span_grace),
            findings: FindingStore::default(),
            events: 0,
            process_records: 0,
            decode_errors: 0,
            raised: Vec::new(),
            boot_offset: boot_offset(),
            use_receiver: intake.use_receiver,
            receiver_batches_ignored: 0,
            export_connections: Vec::new(),
            annotations: None,
        }
    }

    /// Places findings in their traces from now on (`--trace-annotations`): each occurrence
    /// the rules can place is published in the snapshot, at most one per finding identity per
    /// `min_interval` (the others counted as `annotations_rate_limited`).
    pub fn annotate(&mut self, min_interval: Duration) {
        self.correlator.annotate();
        self.annotations = Some(Annotations {
            min_interval,
            last: HashMap::new(),
            pending: Vec::new(),
            published: 0,
            rate_limited: 0,
            dropped: 0,
        });
    }

    /// One ring buffer record.
    pub fn handle(&mut self, record: Result<Record, DecodeError>) {
        let event = match record {
            Ok(Record::Request(event)) => {
                self.events += 1;
                event
            }
            Ok(Record::Process(change)) => {
                self.process_records += 1;
                self.attributor.process_changed(&change);
                return;
            }
            Err(e) => {
                self.decode_errors += 1;
                log::debug!("undecodable ring buffer record: {e}");
                return;
            }
        };
        let parsed = self.parser.parse(&event);
        if parsed.preface {
            self.correlator
                .h2_connection(event.pid, event.direction, event.peer);
        }
        for req in &parsed.requests {
            self.handle_request(&event, req);
        }
        for export in parsed.exports {
            let received_at = SystemTime::UNIX_EPOCH
                + self.boot_offset
                + Duration::from_nanos(export.monotonic_ns);
            for resource in export.resources {
                self.use_export(&ExportBatch {
                    pid: Some(export.pid),
                    attributed_by: Attribution::Wire,
                    service_name: resource.service_name,
                    received_at,
                    transport: export.transport,
                    spans: resource.spans,
                });
            }
        }
        self.export_connections.extend(parsed.export_connection);
        self.record_raised();
    }

    /// HTTP/2 connections found to carry trace exports since the last call.
    pub fn take_export_connections(&mut self) -> Vec<ExportConnection> {
        std::mem::take(&mut self.export_connections)
    }

    /// One request (HTTP/1 or one HTTP/2 stream's headers) of a captured event.
    fn handle_request(&mut self, event: &CapturedEvent, req: &Request) {
        let at =
            SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(event.monotonic_ns);
        let info = self.attributor.process(event);
        let mut sender = Sending {
            attributor: &mut self.attributor,
            event,
            info,
        };
        if event.direction == Direction::Inbound {
            self.correlator
                .inbound(event.pid, at, req, &mut sender, &mut self.raised);
            return;
        }
        self.correlator.outbound(
            event.pid,
            at,
            req,
            event.tls(),
            &mut sender,
            &mut self.raised,
        );
    }

    /// Follows `root` and its descendants (see [`Attributor::follow_tree`]).
    pub fn follow_tree(&mut self, root: u32) {
        self.attributor.follow_tree(root);
    }

    /// The processes followed since [`Pipeline::follow_tree`].
    pub fn tree(&self) -> Option<&std::collections::HashSet<u32>> {
        self.attributor.tree()
    }

    /// Every finding held.
    pub fn findings(&self) -> impl Iterator<Item = &crate::findings::Finding> {
        self.findings.all()
    }

    /// One export request's spans from one process, from the receiver.
    pub fn handle_export(&mut self, batch: &ExportBatch) {
        if !self.use_receiver {
            self.receiver_batches_ignored += 1;
            return;
        }
        self.use_export(batch);
    }

    /// One export's spans, from the receiver or off the wire.
    fn use_export(&mut self, batch: &ExportBatch) {
        if let (Some(pid), Some(name)) = (batch.pid, &batch.service_name) {
            self.attributor.learn_exported_service(pid, name.clone());
        }
        self.correlator.exported(batch, &mut self.raised);
        self.record_raised();
    }

    /// Judges what is due, and publishes the tick's snapshot.
    pub fn tick(&mut self, now: SystemTime, capture: CaptureStatus) -> Snapshot {
        self.correlator.judge_due(now, &mut self.raised);
        self.record_raised();
        self.snapshot(now, capture)
    }

    /// Forgets processes that exited (their findings stay until reported and evicted).
    pub fn sweep(&mut self) {
        let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists();
        self.correlator.sweep(alive, &mut self.raised);
        self.record_raised();
        let stats = self.correlator.stats();
        self.attributor.sweep(alive, |pid| stats.contains_key(&pid));
        self.parser.retain(alive);
    }

    /// At exit: settles what can be, and publishes the last snapshot. What is still waiting
    /// for spans is uncertain, not a finding.
    pub fn finish(&mut self, capture: CaptureStatus) -> Snapshot {
        self.correlator.finish(&mut self.raised);
        self.record_raised();
        self.snapshot(SystemTime::now(), capture)
    }

    fn record_raised(&mut self) {
        for r in self.raised.drain(..) {
            let mut subject = r.subject.unwrap_or_else(|| {
                let info = self.attributor.process_by_pid(r.key.pid);
                self.attributor.subject(&info)
            });
            // A process often names its service in its first span export, after the request
            // a verdict was held for.
            if subject.service_name.is_none() {
                if let Some(name) = self.attributor.service_name(r.key.pid) {
                    Arc::make_mut(&mut subject).service_name = Some(name);
                }
            }
            let key = r.key.clone();
            self.findings
                .record_many(r.key, &subject, r.evidence, r.at, r.count);
            let (Some(place), Some(a)) = (r.place, &mut self.annotations) else {
                continue;
            };
            if !a.admit(&key, r.at) {
                continue;
            }
            if let Some(f) = self.findings.get(&key) {
                a.pending.push(Annotation {
                    finding: f.clone(),
                    place,
                });
            }
        }
    }

    fn snapshot(&mut self, now: SystemTime, capture: CaptureStatus) -> Snapshot {
        let mut processes: Vec<ProcessRow> = self
            .correlator
            .stats()
            .iter()
            .map(|(&pid, stats)| ProcessRow {
                pid,
                comm: self.attributor.label(pid).map(|l| l.comm.clone()),
                service_name: self
                    .attributor
                    .label(pid)
                    .and_then(|l| l.service_name.clone())
                    .or_else(|| self.attributor.service_name(pid)),
                stats: stats.clone(),
                findings: Vec::new(),
                inventory: self.attributor.label(pid).and_then(|l| l.inventory.clone()),
            })
            .collect();
        processes.sort_unstable_by_key(|p| p.pid);
        for f in self.findings.all() {
            if let Ok(i) = processes.binary_search_by_key(&f.key.pid, |p| p.pid) {
                processes[i].findings.push(FindingBrief {
                    kind: f.key.kind,
                    count: f.count,
                    tls: f.key.tls,
                    protocol: f.key.protocol,
                });
            }
        }
        for p in &mut processes {
            p.findings.sort();
        }
        let mut agent = AgentCounters {
            events: self.events,
            process_records: self.process_records,
            decode_errors: self.decode_errors,
            parse: self.parser.counters.clone(),
            wire: self.parser.export_counters().clone(),
            receiver_batches_ignored: self.receiver_batches_ignored,
            h2_connections_evicted: self.parser.h2_evicted(),
            go_tls_too_old: capture.go_tls_too_old,
            attribute: self.attributor.counters(),
            correlate: self.correlator.counters().clone(),
            process_unknown: self.correlator.process_unknown(),
            verdicts_settled_early: self.correlator.verdicts_settled_early(),
            traces: self.correlator.trace_counters().clone(),
            findings: self.findings.len() as u64,
            findings_evicted: self.findings.evicted,
            processes_with_stats: self.correlator.stats().len() as u64,
            annotations: AnnotationCounters::default(),
        };
        let mut annotations = Vec::new();
        if let Some(a) = &mut self.annotations {
            annotations = std::mem::take(&mut a.pending);
            a.published += annotations.len() as u64;
            agent.annotations = AnnotationCounters {
                published: a.published,
                rate_limited: a.rate_limited,
                dropped: a.dropped,
            };
        }
        Snapshot {
            taken_at: Some(now),
            changed: self.findings.take_changed(),
            processes,
            findings_by_kind: self.findings.count_by_kind(),
            kernel: capture.kernel,
            agent,
            receiver: None,
            ring_lag_ms: capture.ring_lag_ms,
            annotations,
        }
    }
}

/// The process of an outbound request, as the correlate stage asks about it.
struct Sending<'a> {
    attributor: &'a mut Attributor,
    event: &'a CapturedEvent,
    info: Arc<ProcessInfo>,
}

impl Sender for Sending<'_> {
    fn otel_env(&self) -> bool {
        self.info.otel_env
    }

    fn identity_known(&self) -> bool {
        self.info.identity_known()
    }

    fn peer(&mut self) -> Option<SocketAddr> {
        self.attributor.peer(self.event, &self.info)
    }

    fn subject(&mut self) -> Arc<Subject> {
        self.attributor.subject(&self.info)
    }
}

fn boot_offset() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(monotonic)
}
