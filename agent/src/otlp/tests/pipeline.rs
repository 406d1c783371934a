//! Limits, forwarding, attribution fallback and shutdown.

use std::{sync::atomic::Ordering, time::Duration};

use ::http::StatusCode;
use opentelemetry_proto::tonic::{
    collector::trace::v1::trace_service_client::TraceServiceClient, common::v1::any_value::Value,
};
use prost::Message;
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::*;

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
    client
        .export(request("fwd-grpc", 3))
        .await
        .expect("export ok");
    let got = next_batch(&mut upstream.rx).await;
    check_batch(&got, "fwd-grpc", Transport::HttpProtobuf);
    wait_for(&front.stats.forwarded, 2).await;
    assert_eq!(front.stats.forward_failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn dead_upstream_counts_failures_without_blocking() {
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
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
        res.attributes
            .push(attr("process.pid", Value::IntValue(4242)));
    }
    // No connection to resolve (as when the socket is in another network namespace).
    intake.accept_traces(req, Transport::Grpc, None).await;
    let batch = next_batch(&mut rx).await;
    assert_eq!(
        (batch.pid, batch.attributed_by),
        (Some(4242), Attribution::ResourceAttribute)
    );

    intake
        .accept_traces(request("anon", 3), Transport::Grpc, None)
        .await;
    let batch = next_batch(&mut rx).await;
    assert_eq!(
        (batch.pid, batch.attributed_by),
        (None, Attribution::Unknown)
    );
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
        intake
            .accept_traces(request("s", 1), Transport::Grpc, None)
            .await;
    }
    assert_eq!(stats.batches_dropped.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn shutdown_stops_everything() {
    let r = start(loopback_config()).await;
    let Running {
        handle,
        _stop: stop,
        ..
    } = r;
    let addr = handle.http_addr().expect("HTTP bound");
    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), handle.wait())
        .await
        .expect("receiver stops after shutdown");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn bad_config_is_an_error() {
    let (tx, _rx) = mpsc::channel(1);
    let stats = Arc::new(ReceiverStats::default());
    let bad_url = ReceiverConfig {
        forward_to: Some("grpc://collector:4317".into()),
        ..loopback_config()
    };
    let err = serve(
        bad_url,
        tx.clone(),
        Arc::clone(&stats),
        std::future::pending(),
    )
    .await
    .expect_err("grpc:// is not supported");
    assert!(matches!(err, OtlpError::ForwardUrl { .. }));

    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let in_use = ReceiverConfig {
        http_listen: Some(taken.local_addr().expect("addr")),
        ..loopback_config()
    };
    let err = serve(in_use, tx, stats, std::future::pending())
        .await
        .expect_err("address in use");
    assert!(err.to_string().contains("HTTP"), "{err}");
}
