//! End-to-end tests of the receiver over loopback, with real gRPC and HTTP clients.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use ::http::{header, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{trace_service_client::TraceServiceClient, ExportTraceServiceRequest},
    common::v1::{any_value::Value, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, oneshot},
};

use super::*;

const TRACE: [u8; 16] = [0xab; 16];
const ROOT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
const CHILD: [u8; 8] = [9, 9, 9, 9, 9, 9, 9, 9];

struct Running {
    handle: ReceiverHandle,
    rx: mpsc::Receiver<ExportBatch>,
    stats: Arc<ReceiverStats>,
    // Dropping it resolves the shutdown future.
    _stop: oneshot::Sender<()>,
}

async fn start(config: ReceiverConfig) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let stats = Arc::new(ReceiverStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async move {
        let _dropped_or_sent: Result<(), _> = stopped.await;
    };
    let handle = serve(config, tx, Arc::clone(&stats), shutdown)
        .await
        .expect("receiver starts");
    Running {
        handle,
        rx,
        stats,
        _stop: stop,
    }
}

fn loopback_config() -> ReceiverConfig {
    ReceiverConfig {
        grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ReceiverConfig::default()
    }
}

fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

fn request(service: &str, name_len: usize) -> ExportTraceServiceRequest {
    let span = |id: [u8; 8], parent: Option<[u8; 8]>, kind| Span {
        trace_id: TRACE.to_vec(),
        span_id: id.to_vec(),
        parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
        name: "x".repeat(name_len),
        kind,
        start_time_unix_nano: 1_000,
        end_time_unix_nano: 2_000,
        ..Span::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attr("service.name", Value::StringValue(service.into()))],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span(ROOT, None, 2), span(CHILD, Some(ROOT), 3)],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

#[track_caller]
fn check_batch(batch: &ExportBatch, service: &str, transport: Transport) {
    assert_eq!(batch.service_name.as_deref(), Some(service));
    assert_eq!(batch.transport, transport);
    assert_eq!(batch.pid, Some(std::process::id()));
    assert_eq!(batch.attributed_by, Attribution::Socket);
    assert_eq!(batch.spans.len(), 2);
    let (root, child) = (&batch.spans[0], &batch.spans[1]);
    assert_eq!((root.trace_id, root.span_id, root.parent_span_id), (TRACE, ROOT, None));
    assert_eq!((child.span_id, child.parent_span_id), (CHILD, Some(ROOT)));
    assert_eq!((root.kind, child.kind), (2, 3));
    assert_eq!((child.start_unix_nanos, child.end_unix_nanos), (1_000, 2_000));
}

async fn next_batch(rx: &mut mpsc::Receiver<ExportBatch>) -> ExportBatch {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a batch within 10 s")
        .expect("channel open")
}

/// Bounded wait for a counter; no fixed sleeps.
async fn wait_for(counter: &std::sync::atomic::AtomicU64, at_least: u64) {
    for _ in 0..500 {
        if counter.load(Ordering::Relaxed) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "counter stayed at {}, wanted {at_least}",
        counter.load(Ordering::Relaxed)
    );
}

async fn post(
    addr: SocketAddr,
    path: &str,
    content_type: &str,
    gzip: bool,
    body: Vec<u8>,
) -> (StatusCode, Option<String>, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = ::http::Request::post(format!("http://{addr}{path}"))
        .header(header::CONTENT_TYPE, content_type);
    if gzip {
        req = req.header(header::CONTENT_ENCODING, "gzip");
    }
    let res = client
        .request(req.body(Full::new(Bytes::from(body))).expect("request"))
        .await
        .expect("HTTP response");
    let status = res.status();
    let ctype = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, ctype, body)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish gzip")
}

#[tokio::test]
async fn grpc_exports_plain_and_gzip() {
    let mut r = start(loopback_config()).await;
    let addr = r.handle.grpc_addr().expect("gRPC bound");
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    client.export(request("grpc-svc", 3)).await.expect("export ok");
    check_batch(&next_batch(&mut r.rx).await, "grpc-svc", Transport::Grpc);

    let mut client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client.export(request("grpc-gz", 3)).await.expect("gzip export ok");
    check_batch(&next_batch(&mut r.rx).await, "grpc-gz", Transport::Grpc);
    assert_eq!(r.stats.export_requests.load(Ordering::Relaxed), 2);
    assert_eq!(r.stats.spans_received.load(Ordering::Relaxed), 4);
}

#[tokio::test]
async fn grpc_rejects_bad_and_oversized_messages() {
    let mut r = start(ReceiverConfig {
        max_message_bytes: 1024,
        ..loopback_config()
    })
    .await;
    let addr = r.handle.grpc_addr().expect("gRPC bound");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.expect("ready");
    let status = raw
        .unary(
            tonic::Request::new(Bytes::from_static(b"\x0a\xff\xff\xff")),
            ::http::uri::PathAndQuery::from_static(grpc::TRACES),
            grpc::RawCodec,
        )
        .await
        .expect_err("truncated message rejected");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(r.stats.decode_errors.load(Ordering::Relaxed), 1);

    let mut client = TraceServiceClient::new(channel);
    let status = client
        .export(request("big", 2000))
        .await
        .expect_err("oversized message rejected");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(r.stats.too_large.load(Ordering::Relaxed), 1);
    // The connection is still usable for good requests.
    client.export(request("small", 3)).await.expect("export ok");
    check_batch(&next_batch(&mut r.rx).await, "small", Transport::Grpc);
}

#[tokio::test]
async fn http_protobuf_json_and_gzip() {
    let mut r = start(loopback_config()).await;
    let addr = r.handle.http_addr().expect("HTTP bound");

    let pb = request("http-pb", 3).encode_to_vec();
    let (status, ctype, body) = post(addr, "/v1/traces", "application/x-protobuf", false, pb.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype.as_deref(), Some("application/x-protobuf"));
    assert!(body.is_empty(), "empty ExportTraceServiceResponse");
    check_batch(&next_batch(&mut r.rx).await, "http-pb", Transport::HttpProtobuf);

    let json = serde_json::to_vec(&request("http-json", 3)).expect("serialize");
    assert!(
        String::from_utf8_lossy(&json).contains("\"traceId\":\"abababab"),
        "ids are hex in OTLP/JSON"
    );
    let (status, ctype, body) = post(addr, "/v1/traces", "application/json", false, json).await;
    assert_eq!((status, ctype.as_deref()), (StatusCode::OK, Some("application/json")));
    assert_eq!(&body[..], b"{}");
    check_batch(&next_batch(&mut r.rx).await, "http-json", Transport::HttpJson);

    let gz = gzip(&request("http-gz", 3).encode_to_vec());
    let (status, _, _) = post(addr, "/v1/traces", "application/x-protobuf", true, gz).await;
    assert_eq!(status, StatusCode::OK);
    check_batch(&next_batch(&mut r.rx).await, "http-gz", Transport::HttpProtobuf);

    // Other signals are acknowledged and counted, not decoded.
    let (status, _, _) = post(addr, "/v1/metrics", "application/x-protobuf", false, vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(r.stats.metrics_requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn http_rejects_bad_input() {
    let r = start(ReceiverConfig {
        max_message_bytes: 1024,
        ..loopback_config()
    })
    .await;
    let addr = r.handle.http_addr().expect("HTTP bound");

    let (status, _, body) = post(addr, "/v1/traces", "application/x-protobuf", false, vec![0x0a, 0xff]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let rpc = super::http::RpcStatus::decode(body).expect("google.rpc.Status body");
    assert_eq!(rpc.code, tonic::Code::InvalidArgument as i32);
    let (status, _, body) = post(addr, "/v1/traces", "application/json", false, b"{\"resourceSpans\":7}".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with(b"{\"code\":3"), "JSON Status body");
    let (status, _, _) = post(addr, "/v1/traces", "application/x-protobuf", true, b"not gzip".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(r.stats.decode_errors.load(Ordering::Relaxed), 3);

    let big = request("big", 2000).encode_to_vec();
    let (status, _, _) = post(addr, "/v1/traces", "application/x-protobuf", false, big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Small on the wire, too large once decompressed.
    let (status, _, _) = post(addr, "/v1/traces", "application/x-protobuf", true, gzip(&big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.stats.too_large.load(Ordering::Relaxed), 2);

    let (status, _, _) = post(addr, "/v1/traces", "text/plain", false, b"hi".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.stats.unsupported_media_type.load(Ordering::Relaxed), 1);
    let (status, _, _) = post(addr, "/v2/other", "application/json", false, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn silent_and_excess_connections_are_closed() {
    let r = start(ReceiverConfig {
        header_read_timeout_secs: 1,
        max_connections: 1,
        ..loopback_config()
    })
    .await;
    let addr = r.handle.http_addr().expect("HTTP bound");
    let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    wait_for(&r.stats.connections_timed_out, 1).await;
    // The slot is free again; hold it and a second connection is turned away.
    let mut holder = tokio::net::TcpStream::connect(addr).await.expect("connect");
    holder.write_all(b"P").await.expect("write");
    let _second = tokio::net::TcpStream::connect(addr).await.expect("connect");
    wait_for(&r.stats.connections_rejected, 1).await;
}

#[tokio::test]
async fn forwards_to_upstream_receiver() {
    let mut upstream = start(loopback_config()).await;
    let up_addr = upstream.handle.http_addr().expect("HTTP bound");
    let front = start(ReceiverConfig {
        forward_to: Some(format!("http://{up_addr}/")),
        ..loopback_config()
    })
    .await;

    let json = serde_json::to_vec(&request("fwd-json", 3)).expect("serialize");
    let http_addr = front.handle.http_addr().expect("HTTP bound");
    let (status, _, _) = post(http_addr, "/v1/traces", "application/json", false, json).await;
    assert_eq!(status, StatusCode::OK);
    let got = next_batch(&mut upstream.rx).await;
    // Forwarded by the agent: still this test process, and the same JSON body.
    check_batch(&got, "fwd-json", Transport::HttpJson);

    let grpc_addr = front.handle.grpc_addr().expect("gRPC bound");
    let mut client = TraceServiceClient::connect(format!("http://{grpc_addr}"))
        .await
        .expect("connect");
    client.export(request("fwd-grpc", 3)).await.expect("export ok");
    let got = next_batch(&mut upstream.rx).await;
    check_batch(&got, "fwd-grpc", Transport::HttpProtobuf);
    wait_for(&front.stats.forwarded, 2).await;
    assert_eq!(front.stats.forward_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn dead_upstream_counts_failures_without_blocking() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let r = start(ReceiverConfig {
        forward_to: Some(format!("http://{dead}")),
        ..loopback_config()
    })
    .await;
    let addr = r.handle.http_addr().expect("HTTP bound");
    for _ in 0..3 {
        let body = request("dead", 3).encode_to_vec();
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(5),
            post(addr, "/v1/traces", "application/x-protobuf", false, body),
        )
        .await
        .expect("intake answers at once");
        assert_eq!(status, StatusCode::OK);
    }
    wait_for(&r.stats.forward_failures, 3).await;
}

#[tokio::test]
async fn resource_pid_is_the_fallback() {
    let (tx, mut rx) = mpsc::channel(4);
    let stats = Arc::new(ReceiverStats::default());
    let intake = intake::Intake::new(tx, Arc::clone(&stats), None, 1024, 8);
    let mut req = request("fallback", 3);
    if let Some(res) = req.resource_spans[0].resource.as_mut() {
        res.attributes.push(attr("process.pid", Value::IntValue(4242)));
    }
    // No connection to resolve (as when the socket is in another network namespace).
    intake.accept_traces(req, Transport::Grpc, None).await;
    let batch = next_batch(&mut rx).await;
    assert_eq!((batch.pid, batch.attributed_by), (Some(4242), Attribution::ResourceAttribute));

    intake.accept_traces(request("anon", 3), Transport::Grpc, None).await;
    let batch = next_batch(&mut rx).await;
    assert_eq!((batch.pid, batch.attributed_by), (None, Attribution::Unknown));
    assert_eq!(stats.unattributed_batches.load(Ordering::Relaxed), 1);
    assert_eq!(
        intake::attribute(Some(1), Some(2)),
        (Some(1), Attribution::Socket)
    );
}

#[tokio::test]
async fn full_channel_drops_and_counts() {
    let (tx, _rx) = mpsc::channel(1);
    let stats = Arc::new(ReceiverStats::default());
    let intake = intake::Intake::new(tx, Arc::clone(&stats), None, 1024, 8);
    for _ in 0..3 {
        intake.accept_traces(request("s", 1), Transport::Grpc, None).await;
    }
    assert_eq!(stats.batches_dropped.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn shutdown_stops_everything() {
    let r = start(loopback_config()).await;
    let Running { handle, _stop: stop, .. } = r;
    let addr = handle.http_addr().expect("HTTP bound");
    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("receiver stops after shutdown");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn bad_config_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let stats = Arc::new(ReceiverStats::default());
    let bad_url = ReceiverConfig {
        forward_to: Some("grpc://collector:4317".into()),
        ..loopback_config()
    };
    let err = serve(bad_url, tx.clone(), Arc::clone(&stats), std::future::pending())
        .await
        .expect_err("grpc:// is not supported");
    assert!(matches!(err, OtlpError::ForwardUrl { .. }));

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let in_use = ReceiverConfig {
        http_listen: Some(taken.local_addr().expect("addr")),
        ..loopback_config()
    };
    let err = serve(in_use, tx, stats, std::future::pending())
        .await
        .expect_err("address in use");
    assert!(err.to_string().contains("HTTP"), "{err}");
}
