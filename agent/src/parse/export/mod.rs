//! OTLP trace exports read off the wire (agent-ebpf/src/export.rs): each export connection's
//! request stream, reassembled from its chunks (each carries its offset in the stream), split
//! into export messages — HTTP/1 requests to `…/v1/traces` (`http1`), gRPC
//! `TraceService/Export` calls (`grpc`) — and decoded as the receiver decodes them. An export
//! with a gap, over the bound, undecodable or in an unknown encoding is counted by reason and
//! never used: no finding comes from half an export.

mod grpc;
mod http1;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

use self::{grpc::H2Exports, http1::Http1Exports};
use super::{
    h2::{ConnKey, H2Event, RequestStream},
    Request,
};
use crate::{
    capture::CapturedEvent,
    model::HTTP2_PREFACE,
    otlp::{decode_export, BodyError, BodyFormat, DecodedResource, Transport},
};

/// Export connections followed at once; past it the oldest is forgotten (and rejoins later as
/// one whose start was not seen).
pub const MAX_EXPORT_CONNECTIONS: usize = super::h2::MAX_CONNECTIONS;

/// Why an export read off the wire was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Bytes of it were lost (ring buffer full, unreadable memory, a send over the bound).
    Gap,
    /// It is larger than `--span-intake-max-bytes` (before or after decompression).
    TooLarge,
    /// Its start was not seen (the connection was joined mid-way, or lost its place).
    NotFromStart,
    /// A content type or compression the agent does not decode.
    UnknownEncoding,
    /// Not valid gzip, protobuf, OTLP/JSON or gRPC framing.
    Undecodable,
}

/// Counts of the wire intake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    /// Export messages decoded whole.
    pub exports: u64,
    /// Spans in them.
    pub spans: u64,
    pub gap: u64,
    pub too_large: u64,
    pub not_from_start: u64,
    pub unknown_encoding: u64,
    pub undecodable: u64,
    /// Export connections forgotten to stay within their bound.
    pub connections_evicted: u64,
}

impl ExportCounters {
    fn incomplete(&mut self, why: Incomplete) {
        match why {
            Incomplete::Gap => self.gap += 1,
            Incomplete::TooLarge => self.too_large += 1,
            Incomplete::NotFromStart => self.not_from_start += 1,
            Incomplete::UnknownEncoding => self.unknown_encoding += 1,
            Incomplete::Undecodable => self.undecodable += 1,
        }
    }
}

/// A connection found to carry trace exports, for the kernel to read whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportConnection {
    pub key: ConnKey,
    pub h2: bool,
}

/// One export message, whole, before decoding.
#[derive(Debug)]
pub(super) struct Message {
    pub body: Vec<u8>,
    pub format: BodyFormat,
    pub gzip: bool,
    pub transport: Transport,
}

/// An export read off the wire: its process's spans, by resource.
#[derive(Debug)]
pub struct WireExport {
    pub pid: u32,
    /// When its last chunk was captured (CLOCK_MONOTONIC).
    pub monotonic_ns: u64,
    pub transport: Transport,
    pub resources: Vec<DecodedResource>,
}

/// What the streams of one chunk gave.
#[derive(Debug, Default)]
pub(super) struct Out {
    pub requests: Vec<Request>,
    pub messages: Vec<Message>,
    pub incomplete: Vec<Incomplete>,
    /// An HTTP/2 connection's first `TraceService/Export` call was seen.
    pub exports_found: bool,
    pub h2_undetermined: u64,
    pub h2_lost_sync: u64,
}

enum Stream {
    Http1(Http1Exports),
    H2(H2Exports),
}

impl Stream {
    /// The connection is forgotten: exports begun and not ended are incomplete (their end
    /// was never seen: a send that did not start a request, or a process that exited).
    fn abandon(&mut self, out: &mut Out) {
        match self {
            Self::Http1(s) => s.gap_unknown(out),
            Self::H2(s) => s.abandon(out),
        }
    }
}

struct Conn {
    /// The stream offset the next chunk should have.
    next: u64,
    /// Its sends come whole (export chunks); false while they come as ordinary captures (an
    /// adopted connection before the kernel reads it whole, or one whose probation ended):
    /// the next export chunk then starts the count of offsets again.
    whole: bool,
    stream: Stream,
}

/// Every export connection's stream.
pub struct ExportStreams {
    conns: HashMap<ConnKey, Conn>,
    order: VecDeque<ConnKey>,
    max_bytes: usize,
    pub counters: ExportCounters,
    /// See [`ExportStreams::take_h2_counts`].
    h2_counts: (u64, u64),
}

impl ExportStreams {
    /// `max_bytes`: the largest export message taken (`--span-intake-max-bytes`).
    pub fn new(max_bytes: usize) -> Self {
        Self {
            conns: HashMap::new(),
            order: VecDeque::new(),
            max_bytes,
            counters: ExportCounters::default(),
            h2_counts: (0, 0),
        }
    }

    /// One chunk of an export connection (`flags::EXPORT_STREAM`). `handover` gives the HTTP/2
    /// decoder of a connection the agent followed before it was marked (its HPACK table).
    /// Returns true when the chunk showed that an HTTP/2 connection carries trace exports
    /// (the kernel should keep reading it whole).
    pub fn feed(
        &mut self,
        event: &CapturedEvent,
        handover: impl FnOnce() -> Option<RequestStream>,
        requests: &mut Vec<Request>,
        exports: &mut Vec<WireExport>,
    ) -> bool {
        let key = ConnKey {
            pid: event.pid,
            fd: event.fd,
            tls: event.tls(),
        };
        // For export chunks the kernel puts the chunk's offset in the stream where requests
        // carry their syscall's length.
        let offset = event.total_len;
        let data = &event.data[..];
        let max = self.max_bytes;
        let mut out = Out::default();
        if !self.conns.contains_key(&key) {
            let stream = if data.starts_with(HTTP2_PREFACE) {
                Stream::H2(H2Exports::new(RequestStream::from_start(), max))
            } else if let Some(decoder) = handover() {
                Stream::H2(H2Exports::new(decoder, max))
            } else if event.h2() {
                // Joined mid-way, or forgotten here: its HPACK table is unknown.
                Stream::H2(H2Exports::new(RequestStream::untrusted(), max))
            } else {
                Stream::Http1(Http1Exports::new(max, offset == 0))
            };
            self.insert(
                key,
                Conn {
                    next: offset,
                    whole: true,
                    stream,
                },
            );
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return false;
        };
        if !conn.whole {
            // The kernel reads it whole from this send on; sends between the last ordinary
            // capture and this one that did not start a request were not seen.
            conn.whole = true;
            conn.next = offset;
            if let Stream::Http1(s) = &mut conn.stream {
                s.gap_unknown(&mut out);
            }
        }
        // Bytes of unknown length missed before this chunk (agent-ebpf: `IOVECS_SKIPPED`), or
        // offsets that went back (two threads sending at once): the place in the stream is lost.
        let lost_place = event.flags & agent_common::flags::INCOMPLETE != 0 || offset < conn.next;
        match &mut conn.stream {
            Stream::Http1(s) => {
                if lost_place {
                    s.lose(&mut out);
                } else if offset > conn.next {
                    s.gap(offset - conn.next, &mut out);
                }
                s.feed(data, &mut out);
            }
            Stream::H2(s) => {
                if lost_place {
                    s.lose(&mut out);
                } else if offset > conn.next {
                    s.gap(offset - conn.next, &mut out);
                }
                s.feed(data, &mut out);
            }
        }
        conn.next = offset.saturating_add(data.len() as u64);
        let found = out.exports_found;
        self.settle(out, event, requests, exports);
        found
    }

    /// Whether `key` is an HTTP/2 connection read here (an export connection, or one on
    /// probation) whose sends now come as ordinary captures.
    pub fn follows_h2(&self, key: &ConnKey) -> bool {
        matches!(
            self.conns.get(key),
            Some(Conn {
                stream: Stream::H2(_),
                ..
            })
        )
    }

    /// The decoder of an HTTP/2 connection whose probation ended without a trace export: it
    /// goes back to the ordinary HTTP/2 connections, HPACK table and all.
    pub fn release_unexporting(&mut self, key: &ConnKey) -> Option<RequestStream> {
        match self.conns.get(key) {
            Some(Conn {
                stream: Stream::H2(s),
                ..
            }) if !s.exporting() => {}
            _ => return None,
        }
        self.order.retain(|k| k != key);
        match self.conns.remove(key)?.stream {
            Stream::H2(s) => Some(s.into_stream()),
            Stream::Http1(_) => None,
        }
    }

    /// Whether `key` is an HTTP/1 export connection read here.
    pub fn follows_http1(&self, key: &ConnKey) -> bool {
        matches!(
            self.conns.get(key),
            Some(Conn {
                stream: Stream::Http1(_),
                ..
            })
        )
    }

    /// Exports are read off the wire at all (`--span-intake` wire or both).
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    /// An ordinary capture (the first bytes of a send) of a connection read here: the bytes
    /// past the captured ones are a gap of the export they belong to.
    pub fn feed_captured(
        &mut self,
        key: ConnKey,
        event: &CapturedEvent,
        requests: &mut Vec<Request>,
        exports: &mut Vec<WireExport>,
    ) {
        let mut out = Out::default();
        if let Some(conn) = self.conns.get_mut(&key) {
            conn.whole = false;
            match &mut conn.stream {
                Stream::H2(s) => s.feed_captured(&event.data, event.total_len, &mut out),
                Stream::Http1(s) => {
                    // Ordinary captures are the sends that start a request: a body sent on
                    // its own in between was not seen.
                    s.gap_unknown(&mut out);
                    s.feed(&event.data, &mut out);
                    let missing = event.total_len.saturating_sub(event.data.len() as u64);
                    if missing > 0 {
                        s.gap(missing, &mut out);
                    }
                }
            }
        }
        self.settle(out, event, requests, exports);
    }

    /// Takes over an HTTP/1 connection whose request in `event` is a trace export to a path
    /// the kernel does not know; like [`ExportStreams::adopt`].
    pub fn adopt_http1(
        &mut self,
        key: ConnKey,
        event: &CapturedEvent,
        requests: &mut Vec<Request>,
        exports: &mut Vec<WireExport>,
    ) {
        self.insert(
            key,
            Conn {
                next: 0,
                whole: false,
                stream: Stream::Http1(Http1Exports::new(self.max_bytes, true)),
            },
        );
        self.feed_captured(key, event, requests, exports);
    }

    /// HTTP/2 header blocks not decoded and connections that lost their frame boundaries,
    /// here since the last call (the parse stage counts them with its own).
    pub fn take_h2_counts(&mut self) -> (u64, u64) {
        std::mem::take(&mut self.h2_counts)
    }

    /// Takes over an HTTP/2 connection whose decoder just named a `TraceService/Export` call,
    /// with the events it gave for `event` (the call's DATA among them when the send carried
    /// it whole). Its next sends come as ordinary captures until the kernel, told by the
    /// pipeline, reads it whole; the stream offsets it then sends start at 0.
    pub fn adopt(
        &mut self,
        key: ConnKey,
        stream: RequestStream,
        events: Vec<H2Event>,
        event: &CapturedEvent,
        requests: &mut Vec<Request>,
        exports: &mut Vec<WireExport>,
    ) {
        let mut s = H2Exports::new(stream, self.max_bytes);
        let mut out = Out::default();
        s.handle(events, &mut out);
        self.insert(
            key,
            Conn {
                next: 0,
                whole: false,
                stream: Stream::H2(s),
            },
        );
        self.settle(out, event, requests, exports);
    }

    /// What one chunk gave: its requests, its counts, and its whole messages decoded.
    fn settle(
        &mut self,
        mut out: Out,
        event: &CapturedEvent,
        requests: &mut Vec<Request>,
        exports: &mut Vec<WireExport>,
    ) {
        requests.append(&mut out.requests);
        self.h2_counts.0 += out.h2_undetermined;
        self.h2_counts.1 += out.h2_lost_sync;
        for why in out.incomplete {
            self.counters.incomplete(why);
        }
        for m in out.messages {
            match decode_export(&m.body, m.format, m.gzip, self.max_bytes) {
                Ok(resources) => {
                    self.counters.exports += 1;
                    self.counters.spans +=
                        resources.iter().map(|r| r.spans.len() as u64).sum::<u64>();
                    exports.push(WireExport {
                        pid: event.pid,
                        monotonic_ns: event.monotonic_ns,
                        transport: m.transport,
                        resources,
                    });
                }
                Err(BodyError::TooLarge) => self.counters.incomplete(Incomplete::TooLarge),
                Err(BodyError::Corrupt | BodyError::Invalid) => {
                    self.counters.incomplete(Incomplete::Undecodable);
                }
            }
        }
    }

    /// Forgets a connection (its fd now names another).
    pub fn forget(&mut self, key: &ConnKey) {
        if let Some(mut conn) = self.conns.remove(key) {
            self.order.retain(|k| k != key);
            let mut out = Out::default();
            conn.stream.abandon(&mut out);
            for why in out.incomplete {
                self.counters.incomplete(why);
            }
        }
    }

    /// Forgets the connections of processes that exited.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        let mut out = Out::default();
        self.conns.retain(|k, conn| {
            let keep = alive(k.pid);
            if !keep {
                conn.stream.abandon(&mut out);
            }
            keep
        });
        let conns = &self.conns;
        self.order.retain(|k| conns.contains_key(k));
        for why in out.incomplete {
            self.counters.incomplete(why);
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Conn) {
        if self.conns.insert(key, conn).is_none() {
            self.order.push_back(key);
        }
        while self.conns.len() > MAX_EXPORT_CONNECTIONS {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some(mut conn) = self.conns.remove(&oldest) {
                self.counters.connections_evicted += 1;
                let mut out = Out::default();
                conn.stream.abandon(&mut out);
                for why in out.incomplete {
                    self.counters.incomplete(why);
                }
            }
        }
    }
}
