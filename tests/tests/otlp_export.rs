//! Findings and metrics over OTLP: the real agent exports to a real OTLP receiver (gRPC and
//! HTTP/protobuf) started by the test; a curl run as `checkout` without trace context is the
//! known offending process. Secrets the client sends never reach any export.

use std::{net::TcpListener, process::Command, time::Duration};

use tracegap_tests::{
    findings_of,
    otlp_sink::{attr, body, point_value, OtlpSink},
    run_client, Agent, HttpServer, RECEIVERS_OFF,
};

fn curl_with_secrets(url: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .args([
            "-H",
            "Authorization: Bearer SECRET",
            "-H",
            "Cookie: s=SECRET",
        ])
        .arg(url)
        .env("OTEL_SERVICE_NAME", "checkout");
    cmd
}

fn exports_findings_and_metrics(protocol: &str) {
    let sink = OtlpSink::start();
    let server = HttpServer::start(Duration::from_millis(300));
    let endpoint = match protocol {
        "grpc" => sink.grpc_endpoint(),
        _ => sink.http_endpoint(),
    };
    let mut args = RECEIVERS_OFF.to_vec();
    args.extend(["--otlp-endpoint", endpoint.as_str()]);
    let agent = Agent::start_with_env(
        &args,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
            // Push metrics every second instead of every minute.
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
        ],
    );
    // The export line is logged after the programs are attached: wait for it (bounded).
    let started = std::time::Instant::now();
    while !agent
        .stderr()
        .contains(&format!("OTLP {protocol} to {endpoint}"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent says where it exports:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let pid = run_client(&mut curl_with_secrets(
        &server.url("/api/cart?token=SECRET"),
    ));
    agent.wait_for("the JSON finding", Duration::from_secs(10), |lines| {
        !findings_of(lines, pid).is_empty()
    });

    let pid_text = pid.to_string();
    let is_ours = |attrs: &[_]| {
        attr(attrs, "process.pid").as_deref() == Some(pid_text.as_str())
            && attr(attrs, "tracegap.finding.kind").as_deref() == Some("missing_traceparent")
    };
    sink.wait_for("the finding's LogRecord", Duration::from_secs(15), |s| {
        s.log_records().iter().any(|(_, r)| is_ours(&r.attributes))
    });
    let requests_checkout_none = |s: &OtlpSink| {
        s.sum_points("tracegap.http.requests").iter().any(|p| {
            attr(&p.attributes, "service.name").as_deref() == Some("checkout")
                && attr(&p.attributes, "propagation").as_deref() == Some("none")
                && point_value(p) >= 1
        })
    };
    let findings_missing = |s: &OtlpSink| {
        s.sum_points("tracegap.findings").iter().any(|p| {
            attr(&p.attributes, "tracegap.finding.kind").as_deref() == Some("missing_traceparent")
                && point_value(p) >= 1
        })
    };
    sink.wait_for(
        "the request and finding metrics",
        Duration::from_secs(15),
        |s| requests_checkout_none(s) && findings_missing(s),
    );

    let (lines, took) = agent.stop_with(libc::SIGINT);
    assert!(took < Duration::from_secs(8), "stopping took {took:?}");
    assert!(!findings_of(&lines, pid).is_empty());

    let records = sink.log_records();
    let (resource, record) = records
        .iter()
        .rev()
        .find(|(_, r)| is_ours(&r.attributes))
        .expect("the finding's LogRecord");
    let port = server.addr().port();
    assert_eq!(
        body(record),
        Some(
            format!(
                "checkout (pid {pid}) sent 1 GET /api/cart request to 127.0.0.1:{port} without traceparent"
            )
            .as_str()
        ),
        "{record:#?}"
    );
    assert_eq!(record.event_name, "tracegap.finding");
    assert_eq!(record.severity_number, 17, "SEVERITY_NUMBER_ERROR");
    assert_eq!(record.severity_text, "ERROR");
    let a = &record.attributes;
    for (key, want) in [
        ("service.name", "checkout"),
        ("process.executable.name", "curl"),
        ("http.request.method", "GET"),
        ("url.path", "/api/cart"),
        ("server.address", "127.0.0.1"),
        ("server.port", port.to_string().as_str()),
        ("tracegap.finding.count", "1"),
        ("tracegap.finding.severity", "error"),
        ("tracegap.finding.direction", "outbound"),
    ] {
        assert_eq!(attr(a, key).as_deref(), Some(want), "{key} in {record:#?}");
    }
    assert!(
        attr(a, "process.executable.path").is_some_and(|p| p.ends_with("/curl")),
        "{record:#?}"
    );
    assert_eq!(
        attr(resource, "service.name").as_deref(),
        Some("tracegap"),
        "the agent's own resource"
    );

    // Exactly what was exported, every signal, in full: SECRET must be nowhere.
    let everything = format!("{:#?}\n{:#?}", sink.logs(), sink.metrics());
    assert!(
        !everything.contains("SECRET"),
        "a secret reached the export:\n{everything}"
    );
    assert!(requests_checkout_none(&sink) && findings_missing(&sink));
}

#[test]
fn exports_over_grpc() {
    exports_findings_and_metrics("grpc");
}

#[test]
fn exports_over_http_protobuf() {
    exports_findings_and_metrics("http/protobuf");
}

/// A backend that is down costs nothing: findings still print, the agent stops promptly.
#[test]
fn down_backend_does_not_stall_the_agent() {
    for protocol in ["grpc", "http/protobuf"] {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let server = HttpServer::start(Duration::from_millis(300));
        let endpoint = format!("http://{closed}");
        let mut args = RECEIVERS_OFF.to_vec();
        args.extend(["--otlp-endpoint", endpoint.as_str()]);
        let agent = Agent::start_with_env(
            &args,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
            ],
        );
        let pid = run_client(&mut curl_with_secrets(&server.url("/down")));
        agent.wait_for("the JSON finding", Duration::from_secs(10), |lines| {
            !findings_of(lines, pid).is_empty()
        });
        // Let a few exports fail first.
        std::thread::sleep(Duration::from_secs(2));
        let (_, took) = agent.stop_with(libc::SIGINT);
        assert!(
            took < Duration::from_secs(8),
            "{protocol}: stopping with a down backend took {took:?}"
        );
    }
}
