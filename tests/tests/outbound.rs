//! Walking skeleton: real clients send HTTP requests; the real agent, with its eBPF programs on
//! the syscall tracepoints, reports who sent them without (valid W3C) trace context.

use std::{process::Command, time::Duration};

use tracegap_tests::{
    findings_of, kinds_of, last_counters, run_client, Agent, HttpServer, TRACEPARENT,
};

fn curl(url: &str, headers: &[&str]) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    cmd
}

fn python_urllib(url: &str) -> Command {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10).read()",
        url,
    ]);
    cmd
}

#[test]
fn outbound_requests_are_judged_per_process() {
    let server = HttpServer::start(Duration::from_millis(300));
    let agent = Agent::start(&["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"]);

    let with_context = run_client(&mut curl(
        &server.url("/ok"),
        &[&format!("traceparent: {TRACEPARENT}")],
    ));
    let without = run_client(&mut curl(&server.url("/cart?user=42&token=SECRET"), &[]));
    let malformed = run_client(&mut curl(
        &server.url("/bad"),
        &["traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"],
    ));
    let b3_only = run_client(&mut curl(
        &server.url("/b3"),
        &["b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"],
    ));
    let python = run_client(&mut python_urllib(&server.url("/py")));
    let instrumented = run_client(
        curl(
            &server.url("/instrumented"),
            &["Authorization: Bearer SECRET", "Cookie: s=SECRET"],
        )
        .env("OTEL_SERVICE_NAME", "checkout"),
    );
    assert_eq!(server.served(), 6, "the local server answered every client");

    let agent_pid = agent.pid();
    let lines = agent.stop();
    let show = || {
        lines
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };

    assert_eq!(
        kinds_of(&lines, with_context),
        Vec::<String>::new(),
        "valid traceparent: {}",
        show()
    );
    assert_eq!(
        kinds_of(&lines, without),
        ["uninstrumented_client"],
        "{}",
        show()
    );
    assert_eq!(
        kinds_of(&lines, malformed),
        ["malformed_traceparent"],
        "{}",
        show()
    );
    assert_eq!(
        kinds_of(&lines, b3_only),
        ["non_w3c_propagation"],
        "{}",
        show()
    );
    assert_eq!(
        kinds_of(&lines, python),
        ["uninstrumented_client"],
        "{}",
        show()
    );
    assert_eq!(
        kinds_of(&lines, instrumented),
        ["missing_traceparent"],
        "{}",
        show()
    );

    let peer = server.addr().to_string();
    let f = findings_of(&lines, without)[0];
    assert_eq!(f["comm"], "curl");
    assert_eq!(f["exe"], "/usr/bin/curl");
    assert_eq!(f["peer"], peer.as_str());
    assert_eq!(f["method"], "GET");
    assert_eq!(f["path"], "/cart", "query string stripped");
    assert_eq!(f["direction"], "outbound");
    assert_eq!(f["severity"], "info");
    assert_eq!(f["count"], 1);

    let f = findings_of(&lines, instrumented)[0];
    assert_eq!(f["service_name"], "checkout");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["path"], "/instrumented");
    assert_eq!(f["peer"], peer.as_str());

    let f = findings_of(&lines, malformed)[0];
    assert_eq!(f["evidence"]["traceparent_error"], "not lowercase hex");
    let f = findings_of(&lines, python)[0];
    assert!(
        f["comm"].as_str().is_some_and(|c| c.starts_with("python")),
        "{f}"
    );
    assert_eq!(f["path"], "/py");

    let everything = show();
    assert!(
        !everything.contains("SECRET"),
        "a header value or query leaked:\n{everything}"
    );
    assert!(
        lines.iter().all(|l| l["pid"] != agent_pid),
        "the agent reported its own traffic:\n{everything}"
    );

    let coverage = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == with_context)
        .expect("a coverage line for the traced client");
    assert_eq!(coverage["with_context"], 1);
    assert_eq!(coverage["requests"], 1);

    let counters = last_counters(&lines);
    let captured = counters["kernel"]["captured"]
        .as_u64()
        .expect("captured counter");
    // Six client requests plus the six the test's server read (inbound).
    assert!(
        captured >= 12,
        "kernel captured {captured} requests: {counters}"
    );
    assert_eq!(counters["kernel"]["ringbuf_full"], 0, "{counters}");
}

#[test]
fn a_cut_capture_is_undetermined_not_missing() {
    let server = HttpServer::start(Duration::from_millis(300));
    // A 64-byte cap cuts the header block before the (absent) traceparent could appear.
    let agent = Agent::start(&[
        "--capture-bytes",
        "64",
        "--otlp-grpc-listen",
        "off",
        "--otlp-http-listen",
        "off",
    ]);
    let long_header = format!("X-Padding: {}", "p".repeat(200));
    let client =
        run_client(curl(&server.url("/long"), &[&long_header]).env("OTEL_SERVICE_NAME", "padded"));
    let lines = agent.stop();
    assert_eq!(
        kinds_of(&lines, client),
        Vec::<String>::new(),
        "a cut capture must not be a finding"
    );
    let coverage = lines
        .iter()
        .rev()
        .find(|l| l["kind"] == "coverage" && l["pid"] == client)
        .expect("the cut request is still counted");
    assert_eq!(coverage["undetermined"], 1, "{coverage}");
    let counters = last_counters(&lines);
    assert!(
        counters["kernel"]["truncated"].as_u64() >= Some(1),
        "{counters}"
    );
}
