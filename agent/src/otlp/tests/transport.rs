//! Both transports against real clients: what is accepted and what is refused.

use std::sync::atomic::Ordering;

use ::http::StatusCode;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

use super::*;

#[tokio::test]
async fn grpc_exports_plain_and_gzip() {
    let mut r = start(loopback_config()).await;
    let addr = r.handle.grpc_addr().expect("gRPC bound");
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    client
        .export(request("grpc-svc", 3))
        .await
        .expect("export ok");
    check_batch(&next_batch(&mut r.rx).await, "grpc-svc", Transport::Grpc);

    let mut client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
    client
        .export(request("grpc-gz", 3))
        .await
        .expect("gzip export ok");
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
            ::http::uri::PathAndQuery::from_static(crate::model::otlp::Signal::Traces.grpc_path()),
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
    let (status, ctype, body) = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        false,
        pb.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype.as_deref(), Some("application/x-protobuf"));
    assert!(body.is_empty(), "empty ExportTraceServiceResponse");
    check_batch(
        &next_batch(&mut r.rx).await,
        "http-pb",
        Transport::HttpProtobuf,
    );

    let json = serde_json::to_vec(&request("http-json", 3)).expect("serialize");
    assert!(
        String::from_utf8_lossy(&json).contains("\"traceId\":\"abababab"),
        "ids are hex in OTLP/JSON"
    );
    let (status, ctype, body) = post(addr, "/v1/traces", "application/json", false, json).await;
    assert_eq!(
        (status, ctype.as_deref()),
        (StatusCode::OK, Some("application/json"))
    );
    assert_eq!(&body[..], b"{}");
    check_batch(
        &next_batch(&mut r.rx).await,
        "http-json",
        Transport::HttpJson,
    );

    let gz = gzip(&request("http-gz", 3).encode_to_vec());
    let (status, _, _) = post(addr, "/v1/traces", "application/x-protobuf", true, gz).await;
    assert_eq!(status, StatusCode::OK);
    check_batch(
        &next_batch(&mut r.rx).await,
        "http-gz",
        Transport::HttpProtobuf,
    );

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

    let (status, _, body) = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        false,
        vec![0x0a, 0xff],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let rpc = super::http::RpcStatus::decode(body).expect("google.rpc.Status body");
    assert_eq!(rpc.code, tonic::Code::InvalidArgument as i32);
    let (status, _, body) = post(
        addr,
        "/v1/traces",
        "application/json",
        false,
        b"{\"resourceSpans\":7}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with(b"{\"code\":3"), "JSON Status body");
    let (status, _, _) = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        true,
        b"not gzip".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(r.stats.decode_errors.load(Ordering::Relaxed), 3);

    let big = request("big", 2000).encode_to_vec();
    let (status, _, _) = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        false,
        big.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Small on the wire, too large once decompressed.
    let (status, _, _) = post(
        addr,
        "/v1/traces",
        "application/x-protobuf",
        true,
        gzip(&big),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.stats.too_large.load(Ordering::Relaxed), 2);

    let (status, _, _) = post(addr, "/v1/traces", "text/plain", false, b"hi".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.stats.unsupported_media_type.load(Ordering::Relaxed), 1);
    let (status, _, _) = post(addr, "/v2/other", "application/json", false, vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
