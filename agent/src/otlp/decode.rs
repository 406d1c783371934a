//! Export request bodies → [`SpanRecord`]s.

use std::{borrow::Cow, io::Read};

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{any_value::Value, KeyValue},
    trace::v1::{ResourceSpans, Span},
};
use prost::Message;

use super::SpanRecord;

/// The attribute (`true`) that marks the spans tracegap adds to traces
/// (`crate::report::otlp` exports them; the span rules skip them).
pub const ANNOTATION_ATTRIBUTE: &str = "tracegap.annotation";

/// The body format of an OTLP/HTTP request (gRPC is always protobuf).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    /// From a `Content-Type` value; parameters (`; charset=utf-8`) are ignored.
    pub fn from_content_type(value: &str) -> Option<Self> {
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("application/x-protobuf") {
            Some(Self::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Self::Json)
        } else {
            None
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("invalid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("invalid OTLP/JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// JSON uses opentelemetry-proto's `with-serde` derives: lowerCamelCase names, trace and span
/// ids as hex strings and 64-bit integers as strings or numbers, as the OTLP/JSON spec says;
/// unknown fields are ignored, which the spec requires of receivers.
pub(crate) fn decode_traces(
    body: &[u8],
    format: Format,
) -> Result<ExportTraceServiceRequest, DecodeError> {
    Ok(match format {
        Format::Protobuf => ExportTraceServiceRequest::decode(body)?,
        Format::Json => serde_json::from_slice(body)?,
    })
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GunzipError {
    TooLarge,
    Corrupt,
}

/// Decompresses a gzip body, refusing to produce more than `max` bytes: a few KiB of gzip can
/// expand to gigabytes, so the limit must hold on the output, not only on the wire.
pub(crate) fn gunzip_limited(body: &[u8], max: usize) -> Result<Vec<u8>, GunzipError> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    flate2::read::GzDecoder::new(body)
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| GunzipError::Corrupt)?;
    if out.len() > max {
        return Err(GunzipError::TooLarge);
    }
    Ok(out)
}

/// What one `ResourceSpans` yields.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ResourceBatch {
    pub(crate) service_name: Option<String>,
    /// The `process.pid` resource attribute, if a valid pid.
    pub(crate) resource_pid: Option<u32>,
    pub(crate) spans: Vec<SpanRecord>,
    /// Spans skipped for invalid ids.
    pub(crate) invalid: u64,
}

pub(crate) fn resource_batches(req: ExportTraceServiceRequest) -> Vec<ResourceBatch> {
    req.resource_spans.into_iter().map(resource_batch).collect()
}

fn resource_batch(rs: ResourceSpans) -> ResourceBatch {
    let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
    let mut batch = ResourceBatch {
        service_name: string_attr(&attrs, "service.name"),
        resource_pid: pid_attr(&attrs),
        ..ResourceBatch::default()
    };
    for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
        match span_record(span) {
            Some(rec) => batch.spans.push(rec),
            None => batch.invalid += 1,
        }
    }
    batch
}

/// `None` when an id is invalid per the proto: wrong length or all zero (an empty parent id
/// marks a root and is fine).
pub(crate) fn span_record(span: Span) -> Option<SpanRecord> {
    let trace_id: [u8; 16] = span.trace_id.as_slice().try_into().ok()?;
    let span_id: [u8; 8] = span.span_id.as_slice().try_into().ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    let parent_span_id = if span.parent_span_id.is_empty() {
        None
    } else {
        let parent: [u8; 8] = span.parent_span_id.as_slice().try_into().ok()?;
        if parent == [0; 8] {
            return None;
        }
        Some(parent)
    };
    let annotation = span.attributes.iter().any(|kv| {
        kv.key == ANNOTATION_ATTRIBUTE
            && match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::BoolValue(b)) => *b,
                Some(Value::StringValue(s)) => s == "true",
                _ => false,
            }
    });
    Some(SpanRecord {
        annotation,
        trace_id,
        span_id,
        parent_span_id,
        name: span.name,
        kind: span.kind,
        start_unix_nanos: span.start_time_unix_nano,
        end_unix_nanos: span.end_time_unix_nano,
    })
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    })
}

/// `process.pid` is an int by the semantic conventions; some exporters send it as a string.
pub(crate) fn pid_attr(attrs: &[KeyValue]) -> Option<u32> {
    let kv = attrs.iter().find(|kv| kv.key == "process.pid")?;
    let pid = match kv.value.as_ref()?.value.as_ref()? {
        Value::IntValue(i) => u32::try_from(*i).ok()?,
        Value::StringValue(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (pid != 0).then_some(pid)
}

/// Why [`decode_trace_body`] refused a body (the receiver answers 413 or 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Corrupt,
    Invalid,
}

/// The receiver's steps for one OTLP/HTTP trace body, as one function for the fuzz targets
/// (fuzz/) and tests: bounded gunzip when `gzip`, decode (JSON or protobuf), span records.
/// Returns the records of every resource and the count of spans skipped for invalid ids.
pub fn decode_trace_body(
    body: &[u8],
    json: bool,
    gzip: bool,
    max_bytes: usize,
) -> Result<(Vec<SpanRecord>, u64), BodyError> {
    let body = plain_body(body, gzip, max_bytes)?;
    let format = if json { Format::Json } else { Format::Protobuf };
    let req = decode_traces(&body, format).map_err(|_| BodyError::Invalid)?;
    let mut spans = Vec::new();
    let mut invalid = 0;
    for batch in resource_batches(req) {
        spans.extend(batch.spans);
        invalid += batch.invalid;
    }
    Ok((spans, invalid))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::AnyValue;

    use super::*;

    fn kv(key: &str, value: Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::from_content_type("application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_content_type("Application/X-Protobuf"),
            Some(Format::Protobuf)
        );
        assert_eq!(Format::from_content_type("text/plain"), None);
        assert_eq!(Format::from_content_type(""), None);
    }

    #[test]
    fn pid_attribute_forms() {
        assert_eq!(
            pid_attr(&[kv("process.pid", Value::IntValue(42))]),
            Some(42)
        );
        assert_eq!(
            pid_attr(&[kv("process.pid", Value::StringValue(" 7 ".into()))]),
            Some(7)
        );
        assert_eq!(pid_attr(&[kv("process.pid", Value::IntValue(-1))]), None);
        assert_eq!(pid_attr(&[kv("process.pid", Value::IntValue(0))]), None);
        assert_eq!(pid_attr(&[kv("process.pid", Value::BoolValue(true))]), None);
        assert_eq!(pid_attr(&[kv("other", Value::IntValue(3))]), None);
    }

    #[test]
    fn invalid_ids_are_rejected() {
        let good = Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Span::default()
        };
        assert!(span_record(good.clone()).is_some_and(|r| r.parent_span_id.is_none()));
        let short = Span {
            trace_id: vec![1; 15],
            ..good.clone()
        };
        assert!(span_record(short).is_none());
        let zero = Span {
            span_id: vec![0; 8],
            ..good.clone()
        };
        assert!(span_record(zero).is_none());
        let bad_parent = Span {
            parent_span_id: vec![3; 4],
            ..good
        };
        assert!(span_record(bad_parent).is_none());
    }

    #[test]
    fn annotation_spans_are_marked() {
        let span = |attributes| Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            attributes,
            ..Span::default()
        };
        let marked = |attributes| span_record(span(attributes)).map(|r| r.annotation);
        assert_eq!(marked(vec![]), Some(false));
        assert_eq!(
            marked(vec![kv(ANNOTATION_ATTRIBUTE, Value::BoolValue(true))]),
            Some(true)
        );
        assert_eq!(
            marked(vec![kv(
                ANNOTATION_ATTRIBUTE,
                Value::StringValue("true".into())
            )]),
            Some(true)
        );
        assert_eq!(
            marked(vec![kv(ANNOTATION_ATTRIBUTE, Value::BoolValue(false))]),
            Some(false)
        );
    }

    #[test]
    fn json_ids_are_hex() {
        let json = br#"{"resourceSpans":[{"resource":{"attributes":[
            {"key":"service.name","value":{"stringValue":"svc"}},
            {"key":"process.pid","value":{"intValue":"1234"}}]},
          "scopeSpans":[{"scope":{"name":"x"},"spans":[{
            "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
            "parentSpanId":"eee19b7ec3c1b173","name":"GET /","kind":2,
            "startTimeUnixNano":"1544712660000000000","endTimeUnixNano":1544712661000000000,
            "unknownField":true}]}]}]}"#;
        let req = decode_traces(json, Format::Json).expect("valid OTLP/JSON");
        let batches = resource_batches(req);
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.service_name.as_deref(), Some("svc"));
        assert_eq!(b.resource_pid, Some(1234));
        let s = &b.spans[0];
        assert_eq!(s.trace_id[..4], [0x5b, 0x8e, 0xff, 0xf7]);
        assert_eq!(s.parent_span_id.map(|p| p[7]), Some(0x73));
        assert_eq!((s.kind, s.start_unix_nanos), (2, 1_544_712_660_000_000_000));
        assert_eq!(s.end_unix_nanos, 1_544_712_661_000_000_000);
    }

    #[test]
    fn gunzip_limit_holds_on_output() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[0u8; 10_000]).expect("write to Vec");
        let gz = enc.finish().expect("finish gzip");
        assert_eq!(gunzip_limited(&gz, 10_000).map(|v| v.len()), Ok(10_000));
        assert_eq!(gunzip_limited(&gz, 9_999), Err(GunzipError::TooLarge));
        assert_eq!(gunzip_limited(b"not gzip", 100), Err(GunzipError::Corrupt));
    }
}

/// One resource's spans of an export read off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedResource {
    pub service_name: Option<String>,
    pub spans: Vec<SpanRecord>,
}

/// The body as sent, gunzipped when `gzip`, at most `max_bytes` either way.
fn plain_body(body: &[u8], gzip: bool, max_bytes: usize) -> Result<Cow<'_, [u8]>, BodyError> {
    let body = if gzip {
        Cow::Owned(gunzip_limited(body, max_bytes).map_err(|e| match e {
            GunzipError::TooLarge => BodyError::TooLarge,
            GunzipError::Corrupt => BodyError::Corrupt,
        })?)
    } else {
        Cow::Borrowed(body)
    };
    if body.len() > max_bytes {
        return Err(BodyError::TooLarge);
    }
    Ok(body)
}

/// An export message read off the wire (agent/src/parse/export): bounded gunzip when `gzip`,
/// decode, span records by resource. Spans with invalid ids are left out.
pub fn decode_export(
    body: &[u8],
    format: Format,
    gzip: bool,
    max_bytes: usize,
) -> Result<Vec<DecodedResource>, BodyError> {
    let body = plain_body(body, gzip, max_bytes)?;
    let req = decode_traces(&body, format).map_err(|_| BodyError::Invalid)?;
    Ok(resource_batches(req)
        .into_iter()
        .map(|b| DecodedResource {
            service_name: b.service_name,
            spans: b.spans,
        })
        .collect())
}
