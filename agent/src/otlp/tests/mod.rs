//! End-to-end tests of the receiver over loopback, with real gRPC and HTTP clients.

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use ::http::{header, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, AnyValue, KeyValue},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use tokio::sync::{mpsc, oneshot};

use super::*;

mod pipeline;
mod transport;

pub(super) const TRACE: [u8; 16] = [0xab; 16];
pub(super) const ROOT: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
pub(super) const CHILD: [u8; 8] = [9, 9, 9, 9, 9, 9, 9, 9];

pub(super) struct Running {
    pub(super) handle: ReceiverHandle,
    pub(super) rx: mpsc::Receiver<ExportBatch>,
    pub(super) stats: Arc<ReceiverStats>,
    // Dropping it resolves the shutdown future.
    pub(super) _stop: oneshot::Sender<()>,
}

pub(super) async fn start(config: ReceiverConfig) -> Running {
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

pub(super) fn loopback_config() -> ReceiverConfig {
    ReceiverConfig {
        grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..ReceiverConfig::default()
    }
}

pub(super) fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

pub(super) fn request(service: &str, name_len: usize) -> ExportTraceServiceRequest {
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
pub(super) fn check_batch(batch: &ExportBatch, service: &str, transport: Transport) {
    assert_eq!(batch.service_name.as_deref(), Some(service));
    assert_eq!(batch.transport, transport);
    assert_eq!(batch.pid, Some(std::process::id()));
    assert_eq!(batch.attributed_by, Attribution::Socket);
    assert_eq!(batch.spans.len(), 2);
    let (root, child) = (&batch.spans[0], &batch.spans[1]);
    assert_eq!(
        (root.trace_id, root.span_id, root.parent_span_id),
        (TRACE, ROOT, None)
    );
    assert_eq!((child.span_id, child.parent_span_id), (CHILD, Some(ROOT)));
    assert_eq!((root.kind, child.kind), (2, 3));
    assert_eq!(
        (child.start_unix_nanos, child.end_unix_nanos),
        (1_000, 2_000)
    );
}

pub(super) async fn next_batch(rx: &mut mpsc::Receiver<ExportBatch>) -> ExportBatch {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a batch within 10 s")
        .expect("channel open")
}

/// Bounded wait for a counter; no fixed sleeps.
pub(super) async fn wait_for(counter: &std::sync::atomic::AtomicU64, at_least: u64) {
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

pub(super) async fn post(
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

pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("write to Vec");
    enc.finish().expect("finish gzip")
}
