//! gRPC over HTTP/2 (h2c on loopback): the kernel follows connections from their preface, the
//! agent decodes HEADERS frames with HPACK, and gRPC calls get the same verdicts as HTTP/1
//! requests. The fixtures are real grpcio processes with the OpenTelemetry Python SDK and its
//! gRPC interceptors (tests/fixtures/grpc_app.py).

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    time::Duration,
};

use tracegap_tests::{
    findings_of, grpc_app, has_finding, kinds_of, last_counters, run_client, show, start_server,
    Agent, ChildGuard,
};

const AGENT_ARGS: &[&str] = &[
    "--otlp-grpc-listen",
    "127.0.0.1:0",
    "--otlp-http-listen",
    "127.0.0.1:0",
    "--span-grace",
    "2s",
];
const METHOD: &str = "/demo.Greeter/SayHello";

#[test]
fn grpc_client_without_the_interceptor_is_missing_traceparent() {
    let agent = Agent::start(AGENT_ARGS);
    let otlp = agent.otlp_http_addr();
    let (server, port) = start_server(&mut grpc_app(
        otlp,
        "greeter",
        &["server", "--port", "0", "--instrumented"],
    ));
    let target = format!("127.0.0.1:{port}");
    // Twelve calls on one connection: from the second on, grpcio sends the headers as
    // dynamic-table references, so every call is judged only if the table is followed.
    let calls = "12";
    let instrumented = run_client(&mut grpc_app(
        otlp,
        "with-interceptor",
        &[
            "client",
            "--target",
            &target,
            "--calls",
            calls,
            "--instrumented",
        ],
    ));
    let sdk_only = run_client(&mut grpc_app(
        otlp,
        "sdk-only",
        &[
            "client",
            "--target",
            &target,
            "--calls",
            calls,
            "--sdk-only",
        ],
    ));
    agent.wait_for("missing_traceparent", Duration::from_secs(30), |lines| {
        has_finding(lines, sdk_only, "missing_traceparent")
    });
    let server_pid = server.pid();
    drop(server);
    let lines = agent.stop();
    let all = show(&lines);

    assert_eq!(
        kinds_of(&lines, instrumented),
        Vec::<String>::new(),
        "the interceptor propagates traceparent:\n{all}"
    );
    assert_eq!(kinds_of(&lines, sdk_only), ["missing_traceparent"], "{all}");
    assert_eq!(kinds_of(&lines, server_pid), Vec::<String>::new(), "{all}");
    let f = findings_of(&lines, sdk_only)[0];
    assert_eq!(f["path"], METHOD, "{f}");
    assert_eq!(f["method"], "POST", "{f}");
    assert_eq!(f["protocol"], "grpc", "{f}");
    assert_eq!(f["peer"], target.as_str(), "{f}");
    assert_eq!(f["service_name"], "sdk-only", "{f}");
    assert_eq!(
        f["count"].as_u64(),
        calls.parse().ok(),
        "every call on the connection judged:\n{f}"
    );
    // Coverage counts gRPC calls like HTTP/1 requests (the OTLP/HTTP exports are telemetry).
    let coverage = |pid: u32| {
        lines
            .iter()
            .rev()
            .find(|l| l["kind"] == "coverage" && l["pid"] == pid)
            .unwrap_or_else(|| panic!("no coverage line for {pid}:\n{all}"))
    };
    let calls: u64 = calls.parse().expect("number");
    let c = coverage(instrumented);
    assert_eq!(
        (&c["requests"], &c["with_context"]),
        (&calls.into(), &calls.into()),
        "{c}"
    );
    assert_eq!(c["coverage_percent"], 100.0, "{c}");
    let c = coverage(sdk_only);
    assert_eq!(
        (&c["requests"], &c["without_context"]),
        (&calls.into(), &calls.into()),
        "{c}"
    );
    let counters = last_counters(&lines);
    let kernel = &counters["kernel"];
    assert!(
        kernel["h2_connections"].as_u64().unwrap_or(0)
            + kernel["export_probations"].as_u64().unwrap_or(0)
            >= 4,
        "client (read whole on probation) and server side of both connections: {counters}"
    );
    assert_eq!(counters["agent"]["h2_lost_sync"], 0, "{counters}");
    assert_eq!(counters["agent"]["h2_undetermined"], 0, "{counters}");
}

#[test]
fn grpc_server_that_drops_the_context_is_broken_context() {
    let agent = Agent::start(AGENT_ARGS);
    let otlp = agent.otlp_http_addr();
    let (_downstream, down_port) = start_server(&mut grpc_app(
        otlp,
        "downstream",
        &["server", "--port", "0", "--instrumented"],
    ));
    let down_port = down_port.to_string();
    let (mut broken, broken_port) = start_server(&mut grpc_app(
        otlp,
        "dropper",
        &[
            "server",
            "--port",
            "0",
            "--instrumented",
            "--downstream",
            &down_port,
            "--drop-context",
            "--calls",
            "2",
        ],
    ));
    let (mut good, good_port) = start_server(&mut grpc_app(
        otlp,
        "propagator",
        &[
            "server",
            "--port",
            "0",
            "--instrumented",
            "--downstream",
            &down_port,
            "--calls",
            "2",
        ],
    ));
    for port in [broken_port, good_port] {
        run_client(&mut grpc_app(
            otlp,
            "caller",
            &[
                "client",
                "--target",
                &format!("127.0.0.1:{port}"),
                "--calls",
                "2",
                "--instrumented",
            ],
        ));
    }
    broken.wait_success(Duration::from_secs(20));
    good.wait_success(Duration::from_secs(20));
    let (broken, good) = (broken.pid(), good.pid());
    agent.wait_for("broken_context", Duration::from_secs(30), |lines| {
        has_finding(lines, broken, "broken_context")
    });
    // Give the twin the same grace window to (wrongly) fire.
    std::thread::sleep(Duration::from_secs(3));
    let lines = agent.stop();
    let all = show(&lines);
    assert_eq!(kinds_of(&lines, broken), ["broken_context"], "{all}");
    assert_eq!(kinds_of(&lines, good), Vec::<String>::new(), "{all}");
    let f = findings_of(&lines, broken)[0];
    assert_eq!(f["path"], METHOD, "{f}");
    assert_eq!(f["protocol"], "grpc", "{f}");
    assert_ne!(
        f["evidence"]["sent_trace_id"], f["evidence"]["received_trace_id"],
        "{f}"
    );
}

#[test]
fn grpc_connection_opened_before_the_agent_is_undetermined() {
    // No agent yet to export spans to: the fixtures record spans without exporting them.
    let no_export = "127.0.0.1:9".parse().expect("addr");
    let (server, port) = start_server(
        grpc_app(no_export, "greeter", &["server", "--port", "0"])
            .env_remove("FIXTURE_OTLP_ENDPOINT"),
    );
    let target = format!("127.0.0.1:{port}");
    let mut client = ChildGuard::spawn(
        grpc_app(
            no_export,
            "early",
            &[
                "client",
                "--target",
                &target,
                "--calls",
                "3",
                "--sdk-only",
                "--hold",
                "4",
            ],
        )
        .env_remove("FIXTURE_OTLP_ENDPOINT")
        .stdout(Stdio::piped()),
    );
    // Kept open until the client is done: it prints a line per call.
    let mut output = BufReader::new(client.0.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    output
        .read_line(&mut first)
        .expect("the client's first call");
    assert!(first.starts_with("call 0 ok"), "{first}");

    // The connection exists, its preface long gone: start the agent now.
    let agent = Agent::start(AGENT_ARGS);
    client.wait_success(Duration::from_secs(20));
    drop(output);
    let early = client.pid();
    // The calls were made; the agent handles their events within milliseconds.
    std::thread::sleep(Duration::from_secs(1));
    let server_pid = server.pid();
    drop(server);
    let lines = agent.stop();
    let all = show(&lines);
    assert_eq!(
        kinds_of(&lines, early),
        Vec::<String>::new(),
        "calls on a connection joined mid-way are undetermined, not findings:\n{all}"
    );
    assert_eq!(kinds_of(&lines, server_pid), Vec::<String>::new(), "{all}");
    let counters = last_counters(&lines);
    assert!(
        counters["kernel"]["h2_joined"].as_u64() >= Some(1),
        "the kernel marked the connection from a request HEADERS frame: {counters}"
    );
    assert!(
        counters["agent"]["h2_undetermined"].as_u64() >= Some(3),
        "the three late calls (client side; the server side too) are counted: {counters}"
    );
}
