//! Findings as spans in the traces they broke (`--trace-annotations`): each finding occurrence
//! the pipeline placed in a trace (`Snapshot::annotations`, see [`TracePlace`]) becomes one
//! INTERNAL span, exported once over OTLP to the traces endpoint, with the offending process
//! as its resource (`service.name`, `process.*`, `container.id`, `k8s.*`: as in the findings)
//! and `tracegap.annotation=true`:
//!
//! - `tracegap: broken_context`: in the inbound trace T, under the process's server span (or
//!   T's parent id as received), linked to the new trace the process started instead;
//! - `tracegap: missing_traceparent`: in T at the point the call went out without context;
//! - `tracegap: span never exported`: a placeholder with the missing span's own id, so the
//!   children that did arrive hang from it.
//!
//! Export never blocks the pipeline: batches go through a bounded queue to a task on the
//! runtime (full: dropped, counted), which exports them one resource at a time.

use std::{
    borrow::Cow,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use opentelemetry::{
    logs::AnyValue,
    trace::{Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
    InstrumentationScope, KeyValue, Value,
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    trace::{
        IdGenerator as _, RandomIdGenerator, SpanData, SpanEvents, SpanExporter as _, SpanLinks,
    },
    Resource,
};
use tokio::sync::mpsc;

use super::{http_client, record, ExportConfig, ExportError, Protocol, HTTP_TIMEOUT};
use crate::{
    findings::{Annotation, FindingKind, Severity},
    otlp::ANNOTATION_ATTRIBUTE,
    snapshot::Snapshot,
};

/// Snapshots' annotation batches waiting for the export task; past it they are dropped.
const QUEUE: usize = 64;
/// Longest wait for the last annotations at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The span name of a finding kind's annotation.
pub fn span_name(kind: FindingKind) -> &'static str {
    match kind {
        FindingKind::BrokenContext => "tracegap: broken_context",
        FindingKind::MissingTraceparent => "tracegap: missing_traceparent",
        FindingKind::UnexportedSpan => "tracegap: span never exported",
        FindingKind::UninstrumentedClient => "tracegap: uninstrumented_client",
        FindingKind::NonW3cPropagation => "tracegap: non_w3c_propagation",
        FindingKind::MalformedTraceparent => "tracegap: malformed_traceparent",
        FindingKind::SynchronousExport => "tracegap: synchronous_export",
        FindingKind::SdkNotWired => "tracegap: sdk_not_wired",
        FindingKind::OtelVersionSkew => "tracegap: otel_version_skew",
    }
}

/// Attributes of the offending process: the span's resource, not its attributes.
fn is_resource_attribute(key: &str) -> bool {
    matches!(
        key,
        "service.name"
            | "process.pid"
            | "process.executable.name"
            | "process.executable.path"
            | "container.id"
    ) || key.starts_with("k8s.")
}

fn value(v: AnyValue) -> Option<Value> {
    Some(match v {
        AnyValue::String(s) => Value::String(s),
        AnyValue::Int(i) => Value::I64(i),
        AnyValue::Boolean(b) => Value::Bool(b),
        AnyValue::Double(d) => Value::F64(d),
        _ => return None,
    })
}

/// One annotation as (resource attributes, span). `path_template`: as the findings' logs.
/// `new_span_id` gives the ids of new spans (the placeholder keeps the missing span's).
pub fn span(
    a: &Annotation,
    path_template: bool,
    new_span_id: impl FnOnce() -> [u8; 8],
) -> (Vec<KeyValue>, SpanData) {
    let f = if path_template {
        record::with_templated_path(&a.finding)
    } else {
        a.finding.clone()
    };
    let mut resource = Vec::new();
    let mut attributes = Vec::new();
    for (k, v) in record::attributes(&f, &f.subject.k8s) {
        let Some(v) = value(v) else { continue };
        let kv = KeyValue::new(k, v);
        if is_resource_attribute(kv.key.as_str()) {
            resource.push(kv);
        } else {
            attributes.push(kv);
        }
    }
    if !resource.iter().any(|kv| kv.key.as_str() == "service.name") {
        // The SDKs' convention for a process without a service name.
        resource.push(KeyValue::new(
            "service.name",
            format!("unknown_service:{}", f.subject.comm),
        ));
    }
    attributes.push(KeyValue::new(ANNOTATION_ATTRIBUTE, true));
    let p = &a.place;
    let span_id = p.span_id.unwrap_or_else(new_span_id);
    let links = p
        .link
        .map(|(trace_id, span_id)| {
            Link::new(
                SpanContext::new(
                    TraceId::from_bytes(trace_id),
                    SpanId::from_bytes(span_id),
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::default(),
                ),
                vec![KeyValue::new("tracegap.link", "new_trace")],
                0,
            )
        })
        .into_iter()
        .collect();
    let mut span_links = SpanLinks::default();
    span_links.links = links;
    let mut one = f.clone();
    one.count = 1;
    let status = match f.key.kind.severity() {
        Severity::Error => Status::error(one.sentence()),
        Severity::Warning | Severity::Info => Status::Unset,
    };
    let span = SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(p.trace_id),
            SpanId::from_bytes(span_id),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: p.parent_span_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: p.parent_span_id.is_some(),
        span_kind: SpanKind::Internal,
        name: Cow::Borrowed(span_name(f.key.kind)),
        start_time: p.start,
        end_time: p.end.max(p.start),
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: span_links,
        status,
        instrumentation_scope: InstrumentationScope::builder("tracegap")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    };
    (resource, span)
}

/// What became of the annotations handed to the exporter.
#[derive(Debug, Default)]
pub struct AnnotationStats {
    pub exported: AtomicU64,
    pub failed: AtomicU64,
    /// Dropped at the queue (the export task is behind).
    pub dropped: AtomicU64,
}

pub struct AnnotationExporter {
    tx: mpsc::Sender<Vec<Annotation>>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<AnnotationStats>,
}

impl AnnotationExporter {
    /// `None` when `switch` is off, or when it is not given and no traces endpoint is
    /// configured (`--otlp-endpoint`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`). `Some(true)` without an endpoint is an error.
    /// `path_template`: as the findings' logs. Must be called inside the tokio runtime.
    pub fn from_env(
        cli_endpoint: Option<&str>,
        switch: Option<bool>,
        path_template: bool,
    ) -> Result<Option<Self>, ExportError> {
        if switch == Some(false) {
            log::info!("trace annotations are off (--trace-annotations off)");
            return Ok(None);
        }
        let env = |k: &str| std::env::var(k).ok();
        let Some(config) = ExportConfig::resolve_traces(cli_endpoint, env)? else {
            if switch == Some(true) {
                return Err(ExportError::Endpoint {
                    endpoint: String::new(),
                    reason: "--trace-annotations on needs an OTLP traces endpoint (--otlp-endpoint, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT)",
                });
            }
            return Ok(None);
        };
        let exporter = Self::new(&config, path_template)?;
        log::info!(
            "exporting trace annotations over OTLP {} to {}",
            config.protocol.as_str(),
            config.described
        );
        Ok(Some(exporter))
    }

    pub fn new(config: &ExportConfig, path_template: bool) -> Result<Self, ExportError> {
        let exporter = build_exporter(config)?;
        let stats = Arc::new(AnnotationStats::default());
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(export_loop(exporter, rx, Arc::clone(&stats), path_template));
        Ok(Self { tx, task, stats })
    }

    /// Queues the snapshot's annotations; never waits.
    pub fn offer(&mut self, snapshot: &Snapshot) {
        if snapshot.annotations.is_empty() {
            return;
        }
        let n = snapshot.annotations.len() as u64;
        if self.tx.try_send(snapshot.annotations.clone()).is_err() {
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> &AnnotationStats {
        &self.stats
    }

    /// Exports what is queued, waiting at most [`SHUTDOWN_TIMEOUT`].
    pub async fn shutdown(self) {
        let Self { tx, task, stats } = self;
        drop(tx);
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await.is_err() {
            log::warn!(
                "OTLP backend did not take the last trace annotations within {SHUTDOWN_TIMEOUT:?}"
            );
        }
        log::info!(
            "trace annotations: {} exported, {} failed, {} dropped",
            stats.exported.load(Ordering::Relaxed),
            stats.failed.load(Ordering::Relaxed),
            stats.dropped.load(Ordering::Relaxed),
        );
    }
}

async fn export_loop(
    mut exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Vec<Annotation>>,
    stats: Arc<AnnotationStats>,
    path_template: bool,
) {
    let ids = RandomIdGenerator::default();
    while let Some(batch) = rx.recv().await {
        // One export per resource (process): the resource is the exporter's.
        let mut groups: Vec<(Vec<KeyValue>, Vec<SpanData>)> = Vec::new();
        for a in &batch {
            let (resource, span) = span(a, path_template, || ids.new_span_id().to_bytes());
            match groups.iter_mut().find(|(r, _)| *r == resource) {
                Some((_, spans)) => spans.push(span),
                None => groups.push((resource, vec![span])),
            }
        }
        for (resource, spans) in groups {
            exporter.set_resource(&Resource::builder_empty().with_attributes(resource).build());
            let n = spans.len() as u64;
            match exporter.export(spans).await {
                Ok(()) => stats.exported.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    log::debug!("exporting {n} trace annotations failed: {e}");
                    stats.failed.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
    }
    if let Err(e) = exporter.shutdown() {
        log::debug!("OTLP span exporter shutdown: {e}");
    }
}

fn build_exporter(config: &ExportConfig) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let err = |source| ExportError::Build {
        signal: "traces",
        source,
    };
    let endpoint = config.signal_endpoint("traces");
    match config.protocol {
        Protocol::Grpc => {
            let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build().map_err(err)
        }
        Protocol::HttpProtobuf => {
            let client = http_client::RuntimeHttpClient::new(HTTP_TIMEOUT)?;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build().map_err(err)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::SystemTime};

    use super::*;
    use crate::{
        findings::{Finding, FindingKey, Subject, TracePlace},
        model::Direction,
    };

    fn annotation(kind: FindingKind, place: TracePlace) -> Annotation {
        Annotation {
            finding: Finding {
                key: FindingKey {
                    kind,
                    pid: 4242,
                    direction: Direction::Outbound,
                    peer: Some("10.0.0.7:8080".parse().expect("addr")),
                    method: "GET".into(),
                    path: "/users/42".into(),
                    tls: false,
                    protocol: Default::default(),
                },
                subject: Subject {
                    comm: "python3".into(),
                    service_name: Some("checkout".into()),
                    k8s: vec![("k8s.pod.name", "web-0".into())],
                    ..Subject::default()
                },
                count: 3,
                first_seen: SystemTime::UNIX_EPOCH,
                last_seen: SystemTime::UNIX_EPOCH,
                evidence: BTreeMap::new(),
            },
            place,
        }
    }

    fn get<'a>(kvs: &'a [KeyValue], k: &str) -> Option<&'a Value> {
        kvs.iter()
            .find(|kv| kv.key.as_str() == k)
            .map(|kv| &kv.value)
    }

    #[test]
    fn broken_context_span() {
        let place = TracePlace {
            trace_id: [1; 16],
            span_id: None,
            parent_span_id: Some([0x20; 8]),
            link: Some(([2; 16], [0x31; 8])),
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
        };
        let (resource, s) = span(&annotation(FindingKind::BrokenContext, place), true, || {
            [7; 8]
        });
        assert_eq!(s.name, "tracegap: broken_context");
        assert_eq!(s.span_kind, SpanKind::Internal);
        assert_eq!(s.span_context.trace_id(), TraceId::from_bytes([1; 16]));
        assert_eq!(s.span_context.span_id(), SpanId::from_bytes([7; 8]));
        assert_eq!(s.parent_span_id, SpanId::from_bytes([0x20; 8]));
        assert_eq!(s.links.len(), 1);
        assert_eq!(
            s.links[0].span_context.trace_id(),
            TraceId::from_bytes([2; 16])
        );
        assert_eq!(
            get(&resource, "service.name"),
            Some(&Value::from("checkout"))
        );
        assert_eq!(get(&resource, "process.pid"), Some(&Value::I64(4242)));
        assert_eq!(get(&resource, "k8s.pod.name"), Some(&Value::from("web-0")));
        assert_eq!(get(&s.attributes, "service.name"), None);
        assert_eq!(
            get(&s.attributes, ANNOTATION_ATTRIBUTE),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            get(&s.attributes, "url.path"),
            Some(&Value::from("/users/{id}"))
        );
        assert!(matches!(s.status, Status::Error { .. }));
    }

    #[test]
    fn placeholder_keeps_the_missing_id() {
        let place = TracePlace {
            trace_id: [3; 16],
            span_id: Some([0x41; 8]),
            parent_span_id: None,
            link: None,
            start: SystemTime::UNIX_EPOCH,
            end: SystemTime::UNIX_EPOCH,
        };
        let mut a = annotation(FindingKind::UnexportedSpan, place);
        a.finding.subject.service_name = None;
        let (resource, s) = span(&a, false, || unreachable!("keeps its id"));
        assert_eq!(s.name, "tracegap: span never exported");
        assert_eq!(s.span_context.span_id(), SpanId::from_bytes([0x41; 8]));
        assert_eq!(s.parent_span_id, SpanId::INVALID);
        assert_eq!(
            get(&resource, "service.name"),
            Some(&Value::from("unknown_service:python3"))
        );
        assert_eq!(
            get(&s.attributes, "url.path"),
            Some(&Value::from("/users/42"))
        );
    }
}
