//! Metrics: request counts by service and propagation, findings by kind, and the agent's own
//! health. Inputs are the cumulative counts of each tick's [`Snapshot`]; instruments are
//! counters fed with the increase since the previous tick, so the SDK keeps the running totals
//! even when the agent forgets a process.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::atomic::Ordering,
};

use agent_common::Counter;
use opentelemetry::{
    metrics::{Counter as OtelCounter, Gauge, Meter},
    KeyValue,
};

use super::ExportStats;
use crate::{findings::FindingKind, parse::trace_context::Propagation, snapshot::Snapshot};

/// Outbound requests by (service.name of the sender, propagation).
fn requests(s: &Snapshot) -> BTreeMap<(Option<String>, Propagation), u64> {
    let mut requests = BTreeMap::new();
    for p in &s.processes {
        for propagation in Propagation::ALL {
            let n = p.stats.outbound_with(propagation);
            if n > 0 {
                *requests
                    .entry((p.service_name.clone(), propagation))
                    .or_default() += n;
            }
        }
    }
    requests
}

/// A receiver counter of the snapshot, by the name it reports under.
fn receiver(s: &Snapshot, name: &str) -> u64 {
    s.receiver
        .as_ref()
        .and_then(|r| r.iter().find(|(n, _)| *n == name))
        .map_or(0, |(_, v)| *v)
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
type Pick = fn(&Snapshot) -> u64;
const SELF_COUNTERS: [(&str, &str, Pick); 6] = [
    (
        "tracegap.capture.events",
        "HTTP requests the kernel programs captured into the ring buffer",
        |s| s.kernel.get(Counter::Captured),
    ),
    (
        "tracegap.capture.truncated",
        "Captured requests cut at the capture cap",
        |s| s.kernel.get(Counter::Truncated),
    ),
    (
        "tracegap.agent.parse_failures",
        "Captures that started like HTTP but did not parse",
        |s| s.agent.parse.parse_failures + s.agent.decode_errors,
    ),
    (
        "tracegap.agent.events",
        "Ring buffer records the agent processed",
        |s| s.agent.events,
    ),
    (
        "tracegap.otlp.spans_received",
        "Spans received from local exporters",
        |s| receiver(s, "spans_received"),
    ),
    (
        "tracegap.otlp.forward_failures",
        "Export requests that could not be forwarded upstream",
        |s| receiver(s, "forward_failures"),
    ),
];

pub struct Instruments {
    requests: OtelCounter<u64>,
    findings: OtelCounter<u64>,
    dropped: OtelCounter<u64>,
    self_counters: Vec<OtelCounter<u64>>,
    exported: OtelCounter<u64>,
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

    pub fn record(&mut self, s: &Snapshot, export: &ExportStats) {
        for ((service, p), n) in &requests(s) {
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
        for (counter, value) in s.kernel.iter().filter(|(c, _)| c.is_drop()) {
            let d = self.scalars_seen.delta(counter.name(), value);
            // Zero adds too: the series exists (at 0) before the first drop.
            self.dropped
                .add(d, &[KeyValue::new("reason", counter.name())]);
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
