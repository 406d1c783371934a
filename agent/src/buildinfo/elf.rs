//! Just enough ELF to find Go's build information with bounded reads: the file header, the
//! section headers and their names, and the `PT_LOAD` segments (to turn the virtual addresses of
//! the pre-1.18 format into file offsets, and to search the data segment of a file whose section
//! headers were stripped). Never the symbol tables or code: a Go executable is tens of MB, and
//! this runs for every executable a process runs.
//!
//! Little-endian ELF only (32- and 64-bit), which covers every architecture the agent runs on.

use super::{BuildInfoError, ReadAt};

/// More sections than this is not a file we want to read (Go writes ~25, C++ ~40).
const MAX_SECTIONS: u64 = 4096;
/// More program headers than this neither (Go writes ~7).
const MAX_SEGMENTS: u64 = 256;
/// Section names live in one string table; Go's is a few hundred bytes.
const MAX_SECTION_NAMES: u64 = 64 * 1024;

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;

/// A section or segment: where its bytes are in the file and where they are in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub addr: u64,
    pub offset: u64,
    pub size: u64,
}

/// The parts of an ELF file this module reads.
#[derive(Debug)]
pub struct Elf {
    pub is_64: bool,
    /// `PT_LOAD` segments, with whether each is writable.
    pub loads: Vec<(Extent, bool)>,
    section_headers: Option<(u64, u64, u64)>,
    names_index: u64,
}

impl Elf {
    /// `Ok(None)`: not a little-endian ELF file (a script, another format).
    pub fn parse(file: &(impl ReadAt + ?Sized)) -> Result<Option<Self>, BuildInfoError> {
        if file.size() < 52 {
            return Ok(None);
        }
        let header = file.read_at(0, 64.min(file.size()) as usize)?;
        if header.get(..4) != Some(b"\x7fELF") || header.get(5) != Some(&1) {
            return Ok(None);
        }
        let is_64 = match header.get(4) {
            Some(1) => false,
            Some(2) => true,
            _ => return Err(BuildInfoError::Malformed("unknown ELF class")),
        };
        // (offset, entry size, count) of the program and section header tables.
        let (ph, sh, names_index) = if is_64 {
            (
                (
                    u64_at(&header, 0x20)?,
                    u16_at(&header, 0x36)?,
                    u16_at(&header, 0x38)?,
                ),
                (
                    u64_at(&header, 0x28)?,
                    u16_at(&header, 0x3a)?,
                    u16_at(&header, 0x3c)?,
                ),
                u16_at(&header, 0x3e)?,
            )
        } else {
            (
                (
                    u32_at(&header, 0x1c)?,
                    u16_at(&header, 0x2a)?,
                    u16_at(&header, 0x2c)?,
                ),
                (
                    u32_at(&header, 0x20)?,
                    u16_at(&header, 0x2e)?,
                    u16_at(&header, 0x30)?,
                ),
                u16_at(&header, 0x32)?,
            )
        };
        let mut elf = Self {
            is_64,
            loads: Vec::new(),
            // No section headers (stripped by sstrip or a packer): the data segment is searched.
            section_headers: (sh.2 > 0 && sh.0 > 0).then_some(sh),
            names_index,
        };
        elf.read_loads(file, ph)?;
        Ok(Some(elf))
    }

    fn read_loads(
        &mut self,
        file: &(impl ReadAt + ?Sized),
        (offset, entry_size, count): (u64, u64, u64),
    ) -> Result<(), BuildInfoError> {
        if count == 0 {
            return Ok(());
        }
        let min_entry = if self.is_64 { 56 } else { 32 };
        if count > MAX_SEGMENTS || entry_size < min_entry {
            return Err(BuildInfoError::Malformed("program header table"));
        }
        let table = file.read_at(offset, table_len(entry_size, count)?)?;
        for i in 0..count {
            let at = usize::try_from(i * entry_size).map_err(|_| malformed("segment"))?;
            let entry = table.get(at..).ok_or_else(|| malformed("segment"))?;
            if u32_at(entry, 0)? != u64::from(PT_LOAD) {
                continue;
            }
            let (flags, extent) = if self.is_64 {
                (
                    u32_at(entry, 4)?,
                    Extent {
                        offset: u64_at(entry, 8)?,
                        addr: u64_at(entry, 16)?,
                        size: u64_at(entry, 32)?,
                    },
                )
            } else {
                (
                    u32_at(entry, 24)?,
                    Extent {
                        offset: u32_at(entry, 4)?,
                        addr: u32_at(entry, 8)?,
                        size: u32_at(entry, 16)?,
                    },
                )
            };
            self.loads.push((extent, flags & u64::from(PF_W) != 0));
        }
        Ok(())
    }

    /// Whether the file has section headers (else only segments can be searched).
    pub fn has_sections(&self) -> bool {
        self.section_headers.is_some()
    }

    /// The section named `wanted`, if any.
    pub fn section(
        &self,
        file: &(impl ReadAt + ?Sized),
        wanted: &str,
    ) -> Result<Option<Extent>, BuildInfoError> {
        let Some((offset, entry_size, count)) = self.section_headers else {
            return Ok(None);
        };
        let min_entry = if self.is_64 { 64 } else { 40 };
        if count > MAX_SECTIONS || entry_size < min_entry || self.names_index >= count {
            return Err(BuildInfoError::Malformed("section header table"));
        }
        let table = file.read_at(offset, table_len(entry_size, count)?)?;
        let entry = |i: u64| -> Result<(u64, Extent), BuildInfoError> {
            let at = usize::try_from(i * entry_size).map_err(|_| malformed("section"))?;
            let e = table.get(at..).ok_or_else(|| malformed("section"))?;
            Ok(if self.is_64 {
                (
                    u32_at(e, 0)?,
                    Extent {
                        addr: u64_at(e, 16)?,
                        offset: u64_at(e, 24)?,
                        size: u64_at(e, 32)?,
                    },
                )
            } else {
                (
                    u32_at(e, 0)?,
                    Extent {
                        addr: u32_at(e, 12)?,
                        offset: u32_at(e, 16)?,
                        size: u32_at(e, 20)?,
                    },
                )
            })
        };
        let (_, names) = entry(self.names_index)?;
        if names.size > MAX_SECTION_NAMES {
            return Err(BuildInfoError::TooLarge {
                what: "section name table",
                size: names.size,
            });
        }
        let names = file.read_at(names.offset, usize::try_from(names.size).unwrap_or(0))?;
        for i in 0..count {
            let (name_at, extent) = entry(i)?;
            let name = usize::try_from(name_at)
                .ok()
                .and_then(|at| names.get(at..))
                .and_then(|rest| rest.split(|&b| b == 0).next());
            if name == Some(wanted.as_bytes()) {
                return Ok(Some(extent));
            }
        }
        Ok(None)
    }

    /// The file offset of virtual address `addr`, if a loaded segment holds `len` bytes there.
    pub fn offset_of(&self, addr: u64, len: u64) -> Option<u64> {
        self.loads.iter().find_map(|(seg, _)| {
            let within = addr.checked_sub(seg.addr)?;
            (within.checked_add(len)? <= seg.size).then(|| seg.offset + within)
        })
    }
}

fn table_len(entry_size: u64, count: u64) -> Result<usize, BuildInfoError> {
    entry_size
        .checked_mul(count)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| malformed("header table size"))
}

fn malformed(what: &'static str) -> BuildInfoError {
    BuildInfoError::Malformed(what)
}

fn bytes_at<const N: usize>(data: &[u8], at: usize) -> Result<[u8; N], BuildInfoError> {
    data.get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .ok_or(BuildInfoError::Malformed("truncated header"))
}

fn u16_at(data: &[u8], at: usize) -> Result<u64, BuildInfoError> {
    Ok(u64::from(u16::from_le_bytes(bytes_at(data, at)?)))
}

fn u32_at(data: &[u8], at: usize) -> Result<u64, BuildInfoError> {
    Ok(u64::from(u32::from_le_bytes(bytes_at(data, at)?)))
}

fn u64_at(data: &[u8], at: usize) -> Result<u64, BuildInfoError> {
    Ok(u64::from_le_bytes(bytes_at(data, at)?))
}

/// A pointer of `size` bytes (4 or 8), little endian.
pub fn ptr_at(data: &[u8], at: usize, size: usize) -> Result<u64, BuildInfoError> {
    match size {
        4 => u32_at(data, at),
        8 => u64_at(data, at),
        _ => Err(BuildInfoError::Malformed("pointer size")),
    }
}
