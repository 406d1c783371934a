//! Command line: `tracegap [OPTIONS]` watches the host (live table or JSON lines);
//! `tracegap check [OPTIONS] -- COMMAND` is the CI mode.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A live table per process, refreshed every second.
    Table,
    /// One JSON object per line: findings (re-printed when their count changes), coverage and counters.
    Json,
}

/// tracegap: finds where distributed traces break, from the host, without touching applications.
#[derive(Debug, Parser)]
#[command(name = "tracegap", version, args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// CI mode: run COMMAND (a test suite, a script), follow its process tree, and fail when
    /// it breaks traces. Exit status: COMMAND's own when it failed, else 1 when a finding at or
    /// above --fail-on (or a coverage below --require-coverage) concerns the tree, else 0.
    Check(CheckArgs),
}

/// Watching the whole host until SIGINT/SIGTERM (the default).
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub output: Option<Output>,

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

    /// Add the findings to the traces they broke, as spans exported over OTLP (default: on
    /// when a traces endpoint is configured: --otlp-endpoint, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
    /// or OTEL_EXPORTER_OTLP_ENDPOINT).
    #[arg(long, value_enum)]
    pub trace_annotations: Option<Switch>,

    /// Shortest interval between two trace annotations of the same finding (the occurrences in
    /// between are counted as annotations_rate_limited, not annotated).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub trace_annotation_interval: Duration,

    /// Stop after this long (for scripts and benchmarks).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    #[command(flatten)]
    pub agent: AgentArgs,
}

/// `tracegap check [OPTIONS] -- COMMAND [ARGS...]`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Judge every process on the host, not only COMMAND and its descendants.
    #[arg(long)]
    pub all: bool,

    /// How long to wait, after COMMAND exits, for the span behind an outbound traceparent
    /// before calling it unexported (shorter than `tracegap`'s 30 s: test suites flush their
    /// exporters at exit).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub span_grace: Duration,

    /// The least severity that fails the check.
    #[arg(long, value_enum, default_value_t = FailOn::Error)]
    pub fail_on: FailOn,

    /// Fail when a service's propagation coverage (requests carrying W3C context, in percent)
    /// is below this.
    #[arg(long, value_parser = parse_percent)]
    pub require_coverage: Option<f64>,

    /// Write a JUnit XML report here (one test case per service and per finding).
    #[arg(long)]
    pub junit: Option<PathBuf>,

    /// Write a Markdown summary here (e.g. $GITHUB_STEP_SUMMARY).
    #[arg(long)]
    pub markdown: Option<PathBuf>,

    /// Write the summary, every finding and the counters as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,

    #[command(flatten)]
    pub agent: AgentArgs,

    /// The command to run and follow, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The least severity that fails a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
    Info,
}

/// What every mode attaches and listens with.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Request bytes captured per syscall (at most 4096).
    #[arg(long, default_value_t = agent_common::CAPTURE_CAP_DEFAULT,
          value_parser = clap::value_parser!(u32).range(16..=agent_common::CAPTURE_CAP_MAX as i64))]
    pub capture_bytes: u32,

    /// Overload guard: HTTP/1 requests each CPU captures per second before it samples one in
    /// 16 of the rest (counted as `sampled_out`, not judged). HTTP/2, gRPC and span exports
    /// are never sampled. 0: capture every request (the default).
    #[arg(long, default_value_t = 0)]
    pub max_capture_rate: u32,

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

    /// Where the span rules get the spans processes export: the agent's OTLP receiver, the
    /// exports read off the wire as they leave each process (to any collector), or both.
    #[arg(long, value_enum, default_value_t = SpanIntake::Both)]
    pub span_intake: SpanIntake,

    /// Largest export read off the wire, in bytes (one send, and one message before and after
    /// decompression); larger ones are counted and not used.
    #[arg(long, default_value_t = agent_common::EXPORT_MAX_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u32).range(4096..=(256 << 20)))]
    pub span_intake_max_bytes: u32,
}

/// Where the span rules get their spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SpanIntake {
    /// Only exports sent to the agent's OTLP receiver.
    Receiver,
    /// Only exports read off the wire (exports to the agent's receiver too).
    Wire,
    /// Both; an export to the agent's receiver is read by the receiver only.
    Both,
}

impl SpanIntake {
    pub fn wire(self) -> bool {
        self != Self::Receiver
    }

    pub fn receiver(self) -> bool {
        self != Self::Wire
    }
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

/// A percentage from 0 to 100.
fn parse_percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .trim_end_matches('%')
        .parse()
        .map_err(|e| format!("{e}: expected a percentage"))?;
    if (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err("must be between 0 and 100".into())
    }
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
    use clap::{CommandFactory as _, Parser as _};

    use super::{Args, Command};
    use crate::model::otlp;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    /// The receivers listen where SDKs export by default, on loopback only.
    #[test]
    fn receiver_defaults_are_the_otlp_ports_on_loopback() {
        let args = Args::parse_from(["tracegap"]);
        let agent = &args.watch.agent;
        let grpc = agent.otlp_grpc_listen.expect("gRPC receiver on by default");
        let http = agent.otlp_http_listen.expect("HTTP receiver on by default");
        assert_eq!(grpc.port(), otlp::GRPC_PORT);
        assert_eq!(http.port(), otlp::HTTP_PORT);
        assert!(grpc.ip().is_loopback() && http.ip().is_loopback());
    }

    #[test]
    fn check_takes_its_command_after_two_dashes() {
        let args = Args::parse_from([
            "tracegap",
            "check",
            "--fail-on",
            "warning",
            "--require-coverage",
            "90",
            "--",
            "./suite.sh",
            "--verbose",
        ]);
        let Some(Command::Check(check)) = args.command else {
            panic!("check");
        };
        assert_eq!(check.command, ["./suite.sh", "--verbose"]);
        assert_eq!(check.require_coverage, Some(90.0));
        assert!(
            Args::try_parse_from(["tracegap", "check"]).is_err(),
            "COMMAND is required"
        );
        assert!(
            Args::try_parse_from(["tracegap", "--output", "json", "check", "--", "x"]).is_err(),
            "watch options do not mix with check"
        );
    }
}
