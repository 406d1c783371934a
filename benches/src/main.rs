//! Workload generators for `cargo xtask bench`. Each subcommand runs a bounded amount of
//! loopback-only work and prints one JSON object on stdout; xtask interleaves the runs with
//! and without the agent and computes the ratios.

mod churn;
mod export;
mod flood;
mod floor;
mod load;
mod syscall;

use std::io::Write as _;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "tracegap benchmark workloads (loopback only)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A tight loop of one syscall kind; prints the nanoseconds per call.
    SyscallLoop(syscall::Options),
    /// Open-loop HTTP/1.1 load at a fixed rate over keep-alive connections; prints latency
    /// percentiles corrected for coordinated omission.
    HttpLoad(load::Options),
    /// HTTP request lines sent with `sendto` at a target rate to a sink that discards them
    /// without a read syscall; prints the exact number sent.
    Flood(flood::Options),
    /// Many short-lived connections, then many short-lived processes, each making one request.
    Churn(churn::Options),
    /// OTLP/HTTP trace exports to a loopback sink; prints the spans sent.
    ExportLoop(export::Options),
    /// Attaches the empty floor programs to the raw syscall tracepoints until stdin closes.
    Floor(floor::Options),
}

fn main() -> Result<()> {
    let result = match Cli::parse().command {
        Command::SyscallLoop(opts) => syscall::run(&opts)?,
        Command::HttpLoad(opts) => load::run(&opts)?,
        Command::Flood(opts) => flood::run(&opts)?,
        Command::Churn(opts) => churn::run(&opts)?,
        Command::ExportLoop(opts) => export::run(&opts)?,
        Command::Floor(opts) => floor::run(&opts)?,
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{result}")?;
    Ok(())
}

/// A `std::io::Error` from errno, with the call that failed.
fn os_error(call: &str) -> anyhow::Error {
    anyhow::Error::new(std::io::Error::last_os_error()).context(format!("{call} failed"))
}
