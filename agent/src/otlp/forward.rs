//! Forwarding of export requests to an upstream OTLP/HTTP collector.
//!
//! A bounded queue drained by one background task: intake only ever `try_send`s, so a slow or
//! dead upstream costs counted drops, never exporter latency.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};

use super::{OtlpError, ReceiverStats};
use crate::model::otlp::Signal;

/// One upstream attempt; after it the request counts as failed (no retry: the exporter
/// already got its answer, and a retry queue would only grow behind a dead upstream).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `scheme://authority` plus any path prefix, without a trailing slash.
    base: String,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, OtlpError> {
        let err = |reason| OtlpError::ForwardUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: Uri = url.parse().map_err(|_| err("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(err("only http:// upstreams are supported"));
        }
        if uri.authority().is_none() {
            return Err(err("no host"));
        }
        if uri.query().is_some() {
            return Err(err("a query string is not allowed"));
        }
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
        })
    }

    fn uri(&self, signal: Signal) -> Option<Uri> {
        format!("{}{}", self.base, signal.http_path()).parse().ok()
    }
}

#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) signal: Signal,
    pub(crate) body: Bytes,
    pub(crate) content_type: String,
    pub(crate) content_encoding: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Forwarder {
    queue: mpsc::Sender<Request>,
    stats: Arc<ReceiverStats>,
}

impl Forwarder {
    pub(crate) fn submit(&self, req: Request) {
        if self.queue.try_send(req).is_err() {
            ReceiverStats::incr(&self.stats.forward_dropped);
        }
    }
}

pub(crate) fn spawn(
    target: Target,
    capacity: usize,
    stats: Arc<ReceiverStats>,
    mut stop: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) -> Forwarder {
    let (queue, mut rx) = mpsc::channel::<Request>(capacity);
    let forwarder = Forwarder {
        queue,
        stats: Arc::clone(&stats),
    };
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    tasks.spawn(async move {
        loop {
            let req = tokio::select! {
                req = rx.recv() => req,
                _ = stop.wait_for(|stopped| *stopped) => None,
            };
            let Some(req) = req else { break };
            let sent = tokio::select! {
                sent = tokio::time::timeout(FORWARD_TIMEOUT, send(&client, &target, req)) => {
                    sent.unwrap_or_else(|_elapsed| Err("timed out".into()))
                }
                _ = stop.wait_for(|stopped| *stopped) => Err("shutdown".into()),
            };
            match sent {
                Ok(()) => ReceiverStats::incr(&stats.forwarded),
                Err(e) => {
                    ReceiverStats::incr(&stats.forward_failures);
                    log::debug!("forwarding to {} failed: {e}", target.base);
                }
            }
        }
        // Whatever is still queued at shutdown is lost; say so in the counters.
        rx.close();
        while rx.try_recv().is_ok() {
            ReceiverStats::incr(&stats.forward_dropped);
        }
    });
    forwarder
}

async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &Target,
    req: Request,
) -> Result<(), String> {
    let uri = target
        .uri(req.signal)
        .ok_or_else(|| "cannot build upstream URI".to_owned())?;
    let mut builder = http::Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, req.content_type);
    if let Some(enc) = req.content_encoding {
        builder = builder.header(header::CONTENT_ENCODING, enc);
    }
    let request = builder
        .body(Full::new(req.body))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    // Drain the body so the connection can be reused.
    let _body: Result<_, _> = response.into_body().collect().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("upstream answered {status}"))
    }
}
