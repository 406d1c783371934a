//! A real OTLP receiver for the export tests: logs, metrics and traces over gRPC (tonic with the
//! generated opentelemetry-proto services) and over HTTP/protobuf (a plain HTTP/1.1 loop), both
//! on 127.0.0.1 with kernel-chosen ports. Every logs and metrics request is kept for
//! assertions; trace export requests are counted (the collector an application exports to
//! directly, for the tests of the agent's wire intake).

use std::{
    convert::Infallible,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::Poll,
    thread,
    time::{Duration, Instant},
};

use bytes::Bytes;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{
            logs_service_server::{LogsService, LogsServiceServer},
            ExportLogsServiceRequest, ExportLogsServiceResponse,
        },
        metrics::v1::{
            metrics_service_server::{MetricsService, MetricsServiceServer},
            ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        },
        trace::v1::{
            trace_service_server::{TraceService, TraceServiceServer},
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        },
    },
    common::v1::{any_value, KeyValue},
    logs::v1::LogRecord,
    metrics::v1::{metric, NumberDataPoint},
    trace::v1::Span,
};
use prost::Message as _;
use tonic::{
    codegen::{Body, BoxFuture, Service, StdError},
    transport::Server,
};

#[derive(Default)]
struct Received {
    logs: Mutex<Vec<ExportLogsServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    /// Trace export requests (any transport, any encoding).
    trace_requests: std::sync::atomic::AtomicUsize,
    /// Trace export requests over gRPC, and over HTTP with an uncompressed protobuf body.
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
}

/// Stops both servers on drop.
pub struct OtlpSink {
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    received: Arc<Received>,
    runtime: Option<tokio::runtime::Runtime>,
    stop_grpc: Option<tokio::sync::oneshot::Sender<()>>,
    stop_http: Arc<AtomicBool>,
    http_thread: Option<thread::JoinHandle<()>>,
}

impl OtlpSink {
    #[track_caller]
    pub fn start() -> Self {
        let received = Arc::new(Received::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind gRPC sink");
        let grpc_addr = listener.local_addr().expect("gRPC sink addr");
        let (stop_grpc, stopped) = tokio::sync::oneshot::channel::<()>();
        let svc = Dispatch {
            logs: LogsServiceServer::new(Sink(Arc::clone(&received))),
            metrics: MetricsServiceServer::new(Sink(Arc::clone(&received))),
            traces: TraceServiceServer::new(Sink(Arc::clone(&received)))
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
        };
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let stopped = async {
                let _stopped: Result<(), _> = stopped.await;
            };
            if let Err(e) = Server::builder()
                .serve_with_incoming_shutdown(svc, incoming, stopped)
                .await
            {
                panic!("gRPC sink failed: {e}");
            }
        });

        let http = TcpListener::bind("127.0.0.1:0").expect("bind HTTP sink");
        http.set_nonblocking(true).expect("nonblocking");
        let http_addr = http.local_addr().expect("HTTP sink addr");
        let stop_http = Arc::new(AtomicBool::new(false));
        let http_thread = {
            let stop = Arc::clone(&stop_http);
            let received = Arc::clone(&received);
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match http.accept() {
                        Ok((stream, _)) => {
                            let received = Arc::clone(&received);
                            thread::spawn(move || serve_http(stream, &received));
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            grpc_addr,
            http_addr,
            received,
            runtime: Some(runtime),
            stop_grpc: Some(stop_grpc),
            stop_http,
            http_thread: Some(http_thread),
        }
    }

    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }

    pub fn logs(&self) -> Vec<ExportLogsServiceRequest> {
        self.received.logs.lock().expect("lock").clone()
    }

    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received.metrics.lock().expect("lock").clone()
    }

    /// Trace export requests received.
    pub fn trace_requests(&self) -> usize {
        self.received.trace_requests.load(Ordering::SeqCst)
    }

    /// Every span received (gRPC, or HTTP with uncompressed protobuf), with its resource
    /// attributes.
    pub fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let mut out = Vec::new();
        for req in self.received.traces.lock().expect("lock").iter() {
            for rs in &req.resource_spans {
                let resource = rs
                    .resource
                    .clone()
                    .map(|r| r.attributes)
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        out.push((resource.clone(), s.clone()));
                    }
                }
            }
        }
        out
    }

    /// Every log record received, with its resource attributes.
    pub fn log_records(&self) -> Vec<(Vec<KeyValue>, LogRecord)> {
        let mut out = Vec::new();
        for req in self.logs() {
            for rl in req.resource_logs {
                let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
                for sl in rl.scope_logs {
                    for r in sl.log_records {
                        out.push((resource.clone(), r));
                    }
                }
            }
        }
        out
    }

    /// The data points of sum metric `name` from the latest export that has it.
    pub fn sum_points(&self, name: &str) -> Vec<NumberDataPoint> {
        let mut latest = Vec::new();
        for req in self.metrics() {
            for m in req
                .resource_metrics
                .into_iter()
                .flat_map(|rm| rm.scope_metrics)
                .flat_map(|sm| sm.metrics)
                .filter(|m| m.name == name)
            {
                if let Some(metric::Data::Sum(sum)) = m.data {
                    latest = sum.data_points;
                }
            }
        }
        latest
    }

    /// Waits (bounded) until `pred` holds over what was received.
    #[track_caller]
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Self) -> bool) {
        let started = Instant::now();
        while !pred(self) {
            assert!(
                started.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {what}; received:\nlogs: {:#?}\nmetrics: {:#?}",
                self.logs(),
                self.metrics()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop_grpc.take() {
            let _already_stopped: Result<(), ()> = stop.send(());
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        self.stop_http.store(true, Ordering::SeqCst);
        if let Some(t) = self.http_thread.take() {
            let _joined = t.join();
        }
    }
}

/// The string or integer value of attribute `key`, as text.
pub fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let v = attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    match v {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}

/// The body of a log record, if it is a string.
pub fn body(r: &LogRecord) -> Option<&str> {
    match r.body.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// A data point's value as an integer (the exporter sends u64 counters as ints).
pub fn point_value(p: &NumberDataPoint) -> i64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match p.value {
        Some(Value::AsInt(i)) => i,
        Some(Value::AsDouble(d)) => d as i64,
        None => 0,
    }
}

#[derive(Clone)]
struct Sink(Arc<Received>);

#[tonic::async_trait]
impl LogsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.0.logs.lock().expect("lock").push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.0
            .metrics
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.trace_requests.fetch_add(1, Ordering::SeqCst);
        self.0
            .traces
            .lock()
            .expect("lock")
            .push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Routes by gRPC method path: every service on one port, as a collector has them.
#[derive(Clone)]
struct Dispatch {
    logs: LogsServiceServer<Sink>,
    metrics: MetricsServiceServer<Sink>,
    traces: TraceServiceServer<Sink>,
}

impl<B> Service<http::Request<B>> for Dispatch
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with("/opentelemetry.proto.collector.logs.") {
            self.logs.call(req)
        } else if path.starts_with("/opentelemetry.proto.collector.trace.") {
            self.traces.call(req)
        } else {
            self.metrics.call(req)
        }
    }
}

/// OTLP/HTTP with protobuf bodies, keep-alive, Content-Length framing (what the exporter sends).
fn serve_http(stream: TcpStream, received: &Received) {
    let _timeout = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().expect("content-length");
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).expect("request body");
        let status = match path.as_str() {
            "/v1/logs" => {
                let req = ExportLogsServiceRequest::decode(&body[..]).expect("logs protobuf");
                received.logs.lock().expect("lock").push(req);
                "200 OK"
            }
            "/v1/metrics" => {
                let req = ExportMetricsServiceRequest::decode(&body[..]).expect("metrics protobuf");
                received.metrics.lock().expect("lock").push(req);
                "200 OK"
            }
            // Protobuf or JSON, maybe gzip: counted; kept when it decodes as protobuf.
            "/v1/traces" => {
                received.trace_requests.fetch_add(1, Ordering::SeqCst);
                if let Ok(req) = ExportTraceServiceRequest::decode(&body[..]) {
                    received.traces.lock().expect("lock").push(req);
                }
                "200 OK"
            }
            _ => "404 Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
