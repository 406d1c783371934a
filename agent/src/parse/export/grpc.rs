//! An HTTP/2 export connection's request stream: the connection's decoder ([`RequestStream`],
//! with DATA delivered) names each call; the DATA of `TraceService/Export` calls is collected
//! and cut into gRPC messages (a compressed flag and a length before each, RFC-less but
//! specified in gRPC's PROTOCOL-HTTP2.md). Other calls on the connection are followed past.

use std::collections::HashMap;

use super::{Incomplete, Message, Out};
use crate::{
    otlp::{BodyFormat, Transport},
    parse::{
        h2::{H2Event, RequestStream},
        h2_request,
        trace_context::is_trace_header,
    },
};

/// Calls in flight on one connection at most; more are not collected (counted).
const MAX_CALLS: usize = 256;
/// gRPC's length-prefixed message: a compressed flag byte and a 4-byte big-endian length.
const GRPC_PREFIX: usize = 5;

struct Call {
    /// `grpc-encoding` of its messages.
    gzip_encoding: bool,
    /// An encoding other than gzip or identity.
    unknown_encoding: bool,
    body: Vec<u8>,
    incomplete: Option<Incomplete>,
}

pub(super) struct H2Exports {
    stream: RequestStream,
    calls: HashMap<u32, Call>,
    max_bytes: usize,
    /// A `TraceService/Export` call was seen on the connection.
    exporting: bool,
}

impl H2Exports {
    pub(super) fn new(mut stream: RequestStream, max_bytes: usize) -> Self {
        stream.deliver_data(true);
        Self {
            stream,
            calls: HashMap::new(),
            max_bytes,
            exporting: false,
        }
    }

    /// A `TraceService/Export` call was seen on the connection.
    pub(super) fn exporting(&self) -> bool {
        self.exporting
    }

    /// The connection's decoder, delivering DATA no more.
    pub(super) fn into_stream(mut self) -> RequestStream {
        self.stream.deliver_data(false);
        self.stream
    }

    pub(super) fn gap(&mut self, n: u64, out: &mut Out) {
        let events = self.stream.skip(n);
        self.handle(events, out);
        if !self.stream.in_step() {
            self.lose(out);
        }
    }

    /// The place in the stream is lost: so are the calls in flight.
    pub(super) fn lose(&mut self, out: &mut Out) {
        for (_, call) in self.calls.drain() {
            out.incomplete
                .push(call.incomplete.unwrap_or(Incomplete::NotFromStart));
        }
        self.stream = RequestStream::untrusted();
        self.stream.deliver_data(true);
    }

    /// The connection is forgotten: the calls in flight never ended.
    pub(super) fn abandon(&mut self, out: &mut Out) {
        for (_, call) in self.calls.drain() {
            out.incomplete
                .push(call.incomplete.unwrap_or(Incomplete::Gap));
        }
    }

    pub(super) fn feed(&mut self, data: &[u8], out: &mut Out) {
        self.feed_captured(data, data.len() as u64, out);
    }

    /// The first bytes of a send of `total_len` (an ordinary capture, before the kernel reads
    /// the connection whole).
    pub(super) fn feed_captured(&mut self, data: &[u8], total_len: u64, out: &mut Out) {
        let events = self.stream.feed(data, total_len, is_trace_header);
        self.handle(events, out);
    }

    pub(super) fn handle(&mut self, events: Vec<H2Event>, out: &mut Out) {
        for event in events {
            match event {
                H2Event::Request(r) => {
                    if r.is_trace_export() {
                        out.exports_found |= !self.exporting;
                        self.exporting = true;
                        let encoding = r.grpc_encoding.as_deref().map(str::to_ascii_lowercase);
                        if self.calls.len() < MAX_CALLS {
                            self.calls.insert(
                                r.stream_id,
                                Call {
                                    gzip_encoding: encoding.as_deref() == Some("gzip"),
                                    unknown_encoding: !matches!(
                                        encoding.as_deref(),
                                        None | Some("gzip" | "identity")
                                    ),
                                    body: Vec::new(),
                                    incomplete: None,
                                },
                            );
                        } else {
                            out.incomplete.push(Incomplete::TooLarge);
                        }
                    }
                    out.requests.push(h2_request(r));
                }
                // Headers that could not be decoded: whether the call was an export is unknown.
                H2Event::Undetermined { .. } => out.h2_undetermined += 1,
                // Frame boundaries lost (a send longer than its capture, before the kernel
                // read the connection whole): so are the bodies of the calls in flight.
                H2Event::LostSync(_) => {
                    out.h2_lost_sync += 1;
                    for (_, call) in self.calls.drain() {
                        out.incomplete
                            .push(call.incomplete.unwrap_or(Incomplete::Gap));
                    }
                }
                H2Event::Data {
                    stream_id,
                    bytes,
                    end_stream,
                } => {
                    let Some(call) = self.calls.get_mut(&stream_id) else {
                        continue;
                    };
                    if call.incomplete.is_none() {
                        if call.body.len() + bytes.len()
                            > self.max_bytes.saturating_add(GRPC_PREFIX)
                        {
                            call.incomplete = Some(Incomplete::TooLarge);
                            call.body = Vec::new();
                        } else {
                            call.body.extend_from_slice(&bytes);
                        }
                    }
                    if end_stream {
                        if let Some(call) = self.calls.remove(&stream_id) {
                            finish(call, out);
                        }
                    }
                }
                H2Event::DataLost { stream_id } => {
                    if let Some(call) = self.calls.get_mut(&stream_id) {
                        call.incomplete.get_or_insert(Incomplete::Gap);
                        call.body = Vec::new();
                    }
                }
            }
        }
    }
}

/// A call's request body ended: its gRPC messages.
fn finish(call: Call, out: &mut Out) {
    if let Some(why) = call.incomplete {
        out.incomplete.push(why);
        return;
    }
    let mut rest = &call.body[..];
    while !rest.is_empty() {
        let Some((&[flag, l0, l1, l2, l3], tail)) = rest.split_first_chunk::<GRPC_PREFIX>() else {
            out.incomplete.push(Incomplete::Undecodable);
            return;
        };
        let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
        let Some(message) = tail.get(..len) else {
            out.incomplete.push(Incomplete::Undecodable);
            return;
        };
        rest = &tail[len..];
        let compressed = flag == 1;
        if flag > 1 || (compressed && (call.unknown_encoding || !call.gzip_encoding)) {
            out.incomplete.push(Incomplete::UnknownEncoding);
            continue;
        }
        out.messages.push(Message {
            body: message.to_vec(),
            format: BodyFormat::Protobuf,
            gzip: compressed,
            transport: Transport::Grpc,
        });
    }
}
