//! HTTP/1.x request prefixes → method, path and trace-context headers.
//!
//! The kernel captured the first bytes of a send or receive that starts with a request method; a
//! partial header block is normal (capture cap, or a header block split over several syscalls).
//! Only trace-context header values are kept: every other value is dropped here, at parse time.

use std::mem::MaybeUninit;

use super::{
    strip_path,
    trace_context::{trace_header_name, TraceHeaders},
    Request,
};
use crate::model::Protocol;

/// Headers parsed per request; more is a parse error (counted), never a crash.
pub const MAX_HEADERS: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid HTTP request: {0}")]
    Invalid(httparse::Error),
    #[error("request line incomplete")]
    NoRequestLine,
}

/// Parses a captured request prefix.
pub fn parse_request(bytes: &[u8]) -> Result<Request, HttpError> {
    // Uninitialised header slots: zeroing 128 of them (4 KiB) cost more than parsing a short
    // request. httparse writes a slot before it exposes it.
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let complete = match req
        .parse_with_uninit_headers(bytes, &mut headers)
        .map_err(HttpError::Invalid)?
    {
        httparse::Status::Complete(_) => true,
        httparse::Status::Partial => false,
    };
    if complete {
        return Ok(build(&req, true));
    }
    // httparse reports nothing on a partial block, so parse the complete lines seen so far,
    // closed with an empty line; the last line may be cut mid-way and is left out.
    let Some(last_line_end) = bytes.windows(2).rposition(|w| w == b"\r\n") else {
        return Err(HttpError::NoRequestLine);
    };
    let mut closed = Vec::with_capacity(last_line_end + 4);
    closed.extend_from_slice(&bytes[..last_line_end + 2]);
    closed.extend_from_slice(b"\r\n");
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req
        .parse_with_uninit_headers(&closed, &mut headers)
        .map_err(HttpError::Invalid)?
    {
        httparse::Status::Complete(_) => Ok(build(&req, false)),
        httparse::Status::Partial => Err(HttpError::NoRequestLine),
    }
}

fn build(req: &httparse::Request<'_, '_>, complete: bool) -> Request {
    let trace = TraceHeaders {
        headers: req
            .headers
            .iter()
            .filter_map(|h| {
                let name = trace_header_name(h.name)?;
                let value = String::from_utf8_lossy(h.value).into_owned();
                Some((name.to_owned(), value))
            })
            .collect(),
    };
    Request {
        method: req.method.unwrap_or_default().into(),
        path: strip_path(req.path.unwrap_or_default()),
        trace,
        complete,
        protocol: Protocol::Http1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::trace_context::Propagation;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn complete_request_keeps_only_trace_headers() {
        let raw = format!(
            "GET /api/cart?user=42&token=SECRET HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer SECRET\r\n\
             Cookie: s=SECRET\r\ntraceparent: {TP}\r\nTraceState: k=v\r\n\r\n"
        );
        let req = parse_request(raw.as_bytes()).expect("parses");
        assert!(req.complete);
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/api/cart");
        assert_eq!(req.trace.classify(), Propagation::W3c);
        assert_eq!(req.trace.get("tracestate"), Some("k=v"));
        assert!(!format!("{req:?}").contains("SECRET"));
    }

    #[test]
    fn truncated_block_keeps_the_lines_seen_and_says_incomplete() {
        let raw = format!("POST /x HTTP/1.1\r\ntraceparent: {TP}\r\nX-Long: aaaa");
        let req = parse_request(raw.as_bytes()).expect("parses");
        assert!(!req.complete);
        assert_eq!(req.trace.classify(), Propagation::W3c);
        let req = parse_request(b"GET /y HTTP/1.1\r\nHost: a\r\nUser-Ag").expect("parses");
        assert!(!req.complete);
        assert_eq!(req.path, "/y");
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse_request(b"GET \x00\x01\x02\xff binary").is_err());
        assert!(parse_request(b"GET /only-a-partial-request-line").is_err());
        assert!(parse_request(b"").is_err());
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 5) {
            many.extend_from_slice(format!("h{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_request(&many),
            Err(HttpError::Invalid(httparse::Error::TooManyHeaders))
        );
    }
}
