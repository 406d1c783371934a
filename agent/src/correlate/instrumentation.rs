//! Is a process instrumented? It is when its environment has OTEL_* variables, or once it is
//! seen exporting spans (to this agent, or on the wire: `POST /v1/traces`, an HTTP/2 connection
//! to the OTLP/gRPC port). SDKs export after the request, so a request without context from a
//! process not (yet) known to be instrumented is held for [`INSTRUMENTATION_SETTLE`] before it is
//! called `uninstrumented_client` rather than `missing_traceparent`.
//!
//! A process whose executable links the SDK and an OTLP trace exporter is judged by
//! [`super::wiring`] instead (`sdk_not_wired` or `missing_traceparent`, after the span grace
//! window): what [`needs_wiring_verdict`] decides.

use std::{
    collections::{HashSet, VecDeque},
    time::{Duration, SystemTime},
};

use super::Raised;
use crate::{attribute::inventory::Inventory, findings::FindingKind};

/// How long a process has to show it is instrumented (export spans) after a request without
/// context, before the request is called `uninstrumented_client`.
pub const INSTRUMENTATION_SETTLE: Duration = Duration::from_secs(5);
/// Requests awaiting that verdict; past it the oldest are settled at once.
const MAX_PROVISIONAL: usize = 65_536;
/// Repeats of the held request just before (same finding, same process as known, same
/// evidence) within this window join it instead of being held one by one: at saturation a
/// client sends the same request ~100k times a second, and holding each for 5 s cost more
/// than everything else the agent does per request.
const JOIN_WITHIN: Duration = Duration::from_secs(1);

/// Requests without context, awaiting their process's instrumentation verdict: one request,
/// or repeats of it that joined it (`raised.count`).
struct Provisional {
    /// When the verdict is due: [`INSTRUMENTATION_SETTLE`] after the last request held here.
    due: SystemTime,
    /// The finding as `uninstrumented_client`, at the first request held here.
    raised: Raised,
    /// The last request held here (`raised.at` when there is one).
    last_at: SystemTime,
    /// The process's identity (environment) was read: if it never exports, it really is
    /// uninstrumented. Otherwise (exited first, no permission) it is unknown and not judged.
    identity_known: bool,
}

impl Provisional {
    /// Whether `raised` repeats this held request and may join it.
    fn joins(&self, raised: &Raised, identity_known: bool) -> bool {
        self.identity_known == identity_known
            && raised.at >= self.raised.at
            && raised
                .at
                .duration_since(self.raised.at)
                .is_ok_and(|d| d < JOIN_WITHIN)
            && self.raised.key == raised.key
            && self.raised.subject == raised.subject
            && self.raised.evidence == raised.evidence
    }

    /// The findings it settles into: the first request (with its trace place) and, when
    /// repeats joined it, the rest at the last one's time, so first and last seen stay exact.
    fn into_raised(self) -> impl Iterator<Item = Raised> {
        let mut first = self.raised;
        let rest = (first.count > 1).then(|| {
            let rest = Raised {
                key: first.key.clone(),
                subject: first.subject.clone(),
                evidence: first.evidence.clone(),
                at: self.last_at,
                count: first.count - 1,
                place: None,
            };
            first.count = 1;
            rest
        });
        std::iter::once(first).chain(rest)
    }
}

#[derive(Default)]
pub struct Instrumentation {
    /// Processes seen sending OTLP exports: instrumented even without OTEL_* env.
    exporters: HashSet<u32>,
    /// Processes seen exporting spans (not only metrics or logs), or on an OTLP/gRPC
    /// connection whose calls were not decoded (counted as spans: not knowing is no finding).
    span_exporters: HashSet<u32>,
    /// Requests without context awaiting the instrumentation verdict of their process.
    provisional: VecDeque<Provisional>,
    /// Requests without context from processes whose environment could not be read (exited
    /// first, or /proc not readable): whether they were instrumented is unknown, so they are
    /// not judged.
    pub process_unknown: u64,
}

impl Instrumentation {
    /// `pid` exports telemetry; `spans`: it is (or may be) spans.
    pub fn saw_exporter(&mut self, pid: u32, spans: bool) {
        self.exporters.insert(pid);
        if spans {
            self.span_exporters.insert(pid);
        }
    }

    pub fn is_exporter(&self, pid: u32) -> bool {
        self.exporters.contains(&pid)
    }

    /// `pid` was seen exporting spans (see `span_exporters`).
    pub fn exported_spans(&self, pid: u32) -> bool {
        self.span_exporters.contains(&pid)
    }

    /// Holds an `uninstrumented_client` verdict until the process had time to export.
    pub fn defer(&mut self, raised: Raised, identity_known: bool, out: &mut Vec<Raised>) {
        if let Some(last) = self.provisional.back_mut() {
            if last.joins(&raised, identity_known) {
                last.raised.count += raised.count;
                last.last_at = raised.at;
                last.due = last.due.max(raised.at + INSTRUMENTATION_SETTLE);
                return;
            }
        }
        if self.provisional.len() >= MAX_PROVISIONAL {
            if let Some(oldest) = self.provisional.pop_front() {
                self.settle_one(oldest, out);
            }
        }
        self.provisional.push_back(Provisional {
            due: raised.at + INSTRUMENTATION_SETTLE,
            last_at: raised.at,
            raised,
            identity_known,
        });
    }

    /// Settles the verdicts due by `now`. Requests are held in the order they were captured,
    /// so this stops at the first one not due: one that was captured a little out of order
    /// (records from different CPUs) waits for the one before it, a few milliseconds at most.
    pub fn settle_due(&mut self, now: SystemTime, out: &mut Vec<Raised>) {
        while self.provisional.front().is_some_and(|p| p.due <= now) {
            if let Some(p) = self.provisional.pop_front() {
                self.settle_one(p, out);
            }
        }
    }

    /// Settles the verdicts of processes that exited (they export nothing more).
    pub fn settle_exited(&mut self, alive: impl Fn(u32) -> bool, out: &mut Vec<Raised>) {
        self.settle(|p| !alive(p.raised.key.pid), out);
    }

    /// Settles everything (at exit).
    pub fn settle_all(&mut self, out: &mut Vec<Raised>) {
        self.settle(|_| true, out);
    }

    /// Forgets exporters that exited.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.exporters.retain(|pid| alive(*pid));
        self.span_exporters.retain(|pid| alive(*pid));
    }

    /// Seen exporting since → `missing_traceparent`; identity unknown → not judged (counted);
    /// otherwise `uninstrumented_client`.
    /// In place, keeping the order of those that wait.
    fn settle(&mut self, ready: impl Fn(&Provisional) -> bool, out: &mut Vec<Raised>) {
        for _ in 0..self.provisional.len() {
            let Some(p) = self.provisional.pop_front() else {
                break;
            };
            if ready(&p) {
                self.settle_one(p, out);
            } else {
                self.provisional.push_back(p);
            }
        }
    }

    fn settle_one(&mut self, p: Provisional, out: &mut Vec<Raised>) {
        let exporter = self.exporters.contains(&p.raised.key.pid);
        if !exporter && !p.identity_known {
            self.process_unknown += p.raised.count;
            return;
        }
        for mut raised in p.into_raised() {
            if exporter {
                raised.key.kind = FindingKind::MissingTraceparent;
            } else {
                // Only a broken chain of an instrumented process goes in the trace.
                raised.place = None;
            }
            out.push(raised);
        }
    }
}

/// Whether a request without context goes to the `sdk_not_wired` rule: its process links the
/// SDK and an OTLP trace exporter (and its environment does not turn span export off), and was
/// not seen exporting spans yet. Otherwise it is judged as before: `missing_traceparent` for an
/// instrumented process, else `uninstrumented_client` after [`INSTRUMENTATION_SETTLE`].
pub fn needs_wiring_verdict(inventory: Option<&Inventory>, exported_spans: bool) -> bool {
    !exported_spans && inventory.is_some_and(Inventory::expects_span_exports)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{findings::FindingKey, model::Direction};

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn request(pid: u32, path: &str, at_ms: u64) -> Raised {
        Raised::once(
            FindingKey {
                kind: FindingKind::UninstrumentedClient,
                pid,
                direction: Direction::Outbound,
                peer: None,
                method: "GET".into(),
                path: path.into(),
                tls: false,
                protocol: Default::default(),
            },
            None,
            BTreeMap::new(),
            t(at_ms),
            None,
        )
    }

    fn counts(out: &[Raised]) -> Vec<(String, u64, SystemTime)> {
        out.iter()
            .map(|r| (r.key.path.clone(), r.count, r.at))
            .collect()
    }

    #[test]
    fn repeats_are_held_together_and_settle_with_exact_first_and_last_seen() {
        let mut held = Instrumentation::default();
        let mut out = Vec::new();
        for ms in [0, 10, 20, 990] {
            held.defer(request(7, "/a", ms), true, &mut out);
        }
        assert_eq!(
            held.provisional.len(),
            1,
            "four repeats within 1 s are one entry"
        );
        // Due 5 s after the last one, not the first.
        held.settle_due(t(5_000), &mut out);
        assert!(out.is_empty());
        held.settle_due(t(5_990), &mut out);
        assert_eq!(
            counts(&out),
            vec![("/a".into(), 1, t(0)), ("/a".into(), 3, t(990))]
        );
    }

    #[test]
    fn other_requests_and_late_repeats_are_held_apart() {
        let mut held = Instrumentation::default();
        let mut out = Vec::new();
        held.defer(request(7, "/a", 0), true, &mut out);
        held.defer(request(7, "/b", 1), true, &mut out);
        held.defer(request(8, "/b", 2), true, &mut out);
        held.defer(request(8, "/b", 1_500), true, &mut out);
        held.defer(request(8, "/b", 1_501), false, &mut out);
        assert_eq!(held.provisional.len(), 5);
        held.settle_all(&mut out);
        let total: u64 = out.iter().map(|r| r.count).sum();
        assert_eq!(total, 4, "the one with an unknown identity is not judged");
        assert_eq!(held.process_unknown, 1);
    }

    #[test]
    fn settling_stops_at_the_first_request_not_due() {
        let mut held = Instrumentation::default();
        let mut out = Vec::new();
        held.defer(request(1, "/a", 0), true, &mut out);
        held.defer(request(2, "/a", 2_000), true, &mut out);
        held.settle_due(t(5_000), &mut out);
        assert_eq!(counts(&out), vec![("/a".into(), 1, t(0))]);
        assert_eq!(held.provisional.len(), 1);
    }

    #[test]
    fn an_exporter_gets_missing_traceparent_for_every_held_repeat() {
        let mut held = Instrumentation::default();
        let mut out = Vec::new();
        held.defer(request(3, "/a", 0), true, &mut out);
        held.defer(request(3, "/a", 5), true, &mut out);
        held.saw_exporter(3, true);
        held.settle_exited(|_| false, &mut out);
        assert!(out
            .iter()
            .all(|r| r.key.kind == FindingKind::MissingTraceparent));
        assert_eq!(out.iter().map(|r| r.count).sum::<u64>(), 2);
    }

    #[test]
    fn a_full_queue_settles_only_its_oldest_request() {
        let mut held = Instrumentation::default();
        let mut out = Vec::new();
        let paths: Vec<String> = (0..=MAX_PROVISIONAL).map(|i| format!("/{i}")).collect();
        for (i, path) in paths.iter().enumerate() {
            held.defer(request(1, path, i as u64), true, &mut out);
        }
        assert_eq!(counts(&out), vec![("/0".into(), 1, t(0))]);
        assert_eq!(held.provisional.len(), MAX_PROVISIONAL);
    }
}
