//! The per-request pipeline both transports share: attribute, deliver, forward.

use std::{net::SocketAddr, sync::Arc, time::SystemTime};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use tokio::sync::mpsc;

use crate::model::otlp::Signal;

use super::{
    attribution::Attributor,
    decode::{self, ResourceBatch},
    forward::{Forwarder, Request as ForwardRequest},
    Attribution, ExportBatch, ReceiverStats, Transport,
};

/// The address pair of the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) remote: SocketAddr,
    pub(crate) local: SocketAddr,
}

#[derive(Debug)]
pub(crate) struct Intake {
    tx: mpsc::Sender<ExportBatch>,
    pub(crate) stats: Arc<ReceiverStats>,
    forwarder: Option<Forwarder>,
    pub(crate) max_message_bytes: usize,
    pub(crate) attributor: Arc<Attributor>,
}

impl Intake {
    pub(crate) fn new(
        tx: mpsc::Sender<ExportBatch>,
        stats: Arc<ReceiverStats>,
        forwarder: Option<Forwarder>,
        max_message_bytes: usize,
        attribution_cache: usize,
    ) -> Self {
        Self {
            tx,
            stats,
            forwarder,
            max_message_bytes,
            attributor: Arc::new(Attributor::new(attribution_cache)),
        }
    }

    /// Turns a decoded trace export into batches on the output channel; never waits for the
    /// consumer (a slow consumer loses batches, counted, rather than stalling exporters).
    pub(crate) async fn accept_traces(
        &self,
        req: ExportTraceServiceRequest,
        transport: Transport,
        peer: Option<Peer>,
    ) {
        let received_at = SystemTime::now();
        let resources = decode::resource_batches(req);
        if resources
            .iter()
            .all(|r| r.spans.is_empty() && r.invalid == 0)
        {
            return;
        }
        let socket_pid = match peer {
            Some(p) => self.attributor.socket_owner(p.remote, p.local).await,
            None => None,
        };
        for ResourceBatch {
            service_name,
            resource_pid,
            spans,
            invalid,
        } in resources
        {
            ReceiverStats::add(&self.stats.invalid_spans, invalid);
            if spans.is_empty() {
                continue;
            }
            let (pid, attributed_by) = attribute(socket_pid, resource_pid);
            if attributed_by == Attribution::Unknown {
                ReceiverStats::incr(&self.stats.unattributed_batches);
            }
            let n = spans.len() as u64;
            let batch = ExportBatch {
                pid,
                attributed_by,
                service_name,
                received_at,
                transport,
                spans,
            };
            match self.tx.try_send(batch) {
                Ok(()) => ReceiverStats::add(&self.stats.spans_received, n),
                Err(_full_or_closed) => ReceiverStats::incr(&self.stats.batches_dropped),
            }
        }
    }

    /// Queues the request for the upstream collector, if one is configured.
    pub(crate) fn forward(
        &self,
        signal: Signal,
        body: Bytes,
        content_type: &str,
        content_encoding: Option<&str>,
    ) {
        if let Some(f) = &self.forwarder {
            f.submit(ForwardRequest {
                signal,
                body,
                content_type: content_type.to_owned(),
                content_encoding: content_encoding.map(str::to_owned),
            });
        }
    }
}

/// The socket owner wins: `process.pid` is only what the process says about itself, and a
/// collector or sidecar in between relays other processes' resources.
pub(crate) fn attribute(
    socket_pid: Option<u32>,
    resource_pid: Option<u32>,
) -> (Option<u32>, Attribution) {
    match (socket_pid, resource_pid) {
        (Some(pid), _) => (Some(pid), Attribution::Socket),
        (None, Some(pid)) => (Some(pid), Attribution::ResourceAttribute),
        (None, None) => (None, Attribution::Unknown),
    }
}
