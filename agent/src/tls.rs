//! Finds the OpenSSL copies processes run and attaches the `SSL_*` uprobes to each once.
//!
//! Targets: every `libssl*.so*` mapped by a running process (from /proc/<pid>/maps, opened
//! through /proc/<pid>/root so container files resolve), the host's own libssl in the usual
//! library directories (probed at startup even if nothing maps it yet: Python loads it lazily at
//! `import ssl`), and executables that export `SSL_write` (OpenSSL linked statically, e.g. Node),
//! checked at every exec (`sched_process_exec` record) and every rescan. A uprobe belongs to the
//! file (inode), not to a process: one attach covers every process that maps the file, now and
//! later, so files are deduplicated by device and inode. The links live in the `Ebpf` owned by
//! `Capture` and detach when it drops.

use std::{
    collections::HashSet,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent_common::syscall;
use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        ProbeKind, RawTracePoint, UProbe,
    },
    Ebpf,
};

use crate::uprobe_multi::{MultiLink, MultiProgram};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

/// OpenSSL function → the cookie its entry uprobe carries (the event's syscall id).
const ENTRY: [(u8, &str); 4] = [
    (syscall::SSL_WRITE, "SSL_write"),
    (syscall::SSL_WRITE_EX, "SSL_write_ex"),
    (syscall::SSL_READ, "SSL_read"),
    (syscall::SSL_READ_EX, "SSL_read_ex"),
];
/// Uprobe on the entry of all four (told apart by the cookie).
const ENTER: &str = "tracegap_ssl_enter";
/// Uretprobe attached to all four.
const RETURN: &str = "tracegap_ssl_ret";
const EXEC_PROGRAM: &str = "tracegap_exec";

/// Where distributions put the host's libssl.
const LIB_DIRS: [&str; 8] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// How often running processes are rescanned for newly mapped TLS libraries.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// Files remembered as checked; past it the set is cleared (files are then re-checked once).
const MAX_CHECKED: usize = 65_536;
/// Files probed at most; a host with more distinct OpenSSL copies gets a warning.
const MAX_PROBED: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {name} failed to load or attach")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// Why a file could not be checked for OpenSSL functions.
#[derive(Debug, thiserror::Error)]
enum ElfError {
    #[error("opening it failed")]
    Open(#[source] std::io::Error),
    #[error("it is not a readable ELF file")]
    Parse(#[source] object::Error),
}

/// A file mapped read-only. Reading symbol names through `object::ReadCache` costs a read(2)
/// per name: ~100 ms for Node's 100k dynamic symbols, longer than Node takes from exec to its
/// first request. Mapped, pages fault in on demand.
pub(crate) struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub(crate) fn new(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // SAFETY: a private read-only mapping of an open file; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes until drop. A file rewritten in place while
        // mapped could change under the parser, which bounds-checks everything it reads;
        // executables and libraries are replaced by rename, not rewritten.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped, once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The `SSL_*` file offsets of one ELF file, in [`ENTRY`] order.
type Offsets = [Option<u64>; 4];

#[derive(Default)]
pub struct TlsProbes {
    /// (device, inode) of every file already checked, probed or not.
    checked: HashSet<(u64, u64)>,
    /// Files probed, for the log and the count.
    probed: Vec<PathBuf>,
    /// Uprobe links, detached on drop.
    links: Vec<FileLink>,
    /// The entry and return programs.
    programs: Vec<FileProbe>,
    last_scan: Option<Instant>,
    /// Go executables (crypto/tls), checked for every file that is not an OpenSSL.
    go: crate::gotls::GoProbes,
    /// `--tls off`: no scans, no probes.
    disabled: bool,
}

/// A uprobe program attached to files at offsets, each with a cookie: one `uprobe_multi` link
/// per file when the kernel has them (see uprobe_multi.rs), else one aya perf-event uprobe per
/// offset. Shared by the OpenSSL and the Go probes.
pub(crate) struct FileProbe {
    name: &'static str,
    /// Loaded for `uprobe_multi` links, until the kernel refuses one.
    multi: Option<MultiProgram>,
}

/// A link of a [`FileProbe`], detached on drop.
pub(crate) enum FileLink {
    Multi(#[allow(dead_code, reason = "held for its Drop")] MultiLink),
    Perf(#[allow(dead_code, reason = "held for its Drop")] UProbeLink),
}

/// Loads `names` for `uprobe_multi` links (one relocation pass), or, when the kernel refuses
/// that, as aya's perf-event uprobes.
pub(crate) fn load_file_probes(
    ebpf: &mut Ebpf,
    object: &[u8],
    names: &[&'static str],
) -> Result<Vec<FileProbe>, TlsError> {
    match crate::uprobe_multi::load(ebpf, object, names) {
        Ok(programs) if programs.len() == names.len() => Ok(names
            .iter()
            .zip(programs)
            .map(|(&name, p)| FileProbe {
                name,
                multi: Some(p),
            })
            .collect()),
        other => {
            if let Err(e) = other {
                log::info!("{}: per-offset uprobes ({})", names.join(", "), chain(&e));
            }
            names
                .iter()
                .map(|&name| {
                    load_perf(ebpf, name)?;
                    Ok(FileProbe { name, multi: None })
                })
                .collect()
        }
    }
}

/// Loads `name` for perf-event uprobes (once).
fn load_perf(ebpf: &mut Ebpf, name: &'static str) -> Result<(), TlsError> {
    let program: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(TlsError::MissingProgram(name))?
        .try_into()
        .map_err(|source| TlsError::Program { name, source })?;
    match program.load() {
        Ok(()) | Err(aya::programs::ProgramError::AlreadyLoaded) => Ok(()),
        Err(source) => Err(TlsError::Program { name, source }),
    }
}

impl FileProbe {
    /// Attaches to `offsets` (file offsets) of `path` in every process, one cookie each.
    pub(crate) fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
    ) -> Vec<FileLink> {
        let name = self.name;
        if let Some(multi) = &self.multi {
            // A uretprobe program gets a return link (the section says which it is).
            let ret = ebpf
                .program(name)
                .and_then(|p| <&UProbe>::try_from(p).ok())
                .is_some_and(|p| matches!(p.kind(), ProbeKind::Return));
            match multi.attach(path, offsets, cookies, ret) {
                Ok(link) => return vec![FileLink::Multi(link)],
                Err(e) => {
                    log::warn!(
                        "{name}: uprobe_multi refused, using per-offset uprobes from now on: {}",
                        chain(&e)
                    );
                    self.multi = None;
                }
            }
        }
        if let Err(e) = load_perf(ebpf, name) {
            log::warn!("{}", chain(&e));
            return Vec::new();
        }
        offsets
            .iter()
            .zip(cookies)
            .filter_map(
                |(&offset, &cookie)| match attach(ebpf, name, path, offset, Some(cookie)) {
                    Ok(link) => Some(FileLink::Perf(link)),
                    Err(e) => {
                        log::warn!(
                            "attaching {name} at {offset:#x} in {} failed: {}",
                            path.display(),
                            chain(&e)
                        );
                        None
                    }
                },
            )
            .collect()
    }
}

/// Attaches the exec tracepoint and prepares the uprobes (see [`FileProbe`]): two links per
/// OpenSSL file with `uprobe_multi`, else two per function.
pub fn load(ebpf: &mut Ebpf, object: &[u8]) -> Result<TlsProbes, TlsError> {
    let name = EXEC_PROGRAM;
    let exec: &mut RawTracePoint = ebpf
        .program_mut(name)
        .ok_or(TlsError::MissingProgram(name))?
        .try_into()
        .map_err(|source| TlsError::Program { name, source })?;
    exec.load()
        .map_err(|source| TlsError::Program { name, source })?;
    exec.attach("sched_process_exec")
        .map_err(|source| TlsError::Program { name, source })?;
    Ok(TlsProbes {
        programs: load_file_probes(ebpf, object, &[ENTER, RETURN])?,
        go: crate::gotls::load(ebpf, object)?,
        ..TlsProbes::default()
    })
}

impl TlsProbes {
    /// For `--tls off`: never scans nor probes.
    pub fn disabled() -> Self {
        Self {
            disabled: true,
            ..Self::default()
        }
    }

    /// Go executables probed so far.
    pub fn go_probed(&self) -> &[PathBuf] {
        self.go.probed()
    }

    /// Files probed so far.
    pub fn probed(&self) -> &[PathBuf] {
        &self.probed
    }

    pub fn links(&self) -> usize {
        self.links.len() + self.go.links()
    }

    /// The host's libssl, then everything running processes map or execute.
    pub fn scan_all(&mut self, ebpf: &mut Ebpf) {
        if self.disabled {
            return;
        }
        for dir in LIB_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if is_libssl(&entry.file_name().to_string_lossy()) {
                    self.consider(ebpf, &entry.path());
                }
            }
        }
        self.scan_processes(ebpf);
        self.last_scan = Some(Instant::now());
    }

    /// [`TlsProbes::scan_all`]'s process part, at most every [`RESCAN_EVERY`].
    pub fn rescan_if_due(&mut self, ebpf: &mut Ebpf) {
        if self.disabled || self.last_scan.is_some_and(|t| t.elapsed() < RESCAN_EVERY) {
            return;
        }
        let started = Instant::now();
        self.scan_processes(ebpf);
        log::debug!("TLS rescan of /proc took {:?}", started.elapsed());
        self.last_scan = Some(Instant::now());
    }

    /// A process called execve: probe its executable if it carries OpenSSL.
    pub fn on_exec(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.disabled {
            return;
        }
        let started = Instant::now();
        self.consider_exe(ebpf, pid);
        log::debug!("exec of {pid} checked in {:?}", started.elapsed());
    }

    fn consider_exe(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            self.consider(ebpf, &in_root_of(pid, &exe));
        }
    }

    fn scan_processes(&mut self, ebpf: &mut Ebpf) {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return;
        };
        let own = std::process::id().to_string();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let pid = name.to_string_lossy();
            if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == own {
                continue;
            }
            let Ok(pid_num) = pid.parse() else { continue };
            self.consider_exe(ebpf, pid_num);
            let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
                continue;
            };
            for path in libssl_paths(&maps) {
                self.consider(ebpf, &in_root_of(pid_num, Path::new(path)));
            }
        }
    }

    /// Checks one file (once per device and inode) and probes it if it exports `SSL_write`.
    fn consider(&mut self, ebpf: &mut Ebpf, path: &Path) {
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        if !meta.is_file() || !self.checked.insert((meta.dev(), meta.ino())) {
            return;
        }
        if self.checked.len() > MAX_CHECKED {
            self.checked.clear();
        }
        let started = Instant::now();
        let offsets = match ssl_offsets(path) {
            Ok(Some(offsets)) => offsets,
            Ok(None) => {
                self.go.consider(ebpf, path);
                return;
            }
            Err(e) => {
                log::debug!("not probing {}: {e}", path.display());
                return;
            }
        };
        if self.probed.len() >= MAX_PROBED {
            log::warn!(
                "not probing {}: already {MAX_PROBED} TLS libraries probed",
                path.display()
            );
            return;
        }
        let before = self.links.len();
        // Both programs at every function found; the entry's cookie names the function.
        let (found, cookies): (Vec<u64>, Vec<u64>) = ENTRY
            .iter()
            .zip(offsets)
            .filter_map(|((kind, _), offset)| Some((offset?, u64::from(*kind))))
            .unzip();
        for program in &mut self.programs {
            let links = program.attach(ebpf, path, &found, &cookies);
            self.links.extend(links);
        }
        if self.links.len() > before {
            log::info!(
                "TLS probes on {} ({} links, {} ms)",
                path.display(),
                self.links.len() - before,
                started.elapsed().as_millis()
            );
            self.probed.push(path.to_owned());
        }
    }
}

/// A path seen by `pid` (from its maps or exe link), as the agent can open it: itself when the
/// process shares the agent's root, else under /proc/<pid>/root (a container). The kernel's
/// uprobe path lookup refuses /proc/<pid>/exe itself (ENOENT, measured).
fn in_root_of(pid: u32, path: &Path) -> PathBuf {
    let root = format!("/proc/{pid}/root");
    let same_root = match (std::fs::metadata(&root), std::fs::metadata("/")) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    if same_root {
        path.to_owned()
    } else {
        Path::new(&root).join(path.strip_prefix("/").unwrap_or(path))
    }
}

fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    path: &Path,
    offset: u64,
    cookie: Option<u64>,
) -> Result<UProbeLink, TlsError> {
    let program: &mut UProbe = ebpf
        .program_mut(name)
        .ok_or(TlsError::MissingProgram(name))?
        .try_into()
        .map_err(|source| TlsError::Program { name, source })?;
    let id = program
        .attach(
            UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(offset),
                cookie,
            },
            path,
            UProbeScope::AllProcesses,
        )
        .map_err(|source| TlsError::Program { name, source })?;
    program
        .take_link(id)
        .map_err(|source| TlsError::Program { name, source })
}

/// An error with its sources, for one log line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// `libssl.so.3`, `libssl.so.1.1`, and wheels' vendored `libssl-1a2b3c4d.so.3`; not NSS's
/// `libssl3.so` (no `SSL_write`; the symbol check would skip it anyway).
fn is_libssl(file_name: &str) -> bool {
    (file_name.starts_with("libssl.so") || file_name.starts_with("libssl-"))
        && file_name.contains(".so")
}

/// Executable mappings of TLS libraries in a /proc/<pid>/maps text.
fn libssl_paths(maps: &str) -> impl Iterator<Item = &str> {
    maps.lines().filter_map(|line| {
        // address perms offset dev inode path
        let mut fields = line.split_whitespace();
        let perms = fields.nth(1)?;
        let path = fields.nth(3)?;
        let name = path.rsplit('/').next()?;
        (perms.contains('x') && path.starts_with('/') && is_libssl(name)).then_some(path)
    })
}

/// File offsets of the `SSL_*` functions, or `None` when the file does not export `SSL_write`.
/// Reads only the headers and symbol tables (Node's binary is ~100 MB).
fn ssl_offsets(path: &Path) -> Result<Option<Offsets>, ElfError> {
    let file = File::open(path).map_err(ElfError::Open)?;
    let map = Mapped::new(&file).map_err(ElfError::Open)?;
    let obj = object::File::parse(map.bytes()).map_err(ElfError::Parse)?;
    let mut offsets: Offsets = [None; 4];
    for sym in obj.dynamic_symbols() {
        if !sym.is_definition() {
            continue;
        }
        let Ok(name) = sym.name() else { continue };
        let Some(i) = ENTRY.iter().position(|(_, s)| *s == name) else {
            continue;
        };
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = obj.section_by_index(index).map_err(ElfError::Parse)?;
        let Some((file_offset, _)) = section.file_range() else {
            continue;
        };
        offsets[i] = (sym.address() - section.address()).checked_add(file_offset);
    }
    Ok(offsets[0].is_some().then_some(offsets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_mappings() {
        let maps = "\
7f00-7f10 r--p 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f10-7f20 r-xp 00010000 08:01 123 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f20-7f30 r-xp 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f30-7f40 r-xp 00000000 08:01 125 /opt/venv/lib/python3.11/site-packages/x.libs/libssl-8e1e3b9a.so.3
7f40-7f50 r-xp 00000000 08:01 126 /usr/lib/x86_64-linux-gnu/libssl3.so
7f50-7f60 rw-p 00000000 00:00 0 
7f60-7f70 r-xp 00000000 00:00 0 [vdso]";
        let paths: Vec<&str> = libssl_paths(maps).collect();
        assert_eq!(
            paths,
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/opt/venv/lib/python3.11/site-packages/x.libs/libssl-8e1e3b9a.so.3"
            ]
        );
    }

    #[test]
    fn non_elf_files_are_not_targets() {
        let offsets = ssl_offsets(Path::new("/proc/self/status"));
        assert!(!matches!(offsets, Ok(Some(_))));
    }
}
