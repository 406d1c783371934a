//! OTLP/HTTP: `POST /v1/{traces,metrics,logs}` with protobuf or JSON bodies, optionally gzip'd.
//!
//! Plain hyper (HTTP/1.1 only) rather than a framework: one handler, and we need the
//! connection's addresses and hyper's header-read timeout. Answers follow the OTLP/HTTP spec:
//! 200 with an empty Export*ServiceResponse in the request's format, 400 with a
//! `google.rpc.Status` for undecodable bodies, 413 over the size limit, 415 for an unknown
//! content type or encoding.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prost::Message;
use tokio::sync::{mpsc, watch};

use crate::model::otlp::Signal;

use super::{
    decode::{self, Format, GunzipError},
    intake::{Intake, Peer},
    listener::Conn,
    ReceiverStats, Transport,
};

#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) header_read_timeout: Duration,
    pub(crate) body_read_timeout: Duration,
}

pub(crate) async fn run(
    intake: Arc<Intake>,
    settings: Settings,
    mut conns: mpsc::Receiver<Conn>,
    stop: watch::Receiver<bool>,
) {
    let mut stop_accepting = stop.clone();
    let mut open = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            conn = conns.recv() => conn,
            _ = stop_accepting.wait_for(|stopped| *stopped) => None,
        };
        let Some(conn) = conn else { break };
        open.spawn(serve_conn(
            Arc::clone(&intake),
            settings,
            conn,
            stop.clone(),
        ));
        // Reap finished connections so the set does not grow with every connection served.
        while open.try_join_next().is_some() {}
    }
    // Open connections finish their current request, then close (graceful shutdown below).
    while open.join_next().await.is_some() {}
}

async fn serve_conn(
    intake: Arc<Intake>,
    settings: Settings,
    conn: Conn,
    mut stop: watch::Receiver<bool>,
) {
    let peer = Peer {
        remote: conn.peer,
        local: conn.local,
    };
    let service = service_fn(move |req| {
        let intake = Arc::clone(&intake);
        async move { Ok::<_, Infallible>(handle(&intake, settings, peer, req).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let served = builder.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(served);
    let finished = tokio::select! {
        res = served.as_mut() => Some(res),
        _ = stop.wait_for(|stopped| *stopped) => None,
    };
    let result = match finished {
        Some(res) => res,
        None => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = result {
        // Client errors (resets, garbage, header timeout) end only this connection.
        log::debug!("OTLP/HTTP connection from {} ended: {e}", peer.remote);
    }
}

async fn handle(
    intake: &Intake,
    settings: Settings,
    peer: Peer,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let stats = &intake.stats;
    let Some(signal) = Signal::from_http_path(req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "not an OTLP path");
    };
    if req.method() != Method::POST {
        let mut res = plain(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        res.headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("POST"));
        return res;
    }
    if signal == Signal::Traces {
        ReceiverStats::incr(&stats.export_requests);
    }
    let headers = req.headers().clone();
    let Some(format) =
        header_str(&headers, header::CONTENT_TYPE).and_then(Format::from_content_type)
    else {
        ReceiverStats::incr(&stats.unsupported_media_type);
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "use application/x-protobuf or application/json",
        );
    };
    let encoding = header_str(&headers, header::CONTENT_ENCODING)
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
    let gzip = match encoding {
        None => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            ReceiverStats::incr(&stats.unsupported_media_type);
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "use gzip or no Content-Encoding",
            );
        }
    };

    let max = intake.max_message_bytes;
    let declared = header_str(&headers, header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| usize::try_from(len).map_or(true, |len| len > max)) {
        return too_large(stats, format);
    }
    let body = Limited::new(req.into_body(), max).collect();
    let raw = match tokio::time::timeout(settings.body_read_timeout, body).await {
        Err(_elapsed) => {
            ReceiverStats::incr(&stats.connections_timed_out);
            return plain(StatusCode::REQUEST_TIMEOUT, "request body too slow");
        }
        Ok(Err(e)) if e.is::<LengthLimitError>() => return too_large(stats, format),
        // The client broke the connection mid-body; nobody will read an answer.
        Ok(Err(_io)) => return plain(StatusCode::BAD_REQUEST, "incomplete body"),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let plain_body = if gzip {
        match decode::gunzip_limited(&raw, max) {
            Ok(v) => Bytes::from(v),
            Err(GunzipError::TooLarge) => return too_large(stats, format),
            Err(GunzipError::Corrupt) => {
                ReceiverStats::incr(&stats.decode_errors);
                return bad_request(format, "invalid gzip body");
            }
        }
    } else {
        raw.clone()
    };

    match signal {
        Signal::Traces => match decode::decode_traces(&plain_body, format) {
            Ok(export) => {
                let transport = match format {
                    Format::Protobuf => Transport::HttpProtobuf,
                    Format::Json => Transport::HttpJson,
                };
                intake.accept_traces(export, transport, Some(peer)).await;
            }
            Err(e) => {
                ReceiverStats::incr(&stats.decode_errors);
                return bad_request(format, &e.to_string());
            }
        },
        // Not decoded: we only need to know the process exports them.
        Signal::Metrics => ReceiverStats::incr(&stats.metrics_requests),
        Signal::Logs => ReceiverStats::incr(&stats.logs_requests),
    }
    // Unchanged: the bytes as received, with their own content type and encoding.
    intake.forward(
        signal,
        raw,
        header_str(&headers, header::CONTENT_TYPE).unwrap_or(format.content_type()),
        encoding,
    );
    success(format)
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn success(format: Format) -> hyper::Response<Full<Bytes>> {
    // An empty Export*ServiceResponse: zero bytes in protobuf, `{}` in JSON.
    let body = match format {
        Format::Protobuf => Bytes::new(),
        Format::Json => Bytes::from_static(b"{}"),
    };
    response(StatusCode::OK, format.content_type(), body)
}

fn too_large(stats: &ReceiverStats, format: Format) -> hyper::Response<Full<Bytes>> {
    ReceiverStats::incr(&stats.too_large);
    // 413 is not in the spec's retryable list, so the exporter drops the batch instead of
    // resending it forever.
    status_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        tonic::Code::ResourceExhausted,
        format,
        "message too large",
    )
}

fn bad_request(format: Format, message: &str) -> hyper::Response<Full<Bytes>> {
    status_response(
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
        format,
        message,
    )
}

/// `google.rpc.Status`, which the OTLP/HTTP spec asks for in failure bodies. opentelemetry-proto
/// does not ship it; the three fields are stable, `details` is left out.
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub(crate) code: i32,
    #[prost(string, tag = "2")]
    pub(crate) message: String,
}

fn status_response(
    status: StatusCode,
    code: tonic::Code,
    format: Format,
    message: &str,
) -> hyper::Response<Full<Bytes>> {
    let rpc = RpcStatus {
        code: code as i32,
        message: message.to_owned(),
    };
    let body = match format {
        Format::Protobuf => Bytes::from(rpc.encode_to_vec()),
        Format::Json => serde_json::to_vec(&rpc)
            .map(Bytes::from)
            .unwrap_or_default(),
    };
    response(status, format.content_type(), body)
}

fn plain(status: StatusCode, message: &'static str) -> hyper::Response<Full<Bytes>> {
    response(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(message.as_bytes()),
    )
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> hyper::Response<Full<Bytes>> {
    let mut res = hyper::Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res
}
