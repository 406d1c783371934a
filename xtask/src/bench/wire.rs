//! 6: the wire intake (OTLP trace exports read off the wire, issue 18). The agent's CPU per
//! exported span with the intake on (`--span-intake both`, the default) against the same
//! exports with it off (`--span-intake receiver`: the kernel does not read exports whole), and
//! the cost of a captured request that is not an export (GET, and a POST the kernel looks at
//! for `/v1/traces`) with the intake on against off: "no change for other connections".

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{
    kernel::loop_ns,
    procs::{self, Agent},
    stats::median,
    Ctx,
};

/// Spans per export: what an SDK's batch processor sends under moderate load.
const SPANS_PER_EXPORT: u64 = 64;
/// Captured kinds of the syscall loop timed with the intake on and off.
const OTHER_KINDS: [&str; 2] = ["sendto-http", "sendto-post"];
/// Loops per kind and run, their median kept: one capture loop is 40k calls (what the ring
/// holds), ~25 ms, and a single one moved by ±10 % between runs here, more than the 5 % the
/// ratio is judged by.
const LOOPS_PER_KIND: usize = 5;

struct Run {
    agent_ns_per_span: f64,
    spans_decoded: u64,
    kinds_ns: [f64; OTHER_KINDS.len()],
}

fn run_once(ctx: &Ctx, round: usize, wire: bool) -> Result<Run> {
    let name = if wire { "wire" } else { "receiver" };
    let agent = Agent::start_with(
        &ctx.agent_bin,
        &ctx.dir.join(format!("agent-wire-{name}-{round}.jsonl")),
        &["--span-intake", if wire { "both" } else { "receiver" }],
    )?;
    let before = agent.cpu_seconds()?;
    let out = procs::run_json(
        std::process::Command::new(&ctx.bench_bin)
            .arg("export-loop")
            .args(["--exports", &ctx.plan.export_loop_count.to_string()])
            .args(["--spans", &SPANS_PER_EXPORT.to_string()]),
    )?;
    // The agent decodes what the ring holds after the loop: let it finish.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let cpu = agent.cpu_seconds()? - before;
    let spans = out["spans"].as_u64().unwrap_or(0);
    let pid = out["pid"].as_u64().unwrap_or(0);
    let mut kinds_ns = [0.0; OTHER_KINDS.len()];
    for (ns, kind) in kinds_ns.iter_mut().zip(OTHER_KINDS) {
        let loops = (0..LOOPS_PER_KIND)
            .map(|_| loop_ns(ctx, kind, true))
            .collect::<Result<Vec<_>>>()?;
        *ns = median(loops);
    }
    let report = agent.stop()?;
    let spans_decoded = report.spans_exported_of(pid);
    if wire && spans_decoded != spans {
        bail!(
            "the wire intake decoded {spans_decoded} of {spans} spans (wire_incomplete_*: see {})",
            ctx.dir
                .join(format!("agent-wire-{name}-{round}.jsonl"))
                .display()
        );
    }
    #[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
    let agent_ns_per_span = cpu * 1e9 / spans.max(1) as f64;
    Ok(Run {
        agent_ns_per_span,
        spans_decoded,
        kinds_ns,
    })
}

pub fn run(ctx: &Ctx) -> Result<Value> {
    let mut rounds = Vec::new();
    for round in 0..ctx.plan.rounds {
        let (on, off) = if round % 2 == 0 {
            let on = run_once(ctx, round, true)?;
            (on, run_once(ctx, round, false)?)
        } else {
            let off = run_once(ctx, round, false)?;
            (run_once(ctx, round, true)?, off)
        };
        eprintln!(
            "bench: wire round {}: agent {:.0}/{:.0} ns per span (on/off), {} spans decoded",
            round + 1,
            on.agent_ns_per_span,
            off.agent_ns_per_span,
            on.spans_decoded
        );
        rounds.push((on, off));
    }
    let mut kinds = serde_json::Map::new();
    for (i, kind) in OTHER_KINDS.iter().enumerate() {
        kinds.insert(
            (*kind).to_owned(),
            json!({
                "ns_wire_on": median(rounds.iter().map(|(on, _)| on.kinds_ns[i])),
                "ns_wire_off": median(rounds.iter().map(|(_, off)| off.kinds_ns[i])),
                "ratio": median(rounds.iter().map(|(on, off)| on.kinds_ns[i] / off.kinds_ns[i])),
            }),
        );
    }
    Ok(json!({
        "exports": ctx.plan.export_loop_count,
        "spans_per_export": SPANS_PER_EXPORT,
        "agent_ns_per_span_on": median(rounds.iter().map(|(on, _)| on.agent_ns_per_span)),
        "agent_ns_per_span_off": median(rounds.iter().map(|(_, off)| off.agent_ns_per_span)),
        "agent_ns_per_span_added": median(
            rounds.iter().map(|(on, off)| on.agent_ns_per_span - off.agent_ns_per_span)
        ),
        "other_requests": kinds,
    }))
}
