//! JSON lines: one object per finding (re-printed when its count changes), one `coverage`
//! object per process with outbound requests, and a `counters` object. The field sets are
//! stable: scripts and the tests read them. Findings and coverage lines carry the process's
//! `runtime` and `otel` inventory.

use serde_json::{json, Map, Value};

use crate::{
    attribute::inventory::{Inventory, Role},
    buildinfo::Replacement,
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
        "runtime": runtime(f.subject.inventory.as_deref()),
        "otel": otel(f.subject.inventory.as_deref()),
    })
}

/// `process.runtime.*` of the process: `{"name": "go", "version": "go1.26.8"}`; null when
/// unknown (not Go, or not readable).
pub fn runtime(inventory: Option<&Inventory>) -> Value {
    inventory.and_then(|i| i.runtime.as_ref()).map_or(
        Value::Null,
        |r| json!({"name": r.name, "version": r.version}),
    )
}

/// The OpenTelemetry components of the process: `{"expects_span_exports": bool, "components":
/// [{"name", "version", "role", "replaced_by"}]}`, where `replaced_by` is `{"path",
/// "version"}` or `"directory"` for a Go `replace`; null when they could not be read.
pub fn otel(inventory: Option<&Inventory>) -> Value {
    let Some(inventory) = inventory else {
        return Value::Null;
    };
    let components: Vec<Value> = inventory
        .components
        .iter()
        .map(|c| {
            let mut v = json!({
                "name": c.name,
                "version": c.version,
                "role": c.role.as_str(),
            });
            match &c.replaced {
                Some(Replacement::Module { path, version }) => {
                    v["replaced_by"] = json!({"path": path, "version": version});
                }
                Some(Replacement::Directory) => v["replaced_by"] = json!("directory"),
                None => {}
            }
            v
        })
        .collect();
    json!({
        "sdk": inventory.has(Role::Sdk) || inventory.has(Role::Agent),
        "expects_span_exports": inventory.expects_span_exports(),
        "spans_off": inventory.spans_off,
        "components": components,
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
        "runtime": runtime(p.inventory.as_deref()),
        "otel": otel(p.inventory.as_deref()),
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        attribute::inventory::{Component, Runtime},
        findings::{FindingKey, FindingKind, Subject, Target},
        model::Direction,
    };

    #[test]
    fn findings_carry_the_inventory() {
        let inventory = Inventory {
            runtime: Some(Runtime {
                name: "go",
                version: "go1.26.8".into(),
            }),
            components: Arc::from(vec![
                Component {
                    name: "go.opentelemetry.io/otel/sdk".into(),
                    version: Some("v1.47.0".into()),
                    replaced: Some(Replacement::Module {
                        path: "go.opentelemetry.io/otel/sdk".into(),
                        version: "v1.46.0".into(),
                    }),
                    role: Role::Sdk,
                },
                Component {
                    name: "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp".into(),
                    version: Some("v1.47.0".into()),
                    replaced: None,
                    role: Role::OtlpTraceExporter,
                },
            ]),
            spans_off: None,
        };
        let f = Finding {
            key: FindingKey::new(
                FindingKind::OtelVersionSkew,
                7,
                Direction::Outbound,
                &Target::process(),
                false,
            ),
            subject: Subject {
                comm: "svc".into(),
                inventory: Some(Arc::new(inventory)),
                ..Subject::default()
            },
            count: 1,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            evidence: BTreeMap::new(),
        };
        let v = finding(&f);
        assert_eq!(v["runtime"], json!({"name": "go", "version": "go1.26.8"}));
        assert_eq!(v["otel"]["sdk"], true);
        assert_eq!(v["otel"]["expects_span_exports"], true);
        assert_eq!(
            v["otel"]["components"][0],
            json!({
                "name": "go.opentelemetry.io/otel/sdk",
                "version": "v1.47.0",
                "role": "sdk",
                "replaced_by": {"path": "go.opentelemetry.io/otel/sdk", "version": "v1.46.0"},
            })
        );
        assert_eq!(v["otel"]["components"][1]["role"], "otlp_trace_exporter");
        assert_eq!(v["peer"], Value::Null);
        assert_eq!(v["path"], "");
        // Unknown inventory: null, not empty.
        let mut unknown = f.clone();
        unknown.subject.inventory = None;
        assert_eq!(finding(&unknown)["otel"], Value::Null);
        assert_eq!(finding(&unknown)["runtime"], Value::Null);
    }
}
