//! Trace-context headers: which propagation format a request carries, and whether it is valid.
//!
//! The header names are defined here once; [`crate::http`] keeps only these headers' values.

use serde::Serialize;

/// W3C Trace Context (<https://www.w3.org/TR/trace-context/>).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
/// B3 single header and multi-header (<https://github.com/openzipkin/b3-propagation>).
pub const B3: &str = "b3";
pub const B3_TRACE_ID: &str = "x-b3-traceid";
pub const B3_SPAN_ID: &str = "x-b3-spanid";
pub const B3_SAMPLED: &str = "x-b3-sampled";
pub const B3_PARENT_SPAN_ID: &str = "x-b3-parentspanid";
pub const B3_FLAGS: &str = "x-b3-flags";
/// Jaeger.
pub const UBER_TRACE_ID: &str = "uber-trace-id";
/// Vendor and legacy formats: recognised as trace context, not as W3C. `grpc-trace-bin` is
/// OpenCensus's binary context in gRPC metadata (base64 on the wire).
pub const VENDOR_HEADERS: [&str; 5] = [
    "grpc-trace-bin",
    "x-cloud-trace-context",
    "x-amzn-trace-id",
    "x-datadog-trace-id",
    "x-datadog-parent-id",
];

/// Every header whose value may be kept past parsing, in lowercase. All other values are
/// dropped unread.
const TRACE_HEADERS: [&str; 14] = [
    TRACEPARENT,
    TRACESTATE,
    B3,
    B3_TRACE_ID,
    B3_SPAN_ID,
    B3_SAMPLED,
    B3_PARENT_SPAN_ID,
    B3_FLAGS,
    UBER_TRACE_ID,
    VENDOR_HEADERS[0],
    VENDOR_HEADERS[1],
    VENDOR_HEADERS[2],
    VENDOR_HEADERS[3],
    VENDOR_HEADERS[4],
];

/// Whether a lowercase header name (HTTP/2 and gRPC metadata names are lowercase on the wire)
/// is trace context.
pub fn is_trace_header(lower_name: &str) -> bool {
    TRACE_HEADERS.contains(&lower_name)
}

/// The trace-context header `name` is, in its lowercase spelling, compared ignoring ASCII case
/// (HTTP/1 header names are case-insensitive): `None` for every other header, without
/// allocating, since most headers of most requests are not trace context.
pub fn trace_header_name(name: &str) -> Option<&'static str> {
    TRACE_HEADERS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(name))
        .copied()
}

/// A valid W3C `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub version: u8,
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Why a `traceparent` value is invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("wrong length")]
    Length,
    #[error("not lowercase hex")]
    NotLowerHex,
    #[error("missing '-' separators")]
    Separators,
    #[error("version ff is invalid")]
    VersionFf,
    #[error("all-zero trace-id")]
    ZeroTraceId,
    #[error("all-zero parent-id")]
    ZeroParentId,
}

/// Parses a `traceparent` value per W3C Trace Context level 1, section 3.2.
///
/// Version 00 must be exactly 55 characters. A higher version may be longer (future versions
/// append fields after a `-`), and is parsed as far as version 00 defines.
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceParentError> {
    let value = value.trim_matches([' ', '\t']);
    let b = value.as_bytes();
    if b.len() < 55 {
        return Err(TraceParentError::Length);
    }
    let version = hex_u8(&b[0..2])?;
    if version == 0xff {
        return Err(TraceParentError::VersionFf);
    }
    if version == 0 && b.len() != 55 {
        return Err(TraceParentError::Length);
    }
    if version != 0 && b.len() > 55 && b[55] != b'-' {
        return Err(TraceParentError::Separators);
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return Err(TraceParentError::Separators);
    }
    let mut trace_id = [0u8; 16];
    hex_into(&b[3..35], &mut trace_id)?;
    let mut parent_id = [0u8; 8];
    hex_into(&b[36..52], &mut parent_id)?;
    let flags = hex_u8(&b[53..55])?;
    if trace_id == [0; 16] {
        return Err(TraceParentError::ZeroTraceId);
    }
    if parent_id == [0; 8] {
        return Err(TraceParentError::ZeroParentId);
    }
    Ok(TraceParent {
        version,
        trace_id,
        parent_id,
        flags,
    })
}

fn lower_hex_digit(c: u8) -> Result<u8, TraceParentError> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParentError::NotLowerHex),
    }
}

fn hex_u8(pair: &[u8]) -> Result<u8, TraceParentError> {
    Ok(lower_hex_digit(pair[0])? << 4 | lower_hex_digit(pair[1])?)
}

fn hex_into(src: &[u8], dst: &mut [u8]) -> Result<(), TraceParentError> {
    for (out, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        *out = hex_u8(pair)?;
    }
    Ok(())
}

/// Lowercase hex of bytes (trace and span ids).
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _infallible = write!(s, "{b:02x}");
            s
        })
}

/// The propagation a request carries, as one label (the `propagation` metric attribute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    W3c,
    B3,
    Jaeger,
    Vendor,
    None,
    Malformed,
    /// The capture ended before the header block did: the verdict is unknown.
    Undetermined,
}

impl Propagation {
    pub const ALL: [Self; 7] = [
        Self::W3c,
        Self::B3,
        Self::Jaeger,
        Self::Vendor,
        Self::None,
        Self::Malformed,
        Self::Undetermined,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::W3c => "w3c",
            Self::B3 => "b3",
            Self::Jaeger => "jaeger",
            Self::Vendor => "vendor",
            Self::None => "none",
            Self::Malformed => "malformed",
            Self::Undetermined => "undetermined",
        }
    }
}

/// The trace-context headers of one request (names lowercase, values as sent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    pub headers: Vec<(String, String)>,
}

impl TraceHeaders {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The valid W3C parent, if any.
    pub fn traceparent(&self) -> Option<TraceParent> {
        parse_traceparent(self.get(TRACEPARENT)?).ok()
    }

    /// Classifies a complete header block. W3C wins when valid; an invalid `traceparent` is
    /// `Malformed` even beside B3 (the W3C propagator will drop it).
    pub fn classify(&self) -> Propagation {
        if let Some(tp) = self.get(TRACEPARENT) {
            return if parse_traceparent(tp).is_ok() {
                Propagation::W3c
            } else {
                Propagation::Malformed
            };
        }
        if self.has(B3) || self.has(B3_TRACE_ID) {
            Propagation::B3
        } else if self.has(UBER_TRACE_ID) {
            Propagation::Jaeger
        } else if VENDOR_HEADERS.iter().any(|h| self.has(h)) {
            Propagation::Vendor
        } else {
            Propagation::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Examples from W3C Trace Context, section 3.2.2 and appendix.
    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn spec_example_is_valid() {
        let tp = parse_traceparent(SPEC_EXAMPLE).expect("valid");
        assert_eq!(tp.version, 0);
        assert_eq!(to_hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&tp.parent_id), "00f067aa0ba902b7");
        assert!(tp.sampled());
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
                .expect("valid");
        assert!(!unsampled.sampled());
    }

    #[test]
    fn invalid_values_are_rejected_with_the_reason() {
        use TraceParentError::*;
        let cases = [
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                NotLowerHex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                ZeroParentId,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                VersionFf,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                Length,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                Length,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                Separators,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                NotLowerHex,
            ),
            ("", Length),
            ("garbage", Length),
        ];
        for (value, want) in cases {
            assert_eq!(parse_traceparent(value), Err(want), "{value}");
        }
    }

    #[test]
    fn future_versions_may_carry_more_fields() {
        let tp = parse_traceparent(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future",
        )
        .expect("a higher version parses as far as version 00 defines");
        assert_eq!(tp.version, 0xcc);
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            Err(TraceParentError::Separators)
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> TraceHeaders {
        TraceHeaders {
            headers: pairs
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn classification() {
        assert_eq!(headers(&[]).classify(), Propagation::None);
        assert_eq!(
            headers(&[(TRACEPARENT, SPEC_EXAMPLE)]).classify(),
            Propagation::W3c
        );
        assert_eq!(
            headers(&[(TRACEPARENT, "00-zz")]).classify(),
            Propagation::Malformed
        );
        assert_eq!(
            headers(&[(B3, "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]).classify(),
            Propagation::B3
        );
        assert_eq!(
            headers(&[(B3_TRACE_ID, "80f198ee56343ba8")]).classify(),
            Propagation::B3
        );
        assert_eq!(
            headers(&[(UBER_TRACE_ID, "5d8b0d7e5e1f6d2c:5d8b0d7e5e1f6d2c:0:1")]).classify(),
            Propagation::Jaeger
        );
        assert_eq!(
            headers(&[(
                "x-amzn-trace-id",
                "Root=1-5759e988-bd862e3fe1be46a994272793"
            )])
            .classify(),
            Propagation::Vendor
        );
        // A malformed traceparent beside valid B3 is still a W3C problem.
        assert_eq!(
            headers(&[(TRACEPARENT, "bad"), (B3, "a-b-1")]).classify(),
            Propagation::Malformed
        );
    }

    #[test]
    fn only_trace_headers_are_kept() {
        for name in [
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "uber-trace-id",
            "x-amzn-trace-id",
        ] {
            assert!(is_trace_header(name), "{name}");
        }
        for name in [
            "authorization",
            "cookie",
            "set-cookie",
            "proxy-authorization",
            "host",
            "user-agent",
        ] {
            assert!(!is_trace_header(name), "{name}");
        }
    }
}
