//! What a process carries of OpenTelemetry: its runtime (`process.runtime.*`) and the
//! OpenTelemetry components it linked or loaded, so that a process which links the SDK and an
//! exporter but never exports a span can be told from one that has no SDK at all.
//!
//! - Go: every `go.opentelemetry.io/` module in the executable's build information, with the
//!   version the build selected and its `replace` ([`go`], [`crate::buildinfo`]).
//! - Others: an OpenTelemetry Java agent on the command line or in `JAVA_TOOL_OPTIONS`, and the
//!   C++ and .NET SDK libraries mapped by the process ([`native`]).
//!
//! Cost: an executable is read once, when a process execs it (the kernel's exec record; the
//! process is still there to open `/proc/<pid>/exe`) or at the first request of a process that
//! started before the agent, and cached by device, inode, size and mtime; every later exec of
//! the same file costs an `open` and an `fstat`. The per-process facts (command line, maps) are
//! read once at a process's first request, and only for processes that are not Go. A request
//! costs a map lookup.

pub mod go;
pub mod native;

use std::{
    collections::HashMap, fs::File, os::unix::fs::MetadataExt as _, sync::Arc, time::Instant,
};

use super::process::{ProcessInfo, SdkSettings};
use crate::{
    buildinfo::{self, BuildInfoError, FileReader, Replacement},
    model::{PidMap, MAX_PROCESSES},
};

/// Executables remembered; past it the cache starts over (counted).
const MAX_FILES: usize = 4096;
/// Bytes of `/proc/<pid>/maps` or `cmdline` read at most.
const MAX_PROC_TEXT: u64 = 1024 * 1024;

/// The runtime of a process, as the `process.runtime.*` semantic conventions name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// `go` (what the OpenTelemetry Go SDK's own resource detector reports for gc).
    pub name: &'static str,
    /// `go1.26.8`.
    pub version: String,
}

/// What a component is for, as far as spans are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The API: a no-op until an SDK is registered.
    Api,
    /// The SDK (for Go, the module that holds the trace SDK).
    Sdk,
    /// An exporter that sends spans over OTLP: where the agent sees exports.
    OtlpTraceExporter,
    /// Any other exporter (other signals, stdout, zipkin).
    OtherExporter,
    /// Instrumentation libraries (otelhttp, otelgrpc, ...).
    Instrumentation,
    /// An agent that is SDK, instrumentation and OTLP exporter in one, and wires them itself.
    Agent,
    Other,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Sdk => "sdk",
            Self::OtlpTraceExporter => "otlp_trace_exporter",
            Self::OtherExporter => "exporter",
            Self::Instrumentation => "instrumentation",
            Self::Agent => "agent",
            Self::Other => "other",
        }
    }
}

/// One OpenTelemetry component: a Go module, a Java agent jar, a library file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Component {
    /// Go module path; the file name of a jar or library (never its directory).
    pub name: String,
    /// The version the build selected (Go), or the one in the file name.
    pub version: Option<String>,
    /// A Go `replace`: what was linked in the module's place.
    pub replaced: Option<Replacement>,
    pub role: Role,
}

impl Component {
    /// `path@version`, plus ` => path@version` or ` => (directory)` when replaced.
    pub fn describe(&self) -> String {
        let mut s = match &self.version {
            Some(v) => format!("{}@{v}", self.name),
            None => self.name.clone(),
        };
        match &self.replaced {
            Some(Replacement::Module { path, version }) => {
                s.push_str(&format!(" => {path}@{version}"));
            }
            Some(Replacement::Directory) => s.push_str(" => (directory)"),
            None => {}
        }
        s
    }

    /// The version whose code was linked: a replacement by another version of the same
    /// module, else the selected one.
    pub fn linked_version(&self) -> Option<&str> {
        match &self.replaced {
            Some(Replacement::Module { path, version }) if *path == self.name => Some(version),
            Some(_) => None,
            None => self.version.as_deref(),
        }
    }
}

/// A process's inventory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inventory {
    pub runtime: Option<Runtime>,
    /// Shared by every process of the same executable.
    pub components: Arc<[Component]>,
    /// Set when the environment turns span export off (`OTEL_TRACES_EXPORTER` without `otlp`,
    /// `OTEL_SDK_DISABLED=true`): the process is then not expected to export spans.
    pub spans_off: Option<String>,
}

impl Inventory {
    pub fn has(&self, role: Role) -> bool {
        self.components.iter().any(|c| c.role == role)
    }

    /// The process links the SDK and an OTLP trace exporter (or an agent that is both) and its
    /// environment does not turn span export off: it should export spans.
    pub fn expects_span_exports(&self) -> bool {
        self.spans_off.is_none()
            && (self.has(Role::Agent) || (self.has(Role::Sdk) && self.has(Role::OtlpTraceExporter)))
    }

    /// One short cell for the table: `sdk v1.47.0`, `api v1.47.0`, `agent 2.10.0`, `-`.
    pub fn brief(&self) -> String {
        let pick = |role| self.components.iter().find(|c| c.role == role);
        let Some((label, c)) = [
            ("agent", Role::Agent),
            ("sdk", Role::Sdk),
            ("api", Role::Api),
        ]
        .into_iter()
        .find_map(|(label, role)| pick(role).map(|c| (label, c))) else {
            return if self.components.is_empty() {
                "-"
            } else {
                "otel"
            }
            .to_owned();
        };
        let replaced = if c.replaced.is_some() { "*" } else { "" };
        match c.linked_version().or(c.version.as_deref()) {
            Some(v) => format!("{label} {v}{replaced}"),
            None => label.to_owned(),
        }
    }

    /// Every component described, space-separated (evidence).
    pub fn components_text(&self) -> String {
        self.components
            .iter()
            .map(Component::describe)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("opening {path} failed")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the build information of {path} failed")]
    BuildInfo {
        path: String,
        #[source]
        source: BuildInfoError,
    },
}

/// What this stage read, and could not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryCounters {
    /// Executables whose build information was read (each once while cached).
    pub executables_read: u64,
    /// Microseconds spent reading them, in total.
    pub read_micros: u64,
    /// Executables that could not be opened (exited first, no permission) or whose build
    /// information is malformed: no inventory.
    pub unreadable: u64,
    /// Processes whose maps and command line were read.
    pub processes_inspected: u64,
    /// Times the executable cache started over at [`MAX_FILES`].
    pub files_forgotten: u64,
}

/// An executable, as far as caching goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

/// What an executable file says.
#[derive(Clone, Debug, Default)]
struct FileFacts {
    runtime: Option<Runtime>,
    components: Arc<[Component]>,
}

struct PidEntry {
    /// The executable the entry is for, to notice an exec the kernel did not report.
    exe: Option<String>,
    /// `None`: the executable could not be read.
    file: Option<FileFacts>,
    /// Built at the process's first request (with the per-process facts): `Some(None)` when
    /// nothing could be read, so it is not tried again on every request.
    inventory: Option<Option<Arc<Inventory>>>,
}

/// The inventories of processes, and the executables they run.
#[derive(Default)]
pub struct Inventories {
    files: HashMap<FileId, FileFacts>,
    pids: PidMap<u32, PidEntry>,
    pub counters: InventoryCounters,
}

impl Inventories {
    /// `pid` exec'd `exe`: read the executable while the process is there to open it.
    pub fn exec(&mut self, pid: u32, exe: Option<&str>) {
        let file = self.read_executable(pid);
        self.insert(
            pid,
            PidEntry {
                exe: exe.map(str::to_owned),
                file,
                inventory: None,
            },
        );
    }

    /// `child` runs what `parent` runs until it execs.
    pub fn fork(&mut self, parent: u32, child: u32) {
        let Some(p) = self.pids.get(&parent) else {
            return;
        };
        let entry = PidEntry {
            exe: p.exe.clone(),
            file: p.file.clone(),
            inventory: p.inventory.clone(),
        };
        self.insert(child, entry);
    }

    /// The inventory of the process behind `info`, built at its first request; `None` when
    /// nothing could be read (the process exited before its executable was opened).
    pub fn of(&mut self, info: &ProcessInfo) -> Option<Arc<Inventory>> {
        let pid = info.pid;
        let entry = self.pids.get(&pid).filter(|e| e.exe == info.exe);
        if let Some(built) = entry.and_then(|e| e.inventory.as_ref()) {
            return built.clone();
        }
        let file = match entry {
            Some(e) => e.file.clone(),
            None if info.exited => None,
            None => self.read_executable(pid),
        };
        let components: Vec<Component> = match &file {
            Some(f) if f.runtime.is_some() => f.components.to_vec(),
            // Not Go: the per-process facts, while the process is there.
            _ if !info.exited => self.process_components(info),
            _ => info
                .sdk_settings
                .java_agent
                .as_deref()
                .map(native::java_agent_component)
                .into_iter()
                .collect(),
        };
        // An unreadable executable with nothing else found is unknown, not "no OpenTelemetry".
        let inventory = (file.is_some() || !components.is_empty()).then(|| {
            Arc::new(Inventory {
                runtime: file.as_ref().and_then(|f| f.runtime.clone()),
                components: match &file {
                    Some(f) if f.runtime.is_some() => Arc::clone(&f.components),
                    _ => components.into(),
                },
                spans_off: spans_off(&info.sdk_settings),
            })
        });
        // An exited process may yet be looked up with its exec record's facts: not final.
        let built = (!info.exited || inventory.is_some()).then(|| inventory.clone());
        self.insert(
            pid,
            PidEntry {
                exe: info.exe.clone(),
                file,
                inventory: built,
            },
        );
        inventory
    }

    /// `pid` exec'd something the kernel could not name: read again at its next request.
    pub fn forget(&mut self, pid: u32) {
        self.pids.remove(&pid);
    }

    /// The inventory built for `pid`, if any.
    pub fn get(&self, pid: u32) -> Option<Arc<Inventory>> {
        self.pids
            .get(&pid)
            .and_then(|e| e.inventory.clone().flatten())
    }

    /// Forgets processes `keep` does not want.
    pub fn sweep(&mut self, keep: impl Fn(u32) -> bool) {
        self.pids.retain(|pid, _| keep(*pid));
    }

    fn insert(&mut self, pid: u32, entry: PidEntry) {
        if self.pids.len() >= MAX_PROCESSES && !self.pids.contains_key(&pid) {
            // The process cache evicts at the same bound; any entry will do.
            if let Some(&old) = self.pids.keys().next() {
                self.pids.remove(&old);
            }
        }
        self.pids.insert(pid, entry);
    }

    /// The executable of `pid` through `/proc/<pid>/exe` (the file itself, whatever mount
    /// namespace or deletion), read once per file.
    fn read_executable(&mut self, pid: u32) -> Option<FileFacts> {
        match self.try_read_executable(pid) {
            Ok(facts) => Some(facts),
            Err(e) => {
                self.counters.unreadable += 1;
                log::debug!("no OpenTelemetry inventory for pid {pid}: {}", chain(&e));
                None
            }
        }
    }

    fn try_read_executable(&mut self, pid: u32) -> Result<FileFacts, InventoryError> {
        let path = format!("/proc/{pid}/exe");
        let open_error = |source| InventoryError::Open {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(open_error)?;
        let meta = file.metadata().map_err(open_error)?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        };
        if let Some(facts) = self.files.get(&id) {
            return Ok(facts.clone());
        }
        let started = Instant::now();
        let read = buildinfo::read(&FileReader::with_size(file, meta.size()));
        self.counters.executables_read += 1;
        self.counters.read_micros += u64::try_from(started.elapsed().as_micros()).unwrap_or(0);
        let facts = match read {
            Ok(Some(info)) => FileFacts {
                runtime: Some(Runtime {
                    name: "go",
                    version: info.go_version.clone(),
                }),
                components: go::otel_modules(&info).into(),
            },
            Ok(None) => FileFacts::default(),
            Err(source) => return Err(InventoryError::BuildInfo { path, source }),
        };
        if self.files.len() >= MAX_FILES {
            self.files.clear();
            self.counters.files_forgotten += 1;
        }
        self.files.insert(id, facts.clone());
        Ok(facts)
    }

    /// A Java agent (environment or command line) and mapped OpenTelemetry libraries.
    fn process_components(&mut self, info: &ProcessInfo) -> Vec<Component> {
        self.counters.processes_inspected += 1;
        let pid = info.pid;
        let from_command_line = || {
            // Only a JVM's command line is read: `-javaagent:` means nothing to others.
            let is_java = info
                .exe
                .as_deref()
                .and_then(|e| e.rsplit('/').next())
                .is_some_and(|name| name.starts_with("java"));
            if !is_java {
                return None;
            }
            let cmdline = read_bounded(&format!("/proc/{pid}/cmdline"))?;
            let args = cmdline
                .split(|&b| b == 0)
                .filter_map(|a| std::str::from_utf8(a).ok());
            native::java_agent(args)
        };
        let mut components: Vec<Component> = info
            .sdk_settings
            .java_agent
            .clone()
            .or_else(from_command_line)
            .map(|jar| native::java_agent_component(&jar))
            .into_iter()
            .collect();
        if let Some(maps) = read_bounded(&format!("/proc/{pid}/maps")) {
            components.extend(native::mapped_libraries(&String::from_utf8_lossy(&maps)));
        }
        components
    }
}

/// Why the environment says no spans are exported, if it does.
fn spans_off(settings: &SdkSettings) -> Option<String> {
    if settings.sdk_disabled {
        return Some("OTEL_SDK_DISABLED=true".into());
    }
    settings
        .traces_exporter
        .as_deref()
        .filter(|e| !e.split(',').any(|one| one.trim() == "otlp"))
        .map(|e| format!("OTEL_TRACES_EXPORTER={e}"))
}

/// A /proc text file, at most [`MAX_PROC_TEXT`] bytes.
fn read_bounded(path: &str) -> Option<Vec<u8>> {
    use std::io::Read as _;
    let mut text = Vec::new();
    File::open(path)
        .ok()?
        .take(MAX_PROC_TEXT)
        .read_to_end(&mut text)
        .ok()?;
    Some(text)
}

/// An error with its causes, on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests;
