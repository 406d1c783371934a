//! tracegap's kernel side: syscall tracepoints that copy the first bytes of HTTP requests that
//! processes send and receive into a ring buffer.
//!
//! kprobes and fentry are unavailable on the target kernels (shared/EBPF-TOOLCHAIN.md), so data
//! is taken at the raw `sys_enter`/`sys_exit` tracepoints (see tp.rs) and in TLS libraries.
#![no_std]
#![no_main]

mod args;
mod capture;
mod export;
mod floor;
mod gotls;
mod h2;
mod io;
mod maps;
mod origin;
mod process;
mod recv;
mod send;
mod socket;
mod tls;
mod tp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: the verifier refuses programs with a reachable panic path.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
