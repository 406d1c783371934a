//! OpenSSL: which files carry it, where its `SSL_*` functions are, and the uprobes on them.
//!
//! Targets: every `libssl*.so*` mapped by a running process, the host's own libssl in the usual
//! library directories (probed at startup even if nothing maps it yet: Python loads it lazily at
//! `import ssl`), and executables that export `SSL_write` (OpenSSL linked statically, e.g.
//! Node). See agent-ebpf/src/tls.rs for what the probes do.

use std::{
    fs::File,
    path::{Path, PathBuf},
    time::Instant,
};

use agent_common::syscall;
use aya::Ebpf;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

use super::file_probe::{
    load_file_probes, FileLink, FileProbe, Mapped, TlsError, MAX_PROBED_FILES,
};

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

/// Where distributions put the host's libssl.
pub const LIB_DIRS: [&str; 8] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// Why a file could not be checked for OpenSSL functions.
#[derive(Debug, thiserror::Error)]
enum ElfError {
    #[error("opening it failed")]
    Open(#[source] std::io::Error),
    #[error("it is not a readable ELF file")]
    Parse(#[source] object::Error),
}

/// The `SSL_*` file offsets of one ELF file, in [`ENTRY`] order.
type Offsets = [Option<u64>; 4];

/// What [`OpenSslProbes::consider`] made of a file.
pub enum Considered {
    /// The file exports no `SSL_write`.
    NotOpenSsl,
    /// Probed, or not (too many files, unreadable, the kernel refused): said in the log.
    Done,
}

/// The OpenSSL files probed and their links (detached on drop).
#[derive(Default)]
pub struct OpenSslProbes {
    probed: Vec<PathBuf>,
    links: Vec<FileLink>,
    /// The entry and return programs.
    programs: Vec<FileProbe>,
}

impl OpenSslProbes {
    /// Loads the entry and return programs: two links per OpenSSL file with `uprobe_multi`,
    /// else two per function.
    pub fn load(ebpf: &mut Ebpf, object: &[u8]) -> Result<Self, TlsError> {
        Ok(Self {
            programs: load_file_probes(ebpf, object, &[ENTER, RETURN])?,
            ..Self::default()
        })
    }

    pub fn probed(&self) -> &[PathBuf] {
        &self.probed
    }

    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Probes `path` if it exports `SSL_write`.
    pub fn consider(&mut self, ebpf: &mut Ebpf, path: &Path) -> Considered {
        let started = Instant::now();
        let offsets = match ssl_offsets(path) {
            Ok(Some(offsets)) => offsets,
            Ok(None) => return Considered::NotOpenSsl,
            Err(e) => {
                log::debug!("not probing {}: {e}", path.display());
                return Considered::Done;
            }
        };
        if self.probed.len() >= MAX_PROBED_FILES {
            log::warn!(
                "not probing {}: already {MAX_PROBED_FILES} TLS libraries probed",
                path.display()
            );
            return Considered::Done;
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
        Considered::Done
    }
}

/// `libssl.so.3`, `libssl.so.1.1`, and wheels' vendored `libssl-1a2b3c4d.so.3`; not NSS's
/// `libssl3.so` (no `SSL_write`; the symbol check would skip it anyway).
pub fn is_libssl(file_name: &str) -> bool {
    (file_name.starts_with("libssl.so") || file_name.starts_with("libssl-"))
        && file_name.contains(".so")
}

/// Executable mappings of TLS libraries in a /proc/<pid>/maps text.
pub fn libssl_paths(maps: &str) -> impl Iterator<Item = &str> {
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
