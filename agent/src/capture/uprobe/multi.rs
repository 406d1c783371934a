//! `uprobe_multi` links (Linux ≥ 6.6): one BPF link attaches a program to many offsets of one
//! file, instead of one perf event per uprobe.
//!
//! Why: removing a perf-event uprobe makes the kernel wait for an RCU tasks-trace grace period
//! under `event_mutex` (`perf_uprobe_destroy` → `perf_trace_event_unreg` →
//! `tracepoint_synchronize_unregister`), ~90 ms each and serialised even when closed from
//! several threads (measured here; 140 ms under load). Eight per OpenSSL copy made the agent
//! take over a second to exit. A multi link unregisters all of its uprobes and then waits once.
//!
//! The kernel accepts a `BPF_TRACE_UPROBE_MULTI` link only for a program loaded with that
//! expected attach type, and aya 0.14 loads uprobe programs without one. So the programs that
//! need it are loaded here, from the same object with aya-obj's own relocations, against the
//! maps aya already created: the programs share every map with the rest of the agent. The
//! object's BTF is loaded too, with each program's function and line info: a program with
//! `bpf_loop` callbacks (the capture paths) has several functions, and the kernel refuses such a
//! program without its BTF function info ("missing btf func_info").

use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::Path,
};

use aya::{maps::Map, Ebpf};
use aya_obj::generated::{
    bpf_attach_type::BPF_TRACE_UPROBE_MULTI, bpf_cmd, bpf_insn,
    bpf_prog_type::BPF_PROG_TYPE_KPROBE, BPF_F_UPROBE_MULTI_RETURN,
};

/// Uprobes one link may carry: `uprobe_multi` has no small limit (the kernel caps it at
/// `MAX_UPROBE_MULTI_CNT`, 1 << 20); this keeps a bad offset list from growing unbounded.
pub const MAX_OFFSETS: usize = 256;
const VERIFIER_LOG_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("parsing the eBPF object: {0}")]
    Parse(#[from] aya_obj::ParseError),
    #[error("relocating program {program}: {source}")]
    Relocate {
        program: String,
        #[source]
        source: aya_obj::relocation::EbpfRelocationError,
    },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(String),
    #[error("preparing the object's BTF: {0}")]
    Btf(#[from] aya_obj::btf::BtfError),
    #[error("the kernel refused the object's BTF: {0}")]
    BtfLoad(std::io::Error),
    #[error("the kernel refused to load {program} as a uprobe_multi program: {source}\n{log}")]
    Load {
        program: String,
        source: std::io::Error,
        log: String,
    },
    #[error("attaching a uprobe_multi link to {path}: {source}")]
    Attach {
        path: String,
        source: std::io::Error,
    },
    #[error("a uprobe_multi link needs 1 to {MAX_OFFSETS} offsets, with one cookie each")]
    Offsets,
}

/// A program loaded with the `uprobe_multi` attach type; unloaded when dropped (and when its
/// last link is gone).
#[derive(Debug)]
pub struct MultiProgram {
    fd: OwnedFd,
}

/// An attached `uprobe_multi` link; detached when dropped.
#[derive(Debug)]
pub struct MultiLink {
    _fd: OwnedFd,
}

/// Loads `names` from `object` (the bytes aya loaded `ebpf` from) for `uprobe_multi` links.
pub fn load(ebpf: &Ebpf, object: &[u8], names: &[&str]) -> Result<Vec<MultiProgram>, MultiError> {
    let mut obj = aya_obj::Object::parse(object)?;
    // The kernels this runs on (≥ 6.6 for uprobe_multi) have every BTF feature.
    let features = aya_obj::btf::BtfFeatures::new(true, true, true, true, true, true, true, true);
    let btf = obj
        .fixup_and_sanitize_btf(&features)?
        .map(|btf| load_btf(&btf.to_bytes()))
        .transpose()
        .map_err(MultiError::BtfLoad)?;
    // The definitions only give each map's section and symbol; the fds are aya's.
    let definitions: Vec<(String, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(name, map)| (name.clone(), map.clone()))
        .collect();
    let created: Vec<(&str, RawFd, &aya_obj::Map)> = definitions
        .iter()
        .filter_map(|(name, def)| {
            let fd = map_fd(ebpf.map(name)?)?;
            Some((name.as_str(), fd, def))
        })
        .collect();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let relocate = |source| MultiError::Relocate {
        program: names.join(","),
        source,
    };
    obj.relocate_maps(created.into_iter(), &text_sections)
        .map_err(relocate)?;
    obj.relocate_calls(&text_sections).map_err(relocate)?;
    names
        .iter()
        .map(|name| {
            let program = obj
                .programs
                .get(*name)
                .ok_or_else(|| MultiError::MissingProgram((*name).to_owned()))?;
            let function = obj
                .functions
                .get(&program.function_key())
                .ok_or_else(|| MultiError::MissingProgram((*name).to_owned()))?;
            load_program(name, function, &program.license, btf.as_ref())
        })
        .collect()
}

/// The fd of the maps the uprobe programs use (aya keeps the rest behind other variants).
fn map_fd(map: &Map) -> Option<RawFd> {
    let data = match map {
        Map::Array(d)
        | Map::PerCpuArray(d)
        | Map::HashMap(d)
        | Map::LruHashMap(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::Unsupported(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type` (the kernel zero-fills
/// the rest of a shorter attr).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    _pad0: u32,
}
const _: () = assert!(std::mem::size_of::<ProgLoadAttr>() == 112);

/// `union bpf_attr` for `BPF_BTF_LOAD`.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    btf_log_buf: u64,
    btf_size: u32,
    btf_log_size: u32,
    btf_log_level: u32,
    _pad0: u32,
}
const _: () = assert!(std::mem::size_of::<BtfLoadAttr>() == 32);

/// Loads BTF into the kernel; its fd.
fn load_btf(btf: &[u8]) -> std::io::Result<OwnedFd> {
    let mut attr = BtfLoadAttr {
        btf: btf.as_ptr() as u64,
        btf_size: u32::try_from(btf.len()).map_err(std::io::Error::other)?,
        ..BtfLoadAttr::default()
    };
    bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr)
}

/// `union bpf_attr` for `BPF_LINK_CREATE` with the `uprobe_multi` member.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    multi_flags: u32,
    pid: u32,
    _pad0: u32,
}
const _: () = assert!(std::mem::size_of::<LinkCreateAttr>() == 64);

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> std::io::Result<OwnedFd> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`, valid for its size;
    // every pointer in it points to memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = RawFd::try_from(ret).map_err(|_| std::io::Error::other("fd out of range"))?;
    // SAFETY: BPF_PROG_LOAD and BPF_LINK_CREATE return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_program(
    name: &str,
    function: &aya_obj::Function,
    license: &CString,
    btf: Option<&OwnedFd>,
) -> Result<MultiProgram, MultiError> {
    let insns: &[bpf_insn] = &function.instructions;
    let func_info = &function.func_info.func_info;
    let line_info = &function.line_info.line_info;
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE as u32,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_TRACE_UPROBE_MULTI as u32,
        ..ProgLoadAttr::default()
    };
    if let Some(btf) = btf {
        attr.prog_btf_fd = btf.as_raw_fd() as u32;
        if !func_info.is_empty() {
            attr.func_info_rec_size = function.func_info_rec_size as u32;
            attr.func_info = func_info.as_ptr() as u64;
            attr.func_info_cnt = func_info.len() as u32;
        }
        if !line_info.is_empty() {
            attr.line_info_rec_size = function.line_info_rec_size as u32;
            attr.line_info = line_info.as_ptr() as u64;
            attr.line_info_cnt = line_info.len() as u32;
        }
    }
    // The kernel keeps 15 characters of the name, as for aya's programs.
    for (dst, src) in attr.prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    if let Ok(fd) = bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        return Ok(MultiProgram { fd });
    }
    // Again with the verifier's log, for the error message.
    let mut log = vec![0u8; VERIFIER_LOG_BYTES];
    attr.log_level = 1;
    attr.log_size = VERIFIER_LOG_BYTES as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    match bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(MultiProgram { fd }),
        Err(source) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The verdict is at the end of the log.
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            Err(MultiError::Load {
                program: name.to_owned(),
                source,
                log: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            })
        }
    }
}

impl MultiProgram {
    /// Attaches to `offsets` (file offsets) of `path` in every process, each with its cookie
    /// (`bpf_get_attach_cookie`); at the functions' returns when `ret`.
    pub fn attach(
        &self,
        path: &Path,
        offsets: &[u64],
        cookies: &[u64],
        ret: bool,
    ) -> Result<MultiLink, MultiError> {
        if offsets.is_empty() || offsets.len() > MAX_OFFSETS || cookies.len() != offsets.len() {
            return Err(MultiError::Offsets);
        }
        let attach_error = |source| MultiError::Attach {
            path: path.display().to_string(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|e| attach_error(std::io::Error::other(e)))?;
        let mut attr = LinkCreateAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_TRACE_UPROBE_MULTI as u32,
            path: c_path.as_ptr() as u64,
            offsets: offsets.as_ptr() as u64,
            cookies: cookies.as_ptr() as u64,
            cnt: offsets.len() as u32,
            multi_flags: if ret { BPF_F_UPROBE_MULTI_RETURN } else { 0 },
            ..LinkCreateAttr::default()
        };
        let fd = bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr).map_err(attach_error)?;
        Ok(MultiLink { _fd: fd })
    }
}
