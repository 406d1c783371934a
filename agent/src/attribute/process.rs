//! pid → what the process is (comm, executable, service name, OTel environment, container),
//! read from /proc and cached.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use procfs::process::Process;

use crate::model::{otel_env, MAX_PROCESSES};
/// A cached entry is read again after this long (a pid may have been reused, env may change).
const REFRESH_AFTER: Duration = Duration::from_secs(60);

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
    pub container: Option<super::cgroup::ContainerInfo>,
    /// /proc had no entry when we looked: the process exited first. Only the kernel's comm is known.
    pub exited: bool,
    /// Its environment could be read: `otel_env` is a fact, not a guess. Without CAP_SYS_PTRACE
    /// and CAP_DAC_READ_SEARCH, other users' environments are unreadable.
    pub environ_readable: bool,
}

struct Entry {
    info: ProcessInfo,
    loaded: Instant,
    /// Thread names the kernel reported for this pid (bpf_get_current_comm names the thread):
    /// a name not seen before may mean the pid was reused or the process exec'd.
    thread_comms: Vec<String>,
}

/// Thread names remembered per process; past it only the age of the entry counts.
const MAX_THREAD_COMMS: usize = 8;

#[derive(Default)]
pub struct ProcessCache {
    entries: HashMap<u32, Entry>,
    pub exited_before_lookup: u64,
}

impl ProcessCache {
    /// The process behind `pid`. `thread_comm` is the kernel's name of the thread that made the
    /// syscall, used when /proc has nothing; an empty one (callers without a kernel event)
    /// accepts any cached entry.
    pub fn get(&mut self, pid: u32, thread_comm: &str) -> &ProcessInfo {
        let fresh = self.entries.get(&pid).is_some_and(|e| {
            e.loaded.elapsed() < REFRESH_AFTER
                && (thread_comm.is_empty()
                    || e.info.exited
                    || e.thread_comms.len() >= MAX_THREAD_COMMS
                    || e.thread_comms.iter().any(|c| c == thread_comm))
        });
        if !fresh {
            if self.entries.len() >= MAX_PROCESSES {
                self.evict_oldest();
            }
            let info = load(pid, thread_comm);
            if info.exited {
                self.exited_before_lookup += 1;
            }
            let mut thread_comms = self
                .entries
                .remove(&pid)
                .filter(|e| e.info.exe == info.exe && !info.exited)
                .map(|e| e.thread_comms)
                .unwrap_or_default();
            if !thread_comm.is_empty() && thread_comms.len() < MAX_THREAD_COMMS {
                thread_comms.push(thread_comm.to_owned());
            }
            self.entries.insert(
                pid,
                Entry {
                    info,
                    loaded: Instant::now(),
                    thread_comms,
                },
            );
        }
        &self.entries[&pid].info
    }

    /// The cached entry, without touching /proc.
    pub fn cached(&self, pid: u32) -> Option<&ProcessInfo> {
        self.entries.get(&pid).map(|e| &e.info)
    }

    /// Forgets processes that exited.
    pub fn sweep(&mut self) {
        self.entries
            .retain(|pid, _| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict_oldest(&mut self) {
        if let Some(pid) = self
            .entries
            .iter()
            .min_by_key(|(_, e)| e.loaded)
            .map(|(pid, _)| *pid)
        {
            self.entries.remove(&pid);
        }
    }
}

fn load(pid: u32, comm: &str) -> ProcessInfo {
    let mut info = ProcessInfo {
        pid,
        comm: comm.to_owned(),
        exe: None,
        service_name: None,
        otel_env: false,
        container_id: None,
        container: None,
        exited: false,
        environ_readable: false,
    };
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
    if let Ok(env) = process.environ() {
        info.environ_readable = true;
        let get = |k: &str| {
            env.get(std::ffi::OsStr::new(k))
                .map(|v| v.to_string_lossy().into_owned())
        };
        info.otel_env = env
            .keys()
            .any(|k| k.to_string_lossy().starts_with(otel_env::PREFIX));
        info.service_name = get(otel_env::SERVICE_NAME)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                get(otel_env::RESOURCE_ATTRIBUTES)
                    .and_then(|a| otel_env::service_name_from_resource_attributes(&a))
            });
    }
    info.container = super::cgroup::read_container_info(pid).ok().flatten();
    info.container_id = info.container.as_ref().map(|c| c.container_id.clone());
    if info.exe.is_none() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
        info.exited = true;
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let mut cache = ProcessCache::default();
        let me = std::process::id();
        let info = cache.get(me, "x").clone();
        assert!(!info.exited);
        assert!(info.exe.is_some());
    }

    #[test]
    fn exited_process_keeps_kernel_comm() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let mut cache = ProcessCache::default();
        let info = cache.get(pid, "true").clone();
        assert!(info.exited);
        assert_eq!(info.comm, "true");
        assert_eq!(cache.exited_before_lookup, 1);
    }
}
