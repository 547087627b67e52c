//! Remote pointers and remote system calls.
//!
//! [`RemoteSyscalls`] is the one primitive the checkpoint and restore engines build on: with a
//! thread stopped under ptrace, point its registers at a `syscall` instruction (one lives in
//! every vDSO), single-step it, read the result. The guard remembers the thread's registers and
//! puts them back when dropped, whatever happened in between, and it unmaps the scratch memory
//! it borrowed. Events that happen inside an injected call (a child created by an injected
//! `clone3`) are collected so the caller can pick up the new tracees.

use std::marker::PhantomData;

use crate::ptrace::{self, UserRegs, WaitStatus};
use crate::{i64_to_reg, mem, reg_to_i64, Error, Result, PAGE_SIZE};

/// An address in another process's address space. Never dereferenced here; only carried to
/// `process_vm_*`, `/proc/PID/mem` or syscall arguments.
pub struct RemotePtr<T> {
    addr: u64,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for RemotePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RemotePtr<T> {}

impl<T> std::fmt::Debug for RemotePtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemotePtr({:#x})", self.addr)
    }
}

impl<T> PartialEq for RemotePtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr
    }
}

impl<T> RemotePtr<T> {
    pub const fn new(addr: u64) -> Self {
        RemotePtr {
            addr,
            _t: PhantomData,
        }
    }
    pub const fn null() -> Self {
        Self::new(0)
    }
    pub const fn addr(self) -> u64 {
        self.addr
    }
    pub fn is_null(self) -> bool {
        self.addr == 0
    }
    /// The address `bytes` further on.
    pub fn byte_add(self, bytes: u64) -> Self {
        Self::new(self.addr + bytes)
    }
    pub fn cast<U>(self) -> RemotePtr<U> {
        RemotePtr::new(self.addr)
    }
}

/// x86_64 syscall numbers used by the engine.
#[allow(missing_docs)]
pub mod nr {
    pub const READ: u64 = 0;
    pub const CLOSE: u64 = 3;
    pub const LSEEK: u64 = 8;
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const RT_SIGACTION: u64 = 13;
    pub const MREMAP: u64 = 25;
    pub const DUP2: u64 = 33;
    pub const GETITIMER: u64 = 36;
    pub const SETITIMER: u64 = 38;
    pub const GETPID: u64 = 39;
    pub const PAUSE: u64 = 34;
    pub const FCNTL: u64 = 72;
    pub const CHDIR: u64 = 80;
    pub const FCHDIR: u64 = 81;
    pub const UMASK: u64 = 95;
    pub const SETPGID: u64 = 109;
    pub const SETSID: u64 = 112;
    pub const SETGROUPS: u64 = 116;
    pub const SETRESUID: u64 = 117;
    pub const SETRESGID: u64 = 119;
    pub const SIGALTSTACK: u64 = 131;
    pub const PRCTL: u64 = 157;
    pub const EXIT_GROUP: u64 = 231;
    pub const ARCH_PRCTL: u64 = 158;
    pub const CHROOT: u64 = 161;
    pub const RT_TGSIGQUEUEINFO: u64 = 297;
    pub const RT_SIGQUEUEINFO: u64 = 129;
    pub const RT_SIGTIMEDWAIT: u64 = 128;
    pub const PRLIMIT64: u64 = 302;
    pub const DUP3: u64 = 292;
    pub const RSEQ: u64 = 334;
    pub const PIDFD_OPEN: u64 = 434;
    pub const CLONE3: u64 = 435;
    pub const CLOSE_RANGE: u64 = 436;
    pub const PIDFD_GETFD: u64 = 438;
    pub const OPENAT: u64 = 257;
    pub const SET_TID_ADDRESS: u64 = 218;
    pub const SECCOMP: u64 = 317;
    pub const MADVISE: u64 = 28;
    pub const USERFAULTFD: u64 = 323;
    pub const TIMER_CREATE: u64 = 222;
    pub const TIMER_SETTIME: u64 = 223;
    pub const TIMER_GETTIME: u64 = 224;
    pub const TIMER_GETOVERRUN: u64 = 225;
    pub const TIMER_DELETE: u64 = 226;
}

/// Finds a `syscall` instruction (0f 05) in the given vDSO range of `pid`.
pub fn find_syscall_insn(pid: i32, vdso_start: u64, vdso_end: u64) -> Result<u64> {
    let len =
        usize::try_from(vdso_end - vdso_start).map_err(|_| Error::invalid("vdso", "too large"))?;
    let mut buf = vec![0u8; len];
    mem::read_exact(pid, &mut buf, vdso_start)?;
    buf.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| vdso_start + i as u64)
        .ok_or_else(|| Error::invalid(format!("pid {pid} vdso"), "no syscall instruction found"))
}

/// A ptrace event observed while an injected syscall ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteEvent {
    pub event: i32,
    pub msg: u64,
}

/// Guard for running system calls inside a stopped tracee. Dropping it unmaps the scratch area
/// (if any) and restores the registers the thread had when the guard was made.
pub struct RemoteSyscalls {
    tid: i32,
    syscall_insn: u64,
    saved: UserRegs,
    scratch: Option<(u64, u64)>,
    events: Vec<RemoteEvent>,
    /// Signals that arrived while a call was injected; they are delivered again on detach by
    /// the caller (see [`RemoteSyscalls::take_deferred_signals`]).
    deferred: Vec<(i32, ptrace::RawSiginfo)>,
}

impl std::fmt::Debug for RemoteSyscalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSyscalls")
            .field("tid", &self.tid)
            .field("syscall_insn", &self.syscall_insn)
            .finish()
    }
}

impl RemoteSyscalls {
    /// Takes over a stopped thread; `syscall_insn` is the address of a `syscall` instruction
    /// mapped executable in its address space.
    pub fn new(tid: i32, syscall_insn: u64) -> Result<Self> {
        let saved = ptrace::get_regs(tid)?;
        Ok(RemoteSyscalls {
            tid,
            syscall_insn,
            saved,
            scratch: None,
            events: Vec::new(),
            deferred: Vec::new(),
        })
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// The registers the thread will get back.
    pub fn saved_regs(&self) -> &UserRegs {
        &self.saved
    }

    /// Replaces the registers the thread gets back when the guard is dropped.
    pub fn set_saved_regs(&mut self, regs: UserRegs) {
        self.saved = regs;
    }

    /// Moves the syscall instruction (after the vDSO itself was moved by an injected `mremap`).
    pub fn set_syscall_insn(&mut self, addr: u64) {
        self.syscall_insn = addr;
    }

    pub fn syscall_insn(&self) -> u64 {
        self.syscall_insn
    }

    /// Events (fork/clone) seen during injected calls, oldest first; drains the list.
    pub fn take_events(&mut self) -> Vec<RemoteEvent> {
        std::mem::take(&mut self.events)
    }

    /// Signals that arrived during injected calls; drains the list.
    pub fn take_deferred_signals(&mut self) -> Vec<(i32, ptrace::RawSiginfo)> {
        std::mem::take(&mut self.deferred)
    }

    /// Runs one system call and returns the raw result (a negative errno on failure).
    pub fn syscall_raw(&mut self, nr: u64, args: [u64; 6]) -> Result<i64> {
        let tid = self.tid;
        let mut w = self.saved;
        w.rip = self.syscall_insn;
        w.rax = nr;
        w.orig_rax = i64_to_reg(-1);
        w.rdi = args[0];
        w.rsi = args[1];
        w.rdx = args[2];
        w.r10 = args[3];
        w.r8 = args[4];
        w.r9 = args[5];
        ptrace::set_regs(tid, &w)?;
        ptrace::singlestep(tid)?;
        loop {
            match ptrace::wait(tid)? {
                WaitStatus::Stopped { sig, event: 0 } if sig == libc::SIGTRAP => break,
                WaitStatus::Stopped { event: 0, sig } => {
                    // A real signal arrived; keep it for later and finish the step.
                    let info = ptrace::get_siginfo(tid)?;
                    self.deferred.push((sig, info));
                    ptrace::singlestep(tid)?;
                }
                WaitStatus::Stopped { event, .. } => {
                    if event != ptrace::event::STOP {
                        let msg = ptrace::event_msg(tid)?;
                        self.events.push(RemoteEvent { event, msg });
                    }
                    ptrace::singlestep(tid)?;
                }
                other => {
                    return Err(Error::invalid(
                        format!("injected syscall {nr} in tid {tid}"),
                        format!("the thread ended: {other:?}"),
                    ))
                }
            }
        }
        let r = ptrace::get_regs(tid)?;
        if r.rip != self.syscall_insn + 2 {
            return Err(Error::invalid(
                format!("injected syscall {nr} in tid {tid}"),
                format!(
                    "stopped at {:#x}, expected {:#x}",
                    r.rip,
                    self.syscall_insn + 2
                ),
            ));
        }
        Ok(reg_to_i64(r.rax))
    }

    /// Runs one system call; a negative result becomes an error naming `what`.
    pub fn syscall(&mut self, what: &str, nr: u64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall_raw(nr, args)?;
        if (-4095..0).contains(&r) {
            let errno = i32::try_from(-r).unwrap_or(libc::EINVAL);
            return Err(Error::from_errno(
                format!("tid {}: remote {what}", self.tid),
                errno,
            ));
        }
        Ok(i64_to_reg(r))
    }

    /// Maps `len` bytes of read-write scratch memory in the tracee (at `at`, which must be free,
    /// or anywhere when `None`); it is unmapped when the guard is dropped.
    pub fn map_scratch(&mut self, at: Option<u64>, len: u64) -> Result<RemotePtr<u8>> {
        if let Some((a, _)) = self.scratch {
            return Ok(RemotePtr::new(a));
        }
        let len = len.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let mut flags = u64::try_from(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS).unwrap_or(0);
        if at.is_some() {
            flags |= u64::try_from(libc::MAP_FIXED_NOREPLACE).unwrap_or(0);
        }
        let prot = u64::try_from(libc::PROT_READ | libc::PROT_WRITE).unwrap_or(0);
        let a = self.syscall(
            "mmap(scratch)",
            nr::MMAP,
            [at.unwrap_or(0), len, prot, flags, i64_to_reg(-1), 0],
        )?;
        self.scratch = Some((a, len));
        Ok(RemotePtr::new(a))
    }

    /// The scratch area, if mapped.
    pub fn scratch(&self) -> Option<(RemotePtr<u8>, u64)> {
        self.scratch.map(|(a, l)| (RemotePtr::new(a), l))
    }

    /// Forgets the scratch area (the caller unmapped it or wants it to stay).
    pub fn forget_scratch(&mut self) {
        self.scratch = None;
    }

    /// Writes `data` to the scratch area at `offset` and returns its remote address.
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<u64> {
        let (a, l) = self
            .scratch
            .ok_or_else(|| Error::invalid("remote scratch", "not mapped"))?;
        if offset + data.len() as u64 > l {
            return Err(Error::invalid(
                "remote scratch",
                format!("{} bytes at {offset} exceed {l}", data.len()),
            ));
        }
        mem::write_exact(self.tid, data, a + offset)?;
        Ok(a + offset)
    }

    /// Reads `buf.len()` bytes of the scratch area at `offset`.
    pub fn get(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (a, _) = self
            .scratch
            .ok_or_else(|| Error::invalid("remote scratch", "not mapped"))?;
        mem::read_exact(self.tid, buf, a + offset)
    }

    /// Puts the thread back now (unmapping scratch memory) and reports any failure.
    pub fn finish(mut self) -> Result<()> {
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        let mut first_err = None;
        if let Some((a, l)) = self.scratch.take() {
            if let Err(e) = self.syscall("munmap(scratch)", nr::MUNMAP, [a, l, 0, 0, 0, 0]) {
                first_err = Some(e);
            }
        }
        if let Err(e) = ptrace::set_regs(self.tid, &self.saved) {
            first_err.get_or_insert(e);
        }
        // Mark as done so Drop does nothing more.
        self.syscall_insn = 0;
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for RemoteSyscalls {
    fn drop(&mut self) {
        if self.syscall_insn != 0 {
            let _ = self.restore();
        }
    }
}
