//! Wire against spans: per process, the trace contexts it received and sent, and the spans it
//! exported; the rules `broken_context`, `unexported_span` and `synchronous_export`.
//!
//! Time windows, not perfect causality (shared/DESIGN.md): an outbound request is judged
//! `span_grace` after it was seen, when the spans that explain it should have arrived.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    time::{Duration, SystemTime},
};

use crate::{
    findings::{FindingKind, Target, TracePlace},
    model::{PidMap, MAX_PROCESSES},
    parse::trace_context::{to_hex, TraceParent},
};

/// How long after a traced request arrived the process may still be handling it.
pub const HANDLING_WINDOW: Duration = Duration::from_secs(5);
/// Clock slack between the kernel's timestamps and the SDK's span times.
const SLACK: Duration = Duration::from_millis(50);
/// Export requests with one span each, within [`SYNC_WINDOW`], that make `synchronous_export`.
/// A BatchSpanProcessor (5 s schedule by default) cannot export this often with so few spans.
pub const SYNC_MIN_EXPORTS: usize = 10;
pub const SYNC_WINDOW: Duration = Duration::from_secs(10);

// Bounds: every table has one; past it the oldest entries go (counted).
const MAX_SPANS: usize = 20_000;
const MAX_INBOUND: usize = 2048;
const MAX_PENDING: usize = 4096;
/// Trace ids received, and roots exported, per process; past it the older half goes.
const MAX_RECEIVED: usize = 2 * MAX_INBOUND;
const MAX_ROOTS: usize = MAX_SPANS;
/// Spans and received contexts older than this are forgotten.
const RETENTION: Duration = Duration::from_secs(300);

/// A span a process exported (what the rules need of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportedSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub start: SystemTime,
    pub end: SystemTime,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceFinding {
    pub pid: u32,
    pub kind: FindingKind,
    pub target: Target,
    pub at: SystemTime,
    pub evidence: BTreeMap<String, String>,
    /// Where this occurrence goes in a trace (only when annotating, see [`TraceState::annotate`]).
    pub place: Option<TracePlace>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceCounters {
    /// Outbound contexts judged.
    pub judged: u64,
    /// Outbound contexts of processes that never exported to this agent: not judged for spans.
    pub unverifiable: u64,
    /// Unsampled outbound contexts (flag 00): no span is promised.
    pub unsampled: u64,
    /// Spans that arrived after their parent was already called unexported.
    pub late_spans: u64,
    pub pending_dropped: u64,
    pub spans_evicted: u64,
    /// Outbound contexts still inside their grace window at exit.
    pub pending_at_exit: u64,
    /// Processes whose trace state was forgotten to stay within `MAX_PROCESSES` (their
    /// pending contexts are not judged).
    pub processes_evicted: u64,
    /// Received trace ids and exported roots forgotten to stay within their bounds (the older
    /// half of a process's table at a time): a later `broken_context` may be missed.
    pub trace_ids_evicted: u64,
}

#[derive(Clone, Debug)]
struct Inbound {
    at: SystemTime,
    tp: TraceParent,
}

#[derive(Clone, Debug)]
struct Pending {
    at: SystemTime,
    due: SystemTime,
    tp: TraceParent,
    target: Target,
}

#[derive(Default)]
struct ProcessTraces {
    inbound: VecDeque<Inbound>,
    /// Trace ids received, with the last time.
    received: HashMap<[u8; 16], SystemTime>,
    spans: HashMap<[u8; 8], ExportedSpan>,
    span_order: VecDeque<([u8; 8], SystemTime)>,
    /// Traces whose root span this process exported → the root's start.
    roots: HashMap<[u8; 16], SystemTime>,
    pending: VecDeque<Pending>,
    /// (time, span count) of the latest export requests.
    exports: VecDeque<(SystemTime, usize)>,
    exported: bool,
    /// Parent ids already called unexported, to count late arrivals.
    flagged: HashSet<[u8; 8]>,
}

#[derive(Default)]
pub struct TraceState {
    procs: PidMap<u32, ProcessTraces>,
    pub counters: TraceCounters,
    /// Findings carry their [`TracePlace`] (`--trace-annotations`).
    annotate: bool,
}

impl TraceState {
    fn proc(&mut self, pid: u32) -> &mut ProcessTraces {
        if !self.procs.contains_key(&pid) && self.procs.len() >= MAX_PROCESSES {
            // Forget the process with the least to say: no pending contexts, fewest spans.
            if let Some(victim) = self
                .procs
                .iter()
                .min_by_key(|(_, p)| (p.pending.len(), p.spans.len()))
                .map(|(pid, _)| *pid)
            {
                if let Some(p) = self.procs.remove(&victim) {
                    self.counters.processes_evicted += 1;
                    self.counters.pending_dropped += p.pending.len() as u64;
                }
            }
        }
        self.procs.entry(pid).or_default()
    }

    /// From now on, findings carry where they go in a trace.
    pub fn annotate(&mut self) {
        self.annotate = true;
    }

    /// Where a request `pid` sent at `at` without context goes in a trace: in the inbound
    /// trace it was handling then (the latest traced request that arrived within
    /// [`HANDLING_WINDOW`] before), under the process's server span for it when exported, else
    /// under the parent id received. `None` when not annotating or handling no traced request.
    pub fn handling_place(&self, pid: u32, at: SystemTime) -> Option<TracePlace> {
        if !self.annotate {
            return None;
        }
        let p = self.procs.get(&pid)?;
        let handling = handling_at(p, at, |_| true)?;
        Some(TracePlace {
            trace_id: handling.tp.trace_id,
            span_id: None,
            parent_span_id: Some(under(p, &handling.tp)),
            link: None,
            start: at,
            end: at,
        })
    }

    /// A request with a valid `traceparent` arrived at `pid`.
    pub fn inbound(&mut self, pid: u32, at: SystemTime, tp: TraceParent) {
        let p = self.proc(pid);
        if p.inbound.len() >= MAX_INBOUND {
            p.inbound.pop_front();
        }
        p.inbound.push_back(Inbound { at, tp });
        p.received.insert(tp.trace_id, at);
        let trimmed = keep_newer_half(&mut p.received, MAX_RECEIVED, |at| *at);
        self.counters.trace_ids_evicted += trimmed;
    }

    /// Entries over every table (processes, contexts, spans, roots, exports), to check bounds.
    pub fn entries(&self) -> usize {
        self.procs.len()
            + self
                .procs
                .values()
                .map(|p| {
                    p.inbound.len()
                        + p.received.len()
                        + p.spans.len()
                        + p.span_order.len()
                        + p.roots.len()
                        + p.pending.len()
                        + p.exports.len()
                        + p.flagged.len()
                })
                .sum::<usize>()
    }

    /// `pid` sent a request with a valid `traceparent`; it is judged at `at + grace`.
    pub fn outbound(
        &mut self,
        pid: u32,
        at: SystemTime,
        tp: TraceParent,
        target: Target,
        grace: Duration,
    ) {
        let p = self.proc(pid);
        if p.pending.len() >= MAX_PENDING {
            p.pending.pop_front();
            self.counters.pending_dropped += 1;
        }
        let p = self.proc(pid);
        p.pending.push_back(Pending {
            at,
            due: at + grace,
            tp,
            target,
        });
    }

    /// One export request of `pid` arrived with these spans. Returns evidence when the
    /// process's recent exports show one span per export at a sustained rate.
    pub fn exported(
        &mut self,
        pid: u32,
        received_at: SystemTime,
        spans: &[ExportedSpan],
    ) -> Option<BTreeMap<String, String>> {
        let mut late = 0;
        let mut evicted = 0;
        let mut trimmed = 0;
        let p = self.proc(pid);
        p.exported = true;
        for s in spans {
            if p.flagged.remove(&s.span_id) {
                late += 1;
            }
            if s.parent_span_id.is_none() {
                p.roots.insert(s.trace_id, s.start);
                trimmed += keep_newer_half(&mut p.roots, MAX_ROOTS, |start| *start);
            }
            if p.spans.insert(s.span_id, *s).is_none() {
                p.span_order.push_back((s.span_id, received_at));
            }
            while p.span_order.len() > MAX_SPANS {
                if let Some((id, _)) = p.span_order.pop_front() {
                    p.spans.remove(&id);
                    evicted += 1;
                }
            }
        }
        if p.exports.len() >= SYNC_MIN_EXPORTS {
            p.exports.pop_front();
        }
        p.exports.push_back((received_at, spans.len()));
        let sync = synchronous_export(&p.exports);
        self.counters.late_spans += late;
        self.counters.spans_evicted += evicted;
        self.counters.trace_ids_evicted += trimmed;
        sync
    }

    /// Judges every outbound context whose grace window ended by `now`.
    pub fn judge_due(&mut self, now: SystemTime) -> Vec<TraceFinding> {
        let mut out = Vec::new();
        for (&pid, p) in &mut self.procs {
            while p.pending.front().is_some_and(|o| o.due <= now) {
                let Some(o) = p.pending.pop_front() else {
                    break;
                };
                if !o.tp.sampled() {
                    self.counters.unsampled += 1;
                    continue;
                }
                if !p.exported {
                    self.counters.unverifiable += 1;
                    continue;
                }
                self.counters.judged += 1;
                for (kind, evidence, mut place) in judge(p, &o, self.annotate) {
                    // One placeholder per missing span, however many calls it made.
                    if kind == FindingKind::UnexportedSpan && !p.flagged.insert(o.tp.parent_id) {
                        place = None;
                    }
                    out.push(TraceFinding {
                        pid,
                        kind,
                        target: o.target.clone(),
                        at: o.at,
                        evidence,
                        place,
                    });
                }
            }
            expire(p, now);
        }
        out
    }

    /// At exit: contexts still in their grace window are uncertain, not findings.
    pub fn finish(&mut self) {
        self.counters.pending_at_exit += self
            .procs
            .values()
            .map(|p| p.pending.len() as u64)
            .sum::<u64>();
        for p in self.procs.values_mut() {
            p.pending.clear();
        }
    }

    /// Forgets processes that exited and have nothing left to judge.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.procs
            .retain(|pid, p| alive(*pid) || !p.pending.is_empty());
    }
}

/// Past `max` entries, keeps the newer half by `time` (amortised O(1) per insert: a full
/// pass only every `max / 2` inserts). Entries sharing the median time go together. Returns
/// how many went.
fn keep_newer_half<K, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    time: impl Fn(&V) -> SystemTime,
) -> u64 {
    if map.len() <= max {
        return 0;
    }
    let before = map.len();
    let mut times: Vec<SystemTime> = map.values().map(&time).collect();
    let mid = times.len() / 2;
    let (_, median, _) = times.select_nth_unstable(mid);
    let median = *median;
    map.retain(|_, v| time(v) > median);
    (before - map.len()) as u64
}

fn expire(p: &mut ProcessTraces, now: SystemTime) {
    let horizon = now.checked_sub(RETENTION).unwrap_or(SystemTime::UNIX_EPOCH);
    while p.inbound.front().is_some_and(|i| i.at < horizon) {
        p.inbound.pop_front();
    }
    p.received.retain(|_, at| *at >= horizon);
    while p.span_order.front().is_some_and(|(_, at)| *at < horizon) {
        if let Some((id, _)) = p.span_order.pop_front() {
            p.spans.remove(&id);
        }
    }
    p.roots.retain(|_, start| *start >= horizon);
    if p.flagged.len() > MAX_PENDING {
        p.flagged.clear();
    }
}

/// The latest traced request that arrived within [`HANDLING_WINDOW`] before `at` (and at most
/// [`SLACK`] after), among those `which` accepts: the one the process was handling.
fn handling_at(
    p: &ProcessTraces,
    at: SystemTime,
    which: impl Fn(&Inbound) -> bool,
) -> Option<&Inbound> {
    p.inbound.iter().rev().find(|i| {
        i.at <= at + SLACK
            && at.duration_since(i.at).unwrap_or_default() <= HANDLING_WINDOW
            && which(i)
    })
}

/// The span to hang an annotation under for an inbound context: the process's server span for
/// it (an exported span in that trace whose parent is the id received), else the id received.
/// A scan of the process's spans: only when annotating.
fn under(p: &ProcessTraces, received: &TraceParent) -> [u8; 8] {
    p.spans
        .values()
        .find(|s| s.trace_id == received.trace_id && s.parent_span_id == Some(received.parent_id))
        .map_or(received.parent_id, |s| s.span_id)
}

type Judged = (FindingKind, BTreeMap<String, String>, Option<TracePlace>);

/// The rules for one outbound context, in order. A proxy forwarding the context it received
/// (outbound == inbound trace and parent) is never judged. With `annotate`, each finding says
/// where it goes in a trace.
fn judge(p: &ProcessTraces, o: &Pending, annotate: bool) -> Vec<Judged> {
    let passthrough = p
        .inbound
        .iter()
        .any(|i| i.tp.trace_id == o.tp.trace_id && i.tp.parent_id == o.tp.parent_id);
    if passthrough {
        return Vec::new();
    }
    let mut found = Vec::new();
    if let Some((evidence, handling)) = broken_context(p, o) {
        // In T, under the server span for it; linked to the new trace.
        let place = annotate.then(|| TracePlace {
            trace_id: handling.trace_id,
            span_id: None,
            parent_span_id: Some(under(p, &handling)),
            link: Some((o.tp.trace_id, o.tp.parent_id)),
            start: o.at,
            end: o.at,
        });
        found.push((FindingKind::BrokenContext, evidence, place));
    }
    if !p.spans.contains_key(&o.tp.parent_id) {
        let mut ev = BTreeMap::new();
        ev.insert("trace_id".into(), to_hex(&o.tp.trace_id));
        ev.insert("parent_id".into(), to_hex(&o.tp.parent_id));
        ev.insert(
            "spans_exported_by_process".into(),
            p.spans.len().to_string(),
        );
        // A placeholder with the missing span's own id, in its trace; under the server span of
        // the traced request in that trace the process was handling, if any.
        let place = annotate.then(|| {
            let same_trace = handling_at(p, o.at, |i| i.tp.trace_id == o.tp.trace_id);
            let start = same_trace.map_or(o.at, |i| i.at.min(o.at));
            TracePlace {
                trace_id: o.tp.trace_id,
                span_id: Some(o.tp.parent_id),
                parent_span_id: same_trace
                    .map(|i| under(p, &i.tp))
                    .filter(|id| *id != o.tp.parent_id),
                link: None,
                start,
                end: o.at,
            }
        });
        found.push((FindingKind::UnexportedSpan, ev, place));
    }
    found
}

/// `broken_context`: the outbound trace was never received by this process, the process was
/// handling a traced request when it sent it (one arrived within [`HANDLING_WINDOW`] before),
/// and the outbound trace is one the process itself started (it exported the root span) after
/// that request arrived. A process without inbound traced traffic (cron job, worker) is never
/// flagged, nor one whose new traces started before the request.
/// Returns the evidence and the context received of the request being handled.
fn broken_context(
    p: &ProcessTraces,
    o: &Pending,
) -> Option<(BTreeMap<String, String>, TraceParent)> {
    if p.received.contains_key(&o.tp.trace_id) {
        return None;
    }
    let root_start = *p.roots.get(&o.tp.trace_id)?;
    let handling = handling_at(p, o.at, |i| {
        root_start + SLACK >= i.at && i.tp.trace_id != o.tp.trace_id
    })?;
    let mut ev = BTreeMap::new();
    ev.insert("received_trace_id".into(), to_hex(&handling.tp.trace_id));
    ev.insert("sent_trace_id".into(), to_hex(&o.tp.trace_id));
    ev.insert(
        "sent_after_received_ms".into(),
        o.at.duration_since(handling.at)
            .unwrap_or_default()
            .as_millis()
            .to_string(),
    );
    Some((ev, handling.tp))
}

/// The last [`SYNC_MIN_EXPORTS`] export requests each carried one span, within [`SYNC_WINDOW`].
fn synchronous_export(exports: &VecDeque<(SystemTime, usize)>) -> Option<BTreeMap<String, String>> {
    if exports.len() < SYNC_MIN_EXPORTS || exports.iter().any(|(_, n)| *n != 1) {
        return None;
    }
    let (first, _) = exports.front()?;
    let (last, _) = exports.back()?;
    let span = last.duration_since(*first).unwrap_or_default();
    (span <= SYNC_WINDOW).then(|| {
        let mut ev = BTreeMap::new();
        ev.insert("spans_per_export".into(), "1".into());
        ev.insert("exports".into(), exports.len().to_string());
        ev.insert("within_ms".into(), span.as_millis().to_string());
        ev
    })
}

#[cfg(test)]
mod tests;
