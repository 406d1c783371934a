//! What the OpenSSL and the Go probes share: attaching one uprobe program to offsets of a file
//! (one `uprobe_multi` link per file where the kernel has them, else one perf-event uprobe per
//! offset), mapping files to inspect them, and the errors of doing so.

use std::{fs::File, path::Path};

use aya::{
    programs::{
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
        ProbeKind, UProbe,
    },
    Ebpf,
};

use super::multi::{MultiLink, MultiProgram};

/// Files probed at most, per kind of probe; a host with more distinct OpenSSL copies or Go
/// executables gets a warning.
pub const MAX_PROBED_FILES: usize = 512;

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

/// A file mapped read-only. Reading symbol names through `object::ReadCache` costs a read(2)
/// per name: ~100 ms for Node's 100k dynamic symbols, longer than Node takes from exec to its
/// first request. Mapped, pages fault in on demand.
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapped {
    pub fn new(file: &File) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
        if len == 0 {
            return Err(std::io::Error::other("empty file"));
        }
        // Shared, not private: the kernel copies the breakpoint (INT3) of every uprobe
        // registered on the file into each private mapping that may execute (VM_MAYEXEC, which
        // a PROT_READ MAP_PRIVATE mapping has; kernel/events/uprobes.c `valid_vma`), so a
        // private mapping of a file already probed by another agent, bpftrace or a profiler
        // reads 0xCC at the probe sites: Go's stack check is then "missing" and the file is not
        // probed, and RETs decoded past a breakpoint would be misplaced. A shared read-only
        // mapping (VM_MAYSHARE) reads the file.
        // SAFETY: a shared read-only mapping of a file opened read-only; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
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

/// A uprobe program attached to files at offsets, each with a cookie: one `uprobe_multi` link
/// per file when the kernel has them (see uprobe_multi.rs), else one aya perf-event uprobe per
/// offset. Shared by the OpenSSL and the Go probes.
pub struct FileProbe {
    name: &'static str,
    /// Loaded for `uprobe_multi` links, until the kernel refuses one.
    multi: Option<MultiProgram>,
}

/// A link of a [`FileProbe`], detached on drop.
pub enum FileLink {
    Multi(#[allow(dead_code, reason = "held for its Drop")] MultiLink),
    Perf(#[allow(dead_code, reason = "held for its Drop")] UProbeLink),
}

/// Loads `names` for `uprobe_multi` links (one relocation pass), or, when the kernel refuses
/// that, as aya's perf-event uprobes.
pub fn load_file_probes(
    ebpf: &mut Ebpf,
    object: &[u8],
    names: &[&'static str],
) -> Result<Vec<FileProbe>, TlsError> {
    match super::multi::load(ebpf, object, names) {
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
    pub fn attach(
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
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
