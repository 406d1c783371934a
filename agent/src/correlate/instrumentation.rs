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

/// A request without context, awaiting its process's instrumentation verdict.
struct Provisional {
    due: SystemTime,
    /// The finding as `uninstrumented_client`.
    raised: Raised,
    /// The process's identity (environment) was read: if it never exports, it really is
    /// uninstrumented. Otherwise (exited first, no permission) it is unknown and not judged.
    identity_known: bool,
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
        if self.provisional.len() >= MAX_PROVISIONAL {
            self.settle(|_| true, out);
        }
        self.provisional.push_back(Provisional {
            due: raised.at + INSTRUMENTATION_SETTLE,
            raised,
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
    /// otherwise `uninstrumented_client`.
    fn settle(&mut self, ready: impl Fn(&Provisional) -> bool, out: &mut Vec<Raised>) {
        let (now_ready, waiting): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.provisional)
                .into_iter()
                .partition(|p| ready(p));
        self.provisional = waiting;
        for p in now_ready {
            let mut raised = p.raised;
            if self.exporters.contains(&raised.key.pid) {
                raised.key.kind = FindingKind::MissingTraceparent;
            } else if !p.identity_known {
                self.process_unknown += 1;
                continue;
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
