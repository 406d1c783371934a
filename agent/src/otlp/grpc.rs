//! OTLP/gRPC: the Export methods of the trace, metrics and logs services.
//!
//! Instead of the generated `TraceServiceServer` this is one hand-written service over a
//! pass-through codec: we get the raw message bytes, so decode errors are ours to answer
//! (INVALID_ARGUMENT per the OTLP spec; prost's codec would say INTERNAL) and to count, the
//! bytes can be forwarded without re-encoding, and metrics/logs need no decoding at all.
//! tonic still does the framing, gzip and the size limit.

use std::{convert::Infallible, io, sync::Arc, task::Poll};

use bytes::{Buf, BufMut, Bytes};
use http::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::{wrappers::ReceiverStream, StreamExt};
use tonic::{
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::{Body, BoxFuture, EnabledCompressionEncodings, Service},
    server::{Grpc, UnaryService},
    transport::Server,
    Code, Status,
};

use crate::model::otlp::Signal;

use super::{
    intake::{Intake, Peer},
    listener::Conn,
    ReceiverStats, Transport,
};

pub(crate) async fn run(
    svc: GrpcService,
    conns: mpsc::Receiver<Conn>,
    mut stop: watch::Receiver<bool>,
) {
    let incoming = ReceiverStream::new(conns).map(Ok::<_, io::Error>);
    let stopped = async move {
        // Err: the sender is gone, which only happens once everything is shutting down.
        let _closed: Result<_, _> = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(e) = Server::builder()
        .serve_with_incoming_shutdown(svc, incoming, stopped)
        .await
    {
        log::error!("OTLP gRPC server failed: {e}");
    }
}

#[derive(Debug, Clone)]
pub(crate) struct GrpcService {
    intake: Arc<Intake>,
}

impl GrpcService {
    pub(crate) fn new(intake: Arc<Intake>) -> Self {
        Self { intake }
    }
}

impl<B> Service<http::Request<B>> for GrpcService
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let Some(signal) = Signal::ALL.into_iter().find(|s| s.grpc_path() == path) else {
            return Box::pin(async {
                Ok(Status::unimplemented("not an OTLP export method").into_http())
            });
        };
        let intake = Arc::clone(&self.intake);
        Box::pin(async move {
            let max = intake.max_message_bytes;
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let mut grpc = Grpc::new(RawCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(max), None);
            let stats = Arc::clone(&intake.stats);
            let mut res = grpc.unary(Export { intake, signal }, req).await;
            // Errors raised by tonic before our handler runs end up here as a trailers-only
            // response; count the size-limit ones and answer RESOURCE_EXHAUSTED, the code gRPC
            // itself uses for an oversized message (tonic says OUT_OF_RANGE for the frame size).
            let code = res
                .headers()
                .get(Status::GRPC_STATUS)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map(Code::from);
            match code {
                Some(Code::OutOfRange) => {
                    ReceiverStats::incr(&stats.too_large);
                    res.headers_mut().insert(
                        Status::GRPC_STATUS,
                        HeaderValue::from(Code::ResourceExhausted as i32),
                    );
                }
                Some(Code::ResourceExhausted) => ReceiverStats::incr(&stats.too_large),
                _ => {}
            }
            Ok(res)
        })
    }
}

struct Export {
    intake: Arc<Intake>,
    signal: Signal,
}

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let intake = Arc::clone(&self.intake);
        let signal = self.signal;
        Box::pin(async move {
            let peer = request
                .remote_addr()
                .zip(request.local_addr())
                .map(|(remote, local)| Peer { remote, local });
            let body = request.into_inner();
            let stats = &intake.stats;
            match signal {
                Signal::Traces => {
                    ReceiverStats::incr(&stats.export_requests);
                    let req = ExportTraceServiceRequest::decode(body.clone()).map_err(|e| {
                        ReceiverStats::incr(&stats.decode_errors);
                        Status::invalid_argument(format!("invalid ExportTraceServiceRequest: {e}"))
                    })?;
                    intake.accept_traces(req, Transport::Grpc, peer).await;
                }
                Signal::Metrics => ReceiverStats::incr(&stats.metrics_requests),
                Signal::Logs => ReceiverStats::incr(&stats.logs_requests),
            }
            // tonic hands us the message decompressed, so it goes upstream uncompressed.
            intake.forward(signal, body, "application/x-protobuf", None);
            // An empty Export*ServiceResponse (no partial success) encodes to zero bytes.
            Ok(tonic::Response::new(Bytes::new()))
        })
    }
}

/// Hands message bytes through untouched, in both directions.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self {
        Self
    }

    fn decoder(&mut self) -> Self {
        Self
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
