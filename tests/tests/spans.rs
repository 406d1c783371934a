//! Wire against spans: applications instrumented with the OpenTelemetry Python SDK export to
//! the agent's OTLP receiver; each way a trace breaks is reported for the process that broke it,
//! and its false-positive twin is not.

use std::{process::Command, time::Duration};

use tracegap_tests::{
    findings_of, has_finding, kinds_of, python_app, run_client, show, start_server, Agent,
    HttpServer,
};

const AGENT_ARGS: &[&str] = &[
    "--otlp-grpc-listen",
    "127.0.0.1:0",
    "--otlp-http-listen",
    "127.0.0.1:0",
    "--span-grace",
    "2s",
];

#[test]
fn span_rules_for_clients() {
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let agent = Agent::start(AGENT_ARGS);
    let otlp = agent.otlp_http_addr();

    let instrumented = run_client(&mut python_app(
        otlp,
        "instrumented",
        &["client-instrumented", &url],
    ));
    let plain = run_client(&mut python_app(otlp, "plain", &["client-plain", &url]));
    let unended = run_client(&mut python_app(otlp, "unended", &["client-unended", &url]));
    let sync = run_client(&mut python_app(otlp, "sync", &["sync-export", "15"]));
    let batch = run_client(&mut python_app(otlp, "batch", &["batch-export", "15"]));
    let worker = run_client(&mut python_app(otlp, "worker", &["worker", &url]));

    agent.wait_for("the span findings", Duration::from_secs(30), |lines| {
        has_finding(lines, unended, "unexported_span")
            && has_finding(lines, sync, "synchronous_export")
            && has_finding(lines, plain, "missing_traceparent")
    });
    let lines = agent.stop();
    let all = show(&lines);

    assert_eq!(
        kinds_of(&lines, instrumented),
        Vec::<String>::new(),
        "{all}"
    );
    assert_eq!(
        kinds_of(&lines, plain),
        ["missing_traceparent"],
        "instrumented by its exports alone:\n{all}"
    );
    assert_eq!(kinds_of(&lines, unended), ["unexported_span"], "{all}");
    assert_eq!(kinds_of(&lines, sync), ["synchronous_export"], "{all}");
    assert_eq!(kinds_of(&lines, batch), Vec::<String>::new(), "{all}");
    assert_eq!(
        kinds_of(&lines, worker),
        Vec::<String>::new(),
        "a worker starting traces is fine:\n{all}"
    );

    let f = findings_of(&lines, plain)[0];
    assert_eq!(
        f["service_name"], "plain",
        "service.name from the export's resource"
    );
    assert_eq!(f["path"], "/downstream");
    let f = findings_of(&lines, unended)[0];
    assert_eq!(f["path"], "/downstream");
    assert_eq!(f["peer"], downstream.addr().to_string().as_str());
    assert!(
        f["evidence"]["parent_id"]
            .as_str()
            .is_some_and(|p| p.len() == 16),
        "{f}"
    );
    let f = findings_of(&lines, sync)[0];
    assert_eq!(f["path"], "/v1/traces");
    assert_eq!(f["evidence"]["spans_per_export"], "1");

    let counters = tracegap_tests::last_counters(&lines);
    assert!(
        counters["agent"]["export_batches"].as_u64() >= Some(20),
        "{counters}"
    );
    assert_eq!(counters["agent"]["unattributed_batches"], 0, "{counters}");
}

fn curl_traced(port: u16, trace_id: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10", "-H"])
        .arg(format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01"))
        .arg(format!("http://127.0.0.1:{port}/handle"));
    cmd
}

#[test]
fn span_rules_for_servers() {
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/downstream");
    let agent = Agent::start(AGENT_ARGS);
    let otlp = agent.otlp_http_addr();

    let (mut broken, broken_port) = start_server(&mut python_app(
        otlp,
        "broken",
        &["server-broken", &url, "2"],
    ));
    let (mut good, good_port) = start_server(&mut python_app(
        otlp,
        "propagating",
        &["server-propagating", &url, "2"],
    ));
    let (mut proxy, proxy_port) =
        start_server(&mut python_app(otlp, "proxy", &["proxy", &url, "2"]));
    let mut callers = Vec::new();
    for (port, ids) in [
        (
            broken_port,
            [
                "4bf92f3577b34da6a3ce929d0e0e4736",
                "5bf92f3577b34da6a3ce929d0e0e4736",
            ],
        ),
        (
            good_port,
            [
                "6bf92f3577b34da6a3ce929d0e0e4736",
                "7bf92f3577b34da6a3ce929d0e0e4736",
            ],
        ),
        (
            proxy_port,
            [
                "8bf92f3577b34da6a3ce929d0e0e4736",
                "9bf92f3577b34da6a3ce929d0e0e4736",
            ],
        ),
    ] {
        for id in ids {
            callers.push(run_client(&mut curl_traced(port, id)));
        }
    }
    for server in [&mut broken, &mut good, &mut proxy] {
        server.wait_success(Duration::from_secs(20));
    }
    let (broken, good, proxy) = (broken.pid(), good.pid(), proxy.pid());

    agent.wait_for("broken_context", Duration::from_secs(30), |lines| {
        has_finding(lines, broken, "broken_context")
    });
    // Give the twins the same grace window to (wrongly) fire.
    std::thread::sleep(Duration::from_secs(3));
    let lines = agent.stop();
    let all = show(&lines);

    assert_eq!(kinds_of(&lines, broken), ["broken_context"], "{all}");
    assert_eq!(kinds_of(&lines, good), Vec::<String>::new(), "{all}");
    assert_eq!(
        kinds_of(&lines, proxy),
        Vec::<String>::new(),
        "a pass-through proxy:\n{all}"
    );
    for caller in callers {
        assert_eq!(kinds_of(&lines, caller), Vec::<String>::new(), "{all}");
    }
    let f = findings_of(&lines, broken)[0];
    assert_eq!(
        f["count"], 2,
        "both handled requests started new traces: {f}"
    );
    assert_eq!(f["service_name"], "broken");
    assert_eq!(f["path"], "/downstream");
    let received = f["evidence"]["received_trace_id"]
        .as_str()
        .expect("received trace id");
    assert!(received.ends_with("bf92f3577b34da6a3ce929d0e0e4736"), "{f}");
    assert_ne!(
        f["evidence"]["sent_trace_id"],
        f["evidence"]["received_trace_id"]
    );
}

/// The same rules with the OpenTelemetry Rust SDK exporting over OTLP/gRPC.
fn rust_app(otlp_grpc: std::net::SocketAddr, service: &str, mode: &str, url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otel_fixture"));
    cmd.args([mode, url])
        .env("FIXTURE_OTLP_GRPC", format!("http://{otlp_grpc}"))
        .env("FIXTURE_SERVICE", service)
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT");
    cmd
}

#[test]
fn span_rules_for_rust_sdk_clients() {
    let downstream = HttpServer::start(Duration::from_millis(50));
    let url = downstream.url("/rust");
    let agent = Agent::start(AGENT_ARGS);
    let otlp = agent.otlp_grpc_addr();

    let instrumented = run_client(&mut rust_app(
        otlp,
        "rust-instrumented",
        "client-instrumented",
        &url,
    ));
    let plain = run_client(&mut rust_app(otlp, "rust-plain", "client-plain", &url));
    let unended = run_client(&mut rust_app(otlp, "rust-unended", "client-unended", &url));

    agent.wait_for("the Rust SDK findings", Duration::from_secs(30), |lines| {
        has_finding(lines, unended, "unexported_span")
            && has_finding(lines, plain, "missing_traceparent")
    });
    let lines = agent.stop();
    let all = show(&lines);
    assert_eq!(
        kinds_of(&lines, instrumented),
        Vec::<String>::new(),
        "{all}"
    );
    assert_eq!(kinds_of(&lines, plain), ["missing_traceparent"], "{all}");
    assert_eq!(kinds_of(&lines, unended), ["unexported_span"], "{all}");
    let f = findings_of(&lines, plain)[0];
    assert_eq!(f["service_name"], "rust-plain");
    assert_eq!(f["comm"], "otel_fixture");
    assert_eq!(f["path"], "/rust");
    // The OTLP/gRPC export calls were decoded from HTTP/2 and recognised as telemetry (never
    // judged: the instrumented client above has no finding for them).
    let counters = tracegap_tests::last_counters(&lines);
    assert!(
        counters["agent"]["telemetry_exports"].as_u64() >= Some(3),
        "one export call per fixture at least: {counters}"
    );
}
