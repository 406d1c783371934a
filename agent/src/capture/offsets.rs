//! Offsets of the kernel struct fields the process programs read (agent-ebpf/src/process.rs),
//! found in the kernel's own BTF. Rust BPF programs have no CO-RE relocations, and these
//! layouts differ between kernel builds (`task_struct` is randomizable), so they are looked
//! up by name here and handed to the programs as a load-time global.
//!
//! Only six members are wanted, so the BTF is not parsed into types: one walk over the type
//! section checks every record's length and notes where each one starts (4 bytes per type),
//! then the three structs' members are read in place. Every length and offset is checked
//! against the data before use and every loop is bounded; malformed input is an error, never
//! a panic. (A full parse with `btf-rs` took ~1.7 s and tens of MiB at startup; the unit tests
//! still compare against it.)

use agent_common::KernelOffsets;

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Largest BTF read (a distribution kernel's is 5–7 MiB).
const MAX_BTF_BYTES: u64 = 64 << 20;
/// Anonymous struct/union members nested in one another (`mm_struct` has two levels).
const MAX_NESTING: usize = 16;
/// Modifiers (typedef, const, volatile, restrict, type tag) before a member's struct/union.
const MAX_MODIFIERS: usize = 32;

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// `struct btf_type`: name_off, info, size/type.
const TYPE_LEN: usize = 12;
/// `struct btf_member`: name_off, type, offset.
const MEMBER_LEN: usize = 12;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading the kernel's BTF ({VMLINUX_BTF})")]
    Read(#[source] BtfError),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("the kernel's BTF has no field {field} in struct {strukt}")]
    NoField {
        strukt: &'static str,
        field: &'static str,
    },
}

/// Why a BTF blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read the file")]
    Io(#[source] std::io::Error),
    #[error("larger than {MAX_BTF_BYTES} bytes")]
    TooLarge,
    #[error("{0} bytes: shorter than the BTF header")]
    ShortHeader(usize),
    #[error("bad magic {0:#06x} (not BTF, or not in this machine's byte order)")]
    Magic(u16),
    #[error("unsupported BTF version {0}")]
    Version(u8),
    #[error("header length {hdr_len} outside 24..={len} bytes")]
    HeaderLength { hdr_len: u32, len: usize },
    #[error("{section} section (offset {off}, length {section_len}) runs past the {len} bytes after the header")]
    Section {
        section: &'static str,
        off: u32,
        section_len: u32,
        len: usize,
    },
    #[error("type {id} (byte {at} of the type section) runs past the section's end")]
    TypePastEnd { id: u32, at: usize },
    #[error("type {id} has unknown kind {kind}")]
    UnknownKind { id: u32, kind: u32 },
    #[error("name offset {0} outside the string section or not terminated")]
    Name(u32),
    #[error("type id {0} does not exist")]
    TypeId(u32),
    #[error("type {0} is a chain of more than {MAX_MODIFIERS} modifiers")]
    ModifierChain(u32),
    #[error("anonymous members nested more than {MAX_NESTING} deep")]
    TooDeep,
}

/// The offsets in the running kernel.
pub fn from_kernel() -> Result<KernelOffsets, OffsetsError> {
    let data = read_limited(VMLINUX_BTF).map_err(OffsetsError::Read)?;
    from_btf(&Btf::parse(&data).map_err(OffsetsError::Read)?)
}

pub fn from_btf(btf: &Btf<'_>) -> Result<KernelOffsets, OffsetsError> {
    Ok(KernelOffsets {
        valid: 1,
        task_mm: btf.offset_of("task_struct", "mm")?,
        task_pid: btf.offset_of("task_struct", "pid")?,
        task_tgid: btf.offset_of("task_struct", "tgid")?,
        mm_env_start: btf.offset_of("mm_struct", "env_start")?,
        mm_env_end: btf.offset_of("mm_struct", "env_end")?,
        bprm_filename: btf.offset_of("linux_binprm", "filename")?,
        _pad0: 0,
    })
}

/// The whole file, refusing one larger than [`MAX_BTF_BYTES`].
fn read_limited(path: &str) -> Result<Vec<u8>, BtfError> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(BtfError::Io)?;
    // sysfs gives the BTF's size; a wrong hint only costs a reallocation.
    let hint = file.metadata().map_or(0, |m| m.len()).min(MAX_BTF_BYTES);
    let mut data = Vec::with_capacity(usize::try_from(hint).unwrap_or(0));
    file.take(MAX_BTF_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(BtfError::Io)?;
    if data.len() as u64 > MAX_BTF_BYTES {
        return Err(BtfError::TooLarge);
    }
    Ok(data)
}

/// A checked view of a BTF blob: its type and string sections and where each type starts.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Byte offset in `types` of type id `i + 1` (id 0 is `void`).
    starts: Vec<u32>,
}

/// One type record's fixed part.
#[derive(Clone, Copy)]
struct TypeHeader {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_or_type: u32,
}

fn u16_at(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        data.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        data.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn type_header(types: &[u8], at: usize) -> Option<TypeHeader> {
    let info = u32_at(types, at.checked_add(4)?)?;
    Some(TypeHeader {
        name_off: u32_at(types, at)?,
        kind: (info >> 24) & 0x1f,
        vlen: (info & 0xffff) as usize,
        kind_flag: info >> 31 == 1,
        size_or_type: u32_at(types, at.checked_add(8)?)?,
    })
}

/// Bytes that follow a type record of `kind` with `vlen` entries, or `None` for an unknown kind.
fn trailing_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
        | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        _ => return None,
    })
}

/// The section `off..off + len` of `body`, checked.
fn section<'a>(
    body: &'a [u8],
    name: &'static str,
    off: u32,
    len: u32,
) -> Result<&'a [u8], BtfError> {
    let err = || BtfError::Section {
        section: name,
        off,
        section_len: len,
        len: body.len(),
    };
    let start = usize::try_from(off).map_err(|_| err())?;
    let end = start
        .checked_add(usize::try_from(len).map_err(|_| err())?)
        .ok_or_else(err)?;
    body.get(start..end).ok_or_else(err)
}

impl<'a> Btf<'a> {
    /// Checks the header and sections and walks every type record once.
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_LEN {
            return Err(BtfError::ShortHeader(data.len()));
        }
        let short = || BtfError::ShortHeader(data.len());
        let magic = u16_at(data, 0).ok_or_else(short)?;
        if magic != BTF_MAGIC {
            return Err(BtfError::Magic(magic));
        }
        if data[2] != 1 {
            return Err(BtfError::Version(data[2]));
        }
        let field = |i: usize| u32_at(data, 4 + 4 * i).ok_or_else(short);
        let hdr_len = field(0)?;
        let body = usize::try_from(hdr_len)
            .ok()
            .filter(|&h| h >= HEADER_LEN)
            .and_then(|h| data.get(h..))
            .ok_or(BtfError::HeaderLength {
                hdr_len,
                len: data.len(),
            })?;
        let types = section(body, "type", field(1)?, field(2)?)?;
        let strings = section(body, "string", field(3)?, field(4)?)?;
        // Every record is at least TYPE_LEN bytes: this bounds the walk and the index.
        let mut starts = Vec::with_capacity(types.len() / TYPE_LEN);
        let mut at = 0usize;
        while at < types.len() {
            let id = u32::try_from(starts.len() + 1).map_err(|_| BtfError::TypeId(u32::MAX))?;
            let past_end = BtfError::TypePastEnd { id, at };
            let Some(t) = type_header(types, at) else {
                return Err(past_end);
            };
            let trailing =
                trailing_len(t.kind, t.vlen).ok_or(BtfError::UnknownKind { id, kind: t.kind })?;
            let next = at + TYPE_LEN + trailing;
            if next > types.len() {
                return Err(past_end);
            }
            starts.push(u32::try_from(at).map_err(|_| BtfError::TypePastEnd { id, at })?);
            at = next;
        }
        Ok(Self {
            types,
            strings,
            starts,
        })
    }

    /// The NUL-terminated name at `off` in the string section.
    fn name(&self, off: u32) -> Result<&'a [u8], BtfError> {
        let rest = usize::try_from(off)
            .ok()
            .and_then(|o| self.strings.get(o..))
            .ok_or(BtfError::Name(off))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfError::Name(off))?;
        Ok(&rest[..end])
    }

    fn start(&self, id: u32) -> Result<usize, BtfError> {
        let index = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .ok_or(BtfError::TypeId(id))?;
        let at = *self.starts.get(index).ok_or(BtfError::TypeId(id))?;
        Ok(at as usize)
    }

    /// The record of type `id` (checked by [`Btf::parse`]).
    fn header(&self, id: u32) -> Result<TypeHeader, BtfError> {
        let at = self.start(id)?;
        type_header(self.types, at).ok_or(BtfError::TypePastEnd { id, at })
    }

    /// Member `i` of struct/union `id`: (name offset, type, offset field).
    fn member(&self, id: u32, i: usize) -> Result<(u32, u32, u32), BtfError> {
        let at = self.start(id)?;
        let past_end = BtfError::TypePastEnd { id, at };
        let m = i
            .checked_mul(MEMBER_LEN)
            .and_then(|o| o.checked_add(at + TYPE_LEN))
            .ok_or(BtfError::TypeId(id))?;
        let field = |k: usize| u32_at(self.types, m + 4 * k);
        match (field(0), field(1), field(2)) {
            (Some(name), Some(ty), Some(offset)) => Ok((name, ty, offset)),
            _ => Err(past_end),
        }
    }

    /// The first struct named `name`.
    fn struct_named(&self, name: &str) -> Result<Option<u32>, BtfError> {
        for index in 0..self.starts.len() {
            let id = u32::try_from(index + 1).map_err(|_| BtfError::TypeId(u32::MAX))?;
            let t = self.header(id)?;
            if t.kind == KIND_STRUCT && t.name_off != 0 && self.name(t.name_off)? == name.as_bytes()
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// Type `id` with typedefs and qualifiers taken off.
    fn strip_modifiers(&self, mut id: u32) -> Result<(u32, TypeHeader), BtfError> {
        for _ in 0..=MAX_MODIFIERS {
            if id == 0 {
                return Err(BtfError::TypeId(0));
            }
            let t = self.header(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Ok((id, t)),
            }
        }
        Err(BtfError::ModifierChain(id))
    }

    /// The byte offset of `field` in `strukt`, looking through anonymous struct and union
    /// members (most of `mm_struct` sits in one).
    pub fn offset_of(
        &self,
        strukt: &'static str,
        field: &'static str,
    ) -> Result<u32, OffsetsError> {
        let id = self
            .struct_named(strukt)
            .map_err(OffsetsError::Read)?
            .ok_or(OffsetsError::NoStruct(strukt))?;
        self.find(id, field.as_bytes(), 0, 0)
            .map_err(OffsetsError::Read)?
            .ok_or(OffsetsError::NoField { strukt, field })
    }

    /// `field` in struct/union `id`, whose start is `base_bits` into the outer struct.
    fn find(
        &self,
        id: u32,
        field: &[u8],
        base_bits: u32,
        depth: usize,
    ) -> Result<Option<u32>, BtfError> {
        if depth > MAX_NESTING {
            return Err(BtfError::TooDeep);
        }
        let t = self.header(id)?;
        for i in 0..t.vlen {
            let (name_off, ty, offset) = self.member(id, i)?;
            let (bit_offset, bitfield_size) = if t.kind_flag {
                (offset & 0x00ff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            let Some(bits) = base_bits.checked_add(bit_offset) else {
                continue;
            };
            let name = self.name(name_off)?;
            if name == field {
                // A bitfield has no byte address of its own.
                return Ok((bitfield_size == 0 && bits % 8 == 0).then_some(bits / 8));
            }
            if name.is_empty() {
                let (inner, it) = self.strip_modifiers(ty)?;
                if matches!(it.kind, KIND_STRUCT | KIND_UNION) {
                    if let Some(found) = self.find(inner, field, bits, depth + 1)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machines this runs on have BTF; the offsets must be plausible and distinct.
    #[test]
    fn offsets_of_the_running_kernel() {
        let o = from_kernel().expect("the kernel's BTF describes the process structs");
        assert_eq!(o.valid, 1);
        assert_ne!(o.task_pid, o.task_tgid);
        assert_ne!(o.mm_env_start, o.mm_env_end);
        assert!(o.task_mm > 0 && o.bprm_filename > 0);
    }

    /// The offset `btf-rs` (a full parse) finds, the way the agent used to look it up.
    fn btf_rs_offset(btf: &btf_rs::Btf, strukt: &str, field: &str) -> Option<u32> {
        use btf_rs::Type;
        fn find(btf: &btf_rs::Btf, s: &btf_rs::Struct, field: &str, base: u32) -> Option<u32> {
            for member in &s.members {
                let bits = base.checked_add(member.bit_offset())?;
                let name = btf.resolve_name(member).unwrap_or_default();
                if name == field {
                    return (member.bitfield_size().unwrap_or(0) == 0 && bits % 8 == 0)
                        .then_some(bits / 8);
                }
                if name.is_empty() {
                    if let Ok(Type::Struct(inner) | Type::Union(inner)) =
                        btf.resolve_chained_type(member)
                    {
                        if let Some(found) = find(btf, &inner, field, bits) {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        let types = btf.resolve_types_by_name(strukt).ok()?;
        let outer = types.iter().find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })?;
        find(btf, outer, field, 0)
    }

    /// Same offsets as `btf-rs` on the running kernel, for the six members the programs read
    /// and a few more (nested anonymous members, bitfields, members not there).
    #[test]
    fn same_offsets_as_btf_rs_on_the_running_kernel() {
        let reference = btf_rs::Btf::from_file(VMLINUX_BTF).expect("btf-rs reads the kernel's BTF");
        let data = read_limited(VMLINUX_BTF).unwrap();
        let btf = Btf::parse(&data).unwrap();
        let fields = [
            ("task_struct", "mm"),
            ("task_struct", "pid"),
            ("task_struct", "tgid"),
            ("mm_struct", "env_start"),
            ("mm_struct", "env_end"),
            ("linux_binprm", "filename"),
            ("task_struct", "comm"),
            ("task_struct", "real_parent"),
            ("task_struct", "__state"),
            ("task_struct", "in_execve"),
            ("mm_struct", "mmap_base"),
            ("mm_struct", "arg_start"),
            ("sk_buff", "len"),
            ("sk_buff", "pkt_type"),
            ("sock", "sk_num"),
            ("file", "f_inode"),
            ("task_struct", "no_such_field"),
        ];
        let mut found = 0;
        for (strukt, field) in fields {
            let ours = btf.offset_of(strukt, field);
            let theirs = btf_rs_offset(&reference, strukt, field);
            match (&ours, theirs) {
                (Ok(a), Some(b)) => {
                    assert_eq!(*a, b, "{strukt}.{field}");
                    found += 1;
                }
                (Err(OffsetsError::NoField { .. } | OffsetsError::NoStruct(_)), None) => {}
                _ => panic!("{strukt}.{field}: ours {ours:?}, btf-rs {theirs:?}"),
            }
        }
        assert!(found >= 6, "the six members the programs read are found");
        let o = from_btf(&btf).unwrap();
        assert_eq!(
            Some(o.mm_env_start),
            btf_rs_offset(&reference, "mm_struct", "env_start")
        );
    }

    /// A small BTF blob built by hand.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        fn name(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }

        fn words(&mut self, words: &[u32]) {
            for w in words {
                self.types.extend_from_slice(&w.to_ne_bytes());
            }
        }

        fn int(&mut self) {
            let name = self.name("int");
            self.words(&[name, KIND_INT << 24, 4, 32]);
        }

        /// A struct or union of `(name, type, bit offset)` members.
        fn compound(&mut self, kind: u32, name: &str, members: &[(&str, u32, u32)]) {
            let name = self.name(name);
            self.words(&[name, kind << 24 | members.len() as u32, 64]);
            for &(m, ty, off) in members {
                let m = self.name(m);
                self.words(&[m, ty, off]);
            }
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// `struct outer { int a; union { int b; struct { int c; }; }; }`, with `c` 12 bytes in.
    fn nested() -> Builder {
        let mut b = Builder::new();
        b.int(); // 1
        b.compound(KIND_STRUCT, "", &[("c", 1, 32)]); // 2
        b.compound(KIND_UNION, "", &[("b", 1, 0), ("", 2, 0)]); // 3
        b.compound(KIND_STRUCT, "outer", &[("a", 1, 0), ("", 3, 64)]); // 4
        b
    }

    #[test]
    fn finds_members_inside_anonymous_members() {
        let data = nested().build();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.offset_of("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset_of("outer", "b").unwrap(), 8);
        assert_eq!(btf.offset_of("outer", "c").unwrap(), 12);
        assert!(matches!(
            btf.offset_of("outer", "d"),
            Err(OffsetsError::NoField {
                strukt: "outer",
                field: "d"
            })
        ));
        assert!(matches!(
            btf.offset_of("inner", "a"),
            Err(OffsetsError::NoStruct("inner"))
        ));
    }

    #[test]
    fn a_bitfield_has_no_offset() {
        let mut b = Builder::new();
        b.int();
        let name = b.name("flags");
        let bit = b.name("bit");
        // kind_flag: 3-bit bitfield at bit 8.
        b.words(&[
            name,
            1 << 31 | KIND_STRUCT << 24 | 1,
            4,
            bit,
            1,
            3 << 24 | 8,
        ]);
        let data = b.build();
        let btf = Btf::parse(&data).unwrap();
        assert!(matches!(
            btf.offset_of("flags", "bit"),
            Err(OffsetsError::NoField { .. })
        ));
    }

    fn parse_err(data: &[u8]) -> BtfError {
        match Btf::parse(data) {
            Ok(_) => panic!("malformed BTF accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn truncated_header() {
        let data = nested().build();
        for len in 0..HEADER_LEN {
            assert!(matches!(
                parse_err(&data[..len]),
                BtfError::ShortHeader(l) if l == len
            ));
        }
    }

    #[test]
    fn bad_magic_and_version() {
        let mut data = nested().build();
        data.swap(0, 1);
        assert!(matches!(parse_err(&data), BtfError::Magic(0x9feb)));
        data.swap(0, 1);
        data[2] = 2;
        assert!(matches!(parse_err(&data), BtfError::Version(2)));
    }

    #[test]
    fn header_and_sections_out_of_bounds() {
        let good = nested().build();
        let mut data = good.clone();
        data[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse_err(&data), BtfError::HeaderLength { .. }));
        data[4..8].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(parse_err(&data), BtfError::HeaderLength { .. }));
        // Type section longer than the data; string section at an offset that overflows.
        let mut data = good.clone();
        data[12..16].copy_from_slice(&(good.len() as u32).to_ne_bytes());
        assert!(matches!(
            parse_err(&data),
            BtfError::Section {
                section: "type",
                ..
            }
        ));
        let mut data = good.clone();
        data[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        data[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(
            parse_err(&data),
            BtfError::Section {
                section: "string",
                ..
            }
        ));
        // The file cut anywhere after the header: always an error, never a panic.
        for len in HEADER_LEN..good.len() {
            assert!(Btf::parse(&good[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn type_records_past_the_section() {
        let mut b = nested();
        // A struct claiming 100 members, with one written.
        let name = b.name("big");
        b.words(&[name, KIND_STRUCT << 24 | 100, 8, 0, 1, 0]);
        assert!(matches!(
            parse_err(&b.build()),
            BtfError::TypePastEnd { id: 5, .. }
        ));
        // A record cut inside its fixed part.
        let mut b = nested();
        b.words(&[0, KIND_PTR << 24]);
        assert!(matches!(
            parse_err(&b.build()),
            BtfError::TypePastEnd { id: 5, .. }
        ));
        let mut b = nested();
        b.words(&[0, 31 << 24, 0]);
        assert!(matches!(
            parse_err(&b.build()),
            BtfError::UnknownKind { id: 5, kind: 31 }
        ));
    }

    #[test]
    fn bad_references_are_errors() {
        // A member's type that does not exist, a name outside the strings, a loop of
        // anonymous members and a loop of typedefs.
        let mut b = Builder::new();
        b.compound(KIND_STRUCT, "s", &[("", 99, 0)]);
        let data = b.build();
        assert!(matches!(
            Btf::parse(&data).unwrap().offset_of("s", "x"),
            Err(OffsetsError::Read(BtfError::TypeId(99)))
        ));
        let mut b = Builder::new();
        let name = b.name("s");
        b.words(&[name, KIND_STRUCT << 24 | 1, 4, 1000, 0, 0]);
        let data = b.build();
        assert!(matches!(
            Btf::parse(&data).unwrap().offset_of("s", "x"),
            Err(OffsetsError::Read(BtfError::Name(1000)))
        ));
        let mut b = Builder::new();
        b.compound(KIND_STRUCT, "s", &[("", 1, 0)]);
        let data = b.build();
        assert!(matches!(
            Btf::parse(&data).unwrap().offset_of("s", "x"),
            Err(OffsetsError::Read(BtfError::TooDeep))
        ));
        let mut b = Builder::new();
        b.compound(KIND_STRUCT, "s", &[("", 2, 0)]);
        b.words(&[0, KIND_TYPEDEF << 24, 2]);
        let data = b.build();
        assert!(matches!(
            Btf::parse(&data).unwrap().offset_of("s", "x"),
            Err(OffsetsError::Read(BtfError::ModifierChain(_)))
        ));
        // A string section without its final NUL.
        let mut b = nested();
        b.strings.pop();
        let data = b.build();
        assert!(matches!(
            Btf::parse(&data).unwrap().offset_of("outer", "c"),
            Err(OffsetsError::Read(BtfError::Name(_)))
        ));
    }
}
