//! JSON lines: one object per finding (re-printed when its count changes), one `coverage`
//! object per process with outbound requests, and a `counters` object. The field sets are
//! stable: scripts and the tests read them.

use serde_json::{json, Map, Value};

use crate::{
    findings::Finding,
    parse::trace_context::Propagation,
    snapshot::{ProcessRow, Snapshot},
};

pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A finding as one JSON object.
pub fn finding(f: &Finding) -> Value {
    json!({
        "kind": f.key.kind.as_str(),
        "severity": f.key.kind.severity().as_str(),
        "pid": f.key.pid,
        "comm": f.subject.comm,
        "exe": f.subject.exe,
        "service_name": f.subject.service_name,
        "container_id": f.subject.container_id,
        "k8s": (!f.subject.k8s.is_empty()).then(|| {
            f.subject.k8s.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<Map<_, _>>()
        }),
        "direction": f.key.direction,
        "peer": f.key.peer.map(|p| p.to_string()),
        "method": f.key.method,
        "path": f.key.path,
        "tls": f.key.tls,
        "protocol": f.key.protocol.as_str(),
        "count": f.count,
        "first_seen": rfc3339(f.first_seen),
        "last_seen": rfc3339(f.last_seen),
        "evidence": f.evidence,
    })
}

/// One line per process with outbound requests or exported spans: how much of its traffic
/// carries W3C context, and how many of its spans reached the span rules.
pub fn coverage(snapshot: &Snapshot) -> Vec<Value> {
    snapshot
        .processes
        .iter()
        .filter(|p| p.stats.outbound() > 0 || p.stats.spans_exported > 0)
        .map(coverage_line)
        .collect()
}

fn coverage_line(p: &ProcessRow) -> Value {
    let s = &p.stats;
    json!({
        "kind": "coverage",
        "service_name": p.service_name,
        "pid": p.pid,
        "comm": p.comm,
        "requests": s.outbound(),
        "with_context": s.outbound_with(Propagation::W3c),
        "other_context": s.other_context(),
        "without_context": s.outbound_with(Propagation::None),
        "malformed": s.outbound_with(Propagation::Malformed),
        "undetermined": s.outbound_with(Propagation::Undetermined),
        "coverage_percent": s.coverage_percent(),
        "spans_exported": s.spans_exported,
    })
}

/// The counters line: the kernel's, the agent's (with the trace rules' under `traces`), and
/// the receiver's.
pub fn counters(snapshot: &Snapshot) -> Value {
    let named = |list: &[(&'static str, u64)]| -> Value {
        Value::Object(
            list.iter()
                .map(|(name, v)| ((*name).to_owned(), json!(v)))
                .collect(),
        )
    };
    let kernel: Vec<(&'static str, u64)> =
        snapshot.kernel.iter().map(|(c, v)| (c.name(), v)).collect();
    let mut agent = named(&snapshot.agent.named());
    agent["traces"] = named(&snapshot.agent.traces.named());
    let mut line = json!({
        "kind": "counters",
        "kernel": named(&kernel),
        "agent": agent,
    });
    if let Some(receiver) = &snapshot.receiver {
        line["receiver"] = named(receiver);
    }
    line
}
