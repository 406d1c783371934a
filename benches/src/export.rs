//! OTLP/HTTP trace exports over one keep-alive loopback connection to a sink in this process:
//! what the wire intake (agent-ebpf/src/export.rs, agent/src/parse/export/) costs per span.
//! The body is a real `ExportTraceServiceRequest` (opentelemetry-proto), so the agent decodes
//! every export whole; xtask checks that it did (the coverage line's `spans_exported`).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;
use serde_json::{json, Value};

#[derive(clap::Args)]
pub struct Options {
    /// Export requests sent.
    #[arg(long, default_value_t = 1000)]
    exports: u64,
    /// Spans per export.
    #[arg(long, default_value_t = 64)]
    spans: u64,
    /// Pause between exports (an SDK's batch processor sends every few seconds; the pause
    /// keeps the ring buffer from filling, so the run measures decoding, not dropping).
    #[arg(long, default_value_t = 1)]
    pause_ms: u64,
}

/// An export of `spans` spans of one trace, as an SDK's batch processor makes it.
fn export_body(spans: u64) -> Vec<u8> {
    let now = 1_700_000_000_000_000_000u64;
    let span = |i: u64| Span {
        trace_id: vec![0x42; 16],
        span_id: (i + 1).to_be_bytes().to_vec(),
        parent_span_id: if i == 0 {
            Vec::new()
        } else {
            1u64.to_be_bytes().to_vec()
        },
        name: format!("bench-span-{i:04}"),
        kind: 3,
        start_time_unix_nano: now + i * 1000,
        end_time_unix_nano: now + i * 1000 + 500,
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("bench-exporter".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans).map(span).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Answers every request on one connection with an empty 200 (reads heads and
/// `Content-Length` bodies).
fn sink(listener: TcpListener) -> Result<()> {
    let (stream, _) = listener.accept()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().context("content-length")?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
    }
}

pub fn run(opts: &Options) -> Result<Value> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || sink(listener));
    let body = export_body(opts.spans);
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut request = head.into_bytes();
    request.extend_from_slice(&body);
    let stream = TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut busy = Duration::ZERO;
    for _ in 0..opts.exports {
        let started = Instant::now();
        writer.write_all(&request)?;
        // The response: a status line, Content-Length: 0, a blank line.
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("the sink closed the connection");
            }
            if line == "\r\n" {
                break;
            }
        }
        busy += started.elapsed();
        thread::sleep(Duration::from_millis(opts.pause_ms));
    }
    drop(writer);
    drop(reader);
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the sink panicked"))??;
    Ok(json!({
        "pid": std::process::id(),
        "exports": opts.exports,
        "spans": opts.exports * opts.spans,
        "export_bytes": request.len(),
        "ns_per_export": busy.as_nanos() as f64 / opts.exports as f64,
    }))
}
