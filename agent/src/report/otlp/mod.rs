//! Findings and metrics over OTLP to any backend (gRPC or HTTP/protobuf), configured by the
//! standard `OTEL_EXPORTER_OTLP_*` variables and `--otlp-endpoint`.
//!
//! Each finding becomes a LogRecord (event `tracegap.finding`), sent when raised and again with
//! its new count at most every `--report-interval`. Metrics cover requests by propagation,
//! findings by kind and the agent's own health.
//!
//! Export never blocks capture: records go to the SDK's batch processor (a bounded queue that
//! drops when full, exported from an SDK thread), metrics are aggregated in memory and pushed
//! by the SDK's periodic reader thread. A slow or down backend costs those threads time and
//! shows up as `tracegap.export.log_records{outcome="failed"}`, never as a stall here.
//!
//! Layout: `config` (env/CLI), `record` (finding → LogRecord content), `limiter` (re-send
//! interval), `metrics` (snapshot and instruments), `counting` (export outcome counters),
//! `http_client` (OTLP/HTTP on the agent's runtime).

mod annotations;
mod config;
mod counting;
mod http_client;
mod limiter;
mod metrics;
mod record;

use std::{
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use opentelemetry::{
    logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _},
    metrics::MeterProvider as _,
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    logs::{SdkLogger, SdkLoggerProvider},
    metrics::SdkMeterProvider,
    Resource,
};

pub use self::{
    annotations::{span as annotation_span, span_name, AnnotationExporter, AnnotationStats},
    config::{ExportConfig, Protocol},
    counting::ExportStats,
    metrics::ring_lag_ms,
    record::EVENT_NAME,
};
use self::{counting::Counting, limiter::Limiter, metrics::Instruments};
use crate::{findings::Finding, snapshot::Snapshot};

/// Longest wait for the last export at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-request export timeout unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise (for HTTP the
/// transport enforces it; gRPC gets it from the SDK).
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={value:?} is not supported (use grpc or http/protobuf)")]
    Protocol { value: String },
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        endpoint: String,
        reason: &'static str,
    },
    #[error("the OTLP exporter must be created inside the tokio runtime")]
    NoRuntime,
    #[error("invalid CA certificate bundle {path}")]
    Certificate {
        path: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("building the OTLP/HTTP client failed")]
    HttpClient {
        #[source]
        source: reqwest::Error,
    },
    #[error("building the OTLP {signal} exporter failed")]
    Build {
        signal: &'static str,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

pub struct FindingsExporter {
    logs: SdkLoggerProvider,
    logger: SdkLogger,
    meters: SdkMeterProvider,
    instruments: Instruments,
    limiter: Limiter,
    stats: Arc<ExportStats>,
    emitted: u64,
    /// `--path-template`: identifiers in `url.path` and the body become `{id}`.
    path_template: bool,
}

impl FindingsExporter {
    /// `None` (said once in the log) when neither `cli_endpoint` nor the environment names an
    /// endpoint. Must be called inside the tokio runtime.
    pub fn from_env(
        cli_endpoint: Option<&str>,
        report_interval: Duration,
    ) -> Result<Option<Self>, ExportError> {
        let env = |k: &str| std::env::var(k).ok();
        let Some(config) = ExportConfig::resolve(cli_endpoint, env)? else {
            log::info!(
                "OTLP export of findings is off: no --otlp-endpoint or OTEL_EXPORTER_OTLP_ENDPOINT"
            );
            return Ok(None);
        };
        let exporter = Self::new(&config, resource(env), report_interval)?;
        log::info!(
            "exporting findings and metrics over OTLP {} to {} (findings re-sent at most every {})",
            config.protocol.as_str(),
            config.described,
            humantime::format_duration(report_interval)
        );
        Ok(Some(exporter))
    }

    pub fn new(
        config: &ExportConfig,
        resource: Resource,
        report_interval: Duration,
    ) -> Result<Self, ExportError> {
        let stats = Arc::new(ExportStats::default());
        let (log_exporter, metric_exporter) = build_exporters(config)?;
        let logs = SdkLoggerProvider::builder()
            .with_resource(resource.clone())
            .with_batch_exporter(Counting::new(log_exporter, Arc::clone(&stats)))
            .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(resource)
            .with_periodic_exporter(Counting::new(metric_exporter, Arc::clone(&stats)))
            .build();
        let scope = || {
            opentelemetry::InstrumentationScope::builder("tracegap")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build()
        };
        let logger = logs.logger_with_scope(scope());
        let instruments = Instruments::new(&meters.meter_with_scope(scope()));
        Ok(Self {
            logs,
            logger,
            meters,
            instruments,
            limiter: Limiter::new(report_interval),
            stats,
            emitted: 0,
            path_template: true,
        })
    }

    /// Whether paths are templated (`crate::report::path_template`) before export; on by
    /// default.
    #[must_use]
    pub fn with_path_template(mut self, on: bool) -> Self {
        self.path_template = on;
        self
    }

    /// Offers a changed finding: sent now if new or its interval has passed, else kept and sent
    /// by a later [`FindingsExporter::metrics`] call. `extra`: attributes such as `k8s.*`.
    pub fn finding(&mut self, f: &Finding, extra: &[(&'static str, String)]) {
        if self.limiter.offer(f, extra, Instant::now()) {
            self.emit(f, extra);
        }
    }

    /// Takes a tick's snapshot: offers the findings that changed (with their pod's `k8s.*`
    /// attributes), sends kept findings whose interval has passed, and records the metrics.
    pub fn offer(&mut self, snapshot: &Snapshot) {
        for f in &snapshot.changed {
            self.finding(f, &f.subject.k8s.clone());
        }
        self.metrics(snapshot);
    }

    /// Records a cumulative snapshot (call about every second); also sends kept findings whose
    /// interval has passed.
    pub fn metrics(&mut self, snapshot: &Snapshot) {
        for (f, extra) in self.limiter.due(Instant::now(), false) {
            self.emit(&f, &extra);
        }
        self.instruments.record(snapshot, &self.stats);
    }

    pub fn stats(&self) -> &ExportStats {
        &self.stats
    }

    fn emit(&mut self, f: &Finding, extra: &[(&'static str, String)]) {
        let templated;
        let f = if self.path_template {
            templated = record::with_templated_path(f);
            &templated
        } else {
            f
        };
        let mut rec = self.logger.create_log_record();
        rec.set_event_name(EVENT_NAME);
        let (number, text) = record::severity(f.key.kind.severity());
        rec.set_severity_number(number);
        rec.set_severity_text(text);
        rec.set_timestamp(f.last_seen);
        rec.set_body(AnyValue::from(record::body(f)));
        for (k, v) in record::attributes(f, extra) {
            rec.add_attribute(k, v);
        }
        // Never blocks: a full queue drops the record (counted below as not exported).
        self.logger.emit(rec);
        self.emitted += 1;
    }

    /// Sends pending findings with their final counts and the last metrics, waiting at most
    /// [`SHUTDOWN_TIMEOUT`]; a backend that does not answer by then loses them (logged).
    pub async fn shutdown(mut self) {
        for (f, extra) in self.limiter.due(Instant::now(), true) {
            self.emit(&f, &extra);
        }
        let (logs, meters, stats, emitted) = (self.logs, self.meters, self.stats, self.emitted);
        // The SDK's shutdown blocks its caller until its threads finish; on a blocking thread it
        // leaves the runtime free, which the gRPC and HTTP transports run on.
        let flush = tokio::task::spawn_blocking(move || {
            (
                logs.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
                meters.shutdown_with_timeout(SHUTDOWN_TIMEOUT),
            )
        });
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1), flush).await {
            Ok(Ok((l, m))) => {
                for (signal, r) in [("logs", l), ("metrics", m)] {
                    if let Err(e) = r {
                        log::warn!("OTLP {signal} exporter shutdown: {e}");
                    }
                }
            }
            Ok(Err(e)) => log::warn!("OTLP exporter shutdown task failed: {e}"),
            Err(_elapsed) => log::warn!(
                "OTLP backend did not take the last export within {SHUTDOWN_TIMEOUT:?}: giving up"
            ),
        }
        let exported = stats.exported.load(Ordering::Relaxed);
        let failed = stats.failed.load(Ordering::Relaxed);
        log::info!(
            "OTLP export: {emitted} finding records, {exported} exported, {failed} failed, {} dropped or unsent; {} metric exports failed",
            emitted.saturating_sub(exported + failed),
            stats.metric_failures.load(Ordering::Relaxed)
        );
    }
}

/// The agent's resource: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (read by the SDK),
/// `service.name` defaulting to `tracegap`.
pub fn resource(env: impl Fn(&str) -> Option<String>) -> Resource {
    let builder = Resource::builder();
    if config::service_name_in_env(env) {
        builder.build()
    } else {
        builder
            .with_service_name(config::DEFAULT_SERVICE_NAME)
            .build()
    }
}

fn build_exporters(
    config: &ExportConfig,
) -> Result<
    (
        opentelemetry_otlp::LogExporter,
        opentelemetry_otlp::MetricExporter,
    ),
    ExportError,
> {
    let err = |signal| move |source| ExportError::Build { signal, source };
    match config.protocol {
        Protocol::Grpc => {
            let mut logs = opentelemetry_otlp::LogExporter::builder().with_tonic();
            let mut metrics = opentelemetry_otlp::MetricExporter::builder().with_tonic();
            if let Some(e) = config.signal_endpoint("logs") {
                logs = logs.with_endpoint(e);
            }
            if let Some(e) = config.signal_endpoint("metrics") {
                metrics = metrics.with_endpoint(e);
            }
            Ok((
                logs.build().map_err(err("logs"))?,
                metrics.build().map_err(err("metrics"))?,
            ))
        }
        Protocol::HttpProtobuf => {
            let client = http_client::RuntimeHttpClient::new(HTTP_TIMEOUT)?;
            let mut logs = opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client.clone());
            let mut metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_http_client(client);
            if let Some(e) = config.signal_endpoint("logs") {
                logs = logs.with_endpoint(e);
            }
            if let Some(e) = config.signal_endpoint("metrics") {
                metrics = metrics.with_endpoint(e);
            }
            Ok((
                logs.build().map_err(err("logs"))?,
                metrics.build().map_err(err("metrics"))?,
            ))
        }
    }
}
