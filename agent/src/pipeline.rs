//! The agent's state: every captured request flows through here once, in order.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, SystemTime},
};

use crate::{
    capture::{CapturedEvent, DecodeError},
    correlate::{finding_key, judge_outbound, propagation, ProcessStats, Verdict},
    findings::{Direction, FindingKind, FindingStore, Subject},
    http::parse_request,
    process::{socket_peer, ProcessCache, ProcessInfo},
};

/// Counts of what the agent itself skipped or could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentCounters {
    pub events: u64,
    pub decode_errors: u64,
    /// Captures that started with a method but were not HTTP (binary data, garbage).
    pub parse_failures: u64,
    pub undetermined: u64,
    /// Requests without context from processes that exited before /proc could be read: whether
    /// they were instrumented is unknown, so they are not judged.
    pub process_unknown: u64,
    pub telemetry_exports: u64,
}

pub struct Pipeline {
    pub processes: ProcessCache,
    pub stats: HashMap<u32, ProcessStats>,
    pub findings: FindingStore,
    pub counters: AgentCounters,
    /// Processes seen sending OTLP exports: instrumented even without OTEL_* env.
    exporters: HashSet<u32>,
    /// Wall clock minus CLOCK_MONOTONIC, to date kernel timestamps.
    boot_offset: Duration,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    pub fn new() -> Self {
        Self {
            processes: ProcessCache::default(),
            stats: HashMap::new(),
            findings: FindingStore::default(),
            counters: AgentCounters::default(),
            exporters: HashSet::new(),
            boot_offset: boot_offset(),
        }
    }

    pub fn handle(&mut self, event: Result<CapturedEvent, DecodeError>) {
        self.counters.events += 1;
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                self.counters.decode_errors += 1;
                log::debug!("undecodable ring buffer record: {e}");
                return;
            }
        };
        let Ok(req) = parse_request(&event.data) else {
            self.counters.parse_failures += 1;
            return;
        };
        let at =
            SystemTime::UNIX_EPOCH + self.boot_offset + Duration::from_nanos(event.monotonic_ns);
        let info: ProcessInfo = self.processes.get(event.pid, &event.comm).clone();
        let stats = self.stats.entry(event.pid).or_default();
        stats.last_seen = Some(at);
        if event.direction == Direction::Inbound {
            stats.inbound += 1;
            return;
        }
        let instrumented = info.otel_env || self.exporters.contains(&event.pid);
        let mut verdict = judge_outbound(&req, instrumented);
        match &verdict {
            Verdict::Telemetry => {
                stats.telemetry_exports += 1;
                self.counters.telemetry_exports += 1;
                self.exporters.insert(event.pid);
                return;
            }
            Verdict::Undetermined => self.counters.undetermined += 1,
            Verdict::Clean | Verdict::Finding(..) => {}
        }
        stats.count_outbound(propagation(&req));
        if info.exited
            && matches!(
                verdict,
                Verdict::Finding(FindingKind::UninstrumentedClient, _)
            )
        {
            // Whether it was instrumented died with it: /proc had nothing left to read.
            self.counters.process_unknown += 1;
            verdict = Verdict::Undetermined;
        }
        if let Verdict::Finding(kind, evidence) = verdict {
            let peer = event.peer.or_else(|| {
                if info.exited {
                    None
                } else {
                    socket_peer(event.pid, event.fd)
                }
            });
            let key = finding_key(kind, event.pid, Direction::Outbound, peer, &req);
            self.findings.record(key, &subject(&info), evidence, at);
        }
    }

    /// Forgets processes that exited (their findings stay until reported and evicted).
    pub fn sweep(&mut self) {
        self.processes.sweep();
        let alive = |pid: &u32| std::path::Path::new(&format!("/proc/{pid}")).exists();
        self.exporters.retain(alive);
        if self.stats.len() > crate::process::MAX_PROCESSES {
            self.stats.retain(|pid, _| alive(pid));
        }
    }
}

pub fn subject(info: &ProcessInfo) -> Subject {
    Subject {
        comm: info.comm.clone(),
        exe: info.exe.clone(),
        service_name: info.service_name.clone(),
        container_id: info.container_id.clone(),
    }
}

fn boot_offset() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let monotonic = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(monotonic)
}
