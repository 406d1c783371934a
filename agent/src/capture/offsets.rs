//! Offsets of the kernel struct fields the process programs read (agent-ebpf/src/process.rs),
//! found in the kernel's own BTF. Rust BPF programs have no CO-RE relocations, and these
//! layouts differ between kernel builds (`task_struct` is randomizable), so they are looked
//! up by name here and handed to the programs as a load-time global.

use agent_common::KernelOffsets;
use btf_rs::{Btf, Struct, Type};

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading the kernel's BTF ({VMLINUX_BTF})")]
    Read(#[source] btf_rs::Error),
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("the kernel's BTF has no field {field} in struct {strukt}")]
    NoField {
        strukt: &'static str,
        field: &'static str,
    },
}

/// The offsets in the running kernel.
pub fn from_kernel() -> Result<KernelOffsets, OffsetsError> {
    from_btf(&Btf::from_file(VMLINUX_BTF).map_err(OffsetsError::Read)?)
}

pub fn from_btf(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    Ok(KernelOffsets {
        valid: 1,
        task_mm: offset_of(btf, "task_struct", "mm")?,
        task_pid: offset_of(btf, "task_struct", "pid")?,
        task_tgid: offset_of(btf, "task_struct", "tgid")?,
        mm_env_start: offset_of(btf, "mm_struct", "env_start")?,
        mm_env_end: offset_of(btf, "mm_struct", "env_end")?,
        bprm_filename: offset_of(btf, "linux_binprm", "filename")?,
        _pad0: 0,
    })
}

/// The byte offset of `field` in `strukt`, looking through anonymous struct and union
/// members (most of `mm_struct` sits in one).
fn offset_of(btf: &Btf, strukt: &'static str, field: &'static str) -> Result<u32, OffsetsError> {
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| OffsetsError::NoStruct(strukt))?;
    let outer = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) => Some(s),
            _ => None,
        })
        .ok_or(OffsetsError::NoStruct(strukt))?;
    find(btf, outer, field, 0).ok_or(OffsetsError::NoField { strukt, field })
}

fn find(btf: &Btf, s: &Struct, field: &str, base_bits: u32) -> Option<u32> {
    for member in &s.members {
        let bits = base_bits.checked_add(member.bit_offset())?;
        let name = btf.resolve_name(member).unwrap_or_default();
        if name == field {
            // A bitfield has no byte address of its own.
            return (member.bitfield_size().unwrap_or(0) == 0 && bits % 8 == 0).then_some(bits / 8);
        }
        if name.is_empty() {
            if let Ok(Type::Struct(inner) | Type::Union(inner)) = btf.resolve_chained_type(member) {
                if let Some(found) = find(btf, &inner, field, bits) {
                    return Some(found);
                }
            }
        }
    }
    None
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
}
