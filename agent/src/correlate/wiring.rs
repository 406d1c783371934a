//! `sdk_not_wired`: requests without trace context from a process that links the OpenTelemetry
//! SDK and an OTLP trace exporter (its inventory says so) are held until the process has had
//! the span grace window (`--span-grace`, 30 s) to export a span. Exported one → the requests
//! are `missing_traceparent` (the SDK works, this call site lacks propagation). Exported none →
//! `sdk_not_wired`: the SDK is linked but nothing feeds it, e.g. a TracerProvider built and
//! never registered with `otel.SetTracerProvider`, so every tracer is the global no-op.
//!
//! Held per process and route, with counts, so a busy silent process holds one entry per
//! route, not one per request. A process that exits is settled at once (it exports nothing
//! more); at the agent's exit, what has not had its window is counted, never a finding.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::Raised;
use crate::{
    attribute::Subject,
    findings::{FindingKey, FindingKind, TracePlace},
    model::{PidMap, PidSet},
};

/// Processes with requests held at once; past it new ones are not held (counted).
const MAX_HELD_PROCESSES: usize = 4096;
/// Distinct routes held per process; past it new routes are not held (counted).
const MAX_HELD_ROUTES: usize = 1024;

/// What this rule could not judge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WiringCounters {
    /// Requests still inside their window when the agent stopped: not judged.
    pub pending_at_exit: u64,
    /// Requests not held for lack of room (bounds above): not judged.
    pub not_held: u64,
}

/// One route's requests.
struct Occurrences {
    evidence: BTreeMap<String, String>,
    /// Where the first occurrence that had one goes in a trace (`--trace-annotations`).
    place: Option<TracePlace>,
    first: SystemTime,
    last: SystemTime,
    count: u64,
}

struct Held {
    due: SystemTime,
    subject: Arc<Subject>,
    /// By finding identity (its kind is decided at settlement).
    routes: HashMap<FindingKey, Occurrences>,
}

#[derive(Default)]
pub struct Wiring {
    held: PidMap<u32, Held>,
    /// Processes whose window ended without a span export: their next requests without
    /// context are `sdk_not_wired` at once (until they export).
    silent: PidSet,
    pub counters: WiringCounters,
}

impl Wiring {
    /// Whether `pid`'s window ended without a span export.
    pub fn is_silent(&self, pid: u32) -> bool {
        self.silent.contains(&pid)
    }

    /// Holds a request until `pid`'s window (opened by its first held request) ends.
    pub fn hold(
        &mut self,
        key: FindingKey,
        subject: Arc<Subject>,
        evidence: BTreeMap<String, String>,
        at: SystemTime,
        place: Option<TracePlace>,
        grace: Duration,
    ) {
        let pid = key.pid;
        if !self.held.contains_key(&pid) && self.held.len() >= MAX_HELD_PROCESSES {
            self.counters.not_held += 1;
            return;
        }
        let held = self.held.entry(pid).or_insert_with(|| Held {
            due: at + grace,
            subject,
            routes: HashMap::new(),
        });
        if let Some(o) = held.routes.get_mut(&key) {
            o.count += 1;
            o.place = o.place.take().or(place);
            o.first = o.first.min(at);
            o.last = o.last.max(at);
            return;
        }
        if held.routes.len() >= MAX_HELD_ROUTES {
            self.counters.not_held += 1;
            return;
        }
        held.routes.insert(
            key,
            Occurrences {
                evidence,
                place,
                first: at,
                last: at,
                count: 1,
            },
        );
    }

    /// Settles the processes whose window ended by `now`.
    pub fn settle_due(
        &mut self,
        now: SystemTime,
        exported_spans: impl Fn(u32) -> bool,
        out: &mut Vec<Raised>,
    ) {
        self.settle(|_, h| h.due <= now, exported_spans, out);
    }

    /// Settles the processes that exited: they export nothing more.
    pub fn settle_exited(
        &mut self,
        alive: impl Fn(u32) -> bool,
        exported_spans: impl Fn(u32) -> bool,
        out: &mut Vec<Raised>,
    ) {
        self.settle(|pid, _| !alive(pid), exported_spans, out);
    }

    /// At the agent's exit: processes that exported spans are settled; the rest had no full
    /// window, and are counted.
    pub fn finish(&mut self, exported_spans: impl Fn(u32) -> bool, out: &mut Vec<Raised>) {
        self.settle(|pid, _| exported_spans(pid), &exported_spans, out);
        self.counters.pending_at_exit += self
            .held
            .drain()
            .flat_map(|(_, h)| h.routes.into_values())
            .map(|o| o.count)
            .sum::<u64>();
    }

    /// Forgets processes that exited (after [`Wiring::settle_exited`]).
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.silent.retain(|pid| alive(*pid));
    }

    fn settle(
        &mut self,
        ready: impl Fn(u32, &Held) -> bool,
        exported_spans: impl Fn(u32) -> bool,
        out: &mut Vec<Raised>,
    ) {
        let pids: Vec<u32> = self
            .held
            .iter()
            .filter(|(pid, h)| ready(**pid, h))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in pids {
            let Some(held) = self.held.remove(&pid) else {
                continue;
            };
            let kind = if exported_spans(pid) {
                FindingKind::MissingTraceparent
            } else {
                self.silent.insert(pid);
                FindingKind::SdkNotWired
            };
            for (mut key, mut o) in held.routes {
                key.kind = kind;
                if kind == FindingKind::SdkNotWired {
                    sdk_evidence(&held.subject, &mut o.evidence);
                }
                raise(key, &held.subject, o, out);
            }
        }
    }
}

/// What an `sdk_not_wired` finding shows: the runtime, every OpenTelemetry component linked
/// (module paths and versions only), and that no span was exported.
pub fn sdk_evidence(subject: &Subject, evidence: &mut BTreeMap<String, String>) {
    let Some(inventory) = &subject.inventory else {
        return;
    };
    if let Some(runtime) = &inventory.runtime {
        evidence.insert("runtime".into(), runtime.version.clone());
    }
    evidence.insert("otel_components".into(), inventory.components_text());
    evidence.insert("spans_exported".into(), "0".into());
}

/// The occurrences of one route as findings: the first at its time, the rest at the last's.
fn raise(key: FindingKey, subject: &Arc<Subject>, o: Occurrences, out: &mut Vec<Raised>) {
    out.push(Raised::once(
        key.clone(),
        Some(subject.clone()),
        o.evidence.clone(),
        o.first,
        o.place,
    ));
    if o.count > 1 {
        out.push(Raised {
            key,
            subject: Some(subject.clone()),
            evidence: o.evidence,
            at: o.last,
            count: o.count - 1,
            place: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use compact_str::CompactString;

    use super::*;
    use crate::{
        findings::Target,
        model::{Direction, Protocol},
    };

    const GRACE: Duration = Duration::from_secs(30);

    fn key(pid: u32, path: &str) -> FindingKey {
        let target = Target {
            peer: Some("127.0.0.1:8080".parse().expect("addr")),
            method: "GET".into(),
            path: path.into(),
            protocol: Protocol::Http1,
        };
        FindingKey::new(
            FindingKind::UninstrumentedClient,
            pid,
            Direction::Outbound,
            &target,
            false,
        )
    }

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn hold(w: &mut Wiring, pid: u32, path: &str, at: u64) {
        w.hold(
            key(pid, path),
            Arc::default(),
            BTreeMap::new(),
            t(at),
            None,
            GRACE,
        );
    }

    #[test]
    fn silent_until_the_window_ends_is_sdk_not_wired_counted_per_route() {
        let mut w = Wiring::default();
        for at in [100, 101, 102] {
            hold(&mut w, 7, "/a", at);
        }
        hold(&mut w, 7, "/b", 110);
        let mut out = Vec::new();
        w.settle_due(t(129), |_| false, &mut out);
        assert!(out.is_empty(), "the window opened at 100 ends at 130");
        w.settle_due(t(130), |_| false, &mut out);
        let mut counts: Vec<(CompactString, FindingKind, u64, SystemTime)> = out
            .iter()
            .map(|r| (r.key.path.clone(), r.key.kind, r.count, r.at))
            .collect();
        counts.sort_by(|a, b| (&a.0, a.3).cmp(&(&b.0, b.3)));
        assert_eq!(
            counts,
            [
                ("/a".into(), FindingKind::SdkNotWired, 1, t(100)),
                ("/a".into(), FindingKind::SdkNotWired, 2, t(102)),
                ("/b".into(), FindingKind::SdkNotWired, 1, t(110)),
            ]
        );
        assert!(w.is_silent(7));
    }

    #[test]
    fn a_span_export_in_the_window_makes_it_missing_traceparent() {
        let mut w = Wiring::default();
        hold(&mut w, 7, "/a", 100);
        let mut out = Vec::new();
        w.settle_due(t(200), |pid| pid == 7, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.kind, FindingKind::MissingTraceparent);
        assert!(!w.is_silent(7));
    }

    #[test]
    fn an_exited_process_is_settled_at_once_and_the_rest_counted_at_exit() {
        let mut w = Wiring::default();
        hold(&mut w, 7, "/a", 100);
        hold(&mut w, 8, "/a", 100);
        hold(&mut w, 8, "/a", 101);
        hold(&mut w, 9, "/a", 100);
        let mut out = Vec::new();
        w.settle_exited(|pid| pid != 7, |_| false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key.kind, FindingKind::SdkNotWired);
        out.clear();
        w.finish(|pid| pid == 9, &mut out);
        assert_eq!(out.len(), 1, "9 exported: settled; 8 had no full window");
        assert_eq!(out[0].key.pid, 9);
        assert_eq!(out[0].key.kind, FindingKind::MissingTraceparent);
        assert_eq!(w.counters.pending_at_exit, 2);
    }

    #[test]
    fn bounded() {
        let mut w = Wiring::default();
        for i in 0..(MAX_HELD_ROUTES + 5) {
            hold(&mut w, 1, &format!("/{i}"), 100);
        }
        for pid in 2..(MAX_HELD_PROCESSES as u32 + 6) {
            hold(&mut w, pid, "/a", 100);
        }
        assert_eq!(w.counters.not_held, 5 + 5);
    }
}
