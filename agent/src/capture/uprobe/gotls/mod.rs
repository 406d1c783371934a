//! Go executables: finds `crypto/tls.(*Conn).Write` and `crypto/tls.(*Conn).Read` and attaches
//! the Go TLS uprobes (agent-ebpf/src/gotls.rs) to them, once per file.
//!
//! Go links its TLS stack statically and exports nothing, so the functions are located in the
//! binary itself: through `.symtab` when present, else through `.gopclntab`, the function table
//! the Go runtime needs for stack unwinding, which survives `-ldflags='-s -w'` and `strip`.
//! `Read` returns its bytes, and uretprobes crash Go programs (moving stacks), so its `RET`
//! instructions are found by decoding the function (iced-x86) and each gets a uprobe.
//!
//! The probes read arguments from registers: Go's internal register ABI, amd64 only, Go ≥ 1.17.
//! Every check that fails means no probe, never a guess: a uprobe at an address that is not an
//! instruction boundary would corrupt the program. Both functions must begin with Go's stack
//! bound check against the goroutine in R14 (`CMP ..., 0x10(R14)`), which confirms the entry,
//! and that R14 holds the goroutine the kernel side keys `Read` by.

use std::path::{Path, PathBuf};

use aya::Ebpf;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, Register};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SectionKind};

use agent_common::syscall;

use super::file_probe::{
    chain, load_file_probes, FileLink, FileProbe, Mapped, TlsError, MAX_PROBED_FILES,
};

mod pclntab;
use pclntab::Pclntab;

/// One program for every Go probe, told apart by the attach cookie.
pub const PROGRAM: &str = "tracegap_go_tls";
pub const WRITE_FN: &str = "crypto/tls.(*Conn).Write";
pub const READ_FN: &str = "crypto/tls.(*Conn).Read";
/// More `RET`s than this in `Read` means the decoding is not what we think (Go 1.19 has 7).
const MAX_RETURNS: usize = 64;

/// Why a file that looked like a Go executable was not probed.
#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("opening it failed")]
    Open(#[source] std::io::Error),
    #[error("it is not a readable ELF file")]
    Elf(#[source] object::Error),
    #[error(".gopclntab is malformed ({0})")]
    Pclntab(&'static str),
    #[error("{0} has no file bytes")]
    Unmapped(&'static str),
    #[error("{0} does not start with Go's stack check against R14")]
    Prologue(&'static str),
    #[error("{function} has an undecodable instruction at {address:#x}")]
    Decode {
        function: &'static str,
        address: u64,
    },
    #[error("{READ_FN} has {0} return instructions")]
    Returns(usize),
}

/// One function: virtual address, size, and where its first byte is in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub address: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// What the probes need from a Go executable, as file offsets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTls {
    /// `runtime.buildVersion` (e.g. `go1.19.8`), or "go1.18+" from the pclntab format alone.
    pub version: String,
    pub write: Function,
    pub read: Function,
    /// File offsets of the `RET` instructions of `Read`.
    pub read_returns: Vec<u64>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Inspection {
    NotGo,
    /// Go before 1.17: stack-based calling convention, which the probes do not read.
    TooOld(String),
    /// A Go program without `crypto/tls` (or with the functions inlined away).
    NoTls(String),
    Probe(GoTls),
}

/// Go TLS probes attached so far.
#[derive(Default)]
pub struct GoProbes {
    probed: Vec<PathBuf>,
    /// The one Go program: one link per executable with `uprobe_multi`, else one per offset.
    program: Option<FileProbe>,
    links: Vec<FileLink>,
    /// Go executables skipped because they predate the register ABI.
    too_old: usize,
}

/// Loads the Go uprobe program (attached per file later, see [`FileProbe`]).
pub fn load(ebpf: &mut Ebpf, object: &[u8]) -> Result<GoProbes, TlsError> {
    Ok(GoProbes {
        program: load_file_probes(ebpf, object, &[PROGRAM])?.pop(),
        ..GoProbes::default()
    })
}

impl GoProbes {
    pub fn probed(&self) -> &[PathBuf] {
        &self.probed
    }

    pub fn too_old(&self) -> usize {
        self.too_old
    }

    pub fn links(&self) -> usize {
        self.links.len()
    }

    /// Probes `path` if it is a Go executable with `crypto/tls`. Called once per file (device +
    /// inode) by `TlsProbes`.
    pub fn consider(&mut self, ebpf: &mut Ebpf, path: &Path) {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let started = std::time::Instant::now();
        let go = match inspect_path(path) {
            Ok(Inspection::Probe(go)) => go,
            Ok(Inspection::NotGo) => return,
            Ok(Inspection::NoTls(version)) => {
                log::debug!("{} ({version}) has no crypto/tls", path.display());
                return;
            }
            Ok(Inspection::TooOld(version)) => {
                self.too_old += 1;
                log::info!(
                    "not probing {}: built with {version}, Go TLS capture needs Go >= 1.17 \
                     ({} such executables so far)",
                    path.display(),
                    self.too_old
                );
                return;
            }
            Err(e) => {
                log::warn!("not probing Go TLS in {}: {}", path.display(), chain(&e));
                return;
            }
        };
        if self.probed.len() >= MAX_PROBED_FILES {
            log::warn!(
                "not probing {}: already {MAX_PROBED_FILES} Go executables probed",
                path.display()
            );
            return;
        }
        let (offsets, cookies): (Vec<u64>, Vec<u64>) = [
            (go.write.file_offset, u64::from(syscall::GO_TLS_WRITE)),
            (go.read.file_offset, u64::from(syscall::GO_TLS_READ)),
        ]
        .into_iter()
        .chain(
            go.read_returns
                .iter()
                .map(|&o| (o, syscall::GO_TLS_READ_RETURN_COOKIE)),
        )
        .unzip();
        let before = self.links.len();
        if let Some(program) = &mut self.program {
            let links = program.attach(ebpf, path, &offsets, &cookies);
            self.links.extend(links);
        }
        if self.links.len() > before {
            log::info!(
                "Go TLS probes on {} ({}, {} offsets, {} links, {} ms)",
                path.display(),
                go.version,
                offsets.len(),
                self.links.len() - before,
                started.elapsed().as_millis()
            );
            self.probed.push(path.to_owned());
        }
    }
}

pub fn inspect_path(path: &Path) -> Result<Inspection, GoError> {
    let file = std::fs::File::open(path).map_err(GoError::Open)?;
    let map = Mapped::new(&file).map_err(GoError::Open)?;
    inspect(map.bytes())
}

/// Finds the TLS functions of a Go ELF executable.
pub fn inspect(data: &[u8]) -> Result<Inspection, GoError> {
    let obj = object::File::parse(data).map_err(GoError::Elf)?;
    let pclntab = [".gopclntab", ".data.rel.ro.gopclntab"]
        .into_iter()
        .find_map(|name| obj.section_by_name(name));
    // The version from `.go.buildinfo` (crate::buildinfo, shared with the OTel inventory).
    let buildinfo = crate::buildinfo::go_version(data).ok().flatten();
    let Some(pclntab) = pclntab else {
        if buildinfo.is_some() {
            // A Go binary whose function table cannot be found: say so, do not skip quietly.
            return Err(GoError::Pclntab("no .gopclntab section"));
        }
        return Ok(Inspection::NotGo);
    };
    let pcln_data = pclntab
        .data()
        .map_err(|_| GoError::Unmapped(".gopclntab"))?;
    let text = obj
        .symbols()
        .find(|s| s.name() == Ok("runtime.text"))
        .map(|s| s.address())
        .or_else(|| obj.section_by_name(".text").map(|s| s.address()))
        .unwrap_or(0);
    let table = Pclntab::parse(pcln_data, text)?;
    let version = buildinfo.unwrap_or_else(|| table.min_version().to_owned());
    if !table.register_abi_possible() || go_minor(&version).is_some_and(|m| m < 17) {
        return Ok(Inspection::TooOld(version));
    }

    let mut found = [None; 2];
    for sym in obj.symbols() {
        let Ok(name) = sym.name() else { continue };
        let i = match name {
            WRITE_FN => 0,
            READ_FN => 1,
            _ => continue,
        };
        if sym.size() > 0 {
            found[i] = Some((sym.address(), sym.size()));
        }
    }
    if found.iter().any(Option::is_none) {
        let from_table = table.find(&[WRITE_FN, READ_FN])?;
        for (slot, entry) in found.iter_mut().zip(from_table) {
            if slot.is_none() {
                *slot = entry;
            }
        }
    }
    let [Some(write), Some(read)] = found else {
        return Ok(Inspection::NoTls(version));
    };
    let write = function(&obj, data, WRITE_FN, write)?;
    let read = function(&obj, data, READ_FN, read)?;
    let read_returns = returns(data, &read)?;
    Ok(Inspection::Probe(GoTls {
        version,
        write,
        read,
        read_returns,
    }))
}

/// The minor version of `go1.N[.P]`; `None` for other strings (`devel ...`: assume recent).
fn go_minor(version: &str) -> Option<u32> {
    let rest = version.strip_prefix("go1.")?;
    let digits = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..digits].parse().ok()
}

/// Locates a function in the file and checks its prologue.
fn function(
    obj: &object::File<'_>,
    data: &[u8],
    name: &'static str,
    (address, size): (u64, u64),
) -> Result<Function, GoError> {
    let section = obj
        .sections()
        .find(|s| {
            s.kind() == SectionKind::Text
                && address >= s.address()
                && address - s.address() < s.size()
        })
        .ok_or(GoError::Unmapped(name))?;
    let (offset, len) = section.file_range().ok_or(GoError::Unmapped(name))?;
    let within = address - section.address();
    if within.checked_add(size).is_none_or(|end| end > len) {
        return Err(GoError::Unmapped(name));
    }
    let f = Function {
        address,
        size,
        file_offset: offset + within,
    };
    if !stack_check_first(code(data, &f).ok_or(GoError::Unmapped(name))?, address) {
        return Err(GoError::Prologue(name));
    }
    Ok(f)
}

fn code<'a>(data: &'a [u8], f: &Function) -> Option<&'a [u8]> {
    let start = usize::try_from(f.file_offset).ok()?;
    let end = start.checked_add(usize::try_from(f.size).ok()?)?;
    data.get(start..end)
}

/// Go's prologue (register ABI): `CMP RSP, [R14+0x10]`, or `LEA R12, [RSP-n]` then
/// `CMP R12, [R14+0x10]` for large frames; `g.stackguard0` is at offset 16 of the goroutine.
fn stack_check_first(code: &[u8], address: u64) -> bool {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    for _ in 0..2 {
        if !decoder.can_decode() {
            return false;
        }
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return false;
        }
        if instr.mnemonic() == Mnemonic::Cmp
            && instr.memory_base() == Register::R14
            && instr.memory_displacement64() == 0x10
        {
            return true;
        }
    }
    false
}

/// File offsets of the `RET` instructions of `f`. The function's bytes run to the next
/// function, padded with `INT3`, so decoding from the entry stays on instruction boundaries.
fn returns(data: &[u8], f: &Function) -> Result<Vec<u64>, GoError> {
    let code = code(data, f).ok_or(GoError::Unmapped(READ_FN))?;
    let mut decoder = Decoder::with_ip(64, code, f.address, DecoderOptions::NONE);
    let mut instr = Instruction::default();
    let mut found = Vec::new();
    while decoder.can_decode() {
        decoder.decode_out(&mut instr);
        if instr.is_invalid() {
            return Err(GoError::Decode {
                function: READ_FN,
                address: instr.ip(),
            });
        }
        if instr.mnemonic() == Mnemonic::Ret {
            found.push(f.file_offset + (instr.ip() - f.address));
        }
    }
    if found.is_empty() || found.len() > MAX_RETURNS {
        return Err(GoError::Returns(found.len()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
