//! Metrics: request counts by service and propagation, findings by kind, and the agent's own
//! health. Inputs are cumulative snapshots (taken every second); instruments are counters fed
//! with the increase since the previous snapshot, so the SDK keeps the running totals even
//! when the agent forgets a process.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::atomic::Ordering,
};

use agent_common::counter;
use opentelemetry::{
    metrics::{Counter, Gauge, Meter},
    KeyValue,
};

use super::ExportStats;
use crate::{
    capture::KernelCounters,
    findings::FindingKind,
    otlp::ReceiverStats,
    pipeline::{AgentCounters, Pipeline},
    trace_context::{Propagation, B3, B3_TRACE_ID, UBER_TRACE_ID},
};

/// Cumulative values, filled every second by the run loop (see [`snapshot`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Outbound requests by (service.name of the sender, propagation).
    pub requests: BTreeMap<(Option<String>, Propagation), u64>,
    /// Distinct findings raised, by kind.
    pub findings_by_kind: BTreeMap<FindingKind, u64>,
    pub kernel: KernelCounters,
    pub agent: AgentCounters,
    pub spans_received: u64,
    pub forward_failures: u64,
    /// Milliseconds between the kernel timestamp of the last record of the latest ring buffer
    /// batch and its processing (see [`ring_lag_ms`]): how far behind the agent reads.
    pub ring_lag_ms: u64,
}

/// Builds a snapshot from the agent's state. B3, Jaeger and vendor requests share one count
/// per process (`ProcessStats::other_context`); B3 and Jaeger are told apart by the evidence of
/// that process's `non_w3c_propagation` findings (which count exactly those requests), the
/// rest is vendor context.
pub fn snapshot(
    pipeline: &Pipeline,
    kernel: &KernelCounters,
    receiver: Option<&ReceiverStats>,
    ring_lag_ms: u64,
) -> MetricsSnapshot {
    let mut b3_jaeger: HashMap<u32, (u64, u64)> = HashMap::new();
    for f in pipeline.findings.all() {
        if f.key.kind == FindingKind::NonW3cPropagation {
            let e = b3_jaeger.entry(f.key.pid).or_default();
            if f.evidence.contains_key(B3) || f.evidence.contains_key(B3_TRACE_ID) {
                e.0 += f.count;
            } else if f.evidence.contains_key(UBER_TRACE_ID) {
                e.1 += f.count;
            }
        }
    }
    let mut requests: BTreeMap<(Option<String>, Propagation), u64> = BTreeMap::new();
    for (pid, st) in &pipeline.stats {
        let service = pipeline
            .processes
            .cached(*pid)
            .and_then(|i| i.service_name.clone());
        let (b3, jaeger) = b3_jaeger.get(pid).copied().unwrap_or_default();
        let b3 = b3.min(st.other_context);
        let jaeger = jaeger.min(st.other_context - b3);
        for (p, n) in [
            (Propagation::W3c, st.w3c),
            (Propagation::B3, b3),
            (Propagation::Jaeger, jaeger),
            (Propagation::Vendor, st.other_context - b3 - jaeger),
            (Propagation::None, st.without),
            (Propagation::Malformed, st.malformed),
            (Propagation::Undetermined, st.undetermined),
        ] {
            if n > 0 {
                *requests.entry((service.clone(), p)).or_default() += n;
            }
        }
    }
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    MetricsSnapshot {
        requests,
        findings_by_kind: pipeline.findings.count_by_kind(),
        kernel: *kernel,
        agent: pipeline.counters.clone(),
        spans_received: receiver.map_or(0, |r| load(&r.spans_received)),
        forward_failures: receiver.map_or(0, |r| load(&r.forward_failures)),
        ring_lag_ms,
    }
}

/// Milliseconds from a kernel timestamp (`CLOCK_MONOTONIC`, as `bpf_ktime_get_ns`) to now.
pub fn ring_lag_ms(monotonic_ns: u64) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_ns = (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64);
    now_ns.saturating_sub(monotonic_ns) / 1_000_000
}

/// The increase of cumulative values since the last call, per key. A value that went down
/// (a forgotten process, an evicted finding) restarts from there instead of going negative.
struct Deltas<K>(HashMap<K, u64>);

impl<K: Hash + Eq> Deltas<K> {
    fn new() -> Self {
        Self(HashMap::new())
    }

    fn delta(&mut self, key: K, value: u64) -> u64 {
        let last = self.0.insert(key, value).unwrap_or(0);
        value.saturating_sub(last)
    }
}

/// Self-metric inputs: name, description, and where in the snapshot the cumulative value is.
type Pick = fn(&MetricsSnapshot) -> u64;
const SELF_COUNTERS: [(&str, &str, Pick); 6] = [
    (
        "tracegap.capture.events",
        "HTTP requests the kernel programs captured into the ring buffer",
        |s| s.kernel[counter::CAPTURED as usize],
    ),
    (
        "tracegap.capture.truncated",
        "Captured requests cut at the capture cap",
        |s| s.kernel[counter::TRUNCATED as usize],
    ),
    (
        "tracegap.agent.parse_failures",
        "Captures that started like HTTP but did not parse",
        |s| s.agent.parse_failures + s.agent.decode_errors,
    ),
    (
        "tracegap.agent.events",
        "Ring buffer records the agent processed",
        |s| s.agent.events,
    ),
    (
        "tracegap.otlp.spans_received",
        "Spans received from local exporters",
        |s| s.spans_received,
    ),
    (
        "tracegap.otlp.forward_failures",
        "Export requests that could not be forwarded upstream",
        |s| s.forward_failures,
    ),
];

/// Kernel counters that mean lost requests, as `reason` of `tracegap.capture.dropped`.
const DROP_REASONS: [u32; 3] = [
    counter::RINGBUF_FULL,
    counter::READ_FAILED,
    counter::STASH_FULL,
];

pub struct Instruments {
    requests: Counter<u64>,
    findings: Counter<u64>,
    dropped: Counter<u64>,
    self_counters: Vec<Counter<u64>>,
    exported: Counter<u64>,
    ring_lag: Gauge<u64>,
    requests_seen: Deltas<(Option<String>, Propagation)>,
    findings_seen: Deltas<FindingKind>,
    scalars_seen: Deltas<&'static str>,
}

impl Instruments {
    pub fn new(meter: &Meter) -> Self {
        Self {
            requests: meter
                .u64_counter("tracegap.http.requests")
                .with_unit("{request}")
                .with_description("Outbound HTTP requests by sender service and trace propagation")
                .build(),
            findings: meter
                .u64_counter("tracegap.findings")
                .with_unit("{finding}")
                .with_description("Distinct findings raised, by kind")
                .build(),
            dropped: meter
                .u64_counter("tracegap.capture.dropped")
                .with_unit("{request}")
                .with_description("Requests the kernel programs lost, by reason")
                .build(),
            self_counters: SELF_COUNTERS
                .iter()
                .map(|(name, desc, _)| meter.u64_counter(*name).with_description(*desc).build())
                .collect(),
            exported: meter
                .u64_counter("tracegap.export.log_records")
                .with_unit("{record}")
                .with_description("Finding log records by export outcome (exported, failed)")
                .build(),
            ring_lag: meter
                .u64_gauge("tracegap.capture.ring_lag")
                .with_unit("ms")
                .with_description(
                    "Delay from the kernel timestamp of the last record of the latest ring buffer batch to its processing",
                )
                .build(),
            requests_seen: Deltas::new(),
            findings_seen: Deltas::new(),
            scalars_seen: Deltas::new(),
        }
    }

    pub fn record(&mut self, s: &MetricsSnapshot, export: &ExportStats) {
        for ((service, p), n) in &s.requests {
            let d = self.requests_seen.delta((service.clone(), *p), *n);
            if d > 0 {
                let mut attrs = vec![KeyValue::new("propagation", p.as_str())];
                if let Some(service) = service {
                    attrs.push(KeyValue::new("service.name", service.clone()));
                }
                self.requests.add(d, &attrs);
            }
        }
        for kind in FindingKind::ALL {
            let n = s.findings_by_kind.get(&kind).copied().unwrap_or(0);
            let d = self.findings_seen.delta(kind, n);
            if d > 0 {
                self.findings
                    .add(d, &[KeyValue::new("tracegap.finding.kind", kind.as_str())]);
            }
        }
        for i in DROP_REASONS {
            let name = counter::NAMES[i as usize];
            let d = self.scalars_seen.delta(name, s.kernel[i as usize]);
            // Zero adds too: the series exists (at 0) before the first drop.
            self.dropped.add(d, &[KeyValue::new("reason", name)]);
        }
        for ((name, _, pick), c) in SELF_COUNTERS.iter().zip(&self.self_counters) {
            c.add(self.scalars_seen.delta(name, pick(s)), &[]);
        }
        for (outcome, value) in [
            ("exported", export.exported.load(Ordering::Relaxed)),
            ("failed", export.failed.load(Ordering::Relaxed)),
        ] {
            let d = self.scalars_seen.delta(outcome, value);
            self.exported.add(d, &[KeyValue::new("outcome", outcome)]);
        }
        self.ring_lag.record(s.ring_lag_ms, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_never_go_negative() {
        let mut d = Deltas::new();
        assert_eq!(d.delta("a", 5), 5);
        assert_eq!(d.delta("a", 7), 2);
        assert_eq!(d.delta("a", 3), 0, "a reset restarts from the new value");
        assert_eq!(d.delta("a", 4), 1);
    }
}
