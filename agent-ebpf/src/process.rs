//! Who each process is, told at the moment it becomes so: `sched_process_exec` sends the new
//! image's path, cgroup and environment block; `sched_process_fork` names a new process's
//! parent (whose identity it inherits); `sched_process_exit` says it ended. The agent learns
//! from these records, in order with the process's requests on the same ring buffer, so a
//! process that lives a few milliseconds is known even when it is gone from /proc by the time
//! its request is handled.
//!
//! Kernel struct fields are read at offsets the agent found in the kernel's BTF
//! ([`KernelOffsets`]): Rust BPF programs have no CO-RE relocations. Without them the records
//! carry the header only (the agent then reads /proc, as for processes that started before it).

use agent_common::{
    direction, family, flags, syscall, Counter, EventHeader, ExecBuf, KernelOffsets, ProcessRecord,
    EVENT_HEADER_LEN, EXEC_ENV_MAX, EXEC_FILENAME_MAX, PROCESS_RECORD_LEN,
};
use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_cgroup_id, bpf_ktime_get_ns, bpf_probe_read_kernel_str,
            bpf_probe_read_user,
        },
    },
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
    Global,
};

use crate::maps::{count, current_tgid_unless_agent, EVENTS};

/// Struct field offsets, from the kernel's BTF (set at load time).
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    valid: 0,
    task_mm: 0,
    task_pid: 0,
    task_tgid: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    bprm_filename: 0,
    _pad0: 0,
});

/// Per-CPU space to build an exec record (about 17 KiB).
#[map]
static EXEC_SCRATCH: PerCpuArray<ExecBuf> = PerCpuArray::with_max_entries(1, 0);

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)`.
#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn tracegap_exec(ctx: RawTracePointContext) -> i32 {
    let _ignored = try_exec(&ctx);
    0
}

/// `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn tracegap_fork(ctx: RawTracePointContext) -> i32 {
    let _ignored = try_fork(&ctx);
    0
}

/// `sched_process_exit(struct task_struct *p)`, in the context of the exiting thread.
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn tracegap_exit(_ctx: RawTracePointContext) -> i32 {
    let _ignored = try_exit();
    0
}

/// A record header of `kind` for process `tgid`.
#[inline(always)]
fn header(kind: u8, tgid: u32, tid: u32, payload: u32) -> EventHeader {
    EventHeader {
        // SAFETY: no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        total_len: 0,
        tgid,
        tid,
        fd: -1,
        captured_len: payload,
        comm: bpf_get_current_comm().unwrap_or_default(),
        peer_addr: [0; 16],
        peer_port: 0,
        peer_family: family::UNKNOWN,
        direction: direction::OUTBOUND,
        syscall: kind,
        flags: 0,
        _pad0: [0],
    }
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    // SAFETY: the helper fails cleanly on a bad kernel address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn try_exec(ctx: &RawTracePointContext) -> Result<(), ()> {
    let (pid_tgid, tgid) = current_tgid_unless_agent().ok_or(())?;
    let Some(buf) = EXEC_SCRATCH.get_ptr_mut(0) else {
        count(Counter::ScratchUnavailable);
        return Err(());
    };
    // SAFETY: the per-CPU scratch slot is ours for the duration of this program run.
    let buf: &mut ExecBuf = unsafe { &mut *buf };
    buf.process = ProcessRecord {
        // SAFETY: no preconditions.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        parent_tgid: 0,
        filename_len: 0,
        env_len: 0,
        env_total: 0,
    };
    let offsets = KERNEL_OFFSETS.load();
    let details = offsets.valid != 0 && read_exec_details(ctx, &offsets, buf).is_ok();
    if offsets.valid != 0 && !details {
        count(Counter::ExecUnreadable);
    }
    let env_len = clamp_env(u64::from(buf.process.env_len));
    let payload = PROCESS_RECORD_LEN + EXEC_FILENAME_MAX + env_len as usize;
    buf.header = header(syscall::EXEC, tgid, pid_tgid as u32, payload as u32);
    if details {
        buf.header.flags = flags::PROCESS_DETAILS;
    }
    let size = EVENT_HEADER_LEN + payload;
    // SAFETY: `buf` holds the header, the process record, the path and EXEC_ENV_MAX bytes of
    // environment; `size` is at most that, bounded through `clamp_env` for the verifier.
    let record =
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(buf).cast::<u8>(), size) };
    if EVENTS.output::<[u8]>(record, 0).is_err() {
        count(Counter::ProcessRecordsLost);
        return Err(());
    }
    Ok(())
}

/// The path (`bprm->filename`) and the environment block (`current->mm->env_start..env_end`,
/// in the new image's user memory, where execve has just copied it).
#[inline(always)]
fn read_exec_details(
    ctx: &RawTracePointContext,
    offsets: &KernelOffsets,
    buf: &mut ExecBuf,
) -> Result<(), ()> {
    let task: u64 = ctx.arg(0);
    let bprm: u64 = ctx.arg(2);
    let filename: u64 = read_kernel(bprm + u64::from(offsets.bprm_filename)).ok_or(())?;
    // SAFETY: the helper writes at most EXEC_FILENAME_MAX bytes, NUL included, into the
    // path buffer and fails cleanly on a bad address.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            buf.filename.as_mut_ptr().cast(),
            EXEC_FILENAME_MAX as u32,
            filename as *const _,
        )
    };
    // The count includes the NUL.
    if n > 0 {
        buf.process.filename_len = (n - 1) as u32;
    }
    let mm: u64 = read_kernel(task + u64::from(offsets.task_mm)).ok_or(())?;
    let start: u64 = read_kernel(mm + u64::from(offsets.mm_env_start)).ok_or(())?;
    let end: u64 = read_kernel(mm + u64::from(offsets.mm_env_end)).ok_or(())?;
    let total = end.checked_sub(start).ok_or(())?;
    buf.process.env_total = if total > u64::from(u32::MAX) {
        u32::MAX
    } else {
        total as u32
    };
    if total > EXEC_ENV_MAX as u64 {
        count(Counter::ExecEnvTruncated);
    }
    let len = clamp_env(total);
    // SAFETY: `len` is at most EXEC_ENV_MAX, the size of the environment buffer.
    let ret = unsafe { bpf_probe_read_user(buf.env.as_mut_ptr().cast(), len as u32, start as *const _) };
    if ret != 0 {
        return Err(());
    }
    buf.process.env_len = len as u32;
    Ok(())
}

/// `len` bounded by EXEC_ENV_MAX in a way the verifier sees (see capture.rs `clamp_to_cap`).
#[inline(always)]
fn clamp_env(len: u64) -> u64 {
    // SAFETY: reading a local through a valid reference.
    let len = unsafe { core::ptr::read_volatile(&len) };
    if len > EXEC_ENV_MAX as u64 {
        EXEC_ENV_MAX as u64
    } else {
        len
    }
}

#[inline(always)]
fn try_fork(ctx: &RawTracePointContext) -> Result<(), ()> {
    let (_, parent) = current_tgid_unless_agent().ok_or(())?;
    let offsets = KERNEL_OFFSETS.load();
    if offsets.valid == 0 {
        return Ok(());
    }
    let child: u64 = ctx.arg(1);
    let (Some(pid), Some(tgid)) = (
        read_kernel::<i32>(child + u64::from(offsets.task_pid)),
        read_kernel::<i32>(child + u64::from(offsets.task_tgid)),
    ) else {
        count(Counter::ProcessRecordsLost);
        return Err(());
    };
    // A new thread of the same process: nothing to say.
    if pid != tgid {
        return Ok(());
    }
    #[repr(C)]
    struct ForkRecord {
        header: EventHeader,
        process: ProcessRecord,
    }
    let record = ForkRecord {
        header: header(syscall::FORK, tgid as u32, pid as u32, PROCESS_RECORD_LEN as u32),
        process: ProcessRecord {
            // SAFETY: no preconditions; the child is still in the parent's cgroup.
            cgroup_id: unsafe { bpf_get_current_cgroup_id() },
            parent_tgid: parent,
            filename_len: 0,
            env_len: 0,
            env_total: 0,
        },
    };
    if EVENTS.output::<ForkRecord>(&record, 0).is_err() {
        count(Counter::ProcessRecordsLost);
        return Err(());
    }
    Ok(())
}

#[inline(always)]
fn try_exit() -> Result<(), ()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((pid_tgid >> 32) as u32, pid_tgid as u32);
    // Only the main thread's exit ends the process (other threads exit on their own).
    if tgid != tid || current_tgid_unless_agent().is_none() {
        return Ok(());
    }
    if EVENTS
        .output::<EventHeader>(&header(syscall::EXIT, tgid, tid, 0), 0)
        .is_err()
    {
        count(Counter::ProcessRecordsLost);
        return Err(());
    }
    Ok(())
}
