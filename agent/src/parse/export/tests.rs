//! Export streams as the kernel sends them: chunks with offsets, split anywhere, with gaps.

use std::io::Write as _;

use agent_common::flags;
use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message as _;

use super::*;
use crate::model::{otlp::Signal, Direction};

const MAX: usize = 1 << 20;

fn request(spans: usize) -> Vec<u8> {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("cart".into())),
                    }),
                    ..KeyValue::default()
                }],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        trace_id: vec![1; 16],
                        span_id: (i as u64 + 1).to_be_bytes().to_vec(),
                        name: format!("span {i} with a name long enough to make the body big"),
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
    .encode_to_vec()
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(body).expect("gzip");
    e.finish().expect("gzip")
}

fn http_export(body: &[u8], gzipped: bool) -> Vec<u8> {
    let mut head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: collector:4318\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    if gzipped {
        head.push_str("Content-Encoding: gzip\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// A chunk of export connection 7 of pid 42 at `offset`.
fn chunk(data: &[u8], offset: u64) -> CapturedEvent {
    CapturedEvent {
        monotonic_ns: 1,
        pid: 42,
        tid: 42,
        fd: 7,
        comm: "app".into(),
        direction: Direction::Outbound,
        syscall: 0,
        flags: flags::EXPORT_STREAM,
        total_len: offset,
        peer: None,
        data: Bytes::copy_from_slice(data),
    }
}

/// Feeds `stream` in chunks of `size` bytes, skipping the bytes in `gap` (start, len).
fn feed(
    s: &mut ExportStreams,
    stream: &[u8],
    size: usize,
    gap: Option<(usize, usize)>,
) -> (Vec<Request>, Vec<WireExport>) {
    let (mut requests, mut exports) = (Vec::new(), Vec::new());
    let mut at = 0;
    while at < stream.len() {
        if let Some((start, len)) = gap {
            if at == start {
                at += len;
                continue;
            }
        }
        let mut end = (at + size).min(stream.len());
        if let Some((start, _)) = gap {
            if at < start && end > start {
                end = start;
            }
        }
        s.feed(
            &chunk(&stream[at..end], at as u64),
            || None,
            &mut requests,
            &mut exports,
        );
        at = end;
    }
    (requests, exports)
}

fn spans(exports: &[WireExport]) -> usize {
    exports
        .iter()
        .flat_map(|e| &e.resources)
        .map(|r| r.spans.len())
        .sum()
}

#[test]
fn http1_exports_are_decoded_whatever_the_chunking() {
    let body = request(512);
    assert!(body.len() > 100 * 1024 / 4, "{}", body.len());
    let mut stream = http_export(&body, false);
    stream.extend(http_export(&gzip(&request(3)), true));
    for size in [1, 7, 4096, stream.len()] {
        let mut s = ExportStreams::new(MAX);
        let (requests, exports) = feed(&mut s, &stream, size, None);
        assert_eq!(spans(&exports), 515, "chunks of {size}");
        assert_eq!(exports.len(), 2);
        assert_eq!(
            exports[0].resources[0].service_name.as_deref(),
            Some("cart")
        );
        assert_eq!(exports[0].transport, Transport::HttpProtobuf);
        assert_eq!(requests.len(), 2);
        assert!(requests.iter().all(Request::is_telemetry));
        assert_eq!(s.counters.exports, 2);
    }
}

#[test]
fn a_gap_loses_the_export_it_falls_in_not_the_next() {
    let first = http_export(&request(50), false);
    let mut stream = first.clone();
    stream.extend(http_export(&request(2), false));
    let mut s = ExportStreams::new(MAX);
    // 100 bytes missing inside the first body.
    let (_, exports) = feed(&mut s, &stream, 4096, Some((first.len() - 300, 100)));
    assert_eq!(spans(&exports), 2, "the second export is whole");
    assert_eq!(s.counters.gap, 1);
}

#[test]
fn an_export_over_the_bound_is_counted_not_used() {
    let stream = http_export(&request(512), false);
    let mut s = ExportStreams::new(10_000);
    let (_, exports) = feed(&mut s, &stream, 4096, None);
    assert!(exports.is_empty());
    assert_eq!(s.counters.too_large, 1);
    // Compressed small, large once decompressed: the bound holds on the output too.
    let stream = http_export(&gzip(&request(512)), true);
    let mut s = ExportStreams::new(10_000);
    assert!(gzip(&request(512)).len() < 10_000);
    let (_, exports) = feed(&mut s, &stream, 4096, None);
    assert!(exports.is_empty());
    assert_eq!(s.counters.too_large, 1);
}

#[test]
fn joined_mid_stream_waits_for_the_next_request() {
    let first = http_export(&request(5), false);
    let mut stream = first.clone();
    stream.extend(http_export(&request(2), false));
    let mut s = ExportStreams::new(MAX);
    let (mut requests, mut exports) = (Vec::new(), Vec::new());
    // The first chunk seen is the middle of the first export.
    s.feed(
        &chunk(&stream[30..first.len()], 30),
        || None,
        &mut requests,
        &mut exports,
    );
    s.feed(
        &chunk(&stream[first.len()..], first.len() as u64),
        || None,
        &mut requests,
        &mut exports,
    );
    assert_eq!(spans(&exports), 2);
}

#[test]
fn chunked_bodies_and_other_signals() {
    let body = request(4);
    let mut stream = b"POST /v1/metrics HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: 3\r\n\r\nabc"
        .to_vec();
    stream.extend_from_slice(
        b"POST /otel/v1/traces HTTP/1.1\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for part in body.chunks(100) {
        stream.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        stream.extend_from_slice(part);
        stream.extend_from_slice(b"\r\n");
    }
    stream.extend_from_slice(b"0\r\n\r\n");
    let mut s = ExportStreams::new(MAX);
    let (requests, exports) = feed(&mut s, &stream, 13, None);
    assert_eq!(spans(&exports), 4);
    assert_eq!(requests.len(), 2, "both are telemetry requests");
}

#[test]
fn unknown_encodings_and_garbage_are_counted() {
    let mut stream = http_export(&request(1), false);
    let brotli = String::from_utf8(stream.clone())
        .unwrap_or_default()
        .replace("Content-Type", "Content-Encoding: br\r\nContent-Type");
    let mut s = ExportStreams::new(MAX);
    let (_, exports) = feed(&mut s, brotli.as_bytes(), 4096, None);
    assert!(exports.is_empty());
    assert_eq!(s.counters.unknown_encoding, 1);
    let len = stream.len();
    stream[len - 5..].copy_from_slice(&[0xff; 5]);
    let mut s = ExportStreams::new(MAX);
    let (_, exports) = feed(&mut s, &stream, 4096, None);
    assert!(exports.is_empty());
    assert_eq!(s.counters.undecodable, 1);
    // Garbage never panics.
    let mut s = ExportStreams::new(MAX);
    let _ = feed(&mut s, &[0xffu8; 10_000], 333, None);
    let _ = feed(
        &mut s,
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        5,
        None,
    );
}

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A gRPC `TraceService/Export` call on stream `id`: HEADERS, then the message in DATA frames.
fn grpc_call(
    encoder: &mut loona_hpack::Encoder<'_>,
    id: u32,
    message: &[u8],
    compressed: bool,
) -> Vec<u8> {
    let mut headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", Signal::Traces.grpc_path().as_bytes()),
        (b":authority", b"collector:4317"),
        (b"content-type", b"application/grpc"),
    ];
    if compressed {
        headers.push((b"grpc-encoding", b"gzip"));
    }
    let block = encoder.encode(headers);
    let mut out = frame(1, 0x4, id, &block);
    let mut body = vec![u8::from(compressed)];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    let pieces: Vec<&[u8]> = body.chunks(16_384).collect();
    for (i, piece) in pieces.iter().enumerate() {
        let end = if i + 1 == pieces.len() { 0x1 } else { 0 };
        out.extend(frame(0, end, id, piece));
    }
    out
}

#[test]
fn grpc_exports_are_decoded_whatever_the_chunking() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut stream = crate::model::HTTP2_PREFACE.to_vec();
    stream.extend(frame(4, 0, 0, &[]));
    stream.extend(grpc_call(&mut encoder, 1, &request(512), false));
    stream.extend(grpc_call(&mut encoder, 3, &gzip(&request(7)), true));
    // The kernel's first chunk is a whole send: the preface (24 bytes) arrives in one piece.
    for size in [24, 4096, stream.len()] {
        let mut s = ExportStreams::new(MAX);
        let (requests, exports) = feed(&mut s, &stream, size, None);
        assert_eq!(spans(&exports), 519, "chunks of {size}");
        assert!(exports.iter().all(|e| e.transport == Transport::Grpc));
        assert_eq!(requests.len(), 2);
        assert!(requests.iter().all(Request::is_telemetry));
    }
}

#[test]
fn a_grpc_gap_in_a_data_frame_loses_that_call_only() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut stream = crate::model::HTTP2_PREFACE.to_vec();
    let first = grpc_call(&mut encoder, 1, &request(100), false);
    let gap_at = stream.len() + first.len() - 500;
    stream.extend(first);
    stream.extend(grpc_call(&mut encoder, 3, &request(2), false));
    let mut s = ExportStreams::new(MAX);
    let (_, exports) = feed(&mut s, &stream, 4096, Some((gap_at, 50)));
    assert_eq!(spans(&exports), 2);
    assert_eq!(s.counters.gap, 1);
}

/// An ordinary capture of HTTP/2 connection 7 of pid 42: the first `cap` bytes of a send.
fn captured(send: &[u8], cap: usize) -> CapturedEvent {
    let mut event = chunk(&send[..send.len().min(cap)], send.len() as u64);
    event.flags = flags::H2;
    event
}

#[test]
fn an_export_on_a_connection_not_read_whole_yet_is_taken_from_ordinary_captures() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut parser = crate::parse::Parser::new(MAX);
    let mut opening = crate::model::HTTP2_PREFACE.to_vec();
    opening.extend(frame(4, 0, 0, &[]));
    let parsed = parser.parse(&captured(&opening, 4096));
    assert!(parsed.export_connection.is_none());
    // A short-lived process's only export, in one send under the capture cap: decoded, and the
    // connection is named for the kernel to read whole.
    let parsed = parser.parse(&captured(
        &grpc_call(&mut encoder, 1, &request(3), false),
        4096,
    ));
    assert_eq!(spans(&parsed.exports), 3);
    assert_eq!(parsed.requests.len(), 1);
    assert!(parsed.export_connection.is_some());
    // Before the kernel reads it whole, a send over the cap: that call is a gap, not spans.
    let parsed = parser.parse(&captured(
        &grpc_call(&mut encoder, 3, &request(200), false),
        4096,
    ));
    assert_eq!(spans(&parsed.exports), 0);
    assert_eq!(parser.export_counters().gap, 1);
    // Its frame boundaries went with the send's uncaptured end, and with them the HPACK
    // table: later calls, even read whole, are not guessed at.
    let call = grpc_call(&mut encoder, 5, &request(2), false);
    let parsed = parser.parse(&chunk(&call, 0));
    assert_eq!(spans(&parsed.exports), 0);
    assert_eq!(parser.export_counters().exports, 1);
}

#[test]
fn an_adopted_connection_read_whole_goes_on_with_its_hpack_table() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut parser = crate::parse::Parser::new(MAX);
    let mut opening = crate::model::HTTP2_PREFACE.to_vec();
    opening.extend(frame(4, 0, 0, &[]));
    parser.parse(&captured(&opening, 4096));
    let first = grpc_call(&mut encoder, 1, &request(3), false);
    assert!(parser
        .parse(&captured(&first, 4096))
        .export_connection
        .is_some());
    let call = grpc_call(&mut encoder, 3, &request(200), false);
    let (mut requests, mut exports) = (Vec::new(), Vec::new());
    for (i, piece) in call.chunks(4096).enumerate() {
        let parsed = parser.parse(&chunk(piece, (i * 4096) as u64));
        requests.extend(parsed.requests);
        exports.extend(parsed.exports);
    }
    assert_eq!(spans(&exports), 200);
    assert_eq!(requests.len(), 1);
    assert_eq!(parser.export_counters().exports, 2);
}

/// A HEADERS frame opening a gRPC call of another service on stream `id`.
fn other_call(encoder: &mut loona_hpack::Encoder<'_>, id: u32) -> Vec<u8> {
    let block = encoder.encode(vec![
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/shop.Payment/Charge"),
        (b":authority", b"payment"),
        (b"content-type", b"application/grpc"),
    ]);
    let mut out = frame(1, 0x4, id, &block);
    out.extend(frame(0, 0x1, id, &[0, 0, 0, 0, 0]));
    out
}

#[test]
fn a_connection_on_probation_without_exports_goes_back_to_the_ordinary_decoders() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut parser = crate::parse::Parser::new(MAX);
    let mut opening = crate::model::HTTP2_PREFACE.to_vec();
    opening.extend(frame(4, 0, 0, &[]));
    opening.extend(other_call(&mut encoder, 1));
    // On probation: read whole (the kernel's chunks, with the HTTP/2 flag).
    let mut whole = chunk(&opening, 0);
    whole.flags |= flags::H2;
    let parsed = parser.parse(&whole);
    assert_eq!(parsed.requests.len(), 1);
    assert!(parsed.export_connection.is_none());
    // Probation over: ordinary captures, decoded with the same HPACK table.
    let parsed = parser.parse(&captured(&other_call(&mut encoder, 3), 4096));
    assert_eq!(parsed.requests.len(), 1);
    assert_eq!(parsed.requests[0].path, "/shop.Payment/Charge");
    assert_eq!(parser.counters.h2_undetermined, 0);
    assert_eq!(
        parser.h2_connections(),
        1,
        "back with the ordinary decoders"
    );
}

#[test]
fn a_connection_on_probation_with_an_export_is_named_for_keeping() {
    let mut encoder = loona_hpack::Encoder::new();
    let mut parser = crate::parse::Parser::new(MAX);
    let mut stream = crate::model::HTTP2_PREFACE.to_vec();
    stream.extend(frame(4, 0, 0, &[]));
    stream.extend(grpc_call(&mut encoder, 1, &request(300), false));
    let (mut named, mut exports) = (0, Vec::new());
    for (i, piece) in stream.chunks(4096).enumerate() {
        let mut c = chunk(piece, (i * 4096) as u64);
        c.flags |= flags::H2;
        let parsed = parser.parse(&c);
        named += usize::from(parsed.export_connection.is_some());
        exports.extend(parsed.exports);
    }
    assert_eq!(named, 1, "named once");
    assert_eq!(spans(&exports), 300);
    // Kept: later ordinary captures (none should come) would stay with the export stage.
    assert_eq!(parser.h2_connections(), 0);
}

#[test]
fn an_http1_export_to_a_prefixed_path_is_adopted_from_its_ordinary_capture() {
    let mut parser = crate::parse::Parser::new(MAX);
    let prefixed = |body: &[u8]| {
        let mut send = http_export(body, false);
        let at = send
            .windows(10)
            .position(|w| w == b"/v1/traces")
            .expect("path");
        send.splice(at..at, b"/otlp".iter().copied());
        send
    };
    // The kernel knows only `POST /v1/traces`: this send came as an ordinary capture.
    let mut first = chunk(&prefixed(&request(5)), 0);
    first.flags = 0;
    first.total_len = first.data.len() as u64;
    let parsed = parser.parse(&first);
    assert_eq!(spans(&parsed.exports), 5);
    assert_eq!(parsed.requests.len(), 1);
    assert!(parsed.requests[0].is_telemetry());
    assert_eq!(
        parsed.export_connection.map(|c| c.h2),
        Some(false),
        "named for the kernel"
    );
    // Then whole, from offset 0.
    let send = prefixed(&request(300));
    let mut exports = Vec::new();
    for (i, piece) in send.chunks(4096).enumerate() {
        exports.extend(parser.parse(&chunk(piece, (i * 4096) as u64)).exports);
    }
    assert_eq!(spans(&exports), 300);
}
