//! What is copied out of a request header block while it is decoded: `:method`, `:path`
//! (without query or fragment), `content-type`, and the header values the caller may keep.

use compact_str::CompactString;

use crate::{model::otlp::Signal, parse::strip_path};

/// Kept headers per request; a block cannot hold many more trace headers than this legitimately.
pub const MAX_KEPT_HEADERS: usize = 32;

/// Header values never kept, whatever `keep` says.
const NEVER_KEPT: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

/// A request header block, with every value the caller may not keep already dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Request {
    pub stream_id: u32,
    pub method: CompactString,
    /// `:path` without query string or fragment (they may hold tokens).
    pub path: CompactString,
    pub content_type: Option<String>,
    /// `grpc-encoding`: how the call's compressed messages are compressed (`gzip`).
    pub grpc_encoding: Option<String>,
    /// Lowercase names accepted by `keep`, with their values, in block order.
    pub headers: Vec<(String, String)>,
    /// A `grpc-trace-bin` header (OpenCensus binary context) was present; its value is not kept.
    pub grpc_trace_bin: bool,
}

impl H2Request {
    /// A gRPC call (`application/grpc`, `application/grpc+proto`, ...).
    /// A gRPC call to the OTLP trace service.
    pub fn is_trace_export(&self) -> bool {
        self.method == "POST" && self.path == Signal::Traces.grpc_path()
    }

    pub fn is_grpc(&self) -> bool {
        self.content_type
            .as_deref()
            .is_some_and(|ct| ct.starts_with("application/grpc"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What is copied out of a header block while it is decoded.
#[derive(Default)]
pub(super) struct Fields {
    method: Option<CompactString>,
    path: Option<CompactString>,
    content_type: Option<String>,
    grpc_encoding: Option<String>,
    headers: Vec<(String, String)>,
    grpc_trace_bin: bool,
}

impl Fields {
    pub(super) fn add(&mut self, name: &[u8], value: &[u8], keep: &impl Fn(&str) -> bool) {
        // HTTP/2 names are lowercase already (RFC 9113, section 8.2.1); lowering again costs
        // little and keeps a malformed peer from slipping a trace header past `keep`.
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let text = || String::from_utf8_lossy(value).into_owned();
        match name.as_str() {
            ":method" => self.method = Some(CompactString::from_utf8_lossy(value)),
            ":path" => self.path = Some(strip_path(&String::from_utf8_lossy(value))),
            "content-type" => self.content_type = Some(text()),
            "grpc-encoding" => self.grpc_encoding = Some(text()),
            "grpc-trace-bin" => self.grpc_trace_bin = true,
            n if NEVER_KEPT.contains(&n) => {}
            n if keep(n) && self.headers.len() < MAX_KEPT_HEADERS => {
                self.headers.push((n.to_owned(), text()));
            }
            _ => {}
        }
    }

    pub(super) fn into_request(self, stream_id: u32) -> Option<H2Request> {
        Some(H2Request {
            stream_id,
            method: self.method?,
            // CONNECT has no :path.
            path: self.path.unwrap_or_default(),
            content_type: self.content_type,
            grpc_encoding: self.grpc_encoding,
            headers: self.headers,
            grpc_trace_bin: self.grpc_trace_bin,
        })
    }
}
