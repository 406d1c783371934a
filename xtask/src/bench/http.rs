//! 1 and 2: nginx under load with the agent off and on, interleaved; the agent's CPU and RSS.
//! Saturation is also run with only the floor attached (empty programs on the same raw
//! syscall tracepoints, see kernel.rs): what any tool hooked there costs, read in the same run.

use std::process::Command;

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    procs::{self, Agent, Nginx},
    stats::median,
    Ctx,
};

/// Connections wrk keeps open at saturation.
const WRK_CONNECTIONS: u32 = 32;
/// Connections of the fixed-rate generator.
const LOAD_CONNECTIONS: u32 = 8;
/// The overload guard the saturation phase is run with a second time (`--max-capture-rate`,
/// HTTP/1 requests captured per second per CPU before one in 16): twice the fixed-rate load's
/// captures per CPU, so that it changes nothing at 10k req/s.
pub const GUARD_RATE: u32 = 20_000;

struct Phase {
    fixed: Value,
    sat: procs::WrkResult,
}

/// Saturation with only the floor programs attached.
fn floor_phase(bench_bin: &Path, nginx: &Nginx, secs: f64) -> Result<procs::WrkResult> {
    let _floor = procs::Floor::attach(bench_bin)?;
    procs::wrk(nginx.addr, WRK_CONNECTIONS, secs)
}

struct OnPhase {
    phase: Phase,
    cpu_fixed_s: f64,
    cpu_sat_s: f64,
    hwm_mib: f64,
    events: u64,
    captured: u64,
    dropped: u64,
    /// Saturation again, with the agent started with `--max-capture-rate GUARD_RATE`.
    guarded: procs::WrkResult,
    cpu_guarded_s: f64,
    sampled_out: u64,
}

fn fixed_load(ctx: &Ctx, nginx: &Nginx) -> Result<Value> {
    procs::run_json(
        Command::new(&ctx.bench_bin)
            .arg("http-load")
            .arg("--addr")
            .arg(nginx.addr.to_string())
            .arg("--rate")
            .arg(ctx.plan.fixed_rate.to_string())
            .arg("--connections")
            .arg(LOAD_CONNECTIONS.to_string())
            .arg("--duration")
            .arg(ctx.plan.http_secs.to_string()),
    )
}

fn phase(ctx: &Ctx, nginx: &Nginx) -> Result<Phase> {
    Ok(Phase {
        fixed: fixed_load(ctx, nginx)?,
        sat: procs::wrk(nginx.addr, WRK_CONNECTIONS, ctx.plan.http_secs)?,
    })
}

fn on_phase(ctx: &Ctx, nginx: &Nginx, round: usize) -> Result<OnPhase> {
    let agent = Agent::start(
        &ctx.agent_bin,
        &ctx.dir.join(format!("agent-http-{round}.jsonl")),
    )?;
    let c0 = agent.cpu_seconds()?;
    let fixed = fixed_load(ctx, nginx)?;
    let c1 = agent.cpu_seconds()?;
    let sat = procs::wrk(nginx.addr, WRK_CONNECTIONS, ctx.plan.http_secs)?;
    let c2 = agent.cpu_seconds()?;
    let hwm_mib = procs::vm_mib(agent.pid(), "VmHWM")?;
    let report = agent.stop()?;
    let guard = Agent::start_with(
        &ctx.agent_bin,
        &ctx.dir.join(format!("agent-http-guarded-{round}.jsonl")),
        &["--max-capture-rate", &GUARD_RATE.to_string()],
    )?;
    let g0 = guard.cpu_seconds()?;
    let guarded = procs::wrk(nginx.addr, WRK_CONNECTIONS, ctx.plan.http_secs)?;
    let g1 = guard.cpu_seconds()?;
    let guard_report = guard.stop()?;
    Ok(OnPhase {
        phase: Phase { fixed, sat },
        cpu_fixed_s: c1 - c0,
        cpu_sat_s: c2 - c1,
        hwm_mib,
        events: report.agent("events"),
        captured: report.kernel("captured"),
        dropped: report.kernel("ringbuf_full"),
        guarded,
        cpu_guarded_s: g1 - g0,
        sampled_out: guard_report.kernel("sampled_out"),
    })
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

pub fn run(ctx: &Ctx, nginx: &Nginx) -> Result<Value> {
    let mut rounds = Vec::new();
    for round in 0..ctx.plan.rounds {
        // Alternate the order (off, floor, on / on, floor, off) so that a drift in the
        // machine's load over the run does not favour one side.
        let (off, floor, on) = if round % 2 == 0 {
            let off = phase(ctx, nginx)?;
            let floor = floor_phase(&ctx.bench_bin, nginx, ctx.plan.http_secs)?;
            (off, floor, on_phase(ctx, nginx, round)?)
        } else {
            let on = on_phase(ctx, nginx, round)?;
            let floor = floor_phase(&ctx.bench_bin, nginx, ctx.plan.http_secs)?;
            (phase(ctx, nginx)?, floor, on)
        };
        eprintln!(
            "bench: http round {}: fixed {:.0}/{:.0} req/s p99 {:.0}/{:.0} µs, saturation {:.0}/{:.0}/{:.0}/{:.0} req/s (off/floor/on/on with --max-capture-rate {GUARD_RATE})",
            round + 1,
            f(&off.fixed, "rps"),
            f(&on.phase.fixed, "rps"),
            f(&off.fixed, "p99_us"),
            f(&on.phase.fixed, "p99_us"),
            off.sat.rps,
            floor.rps,
            on.phase.sat.rps,
            on.guarded.rps
        );
        rounds.push((off, floor, on));
    }
    let secs = ctx.plan.http_secs;
    let rows: Vec<Value> = rounds
        .iter()
        .map(|(off, floor, on)| {
            json!({
                "off": {"fixed": off.fixed, "sat": {"rps": off.sat.rps, "p50_us": off.sat.p50_us, "p99_us": off.sat.p99_us}},
                "on": {"fixed": on.phase.fixed, "sat": {"rps": on.phase.sat.rps, "p50_us": on.phase.sat.p50_us, "p99_us": on.phase.sat.p99_us},
                       "agent_cpu_fixed_s": on.cpu_fixed_s, "agent_cpu_sat_s": on.cpu_sat_s,
                       "agent_vm_hwm_mib": on.hwm_mib, "agent_events": on.events,
                       "kernel_captured": on.captured, "kernel_ringbuf_full": on.dropped},
                "floor": {"sat": {"rps": floor.rps, "p50_us": floor.p50_us, "p99_us": floor.p99_us}},
                "guarded": {"sat": {"rps": on.guarded.rps, "p50_us": on.guarded.p50_us, "p99_us": on.guarded.p99_us},
                            "agent_cpu_sat_s": on.cpu_guarded_s, "kernel_sampled_out": on.sampled_out},
            })
        })
        .collect();
    let m =
        |g: &dyn Fn(&Phase, &OnPhase) -> f64| median(rounds.iter().map(|(off, _, on)| g(off, on)));
    let m_floor = |g: &dyn Fn(&Phase, &procs::WrkResult, &OnPhase) -> f64| {
        median(rounds.iter().map(|(off, floor, on)| g(off, floor, on)))
    };
    // Millicores of agent CPU, scaled to 10k requests/s of the load the agent saw.
    let cpu_fixed = m(&|_, on| {
        on.cpu_fixed_s / f(&on.phase.fixed, "duration_s") * 1000.0 * 10_000.0
            / f(&on.phase.fixed, "rps")
    });
    let cpu_sat = m(&|_, on| on.cpu_sat_s / secs * 1000.0 * 10_000.0 / on.phase.sat.rps);
    // Each request is two captures: the client's write and nginx's recv.
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let events_per_s = m(&|_, on| on.events as f64 / (f(&on.phase.fixed, "duration_s") + secs));
    Ok(json!({
        "fixed_rate": ctx.plan.fixed_rate,
        "seconds_per_phase": secs,
        "rounds": rows,
        "fixed_rps_off": m(&|off, _| f(&off.fixed, "rps")),
        "fixed_rps_ratio": m(&|off, on| f(&on.phase.fixed, "rps") / f(&off.fixed, "rps")),
        "fixed_p50_us_off": m(&|off, _| f(&off.fixed, "p50_us")),
        "fixed_p99_us_off": m(&|off, _| f(&off.fixed, "p99_us")),
        "fixed_p50_delta_us": m(&|off, on| f(&on.phase.fixed, "p50_us") - f(&off.fixed, "p50_us")),
        "fixed_p99_delta_us": m(&|off, on| f(&on.phase.fixed, "p99_us") - f(&off.fixed, "p99_us")),
        "sat_rps_off": m(&|off, _| off.sat.rps),
        "sat_rps_ratio": m(&|off, on| on.phase.sat.rps / off.sat.rps),
        "sat_p50_us_off": m(&|off, _| off.sat.p50_us),
        "sat_p99_us_off": m(&|off, _| off.sat.p99_us),
        "sat_p50_delta_us": m(&|off, on| on.phase.sat.p50_us - off.sat.p50_us),
        "sat_p99_delta_us": m(&|off, on| on.phase.sat.p99_us - off.sat.p99_us),
        "sat_floor_rps_ratio": m_floor(&|off, floor, _| floor.rps / off.sat.rps),
        "sat_floor_p99_delta_us": m_floor(&|off, floor, _| floor.p99_us - off.sat.p99_us),
        "sat_rps_ratio_to_floor": m_floor(&|_, floor, on| on.phase.sat.rps / floor.rps),
        "guard_rate": GUARD_RATE,
        "sat_guarded_rps_ratio": m(&|off, on| on.guarded.rps / off.sat.rps),
        "sat_guarded_p99_delta_us": m(&|off, on| on.guarded.p99_us - off.sat.p99_us),
        "agent_cpu_m_per_10k_sat_guarded": m(&|_, on| on.cpu_guarded_s / secs * 1000.0 * 10_000.0 / on.guarded.rps),
        "sat_guarded_sampled_out": rounds.iter().map(|(_, _, on)| on.sampled_out).sum::<u64>(),
        "agent_cpu_m_per_10k_fixed": cpu_fixed,
        "agent_cpu_m_per_10k_sat": cpu_sat,
        "agent_vm_hwm_mib": rounds.iter().map(|(_, _, on)| on.hwm_mib).fold(0.0, f64::max),
        "agent_events_per_s": events_per_s,
        "ringbuf_full": rounds.iter().map(|(_, _, on)| on.dropped).sum::<u64>(),
    }))
}
