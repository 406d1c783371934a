//! pid → what the process is (comm, executable, service name, OTel environment, container).
//!
//! Learned from the kernel's exec and fork records when the agent saw the process start (so a
//! process that lives a few milliseconds is known even after it is gone), else read from /proc
//! at the first request (processes that started before the agent, or whose record was lost).
//! Either way it is the exec-time answer: /proc's environ is the block execve copied, and a
//! process that changes its environment later (setenv, putenv) does not change it.

use std::{
    collections::VecDeque,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use procfs::process::Process;

use super::{
    cgroup::{self, CgroupPaths, ContainerInfo},
    inventory::native::java_agent,
};
use crate::model::{otel_env, PidMap, MAX_PROCESSES};

/// A /proc entry is read again after this long (a pid may have been reused without a record).
const REFRESH_AFTER: Duration = Duration::from_secs(60);
/// How long an exited process stays known after its exit record: the verdicts on its last
/// requests come up to `INSTRUMENTATION_SETTLE` (5 s) later, and a tick after that.
pub const EXITED_RETENTION: Duration = Duration::from_secs(10);
/// Thread names remembered per /proc entry; past it only the age of the entry counts.
const MAX_THREAD_COMMS: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`.
    pub service_name: Option<String>,
    /// Any `OTEL_*` environment variable: the process was set up for OpenTelemetry.
    pub otel_env: bool,
    pub container_id: Option<String>,
    /// Container and pod UID from the cgroup path, for the Kubernetes pod lookup.
    pub container: Option<ContainerInfo>,
    /// /proc had no entry when we looked and no record told who it was: only the kernel's
    /// comm is known.
    pub exited: bool,
    /// Its environment was read (from the exec record, or /proc): `otel_env` is a fact, not a
    /// guess. Without CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, other users' environments are
    /// unreadable in /proc.
    pub environ_readable: bool,
    /// What the environment tells an SDK about exporting spans (for the inventory).
    pub sdk_settings: SdkSettings,
}

/// The environment's say on span export, and a Java agent it loads: only these values are
/// kept (OpenTelemetry settings and a jar's file name, no other variable).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SdkSettings {
    /// `OTEL_TRACES_EXPORTER`, lowercased (`otlp`, `none`, `console`, ...).
    pub traces_exporter: Option<String>,
    /// `OTEL_SDK_DISABLED=true`.
    pub sdk_disabled: bool,
    /// The file name of an OpenTelemetry Java agent in `JAVA_TOOL_OPTIONS` or
    /// `JDK_JAVA_OPTIONS` (`-javaagent:`; how the OpenTelemetry Operator injects it).
    pub java_agent: Option<String>,
}

impl ProcessInfo {
    fn unknown(pid: u32, comm: &str) -> Self {
        Self {
            pid,
            comm: comm.to_owned(),
            exe: None,
            service_name: None,
            otel_env: false,
            container_id: None,
            container: None,
            exited: false,
            environ_readable: false,
            sdk_settings: SdkSettings::default(),
        }
    }

    /// Whether a verdict about the process's instrumentation is a fact.
    pub fn identity_known(&self) -> bool {
        !self.exited && self.environ_readable
    }
}

/// What the kernel said at exec (agent-ebpf/src/process.rs).
#[derive(Clone, Copy, Debug)]
pub struct ExecFacts<'a> {
    pub comm: &'a str,
    /// The path execve was given (`bprm->filename`).
    pub path: Option<&'a str>,
    /// The environment block: `KEY=VALUE` strings, each NUL-terminated.
    pub env: &'a [u8],
    /// `env` is the whole block (not cut at the record's bound).
    pub env_complete: bool,
    pub cgroup_id: u64,
}

/// Where an entry came from.
enum Source {
    /// /proc, with the thread names the kernel reported for the pid since (a name not seen
    /// before may mean the pid was reused, or the process exec'd without a record).
    Proc { thread_comms: Vec<String> },
    /// An exec record, or inherited at fork from a known parent: authoritative until the next.
    Kernel,
    /// A fork record whose parent was not known yet: resolved at the first lookup.
    Forked { parent: u32 },
}

struct Entry {
    /// Shared with every event of the process: a lookup costs a reference count, not a copy.
    info: Arc<ProcessInfo>,
    loaded: Instant,
    source: Source,
    exited_at: Option<Instant>,
}

#[derive(Default)]
pub struct ProcessCache {
    entries: PidMap<u32, Entry>,
    /// Insertion order, for eviction past `MAX_PROCESSES` (stale pids are skipped).
    order: VecDeque<(u32, Instant)>,
    cgroups: CgroupPaths,
    pub exited_before_lookup: u64,
    /// Processes learned from exec and fork records.
    pub from_records: u64,
    pub evicted: u64,
}

impl ProcessCache {
    /// A process exec'd: who it is now.
    pub fn exec(&mut self, pid: u32, facts: &ExecFacts<'_>) {
        let alive = Process::new(pid as i32).ok();
        let mut info = ProcessInfo::unknown(pid, facts.comm);
        let env = EnvFacts::parse(facts.env);
        info.otel_env = env.otel_env;
        info.service_name = env.service_name;
        info.sdk_settings = env.sdk_settings;
        info.environ_readable = facts.env_complete || env.otel_env;
        // The resolved path (symlinks followed) while the process runs, else the one execve
        // was given.
        info.exe = alive
            .as_ref()
            .and_then(|p| p.exe().ok())
            .map(|p| p.to_string_lossy().into_owned())
            .or_else(|| facts.path.map(str::to_owned));
        info.container = alive
            .as_ref()
            .and_then(|_| cgroup::read_container_info(pid).ok().flatten())
            .or_else(|| {
                self.cgroups
                    .path_of(facts.cgroup_id)
                    .and_then(|p| cgroup::parse_cgroup_path(&p))
            });
        info.container_id = info.container.as_ref().map(|c| c.container_id.clone());
        if !info.environ_readable {
            // A block cut before its end, without OTEL_* in the part seen: /proc has it
            // whole while the process runs; after that it is unknown.
            if let Some(from_proc) = alive.as_ref().and_then(read_environ) {
                info.otel_env = from_proc.otel_env;
                info.service_name = from_proc.service_name;
                info.sdk_settings = from_proc.sdk_settings;
                info.environ_readable = true;
            }
        }
        self.from_records += 1;
        self.insert(pid, info, Source::Kernel);
    }

    /// `parent` forked `child`: the child is who its parent is, until it execs.
    pub fn fork(&mut self, parent: u32, child: u32, comm: &str) {
        let source = match self.entries.get(&parent) {
            Some(e) if !matches!(e.source, Source::Forked { .. }) => {
                let mut info = ProcessInfo::clone(&e.info);
                info.pid = child;
                info.comm = comm.to_owned();
                self.from_records += 1;
                self.insert(child, info, Source::Kernel);
                return;
            }
            _ => Source::Forked { parent },
        };
        self.insert(child, ProcessInfo::unknown(child, comm), source);
    }

    /// The process exec'd and the kernel could not say into what: /proc will tell.
    pub fn forget(&mut self, pid: u32) {
        self.entries.remove(&pid);
    }

    /// The process ended: kept a while for verdicts still to come, then forgotten.
    pub fn exit(&mut self, pid: u32) {
        if let Some(e) = self.entries.get_mut(&pid) {
            e.exited_at = Some(Instant::now());
        }
    }

    /// The process behind `pid`. `thread_comm` is the kernel's name of the thread that made the
    /// syscall, used when nothing else is known; an empty one (callers without a kernel event)
    /// accepts any cached entry.
    pub fn get(&mut self, pid: u32, thread_comm: &str) -> &Arc<ProcessInfo> {
        let action = match self.entries.get(&pid) {
            Some(Entry {
                source: Source::Kernel,
                ..
            }) => Lookup::Cached,
            Some(Entry {
                source: Source::Forked { parent },
                ..
            }) => Lookup::Forked(*parent),
            Some(
                e @ Entry {
                    source: Source::Proc { thread_comms },
                    ..
                },
            ) if e.loaded.elapsed() < REFRESH_AFTER
                && (thread_comm.is_empty()
                    || e.info.exited
                    || thread_comms.len() >= MAX_THREAD_COMMS
                    || thread_comms.iter().any(|c| c == thread_comm)) =>
            {
                Lookup::Cached
            }
            _ => Lookup::Proc,
        };
        match action {
            Lookup::Cached => {}
            Lookup::Forked(parent) => self.resolve_fork(pid, parent),
            Lookup::Proc => self.load(pid, thread_comm),
        }
        &self.entries[&pid].info
    }

    /// The cached entry, without touching /proc.
    pub fn cached(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|e| &*e.info)
    }

    /// Forgets processes that exited a while ago, and /proc entries of processes that are gone,
    /// but those `keep` says.
    pub fn sweep(&mut self, keep: impl Fn(u32) -> bool) {
        self.entries.retain(|pid, e| {
            keep(*pid)
                || match e.exited_at {
                    Some(at) => at.elapsed() < EXITED_RETENTION,
                    // No exit record (lost, or never alive for us): gone from /proc means gone.
                    None => {
                        !(e.info.exited || matches!(e.source, Source::Proc { .. }))
                            || Path::new(&format!("/proc/{pid}")).exists()
                    }
                }
        });
        let entries = &self.entries;
        self.order
            .retain(|(pid, at)| entries.get(pid).is_some_and(|e| e.loaded == *at));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A forked child looked up: while it runs /proc knows it; after, it is its parent.
    fn resolve_fork(&mut self, child: u32, parent: u32) {
        if Path::new(&format!("/proc/{child}")).exists() {
            let comm = self.entries[&child].info.comm.clone();
            return self.load(child, &comm);
        }
        let comm = self.entries[&child].info.comm.clone();
        let mut info = ProcessInfo::clone(self.get(parent, ""));
        info.pid = child;
        info.comm = comm;
        self.insert(child, info, Source::Kernel);
    }

    fn load(&mut self, pid: u32, thread_comm: &str) {
        let info = load(pid, thread_comm);
        if info.exited {
            self.exited_before_lookup += 1;
        }
        let mut thread_comms = match self.entries.remove(&pid) {
            Some(Entry {
                info: old,
                source: Source::Proc { thread_comms },
                ..
            }) if old.exe == info.exe && !info.exited => thread_comms,
            _ => Vec::new(),
        };
        if !thread_comm.is_empty() && thread_comms.len() < MAX_THREAD_COMMS {
            thread_comms.push(thread_comm.to_owned());
        }
        self.insert(pid, info, Source::Proc { thread_comms });
    }

    fn insert(&mut self, pid: u32, info: ProcessInfo, source: Source) {
        while self.entries.len() >= MAX_PROCESSES && !self.entries.contains_key(&pid) {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.loaded == at) {
                self.entries.remove(&old);
                self.evicted += 1;
            }
        }
        let loaded = Instant::now();
        self.order.push_back((pid, loaded));
        self.entries.insert(
            pid,
            Entry {
                info: Arc::new(info),
                loaded,
                source,
                exited_at: None,
            },
        );
    }
}

enum Lookup {
    Cached,
    Forked(u32),
    Proc,
}

/// What an environment says about OpenTelemetry.
#[derive(Debug, Default, PartialEq, Eq)]
struct EnvFacts {
    otel_env: bool,
    service_name: Option<String>,
    sdk_settings: SdkSettings,
}

/// Longest `OTEL_TRACES_EXPORTER` value kept (a list of exporter names).
const MAX_EXPORTER_SETTING: usize = 64;

impl EnvFacts {
    /// From an environment block (`KEY=VALUE\0...`). Only these facts are kept: the block
    /// itself is dropped by the caller.
    fn parse(block: &[u8]) -> Self {
        let mut facts = Self::default();
        let mut from_resource = None;
        for entry in block.split(|&b| b == 0) {
            let Some(eq) = entry.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&entry[..eq], &entry[eq + 1..]);
            if key == b"JAVA_TOOL_OPTIONS" || key == b"JDK_JAVA_OPTIONS" {
                let value = String::from_utf8_lossy(value);
                if let Some(jar) = java_agent(value.split_whitespace()) {
                    facts.sdk_settings.java_agent = Some(jar);
                }
                continue;
            }
            if !key.starts_with(otel_env::PREFIX.as_bytes()) {
                continue;
            }
            facts.otel_env = true;
            let value = String::from_utf8_lossy(value);
            if key == otel_env::SERVICE_NAME.as_bytes() && !value.is_empty() {
                facts.service_name = Some(value.into_owned());
            } else if key == otel_env::RESOURCE_ATTRIBUTES.as_bytes() {
                from_resource = otel_env::service_name_from_resource_attributes(&value);
            } else if key == b"OTEL_TRACES_EXPORTER" && !value.trim().is_empty() {
                let value: String = value.trim().chars().take(MAX_EXPORTER_SETTING).collect();
                facts.sdk_settings.traces_exporter = Some(value.to_ascii_lowercase());
            } else if key == b"OTEL_SDK_DISABLED" {
                facts.sdk_settings.sdk_disabled = value.trim().eq_ignore_ascii_case("true");
            }
        }
        facts.service_name = facts.service_name.or(from_resource);
        facts
    }
}

/// OTel facts of a running process's environ, if readable.
fn read_environ(process: &Process) -> Option<EnvFacts> {
    let env = process.environ().ok()?;
    let mut block = Vec::new();
    for (k, v) in env {
        block.extend_from_slice(k.as_encoded_bytes());
        block.push(b'=');
        block.extend_from_slice(v.as_encoded_bytes());
        block.push(0);
    }
    Some(EnvFacts::parse(&block))
}

fn load(pid: u32, comm: &str) -> ProcessInfo {
    let mut info = ProcessInfo::unknown(pid, comm);
    let Ok(process) = Process::new(pid as i32) else {
        info.exited = true;
        return info;
    };
    // The process's own name (its main thread's), not the name of the thread that made the
    // syscall (a Tokio worker, say).
    if let Ok(stat) = process.stat() {
        info.comm = stat.comm;
    }
    info.exe = process.exe().ok().map(|p| p.to_string_lossy().into_owned());
    if let Some(env) = read_environ(&process) {
        info.environ_readable = true;
        info.otel_env = env.otel_env;
        info.service_name = env.service_name;
        info.sdk_settings = env.sdk_settings;
    }
    info.container = cgroup::read_container_info(pid).ok().flatten();
    info.container_id = info.container.as_ref().map(|c| c.container_id.clone());
    if info.exe.is_none() && !Path::new(&format!("/proc/{pid}")).exists() {
        info.exited = true;
    }
    info
}

#[cfg(test)]
mod tests;
