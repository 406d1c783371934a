//! Command line.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A live table per process, refreshed every second.
    Table,
    /// One JSON object per line: findings (re-printed when their count changes), coverage and counters.
    Json,
}

/// tracegap: finds where distributed traces break, from the host, without touching applications.
#[derive(Debug, Parser)]
#[command(name = "tracegap", version)]
pub struct Args {
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub output: Option<Output>,

    /// Request bytes captured per syscall (at most 4096).
    #[arg(long, default_value_t = agent_common::CAPTURE_CAP_DEFAULT,
          value_parser = clap::value_parser!(u32).range(16..=agent_common::CAPTURE_CAP_MAX as i64))]
    pub capture_bytes: u32,

    /// Ring buffer size in bytes (a power of two, a multiple of the page size).
    #[arg(long, default_value_t = agent_common::RING_BUF_BYTES_DEFAULT, value_parser = parse_ring_bytes)]
    pub ring_buffer_bytes: u32,

    /// OTLP/gRPC receiver address for the spans applications export ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:4317", value_parser = parse_listen)]
    pub otlp_grpc_listen: Listen,

    /// OTLP/HTTP receiver address ("off" to disable).
    #[arg(long, default_value = "127.0.0.1:4318", value_parser = parse_listen)]
    pub otlp_http_listen: Listen,

    /// Forward every OTLP export request unchanged to this collector (e.g. http://collector:4318).
    #[arg(long)]
    pub forward_to: Option<String>,

    /// How long to wait for the span behind an outbound traceparent before calling it unexported.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub span_grace: Duration,

    /// Shortest interval between two OTLP exports of the same finding (a finding is exported
    /// when raised, then re-sent with its new count at most this often).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,

    /// OTLP endpoint for findings and metrics (overrides OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,

    /// Replace identifiers in URL paths (numbers, UUIDs, long hex) with `{id}` in the OTLP
    /// export of findings. The local JSON and table output always keep raw paths.
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub path_template: Switch,

    /// Largest OTLP message the receivers accept, in bytes (after decompression too); larger
    /// ones are answered 413 / RESOURCE_EXHAUSTED and counted.
    #[arg(long, default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub otlp_max_message_bytes: u64,

    /// Open connections over both OTLP receivers; more are closed at accept and counted.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub otlp_max_connections: u64,

    /// A new OTLP connection must send its first byte, and an HTTP request its headers, within
    /// this (slow clients are closed and counted).
    #[arg(long, default_value = "10s", value_parser = parse_secs)]
    pub otlp_header_timeout: Duration,

    /// An OTLP/HTTP request body must arrive within this after its headers.
    #[arg(long, default_value = "30s", value_parser = parse_secs)]
    pub otlp_body_timeout: Duration,

    /// Capture HTTPS plaintext with uprobes in OpenSSL and Go's crypto/tls ("off": no TLS
    /// uprobes at all; HTTPS requests are then not seen).
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub tls: Switch,

    /// Stop after this long (for scripts and benchmarks).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
}

/// `on` or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl Switch {
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

/// A duration of whole seconds, at least one (the receiver's timeouts count seconds).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.as_secs() == 0 || d.subsec_nanos() != 0 {
        return Err("must be a whole number of seconds, at least 1s".into());
    }
    Ok(d)
}

/// A listen address or `off`.
pub type Listen = Option<SocketAddr>;

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(None);
    }
    s.parse::<SocketAddr>()
        .map(Some)
        .map_err(|e| format!("{e}: expected ip:port or off"))
}

fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && n >= 4096 {
        Ok(n)
    } else {
        Err("must be a power of two of at least 4096".into())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::Args;
    use crate::model::otlp;

    /// The receivers listen where SDKs export by default, on loopback only.
    #[test]
    fn receiver_defaults_are_the_otlp_ports_on_loopback() {
        let args = Args::parse_from(["tracegap"]);
        let grpc = args.otlp_grpc_listen.expect("gRPC receiver on by default");
        let http = args.otlp_http_listen.expect("HTTP receiver on by default");
        assert_eq!(grpc.port(), otlp::GRPC_PORT);
        assert_eq!(http.port(), otlp::HTTP_PORT);
        assert!(grpc.ip().is_loopback() && http.ip().is_loopback());
    }
}
