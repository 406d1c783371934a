//! Findings as spans in the traces they broke (`--trace-annotations`): the real agent exports
//! them over OTLP to a real receiver started by the test, which also gets the applications'
//! own spans (`--forward-to`), so each annotation is checked against the spans around it.
//! Python servers instrumented with the OpenTelemetry SDK handle requests of known traces T.

use std::{process::Command, time::Duration};

use opentelemetry_proto::tonic::{common::v1::KeyValue, trace::v1::Span};
use tracegap_tests::{
    findings_of, has_finding, last_counters,
    otlp_sink::{attr, OtlpSink},
    python_app, run_client, show, start_server, Agent, HttpServer,
};

/// The caller's span id in every inbound `traceparent`.
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn curl_traced(port: u16, trace_id: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10", "-H"])
        .arg(format!("traceparent: 00-{trace_id}-{CALLER_SPAN}-01"))
        .arg(format!("http://127.0.0.1:{port}/handle"));
    cmd
}

/// A span with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|(_, s)| s.name == name).collect()
}

#[test]
fn annotations_of_each_kind_reach_an_otlp_receiver_over_http() {
    annotations_of_each_kind("http/protobuf");
}

#[test]
fn annotations_of_each_kind_reach_an_otlp_receiver_over_grpc() {
    annotations_of_each_kind("grpc");
}

fn annotations_of_each_kind(protocol: &str) {
    let sink = OtlpSink::start();
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let endpoint = if protocol == "grpc" {
        sink.grpc_endpoint()
    } else {
        sink.http_endpoint()
    };
    // The applications' spans too (forwarded over OTLP/HTTP), to check the annotations
    // against the spans around them.
    let forward = sink.http_endpoint();
    let agent = Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
            "--span-grace",
            "2s",
            "--otlp-endpoint",
            &endpoint,
            "--forward-to",
            &forward,
            // Two occurrences of the same broken_context: the second is rate limited.
            "--trace-annotation-interval",
            "60s",
        ],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)],
    );
    let otlp = agent.otlp_http_addr();

    let (mut broken, broken_port) = start_server(&mut python_app(
        otlp,
        "broken",
        &["server-broken", &url, "2"],
    ));
    let (mut plain, plain_port) =
        start_server(&mut python_app(otlp, "plain", &["server-plain", &url, "1"]));
    let (mut unended, unended_port) = start_server(&mut python_app(
        otlp,
        "unended",
        &["server-unended", &url, "1"],
    ));
    let broken_traces = [
        "a1f92f3577b34da6a3ce929d0e0e4736",
        "a2f92f3577b34da6a3ce929d0e0e4736",
    ];
    let plain_trace = "b1f92f3577b34da6a3ce929d0e0e4736";
    let unended_trace = "c1f92f3577b34da6a3ce929d0e0e4736";
    for id in broken_traces {
        run_client(&mut curl_traced(broken_port, id));
    }
    run_client(&mut curl_traced(plain_port, plain_trace));
    run_client(&mut curl_traced(unended_port, unended_trace));
    for server in [&mut broken, &mut plain, &mut unended] {
        server.wait_success(Duration::from_secs(20));
    }
    let (broken, plain, unended) = (broken.pid(), plain.pid(), unended.pid());

    agent.wait_for("the three findings", Duration::from_secs(30), |lines| {
        has_finding(lines, broken, "broken_context")
            && has_finding(lines, plain, "missing_traceparent")
            && has_finding(lines, unended, "unexported_span")
    });
    sink.wait_for("three annotation spans", Duration::from_secs(20), |s| {
        let spans = s.spans();
        [
            "tracegap: broken_context",
            "tracegap: missing_traceparent",
            "tracegap: span never exported",
        ]
        .iter()
        .all(|n| !named(&spans, n).is_empty())
    });
    // The applications' last spans reach the receiver through the agent's forwarding.
    std::thread::sleep(Duration::from_secs(1));
    let lines = agent.stop();
    let all = show(&lines);
    let spans = sink.spans();
    let dump = || {
        spans
            .iter()
            .map(|(_, s)| {
                format!(
                    "{} trace={} id={} parent={} links={}",
                    s.name,
                    hex(&s.trace_id),
                    hex(&s.span_id),
                    hex(&s.parent_span_id),
                    s.links.len()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    let common = |resource: &[KeyValue], s: &Span, service: &str, pid: u32, kind: &str| {
        assert_eq!(s.kind, 1, "INTERNAL: {}", dump());
        assert_eq!(attr(resource, "service.name").as_deref(), Some(service));
        assert_eq!(attr(resource, "process.pid"), Some(pid.to_string()));
        assert_eq!(attr(&s.attributes, "service.name"), None, "on the resource");
        assert_eq!(
            attr(&s.attributes, "tracegap.annotation").as_deref(),
            Some("true")
        );
        assert_eq!(
            attr(&s.attributes, "tracegap.finding.kind").as_deref(),
            Some(kind)
        );
        assert_eq!(
            attr(&s.attributes, "http.request.method").as_deref(),
            Some("GET")
        );
        assert_eq!(
            attr(&s.attributes, "url.path").as_deref(),
            Some("/downstream")
        );
        assert_eq!(
            attr(&s.attributes, "server.port"),
            Some(downstream.addr().port().to_string())
        );
        assert!(
            s.status.as_ref().is_some_and(|st| st.code == 2),
            "status error: {s:?}"
        );
    };

    // broken_context: in T (the first request; the second was rate limited), under the
    // server span the process exported for T, linked to the new trace it started instead.
    let b = named(&spans, "tracegap: broken_context");
    assert_eq!(b.len(), 1, "once per identity per interval:\n{}", dump());
    let (resource, s) = b[0];
    common(resource, s, "broken", broken, "broken_context");
    let t = hex(&s.trace_id);
    assert_eq!(t, broken_traces[0], "{}", dump());
    let server = spans
        .iter()
        .find(|(_, x)| x.name == "handle" && hex(&x.trace_id) == t)
        .unwrap_or_else(|| panic!("the server span of {t}:\n{}", dump()));
    assert_eq!(hex(&server.1.parent_span_id), CALLER_SPAN);
    assert_eq!(
        s.parent_span_id,
        server.1.span_id,
        "child of the server span:\n{}",
        dump()
    );
    assert_eq!(s.links.len(), 1, "{s:?}");
    let link = &s.links[0];
    let client = spans
        .iter()
        .find(|(_, x)| x.name == "downstream" && x.span_id == link.span_id)
        .unwrap_or_else(|| panic!("the linked client span:\n{}", dump()));
    assert_eq!(link.trace_id, client.1.trace_id);
    assert_ne!(hex(&link.trace_id), t, "a new trace");
    assert!(
        client.1.parent_span_id.is_empty(),
        "its root is the client span"
    );

    // missing_traceparent: in T, under the context the request arrived with (the server span
    // is exported only after the call), naming the call.
    let m = named(&spans, "tracegap: missing_traceparent");
    assert_eq!(m.len(), 1, "{}", dump());
    let (resource, s) = m[0];
    common(resource, s, "plain", plain, "missing_traceparent");
    assert_eq!(hex(&s.trace_id), plain_trace);
    assert_eq!(hex(&s.parent_span_id), CALLER_SPAN);
    assert_eq!(
        attr(&s.attributes, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(s.links.is_empty());

    // unexported_span: a placeholder with the missing (server) span's own id, in its trace,
    // under the caller's span; the process never exported a span with that id.
    let u = named(&spans, "tracegap: span never exported");
    assert_eq!(u.len(), 1, "{}", dump());
    let (resource, s) = u[0];
    common(resource, s, "unended", unended, "unexported_span");
    assert_eq!(hex(&s.trace_id), unended_trace);
    assert_eq!(hex(&s.parent_span_id), CALLER_SPAN);
    let f = findings_of(&lines, unended)[0];
    assert_eq!(
        f["evidence"]["parent_id"],
        hex(&s.span_id).as_str(),
        "{all}"
    );
    assert_eq!(
        spans.iter().filter(|(_, x)| x.span_id == s.span_id).count(),
        1,
        "only the placeholder has that id:\n{}",
        dump()
    );

    let counters = last_counters(&lines);
    assert_eq!(counters["agent"]["annotations"], 3, "{counters}");
    assert_eq!(
        counters["agent"]["annotations_rate_limited"], 1,
        "{counters}"
    );
    assert_eq!(counters["agent"]["annotations_dropped"], 0, "{counters}");
}

/// Annotations sent to the agent's own receiver are never judged (its pid is its own, and the
/// spans say `tracegap.annotation=true`); `--trace-annotations off` sends none.
#[test]
fn own_annotations_are_never_judged_and_off_sends_none() {
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let port = tracegap_tests::free_port();
    let listen = format!("127.0.0.1:{port}");
    let own = format!("http://127.0.0.1:{port}");
    let agent = Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            &listen,
            "--span-grace",
            "2s",
        ],
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{own}/v1/traces"),
        )],
    );
    let otlp = agent.otlp_http_addr();
    let (mut broken, broken_port) = start_server(&mut python_app(
        otlp,
        "broken",
        &["server-broken", &url, "1"],
    ));
    run_client(&mut curl_traced(
        broken_port,
        "d1f92f3577b34da6a3ce929d0e0e4736",
    ));
    broken.wait_success(Duration::from_secs(20));
    let broken = broken.pid();
    agent.wait_for(
        "an annotation back at the receiver",
        Duration::from_secs(30),
        |lines| {
            has_finding(lines, broken, "broken_context")
                && lines.iter().any(|l| {
                    l["kind"] == "counters" && l["agent"]["own_batches_ignored"].as_u64() >= Some(1)
                })
        },
    );
    let lines = agent.stop();
    let counters = last_counters(&lines);
    assert_eq!(counters["agent"]["annotations"], 1, "{counters}");
    assert!(
        counters["agent"]["own_batches_ignored"].as_u64() >= Some(1),
        "{counters}"
    );
    assert_eq!(
        tracegap_tests::kinds_of(&lines, broken),
        ["broken_context"],
        "{}",
        show(&lines)
    );
    assert_eq!(findings_of(&lines, broken)[0]["count"], 1);

    // Off: the same with --trace-annotations off publishes nothing.
    let agent = Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "127.0.0.1:0",
            "--otlp-http-listen",
            "127.0.0.1:0",
            "--span-grace",
            "2s",
            "--trace-annotations",
            "off",
        ],
        &[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("{own}/v1/traces"),
        )],
    );
    let otlp = agent.otlp_http_addr();
    let (mut broken, broken_port) = start_server(&mut python_app(
        otlp,
        "broken",
        &["server-broken", &url, "1"],
    ));
    run_client(&mut curl_traced(
        broken_port,
        "d2f92f3577b34da6a3ce929d0e0e4736",
    ));
    broken.wait_success(Duration::from_secs(20));
    let broken = broken.pid();
    agent.wait_for("broken_context", Duration::from_secs(30), |lines| {
        has_finding(lines, broken, "broken_context")
    });
    let lines = agent.stop();
    let counters = last_counters(&lines);
    assert_eq!(counters["agent"]["annotations"], 0, "{counters}");
    assert_eq!(counters["agent"]["own_batches_ignored"], 0, "{counters}");
}
