//! Go's build information (`.go.buildinfo`): the Go version a program was built with and the
//! module list the go command stamped into it (main module, every module a linked package came
//! from with the version the build selected, and each module's `replace`), as `go version -m`
//! prints it. The Go TLS probes need the version (capture), the OpenTelemetry inventory the
//! modules (attribute); this module depends on neither, so both use it without a cycle.
//!
//! Bounded: a few reads of headers, the section name table and the blob itself, never the whole
//! file (see [`elf`]); every length the file gives is checked against the file and a limit
//! before it is read. Malformed input is an error, never a panic.
//!
//! The format, from Go's `debug/buildinfo` and `runtime/debug`: a 32-byte header (14-byte magic
//! `\xff Go buildinf:`, pointer size, flags). Go ≥ 1.18 (flags bit 2) writes the version and
//! the module text inline after the header, each with a varint length; older versions write two
//! pointers to Go `string` headers elsewhere in the data segment. The module text is framed by
//! 16-byte sentinels and has one tab-separated line per module (`path`, `mod`, `dep`, `=>` for
//! the replacement of the line before, `build`).

mod elf;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, fs::File, os::unix::fs::FileExt as _};

use self::elf::{ptr_at, Elf};

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
/// Go aligns the blob to 16 bytes; searched for on this alignment when there are no sections.
const ALIGN: usize = 16;
/// How far into the writable segment the blob is searched for (Go's reader: 64 KiB).
const SEARCH_LEN: u64 = 64 * 1024;
/// The version string: `go1.26.8`, or `devel go1.27-abcdef Tue ...`.
const MAX_VERSION: u64 = 1024;
/// The module text: ~100 bytes per module; Jaeger (hundreds of modules) has ~40 KB.
pub const MAX_MODINFO: u64 = 1024 * 1024;
/// Modules kept per executable.
const MAX_DEPS: usize = 20_000;
/// The module text is framed by 16-byte sentinels (cmd/go/internal/modload infoStart/infoEnd).
const SENTINEL_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BuildInfoError {
    #[error("reading {len} bytes at offset {offset} failed")]
    Read {
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{len} bytes at offset {offset} are past the end of the file ({size} bytes)")]
    PastEnd { offset: u64, len: usize, size: u64 },
    #[error("malformed ({0})")]
    Malformed(&'static str),
    #[error("the {what} is {size} bytes, more than the agent reads")]
    TooLarge { what: &'static str, size: u64 },
    #[error("big-endian build information is not read")]
    BigEndian,
}

/// Random access to a file's bytes: a mapped file lends them, an open file reads them.
pub trait ReadAt {
    fn size(&self) -> u64;
    /// Exactly `len` bytes at `offset`; an error if the file is shorter.
    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, BuildInfoError>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, BuildInfoError> {
        usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(len)?))
            .map(Cow::Borrowed)
            .ok_or(BuildInfoError::PastEnd {
                offset,
                len,
                size: self.size(),
            })
    }
}

/// An open file and its size (taken once: a file that shrinks meanwhile gives read errors).
pub struct FileReader {
    file: File,
    size: u64,
}

impl FileReader {
    pub fn new(file: File) -> std::io::Result<Self> {
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }

    /// With the size the caller already took (`fstat`).
    pub fn with_size(file: File, size: u64) -> Self {
        Self { file, size }
    }
}

impl ReadAt for FileReader {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, offset: u64, len: usize) -> Result<Cow<'_, [u8]>, BuildInfoError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(BuildInfoError::PastEnd {
                offset,
                len,
                size: self.size,
            });
        }
        let mut buf = vec![0; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| BuildInfoError::Read {
                offset,
                len,
                source,
            })?;
        Ok(Cow::Owned(buf))
    }
}

/// A module as the build selected it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    /// `v1.47.0`; `(devel)` for the main module; empty when the go command had none.
    pub version: String,
    pub replace: Option<Replacement>,
}

/// What a `replace` directive put in a module's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replacement {
    /// Another version, or another module (a fork).
    Module { path: String, version: String },
    /// A directory on the build machine. Its path is not kept: it names that machine's
    /// directories, and only module paths and versions leave the host.
    Directory,
}

/// What `go version -m` prints, minus the build settings (flags may hold secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildInfo {
    /// `runtime.buildVersion`, e.g. `go1.26.8`.
    pub go_version: String,
    /// The main module (`mod` line); absent in binaries built outside module mode.
    pub main: Option<Module>,
    /// Every other module a linked package came from (`dep` lines), in the file's order.
    pub deps: Vec<Module>,
    /// `dep` lines past [`MAX_DEPS`], not kept.
    pub deps_dropped: usize,
}

/// The build information of a Go executable; `Ok(None)` when the file is not a Go executable
/// (not ELF, or no build information: also Go before 1.13).
pub fn read(file: &(impl ReadAt + ?Sized)) -> Result<Option<BuildInfo>, BuildInfoError> {
    let Some((go_version, modinfo)) = read_raw(file)? else {
        return Ok(None);
    };
    Ok(Some(parse_modinfo(go_version, &modinfo)))
}

/// Only the Go version (the TLS probes' question): the module text is not parsed.
pub fn go_version(file: &(impl ReadAt + ?Sized)) -> Result<Option<String>, BuildInfoError> {
    Ok(read_raw(file)?.map(|(version, _)| version))
}

/// The version and the module text without its sentinels (empty if there is none).
fn read_raw(file: &(impl ReadAt + ?Sized)) -> Result<Option<(String, Vec<u8>)>, BuildInfoError> {
    let Some(elf) = Elf::parse(file)? else {
        return Ok(None);
    };
    // Where the blob is, and how many bytes after it probably hold the inline strings.
    let (blob, extent) = match elf.section(file, ".go.buildinfo")? {
        Some(section) => (section.offset, section.size),
        // Every Go ≥ 1.13 ELF executable has the section: a file with sections but not this
        // one is not Go.
        None if elf.has_sections() => return Ok(None),
        None => match search_data_segment(file, &elf)? {
            Some(at) => (at, SEARCH_LEN),
            None => return Ok(None),
        },
    };
    let header = file.read_at(blob, HEADER_LEN)?;
    if header.get(..MAGIC.len()) != Some(MAGIC.as_slice()) {
        return Err(BuildInfoError::Malformed("no build information magic"));
    }
    let (Some(&ptr_size), Some(&flags)) = (header.get(14), header.get(15)) else {
        return Err(BuildInfoError::Malformed("short header"));
    };
    let ptr_size = usize::from(ptr_size);
    let (version, modinfo) = if flags & 2 != 0 {
        read_inline(file, blob + HEADER_LEN as u64, extent)?
    } else if flags & 1 != 0 {
        return Err(BuildInfoError::BigEndian);
    } else {
        let version = ptr_at(&header, 16, ptr_size)?;
        let modinfo = ptr_at(&header, 16 + ptr_size, ptr_size)?;
        (
            read_go_string(file, &elf, version, ptr_size, MAX_VERSION, "version")?,
            read_go_string(file, &elf, modinfo, ptr_size, MAX_MODINFO, "module list")?,
        )
    };
    if version.is_empty() {
        return Ok(None);
    }
    let version = String::from_utf8(version).map_err(|_| BuildInfoError::Malformed("version"))?;
    Ok(Some((version, strip_sentinels(modinfo))))
}

/// Go ≥ 1.18: two varint-prefixed strings right after the header.
/// `extent`: the section's size (or the search length), a hint for the first read.
fn read_inline(
    file: &(impl ReadAt + ?Sized),
    at: u64,
    extent: u64,
) -> Result<(Vec<u8>, Vec<u8>), BuildInfoError> {
    // One read usually holds both: the section ends after them (Go ≥ 1.18 writes them inline).
    let first = extent
        .saturating_sub(HEADER_LEN as u64)
        .clamp(16, MAX_VERSION + SEARCH_LEN)
        .min(file.size().saturating_sub(at));
    let chunk = file.read_at(at, usize::try_from(first).unwrap_or(0))?;
    let (version_len, n) = uvarint(&chunk).ok_or(BuildInfoError::Malformed("version length"))?;
    if version_len > MAX_VERSION {
        return Err(BuildInfoError::TooLarge {
            what: "version",
            size: version_len,
        });
    }
    let version_end = n + version_len as usize;
    let version = chunk
        .get(n..version_end)
        .ok_or(BuildInfoError::Malformed("version past the end"))?
        .to_vec();
    let rest = chunk.get(version_end..).unwrap_or_default();
    let (modinfo_len, m) = uvarint(rest).ok_or(BuildInfoError::Malformed("module list length"))?;
    if modinfo_len > MAX_MODINFO {
        return Err(BuildInfoError::TooLarge {
            what: "module list",
            size: modinfo_len,
        });
    }
    let start = version_end + m;
    let modinfo = match chunk.get(start..start + modinfo_len as usize) {
        Some(bytes) => bytes.to_vec(),
        // Longer than the first read: read exactly the rest.
        None => file
            .read_at(at + start as u64, modinfo_len as usize)?
            .into_owned(),
    };
    Ok((version, modinfo))
}

/// Before Go 1.18: a Go `string` header (pointer, length) at virtual address `addr`.
fn read_go_string(
    file: &(impl ReadAt + ?Sized),
    elf: &Elf,
    addr: u64,
    ptr_size: usize,
    limit: u64,
    what: &'static str,
) -> Result<Vec<u8>, BuildInfoError> {
    let header_len = 2 * ptr_size as u64;
    let at = elf
        .offset_of(addr, header_len)
        .ok_or(BuildInfoError::Malformed("string header not in a segment"))?;
    let header = file.read_at(at, 2 * ptr_size)?;
    let (data, len) = (
        ptr_at(&header, 0, ptr_size)?,
        ptr_at(&header, ptr_size, ptr_size)?,
    );
    if len > limit {
        return Err(BuildInfoError::TooLarge { what, size: len });
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let at = elf
        .offset_of(data, len)
        .ok_or(BuildInfoError::Malformed("string not in a segment"))?;
    Ok(file.read_at(at, len as usize)?.into_owned())
}

/// No section headers: the blob is near the start of the first writable segment, aligned.
fn search_data_segment(
    file: &(impl ReadAt + ?Sized),
    elf: &Elf,
) -> Result<Option<u64>, BuildInfoError> {
    let Some((segment, _)) = elf.loads.iter().find(|(_, writable)| *writable) else {
        return Ok(None);
    };
    let len = segment
        .size
        .min(SEARCH_LEN)
        .min(file.size().saturating_sub(segment.offset));
    let data = file.read_at(segment.offset, usize::try_from(len).unwrap_or(0))?;
    Ok((0..data.len().saturating_sub(HEADER_LEN))
        .step_by(ALIGN)
        .find(|&i| data.get(i..).is_some_and(|d| d.starts_with(MAGIC)))
        .map(|i| segment.offset + i as u64))
}

/// The module text between the sentinels, or nothing if it is not framed as Go frames it.
fn strip_sentinels(modinfo: Vec<u8>) -> Vec<u8> {
    let n = modinfo.len();
    if n > 2 * SENTINEL_LEN && modinfo[n - SENTINEL_LEN - 1] == b'\n' {
        modinfo[SENTINEL_LEN..n - SENTINEL_LEN].to_vec()
    } else {
        Vec::new()
    }
}

/// Parses the module lines; lines it does not know (or cannot read) are skipped, as the go
/// command's own reader would reject them but a partial answer is still worth having.
fn parse_modinfo(go_version: String, text: &[u8]) -> BuildInfo {
    let mut info = BuildInfo {
        go_version,
        main: None,
        deps: Vec::new(),
        deps_dropped: 0,
    };
    // The module being read: a `=>` line replaces the module of the line before.
    #[derive(PartialEq)]
    enum Last {
        Main,
        Dep,
        Other,
    }
    let mut last = Last::Other;
    for line in text.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            last = Last::Other;
            continue;
        };
        let mut fields = line.split('\t');
        let (Some(word), Some(path)) = (fields.next(), fields.next()) else {
            last = Last::Other;
            continue;
        };
        let version = fields.next().unwrap_or_default();
        match word {
            "mod" => {
                info.main = Some(module(path, version));
                last = Last::Main;
            }
            "dep" if info.deps.len() < MAX_DEPS => {
                info.deps.push(module(path, version));
                last = Last::Dep;
            }
            "dep" => {
                info.deps_dropped += 1;
                last = Last::Other;
            }
            "=>" => {
                // A directory replacement: a filesystem path (`./`, `../`, `/`; module paths
                // never start so), recorded with version `(devel)`.
                let replacement =
                    if path.starts_with(['.', '/']) || version.is_empty() || version == "(devel)" {
                        Replacement::Directory
                    } else {
                        Replacement::Module {
                            path: path.to_owned(),
                            version: version.to_owned(),
                        }
                    };
                let target = match last {
                    Last::Main => info.main.as_mut(),
                    Last::Dep => info.deps.last_mut(),
                    Last::Other => None,
                };
                if let Some(m) = target {
                    m.replace = Some(replacement);
                }
                last = Last::Other;
            }
            _ => last = Last::Other,
        }
    }
    info
}

fn module(path: &str, version: &str) -> Module {
    Module {
        path: path.to_owned(),
        version: version.to_owned(),
        replace: None,
    }
}

/// Go's unsigned varint (encoding/binary.Uvarint): at most 10 bytes.
fn uvarint(data: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, &b) in data.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}
