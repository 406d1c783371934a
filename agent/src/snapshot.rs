//! What the pipeline publishes each tick for the outputs (table, JSON, OTLP): read-only, so
//! the outputs can run in any order and never reach into the pipeline's state.
//!
//! Every counter name is written once, beside its value, in a `named()` list; the outputs print
//! those lists as they are.

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use crate::{
    attribute::{inventory::Inventory, AttributeCounters},
    correlate::{traces::TraceCounters, CorrelateCounters, ProcessStats},
    findings::{Annotation, Finding, FindingKind},
    model::{KernelCounters, Protocol},
    parse::{export::ExportCounters, ParseCounters},
};

/// One tick's view of everything.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub taken_at: Option<SystemTime>,
    /// Findings whose count changed since the previous snapshot, in the order they changed.
    pub changed: Vec<Finding>,
    /// Every process with requests, by pid.
    pub processes: Vec<ProcessRow>,
    /// Distinct findings held, by kind.
    pub findings_by_kind: BTreeMap<FindingKind, u64>,
    pub kernel: KernelCounters,
    pub agent: AgentCounters,
    /// The OTLP receiver's counters, when it runs.
    pub receiver: Option<Vec<(&'static str, u64)>>,
    /// Milliseconds from the kernel timestamp of the last record of the latest ring buffer
    /// batch to its processing: how far behind the agent reads.
    pub ring_lag_ms: u64,
    /// Finding occurrences placed in their traces since the previous snapshot
    /// (`--trace-annotations`; empty when off), for the OTLP trace export.
    pub annotations: Vec<Annotation>,
}

/// One process that sent or received requests.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessRow {
    pub pid: u32,
    /// As the attribute stage knows it (absent when never looked up).
    pub comm: Option<String>,
    pub service_name: Option<String>,
    pub stats: ProcessStats,
    pub findings: Vec<FindingBrief>,
    /// Its runtime and OpenTelemetry components, when they could be read.
    pub inventory: Option<Arc<Inventory>>,
}

/// A finding as one cell of the table.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FindingBrief {
    pub kind: FindingKind,
    pub count: u64,
    pub tls: bool,
    pub protocol: Protocol,
}

/// The agent's own counters, from every stage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    /// Request records handled (captured requests and HTTP/2 frames).
    pub events: u64,
    /// Process records handled (exec, fork, exit).
    pub process_records: u64,
    /// Ring buffer records that did not decode.
    pub decode_errors: u64,
    pub parse: ParseCounters,
    /// The wire intake (OTLP exports read off the wire).
    pub wire: ExportCounters,
    /// Receiver batches not used (`--span-intake wire`).
    pub receiver_batches_ignored: u64,
    /// HTTP/2 connections forgotten to stay within their bound (untrusted if they speak again).
    pub h2_connections_evicted: u64,
    /// Go executables not probed: built before Go's register ABI (Go < 1.17).
    pub go_tls_too_old: u64,
    pub attribute: AttributeCounters,
    pub correlate: CorrelateCounters,
    /// Requests without context whose process could not be identified: not judged.
    pub process_unknown: u64,
    /// Requests without context whose instrumentation verdict was settled before their
    /// process had its full time to export (too many were held).
    pub verdicts_settled_early: u64,
    pub traces: TraceCounters,
    /// Distinct findings held now.
    pub findings: u64,
    pub findings_evicted: u64,
    pub processes_with_stats: u64,
    pub annotations: AnnotationCounters,
}

/// Findings placed in their traces (`--trace-annotations`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnotationCounters {
    /// Published for the OTLP trace export.
    pub published: u64,
    /// Not placed: the identity was annotated less than `--trace-annotation-interval` before.
    pub rate_limited: u64,
    /// Not placed: more than the snapshot holds between two ticks.
    pub dropped: u64,
}

impl AgentCounters {
    /// Every counter but the trace rules' ones (see [`TraceCounters::named`]), by name.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut named = vec![
            ("events", self.events),
            ("process_records", self.process_records),
            ("decode_errors", self.decode_errors),
        ];
        named.extend(self.parse.named());
        named.extend(self.wire.named());
        named.push(("receiver_batches_ignored", self.receiver_batches_ignored));
        named.extend([
            ("h2_connections_evicted", self.h2_connections_evicted),
            ("go_tls_too_old", self.go_tls_too_old),
        ]);
        named.extend(self.attribute.named());
        named.extend(self.correlate.named());
        named.extend([
            ("process_unknown", self.process_unknown),
            ("verdicts_settled_early", self.verdicts_settled_early),
            ("findings", self.findings),
            ("findings_evicted", self.findings_evicted),
            ("processes_with_stats", self.processes_with_stats),
            ("annotations", self.annotations.published),
            ("annotations_rate_limited", self.annotations.rate_limited),
            ("annotations_dropped", self.annotations.dropped),
        ]);
        named
    }
}

impl ParseCounters {
    pub fn named(&self) -> [(&'static str, u64); 3] {
        [
            ("parse_failures", self.parse_failures),
            ("h2_undetermined", self.h2_undetermined),
            ("h2_lost_sync", self.h2_lost_sync),
        ]
    }
}

impl ExportCounters {
    pub fn named(&self) -> [(&'static str, u64); 8] {
        [
            ("wire_exports", self.exports),
            ("wire_spans", self.spans),
            ("wire_incomplete_gap", self.gap),
            ("wire_incomplete_too_large", self.too_large),
            ("wire_incomplete_not_from_start", self.not_from_start),
            ("wire_unknown_encoding", self.unknown_encoding),
            ("wire_undecodable", self.undecodable),
            ("wire_connections_evicted", self.connections_evicted),
        ]
    }
}

impl AttributeCounters {
    pub fn named(&self) -> [(&'static str, u64); 9] {
        let i = &self.inventory;
        [
            ("processes_exited_before_lookup", self.exited_before_lookup),
            ("processes_cached", self.processes_cached),
            ("processes_from_records", self.from_records),
            ("processes_evicted", self.evicted),
            ("inventory_executables_read", i.executables_read),
            ("inventory_read_micros", i.read_micros),
            ("inventory_unreadable", i.unreadable),
            ("inventory_processes_inspected", i.processes_inspected),
            ("inventory_files_forgotten", i.files_forgotten),
        ]
    }
}

impl CorrelateCounters {
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("undetermined", self.undetermined),
            ("telemetry_exports", self.telemetry_exports),
            ("export_batches", self.export_batches),
            ("unattributed_batches", self.unattributed_batches),
            ("stats_evicted", self.stats_evicted),
            ("sdk_wiring_pending_at_exit", self.wiring.pending_at_exit),
            ("sdk_wiring_not_held", self.wiring.not_held),
            ("own_batches_ignored", self.own_batches_ignored),
            ("annotation_spans_ignored", self.annotation_spans_ignored),
        ]
    }
}

impl TraceCounters {
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("judged", self.judged),
            ("unverifiable", self.unverifiable),
            ("unsampled", self.unsampled),
            ("late_spans", self.late_spans),
            ("pending_dropped", self.pending_dropped),
            ("spans_evicted", self.spans_evicted),
            ("pending_at_exit", self.pending_at_exit),
            ("processes_evicted", self.processes_evicted),
            ("trace_ids_evicted", self.trace_ids_evicted),
        ]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn counter_names_are_distinct() {
        let agent = AgentCounters::default();
        let names: Vec<&str> = agent.named().iter().map(|(n, _)| *n).collect();
        let distinct: HashSet<&str> = names.iter().copied().collect();
        assert_eq!(names.len(), distinct.len(), "{names:?}");
        assert!(!distinct.contains("traces"), "a key of its own in JSON");
    }
}
