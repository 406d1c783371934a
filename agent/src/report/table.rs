//! The live table: one row per process that sent or received requests, then the counters.

use std::fmt::Write as _;

use crate::{
    model::Protocol,
    parse::trace_context::Propagation,
    snapshot::{FindingBrief, Snapshot},
};

pub fn render(snapshot: &Snapshot) -> String {
    let mut s = String::new();
    let _infallible: std::fmt::Result = writeln!(
        s,
        "{:>7} {:<16} {:<18} {:<13} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  FINDINGS",
        "PID", "COMM", "SERVICE", "OTEL", "OUT", "W3C", "OTHER", "NONE", "UNDET", "COV%", "IN"
    );
    for p in &snapshot.processes {
        let st = &p.stats;
        let cov = st
            .coverage_percent()
            .map_or_else(|| "-".to_owned(), |c| format!("{c:.0}"));
        let findings: Vec<String> = p.findings.iter().map(cell).collect();
        let _infallible: std::fmt::Result = writeln!(
            s,
            "{:>7} {:<16} {:<18} {:<13} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}  {}",
            p.pid,
            truncate(p.comm.as_deref().unwrap_or_default(), 16),
            truncate(p.service_name.as_deref().unwrap_or("-"), 18),
            // `sdk v1.47.0`, `api v1.47.0`, `agent 2.10.0`, `-` (none), `?` (unreadable);
            // `*` marks a replaced module.
            truncate(
                &p.inventory
                    .as_ref()
                    .map_or_else(|| "?".to_owned(), |i| i.brief()),
                13
            ),
            st.outbound(),
            st.outbound_with(Propagation::W3c),
            st.other_context(),
            st.outbound_with(Propagation::None) + st.outbound_with(Propagation::Malformed),
            st.outbound_with(Propagation::Undetermined),
            cov,
            st.inbound,
            findings.join(" ")
        );
    }
    let kernel: Vec<String> = snapshot
        .kernel
        .iter()
        .map(|(c, v)| format!("{}={v}", c.name()))
        .collect();
    let a = &snapshot.agent;
    let _infallible: std::fmt::Result = writeln!(
        s,
        "\nkernel: {}\nagent: events={} parse_failures={} undetermined={} process_unknown={} findings={}",
        kernel.join(" "),
        a.events,
        a.parse.parse_failures,
        a.correlate.undetermined,
        a.process_unknown,
        a.findings,
    );
    if let Some(receiver) = &snapshot.receiver {
        let fields: Vec<String> = receiver.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _infallible: std::fmt::Result = writeln!(s, "receiver: {}", fields.join(" "));
    }
    s
}

/// `kind×count`, with `(tls)` and `(h2)`/`(grpc)` where they apply.
fn cell(f: &FindingBrief) -> String {
    format!(
        "{}×{}{}{}",
        f.kind.as_str(),
        f.count,
        if f.tls { "(tls)" } else { "" },
        match f.protocol {
            Protocol::Http1 => "",
            Protocol::H2 => "(h2)",
            Protocol::Grpc => "(grpc)",
        }
    )
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}
