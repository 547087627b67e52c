//! ptrace: seizing and interrupting threads, register sets (general purpose, xstate), signal
//! mask, rseq configuration, pending signals, detaching.
//!
//! Every function takes a thread id (`tid`); the caller is the tracer. Stops are always waited
//! for with `__WALL` so threads and processes are handled alike.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// `user_regs_struct` of x86_64, as `PTRACE_GETREGSET NT_PRSTATUS` returns it.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

/// What the kernel reports with `PTRACE_GET_RSEQ_CONFIGURATION`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RseqConfig {
    pub ptr: u64,
    pub size: u32,
    pub signature: u32,
    pub flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawRseqConfig {
    rseq_abi_pointer: u64,
    rseq_abi_size: u32,
    signature: u32,
    flags: u32,
    pad: u32,
}

const NT_PRSTATUS: usize = 1;
const NT_X86_XSTATE: usize = 0x202;
const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;
const PTRACE_GET_RSEQ_CONFIGURATION: libc::c_uint = 0x420f;
const PTRACE_PEEKSIGINFO: libc::c_uint = 0x4209;
/// Upper bound of the xstate buffer (AVX-512 + AMX fit comfortably).
const XSTATE_MAX: usize = 16384;

/// `PTRACE_O_*` options used by the engine.
pub mod options {
    pub const TRACESYSGOOD: u64 = 0x1;
    pub const TRACEFORK: u64 = 0x2;
    pub const TRACEVFORK: u64 = 0x4;
    pub const TRACECLONE: u64 = 0x8;
    pub const EXITKILL: u64 = 0x100000;
    /// Seccomp filters do not apply to the tracee while we trace it (needs CAP_SYS_ADMIN):
    /// injected calls are never filtered.
    pub const SUSPEND_SECCOMP: u64 = 0x200000;
}

/// `PTRACE_EVENT_*` values found in bits 16.. of a wait status.
pub mod event {
    pub const FORK: i32 = 1;
    pub const VFORK: i32 = 2;
    pub const CLONE: i32 = 3;
    pub const STOP: i32 = 128;
}

fn ptrace_raw(req: libc::c_uint, tid: i32, addr: usize, data: usize) -> libc::c_long {
    // SAFETY: ptrace with integer addr/data; requests that write through addr/data are only
    // issued by the wrappers below with pointers to live, correctly sized buffers.
    unsafe { libc::ptrace(req, tid, addr, data) }
}

fn check(r: libc::c_long, what: impl FnOnce() -> String) -> Result<libc::c_long> {
    if r == -1 {
        Err(Error::last(what()))
    } else {
        Ok(r)
    }
}

/// Attaches to `tid` without stopping it (`PTRACE_SEIZE`).
pub fn seize(tid: i32, opts: u64) -> Result<()> {
    let data = usize::try_from(opts).unwrap_or(0);
    check(ptrace_raw(libc::PTRACE_SEIZE, tid, 0, data), || {
        format!("ptrace(SEIZE) of tid {tid}")
    })?;
    Ok(())
}

/// Sets `PTRACE_O_*` options on a stopped tracee.
pub fn set_options(tid: i32, opts: u64) -> Result<()> {
    let data = usize::try_from(opts).unwrap_or(0);
    check(ptrace_raw(libc::PTRACE_SETOPTIONS, tid, 0, data), || {
        format!("ptrace(SETOPTIONS) of tid {tid}")
    })?;
    Ok(())
}

/// Asks a seized thread to stop (`PTRACE_INTERRUPT`); wait for it with [`wait_stop`].
pub fn interrupt(tid: i32) -> Result<()> {
    check(ptrace_raw(libc::PTRACE_INTERRUPT, tid, 0, 0), || {
        format!("ptrace(INTERRUPT) of tid {tid}")
    })?;
    Ok(())
}

/// A decoded wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    /// Stopped: the signal and the `PTRACE_EVENT_*` (0 for a plain signal-delivery stop).
    Stopped {
        sig: i32,
        event: i32,
    },
    Exited(i32),
    Signaled(i32),
}

impl WaitStatus {
    fn decode(st: i32) -> Self {
        if libc::WIFSTOPPED(st) {
            WaitStatus::Stopped {
                sig: libc::WSTOPSIG(st),
                event: (st >> 16) & 0xffff,
            }
        } else if libc::WIFSIGNALED(st) {
            WaitStatus::Signaled(libc::WTERMSIG(st))
        } else {
            WaitStatus::Exited(libc::WEXITSTATUS(st))
        }
    }
}

/// Waits for a state change of `tid` (`waitpid(tid, __WALL)`), retrying on EINTR.
pub fn wait(tid: i32) -> Result<WaitStatus> {
    loop {
        let mut st = 0;
        // SAFETY: st is a valid out-pointer for the duration of the call.
        let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL) };
        if r == -1 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(Error::io(format!("waitpid({tid})"), e));
        }
        return Ok(WaitStatus::decode(st));
    }
}

/// Non-blocking wait for `tid`; `None` when nothing happened yet.
pub fn try_wait(tid: i32) -> Result<Option<WaitStatus>> {
    let mut st = 0;
    // SAFETY: st is a valid out-pointer for the duration of the call.
    let r = unsafe { libc::waitpid(tid, &mut st, libc::__WALL | libc::WNOHANG) };
    match r {
        -1 => Err(Error::last(format!("waitpid({tid}, WNOHANG)"))),
        0 => Ok(None),
        _ => Ok(Some(WaitStatus::decode(st))),
    }
}

/// Waits until `tid` reports a ptrace stop; fails if it exits instead.
pub fn wait_stop(tid: i32) -> Result<WaitStatus> {
    match wait(tid)? {
        s @ WaitStatus::Stopped { .. } => Ok(s),
        other => Err(Error::invalid(
            format!("waiting for tid {tid} to stop"),
            format!("it ended instead: {other:?}"),
        )),
    }
}

/// Detaches from a stopped tracee, delivering `sig` (0 for none).
pub fn detach(tid: i32, sig: i32) -> Result<()> {
    let data = usize::try_from(sig).unwrap_or(0);
    check(ptrace_raw(libc::PTRACE_DETACH, tid, 0, data), || {
        format!("ptrace(DETACH) of tid {tid}")
    })?;
    Ok(())
}

/// Resumes a stopped tracee for one instruction.
pub fn singlestep(tid: i32) -> Result<()> {
    check(ptrace_raw(libc::PTRACE_SINGLESTEP, tid, 0, 0), || {
        format!("ptrace(SINGLESTEP) of tid {tid}")
    })?;
    Ok(())
}

/// Resumes a stopped tracee, delivering `sig` (0 for none).
pub fn cont(tid: i32, sig: i32) -> Result<()> {
    let data = usize::try_from(sig).unwrap_or(0);
    check(ptrace_raw(libc::PTRACE_CONT, tid, 0, data), || {
        format!("ptrace(CONT) of tid {tid}")
    })?;
    Ok(())
}

/// The message of the last ptrace event (the new tid for FORK/CLONE events).
pub fn event_msg(tid: i32) -> Result<u64> {
    let mut v: libc::c_ulong = 0;
    let p = std::ptr::addr_of_mut!(v) as usize;
    check(ptrace_raw(libc::PTRACE_GETEVENTMSG, tid, 0, p), || {
        format!("ptrace(GETEVENTMSG) of tid {tid}")
    })?;
    Ok(v)
}

/// Reads the general-purpose registers (incl. `fs_base`/`gs_base`) of a stopped thread.
pub fn get_regs(tid: i32) -> Result<UserRegs> {
    let mut regs = UserRegs::default();
    let mut iov = libc::iovec {
        iov_base: std::ptr::addr_of_mut!(regs).cast(),
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    let p = std::ptr::addr_of_mut!(iov) as usize;
    check(
        ptrace_raw(libc::PTRACE_GETREGSET, tid, NT_PRSTATUS, p),
        || format!("ptrace(GETREGSET NT_PRSTATUS) of tid {tid}"),
    )?;
    Ok(regs)
}

/// Writes the general-purpose registers of a stopped thread.
pub fn set_regs(tid: i32, regs: &UserRegs) -> Result<()> {
    let mut copy = *regs;
    let mut iov = libc::iovec {
        iov_base: std::ptr::addr_of_mut!(copy).cast(),
        iov_len: std::mem::size_of::<UserRegs>(),
    };
    let p = std::ptr::addr_of_mut!(iov) as usize;
    check(
        ptrace_raw(libc::PTRACE_SETREGSET, tid, NT_PRSTATUS, p),
        || format!("ptrace(SETREGSET NT_PRSTATUS) of tid {tid}"),
    )?;
    Ok(())
}

/// Reads the whole XSAVE area (x87, SSE, AVX, ...) of a stopped thread.
pub fn get_xstate(tid: i32) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; XSTATE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let p = std::ptr::addr_of_mut!(iov) as usize;
    check(
        ptrace_raw(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, p),
        || format!("ptrace(GETREGSET NT_X86_XSTATE) of tid {tid}"),
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// Writes the XSAVE area of a stopped thread (as read by [`get_xstate`] on the same CPU model).
pub fn set_xstate(tid: i32, xstate: &[u8]) -> Result<()> {
    let mut buf = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let p = std::ptr::addr_of_mut!(iov) as usize;
    check(
        ptrace_raw(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, p),
        || {
            format!(
                "ptrace(SETREGSET NT_X86_XSTATE, {} bytes) of tid {tid}",
                xstate.len()
            )
        },
    )?;
    Ok(())
}

/// Reads the blocked-signal mask of a stopped thread.
pub fn get_sigmask(tid: i32) -> Result<u64> {
    let mut mask: u64 = 0;
    let p = std::ptr::addr_of_mut!(mask) as usize;
    check(ptrace_raw(PTRACE_GETSIGMASK, tid, 8, p), || {
        format!("ptrace(GETSIGMASK) of tid {tid}")
    })?;
    Ok(mask)
}

/// Sets the blocked-signal mask of a stopped thread.
pub fn set_sigmask(tid: i32, mask: u64) -> Result<()> {
    let mut m = mask;
    let p = std::ptr::addr_of_mut!(m) as usize;
    check(ptrace_raw(PTRACE_SETSIGMASK, tid, 8, p), || {
        format!("ptrace(SETSIGMASK) of tid {tid}")
    })?;
    Ok(())
}

/// The thread's rseq registration, `None` when it has none.
pub fn get_rseq(tid: i32) -> Result<Option<RseqConfig>> {
    let mut raw = RawRseqConfig::default();
    let p = std::ptr::addr_of_mut!(raw) as usize;
    check(
        ptrace_raw(
            PTRACE_GET_RSEQ_CONFIGURATION,
            tid,
            std::mem::size_of::<RawRseqConfig>(),
            p,
        ),
        || format!("ptrace(GET_RSEQ_CONFIGURATION) of tid {tid}"),
    )?;
    if raw.rseq_abi_pointer == 0 {
        return Ok(None);
    }
    Ok(Some(RseqConfig {
        ptr: raw.rseq_abi_pointer,
        size: raw.rseq_abi_size,
        signature: raw.signature,
        flags: raw.flags,
    }))
}

/// A queued signal as `siginfo_t` (128 bytes, kept opaque).
pub type RawSiginfo = [u8; 128];

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Flag of `PTRACE_PEEKSIGINFO`: read the process-wide (shared) queue instead of the thread's.
pub const PEEKSIGINFO_SHARED: u32 = 1;

/// Reads (without dequeuing) the pending signals of a thread, or of its process with
/// [`PEEKSIGINFO_SHARED`].
pub fn peek_siginfo(tid: i32, flags: u32) -> Result<Vec<RawSiginfo>> {
    let mut out = Vec::new();
    let mut buf = vec![[0u8; 128]; 32];
    loop {
        let mut args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags,
            nr: 32,
        };
        let a = std::ptr::addr_of_mut!(args) as usize;
        let d = buf.as_mut_ptr() as usize;
        let n = check(ptrace_raw(PTRACE_PEEKSIGINFO, tid, a, d), || {
            format!("ptrace(PEEKSIGINFO) of tid {tid}")
        })?;
        let n = usize::try_from(n).unwrap_or(0);
        out.extend_from_slice(&buf[..n]);
        if n < 32 {
            return Ok(out);
        }
    }
}

/// The `siginfo_t` of the signal a thread is stopped for (signal-delivery stop).
pub fn get_siginfo(tid: i32) -> Result<RawSiginfo> {
    let mut buf = [0u8; 128];
    let p = buf.as_mut_ptr() as usize;
    check(ptrace_raw(libc::PTRACE_GETSIGINFO, tid, 0, p), || {
        format!("ptrace(GETSIGINFO) of tid {tid}")
    })?;
    Ok(buf)
}
