//! Every rule lives here. What each process puts on the wire is judged alone (`wire`), against
//! whether the process is instrumented (`instrumentation`; `wiring` when it links an SDK that
//! never exports), against the spans it exports (`traces`), and what it links against itself
//! (`skew`). Rules are functions over recorded state, unit-tested on recorded sequences; the
//! [`Correlator`] feeds them and hands back the findings to record ([`Raised`]).

pub mod instrumentation;
pub mod skew;
pub mod traces;
mod wire;
pub mod wiring;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use self::wire::{judge_outbound, propagation, ProcessStats, Verdict};
use self::{
    instrumentation::{needs_wiring_verdict, Instrumentation},
    traces::{ExportedSpan, TraceCounters, TraceState},
    wiring::{Wiring, WiringCounters},
};
use crate::{
    attribute::{inventory::Inventory, Subject},
    findings::{FindingKey, FindingKind, Target, TracePlace, SUMMARY},
    model::{otlp, Direction, PidMap, PidSet, Protocol, MAX_PROCESSES},
    otlp::{ExportBatch, Transport},
    parse::Request,
};

/// A finding to record.
#[derive(Clone, Debug)]
pub struct Raised {
    pub key: FindingKey,
    /// The process as known when the request was made; `None`: as known now.
    pub subject: Option<Arc<Subject>>,
    pub evidence: BTreeMap<String, String>,
    pub at: SystemTime,
    /// Occurrences at `at` (more than one when held requests are settled together).
    pub count: u64,
    /// Where this occurrence goes in a trace, when annotating (`--trace-annotations`) and the
    /// rule knows the trace.
    pub place: Option<TracePlace>,
}

impl Raised {
    /// One occurrence.
    pub fn once(
        key: FindingKey,
        subject: Option<Arc<Subject>>,
        evidence: BTreeMap<String, String>,
        at: SystemTime,
        place: Option<TracePlace>,
    ) -> Self {
        Self {
            key,
            subject,
            evidence,
            at,
            count: 1,
            place,
        }
    }
}

/// What correlation needs to know about the process that sent (or received) a request; the
/// peer and the subject are asked for only when a rule needs them (both may read /proc).
pub trait Sender {
    /// Its environment has OTEL_* variables.
    fn otel_env(&self) -> bool;
    /// Its identity (environment) could be read: a verdict about it is a fact, not a guess.
    fn identity_known(&self) -> bool;
    /// The peer of the socket the request went out on.
    fn peer(&mut self) -> Option<SocketAddr>;
    /// The process, for a finding (shared: the same process raises many).
    fn subject(&mut self) -> Arc<Subject>;
    /// Its runtime and OpenTelemetry components, if they could be read.
    fn inventory(&mut self) -> Option<Arc<Inventory>> {
        self.subject().inventory.clone()
    }
}

/// Counts of what this stage did not judge, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CorrelateCounters {
    /// Outbound requests whose capture ended before the header block and showed no context.
    pub undetermined: u64,
    /// OTLP exports seen on the wire (to this agent or elsewhere).
    pub telemetry_exports: u64,
    pub export_batches: u64,
    /// Export batches with no exporting pid (socket and `process.pid` both unknown).
    pub unattributed_batches: u64,
    /// Processes whose request counts were forgotten to stay within `MAX_PROCESSES`.
    pub stats_evicted: u64,
    /// Requests held for the `sdk_not_wired` verdict and left unjudged (see [`Wiring`]).
    pub wiring: WiringCounters,
    /// Export batches sent by the agent itself (its trace annotations reaching its own
    /// receiver): never judged.
    pub own_batches_ignored: u64,
    /// Spans marked `tracegap.annotation=true` (a tracegap's annotations, forwarded or read
    /// off the wire of a collector): never judged.
    pub annotation_spans_ignored: u64,
}

pub struct Correlator {
    stats: PidMap<u32, ProcessStats>,
    traces: TraceState,
    instrumentation: Instrumentation,
    wiring: Wiring,
    /// Processes whose modules were checked for version skew (once each).
    skew_checked: PidSet,
    span_grace: Duration,
    counters: CorrelateCounters,
    /// The agent's own pid: its exports are never judged.
    own_pid: u32,
}

impl Correlator {
    pub fn new(span_grace: Duration) -> Self {
        Self {
            stats: PidMap::default(),
            traces: TraceState::default(),
            instrumentation: Instrumentation::default(),
            wiring: Wiring::default(),
            skew_checked: PidSet::default(),
            span_grace,
            counters: CorrelateCounters::default(),
            own_pid: std::process::id(),
        }
    }

    /// From now on, findings the rules can place in a trace carry their [`TracePlace`].
    pub fn annotate(&mut self) {
        self.traces.annotate();
    }

    /// A connection started HTTP/2. To the OTLP/gRPC port it is a span export: the process is
    /// instrumented (known before its first export call is decoded, and even if that call
    /// cannot be).
    pub fn h2_connection(&mut self, pid: u32, direction: Direction, peer: Option<SocketAddr>) {
        if direction == Direction::Outbound && peer.is_some_and(|p| p.port() == otlp::GRPC_PORT) {
            // Which signal it carries is known only from its calls: spans, until told.
            self.instrumentation.saw_exporter(pid, true);
        }
    }

    /// A request `pid` received.
    pub fn inbound(
        &mut self,
        pid: u32,
        at: SystemTime,
        req: &Request,
        receiver: &mut impl Sender,
        out: &mut Vec<Raised>,
    ) {
        self.check_skew(pid, Direction::Inbound, at, receiver, out);
        let stats = self.stats_of(pid);
        stats.last_seen = Some(at);
        stats.inbound += 1;
        if !req.is_telemetry() {
            if let Some(tp) = req.trace.traceparent() {
                self.traces.inbound(pid, at, tp);
            }
        }
    }

    /// A request `pid` sent (`tls`: seen inside a TLS library).
    pub fn outbound(
        &mut self,
        pid: u32,
        at: SystemTime,
        req: &Request,
        tls: bool,
        sender: &mut impl Sender,
        out: &mut Vec<Raised>,
    ) {
        self.check_skew(pid, Direction::Outbound, at, sender, out);
        let instrumented = sender.otel_env() || self.instrumentation.is_exporter(pid);
        let verdict = judge_outbound(req, instrumented);
        self.stats_of(pid).last_seen = Some(at);
        match &verdict {
            Verdict::Telemetry => {
                self.stats_of(pid).telemetry_exports += 1;
                self.counters.telemetry_exports += 1;
                self.instrumentation.saw_exporter(pid, exports_spans(req));
                return;
            }
            Verdict::Undetermined => self.counters.undetermined += 1,
            Verdict::Clean | Verdict::Finding(..) => {}
        }
        self.stats_of(pid).count_outbound(propagation(req));
        let target = Target {
            peer: sender.peer(),
            method: req.method.clone(),
            path: req.path.clone(),
            protocol: req.protocol,
        };
        let key = match verdict {
            Verdict::Finding(kind, evidence) => Some((
                FindingKey::new(kind, pid, Direction::Outbound, &target, tls),
                evidence,
            )),
            Verdict::Clean | Verdict::Undetermined | Verdict::Telemetry => None,
        };
        if let Some(tp) = req.trace.traceparent() {
            self.traces.outbound(pid, at, tp, target, self.span_grace);
        }
        let Some((key, evidence)) = key else {
            return;
        };
        let subject = sender.subject();
        // A request without context while handling traced request T: where T ended.
        let place = match key.kind {
            FindingKind::MissingTraceparent | FindingKind::UninstrumentedClient => {
                self.traces.handling_place(pid, at)
            }
            _ => None,
        };
        let without_context = matches!(
            key.kind,
            FindingKind::UninstrumentedClient | FindingKind::MissingTraceparent
        );
        if without_context
            && needs_wiring_verdict(
                subject.inventory.as_deref(),
                self.instrumentation.exported_spans(pid),
            )
        {
            self.judge_wiring(key, subject, evidence, at, place, out);
            return;
        }
        if key.kind == FindingKind::UninstrumentedClient {
            // The process may export spans a moment later (SDKs export after the request):
            // decide between missing_traceparent and uninstrumented_client once that had time.
            let identity_known = sender.identity_known();
            self.instrumentation.defer(
                Raised::once(key, Some(subject), evidence, at, place),
                identity_known,
                out,
            );
            return;
        }
        out.push(Raised::once(key, Some(subject), evidence, at, place));
    }

    /// A request without context from a process whose SDK is linked and has exported no span:
    /// `sdk_not_wired` at once if its window already ended silent, else held for its window.
    fn judge_wiring(
        &mut self,
        mut key: FindingKey,
        subject: Arc<Subject>,
        mut evidence: BTreeMap<String, String>,
        at: SystemTime,
        place: Option<TracePlace>,
        out: &mut Vec<Raised>,
    ) {
        if self.wiring.is_silent(key.pid) {
            key.kind = FindingKind::SdkNotWired;
            wiring::sdk_evidence(&subject, &mut evidence);
            out.push(Raised::once(key, Some(subject), evidence, at, place));
            return;
        }
        self.wiring
            .hold(key, subject, evidence, at, place, self.span_grace);
        self.counters.wiring.clone_from(&self.wiring.counters);
    }

    /// The first request of a process: are its OpenTelemetry modules skewed?
    fn check_skew(
        &mut self,
        pid: u32,
        direction: Direction,
        at: SystemTime,
        process: &mut impl Sender,
        out: &mut Vec<Raised>,
    ) {
        if self.skew_checked.contains(&pid) || self.skew_checked.len() >= MAX_PROCESSES {
            return;
        }
        self.skew_checked.insert(pid);
        let Some(inventory) = process.inventory() else {
            return;
        };
        let found = skew::version_skew(&inventory);
        if found.is_empty() {
            return;
        }
        let summary: Vec<String> = found.iter().map(skew::Skew::describe).collect();
        let mut evidence: BTreeMap<String, String> = found
            .iter()
            .map(|s| {
                (
                    s.module.clone(),
                    format!("linked {}, required {}", s.linked, s.required),
                )
            })
            .collect();
        evidence.insert(SUMMARY.into(), summary.join("; "));
        evidence.insert("otel_components".into(), inventory.components_text());
        let key = FindingKey::new(
            FindingKind::OtelVersionSkew,
            pid,
            direction,
            &Target::process(),
            false,
        );
        out.push(Raised::once(
            key,
            Some(process.subject()),
            evidence,
            at,
            None,
        ));
    }

    /// One export request's spans from one process (the receiver's [`ExportBatch`]).
    pub fn exported(&mut self, batch: &ExportBatch, out: &mut Vec<Raised>) {
        self.counters.export_batches += 1;
        let Some(pid) = batch.pid else {
            self.counters.unattributed_batches += 1;
            return;
        };
        if pid == self.own_pid {
            self.counters.own_batches_ignored += 1;
            return;
        }
        let spans: Vec<ExportedSpan> = batch
            .spans
            .iter()
            .filter(|s| !s.annotation)
            .map(|s| ExportedSpan {
                trace_id: s.trace_id,
                span_id: s.span_id,
                parent_span_id: s.parent_span_id,
                start: SystemTime::UNIX_EPOCH + Duration::from_nanos(s.start_unix_nanos),
                end: SystemTime::UNIX_EPOCH + Duration::from_nanos(s.end_unix_nanos),
            })
            .collect();
        let annotations = batch.spans.len() - spans.len();
        if annotations > 0 {
            self.counters.annotation_spans_ignored += annotations as u64;
            if spans.is_empty() {
                // Only tracegap's annotations (e.g. a collector's received exports read off
                // the wire): says nothing about the process.
                return;
            }
        }
        self.instrumentation.saw_exporter(pid, !spans.is_empty());
        self.stats_of(pid).spans_exported += spans.len() as u64;
        if let Some(evidence) = self.traces.exported(pid, batch.received_at, &spans) {
            let protocol = match batch.transport {
                Transport::Grpc => Protocol::Grpc,
                Transport::HttpProtobuf | Transport::HttpJson => Protocol::Http1,
            };
            let key = FindingKey::new(
                FindingKind::SynchronousExport,
                pid,
                Direction::Outbound,
                &Target::trace_export(protocol),
                false,
            );
            out.push(Raised::once(key, None, evidence, batch.received_at, None));
        }
    }

    /// Judges outbound contexts whose span grace window ended, and settles provisional verdicts.
    pub fn judge_due(&mut self, now: SystemTime, out: &mut Vec<Raised>) {
        self.instrumentation.settle_due(now, out);
        let instrumentation = &self.instrumentation;
        self.wiring
            .settle_due(now, |pid| instrumentation.exported_spans(pid), out);
        for f in self.traces.judge_due(now) {
            out.push(Raised::once(
                FindingKey::new(f.kind, f.pid, Direction::Outbound, &f.target, false),
                None,
                f.evidence,
                f.at,
                f.place,
            ));
        }
    }

    /// Forgets processes that exited, settling what they left waiting.
    pub fn sweep(&mut self, alive: impl Fn(u32) -> bool, out: &mut Vec<Raised>) {
        // An exited process exports nothing more: settle its requests before forgetting it.
        self.instrumentation.settle_exited(&alive, out);
        let instrumentation = &self.instrumentation;
        self.wiring
            .settle_exited(&alive, |pid| instrumentation.exported_spans(pid), out);
        self.wiring.retain(&alive);
        self.skew_checked.retain(|pid| alive(*pid));
        self.instrumentation.retain(&alive);
        self.traces.retain(&alive);
        if self.stats.len() > MAX_PROCESSES {
            let before = self.stats.len();
            self.stats.retain(|pid, _| alive(*pid));
            self.counters.stats_evicted += (before - self.stats.len()) as u64;
        }
    }

    /// At exit: what is still waiting for spans is uncertain, not a finding.
    pub fn finish(&mut self, out: &mut Vec<Raised>) {
        self.instrumentation.settle_all(out);
        let instrumentation = &self.instrumentation;
        self.wiring
            .finish(|pid| instrumentation.exported_spans(pid), out);
        self.counters.wiring.clone_from(&self.wiring.counters);
        self.judge_due(SystemTime::now(), out);
        self.traces.finish();
    }

    /// Request counts per process.
    pub fn stats(&self) -> &PidMap<u32, ProcessStats> {
        &self.stats
    }

    pub fn counters(&self) -> &CorrelateCounters {
        &self.counters
    }

    /// Requests without context whose process could not be identified (not judged).
    pub fn process_unknown(&self) -> u64 {
        self.instrumentation.process_unknown
    }

    /// Requests without context settled before their time: too many were held.
    pub fn verdicts_settled_early(&self) -> u64 {
        self.instrumentation.settled_early
    }

    pub fn trace_counters(&self) -> &TraceCounters {
        &self.traces.counters
    }

    fn stats_of(&mut self, pid: u32) -> &mut ProcessStats {
        self.stats.entry(pid).or_default()
    }
}

/// Whether an OTLP export request carries spans (not metrics or logs).
fn exports_spans(req: &Request) -> bool {
    let traces = otlp::Signal::Traces;
    match req.protocol {
        Protocol::Http1 => req.path.ends_with(traces.http_path()),
        Protocol::H2 | Protocol::Grpc => req.path == traces.grpc_path(),
    }
}

#[cfg(test)]
mod tests;
