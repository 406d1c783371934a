//! 3: in-kernel cost per syscall. Tight loops of each syscall kind with the programs attached
//! (the agent running), with only the floor attached (empty programs on the same raw
//! tracepoints) and without, interleaved; then the programs' own run time from BPF stats, in a
//! separate pass because the accounting itself adds two clock reads per run.

use std::{collections::BTreeMap, process::Command};

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    procs::{self, Agent},
    stats::{bpf_delta, bpf_prog_stats, median, BpfStatsGuard},
    Ctx,
};

/// Kinds run by `tracegap-bench syscall-loop` (and, `tls-*`, by benches/scripts/tls_loop.py:
/// one `SSL_write_ex` + one `SSL_read_ex` through memory BIOs in the host's libssl), and whether
/// they are captured requests.
pub const KINDS: &[(&str, bool)] = &[
    ("write8", false),
    ("write64", false),
    ("read64", false),
    ("sendto-other", false),
    ("sendto-http", true),
    ("sendto-post", true),
    ("tls-other", false),
    ("tls-http", true),
    ("spawn", false),
];

/// The TLS kinds' loop, a Python program: Python's `ssl` is the OpenSSL the agent probes.
pub fn is_tls(kind: &str) -> bool {
    kind.starts_with("tls-")
}

/// Captured requests go through the ring buffer: bursts small enough for it to hold, with
/// untimed pauses for the agent to drain it, so the loop times the capture path rather than
/// the "ring buffer full" path.
const CAPTURE_BURST: u64 = 10_000;
const CAPTURE_PAUSE_MS: u64 = 15;

pub fn loop_ns(ctx: &Ctx, kind: &str, captured: bool) -> Result<f64> {
    let mut cmd = if is_tls(kind) {
        let mut cmd = Command::new("python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../benches/scripts/tls_loop.py"
        ));
        cmd
    } else {
        let mut cmd = Command::new(&ctx.bench_bin);
        cmd.arg("syscall-loop");
        cmd
    };
    cmd.args(["--kind", kind, "--count"]);
    if kind == "spawn" {
        cmd.arg(ctx.plan.spawn_loop_count.to_string());
    } else if captured {
        cmd.arg(ctx.plan.capture_loop_count.to_string())
            .args(["--burst", &CAPTURE_BURST.to_string()])
            .args(["--pause-ms", &CAPTURE_PAUSE_MS.to_string()]);
    } else {
        cmd.arg(ctx.plan.syscall_loop_count.to_string());
    }
    Ok(procs::run_json(&mut cmd)?["ns_per_call"]
        .as_f64()
        .unwrap_or(0.0))
}

fn all_kinds(ctx: &Ctx) -> Result<BTreeMap<&'static str, f64>> {
    let mut out = BTreeMap::new();
    for &(kind, captured) in KINDS {
        out.insert(kind, loop_ns(ctx, kind, captured)?);
    }
    Ok(out)
}

struct OnRound {
    ns: BTreeMap<&'static str, f64>,
    /// kind → programs that ran for it: (name, runs, ns per run).
    bpf: BTreeMap<&'static str, Vec<(String, u64, f64)>>,
    ringbuf_full: u64,
}

fn on_round(ctx: &Ctx, round: usize) -> Result<OnRound> {
    let agent = Agent::start(
        &ctx.agent_bin,
        &ctx.dir.join(format!("agent-kernel-{round}.jsonl")),
    )?;
    let ns = all_kinds(ctx)?;
    let mut bpf = BTreeMap::new();
    {
        let _stats = BpfStatsGuard::enable()?;
        for &(kind, captured) in KINDS {
            let before = bpf_prog_stats()?;
            let count = if kind == "spawn" {
                ctx.plan.spawn_loop_count
            } else if captured {
                ctx.plan.capture_loop_count
            } else {
                ctx.plan.syscall_loop_count
            };
            loop_ns(ctx, kind, captured)?;
            let after = bpf_prog_stats()?;
            // Programs that ran for most of the loop's syscalls; the rest is other processes.
            bpf.insert(kind, bpf_delta(&before, &after, count / 2));
        }
    }
    let report = agent.stop()?;
    Ok(OnRound {
        ns,
        bpf,
        ringbuf_full: report.kernel("ringbuf_full"),
    })
}

/// The loops with only the floor programs attached (see benches/src/floor.rs).
fn floor_round(ctx: &Ctx) -> Result<BTreeMap<&'static str, f64>> {
    let _floor = procs::Floor::attach(&ctx.bench_bin)?;
    all_kinds(ctx)
}

pub fn run(ctx: &Ctx) -> Result<Value> {
    let mut rounds = Vec::new();
    for round in 0..ctx.plan.rounds {
        // Interleaved: off, floor, on in even rounds, the reverse in odd ones.
        let (off, floor, on) = if round % 2 == 0 {
            let off = all_kinds(ctx)?;
            let floor = floor_round(ctx)?;
            (off, floor, on_round(ctx, round)?)
        } else {
            let on = on_round(ctx, round)?;
            let floor = floor_round(ctx)?;
            (all_kinds(ctx)?, floor, on)
        };
        eprintln!(
            "bench: syscall round {}: {}",
            round + 1,
            KINDS
                .iter()
                .map(|(k, _)| format!("{k} {:.0}/{:.0}/{:.0} ns", off[k], floor[k], on.ns[k]))
                .collect::<Vec<_>>()
                .join(", ")
                + " (off/floor/on)"
        );
        rounds.push((off, floor, on));
    }
    let mut kinds = serde_json::Map::new();
    for &(kind, captured) in KINDS {
        let programs: BTreeMap<String, Vec<f64>> =
            rounds.iter().fold(BTreeMap::new(), |mut acc, (_, _, on)| {
                for (name, _, per_run) in on.bpf.get(kind).into_iter().flatten() {
                    acc.entry(name.clone()).or_default().push(*per_run);
                }
                acc
            });
        let programs: serde_json::Map<String, Value> = programs
            .into_iter()
            .map(|(name, v)| (name, json!(median(v))))
            .collect();
        let bpf_total: f64 = programs.values().filter_map(Value::as_f64).sum();
        kinds.insert(
            kind.to_owned(),
            json!({
                "captured": captured,
                "ns_off": median(rounds.iter().map(|(off, _, _)| off[kind])),
                "ns_floor": median(rounds.iter().map(|(_, floor, _)| floor[kind])),
                "ns_on": median(rounds.iter().map(|(_, _, on)| on.ns[kind])),
                "ns_added": median(rounds.iter().map(|(off, _, on)| on.ns[kind] - off[kind])),
                // What any raw syscall tracepoint costs, and tracegap's own work above it.
                "ns_floor_added": median(rounds.iter().map(|(off, floor, _)| floor[kind] - off[kind])),
                "ns_above_floor": median(rounds.iter().map(|(_, floor, on)| on.ns[kind] - floor[kind])),
                "bpf_ns_per_run": programs,
                "bpf_ns_total": bpf_total,
            }),
        );
    }
    Ok(json!({
        "syscall_loop_count": ctx.plan.syscall_loop_count,
        "capture_loop_count": ctx.plan.capture_loop_count,
        "kinds": kinds,
        "ringbuf_full": rounds.iter().map(|(_, _, on)| on.ringbuf_full).sum::<u64>(),
    }))
}
