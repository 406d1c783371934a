//! OTLP span intake: a receiver for the trace exports of the processes on this host.
//!
//! Exporters point at us (gRPC on 4317, OTLP/HTTP on 4318, as the SDK defaults); every export
//! request is decoded into minimal [`SpanRecord`]s, attributed to the exporting process and sent
//! on a bounded channel as [`ExportBatch`]es. Optionally each request is also forwarded to an
//! upstream collector, so the agent can sit in front of the real pipeline.
//!
//! Layout: `listener` (accept, connection cap, slow-client timeout), `grpc` and `http`
//! (transports), `decode` (bodies → records), `attribution` (socket → pid), `intake` (shared
//! per-request pipeline), `forward` (upstream queue).
//!
//! Nothing here trusts its input: bad requests are answered per the OTLP spec and counted in
//! [`ReceiverStats`], never panicked on.

mod attribution;
mod decode;
mod forward;
mod grpc;
mod http;
mod intake;
mod listener;
#[cfg(test)]
mod tests;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use crate::model::otlp;
pub use decode::{
    decode_export, decode_trace_body, BodyError, DecodedResource, Format as BodyFormat,
    ANNOTATION_ATTRIBUTE,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
};

/// One export request's spans from one resource (a request with several `ResourceSpans`, e.g.
/// from a collector in between, yields one batch per resource: each may name another service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportBatch {
    /// The exporting process: the owner of the client socket, else the `process.pid` attribute.
    pub pid: Option<u32>,
    pub attributed_by: Attribution,
    /// `service.name` of the resource, when present and a string.
    pub service_name: Option<String>,
    pub received_at: SystemTime,
    pub transport: Transport,
    pub spans: Vec<SpanRecord>,
}

/// How [`ExportBatch::pid`] was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attribution {
    /// The pid holds the client socket of the connection (read from /proc).
    Socket,
    /// The socket could not be resolved (another network namespace, process gone, no
    /// permission); the pid is the resource's `process.pid` attribute, which the process claims.
    ResourceAttribute,
    /// Read off the wire as it left the process (agent/src/parse/export): the sender is known.
    Wire,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Grpc,
    HttpProtobuf,
    HttpJson,
}

/// The fields of an OTLP span that correlation needs; everything else is dropped at decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for roots.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    /// `SpanKind` as in the proto (0 unspecified, 1 internal, 2 server, 3 client, 4 producer,
    /// 5 consumer).
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Marked `tracegap.annotation=true`: a span tracegap added to a trace, never judged.
    pub annotation: bool,
}

/// Receiver settings; `Deserialize` with defaults so it can be a section of the agent config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address; `None` disables gRPC.
    pub grpc_listen: Option<SocketAddr>,
    /// OTLP/HTTP listen address; `None` disables HTTP.
    pub http_listen: Option<SocketAddr>,
    /// Base URL of an upstream OTLP/HTTP collector (`http://host:4318`). Every export request,
    /// whatever transport it came in on, is forwarded to `<forward_to>/v1/<signal>`: HTTP bodies
    /// unchanged (same bytes, content type and encoding), gRPC messages as their protobuf bytes
    /// (`application/x-protobuf`, uncompressed). Only `http://` is supported.
    pub forward_to: Option<String>,
    /// Largest accepted message, after decompression as well as on the wire.
    pub max_message_bytes: usize,
    /// Open connections over both listeners; further connections are closed at once.
    pub max_connections: usize,
    /// A new connection must send its first byte, and an HTTP request its headers, within this.
    pub header_read_timeout_secs: u64,
    /// An HTTP request body must arrive within this after its headers.
    pub body_read_timeout_secs: u64,
    /// Export requests waiting to be forwarded; more are dropped and counted.
    pub forward_queue: usize,
    /// Connections whose owning pid is remembered (an entry is removed when its connection
    /// closes, so the bound only matters under a flood of connections).
    pub attribution_cache: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            grpc_listen: Some(SocketAddr::from(([127, 0, 0, 1], otlp::GRPC_PORT))),
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], otlp::HTTP_PORT))),
            forward_to: None,
            max_message_bytes: 16 * 1024 * 1024,
            max_connections: 256,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            forward_queue: 1024,
            attribution_cache: 4096,
        }
    }
}

/// Counters of the receiver; shared with whoever reports them.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    /// Trace export requests that reached a handler (any outcome).
    pub export_requests: AtomicU64,
    /// Spans delivered in batches (valid ids).
    pub spans_received: AtomicU64,
    /// Spans skipped for an invalid trace, span or parent id.
    pub invalid_spans: AtomicU64,
    /// Bodies that could not be decompressed or decoded (answered 400 / INVALID_ARGUMENT).
    pub decode_errors: AtomicU64,
    /// Messages over `max_message_bytes` (answered 413 / RESOURCE_EXHAUSTED).
    pub too_large: AtomicU64,
    /// Unknown content type or encoding (answered 415).
    pub unsupported_media_type: AtomicU64,
    /// Export requests of other signals, answered with success and otherwise ignored.
    pub metrics_requests: AtomicU64,
    pub logs_requests: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    /// Export requests not forwarded because the queue was full or shutting down.
    pub forward_dropped: AtomicU64,
    /// Batches lost because the output channel was full or closed.
    pub batches_dropped: AtomicU64,
    /// Connections closed at accept because `max_connections` were open.
    pub connections_rejected: AtomicU64,
    /// Connections closed because they sent nothing, or no complete request head, in time.
    pub connections_timed_out: AtomicU64,
    /// Batches whose pid came from neither the socket nor `process.pid`.
    pub unattributed_batches: AtomicU64,
}

impl ReceiverStats {
    /// The counters the agent reports (JSON `receiver`, the table's receiver line), by name.
    pub fn named(&self) -> [(&'static str, u64); 13] {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("export_requests", v(&self.export_requests)),
            ("spans_received", v(&self.spans_received)),
            ("invalid_spans", v(&self.invalid_spans)),
            ("decode_errors", v(&self.decode_errors)),
            ("too_large", v(&self.too_large)),
            ("unsupported_media_type", v(&self.unsupported_media_type)),
            ("batches_dropped", v(&self.batches_dropped)),
            ("forwarded", v(&self.forwarded)),
            ("forward_failures", v(&self.forward_failures)),
            ("forward_dropped", v(&self.forward_dropped)),
            ("connections_rejected", v(&self.connections_rejected)),
            ("connections_timed_out", v(&self.connections_timed_out)),
            ("unattributed_batches", v(&self.unattributed_batches)),
        ]
    }

    pub(crate) fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("cannot bind the OTLP {transport} listener to {addr}")]
    Bind {
        transport: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid forward_to URL {url:?}: {reason}")]
    ForwardUrl { url: String, reason: &'static str },
    #[error("invalid receiver config: {0}")]
    Config(&'static str),
}

/// A running receiver. Dropping it does not stop anything: resolve the shutdown future.
#[derive(Debug)]
pub struct ReceiverHandle {
    grpc_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl ReceiverHandle {
    /// The bound gRPC address (with the real port when the config asked for port 0).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Waits until the receiver has stopped after shutdown (open connections finish their
    /// current request; queued forwards are dropped and counted).
    pub async fn wait(mut self) {
        while let Some(res) = self.tasks.join_next().await {
            if let Err(e) = res {
                log::error!("otlp receiver task failed: {e}");
            }
        }
    }
}

/// Binds the configured listeners and starts serving; returns once both are bound.
pub async fn serve(
    config: ReceiverConfig,
    tx: mpsc::Sender<ExportBatch>,
    stats: Arc<ReceiverStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<ReceiverHandle, OtlpError> {
    if config.max_message_bytes == 0 || config.max_connections == 0 || config.forward_queue == 0 {
        return Err(OtlpError::Config(
            "max_message_bytes, max_connections and forward_queue must be > 0",
        ));
    }
    let forward_target = config
        .forward_to
        .as_deref()
        .map(forward::Target::parse)
        .transpose()?;

    // Bind both before spawning anything, so an error leaves nothing running.
    let grpc_listener = bind("gRPC", config.grpc_listen).await?;
    let http_listener = bind("HTTP", config.http_listen).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        shutdown.await;
        // Err only when every receiver is gone, i.e. everything already stopped.
        let _already_stopped: Result<(), _> = stop_tx.send(true);
    });

    let forwarder = forward_target.map(|target| {
        forward::spawn(
            target,
            config.forward_queue,
            Arc::clone(&stats),
            stop_rx.clone(),
            &mut tasks,
        )
    });
    let intake = Arc::new(intake::Intake::new(
        tx,
        Arc::clone(&stats),
        forwarder,
        config.max_message_bytes,
        config.attribution_cache,
    ));
    let limits = listener::Limits::new(&config, Arc::clone(&stats), Arc::clone(&intake));

    let mut handle = ReceiverHandle {
        grpc_addr: None,
        http_addr: None,
        tasks,
    };
    if let Some((l, addr)) = grpc_listener {
        handle.grpc_addr = Some(addr);
        let conns = listener::spawn_accept(l, limits.clone(), stop_rx.clone(), &mut handle.tasks);
        let svc = grpc::GrpcService::new(Arc::clone(&intake));
        handle.tasks.spawn(grpc::run(svc, conns, stop_rx.clone()));
    }
    if let Some((l, addr)) = http_listener {
        handle.http_addr = Some(addr);
        let conns = listener::spawn_accept(l, limits.clone(), stop_rx.clone(), &mut handle.tasks);
        let settings = http::Settings {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
        };
        handle
            .tasks
            .spawn(http::run(intake, settings, conns, stop_rx));
    }
    Ok(handle)
}

async fn bind(
    transport: &'static str,
    addr: Option<SocketAddr>,
) -> Result<Option<(TcpListener, SocketAddr)>, OtlpError> {
    let Some(addr) = addr else { return Ok(None) };
    let err = |source| OtlpError::Bind {
        transport,
        addr,
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok(Some((listener, bound)))
}
