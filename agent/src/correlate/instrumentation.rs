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
    collections::VecDeque,
    time::{Duration, SystemTime},
};

use super::Raised;
use crate::{attribute::inventory::Inventory, findings::FindingKind, model::PidSet};

/// How long a process has to show it is instrumented (export spans) after a request without
/// context, before the request is called `uninstrumented_client`.
pub const INSTRUMENTATION_SETTLE: Duration = Duration::from_secs(5);
/// Held requests (groups of them, see [`MERGE_WINDOW`]) awaiting that verdict; past it all are
/// settled at once, early (counted: `verdicts_settled_early`). One is ~0.5 KiB.
pub(super) const MAX_PROVISIONAL: usize = 16_384;
/// A request joins a held group of the same finding identity whose first request is less than
/// this older (each still waits its full [`INSTRUMENTATION_SETTLE`]): at saturation a client
/// sends ~100k requests/s of one identity, and holding each one took tens of MiB.
const MERGE_WINDOW: Duration = Duration::from_secs(1);
/// How many of the most recent groups a request may join.
const MERGE_LOOKBACK: usize = 16;

/// Requests without context of one finding identity, awaiting their process's
/// instrumentation verdict.
pub(super) struct Provisional {
    /// The last request's time plus [`INSTRUMENTATION_SETTLE`].
    due: SystemTime,
    /// The finding as `uninstrumented_client`, at the first request's time.
    raised: Raised,
    /// The last request's time.
    last: SystemTime,
    /// Requests held.
    count: u64,
    /// The process's identity (environment) was read: if it never exports, it really is
    /// uninstrumented. Otherwise (exited first, no permission) it is unknown and not judged.
    identity_known: bool,
}

#[derive(Default)]
pub struct Instrumentation {
    /// Processes seen sending OTLP exports: instrumented even without OTEL_* env.
    exporters: PidSet,
    /// Processes seen exporting spans (not only metrics or logs), or on an OTLP/gRPC
    /// connection whose calls were not decoded (counted as spans: not knowing is no finding).
    span_exporters: PidSet,
    /// Requests without context awaiting the instrumentation verdict of their process.
    pub(super) provisional: VecDeque<Provisional>,
    /// Requests without context from processes whose environment could not be read (exited
    /// first, or /proc not readable): whether they were instrumented is unknown, so they are
    /// not judged.
    pub process_unknown: u64,
    /// Requests whose verdict was settled before their time because [`MAX_PROVISIONAL`]
    /// groups were held.
    pub settled_early: u64,
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
        let at = raised.at;
        // Requests placed in a trace each keep their place: never merged.
        if raised.place.is_none() {
            let group = self
                .provisional
                .iter_mut()
                .rev()
                .take(MERGE_LOOKBACK)
                .find(|p| {
                    let gap = at
                        .duration_since(p.raised.at)
                        .unwrap_or_else(|e| e.duration());
                    gap < MERGE_WINDOW
                        && p.identity_known == identity_known
                        && p.raised.place.is_none()
                        && p.raised.key == raised.key
                        && p.raised.evidence == raised.evidence
                });
            if let Some(p) = group {
                p.count += 1;
                p.raised.at = p.raised.at.min(at);
                p.last = p.last.max(at);
                p.due = p.due.max(at + INSTRUMENTATION_SETTLE);
                return;
            }
        }
        if self.provisional.len() >= MAX_PROVISIONAL {
            self.settled_early += self.provisional.iter().map(|p| p.count).sum::<u64>();
            self.settle(|_| true, out);
        }
        self.provisional.push_back(Provisional {
            due: at + INSTRUMENTATION_SETTLE,
            raised,
            last: at,
            count: 1,
            identity_known,
        });
    }

    /// Settles the verdicts due by `now`.
    pub fn settle_due(&mut self, now: SystemTime, out: &mut Vec<Raised>) {
        self.settle(|p| p.due <= now, out);
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
    /// otherwise `uninstrumented_client`. In place: the groups not ready go round to the back
    /// in their order (no second queue while both are full).
    fn settle(&mut self, ready: impl Fn(&Provisional) -> bool, out: &mut Vec<Raised>) {
        for _ in 0..self.provisional.len() {
            let Some(p) = self.provisional.pop_front() else {
                break;
            };
            if !ready(&p) {
                self.provisional.push_back(p);
                continue;
            }
            let Provisional {
                mut raised,
                last,
                count,
                identity_known,
                ..
            } = p;
            if self.exporters.contains(&raised.key.pid) {
                raised.key.kind = FindingKind::MissingTraceparent;
            } else if !identity_known {
                self.process_unknown += count;
                continue;
            } else {
                // Only a broken chain of an instrumented process goes in the trace.
                raised.place = None;
            }
            // The first request at its time, the rest at the last one's.
            let rest = (count > 1).then(|| Raised {
                key: raised.key.clone(),
                subject: raised.subject.clone(),
                evidence: raised.evidence.clone(),
                at: last,
                count: count - 1,
                place: None,
            });
            out.push(raised);
            out.extend(rest);
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
