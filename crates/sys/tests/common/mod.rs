//! Test-only helpers: anonymous mappings, a forked child, and a minimal ptrace syscall injector
//! (x86_64; the engine has its own remote-syscall guard).
#![allow(dead_code)]

pub const PAGE: usize = 4096;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An anonymous private mapping unmapped on drop.
pub struct Map {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Map {
    pub fn new(len: usize) -> Self {
        // SAFETY: anonymous private mapping with no address hint; result checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap failed");
        // SAFETY: advisory call on the mapping we just created.
        unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
        Self { ptr: p.cast(), len }
    }
    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }
    pub fn end(&self) -> u64 {
        self.addr() + self.len as u64
    }
    /// Writes `v` to the first byte of page `i`.
    pub fn poke(&self, i: usize, v: u8) {
        assert!(i * PAGE < self.len);
        // SAFETY: in bounds of our read-write mapping; volatile so the write really happens.
        unsafe { std::ptr::write_volatile(self.ptr.add(i * PAGE), v) };
    }
    pub fn peek(&self, i: usize) -> u8 {
        assert!(i * PAGE < self.len);
        // SAFETY: in bounds of our readable mapping.
        unsafe { std::ptr::read_volatile(self.ptr.add(i * PAGE)) }
    }
    pub fn fill(&self, v: u8) {
        // SAFETY: the whole mapping is ours and writable.
        unsafe { std::ptr::write_bytes(self.ptr, v, self.len) };
    }
    pub fn dontneed(&self, i: usize, pages: usize) {
        // SAFETY: drops pages of our own private anonymous mapping (they read back as zero).
        unsafe {
            libc::madvise(
                self.ptr.add(i * PAGE).cast(),
                pages * PAGE,
                libc::MADV_DONTNEED,
            )
        };
    }
}

impl Drop for Map {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn pipe() -> (i32, i32) {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the 2-element array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

pub fn write_byte(fd: i32, b: u8) -> bool {
    // SAFETY: writes one byte from a valid stack buffer.
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) == 1 }
}

pub fn read_byte(fd: i32) -> Option<u8> {
    let mut b = 0u8;
    loop {
        // SAFETY: reads one byte into a valid stack buffer.
        let n = unsafe { libc::read(fd, (&mut b as *mut u8).cast(), 1) };
        if n == 1 {
            return Some(b);
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Kills and reaps a child when dropped (so a failing test leaves no process behind).
pub struct ChildGuard(pub i32);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        kill_and_reap(self.0);
    }
}

pub fn kill_and_reap(pid: i32) {
    // SAFETY: signals and reaps our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
    }
}

/// Forks a child that runs `body` (which must not allocate or take locks: the parent is
/// multi-threaded) and then `_exit(0)`s.
///
/// Uses the raw `fork` syscall, not glibc's `fork()`: glibc holds its malloc locks across the
/// syscall, and with userfaultfd `EVENT_FORK` the syscall waits until a monitor reads the fork
/// event — a monitor thread of this same process that allocates would deadlock.
pub fn fork_child(body: impl FnOnce()) -> i32 {
    // SAFETY: raw fork in a multi-threaded process; the child only runs `body`, which by
    // contract uses async-signal-safe operations and raw syscalls only, then _exit.
    let pid = unsafe { libc::syscall(libc::SYS_fork) };
    let pid = i32::try_from(pid).unwrap_or(-1);
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        body();
        // SAFETY: terminating the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

#[cfg(target_arch = "x86_64")]
pub mod inject {
    /// Minimal remote-syscall injector: SEIZE + INTERRUPT one thread, run syscalls through the
    /// `syscall` instruction in its vDSO by single-stepping, restore registers on drop.
    pub struct Injector {
        pid: i32,
        saved: libc::user_regs_struct,
        sysaddr: u64,
        detached: bool,
    }

    fn err(what: &str) -> Box<dyn std::error::Error + Send + Sync> {
        format!("{what}: {}", std::io::Error::last_os_error()).into()
    }

    fn find_syscall_insn(pid: i32) -> Option<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
        let (a, rest) = line.split_once('-')?;
        let b = rest.split_whitespace().next()?;
        let (s, e) = (
            u64::from_str_radix(a, 16).ok()?,
            u64::from_str_radix(b, 16).ok()?,
        );
        use std::os::unix::fs::FileExt;
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
        let mut buf = vec![0u8; usize::try_from(e - s).ok()?];
        mem.read_exact_at(&mut buf, s).ok()?;
        buf.windows(2)
            .position(|w| w == [0x0f, 0x05])
            .map(|i| s + i as u64)
    }

    impl Injector {
        pub fn attach(pid: i32) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
            // SAFETY: ptrace requests on a pid with null addr/data (no memory passed).
            unsafe {
                if libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, 0usize) != 0 {
                    return Err(err("PTRACE_SEIZE"));
                }
                if libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize) != 0 {
                    return Err(err("PTRACE_INTERRUPT"));
                }
            }
            let mut st = 0;
            // SAFETY: waits for our tracee; `st` is a valid out pointer.
            if unsafe { libc::waitpid(pid, &mut st, libc::__WALL) } != pid {
                return Err(err("waitpid"));
            }
            // SAFETY: user_regs_struct is plain old data; zeroed is a valid value.
            let mut saved: libc::user_regs_struct = unsafe { std::mem::zeroed() };
            // SAFETY: PTRACE_GETREGS writes a user_regs_struct to the valid pointer.
            if unsafe { libc::ptrace(libc::PTRACE_GETREGS, pid, 0usize, &mut saved as *mut _) } != 0
            {
                return Err(err("PTRACE_GETREGS"));
            }
            let sysaddr = find_syscall_insn(pid).ok_or("no syscall instruction in vdso")?;
            Ok(Self {
                pid,
                saved,
                sysaddr,
                detached: false,
            })
        }

        pub fn syscall(
            &mut self,
            nr: i64,
            a: [u64; 6],
        ) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
            let mut w = self.saved;
            w.rip = self.sysaddr;
            w.rax = u64::from_ne_bytes(nr.to_ne_bytes());
            w.orig_rax = u64::MAX;
            (w.rdi, w.rsi, w.rdx, w.r10, w.r8, w.r9) = (a[0], a[1], a[2], a[3], a[4], a[5]);
            // SAFETY: SETREGS reads a user_regs_struct from a valid pointer; SINGLESTEP and
            // waitpid act on our stopped tracee; GETREGS writes into a valid struct.
            unsafe {
                if libc::ptrace(libc::PTRACE_SETREGS, self.pid, 0usize, &w as *const _) != 0 {
                    return Err(err("PTRACE_SETREGS"));
                }
                if libc::ptrace(libc::PTRACE_SINGLESTEP, self.pid, 0usize, 0usize) != 0 {
                    return Err(err("PTRACE_SINGLESTEP"));
                }
                let mut st = 0;
                if libc::waitpid(self.pid, &mut st, libc::__WALL) != self.pid {
                    return Err(err("waitpid"));
                }
                if libc::ptrace(libc::PTRACE_GETREGS, self.pid, 0usize, &mut w as *mut _) != 0 {
                    return Err(err("PTRACE_GETREGS"));
                }
            }
            Ok(i64::from_ne_bytes(w.rax.to_ne_bytes()))
        }

        pub fn detach(mut self) {
            self.do_detach();
        }

        fn do_detach(&mut self) {
            if !self.detached {
                // SAFETY: restores the saved registers and detaches from our tracee.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_SETREGS,
                        self.pid,
                        0usize,
                        &self.saved as *const _,
                    );
                    libc::ptrace(libc::PTRACE_DETACH, self.pid, 0usize, 0usize);
                }
                self.detached = true;
            }
        }
    }

    impl Drop for Injector {
        fn drop(&mut self) {
            self.do_detach();
        }
    }
}

/// Bound of every wait on another process, thread or the network stack: generous because CI
/// machines are slow and shared (a wait that succeeds returns as soon as it can).
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Polls `cond` every 5 ms until it holds; panics naming `what` after [`PATIENCE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Bytes queued for reading on socket `fd` (SIOCINQ).
pub fn sock_inq(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n
}

/// Bytes in the send queue of socket `fd`, sent but unacknowledged or unsent (SIOCOUTQ).
pub fn sock_outq(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one int to the valid pointer.
    assert_eq!(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) }, 0);
    n
}

/// Waits until `fd` is readable (for a listener: a connection is waiting to be accepted).
pub fn wait_readable(fd: i32, what: &str) {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(PATIENCE.as_millis()).unwrap();
    loop {
        // SAFETY: polls one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        assert_eq!(r, 1, "{what} not readable within {PATIENCE:?}");
        return;
    }
}
