//! Local output: JSON lines or a live terminal table.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use agent_common::counter;
use serde_json::{json, Value};

use crate::{
    capture::KernelCounters, cli::Output, findings::Finding, otlp::ReceiverStats,
    pipeline::Pipeline,
};

/// How often JSON output prints coverage and counter lines.
const SUMMARY_EVERY: Duration = Duration::from_secs(10);

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// A finding as one JSON object; the field set is stable.
pub fn finding_json(f: &Finding) -> Value {
    json!({
        "kind": f.key.kind.as_str(),
        "severity": f.key.kind.severity().as_str(),
        "pid": f.key.pid,
        "comm": f.subject.comm,
        "exe": f.subject.exe,
        "service_name": f.subject.service_name,
        "container_id": f.subject.container_id,
        "k8s": (!f.subject.k8s.is_empty()).then(|| {
            f.subject.k8s.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>()
        }),
        "direction": f.key.direction,
        "peer": f.key.peer.map(|p| p.to_string()),
        "method": f.key.method,
        "path": f.key.path,
        "tls": f.key.tls,
        "protocol": f.key.protocol.as_str(),
        "count": f.count,
        "first_seen": rfc3339(f.first_seen),
        "last_seen": rfc3339(f.last_seen),
        "evidence": f.evidence,
    })
}

/// One line per process with outbound requests: how much of its traffic carries W3C context.
pub fn coverage_json(pipeline: &Pipeline) -> Vec<Value> {
    let mut pids: Vec<u32> = pipeline
        .stats
        .iter()
        .filter(|(_, s)| s.outbound > 0)
        .map(|(pid, _)| *pid)
        .collect();
    pids.sort_unstable();
    pids.into_iter()
        .map(|pid| {
            let s = pipeline.stats[&pid].clone();
            let info = pipeline.processes.cached(pid);
            json!({
                "kind": "coverage",
                "service_name": pipeline.service_name(pid),
                "pid": pid,
                "comm": info.map(|i| i.comm.clone()),
                "requests": s.outbound,
                "with_context": s.w3c,
                "other_context": s.other_context,
                "without_context": s.without,
                "malformed": s.malformed,
                "undetermined": s.undetermined,
                "coverage_percent": s.coverage_percent(),
            })
        })
        .collect()
}

pub fn counters_json(kernel: &KernelCounters, pipeline: &Pipeline) -> Value {
    let kernel: serde_json::Map<String, Value> = counter::NAMES
        .iter()
        .zip(kernel.iter())
        .map(|(name, v)| ((*name).to_owned(), json!(v)))
        .collect();
    let a = &pipeline.counters;
    let t = &pipeline.traces.counters;
    json!({
        "kind": "counters",
        "kernel": kernel,
        "agent": {
            "events": a.events,
            "decode_errors": a.decode_errors,
            "parse_failures": a.parse_failures,
            "undetermined": a.undetermined,
            "process_unknown": a.process_unknown,
            "telemetry_exports": a.telemetry_exports,
            "h2_undetermined": a.h2_undetermined,
            "h2_lost_sync": a.h2_lost_sync,
            "export_batches": a.export_batches,
            "unattributed_batches": a.unattributed_batches,
            "traces": {
                "judged": t.judged,
                "unverifiable": t.unverifiable,
                "unsampled": t.unsampled,
                "late_spans": t.late_spans,
                "pending_dropped": t.pending_dropped,
                "spans_evicted": t.spans_evicted,
                "pending_at_exit": t.pending_at_exit,
            },
            "findings": pipeline.findings.len(),
            "findings_evicted": pipeline.findings.evicted,
            "processes_exited_before_lookup": pipeline.processes.exited_before_lookup,
            "processes_cached": pipeline.processes.len(),
            "processes_with_stats": pipeline.stats.len(),
        }
    })
}

/// The OTLP receiver's counters: what it refused or lost, and why.
pub fn receiver_json(r: &ReceiverStats) -> Value {
    let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "export_requests": v(&r.export_requests),
        "spans_received": v(&r.spans_received),
        "invalid_spans": v(&r.invalid_spans),
        "decode_errors": v(&r.decode_errors),
        "too_large": v(&r.too_large),
        "unsupported_media_type": v(&r.unsupported_media_type),
        "batches_dropped": v(&r.batches_dropped),
        "forward_dropped": v(&r.forward_dropped),
        "connections_rejected": v(&r.connections_rejected),
        "connections_timed_out": v(&r.connections_timed_out),
        "unattributed_batches": v(&r.unattributed_batches),
    })
}

pub struct Reporter {
    output: Output,
    out: Box<dyn Write + Send>,
    last_summary: Instant,
    /// The OTLP receiver's counters, printed with the agent's own.
    receiver: Option<Arc<ReceiverStats>>,
}

impl Reporter {
    pub fn new(output: Output, out: Box<dyn Write + Send>) -> Self {
        Self {
            output,
            out,
            last_summary: Instant::now(),
            receiver: None,
        }
    }

    /// Adds the receiver's counters to the counters line and the table.
    #[must_use]
    pub fn with_receiver_stats(mut self, stats: Arc<ReceiverStats>) -> Self {
        self.receiver = Some(stats);
        self
    }

    /// Called every report interval.
    pub fn tick(
        &mut self,
        pipeline: &mut Pipeline,
        kernel: &KernelCounters,
    ) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                self.print_changed(pipeline)?;
                if self.last_summary.elapsed() >= SUMMARY_EVERY {
                    self.last_summary = Instant::now();
                    self.print_summary(pipeline, kernel)?;
                }
                self.out.flush()
            }
            Output::Table => {
                // The table shows the current counts; changes need no separate printing.
                pipeline.findings.take_changed();
                let table = render_table(pipeline, kernel) + &self.receiver_line();
                write!(self.out, "\x1b[H\x1b[2J{table}")?;
                self.out.flush()
            }
        }
    }

    /// Everything not yet printed, at exit.
    pub fn finish(
        &mut self,
        pipeline: &mut Pipeline,
        kernel: &KernelCounters,
    ) -> std::io::Result<()> {
        match self.output {
            Output::Json => {
                self.print_changed(pipeline)?;
                self.print_summary(pipeline, kernel)?;
            }
            Output::Table => {
                let table = render_table(pipeline, kernel) + &self.receiver_line();
                write!(self.out, "{table}")?;
            }
        }
        self.out.flush()
    }

    fn receiver_line(&self) -> String {
        self.receiver.as_ref().map_or_else(String::new, |r| {
            let fields: Vec<String> = receiver_json(r)
                .as_object()
                .map(|o| o.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            format!("receiver: {}\n", fields.join(" "))
        })
    }

    fn print_changed(&mut self, pipeline: &mut Pipeline) -> std::io::Result<()> {
        for f in pipeline.findings.take_changed() {
            writeln!(self.out, "{}", finding_json(&f))?;
        }
        Ok(())
    }

    fn print_summary(
        &mut self,
        pipeline: &mut Pipeline,
        kernel: &KernelCounters,
    ) -> std::io::Result<()> {
        for line in coverage_json(pipeline) {
            writeln!(self.out, "{line}")?;
        }
        let mut counters = counters_json(kernel, pipeline);
        if let Some(r) = &self.receiver {
            counters["receiver"] = receiver_json(r);
        }
        writeln!(self.out, "{counters}")
    }
}

/// The live table: one row per process that sent or received requests.
pub fn render_table(pipeline: &Pipeline, kernel: &KernelCounters) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let findings_by_pid = {
        let mut m = std::collections::HashMap::<u32, Vec<String>>::new();
        for f in pipeline.findings.all() {
            m.entry(f.key.pid).or_default().push(format!(
                "{}×{}{}{}",
                f.key.kind.as_str(),
                f.count,
                if f.key.tls { "(tls)" } else { "" },
                match f.key.protocol {
                    crate::http::Protocol::Http1 => "",
                    crate::http::Protocol::H2 => "(h2)",
                    crate::http::Protocol::Grpc => "(grpc)",
                }
            ));
        }
        m
    };
    let _infallible: std::fmt::Result = writeln!(
        s,
        "{:>7} {:<16} {:<18} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  FINDINGS",
        "PID", "COMM", "SERVICE", "OUT", "W3C", "OTHER", "NONE", "UNDET", "COV%", "IN"
    );
    let mut pids: Vec<u32> = pipeline.stats.keys().copied().collect();
    pids.sort_unstable();
    for pid in pids {
        let st = pipeline.stats[&pid].clone();
        let comm = pipeline
            .processes
            .cached(pid)
            .map(|i| i.comm.clone())
            .unwrap_or_default();
        let service = pipeline.service_name(pid).unwrap_or_else(|| "-".into());
        let cov = st
            .coverage_percent()
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
        let mut f = findings_by_pid.get(&pid).cloned().unwrap_or_default();
        f.sort();
        let _infallible: std::fmt::Result = writeln!(
            s,
            "{:>7} {:<16} {:<18} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            pid,
            truncate(&comm, 16),
            truncate(&service, 18),
            st.outbound,
            st.w3c,
            st.other_context,
            st.without + st.malformed,
            st.undetermined,
            cov,
            st.inbound,
            f.join(" ")
        );
    }
    let kernel_line: Vec<String> = counter::NAMES
        .iter()
        .zip(kernel.iter())
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let a = &pipeline.counters;
    let _infallible: std::fmt::Result = writeln!(
        s,
        "\nkernel: {}\nagent: events={} parse_failures={} undetermined={} findings={}",
        kernel_line.join(" "),
        a.events,
        a.parse_failures,
        a.undetermined,
        pipeline.findings.len()
    );
    s
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
