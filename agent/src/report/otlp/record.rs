//! A finding as the content of one OTLP LogRecord: body sentence, severity, attributes with
//! semantic-convention names. Pure, so the exact output is unit-tested.

use std::path::Path;

use opentelemetry::{
    logs::{AnyValue, Severity as OtelSeverity},
    Key,
};

use crate::{
    findings::{Finding, Severity},
    model::Direction,
    report::path_template::template_path,
};

/// The LogRecord event name of every finding.
pub const EVENT_NAME: &str = "tracegap.finding";

/// Header names never exported even if they reached the evidence (it only ever holds
/// trace-context headers and rule facts; this is the belt to that brace).
const NEVER_EXPORTED: [&str; 6] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

pub fn severity(s: Severity) -> (OtelSeverity, &'static str) {
    match s {
        Severity::Error => (OtelSeverity::Error, "ERROR"),
        Severity::Warning => (OtelSeverity::Warn, "WARN"),
        Severity::Info => (OtelSeverity::Info, "INFO"),
    }
}

/// The finding with its path templated (`/users/42` → `/users/{id}`), for `url.path` and the
/// body; see [`crate::report::path_template`].
pub fn with_templated_path(f: &Finding) -> Finding {
    let mut f = f.clone();
    f.key.path = template_path(&f.key.path).into();
    f
}

/// The one-sentence body of a finding's LogRecord (see [`Finding::sentence`]).
pub fn body(f: &Finding) -> String {
    f.sentence()
}

/// The attributes of a finding's LogRecord; `extra` (e.g. `k8s.*`) is appended as given.
pub fn attributes(f: &Finding, extra: &[(&'static str, String)]) -> Vec<(Key, AnyValue)> {
    let mut a: Vec<(Key, AnyValue)> = Vec::with_capacity(16 + f.evidence.len() + extra.len());
    let mut s = |k: &'static str, v: &str| a.push((Key::from_static_str(k), v.to_owned().into()));
    s("tracegap.finding.kind", f.key.kind.as_str());
    s("tracegap.finding.severity", f.key.kind.severity().as_str());
    s(
        "tracegap.finding.direction",
        match f.key.direction {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        },
    );
    if !f.key.kind.is_process_level() {
        s("http.request.method", &f.key.method);
        s("url.path", &f.key.path);
    }
    let exe_name = f
        .subject
        .exe
        .as_deref()
        .and_then(|e| Path::new(e).file_name())
        .map_or_else(
            || f.subject.comm.clone(),
            |n| n.to_string_lossy().into_owned(),
        );
    s("process.executable.name", &exe_name);
    if let Some(exe) = &f.subject.exe {
        s("process.executable.path", exe);
    }
    if let Some(name) = &f.subject.service_name {
        s("service.name", name);
    }
    if let Some(id) = &f.subject.container_id {
        s("container.id", id);
    }
    a.push((
        Key::from_static_str("process.pid"),
        i64::from(f.key.pid).into(),
    ));
    a.push((Key::from_static_str("tracegap.tls"), f.key.tls.into()));
    a.push((
        Key::from_static_str("tracegap.protocol"),
        f.key.protocol.as_str().into(),
    ));
    a.push((
        Key::from_static_str("tracegap.finding.count"),
        i64::try_from(f.count).unwrap_or(i64::MAX).into(),
    ));
    if let Some(peer) = f.key.peer {
        // The peer of an outbound request is the server; of an inbound one, the client.
        let (addr, port) = match f.key.direction {
            Direction::Outbound => ("server.address", "server.port"),
            Direction::Inbound => ("client.address", "client.port"),
        };
        a.push((Key::from_static_str(addr), peer.ip().to_string().into()));
        a.push((Key::from_static_str(port), i64::from(peer.port()).into()));
    }
    for (k, v) in &f.evidence {
        if NEVER_EXPORTED.contains(&k.to_ascii_lowercase().as_str()) {
            continue;
        }
        a.push((Key::new(format!("tracegap.evidence.{k}")), v.clone().into()));
    }
    if let Some(inventory) = &f.subject.inventory {
        if let Some(runtime) = &inventory.runtime {
            a.push((
                Key::from_static_str("process.runtime.name"),
                runtime.name.into(),
            ));
            a.push((
                Key::from_static_str("process.runtime.version"),
                runtime.version.clone().into(),
            ));
        }
        if !inventory.components.is_empty() {
            let components: Vec<AnyValue> = inventory
                .components
                .iter()
                .map(|c| c.describe().into())
                .collect();
            a.push((
                Key::from_static_str("tracegap.otel.components"),
                AnyValue::ListAny(Box::new(components)),
            ));
        }
    }
    for (k, v) in extra {
        a.push((Key::from_static_str(k), v.clone().into()));
    }
    a
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::findings::{FindingKey, FindingKind, Subject};

    fn finding(count: u64) -> Finding {
        Finding {
            key: FindingKey {
                kind: FindingKind::MissingTraceparent,
                pid: 4242,
                direction: Direction::Outbound,
                peer: Some("10.0.0.7:8080".parse().expect("addr")),
                method: "GET".into(),
                path: "/api/cart".into(),
                tls: false,
                protocol: Default::default(),
            },
            subject: Subject {
                comm: "python3".into(),
                exe: Some("/usr/bin/python3.11".into()),
                service_name: Some("checkout".into()),
                container_id: Some("abc123".into()),
                ..Subject::default()
            },
            count,
            first_seen: SystemTime::UNIX_EPOCH,
            last_seen: SystemTime::UNIX_EPOCH,
            evidence: BTreeMap::from([
                ("b3".to_owned(), "1-2-1".to_owned()),
                ("Authorization".to_owned(), "Bearer SECRET".to_owned()),
            ]),
        }
    }

    fn get<'a>(a: &'a [(Key, AnyValue)], k: &str) -> Option<&'a AnyValue> {
        a.iter().find(|(key, _)| key.as_str() == k).map(|(_, v)| v)
    }

    #[test]
    fn body_is_one_sentence() {
        assert_eq!(
            body(&finding(37)),
            "checkout (pid 4242) sent 37 GET /api/cart requests to 10.0.0.7:8080 without traceparent"
        );
        let mut f = finding(1);
        f.subject.service_name = None;
        f.key.peer = None;
        assert_eq!(
            body(&f),
            "python3 (pid 4242) sent 1 GET /api/cart request to an unknown peer without traceparent"
        );
    }

    #[test]
    fn templated_paths_in_body_and_url_path() {
        let mut f = finding(2);
        f.key.path = "/users/42/orders/123e4567-e89b-12d3-a456-426614174000".into();
        let t = with_templated_path(&f);
        assert_eq!(t.key.path, "/users/{id}/orders/{id}");
        assert!(body(&t).contains("GET /users/{id}/orders/{id} requests"));
        let a = attributes(&t, &[]);
        assert_eq!(
            get(&a, "url.path"),
            Some(&AnyValue::from("/users/{id}/orders/{id}"))
        );
        assert!(!format!("{a:?}").contains("/users/42"));
    }

    #[test]
    fn the_process_runtime_and_its_opentelemetry_components() {
        use std::sync::Arc;

        use crate::attribute::inventory::{Component, Inventory, Role, Runtime};
        let mut f = finding(1);
        f.subject.inventory = Some(Arc::new(Inventory {
            runtime: Some(Runtime {
                name: "go",
                version: "go1.26.8".into(),
            }),
            components: Arc::from(vec![Component {
                name: "go.opentelemetry.io/otel/sdk".into(),
                version: Some("v1.47.0".into()),
                replaced: None,
                role: Role::Sdk,
            }]),
            spans_off: None,
        }));
        let a = attributes(&f, &[]);
        assert_eq!(get(&a, "process.runtime.name"), Some(&AnyValue::from("go")));
        assert_eq!(
            get(&a, "process.runtime.version"),
            Some(&AnyValue::from("go1.26.8"))
        );
        assert_eq!(
            get(&a, "tracegap.otel.components"),
            Some(&AnyValue::ListAny(Box::new(vec![AnyValue::from(
                "go.opentelemetry.io/otel/sdk@v1.47.0"
            )])))
        );
        // Unknown: no attribute rather than a guess.
        assert_eq!(
            get(&attributes(&finding(1), &[]), "process.runtime.name"),
            None
        );
    }

    #[test]
    fn attributes_use_semconv_names() {
        let a = attributes(&finding(3), &[("k8s.pod.name", "web-0".into())]);
        assert_eq!(get(&a, "process.pid"), Some(&AnyValue::Int(4242)));
        assert_eq!(
            get(&a, "process.executable.name"),
            Some(&AnyValue::from("python3.11"))
        );
        assert_eq!(get(&a, "service.name"), Some(&AnyValue::from("checkout")));
        assert_eq!(get(&a, "server.address"), Some(&AnyValue::from("10.0.0.7")));
        assert_eq!(get(&a, "server.port"), Some(&AnyValue::Int(8080)));
        assert_eq!(get(&a, "tracegap.finding.count"), Some(&AnyValue::Int(3)));
        assert_eq!(
            get(&a, "tracegap.evidence.b3"),
            Some(&AnyValue::from("1-2-1"))
        );
        assert_eq!(get(&a, "k8s.pod.name"), Some(&AnyValue::from("web-0")));
        assert_eq!(get(&a, "tracegap.evidence.Authorization"), None);
        assert!(!format!("{a:?}").contains("SECRET"));
    }
}
