//! The OpenTelemetry modules of a Go executable, from its build information: every module under
//! `go.opentelemetry.io/` the build linked, with the version the build selected, its
//! replacement if any, and what it is for.

use super::{Component, Role};
use crate::buildinfo::BuildInfo;

/// Every OpenTelemetry Go module lives under this path (API, SDK, exporters, contrib, proto).
const OTEL_PREFIX: &str = "go.opentelemetry.io/";
/// The trace SDK (`sdk/trace`) is a package of this module (so are `sdk/resource` and
/// `sdk/instrumentation`, which the metric and log SDKs link too: only an OTLP trace exporter
/// says the trace SDK is in use, see [`Role::OtlpTraceExporter`]).
const SDK: &str = "go.opentelemetry.io/otel/sdk";
/// The OTLP trace exporters (they implement `sdk/trace.SpanExporter`, so they link the trace
/// SDK). Others (stdout, zipkin) export where the agent does not look for span exports.
const OTLP_TRACE_EXPORTERS: [&str; 2] = [
    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc",
];
/// The API modules: what instrumentation calls, a no-op until an SDK is registered.
const API: [&str; 4] = [
    "go.opentelemetry.io/otel",
    "go.opentelemetry.io/otel/trace",
    "go.opentelemetry.io/otel/metric",
    "go.opentelemetry.io/otel/log",
];

/// The OpenTelemetry modules of `info`, in its order.
pub fn otel_modules(info: &BuildInfo) -> Vec<Component> {
    info.deps
        .iter()
        .filter(|m| m.path.starts_with(OTEL_PREFIX))
        .map(|m| Component {
            name: m.path.clone(),
            version: (!m.version.is_empty()).then(|| m.version.clone()),
            replaced: m.replace.clone(),
            role: role(&m.path),
        })
        .collect()
}

fn role(path: &str) -> Role {
    if path == SDK {
        Role::Sdk
    } else if OTLP_TRACE_EXPORTERS.contains(&path) {
        Role::OtlpTraceExporter
    } else if API.contains(&path) {
        Role::Api
    } else if path.starts_with("go.opentelemetry.io/otel/exporters/") {
        Role::OtherExporter
    } else if path.starts_with("go.opentelemetry.io/contrib/instrumentation/") {
        Role::Instrumentation
    } else {
        Role::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buildinfo::{Module, Replacement};

    fn dep(path: &str, version: &str) -> Module {
        Module {
            path: path.into(),
            version: version.into(),
            replace: None,
        }
    }

    #[test]
    fn only_opentelemetry_modules_with_their_roles() {
        let mut sdk = dep(SDK, "v1.47.0");
        sdk.replace = Some(Replacement::Module {
            path: SDK.into(),
            version: "v1.46.0".into(),
        });
        let info = BuildInfo {
            go_version: "go1.26.8".into(),
            main: Some(dep("tracegap.dev/shop", "(devel)")),
            deps: vec![
                dep("github.com/go-logr/logr", "v1.4.4"),
                dep("go.opentelemetry.io/auto/sdk", "v1.2.1"),
                dep(
                    "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp",
                    "v0.72.0",
                ),
                dep("go.opentelemetry.io/otel", "v1.47.0"),
                dep(
                    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
                    "v1.47.0",
                ),
                dep(
                    "go.opentelemetry.io/otel/exporters/stdout/stdouttrace",
                    "v1.47.0",
                ),
                sdk,
                dep("go.opentelemetry.io/otel/sdk/metric", "v1.47.0"),
            ],
            deps_dropped: 0,
        };
        let modules = otel_modules(&info);
        let roles: Vec<(&str, Role)> = modules
            .iter()
            .map(|c| (c.name.rsplit('/').next().unwrap_or_default(), c.role))
            .collect();
        assert_eq!(
            roles,
            [
                // go.opentelemetry.io/auto/sdk is the API's hook for auto-instrumentation,
                // not the SDK.
                ("sdk", Role::Other),
                ("otelhttp", Role::Instrumentation),
                ("otel", Role::Api),
                ("otlptracehttp", Role::OtlpTraceExporter),
                ("stdouttrace", Role::OtherExporter),
                ("sdk", Role::Sdk),
                ("metric", Role::Other),
            ]
        );
        assert_eq!(
            modules[5].replaced,
            Some(Replacement::Module {
                path: SDK.into(),
                version: "v1.46.0".into()
            })
        );
    }
}
