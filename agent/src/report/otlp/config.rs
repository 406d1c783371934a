//! Where and how to export: the standard `OTEL_EXPORTER_OTLP_*` variables, `--otlp-endpoint`
//! first. Pure over an environment lookup so it is testable without touching the process env.

use super::ExportError;
use crate::model::otel_env::{
    service_name_from_resource_attributes, RESOURCE_ATTRIBUTES as OTEL_RESOURCE_ATTRIBUTES,
    SERVICE_NAME as OTEL_SERVICE_NAME,
};

pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// The agent's own `service.name` when neither variable names one.
pub const DEFAULT_SERVICE_NAME: &str = "tracegap";

/// Signal-specific endpoints the SDK honours on its own (used as given, no `/v1/<signal>`).
const SIGNAL_ENDPOINTS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportConfig {
    /// `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: a base URL. `None` when only
    /// signal-specific variables are set (the SDK reads those itself).
    pub base_endpoint: Option<String>,
    pub protocol: Protocol,
    /// What to say in the log line: the endpoint, or the variable that configured it.
    pub described: String,
}

impl ExportConfig {
    /// `None` when nothing names an endpoint: export is off.
    pub fn resolve(
        cli_endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ExportError> {
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let protocol = protocol(env)?;
        let cli = cli_endpoint.map(str::trim).filter(|e| !e.is_empty());
        let (base_endpoint, described) = if let Some(e) = cli {
            (Some(e.to_owned()), e.to_owned())
        } else if let Some(e) = env(OTEL_EXPORTER_OTLP_ENDPOINT) {
            (Some(e.clone()), e)
        } else if let Some(var) = SIGNAL_ENDPOINTS.iter().find(|v| env(v).is_some()) {
            (None, (*var).to_owned())
        } else {
            return Ok(None);
        };
        if let Some(e) = &base_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(ExportError::Endpoint {
                    endpoint: e.clone(),
                    reason: "must start with http:// or https://",
                });
            }
        }
        Ok(Some(Self {
            base_endpoint,
            protocol,
            described,
        }))
    }

    /// Where trace annotations go: `--otlp-endpoint`, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
    /// (left to the SDK, used as given), else `OTEL_EXPORTER_OTLP_ENDPOINT`. `None`: no traces
    /// endpoint.
    pub fn resolve_traces(
        cli_endpoint: Option<&str>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ExportError> {
        let cli_given = cli_endpoint.is_some_and(|e| !e.trim().is_empty());
        let traces_env = env(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).filter(|v| !v.trim().is_empty());
        // Only the base endpoint counts for traces, never the logs/metrics ones.
        let base = |k: &str| {
            if SIGNAL_ENDPOINTS.contains(&k) {
                None
            } else {
                env(k)
            }
        };
        if !cli_given && traces_env.is_some() {
            return Ok(Some(Self {
                base_endpoint: None,
                protocol: protocol(&env)?,
                described: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT.to_owned(),
            }));
        }
        Self::resolve(cli_endpoint, base)
    }

    /// The URL for one signal (`logs`, `metrics`, `traces`), or `None` to let the SDK read the
    /// env.
    /// OTLP/HTTP appends `/v1/<signal>` to a base endpoint; gRPC uses it as is.
    pub fn signal_endpoint(&self, signal: &str) -> Option<String> {
        let base = self.base_endpoint.as_deref()?;
        Some(match self.protocol {
            Protocol::Grpc => base.to_owned(),
            Protocol::HttpProtobuf => format!("{}/v1/{signal}", base.trim_end_matches('/')),
        })
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`, `http/protobuf` when unset.
fn protocol(env: impl Fn(&str) -> Option<String>) -> Result<Protocol, ExportError> {
    Ok(
        match env(OTEL_EXPORTER_OTLP_PROTOCOL)
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            // The spec's default; SDKs for other languages agree.
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(ExportError::Protocol {
                    value: other.to_owned(),
                })
            }
        },
    )
}

/// Whether the environment already names the agent's `service.name`.
pub fn service_name_in_env(env: impl Fn(&str) -> Option<String>) -> bool {
    env(OTEL_SERVICE_NAME).is_some_and(|v| !v.trim().is_empty())
        || env(OTEL_RESOURCE_ATTRIBUTES)
            .as_deref()
            .and_then(service_name_from_resource_attributes)
            .is_some()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(ExportConfig::resolve(None, env(&[])).expect("ok"), None);
        assert_eq!(
            ExportConfig::resolve(Some(" "), env(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "")]))
                .expect("ok"),
            None
        );
    }

    #[test]
    fn cli_wins_and_http_appends_the_signal_path() {
        let c = ExportConfig::resolve(
            Some("http://cli:4318/"),
            env(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://env:4318")]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(
            c.signal_endpoint("logs").as_deref(),
            Some("http://cli:4318/v1/logs")
        );
    }

    #[test]
    fn grpc_uses_the_endpoint_as_is() {
        let c = ExportConfig::resolve(
            None,
            env(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://env:4317"),
                (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            ]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(
            c.signal_endpoint("metrics").as_deref(),
            Some("http://env:4317")
        );
    }

    #[test]
    fn signal_only_env_is_left_to_the_sdk() {
        let c = ExportConfig::resolve(
            None,
            env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://x:4318/v1/logs")]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(c.signal_endpoint("logs"), None);
    }

    #[test]
    fn bad_values_are_errors() {
        assert!(ExportConfig::resolve(
            Some("http://x"),
            env(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "http/json")])
        )
        .is_err());
        assert!(ExportConfig::resolve(Some("collector:4317"), env(&[])).is_err());
    }

    #[test]
    fn traces_endpoint_sources() {
        assert_eq!(
            ExportConfig::resolve_traces(
                None,
                env(&[("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://x:4318/v1/logs")])
            )
            .expect("ok"),
            None,
            "a logs endpoint is no traces endpoint"
        );
        let c = ExportConfig::resolve_traces(
            None,
            env(&[
                (OTEL_EXPORTER_OTLP_ENDPOINT, "http://env:4318"),
                (
                    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                    "http://t:4318/v1/traces",
                ),
            ]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(
            c.signal_endpoint("traces"),
            None,
            "the SDK reads the variable"
        );
        let c = ExportConfig::resolve_traces(
            Some("http://cli:4318"),
            env(&[(
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "http://t:4318/v1/traces",
            )]),
        )
        .expect("ok")
        .expect("on");
        assert_eq!(
            c.signal_endpoint("traces").as_deref(),
            Some("http://cli:4318/v1/traces")
        );
    }

    #[test]
    fn service_name_sources() {
        assert!(!service_name_in_env(env(&[])));
        assert!(service_name_in_env(env(&[(OTEL_SERVICE_NAME, "a")])));
        assert!(service_name_in_env(env(&[(
            OTEL_RESOURCE_ATTRIBUTES,
            "x=1,service.name=b"
        )])));
    }
}
