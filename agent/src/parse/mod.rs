//! Captured bytes → requests: HTTP/1 request heads (`http1`), HTTP/2 header blocks (`h2`, with
//! a decoder per connection), and the trace context they carry (`trace_context`).
//!
//! Only trace-context header values, the method and the path (without query or fragment)
//! leave this stage: every other header value is dropped here, at parse time.

pub mod export;
pub mod h2;
pub mod http1;
pub mod trace_context;

use compact_str::CompactString;

use self::{
    export::{ExportConnection, ExportCounters, ExportStreams, WireExport},
    h2::{Chunk, ConnKey, H2Connections, H2Event},
    http1::parse_request,
    trace_context::{is_trace_header, TraceHeaders},
};
use crate::{
    capture::CapturedEvent,
    model::{otlp, Direction, Protocol, HTTP2_PREFACE},
};

/// One request: an HTTP/1 request head, or the header block opening an HTTP/2 stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Method and path are kept inline up to 24 bytes: most requests allocate neither, here
    /// or in the findings and trace state that copy them.
    pub method: CompactString,
    /// Path without query string or fragment.
    pub path: CompactString,
    pub trace: TraceHeaders,
    /// The header block ended inside the captured bytes: absent headers are really absent.
    pub complete: bool,
    pub protocol: Protocol,
}

impl Request {
    /// An OTLP export request: `POST /v1/traces` and friends, or a call to an OTLP gRPC service.
    pub fn is_telemetry(&self) -> bool {
        otlp::is_export(&self.method, &self.path, self.protocol)
    }

    /// An OTLP/HTTP trace export (`POST …/v1/traces`, any path prefix).
    pub fn is_http1_trace_export(&self) -> bool {
        self.protocol == Protocol::Http1
            && self.method == "POST"
            && self.path.ends_with(otlp::Signal::Traces.http_path())
    }
}

/// Drops query string and fragment (they may hold tokens), and the scheme and authority of an
/// absolute-form request target (`GET http://host/path` to a proxy). An origin-form target
/// (`/path?...`) keeps its path whatever its query holds, even `://`.
pub fn strip_path(target: &str) -> CompactString {
    let target = match target.starts_with('/') {
        true => target,
        false => match target.find("://") {
            Some(i) => target[i + 3..]
                .find('/')
                .map_or("/", |j| &target[i + 3 + j..]),
            None => target,
        },
    };
    // A byte search: both are ASCII, so the position is a char boundary (a `[char]` pattern
    // decoded the path char by char, 3 % of the agent's CPU under load).
    let end = target
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(target.len());
    CompactString::from(&target[..end])
}

/// What one captured event held.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The event starts an HTTP/2 connection (its client preface).
    pub preface: bool,
    pub requests: Vec<Request>,
    /// Trace exports read off the wire, whole.
    pub exports: Vec<WireExport>,
    /// An HTTP/2 connection found to carry trace exports: the kernel should read it whole.
    pub export_connection: Option<ExportConnection>,
}

/// Counts of what this stage could not turn into requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParseCounters {
    /// Captures that started with a method but were not HTTP (binary data, garbage).
    pub parse_failures: u64,
    /// HTTP/2 calls whose headers could not be decoded (connection joined mid-way, an event
    /// lost, a truncated capture hid a frame): counted, never judged.
    pub h2_undetermined: u64,
    /// HTTP/2 connections whose frames stopped making sense (loss or not HTTP/2 after all).
    pub h2_lost_sync: u64,
}

/// The parse stage: stateless for HTTP/1, one HPACK decoder per HTTP/2 connection, and the
/// export connections' streams.
pub struct Parser {
    h2: H2Connections,
    exports: ExportStreams,
    pub counters: ParseCounters,
}

impl Parser {
    /// `export_max_bytes`: the largest export message read off the wire.
    pub fn new(export_max_bytes: usize) -> Self {
        Self {
            h2: H2Connections::default(),
            exports: ExportStreams::new(export_max_bytes),
            counters: ParseCounters::default(),
        }
    }

    /// The wire intake's counts.
    pub fn export_counters(&self) -> &ExportCounters {
        &self.exports.counters
    }

    pub fn parse(&mut self, event: &CapturedEvent) -> Parsed {
        let preface = event.data.starts_with(HTTP2_PREFACE);
        let mut parsed = Parsed {
            preface,
            ..Parsed::default()
        };
        if event.export_stream() {
            let key = ConnKey {
                pid: event.pid,
                fd: event.fd,
                tls: event.tls(),
            };
            let h2 = &mut self.h2;
            let found = self.exports.feed(
                event,
                || h2.take(key),
                &mut parsed.requests,
                &mut parsed.exports,
            );
            if found {
                parsed.export_connection = Some(ExportConnection { key, h2: true });
            }
            self.count_export_h2();
            return parsed;
        }
        if event.h2() || preface {
            let key = ConnKey {
                pid: event.pid,
                fd: event.fd,
                tls: event.tls(),
            };
            let chunk = Chunk {
                data: &event.data,
                total_len: event.total_len,
                preface,
                gap: event.h2_gap(),
            };
            if preface {
                // A new connection on the fd of one read there.
                self.exports.forget(&key);
            } else if let Some(stream) = self.exports.release_unexporting(&key) {
                // Its probation ended: no exports on it.
                self.h2.restore(key, stream);
            } else if self.exports.follows_h2(&key) {
                self.exports
                    .feed_captured(key, event, &mut parsed.requests, &mut parsed.exports);
                self.count_export_h2();
                return parsed;
            }
            let events = self.h2.feed(key, chunk, is_trace_header);
            for h2_event in &events {
                match h2_event {
                    H2Event::Undetermined { .. } => self.counters.h2_undetermined += 1,
                    H2Event::LostSync(_) => self.counters.h2_lost_sync += 1,
                    _ => {}
                }
            }
            let exporting = events
                .iter()
                .any(|e| matches!(e, H2Event::Request(r) if r.is_trace_export()));
            if let Some(stream) = exporting.then(|| self.h2.take(key)).flatten() {
                // The kernel reads export connections to the OTLP/gRPC port whole from their
                // preface; this one goes elsewhere. Its exports are read here, and from its
                // next sends on (once the kernel is told) whole.
                parsed.export_connection = Some(ExportConnection { key, h2: true });
                self.exports.adopt(
                    key,
                    stream,
                    events,
                    event,
                    &mut parsed.requests,
                    &mut parsed.exports,
                );
                self.count_export_h2();
                return parsed;
            }
            for h2_event in events {
                match h2_event {
                    H2Event::Request(r) => parsed.requests.push(h2_request(r)),
                    // Counted above; DATA is delivered for export calls only, adopted above.
                    H2Event::Undetermined { .. }
                    | H2Event::LostSync(_)
                    | H2Event::Data { .. }
                    | H2Event::DataLost { .. } => {}
                }
            }
            return parsed;
        }
        let key = ConnKey {
            pid: event.pid,
            fd: event.fd,
            tls: event.tls(),
        };
        let outbound = event.direction == Direction::Outbound;
        if outbound && self.exports.follows_http1(&key) {
            self.exports
                .feed_captured(key, event, &mut parsed.requests, &mut parsed.exports);
            return parsed;
        }
        match parse_request(&event.data) {
            Ok(req) if outbound && req.is_http1_trace_export() && self.exports.enabled() => {
                // An export to a path the kernel does not know (a prefix before /v1/traces):
                // read from this capture (whole if the send was), and whole from the next
                // send on, once the kernel is told.
                parsed.export_connection = Some(ExportConnection { key, h2: false });
                self.exports
                    .adopt_http1(key, event, &mut parsed.requests, &mut parsed.exports);
            }
            Ok(req) => parsed.requests.push(req),
            Err(_) => self.counters.parse_failures += 1,
        }
        parsed
    }

    /// HTTP/2 connections forgotten to stay within their bound.
    pub fn h2_evicted(&self) -> u64 {
        self.h2.evicted
    }

    /// HTTP/2 connections being decoded.
    pub fn h2_connections(&self) -> usize {
        self.h2.len()
    }

    /// Counts the HTTP/2 losses of the connections the export stage decodes with the others.
    fn count_export_h2(&mut self) {
        let (undetermined, lost_sync) = self.exports.take_h2_counts();
        self.counters.h2_undetermined += undetermined;
        self.counters.h2_lost_sync += lost_sync;
    }

    /// Forgets the connections of processes that exited.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.h2.retain(&alive);
        self.exports.retain(alive);
    }
}

/// An HTTP/2 request as a [`Request`].
fn h2_request(r: h2::H2Request) -> Request {
    Request {
        protocol: if r.is_grpc() {
            Protocol::Grpc
        } else {
            Protocol::H2
        },
        method: r.method,
        path: r.path,
        trace: TraceHeaders { headers: r.headers },
        complete: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_query_fragment_and_authority() {
        assert_eq!(strip_path("/a/b?c=d#e"), "/a/b");
        assert_eq!(strip_path("http://example.test:8080/p?q"), "/p");
        assert_eq!(strip_path("http://example.test"), "/");
        assert_eq!(strip_path("*"), "*");
        // A URL in the query of an origin-form target is query, not authority: nothing of the
        // query may become the path.
        assert_eq!(
            strip_path("/redirect?to=http://evil.test/SECRET"),
            "/redirect"
        );
    }

    #[test]
    fn otlp_exports_are_telemetry() {
        let req = parse_request(b"POST /v1/traces HTTP/1.1\r\nHost: c\r\n\r\n").expect("parses");
        assert!(req.is_telemetry());
        let req = parse_request(b"GET /v1/traces HTTP/1.1\r\nHost: c\r\n\r\n").expect("parses");
        assert!(!req.is_telemetry());
    }
}
