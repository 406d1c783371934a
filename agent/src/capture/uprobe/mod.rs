//! TLS plaintext: finds the TLS stacks processes run (OpenSSL files, Go executables) and
//! attaches the uprobes to each once.
//!
//! A uprobe belongs to the file (inode), not to a process: one attach covers every process that
//! maps the file, now and later, so files are deduplicated by device and inode. Files are found
//! in /proc/<pid>/maps and /proc/<pid>/exe (opened through /proc/<pid>/root, so container files
//! resolve), at startup, at every exec (`sched_process_exec` record) and every rescan. The
//! links live in the `Ebpf` owned by `Capture` and detach when it drops.
//!
//! Layout: `file_probe` (attaching a program to offsets of a file), `multi` (`uprobe_multi`
//! links, which aya 0.14 cannot make), `openssl` and `gotls` (what to probe where).

mod file_probe;
pub mod gotls;
pub mod multi;
pub mod openssl;

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::Ebpf;

pub use self::file_probe::{chain, TlsError};
use self::{
    gotls::GoProbes,
    openssl::{is_libssl, libssl_paths, Considered, OpenSslProbes, LIB_DIRS},
};

/// How often running processes are rescanned for newly mapped TLS libraries.
pub const RESCAN_EVERY: Duration = Duration::from_secs(2);
/// Files remembered as checked; past it the set is cleared (files are then re-checked once).
const MAX_CHECKED: usize = 65_536;

#[derive(Default)]
pub struct TlsProbes {
    /// (device, inode) of every file already checked, probed or not.
    checked: HashSet<(u64, u64)>,
    last_scan: Option<Instant>,
    openssl: OpenSslProbes,
    /// Go executables (crypto/tls), checked for every file that is not an OpenSSL.
    go: GoProbes,
    /// `--tls off`: no scans, no probes.
    disabled: bool,
}

/// Prepares the OpenSSL and Go uprobes.
pub fn load(ebpf: &mut Ebpf, object: &[u8]) -> Result<TlsProbes, TlsError> {
    Ok(TlsProbes {
        openssl: OpenSslProbes::load(ebpf, object)?,
        go: gotls::load(ebpf, object)?,
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

    /// Go executables skipped because they predate Go's register ABI.
    pub fn go_too_old(&self) -> usize {
        self.go.too_old()
    }

    /// OpenSSL files probed so far.
    pub fn probed(&self) -> &[PathBuf] {
        self.openssl.probed()
    }

    pub fn links(&self) -> usize {
        self.openssl.links() + self.go.links()
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

    /// A process called execve: probe its executable if it carries a TLS stack.
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

    /// Checks one file (once per device and inode) and probes it if it carries OpenSSL, else
    /// if it is a Go executable with crypto/tls.
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
        if let Considered::NotOpenSsl = self.openssl.consider(ebpf, path) {
            self.go.consider(ebpf, path);
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
