//! Finding kinds (defined once), their identity, and the store that groups and counts them.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    time::SystemTime,
};

use compact_str::CompactString;
use serde::Serialize;

pub use crate::attribute::Subject;
use crate::model::{otlp, Direction, Protocol};

/// The evidence entry that completes the sentence of a process-level finding.
pub const SUMMARY: &str = "summary";

/// Every kind of finding tracegap reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// An instrumented process sent a request with no trace context at all.
    MissingTraceparent,
    /// A process with no sign of instrumentation sent a request with no trace context.
    UninstrumentedClient,
    /// Only B3 or Jaeger context: a W3C-only hop downstream will start a new trace.
    NonW3cPropagation,
    /// A `traceparent` that W3C propagators reject.
    MalformedTraceparent,
    /// Requests sent while handling a traced request started a new trace.
    BrokenContext,
    /// The span named as parent in an outbound `traceparent` was never exported.
    UnexportedSpan,
    /// One export request per span at a sustained rate (no batching).
    SynchronousExport,
    /// A process that links the OpenTelemetry SDK and an OTLP trace exporter sent requests
    /// without trace context and exported no span within the grace window: the SDK is there,
    /// not wired (e.g. `otel.SetTracerProvider` never called).
    SdkNotWired,
    /// Linked OpenTelemetry Go modules below the version the build's own requirements
    /// selected (a `replace` pinned them lower): code no module's go.mod vouches for.
    OtelVersionSkew,
}

impl FindingKind {
    pub const ALL: [Self; 9] = [
        Self::MissingTraceparent,
        Self::UninstrumentedClient,
        Self::NonW3cPropagation,
        Self::MalformedTraceparent,
        Self::BrokenContext,
        Self::UnexportedSpan,
        Self::SynchronousExport,
        Self::SdkNotWired,
        Self::OtelVersionSkew,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingTraceparent => "missing_traceparent",
            Self::UninstrumentedClient => "uninstrumented_client",
            Self::NonW3cPropagation => "non_w3c_propagation",
            Self::MalformedTraceparent => "malformed_traceparent",
            Self::BrokenContext => "broken_context",
            Self::UnexportedSpan => "unexported_span",
            Self::SynchronousExport => "synchronous_export",
            Self::SdkNotWired => "sdk_not_wired",
            Self::OtelVersionSkew => "otel_version_skew",
        }
    }

    /// About the process as a whole, not a request: no peer, method or path.
    pub fn is_process_level(self) -> bool {
        matches!(self, Self::OtelVersionSkew)
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::MissingTraceparent
            | Self::MalformedTraceparent
            | Self::BrokenContext
            | Self::UnexportedSpan
            | Self::SdkNotWired => Severity::Error,
            Self::NonW3cPropagation | Self::SynchronousExport | Self::OtelVersionSkew => {
                Severity::Warning
            }
            Self::UninstrumentedClient => Severity::Info,
        }
    }

    /// The end of a sentence "<who> sent N <method> <path> requests to <peer> ...".
    pub fn describe(self) -> &'static str {
        match self {
            Self::MissingTraceparent => "without traceparent",
            Self::UninstrumentedClient => "without trace context (process not instrumented)",
            Self::NonW3cPropagation => "with only B3/Jaeger trace context, no W3C traceparent",
            Self::MalformedTraceparent => "with a malformed traceparent",
            Self::BrokenContext => "that started a new trace while handling a traced request",
            Self::UnexportedSpan => "whose parent span was never exported",
            Self::SynchronousExport => "exporting one span per request (no batching)",
            Self::SdkNotWired => {
                "without trace context, and exported no span: the OpenTelemetry SDK and an OTLP \
                 exporter are linked but not wired (no global TracerProvider?)"
            }
            Self::OtelVersionSkew => {
                "links OpenTelemetry modules below the versions its build requires"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Info => "info",
        }
    }
}

/// What makes two findings the same one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FindingKey {
    pub kind: FindingKind,
    pub pid: u32,
    pub direction: Direction,
    pub peer: Option<SocketAddr>,
    pub method: CompactString,
    pub path: CompactString,
    /// Seen as plaintext inside a TLS library (the request went out encrypted).
    pub tls: bool,
    pub protocol: Protocol,
}

/// Where a request went: the finding identity besides kind, process and direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub peer: Option<SocketAddr>,
    pub method: CompactString,
    pub path: CompactString,
    pub protocol: Protocol,
}

impl Target {
    /// No request: a finding about the process itself ([`FindingKind::is_process_level`]).
    pub fn process() -> Self {
        Self {
            peer: None,
            method: CompactString::default(),
            path: CompactString::default(),
            protocol: Protocol::Http1,
        }
    }

    /// A process's trace export request, as seen by the receiver (no peer: it came to us).
    pub fn trace_export(protocol: Protocol) -> Self {
        Self {
            peer: None,
            method: "POST".into(),
            path: otlp::Signal::Traces.path(protocol).into(),
            protocol,
        }
    }
}

impl FindingKey {
    /// The one place a finding's identity is made.
    pub fn new(
        kind: FindingKind,
        pid: u32,
        direction: Direction,
        target: &Target,
        tls: bool,
    ) -> Self {
        Self {
            kind,
            pid,
            direction,
            peer: target.peer,
            method: target.method.clone(),
            path: target.path.clone(),
            tls,
            protocol: target.protocol,
        }
    }
}

/// One finding: its identity, the process it is about, how often and when, and its evidence.
#[derive(Clone, Debug)]
pub struct Finding {
    pub key: FindingKey,
    pub subject: Subject,
    pub count: u64,
    pub first_seen: SystemTime,
    pub last_seen: SystemTime,
    /// Trace-context headers and rule facts only; never other header values.
    pub evidence: BTreeMap<String, String>,
}

impl Finding {
    /// "checkout (pid 4242) sent 37 GET /api/cart requests to 10.0.0.7:8080 without
    /// traceparent": the finding in one sentence (OTLP log body, CI reports).
    pub fn sentence(&self) -> String {
        let who = self
            .subject
            .service_name
            .as_deref()
            .unwrap_or(self.subject.comm.as_str());
        if self.key.kind.is_process_level() {
            // "checkout (pid 42) links OpenTelemetry modules below the versions its build
            // requires: go.opentelemetry.io/otel/sdk v1.46.0 (requires v1.47.0)"
            return format!(
                "{who} (pid {pid}) {what}: {details}",
                pid = self.key.pid,
                what = self.key.kind.describe(),
                details = self.evidence.get(SUMMARY).map_or("", String::as_str),
            );
        }
        let (verb, prep) = match self.key.direction {
            Direction::Outbound => ("sent", "to"),
            Direction::Inbound => ("received", "from"),
        };
        let peer = self
            .key
            .peer
            .map_or_else(|| "an unknown peer".to_owned(), |p| p.to_string());
        let noun = if self.count == 1 {
            "request"
        } else {
            "requests"
        };
        format!(
            "{who} (pid {pid}) {verb} {count} {method} {path} {noun} {prep} {peer} {what}",
            pid = self.key.pid,
            count = self.count,
            method = self.key.method,
            path = self.key.path,
            what = self.key.kind.describe(),
        )
    }
}

/// Where one occurrence of a finding goes in a trace: the span tracegap adds to the broken
/// trace (`--trace-annotations`). Set by the rule that raised the finding, from the contexts
/// and spans it judged; the OTLP report turns it into a span as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TracePlace {
    /// The trace the span goes in: the inbound trace T being handled (`broken_context`,
    /// `missing_traceparent`), or the missing span's own trace (`unexported_span`).
    pub trace_id: [u8; 16],
    /// The span's own id: the missing span's (`unexported_span`, a placeholder its orphaned
    /// children hang from); `None`: a new id.
    pub span_id: Option<[u8; 8]>,
    /// Its parent: the process's server span for T when it exported one, else T's parent id as
    /// received; `None`: a root.
    pub parent_span_id: Option<[u8; 8]>,
    /// `broken_context`: the context of the new trace the process started instead (trace id,
    /// span id of the outbound `traceparent`).
    pub link: Option<([u8; 16], [u8; 8])>,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// One finding occurrence placed in its trace: what the snapshot publishes for the OTLP trace
/// export. `finding` is the finding as recorded with that occurrence.
#[derive(Clone, Debug)]
pub struct Annotation {
    pub finding: Finding,
    pub place: TracePlace,
}

/// Bound on distinct findings kept; past it the least recently seen one is evicted (counted).
pub const MAX_FINDINGS: usize = 10_000;

#[derive(Default)]
pub struct FindingStore {
    findings: HashMap<FindingKey, Finding>,
    /// Keys whose count changed since the last [`FindingStore::take_changed`].
    changed: Vec<FindingKey>,
    pub evicted: u64,
}

impl FindingStore {
    /// Counts one occurrence; returns true when the finding is new.
    pub fn record(
        &mut self,
        key: FindingKey,
        subject: &Subject,
        evidence: BTreeMap<String, String>,
        at: SystemTime,
    ) -> bool {
        self.record_many(key, subject, evidence, at, 1)
    }

    /// Counts `count` occurrences at `at` (requests held for a verdict and settled together).
    pub fn record_many(
        &mut self,
        key: FindingKey,
        subject: &Subject,
        evidence: BTreeMap<String, String>,
        at: SystemTime,
        count: u64,
    ) -> bool {
        if let Some(f) = self.findings.get_mut(&key) {
            f.count += count;
            f.first_seen = f.first_seen.min(at);
            f.last_seen = f.last_seen.max(at);
            f.evidence = evidence;
            if f.subject.service_name.is_none() {
                f.subject.service_name.clone_from(&subject.service_name);
            }
            if !self.changed.contains(&key) {
                self.changed.push(key);
            }
            return false;
        }
        if self.findings.len() >= MAX_FINDINGS {
            self.evict_oldest();
        }
        self.changed.push(key.clone());
        self.findings.insert(
            key.clone(),
            Finding {
                key,
                subject: subject.clone(),
                count,
                first_seen: at,
                last_seen: at,
                evidence,
            },
        );
        true
    }

    fn evict_oldest(&mut self) {
        if let Some(key) = self
            .findings
            .values()
            .min_by_key(|f| f.last_seen)
            .map(|f| f.key.clone())
        {
            self.findings.remove(&key);
            self.changed.retain(|k| k != &key);
            self.evicted += 1;
        }
    }

    /// Findings changed since the last call, in the order they changed.
    pub fn take_changed(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .filter_map(|k| self.findings.get(&k).cloned())
            .collect()
    }

    pub fn get(&self, key: &FindingKey) -> Option<&Finding> {
        self.findings.get(key)
    }

    pub fn all(&self) -> impl Iterator<Item = &Finding> {
        self.findings.values()
    }

    pub fn len(&self) -> usize {
        self.findings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    pub fn count_by_kind(&self) -> BTreeMap<FindingKind, u64> {
        let mut counts = BTreeMap::new();
        for f in self.findings.values() {
            *counts.entry(f.key.kind).or_default() += 1;
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, path: &str) -> FindingKey {
        let target = Target {
            peer: Some("127.0.0.1:8080".parse().expect("addr")),
            method: "GET".into(),
            path: path.into(),
            protocol: Protocol::Http1,
        };
        FindingKey::new(
            FindingKind::MissingTraceparent,
            pid,
            Direction::Outbound,
            &target,
            false,
        )
    }

    #[test]
    fn same_identity_is_counted_not_duplicated() {
        let mut store = FindingStore::default();
        let s = Subject::default();
        let t = SystemTime::UNIX_EPOCH;
        assert!(store.record(key(1, "/a"), &s, BTreeMap::new(), t));
        assert!(!store.record(key(1, "/a"), &s, BTreeMap::new(), t));
        assert!(store.record(key(1, "/b"), &s, BTreeMap::new(), t));
        let changed = store.take_changed();
        assert_eq!(changed.len(), 2);
        assert_eq!(changed[0].count, 2);
        assert!(store.take_changed().is_empty());
    }

    #[test]
    fn store_is_bounded() {
        let mut store = FindingStore::default();
        let s = Subject::default();
        for i in 0..(MAX_FINDINGS as u32 + 10) {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(i));
            store.record(key(i, "/x"), &s, BTreeMap::new(), at);
        }
        assert_eq!(store.len(), MAX_FINDINGS);
        assert_eq!(store.evicted, 10);
    }

    #[test]
    fn every_kind_has_a_distinct_name() {
        let names: std::collections::HashSet<_> =
            FindingKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), FindingKind::ALL.len());
    }
}
