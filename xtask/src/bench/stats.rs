//! Medians over interleaved rounds, and BPF program statistics.

use std::{collections::HashMap, process::Command};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// Median of the values (mean of the middle two for an even count); 0 for none.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

/// `kernel.bpf_stats_enabled` set to 1 while alive, restored to its old value on drop. The
/// kernel only accounts run time while it is on, and it costs two clock reads per program run,
/// so it is off whenever syscall costs are timed.
pub struct BpfStatsGuard {
    previous: String,
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStatsGuard {
    pub fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(BPF_STATS)
            .with_context(|| format!("read {BPF_STATS}"))?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").with_context(|| format!("write {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.previous) {
            eprintln!("bench: restoring {BPF_STATS}: {e}");
        }
    }
}

/// (run_time_ns, run_cnt) of every loaded program whose name starts with `tracegap_`.
pub fn bpf_prog_stats() -> Result<HashMap<String, (u64, u64)>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("run bpftool (installed by `cargo xtask setup`)")?;
    let progs: Value = serde_json::from_slice(&out.stdout).context("parse bpftool output")?;
    let mut stats = HashMap::new();
    for p in progs.as_array().into_iter().flatten() {
        // bpftool prints the full name from BTF; the kernel keeps 15 characters, which
        // still start with the prefix.
        let Some(name) = p["name"].as_str().filter(|n| n.starts_with("tracegap_")) else {
            continue;
        };
        let entry = stats.entry(name.to_owned()).or_insert((0, 0));
        entry.0 += p["run_time_ns"].as_u64().unwrap_or(0);
        entry.1 += p["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(stats)
}

/// Programs that ran at least `min_runs` times between two snapshots: name → (runs, ns per run).
pub fn bpf_delta(
    before: &HashMap<String, (u64, u64)>,
    after: &HashMap<String, (u64, u64)>,
    min_runs: u64,
) -> Vec<(String, u64, f64)> {
    let mut out: Vec<(String, u64, f64)> = after
        .iter()
        .filter_map(|(name, &(time, runs))| {
            let (t0, r0) = before.get(name).copied().unwrap_or((0, 0));
            let runs = runs.saturating_sub(r0);
            (runs >= min_runs.max(1)).then(|| {
                #[expect(clippy::cast_precision_loss, reason = "counters far below 2^52")]
                let per_run = time.saturating_sub(t0) as f64 / runs as f64;
                (name.clone(), runs, per_run)
            })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert!((median([3.0, 1.0, 2.0]) - 2.0).abs() < 1e-9);
        assert!((median([4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-9);
        assert!(median([]).abs() < 1e-9);
    }
}
