//! A minimal reader of Go's `.gopclntab` (the runtime's function table): function names and
//! entry addresses only. Layouts from Go's `debug/gosym` and `runtime/symtab.go`
//! (<https://go.googlesource.com/go/+/refs/tags/go1.20/src/debug/gosym/pclntab.go>):
//!
//! ```text
//! header: magic u32, 0 u8, 0 u8, quantum u8 (1 on amd64), ptr_size u8, then ptr_size words:
//!   1.18+ (magic 0xfffffff0; 1.20+ 0xfffffff1, same layout):
//!     nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset
//!   1.16/1.17 (magic 0xfffffffa): the same without textStart
//! functab at pclnOffset, nfunc + 1 entries (the last one is the end of the text):
//!   1.18+: { entryoff u32 (from textStart), funcoff u32 }
//!   1.16/1.17: { entry uintptr, funcoff uintptr }
//! _func at pclnOffset + funcoff: entry (u32 offset in 1.18+, uintptr before), then nameOff i32
//! name: NUL-terminated at funcnameOffset + nameOff
//! ```
//!
//! Only little-endian 64-bit tables are read (amd64). Every read is bounds-checked: the table
//! comes from whatever executable a process runs.

use super::GoError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Go 1.2 to 1.15.
    Old,
    /// Go 1.16 and 1.17.
    Go116,
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later.
    Go120,
}

pub struct Pclntab<'a> {
    data: &'a [u8],
    format: Format,
    nfunc: usize,
    text_start: u64,
    funcname: usize,
    functab: usize,
}

impl<'a> Pclntab<'a> {
    /// `text` is the address of `runtime.text` (or `.text`), used when the table's own
    /// `textStart` is zero (position-independent executables leave it to a relocation).
    pub fn parse(data: &'a [u8], text: u64) -> Result<Self, GoError> {
        let magic = u32_at(data, 0).ok_or(GoError::Pclntab("shorter than its header"))?;
        let format = match magic {
            0xffff_fffa => Format::Go116,
            0xffff_fff0 => Format::Go118,
            0xffff_fff1 => Format::Go120,
            // Go 1.2–1.15, before the register ABI (1.17): reported as too old, not read.
            0xffff_fffb => {
                return Ok(Self {
                    data,
                    format: Format::Old,
                    nfunc: 0,
                    text_start: 0,
                    funcname: 0,
                    functab: 0,
                });
            }
            _ => return Err(GoError::Pclntab("unknown magic")),
        };
        if data.get(4..8) != Some(&[0, 0, 1, 8][..]) {
            return Err(GoError::Pclntab("not a little-endian amd64 table"));
        }
        let word = |i: usize| {
            u64_at(data, 8 + 8 * i)
                .and_then(|w| usize::try_from(w).ok())
                .ok_or(GoError::Pclntab("truncated header"))
        };
        let nfunc = word(0)?;
        let (text_start, rest) = if format == Format::Go116 {
            (0, 2)
        } else {
            (word(2)? as u64, 3)
        };
        let funcname = word(rest)?;
        let functab = word(rest + 4)?;
        let table = Self {
            data,
            format,
            nfunc,
            text_start: if text_start == 0 { text } else { text_start },
            funcname,
            functab,
        };
        // The functab must hold nfunc + 1 entries.
        let end = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(table.entry_size()))
            .and_then(|n| n.checked_add(functab));
        if end.is_none_or(|end| end > data.len()) || funcname >= data.len() {
            return Err(GoError::Pclntab("tables outside the section"));
        }
        Ok(table)
    }

    /// False for Go < 1.16 tables, which predate the register ABI (1.17) for certain.
    pub fn register_abi_possible(&self) -> bool {
        self.format != Format::Old
    }

    /// The oldest Go version that writes this table format.
    pub fn min_version(&self) -> &'static str {
        match self.format {
            Format::Old => "go1.15 or older",
            Format::Go116 => "go1.16 or go1.17",
            Format::Go118 => "go1.18+",
            Format::Go120 => "go1.20+",
        }
    }

    fn entry_size(&self) -> usize {
        match self.format {
            Format::Old | Format::Go116 => 16,
            Format::Go118 | Format::Go120 => 8,
        }
    }

    /// Entry address of function `i` (0..=nfunc: nfunc is the end of the text).
    fn entry(&self, i: usize) -> Option<u64> {
        let at = self
            .functab
            .checked_add(i.checked_mul(self.entry_size())?)?;
        match self.format {
            Format::Old | Format::Go116 => u64_at(self.data, at),
            Format::Go118 | Format::Go120 => self
                .text_start
                .checked_add(u64::from(u32_at(self.data, at)?)),
        }
    }

    /// Name of function `i`, without its NUL.
    fn name(&self, i: usize) -> Option<&'a [u8]> {
        let at = self
            .functab
            .checked_add(i.checked_mul(self.entry_size())?)?;
        let funcoff = match self.format {
            Format::Old | Format::Go116 => {
                usize::try_from(u64_at(self.data, at.checked_add(8)?)?).ok()?
            }
            Format::Go118 | Format::Go120 => {
                usize::try_from(u32_at(self.data, at.checked_add(4)?)?).ok()?
            }
        };
        let func = self.functab.checked_add(funcoff)?;
        let name_field = match self.format {
            Format::Old | Format::Go116 => func.checked_add(8)?,
            Format::Go118 | Format::Go120 => func.checked_add(4)?,
        };
        let name_off = usize::try_from(u32_at(self.data, name_field)?).ok()?;
        let start = self.funcname.checked_add(name_off)?;
        let rest = self.data.get(start..)?;
        let len = rest.iter().position(|&b| b == 0)?;
        rest.get(..len)
    }

    /// (entry, size) of each named function, in the order of `names`; `None` when absent.
    pub fn find<const N: usize>(
        &self,
        names: &[&str; N],
    ) -> Result<[Option<(u64, u64)>; N], GoError> {
        let mut found = [None; N];
        for i in 0..self.nfunc {
            let Some(name) = self.name(i) else {
                return Err(GoError::Pclntab("function name outside the table"));
            };
            let Some(slot) = names.iter().position(|n| n.as_bytes() == name) else {
                continue;
            };
            let (Some(entry), Some(end)) = (self.entry(i), self.entry(i + 1)) else {
                return Err(GoError::Pclntab("function entry outside the table"));
            };
            if end <= entry {
                return Err(GoError::Pclntab("functions out of order"));
            }
            found[slot] = Some((entry, end - entry));
        }
        Ok(found)
    }
}

fn u32_at(data: &[u8], offset: usize) -> Option<u32> {
    let bytes = data.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn u64_at(data: &[u8], offset: usize) -> Option<u64> {
    let bytes = data.get(offset..offset.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage() {
        assert!(Pclntab::parse(&[], 0).is_err());
        assert!(Pclntab::parse(&[0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8], 0).is_err());
        let mut header = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        header.extend_from_slice(&u64::MAX.to_le_bytes()); // nfunc
        header.resize(8 + 8 * 8, 0);
        assert!(Pclntab::parse(&header, 0).is_err());
    }

    #[test]
    fn reads_a_hand_made_go120_table() {
        // Header (72 bytes), funcnametab at 72, functab at 96: two functions and the end.
        let mut t = vec![0xf1, 0xff, 0xff, 0xff, 0, 0, 1, 8];
        for w in [2u64, 0, 0x1000, 72, 0, 0, 0, 96] {
            t.extend_from_slice(&w.to_le_bytes());
        }
        // funcnametab, 24 bytes: 72..96.
        t.extend_from_slice(b"main.a\0crypto/tls.x\0\0\0\0\0");
        // functab: {entryoff, funcoff} × 3; _func records at funcoff 24 and 32.
        for (entry, funcoff) in [(0u32, 24u32), (0x40, 32), (0x90, 0)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&funcoff.to_le_bytes());
        }
        for (entry, name_off) in [(0u32, 0u32), (0x40, 7)] {
            t.extend_from_slice(&entry.to_le_bytes());
            t.extend_from_slice(&name_off.to_le_bytes());
        }
        let table = Pclntab::parse(&t, 0).expect("parses");
        assert_eq!(
            table
                .find(&["crypto/tls.x", "main.a", "absent"])
                .expect("finds"),
            [Some((0x1040, 0x50)), Some((0x1000, 0x40)), None]
        );
    }
}
