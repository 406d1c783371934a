//! The ground floor: facts every stage shares, each defined once. Nothing here imports another
//! module of the agent.

use agent_common::Counter;
use serde::Serialize;

/// Which way a request went, seen from the process that made the syscall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The process sent it: a request it makes as a client.
    Outbound,
    /// The process received it: a request it serves.
    Inbound,
}

impl Direction {
    /// From the kernel's `agent_common::direction` value.
    pub fn from_kernel(value: u8) -> Option<Self> {
        match value {
            agent_common::direction::OUTBOUND => Some(Self::Outbound),
            agent_common::direction::INBOUND => Some(Self::Inbound),
            _ => None,
        }
    }
}

/// The protocol a request was made with (JSON `protocol`, OTLP `tracegap.protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 without a gRPC content type.
    H2,
    /// HTTP/2 with `content-type: application/grpc…`.
    Grpc,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http/1.1",
            Self::H2 => "h2",
            Self::Grpc => "grpc",
        }
    }
}

/// Processes the agent keeps state for, in each of its per-process tables (process cache,
/// request counts, trace state); past it the one with the least to lose is forgotten (counted).
pub const MAX_PROCESSES: usize = 16_384;

/// Tables keyed by pid (and fd), looked up several times per captured event. Pids are the
/// kernel's numbers, not input an attacker chooses, so the fast non-keyed Fx hash is safe here
/// (SipHash was 4–5 % of the agent's CPU under load).
pub type PidMap<K, V> = rustc_hash::FxHashMap<K, V>;
pub type PidSet = rustc_hash::FxHashSet<u32>;

/// First bytes of every HTTP/2 connection (RFC 9113, section 3.4).
pub const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// OTLP, as the SDKs and collectors speak it: ports, paths and services.
pub mod otlp {
    use super::Protocol;

    /// The OTLP/gRPC port: an HTTP/2 connection to it is a span export.
    pub const GRPC_PORT: u16 = 4317;
    /// The OTLP/HTTP port.
    pub const HTTP_PORT: u16 = 4318;
    /// The OTLP/gRPC services' path prefix.
    pub const GRPC_SERVICE_PREFIX: &str = "/opentelemetry.proto.collector.";

    /// The three OTLP signals.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum Signal {
        Traces,
        Metrics,
        Logs,
    }

    impl Signal {
        pub const ALL: [Self; 3] = [Self::Traces, Self::Metrics, Self::Logs];

        /// The OTLP/HTTP path of the signal.
        pub fn http_path(self) -> &'static str {
            match self {
                Self::Traces => "/v1/traces",
                Self::Metrics => "/v1/metrics",
                Self::Logs => "/v1/logs",
            }
        }

        /// The gRPC method of the signal's export service.
        pub fn grpc_path(self) -> &'static str {
            match self {
                Self::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                Self::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                Self::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            }
        }

        /// The signal whose OTLP/HTTP path is `path`.
        pub fn from_http_path(path: &str) -> Option<Self> {
            Self::ALL.into_iter().find(|s| s.http_path() == path)
        }

        /// The path an export of this signal is sent to over `protocol`.
        pub fn path(self, protocol: Protocol) -> &'static str {
            match protocol {
                Protocol::Http1 => self.http_path(),
                Protocol::H2 | Protocol::Grpc => self.grpc_path(),
            }
        }
    }

    /// An OTLP export request: `POST …/v1/traces` and friends (behind any path prefix), or a
    /// call to an OTLP gRPC service. A process's own telemetry, never judged for propagation.
    pub fn is_export(method: &str, path: &str, protocol: Protocol) -> bool {
        method == "POST"
            && match protocol {
                Protocol::Http1 => Signal::ALL.iter().any(|s| path.ends_with(s.http_path())),
                Protocol::H2 | Protocol::Grpc => path.starts_with(GRPC_SERVICE_PREFIX),
            }
    }
}

/// The OpenTelemetry SDK environment variables the agent reads of other processes.
pub mod otel_env {
    pub const SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
    pub const RESOURCE_ATTRIBUTES: &str = "OTEL_RESOURCE_ATTRIBUTES";
    /// Every SDK variable starts so: a process with one was set up for OpenTelemetry.
    pub const PREFIX: &str = "OTEL_";

    /// `service.name=x` in an `OTEL_RESOURCE_ATTRIBUTES` list (`k=v,k=v`, values percent-encoded).
    pub fn service_name_from_resource_attributes(attrs: &str) -> Option<String> {
        attrs.split(',').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k.trim() == "service.name" && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    }
}

/// The kernel's counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters([u64; Counter::COUNT]);

impl KernelCounters {
    pub fn from_values(values: [u64; Counter::COUNT]) -> Self {
        Self(values)
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.0.get(counter as usize).copied().unwrap_or(0)
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_exports_are_recognised_on_both_transports() {
        assert!(otlp::is_export("POST", "/v1/traces", Protocol::Http1));
        assert!(otlp::is_export("POST", "/otel/v1/logs", Protocol::Http1));
        assert!(!otlp::is_export("GET", "/v1/traces", Protocol::Http1));
        assert!(otlp::is_export(
            "POST",
            otlp::Signal::Traces.grpc_path(),
            Protocol::Grpc
        ));
        assert!(!otlp::is_export(
            "POST",
            "/demo.Greeter/SayHello",
            Protocol::Grpc
        ));
        for s in otlp::Signal::ALL {
            assert_eq!(otlp::Signal::from_http_path(s.http_path()), Some(s));
            assert!(s.grpc_path().starts_with(otlp::GRPC_SERVICE_PREFIX));
        }
    }

    #[test]
    fn service_name_from_attributes() {
        assert_eq!(
            otel_env::service_name_from_resource_attributes(
                "deployment.environment=prod,service.name=checkout"
            ),
            Some("checkout".into())
        );
        assert_eq!(
            otel_env::service_name_from_resource_attributes("service.name="),
            None
        );
        assert_eq!(otel_env::service_name_from_resource_attributes("a=b"), None);
    }

    #[test]
    fn directions_from_the_kernel() {
        assert_eq!(Direction::from_kernel(0), Some(Direction::Outbound));
        assert_eq!(Direction::from_kernel(1), Some(Direction::Inbound));
        assert_eq!(Direction::from_kernel(9), None);
    }
}
