//! Hostile input and privacy: binary data that starts like a request, header blocks split over
//! syscalls, 1 MiB headers, invalid UTF-8, 100 MB bodies and slowloris connections against the
//! receiver; the agent keeps working, answers per the OTLP spec and counts what it refused.
//! Secrets never reach any output; exported paths are templated. Not root: a clear error.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use tracegap_tests::{
    agent_bin, findings, findings_of, last_counters,
    otlp_sink::{attr, body, OtlpSink},
    run_client, Agent, HttpServer, TRACEPARENT,
};

fn curl(url: &str) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "--max-time", "10"])
        .arg(url);
    cmd
}

/// Writes `chunks` as separate syscalls on one connection, then reads whatever comes back.
fn send_chunks(addr: SocketAddr, chunks: &[&[u8]]) {
    let mut s = TcpStream::connect(addr).expect("connect");
    for c in chunks {
        s.write_all(c).expect("write");
        thread::sleep(Duration::from_millis(20));
    }
    let _timeout = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut sink = Vec::new();
    let _read = s.read_to_end(&mut sink);
}

#[test]
fn hostile_captures_are_counted_and_the_agent_keeps_working() {
    // Answers after 1 s, so curl is still alive when the agent reads its /proc entry even on a
    // loaded machine (the 1 MiB write above keeps the agent busy for a moment).
    let server = HttpServer::start(Duration::from_secs(1));
    let agent = Agent::start(&["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"]);
    let addr = server.addr();
    // Binary data that starts with "GET ".
    let mut binary = b"GET ".to_vec();
    binary.extend((0..=255u8).cycle().take(600));
    binary.extend_from_slice(b"\r\n\r\n");
    send_chunks(addr, &[&binary]);
    // The header block split over two syscalls: only the first starts with a method; the
    // traceparent in the second is never seen, so the verdict is "undetermined", not a finding.
    send_chunks(
        addr,
        &[
            b"GET /split HTTP/1.1\r\nHost: x\r\n",
            format!("traceparent: {TRACEPARENT}\r\n\r\n").as_bytes(),
        ],
    );
    // A 1 MiB header in one write: the capture is cut at the cap.
    let mut big = b"GET /big HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 1 << 20));
    big.extend_from_slice(format!("\r\ntraceparent: {TRACEPARENT}\r\n\r\n").as_bytes());
    send_chunks(addr, &[&big]);
    // Invalid UTF-8 in the path and in a header value.
    send_chunks(
        addr,
        &[b"GET /caf\xc3\x28\xff HTTP/1.1\r\nHost: x\r\nX-Bad: \xff\xfe\xfd\r\n\r\n"],
    );
    // And afterwards an ordinary request is still judged.
    let pid = run_client(&mut curl(&server.url("/after")));
    agent.wait_for(
        "the ordinary request's finding",
        Duration::from_secs(15),
        |l| !findings_of(l, pid).is_empty(),
    );
    let me = std::process::id();
    let lines = agent.stop();
    let counters = last_counters(&lines);
    let a = &counters["agent"];
    assert!(
        a["parse_failures"].as_u64().unwrap_or(0) >= 1,
        "binary data is a counted parse failure: {counters}"
    );
    assert!(
        a["undetermined"].as_u64().unwrap_or(0) >= 2,
        "the split and the cut header blocks are undetermined: {counters}"
    );
    assert!(
        counters["kernel"]["truncated"].as_u64().unwrap_or(0) >= 1,
        "the 1 MiB header was truncated at the cap: {counters}"
    );
    let mine = findings_of(&lines, me);
    assert!(
        !mine
            .iter()
            .any(|f| f["path"] == "/split" || f["path"] == "/big"),
        "no finding from a header block the agent did not see whole: {mine:?}"
    );
}

/// Sends raw bytes to the receiver and returns its status code (0 if it closed without one).
fn raw_status(addr: SocketAddr, head: &[u8], body: &[u8]) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect to the receiver");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head).expect("write head");
    let _body_sent = s.write_all(body);
    read_status(&mut s)
}

fn read_status(s: &mut TcpStream) -> u16 {
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while got.len() < 12 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    std::str::from_utf8(&got)
        .ok()
        .and_then(|t| t.strip_prefix("HTTP/1.1 "))
        .and_then(|t| t.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn receiver_refuses_huge_bodies_and_slowloris_and_keeps_serving() {
    let agent = Agent::start(&[
        "--otlp-grpc-listen",
        "off",
        "--otlp-http-listen",
        "127.0.0.1:0",
        "--otlp-max-message-bytes",
        "1048576",
        "--otlp-max-connections",
        "8",
        "--otlp-header-timeout",
        "1s",
        "--otlp-body-timeout",
        "2s",
    ]);
    let addr = agent.otlp_http_addr();
    let head = |extra: &str| {
        format!(
            "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n{extra}\r\n"
        )
    };

    // A declared 100 MB body: 413 before a byte of it is read.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head("Content-Length: 104857600\r\n").as_bytes())
        .expect("write head");
    assert_eq!(read_status(&mut s), 413, "declared 100 MB");
    drop(s);

    // 100 MB chunked (no length up front): 413 once the limit is crossed; the writer is
    // cut off by the closing connection.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(head("Transfer-Encoding: chunked\r\n").as_bytes())
        .expect("write head");
    let mut writer = s.try_clone().expect("clone");
    let pump = thread::spawn(move || {
        let chunk = [0x0au8; 1 << 20];
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        for _ in 0..100 {
            if writer.write_all(&frame).is_err() {
                return;
            }
        }
        let _end = writer.write_all(b"0\r\n\r\n");
    });
    assert_eq!(read_status(&mut s), 413, "100 MB chunked");
    drop(s);
    pump.join().expect("pump");

    // A fake export that is not protobuf: 400.
    let garbage = b"\xff\xff\xff\xff not protobuf";
    assert_eq!(
        raw_status(
            addr,
            head(&format!("Content-Length: {}\r\n", garbage.len())).as_bytes(),
            garbage
        ),
        400
    );

    // Slowloris: 4 connections that say nothing and 4 that send half a request head take
    // every slot; the next one is refused at accept; all 8 are closed after the 1 s timeout.
    // First let the agent release the slots of the connections above (it does so as it sees
    // them close, asynchronously).
    thread::sleep(Duration::from_millis(500));
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            if i % 2 == 1 {
                s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
                    .expect("half a head");
            }
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut refused = TcpStream::connect(addr).expect("the kernel still accepts");
    let _sent = refused.write_all(head("Content-Length: 0\r\n").as_bytes());
    refused
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert_eq!(read_status(&mut refused), 0, "the 9th connection is closed");
    let started = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 256];
        // Closed by the agent: EOF, a 408, or a reset, within the timeout.
        let _closed = s.read(&mut buf);
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "slow connections were closed by the header timeout"
    );

    // Still serving: an empty export (a valid, empty ExportTraceServiceRequest) is a 200.
    assert_eq!(
        raw_status(addr, head("Content-Length: 0\r\n").as_bytes(), b""),
        200
    );

    let lines = agent.stop();
    let counters = last_counters(&lines);
    let r = &counters["receiver"];
    let at_least = |k: &str, n: u64| {
        assert!(
            r[k].as_u64().unwrap_or(0) >= n,
            "receiver.{k} >= {n}: {counters}"
        );
    };
    at_least("too_large", 2);
    at_least("decode_errors", 1);
    at_least("connections_rejected", 1);
    at_least("connections_timed_out", 4);
}

#[test]
fn secrets_never_reach_any_output_and_exported_paths_are_templated() {
    let sink = OtlpSink::start();
    let server = HttpServer::start(Duration::from_millis(300));
    let endpoint = sink.http_endpoint();
    let agent = Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "off",
            "--otlp-http-listen",
            "off",
            "--otlp-endpoint",
            &endpoint,
        ],
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1000"),
            ("RUST_LOG", "debug"),
        ],
    );
    let uuid = "123e4567-e89b-12d3-a456-426614174000";
    let raw_path = format!("/users/12345/orders/{uuid}");
    let pid = run_client(
        curl(&server.url(&format!("{raw_path}?token=SECRETQ")))
            .args(["-H", "Authorization: Bearer SECRETA"])
            .args(["-H", "Cookie: s=SECRETC"])
            .args(["-H", "Set-Cookie: s=SECRETS"])
            .args(["-H", "Proxy-Authorization: Basic SECRETP"])
            .env("OTEL_SERVICE_NAME", "checkout"),
    );
    agent.wait_for("the finding", Duration::from_secs(15), |l| {
        !findings_of(l, pid).is_empty()
    });
    let pid_text = pid.to_string();
    sink.wait_for("the finding's LogRecord", Duration::from_secs(15), |s| {
        s.log_records()
            .iter()
            .any(|(_, r)| attr(&r.attributes, "process.pid").as_deref() == Some(&pid_text))
    });
    let stderr = agent.stderr();
    let lines = agent.stop();

    // JSON keeps the raw path (query stripped); the export templates it.
    let f = findings_of(&lines, pid)[0];
    assert_eq!(f["path"], raw_path.as_str());
    let records = sink.log_records();
    let (_, rec) = records
        .iter()
        .find(|(_, r)| attr(&r.attributes, "process.pid").as_deref() == Some(&pid_text))
        .expect("our record");
    assert_eq!(
        attr(&rec.attributes, "url.path").as_deref(),
        Some("/users/{id}/orders/{id}")
    );
    let text = body(rec).expect("a body");
    assert!(
        text.contains("/users/{id}/orders/{id}") && !text.contains("12345"),
        "{text}"
    );

    let json = findings(&lines)
        .iter()
        .map(ToString::to_string)
        .collect::<String>()
        + &lines.iter().map(ToString::to_string).collect::<String>();
    let exported = format!("{:?}{:?}", sink.logs(), sink.metrics());
    for (name, out) in [("JSON", &json), ("log", &stderr), ("OTLP", &exported)] {
        assert!(
            !out.contains("SECRET"),
            "a secret reached the {name} output:\n{out}"
        );
    }
}

#[test]
fn path_template_off_exports_raw_paths() {
    let sink = OtlpSink::start();
    let server = HttpServer::start(Duration::from_millis(300));
    let endpoint = sink.http_endpoint();
    let agent = Agent::start_with_env(
        &[
            "--otlp-grpc-listen",
            "off",
            "--otlp-http-listen",
            "off",
            "--otlp-endpoint",
            &endpoint,
            "--path-template",
            "off",
        ],
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    let pid = run_client(&mut curl(&server.url("/users/777")));
    let pid_text = pid.to_string();
    sink.wait_for("the finding's LogRecord", Duration::from_secs(15), |s| {
        s.log_records()
            .iter()
            .any(|(_, r)| attr(&r.attributes, "process.pid").as_deref() == Some(&pid_text))
    });
    let records = sink.log_records();
    let (_, rec) = records
        .iter()
        .find(|(_, r)| attr(&r.attributes, "process.pid").as_deref() == Some(&pid_text))
        .expect("our record");
    assert_eq!(
        attr(&rec.attributes, "url.path").as_deref(),
        Some("/users/777")
    );
    drop(agent);
}

#[test]
fn not_root_is_a_clear_error() {
    // The agent binary under target/ is world-readable and executable.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(agent_bin())
        .args(["--otlp-grpc-listen", "off", "--otlp-http-listen", "off"])
        .output()
        .expect("run the agent as nobody");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent must not run as nobody");
    assert!(
        stderr.contains("needs root"),
        "the error says why:\n{stderr}"
    );
}
