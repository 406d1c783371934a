//! The correlator on recorded sequences, with processes whose inventory is given: the SDK
//! linked and silent, linked and exporting, exporting other signals only; no SDK (the rules
//! of before); skewed modules.

use std::sync::Arc;

use super::*;
use crate::{
    attribute::inventory::{Component, Role, Runtime},
    buildinfo::Replacement,
    findings::FindingStore,
    parse::http1::parse_request,
};

const GRACE: Duration = Duration::from_secs(30);
const PID: u32 = 4242;

/// A process as the pipeline would describe it.
struct Process {
    otel_env: bool,
    inventory: Option<Arc<Inventory>>,
}

impl Sender for Process {
    fn otel_env(&self) -> bool {
        self.otel_env
    }

    fn identity_known(&self) -> bool {
        true
    }

    fn peer(&mut self) -> Option<SocketAddr> {
        Some("127.0.0.1:8080".parse().expect("addr"))
    }

    fn subject(&mut self) -> Arc<Subject> {
        Arc::new(Subject {
            comm: "sdkclient".into(),
            inventory: self.inventory.clone(),
            ..Subject::default()
        })
    }
}

fn module(name: &str, version: &str, role: Role) -> Component {
    Component {
        name: name.into(),
        version: Some(version.into()),
        replaced: None,
        role,
    }
}

/// A Go process linking the API, the SDK and the OTLP/HTTP trace exporter.
fn with_sdk() -> Process {
    Process {
        otel_env: false,
        inventory: Some(Arc::new(Inventory {
            runtime: Some(Runtime {
                name: "go",
                version: "go1.26.8".into(),
            }),
            components: Arc::from(vec![
                module("go.opentelemetry.io/otel", "v1.47.0", Role::Api),
                module("go.opentelemetry.io/otel/sdk", "v1.47.0", Role::Sdk),
                module(
                    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
                    "v1.47.0",
                    Role::OtlpTraceExporter,
                ),
            ]),
            spans_off: None,
        })),
    }
}

fn without_sdk(otel_env: bool) -> Process {
    Process {
        otel_env,
        inventory: Some(Arc::new(Inventory::default())),
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn get(path: &str) -> Request {
    parse_request(format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes()).expect("parses")
}

fn post(path: &str) -> Request {
    parse_request(format!("POST {path} HTTP/1.1\r\nHost: c\r\n\r\n").as_bytes()).expect("parses")
}

/// An outbound request of `PID`, a process without OTEL_* environment and no SDK linked.
fn outbound_without_context(
    c: &mut Correlator,
    at: SystemTime,
    req: &Request,
    out: &mut Vec<Raised>,
) {
    c.outbound(PID, at, req, false, &mut without_sdk(false), out);
}

fn kinds(out: &[Raised]) -> Vec<(FindingKind, u64)> {
    out.iter().map(|r| (r.key.kind, r.count)).collect()
}

#[test]
fn a_linked_sdk_that_exports_nothing_is_sdk_not_wired_after_the_grace_window() {
    let mut c = Correlator::new(GRACE);
    let mut p = with_sdk();
    let mut out = Vec::new();
    for s in 0..3 {
        c.outbound(PID, t(100 + s), &get("/a"), false, &mut p, &mut out);
    }
    c.judge_due(t(110), &mut out);
    assert!(
        out.is_empty(),
        "not uninstrumented_client after 5 s: {out:?}"
    );
    c.judge_due(t(130), &mut out);
    assert_eq!(
        kinds(&out),
        [(FindingKind::SdkNotWired, 1), (FindingKind::SdkNotWired, 2)]
    );
    let evidence = &out[0].evidence;
    assert_eq!(evidence["runtime"], "go1.26.8");
    assert_eq!(evidence["spans_exported"], "0");
    assert!(evidence["otel_components"].contains("go.opentelemetry.io/otel/sdk@v1.47.0"));
    // The window is over: the next request is judged at once.
    out.clear();
    c.outbound(PID, t(140), &get("/b"), false, &mut p, &mut out);
    assert_eq!(kinds(&out), [(FindingKind::SdkNotWired, 1)]);
}

#[test]
fn with_otel_variables_too_it_waits_for_spans_instead_of_missing_traceparent() {
    let mut c = Correlator::new(GRACE);
    let mut p = with_sdk();
    p.otel_env = true;
    let mut out = Vec::new();
    c.outbound(PID, t(100), &get("/a"), false, &mut p, &mut out);
    assert!(out.is_empty());
    c.judge_due(t(131), &mut out);
    assert_eq!(kinds(&out), [(FindingKind::SdkNotWired, 1)]);
}

#[test]
fn a_span_export_in_the_window_makes_it_missing_traceparent() {
    let mut c = Correlator::new(GRACE);
    let mut p = with_sdk();
    let mut out = Vec::new();
    c.outbound(PID, t(100), &get("/a"), false, &mut p, &mut out);
    // Its exporter posts spans somewhere (seen on the wire).
    c.outbound(PID, t(105), &post("/v1/traces"), false, &mut p, &mut out);
    c.judge_due(t(131), &mut out);
    assert_eq!(kinds(&out), [(FindingKind::MissingTraceparent, 1)]);
    assert!(!out[0].evidence.contains_key("otel_components"));
    // Once it exports, later requests are missing_traceparent at once.
    out.clear();
    c.outbound(PID, t(140), &get("/b"), false, &mut p, &mut out);
    assert_eq!(kinds(&out), [(FindingKind::MissingTraceparent, 1)]);
}

#[test]
fn metrics_exports_are_not_spans() {
    let mut c = Correlator::new(GRACE);
    let mut p = with_sdk();
    let mut out = Vec::new();
    c.outbound(PID, t(100), &get("/a"), false, &mut p, &mut out);
    c.outbound(PID, t(101), &post("/v1/metrics"), false, &mut p, &mut out);
    c.judge_due(t(131), &mut out);
    assert_eq!(kinds(&out), [(FindingKind::SdkNotWired, 1)]);
}

#[test]
fn an_exited_process_is_judged_at_the_sweep_and_an_unfinished_window_is_counted() {
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    c.outbound(PID, t(100), &get("/a"), false, &mut with_sdk(), &mut out);
    c.outbound(
        PID + 1,
        t(100),
        &get("/a"),
        false,
        &mut with_sdk(),
        &mut out,
    );
    c.sweep(|pid| pid != PID, &mut out);
    assert_eq!(kinds(&out), [(FindingKind::SdkNotWired, 1)]);
    assert_eq!(out[0].key.pid, PID);
    out.clear();
    c.finish(&mut out);
    assert!(out.is_empty(), "PID + 1 had no full window: {out:?}");
    assert_eq!(c.counters().wiring.pending_at_exit, 1);
}

#[test]
fn without_the_sdk_the_rules_are_as_before() {
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    c.outbound(
        PID,
        t(100),
        &get("/a"),
        false,
        &mut without_sdk(true),
        &mut out,
    );
    assert_eq!(kinds(&out), [(FindingKind::MissingTraceparent, 1)]);
    out.clear();
    c.outbound(
        PID + 1,
        t(100),
        &get("/a"),
        false,
        &mut without_sdk(false),
        &mut out,
    );
    c.judge_due(t(106), &mut out);
    assert_eq!(kinds(&out), [(FindingKind::UninstrumentedClient, 1)]);
    // Unknown inventory (unreadable executable): as before too.
    out.clear();
    let mut unknown = Process {
        otel_env: false,
        inventory: None,
    };
    c.outbound(PID + 2, t(100), &get("/a"), false, &mut unknown, &mut out);
    c.judge_due(t(106), &mut out);
    assert_eq!(kinds(&out), [(FindingKind::UninstrumentedClient, 1)]);
}

#[test]
fn skewed_modules_are_one_finding_per_process_inbound_or_outbound() {
    let sdk = "go.opentelemetry.io/otel/sdk";
    let mut p = with_sdk();
    let mut components = p
        .inventory
        .as_ref()
        .map(|i| i.components.to_vec())
        .unwrap_or_default();
    components[1].replaced = Some(Replacement::Module {
        path: sdk.into(),
        version: "v1.46.0".into(),
    });
    p.inventory = Some(Arc::new(Inventory {
        components: components.into(),
        ..Inventory::default()
    }));
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n";
    let traced = parse_request(format!("GET /in HTTP/1.1\r\n{tp}\r\n").as_bytes()).expect("parses");
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    c.inbound(PID, t(100), &traced, &mut p, &mut out);
    c.inbound(PID, t(101), &traced, &mut p, &mut out);
    c.outbound(PID, t(102), &traced, false, &mut p, &mut out);
    assert_eq!(kinds(&out), [(FindingKind::OtelVersionSkew, 1)]);
    let f = &out[0];
    assert_eq!(f.key.direction, Direction::Inbound);
    assert_eq!(f.key.peer, None);
    assert_eq!(f.evidence[sdk], "linked v1.46.0, required v1.47.0");
    assert_eq!(
        f.evidence[SUMMARY],
        "go.opentelemetry.io/otel/sdk v1.46.0 linked, v1.47.0 required (replace)"
    );
    // Nothing for an unskewed process.
    out.clear();
    c.inbound(PID + 1, t(100), &traced, &mut with_sdk(), &mut out);
    assert!(out.is_empty());
}

fn at_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// At saturation one client sends ~100k requests/s without context: they are held as one group
/// per identity and second, each request still waiting its full 5 s, and the findings count
/// every request with its first and last time.
#[test]
fn requests_held_for_the_instrumentation_verdict_are_grouped() {
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    // 3,000 requests of one identity over 1.5 s, and one of another path in between.
    for i in 0..3000u64 {
        let ms = 100_000 + i / 2;
        outbound_without_context(&mut c, at_ms(ms), &get("/a"), &mut out);
        if i == 10 {
            outbound_without_context(&mut c, at_ms(ms), &get("/b"), &mut out);
        }
    }
    assert!(out.is_empty());
    assert_eq!(
        c.instrumentation.provisional.len(),
        3,
        "two groups of /a, one of /b"
    );
    // 5 s after each group's last request, not before.
    c.judge_due(at_ms(105_004), &mut out);
    assert!(out.is_empty(), "{out:?}");
    c.judge_due(at_ms(106_000), &mut out);
    let total: u64 = out.iter().map(|r| r.count).sum();
    assert_eq!(total, 2001, "/a's first second (2000 requests) and /b");
    let mut store = FindingStore::default();
    for r in out.drain(..) {
        let subject = r.subject.clone().unwrap_or_default();
        store.record_many(r.key, &subject, r.evidence, r.at, r.count);
    }
    c.judge_due(at_ms(107_000), &mut out);
    assert_eq!(out.iter().map(|r| r.count).sum::<u64>(), 1000);
    for r in out.drain(..) {
        let subject = r.subject.clone().unwrap_or_default();
        store.record_many(r.key, &subject, r.evidence, r.at, r.count);
    }
    let a = store
        .all()
        .find(|f| f.key.path == "/a")
        .expect("a finding for /a");
    assert_eq!(a.count, 3000);
    assert_eq!(a.first_seen, at_ms(100_000));
    assert_eq!(a.last_seen, at_ms(101_499));
    assert_eq!(a.key.kind, FindingKind::UninstrumentedClient);
    assert_eq!(c.verdicts_settled_early(), 0);
}

/// A process that exports within 5 s of a grouped request makes the whole group
/// `missing_traceparent`.
#[test]
fn a_grouped_request_still_waits_for_an_export() {
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    for ms in [100_000, 100_500, 100_900] {
        outbound_without_context(&mut c, at_ms(ms), &get("/a"), &mut out);
    }
    c.judge_due(at_ms(105_500), &mut out);
    assert!(out.is_empty(), "the last request waits until 105.9 s");
    outbound_without_context(&mut c, at_ms(105_600), &post("/v1/traces"), &mut out);
    c.judge_due(at_ms(106_000), &mut out);
    assert_eq!(
        kinds(&out),
        [
            (FindingKind::MissingTraceparent, 1),
            (FindingKind::MissingTraceparent, 2)
        ]
    );
}

/// A path segment no template rewrites.
fn letters(mut i: usize) -> String {
    let mut s = String::new();
    loop {
        s.push(char::from(b'a' + (i % 26) as u8));
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

/// Past the bound, every held group is settled at once, and the requests are counted.
#[test]
fn held_groups_past_the_bound_are_settled_early_and_counted() {
    let mut c = Correlator::new(GRACE);
    let mut out = Vec::new();
    // Distinct identities: one group each.
    for i in 0..=super::instrumentation::MAX_PROVISIONAL {
        outbound_without_context(&mut c, t(100), &get(&format!("/{}", letters(i))), &mut out);
    }
    assert_eq!(
        c.verdicts_settled_early(),
        super::instrumentation::MAX_PROVISIONAL as u64
    );
    assert_eq!(out.len(), super::instrumentation::MAX_PROVISIONAL);
    assert_eq!(c.instrumentation.provisional.len(), 1);
}
