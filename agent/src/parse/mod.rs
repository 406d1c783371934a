//! Captured bytes → requests: HTTP/1 request heads (`http1`), HTTP/2 header blocks (`h2`, with
//! a decoder per connection), and the trace context they carry (`trace_context`).
//!
//! Only trace-context header values, the method and the path (without query or fragment)
//! leave this stage: every other header value is dropped here, at parse time.

pub mod h2;
pub mod http1;
pub mod trace_context;

use self::{
    h2::{Chunk, ConnKey, H2Connections, H2Event},
    http1::parse_request,
    trace_context::{is_trace_header, TraceHeaders},
};
use crate::{
    capture::CapturedEvent,
    model::{otlp, Protocol, HTTP2_PREFACE},
};

/// One request: an HTTP/1 request head, or the header block opening an HTTP/2 stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path without query string or fragment.
    pub path: String,
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
}

/// Drops query string and fragment (they may hold tokens), and the scheme and authority of an
/// absolute-form request target (`GET http://host/path` to a proxy). An origin-form target
/// (`/path?...`) keeps its path whatever its query holds, even `://`.
pub fn strip_path(target: &str) -> String {
    let target = match target.find("://") {
        Some(i) if !target.starts_with('/') => target[i + 3..]
            .find('/')
            .map_or("/", |j| &target[i + 3 + j..]),
        _ => target,
    };
    let end = target.find(['?', '#']).unwrap_or(target.len());
    target[..end].to_owned()
}

/// What one captured event held.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The event starts an HTTP/2 connection (its client preface).
    pub preface: bool,
    pub requests: Vec<Request>,
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

/// The parse stage: stateless for HTTP/1, one HPACK decoder per HTTP/2 connection.
#[derive(Default)]
pub struct Parser {
    h2: H2Connections,
    pub counters: ParseCounters,
}

impl Parser {
    pub fn parse(&mut self, event: &CapturedEvent) -> Parsed {
        let preface = event.data.starts_with(HTTP2_PREFACE);
        let mut parsed = Parsed {
            preface,
            requests: Vec::new(),
        };
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
            for h2_event in self.h2.feed(key, chunk, is_trace_header) {
                match h2_event {
                    H2Event::Request(r) => parsed.requests.push(Request {
                        protocol: if r.is_grpc() {
                            Protocol::Grpc
                        } else {
                            Protocol::H2
                        },
                        method: r.method,
                        path: r.path,
                        trace: TraceHeaders { headers: r.headers },
                        complete: true,
                    }),
                    H2Event::Undetermined { .. } => self.counters.h2_undetermined += 1,
                    H2Event::LostSync(_) => self.counters.h2_lost_sync += 1,
                }
            }
            return parsed;
        }
        match parse_request(&event.data) {
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

    /// Forgets the connections of processes that exited.
    pub fn retain(&mut self, alive: impl Fn(u32) -> bool) {
        self.h2.retain(alive);
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
