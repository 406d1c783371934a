//! Targets from issues 6 and 19, and the markdown table. A benchmark reports; it never fails on a
//! missed target.

use std::fmt::Write as _;

use serde_json::{json, Value};

struct Row {
    metric: String,
    value: Option<f64>,
    unit: &'static str,
    /// Text of the target, and whether the value meets it (`None`: informational).
    target: &'static str,
    met: Option<bool>,
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn rows(r: &Value) -> Vec<Row> {
    let h = &r["http"];
    let k = &r["kernel"]["kinds"];
    let c = &r["capacity"];
    let ch = &r["churn"];
    let w = &r["wire"];
    let mut rows = Vec::new();
    let mut push = |metric: String, value: Option<f64>, unit, target, met: Option<bool>| {
        rows.push(Row {
            metric,
            value,
            unit,
            target,
            met,
        });
    };
    let loss = |ratio: Option<f64>| ratio.map(|x| (1.0 - x) * 100.0);
    let fixed_loss = loss(num(&h["fixed_rps_ratio"]));
    push(
        format!("throughput loss at {} req/s", h["fixed_rate"]),
        fixed_loss,
        "%",
        "≤ 1",
        fixed_loss.map(|x| x <= 1.0),
    );
    let sat_loss = loss(num(&h["sat_rps_ratio"]));
    push(
        "throughput loss at saturation (wrk)".into(),
        sat_loss,
        "%",
        "≤ 5",
        sat_loss.map(|x| x <= 5.0),
    );
    push(
        "… of which the floor (empty programs on the same tracepoints)".into(),
        loss(num(&h["sat_floor_rps_ratio"])),
        "%",
        "",
        None,
    );
    push(
        "… tracegap's own loss against the floor (throughput on / with the floor only)".into(),
        loss(num(&h["sat_rps_ratio_to_floor"])),
        "%",
        "",
        None,
    );
    let guarded_loss = loss(num(&h["sat_guarded_rps_ratio"]));
    push(
        format!(
            "throughput loss at saturation, agent with `--max-capture-rate {}`",
            h["guard_rate"]
        ),
        guarded_loss,
        "%",
        "≤ 5",
        guarded_loss.map(|x| x <= 5.0),
    );
    let guarded_p99 = num(&h["sat_guarded_p99_delta_us"]);
    push(
        format!(
            "Δp99 latency at saturation, agent with `--max-capture-rate {}`",
            h["guard_rate"]
        ),
        guarded_p99,
        "µs",
        "≤ 100",
        guarded_p99.map(|x| x <= 100.0),
    );
    push(
        format!(
            "agent CPU per 10k req/s at saturation, with `--max-capture-rate {}`",
            h["guard_rate"]
        ),
        num(&h["agent_cpu_m_per_10k_sat_guarded"]),
        "m",
        "",
        None,
    );
    push(
        "saturation throughput, agent off".into(),
        num(&h["sat_rps_off"]),
        "req/s",
        "",
        None,
    );
    push(
        "Δp50 latency at fixed rate".into(),
        num(&h["fixed_p50_delta_us"]),
        "µs",
        "",
        None,
    );
    let p99 = num(&h["fixed_p99_delta_us"]);
    push(
        "Δp99 latency at fixed rate".into(),
        p99,
        "µs",
        "≤ 50",
        p99.map(|x| x <= 50.0),
    );
    push(
        "Δp50 latency at saturation".into(),
        num(&h["sat_p50_delta_us"]),
        "µs",
        "",
        None,
    );
    let p99s = num(&h["sat_p99_delta_us"]);
    push(
        "Δp99 latency at saturation".into(),
        p99s,
        "µs",
        "≤ 100",
        p99s.map(|x| x <= 100.0),
    );
    push(
        "… Δp99 at saturation with the floor only".into(),
        num(&h["sat_floor_p99_delta_us"]),
        "µs",
        "",
        None,
    );
    let cpu = num(&h["agent_cpu_m_per_10k_fixed"]);
    push(
        "agent CPU per 10k req/s (fixed rate)".into(),
        cpu,
        "m",
        "≤ 20",
        cpu.map(|x| x <= 20.0),
    );
    push(
        "agent CPU per 10k req/s (saturation)".into(),
        num(&h["agent_cpu_m_per_10k_sat"]),
        "m",
        "",
        None,
    );
    push(
        "agent events/s processed under HTTP load".into(),
        num(&h["agent_events_per_s"]),
        "events/s",
        "",
        None,
    );
    for (kind, v) in k.as_object().into_iter().flatten() {
        let captured = v["captured"].as_bool().unwrap_or(false);
        let added = num(&v["ns_added"]);
        if super::kernel::is_tls(kind) {
            // Issue #19: ≤ 27 µs per pair (the cost is mostly the uprobe traps).
            push(
                format!("ns added per `{kind}` SSL_write + SSL_read pair"),
                added,
                "ns",
                "≤ 27000",
                added.map(|x| x <= 27_000.0),
            );
            push(
                format!("BPF run time per `{kind}` SSL call (entry + return probe, bpf_stats)"),
                num(&v["bpf_ns_total"]),
                "ns",
                "",
                None,
            );
            continue;
        }
        // Targets of issue #19: a captured request ≤ 150 ns in all; any other syscall ≤ 15 ns
        // above the floor (what empty programs on the same raw tracepoints add).
        let added_target = captured.then_some(("≤ 150", 150.0));
        // `spawn` is per process started (three process records), not one syscall.
        let above_target = (!captured && kind != "spawn").then_some(("≤ 15", 15.0));
        push(
            format!("ns added per `{kind}` syscall"),
            added,
            "ns",
            added_target.map_or("", |t| t.0),
            added_target.and_then(|(_, limit)| added.map(|x| x <= limit)),
        );
        push(
            format!("… of which the floor (empty programs on the same tracepoints), `{kind}`"),
            num(&v["ns_floor_added"]),
            "ns",
            "",
            None,
        );
        let above = num(&v["ns_above_floor"]);
        push(
            format!("… of which tracegap's own work above the floor, `{kind}`"),
            above,
            "ns",
            above_target.map_or("", |t| t.0),
            above_target.and_then(|(_, limit)| above.map(|x| x <= limit)),
        );
        push(
            format!("BPF run time per `{kind}` (bpf_stats)"),
            num(&v["bpf_ns_total"]),
            "ns",
            "",
            None,
        );
    }
    push(
        "max captured req/s with zero ring buffer drops".into(),
        num(&c["max_zero_drop_rps"]),
        "req/s",
        "",
        None,
    );
    let z = c["zero_drops_at_target"].as_bool();
    push(
        format!("zero drops at {} captured req/s (paced)", c["target_rps"]),
        z.map(|b| if b { 1.0 } else { 0.0 }),
        "yes=1",
        "= 1",
        z,
    );
    let residual = c["steps"].as_array().map(|steps| {
        steps
            .iter()
            .map(|s| s["residual_pid"].as_i64().unwrap_or(0).unsigned_abs())
            .max()
            .unwrap_or(0)
    });
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let residual_f = residual.map(|r| r as f64);
    push(
        "max |sent − captured − dropped| per step".into(),
        residual_f,
        "requests",
        "= 0",
        residual.map(|r| r == 0),
    );
    let hwm = [num(&h["agent_vm_hwm_mib"]), num(&ch["vm_hwm_mib"])]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    push(
        "agent peak RSS (VmHWM)".into(),
        hwm,
        "MiB",
        "≤ 48",
        hwm.map(|x| x <= 48.0),
    );
    push(
        format!("agent RSS after {} connections", ch["connections"]),
        num(&ch["rss_after_connections_mib"]),
        "MiB",
        "≤ 48",
        num(&ch["rss_after_connections_mib"]).map(|x| x <= 48.0),
    );
    push(
        format!("agent RSS after {} processes", ch["processes"]),
        num(&ch["rss_after_processes_mib"]),
        "MiB",
        "≤ 48",
        num(&ch["rss_after_processes_mib"]).map(|x| x <= 48.0),
    );
    push(
        format!(
            "agent CPU added per exported span read off the wire ({}-span OTLP/HTTP exports)",
            w["spans_per_export"]
        ),
        num(&w["agent_ns_per_span_added"]),
        "ns",
        "",
        None,
    );
    for (kind, v) in w["other_requests"].as_object().into_iter().flatten() {
        let ratio = num(&v["ratio"]);
        push(
            format!("`{kind}` (not an export): time with the wire intake on / off"),
            ratio,
            "×",
            "≤ 1.05",
            ratio.map(|x| x <= 1.05),
        );
    }
    rows
}

/// The targets as JSON rows (for results.json).
pub fn targets_json(results: &Value) -> Value {
    Value::Array(
        rows(results)
            .into_iter()
            .map(|r| json!({"metric": r.metric, "value": r.value, "unit": r.unit, "target": r.target, "met": r.met}))
            .collect(),
    )
}

pub fn markdown(results: &Value, command: &str) -> String {
    let mut md = String::new();
    let _infallible = writeln!(
        md,
        "Produced by `{command}` ({} mode, {} rounds interleaved off/on, medians; {} in {:.0} s; kernel {}, {} CPUs).\n",
        results["mode"].as_str().unwrap_or("?"),
        results["rounds"],
        results["date"].as_str().unwrap_or("?"),
        results["duration_s"].as_f64().unwrap_or(0.0),
        results["host"]["kernel"].as_str().unwrap_or("?"),
        results["host"]["cpus"],
    );
    md.push_str("| metric | value | target | met? |\n|---|---:|---|---|\n");
    for r in rows(results) {
        let value = r.value.map_or_else(
            || "n/a".to_owned(),
            |v| {
                if v.abs() >= 100.0 {
                    format!("{v:.0} {}", r.unit)
                } else {
                    format!("{v:.1} {}", r.unit)
                }
            },
        );
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        let target = if r.target.is_empty() {
            String::new()
        } else {
            format!("{} {}", r.target, r.unit)
        };
        let _infallible = writeln!(md, "| {} | {value} | {target} | {met} |", r.metric);
    }
    md
}
