//! `cargo xtask bench`: what the agent costs, measured against a baseline in the same run.
//!
//! The machines are noisy (2 cores, other builds), so every figure is a ratio or a delta
//! against runs without the agent, interleaved round by round, and the median over rounds is
//! reported. Loopback only. Writes `target/bench/results.json` and `target/bench/results.md`.

mod capacity;
mod http;
mod kernel;
mod procs;
mod report;
mod stats;
mod wire;

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{
    build,
    exec::{cargo, exec, is_root, workspace_root},
    setup,
};

const BENCH_PACKAGE: &str = "tracegap-bench";

#[derive(clap::Args)]
pub struct Options {
    /// About 1.5 minutes: 3 rounds, 2 s phases, 10k/1k churn.
    #[arg(long, conflicts_with = "smoke")]
    pub quick: bool,
    /// A few seconds, for the tests: proves the bench runs; the numbers mean nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Use the agent binary already built (skip the build).
    #[arg(long)]
    pub no_build: bool,
    /// Run only these sections (comma-separated), e.g. `--only kernel` while working on the
    /// programs; results then go to target/bench/only/, never over a whole run's.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Section>,
}

/// The sections of a run, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// 1-2: nginx + wrk at a fixed rate and at saturation.
    Http,
    /// 3: in-kernel cost per syscall, against the floor.
    Kernel,
    /// 4: ring buffer capacity.
    Capacity,
    /// 5: memory under connection and process churn.
    Churn,
    /// 6: spans read off the wire.
    Wire,
}

/// How much of everything a mode does.
pub struct Plan {
    name: &'static str,
    rounds: usize,
    http_secs: f64,
    fixed_rate: u32,
    syscall_loop_count: u64,
    /// Calls per loop that captures every call (`sendto-http`, `sendto-post`): fewer than the
    /// ring buffer holds (8 MiB, ~50k such records), so none is dropped. Past it, a full ring
    /// makes calls cheaper (the reserve fails before the copy) and the figure measured how fast
    /// the agent drained, not what a capture costs: at 200k calls the 2026-12-05 agent, 40 %
    /// faster, made `sendto-http` read 320 → 510 ns while the capture itself got cheaper.
    capture_loop_count: u64,
    /// Processes started (fork + exec + exit) per spawn loop.
    spawn_loop_count: u64,
    /// OTLP/HTTP exports per wire intake loop.
    export_loop_count: u64,
    flood_rates: Vec<u64>,
    flood_secs: f64,
    churn_connections: u32,
    churn_processes: u32,
}

impl Plan {
    fn new(opts: &Options) -> Self {
        if opts.smoke {
            Self {
                name: "smoke",
                rounds: 1,
                http_secs: 1.0,
                fixed_rate: 1000,
                syscall_loop_count: 20_000,
                capture_loop_count: 5_000,
                spawn_loop_count: 50,
                export_loop_count: 50,
                flood_rates: vec![10_000],
                flood_secs: 0.5,
                churn_connections: 200,
                churn_processes: 20,
            }
        } else if opts.quick {
            Self {
                name: "quick",
                rounds: 3,
                http_secs: 2.0,
                fixed_rate: 10_000,
                syscall_loop_count: 300_000,
                capture_loop_count: 40_000,
                spawn_loop_count: 1_000,
                export_loop_count: 500,
                // 0: as fast as the sender can.
                flood_rates: vec![50_000, 100_000, 0],
                flood_secs: 1.5,
                churn_connections: 10_000,
                churn_processes: 1_000,
            }
        } else {
            Self {
                name: "full",
                rounds: 5,
                http_secs: 8.0,
                fixed_rate: 10_000,
                syscall_loop_count: 1_000_000,
                capture_loop_count: 40_000,
                spawn_loop_count: 3_000,
                export_loop_count: 2_000,
                flood_rates: vec![25_000, 50_000, 100_000, 150_000, 200_000, 0],
                flood_secs: 4.0,
                churn_connections: 100_000,
                churn_processes: 10_000,
            }
        }
    }
}

/// What every section needs.
pub struct Ctx {
    agent_bin: PathBuf,
    bench_bin: PathBuf,
    /// target/bench: results and the agent's output of each run.
    dir: PathBuf,
    plan: Plan,
}

pub fn run(opts: &Options) -> Result<()> {
    if !is_root() {
        bail!(
            "the benchmark loads eBPF programs, installs packages and sets kernel.bpf_stats_enabled: \
             run `sudo -E cargo xtask bench`, or run as root"
        );
    }
    let started = Instant::now();
    // nginx and wrk (wrk measures saturation; hey's `-q` limits each worker in a closed loop,
    // which hides latency, so the fixed-rate load is our own open-loop generator).
    setup::run(setup::Scope::Bench, setup::Mode::Quiet)?;
    let agent_bin = if opts.no_build {
        build::agent_binary(false)
    } else {
        build::run(&build::Options::default())?
    };
    let bench_bin = build_workloads()?;
    let target = agent_bin
        .parent()
        .and_then(std::path::Path::parent)
        .context("agent binary has no target dir")?
        .to_path_buf();
    // A smoke or partial run must not overwrite the results of a whole one.
    let dir = if opts.smoke {
        target.join("bench").join("smoke")
    } else if !opts.only.is_empty() {
        target.join("bench").join("only")
    } else {
        target.join("bench")
    };
    std::fs::create_dir_all(&dir)?;
    let ctx = Ctx {
        agent_bin,
        bench_bin,
        dir,
        plan: Plan::new(opts),
    };
    eprintln!("bench: {} mode, {} rounds", ctx.plan.name, ctx.plan.rounds);

    let wanted = |section| opts.only.is_empty() || opts.only.contains(&section);
    let nginx = if wanted(Section::Http) || wanted(Section::Churn) {
        Some(procs::Nginx::start(&ctx.dir)?)
    } else {
        None
    };
    let mut http = Value::Null;
    if let (true, Some(nginx)) = (wanted(Section::Http), &nginx) {
        eprintln!("bench: 1-2/6 HTTP overhead (nginx at {})", nginx.addr);
        http = http::run(&ctx, nginx)?;
    }
    let mut kernel = Value::Null;
    if wanted(Section::Kernel) {
        eprintln!("bench: 3/6 in-kernel cost per syscall");
        kernel = kernel::run(&ctx)?;
    }
    let mut capacity = Value::Null;
    if wanted(Section::Capacity) {
        eprintln!("bench: 4/6 ring buffer capacity");
        capacity = capacity::capacity(&ctx)?;
    }
    let mut churn = Value::Null;
    if let (true, Some(nginx)) = (wanted(Section::Churn), &nginx) {
        eprintln!("bench: 5/6 memory under churn");
        churn = capacity::churn(&ctx, nginx)?;
    }
    drop(nginx);
    let mut wire = Value::Null;
    if wanted(Section::Wire) {
        eprintln!("bench: 6/6 wire intake");
        wire = wire::run(&ctx)?;
    }

    let command = match ctx.plan.name {
        "full" => "cargo xtask bench".to_owned(),
        other => format!("cargo xtask bench --{other}"),
    };
    let mut results = json!({
        "mode": ctx.plan.name,
        "command": command,
        "rounds": ctx.plan.rounds,
        "date": command_output(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])),
        "host": {
            "kernel": command_output(Command::new("uname").arg("-r")),
            "cpus": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            "loadavg": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        },
        "http": http,
        "kernel": kernel,
        "capacity": capacity,
        "churn": churn,
        "wire": wire,
    });
    results["duration_s"] = json!(started.elapsed().as_secs_f64());
    results["targets"] = report::targets_json(&results);
    let md = report::markdown(&results, &command);
    let json_path = ctx.dir.join("results.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)?)?;
    std::fs::write(ctx.dir.join("results.md"), &md)?;
    eprintln!("{md}");
    eprintln!(
        "bench: wrote {} and results.md in {:.0} s",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The smoke run for `cargo xtask test` (after it has built the agent): proves the benchmark
/// still runs end to end; asserts no numbers. Writes under target/bench/smoke/.
pub fn smoke() -> Result<()> {
    run(&Options {
        quick: false,
        smoke: true,
        no_build: true,
        only: Vec::new(),
    })
}

fn command_output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Builds the workload generators (benches/) in release mode; returns the binary.
fn build_workloads() -> Result<PathBuf> {
    exec(cargo().current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        BENCH_PACKAGE,
    ]))?;
    let bin = build::agent_binary(false).with_file_name(BENCH_PACKAGE);
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}
