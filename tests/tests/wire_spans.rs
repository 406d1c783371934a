//! Span rules without re-routing any exporter: applications instrumented with the OpenTelemetry
//! Python SDK export straight to a collector that is not the agent (OTLP/HTTP protobuf with
//! gzip, OTLP/gRPC, OTLP/HTTP over TLS); the agent reads the exports off the wire and judges as
//! if they had been sent to it.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tracegap_tests::{
    has_finding, kinds_of, last_counters, otlp_sink::OtlpSink, python_app, run_client, show,
    start_server, Agent, HttpServer,
};

/// The agent with its receivers on (the default `--span-intake both`), on kernel-chosen ports.
const AGENT_ARGS: &[&str] = &[
    "--otlp-grpc-listen",
    "127.0.0.1:0",
    "--otlp-http-listen",
    "127.0.0.1:0",
    "--span-grace",
    "2s",
];

/// How an application exports: the fixture's settings.
#[derive(Clone, Copy)]
enum Exporter<'a> {
    HttpGzip(&'a str),
    Grpc(&'a str),
    Https { endpoint: &'a str, ca: &'a str },
}

/// The Python application (tests/fixtures/otel_app.py) exporting as `exporter` says.
fn app(exporter: Exporter<'_>, service: &str, args: &[&str]) -> Command {
    // `python_app` points the fixture at an endpoint; these settings replace it.
    let mut cmd = python_app(SocketAddr::from(([127, 0, 0, 1], 9)), service, args);
    match exporter {
        Exporter::HttpGzip(endpoint) => cmd
            .env("FIXTURE_OTLP_ENDPOINT", endpoint)
            .env("FIXTURE_OTLP_COMPRESSION", "gzip"),
        Exporter::Grpc(endpoint) => cmd
            .env("FIXTURE_OTLP_ENDPOINT", endpoint)
            .env("FIXTURE_OTLP_PROTOCOL", "grpc"),
        Exporter::Https { endpoint, ca } => cmd
            .env("FIXTURE_OTLP_ENDPOINT", endpoint)
            .env("FIXTURE_OTLP_CERTIFICATE", ca)
            // requests lets REQUESTS_CA_BUNDLE (set on many hosts) override the exporter's own
            // certificate setting; point it at the test's CA too.
            .env("REQUESTS_CA_BUNDLE", ca),
    };
    cmd
}

/// Every span rule, each by a real process exporting with `exporter`, and a clean twin.
fn span_rules_through(exporter: Exporter<'_>, sink_received: impl Fn() -> usize) {
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let agent = Agent::start(AGENT_ARGS);
    let unended = run_client(&mut app(exporter, "unended", &["client-unended", &url]));
    let clean = run_client(&mut app(exporter, "clean", &["client-instrumented", &url]));
    let sync = run_client(&mut app(exporter, "sync", &["sync-export", "12"]));
    let (mut server, port) =
        start_server(&mut app(exporter, "broken", &["server-broken", &url, "2"]));
    let traced = format!("http://127.0.0.1:{port}/work");
    for _ in 0..2 {
        run_client(Command::new("curl").args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            &format!("traceparent: {}", tracegap_tests::TRACEPARENT),
            &traced,
        ]));
    }
    server.wait_success(Duration::from_secs(20));
    let broken = server.pid();
    agent.wait_for("the span verdicts", Duration::from_secs(30), |lines| {
        has_finding(lines, unended, "unexported_span")
            && has_finding(lines, broken, "broken_context")
            && has_finding(lines, sync, "synchronous_export")
    });
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, unended),
        ["unexported_span"],
        "{}",
        show(&lines)
    );
    assert_eq!(
        kinds_of(&lines, broken),
        ["broken_context"],
        "{}",
        show(&lines)
    );
    assert_eq!(
        kinds_of(&lines, sync),
        ["synchronous_export"],
        "{}",
        show(&lines)
    );
    assert_eq!(
        kinds_of(&lines, clean),
        Vec::<String>::new(),
        "{}",
        show(&lines)
    );
    let counters = last_counters(&lines);
    let agent_counters = &counters["agent"];
    assert!(
        agent_counters["wire_exports"].as_u64() >= Some(4),
        "read off the wire: {counters}"
    );
    assert_eq!(
        counters["receiver"]["export_requests"], 0,
        "nothing was sent to the agent: {counters}"
    );
    for pid in [unended, clean, sync] {
        assert!(
            spans_exported(&lines, pid) > 0,
            "{pid}'s spans read off the wire: {}",
            show(&lines)
        );
    }
    assert!(sink_received() >= 4, "the collector got the exports too");
}

#[test]
fn span_rules_from_otlp_http_gzip_exports_to_a_collector() {
    let sink = OtlpSink::start();
    span_rules_through(Exporter::HttpGzip(&sink.http_endpoint()), || {
        sink.trace_requests()
    });
}

#[test]
fn span_rules_from_otlp_grpc_exports_to_a_collector() {
    let sink = OtlpSink::start();
    span_rules_through(Exporter::Grpc(&sink.grpc_endpoint()), || {
        sink.trace_requests()
    });
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("tracegap-wire-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn span_rules_from_otlp_http_exports_over_tls() {
    let dir = TempDir::new();
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the openssl CLI makes the test certificate");
    assert!(status.success(), "openssl req failed: {status}");
    let (_sink, port) = start_server(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/trace_sink.py"
            ))
            .arg(&cert)
            .arg(&key),
    );
    let endpoint = format!("https://127.0.0.1:{port}");
    let ca = cert.to_string_lossy().into_owned();
    let agent = Agent::start(AGENT_ARGS);
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let unended = run_client(&mut app(
        Exporter::Https {
            endpoint: &endpoint,
            ca: &ca,
        },
        "unended-tls",
        &["client-unended", &url],
    ));
    agent.wait_for("the verdict", Duration::from_secs(30), |lines| {
        has_finding(lines, unended, "unexported_span")
    });
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, unended),
        ["unexported_span"],
        "{}",
        show(&lines)
    );
    let counters = last_counters(&lines);
    assert!(
        counters["agent"]["wire_exports"].as_u64() >= Some(1),
        "read inside the TLS library: {counters}"
    );
}

/// The spans of `pid` that reached the span rules (its coverage line); host-wide counters also
/// count other processes' exports.
fn spans_exported(lines: &[Value], pid: u32) -> u64 {
    lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == pid)
        .and_then(|l| l["spans_exported"].as_u64())
        .unwrap_or(0)
}

/// `big-export 512` to a collector over OTLP/HTTP (protobuf, not compressed: over 100 KiB).
fn big_export(endpoint: &str) -> u32 {
    run_client(
        app(Exporter::HttpGzip(endpoint), "big", &["big-export", "512"])
            .env_remove("FIXTURE_OTLP_COMPRESSION"),
    )
}

#[test]
fn a_512_span_export_is_decoded_whole() {
    let sink = OtlpSink::start();
    let agent = Agent::start(AGENT_ARGS);
    let big = big_export(&sink.http_endpoint());
    agent.wait_for("the export's spans", Duration::from_secs(30), |lines| {
        spans_exported(lines, big) >= 512
    });
    let lines = agent.stop();
    assert_eq!(spans_exported(&lines, big), 512, "{}", show(&lines));
    assert_eq!(
        kinds_of(&lines, big),
        Vec::<String>::new(),
        "{}",
        show(&lines)
    );
    assert!(sink.trace_requests() >= 1);
}

#[test]
fn an_export_cut_by_the_bound_is_counted_and_not_used() {
    let sink = OtlpSink::start();
    let mut args = AGENT_ARGS.to_vec();
    args.extend(["--span-intake-max-bytes", "8192"]);
    let agent = Agent::start(&args);
    let big = big_export(&sink.http_endpoint());
    agent.wait_for("the cut export counted", Duration::from_secs(30), |lines| {
        lines.iter().any(|l| {
            l["kind"] == "counters"
                && l["agent"]["wire_incomplete_too_large"]
                    .as_u64()
                    .unwrap_or(0)
                    + l["agent"]["wire_incomplete_gap"].as_u64().unwrap_or(0)
                    >= 1
        })
    });
    let lines = agent.stop();
    let counters = last_counters(&lines);
    assert_eq!(
        spans_exported(&lines, big),
        0,
        "no span of it is used: {counters}"
    );
    assert!(
        counters["kernel"]["export_bytes_skipped"].as_u64() >= Some(1),
        "the kernel skipped what was past the bound: {counters}"
    );
    assert_eq!(
        kinds_of(&lines, big),
        Vec::<String>::new(),
        "{}",
        show(&lines)
    );
}

/// An exporter whose endpoint has a path prefix (`…/otlp/v1/traces`, as behind a gateway): the
/// kernel knows only `POST /v1/traces`, so the agent finds the connection's first export in an
/// ordinary capture and marks the connection itself; from then on it is read whole. Python's
/// exporter sends head and body apart, so that first export is a gap (counted, not used); the
/// eleven after it make the `synchronous_export` finding.
#[test]
fn exports_to_a_prefixed_path_are_read_once_the_agent_marks_the_connection() {
    let (_sink, port) = start_server(Command::new("python3").arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/trace_sink.py"
    )));
    let endpoint = format!("http://127.0.0.1:{port}/otlp");
    let agent = Agent::start(AGENT_ARGS);
    let sync = run_client(&mut app(
        Exporter::HttpGzip(&endpoint),
        "sync-prefixed",
        &["sync-export", "12"],
    ));
    agent.wait_for("the verdict", Duration::from_secs(30), |lines| {
        has_finding(lines, sync, "synchronous_export")
    });
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, sync),
        ["synchronous_export"],
        "{}",
        show(&lines)
    );
    let exported = spans_exported(&lines, sync);
    assert!(
        (10..=12).contains(&exported),
        "{exported}: {}",
        show(&lines)
    );
}
