//! Runtime of the preloaded library: mode, per-thread state, the syscall gate, emission into the
//! ring (record) and the ordered feed (replay), divergence reports.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use intercept::msg::{self, Header, Kind, TimeEntry, BATCH_CAP, HEADER_LEN};
use shmring::{RingProducer, SlotRef, ThreadToken};

pub const OFF: u8 = 0;
pub const RECORD: u8 = 1;
pub const REPLAY: u8 = 2;

/// Exit status of a process that departs from the journal during replay.
pub const DIVERGENCE_EXIT: i32 = 86;

pub static MODE: AtomicU8 = AtomicU8::new(OFF);

// The syscall gate: the only code outside libc's text whose system calls the seccomp filter lets
// through untouched. `long understudy_gate(long nr, long a1, ..., long a6)`.
std::arch::global_asm!(
    ".text",
    ".globl understudy_gate",
    ".hidden understudy_gate",
    ".type understudy_gate,@function",
    "understudy_gate:",
    "mov rax, rdi",
    "mov rdi, rsi",
    "mov rsi, rdx",
    "mov rdx, rcx",
    "mov r10, r8",
    "mov r8, r9",
    "mov r9, [rsp+8]",
    "syscall",
    ".globl understudy_gate_ret",
    ".hidden understudy_gate_ret",
    "understudy_gate_ret:",
    "ret",
    ".size understudy_gate, .-understudy_gate",
);

extern "C" {
    fn understudy_gate(nr: i64, a1: i64, a2: i64, a3: i64, a4: i64, a5: i64, a6: i64) -> i64;
    /// The instruction after the gate's `syscall`: the instruction pointer the kernel's seccomp
    /// filter sees for every system call the library makes.
    static understudy_gate_ret: u8;
}

/// Address of the gate's return point (the seccomp filter allows trapped numbers from there).
pub fn gate_ip() -> u64 {
    std::ptr::addr_of!(understudy_gate_ret) as u64
}

/// A raw system call through the gate; returns the kernel's value (`-errno` on failure).
#[inline]
pub fn sys(nr: i64, a1: i64, a2: i64, a3: i64, a4: i64, a5: i64, a6: i64) -> i64 {
    // SAFETY: the gate executes one `syscall` instruction with the given registers. Pointer
    // arguments are the caller's responsibility exactly as with libc's syscall(); every caller
    // passes pointers it received from the application for the same call, or its own buffers.
    unsafe { understudy_gate(nr, a1, a2, a3, a4, a5, a6) }
}

#[inline]
pub fn sys3(nr: i64, a1: i64, a2: i64, a3: i64) -> i64 {
    sys(nr, a1, a2, a3, 0, 0, 0)
}

/// Convert a syscall-convention result to libc's (-1 and errno).
#[inline]
pub fn libc_ret(r: i64) -> i64 {
    if (-4095..0).contains(&r) {
        set_errno(-r as i32);
        -1
    } else {
        r
    }
}

#[inline]
pub fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

#[inline]
pub fn errno() -> i32 {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// Write a message to stderr without allocating (and without interception).
pub fn say(parts: &[&[u8]]) {
    for p in parts {
        sys3(libc::SYS_write, 2, p.as_ptr() as i64, p.len() as i64);
    }
}

/// Bytes of a thread's encoded time batch buffer: room for [`BATCH_CAP`] entries of at most
/// [`msg::BATCH_ENTRY_MAX`] bytes starting at any offset up to [`TB_MASK`], plus the 8 bytes a
/// delta entry's store may write beyond it.
pub const TB_BYTES: usize = TB_MASK + 1 + 8;
/// A power of two less one, at least the largest offset an entry can start at (the buffer's
/// offsets are masked with it, so the fast path's stores need no bounds check).
pub const TB_MASK: usize = 1023;
const _: () = assert!(TB_MASK >= (BATCH_CAP - 1) * msg::BATCH_ENTRY_MAX);

/// Per-thread state. All-zero initial value, no destructor: safe in signal handlers, no lazy
/// registration on first access.
#[repr(C)]
pub struct Tls {
    /// 1 when this thread may take the time calls' fast path ([`time_fast`]): the process
    /// records and the thread is named (set by [`arm`]). With `depth` it forms the first
    /// 8-byte word of the block, which the fast path compares with 1 in one instruction
    /// (`armed` 1, `depth` 0).
    pub armed: Cell<u32>,
    pub depth: Cell<u32>,
    pub vtid: Cell<u64>,
    pub tseq: Cell<u64>,
    pub children: Cell<u64>,
    /// Ring slot index + 1 (0: not registered in this process generation).
    pub token: Cell<u32>,
    pub gen: Cell<u32>,
    pub tid: Cell<u32>,
    /// Record: time results not emitted yet (the thread's next time batch): `tb_n` entries,
    /// encoded as they were made (message version 4) into the first `tb_len` bytes of `tb`,
    /// each delta-coded against `tb_refs` (per clock code, 0 at the start of a batch). Their
    /// call numbers are `tseq + 1 ..= tseq + tb_n`: `tseq` is advanced when the batch is
    /// emitted, which happens before any other message of the thread takes a number.
    pub tb_n: Cell<u32>,
    pub tb_len: Cell<u32>,
    pub tb_refs: Cell<[i64; msg::CODES]>,
    pub tb: UnsafeCell<[u8; TB_BYTES]>,
    /// Replay: the time batch this thread takes its time results from (feed index + 1, 0:
    /// none), entries taken, entries in it.
    pub rb_idx: Cell<u64>,
    pub rb_k: Cell<u32>,
    pub rb_n: Cell<u32>,
    /// Replay: where the current batch's next entry starts (compact entries depend on the
    /// ones before them).
    pub rb_cur: Cell<msg::BatchCursor>,
    /// Replay: every message of this thread before this feed index is consumed (or is the
    /// current batch).
    pub scan: Cell<u64>,
    /// Replay: cache of [`next_own`]: `scan + 1` it was computed for (0: none) and the result
    /// (`u64::MAX`: no further message).
    pub nx_for: Cell<u64>,
    pub nx: Cell<u64>,
}

// The per-thread state lives in a block of static TLS declared here and reached with the
// initial-exec model (`fs:0` plus a GOT-held offset, two instructions). Rust's `thread_local!`
// in a cdylib uses the general-dynamic model: a `__tls_get_addr` call (≈ 25 instructions per
// recorded call). Initial-exec is valid because the library is loaded at start-up
// (LD_PRELOAD), where glibc places its TLS in the static block; the zero-filled `.tbss` block
// is exactly `Tls`'s const initial value (every field zero).
const TLS_SIZE: usize = std::mem::size_of::<Tls>();
const _: () = assert!(std::mem::align_of::<Tls>() <= 8 && TLS_SIZE.is_multiple_of(8));

std::arch::global_asm!(
    ".pushsection .tbss,\"awT\",@nobits",
    ".p2align 3",
    ".globl understudy_tls_block",
    ".hidden understudy_tls_block",
    ".type understudy_tls_block,@object",
    ".size understudy_tls_block, {size}",
    "understudy_tls_block:",
    ".zero {size}",
    ".popsection",
    size = const TLS_SIZE,
);

/// This thread's `Tls`.
#[inline(always)]
pub fn tls_ptr() -> *const Tls {
    let p: usize;
    // SAFETY: reads the thread pointer (fs:0 holds its own address on x86-64 glibc) and the
    // GOT entry the dynamic linker filled with the block's offset from it; no other effect.
    unsafe {
        std::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + understudy_tls_block@GOTTPOFF]",
            p = out(reg) p,
            options(pure, readonly, nostack),
        );
    }
    p as *const Tls
}

/// [`tls_ptr`], computed again (not merged with an earlier `tls_ptr` of the same function).
#[inline(always)]
pub fn tls_ptr_again() -> *const Tls {
    let p: usize;
    // SAFETY: as in `tls_ptr`.
    unsafe {
        std::arch::asm!(
            "mov {p}, qword ptr fs:[0]",
            "add {p}, qword ptr [rip + understudy_tls_block@GOTTPOFF]",
            p = out(reg) p,
            options(readonly, nostack, preserves_flags),
        );
    }
    p as *const Tls
}

/// Stand-in for the former `thread_local!` key: `TLS.with(|t| ..)`.
pub struct TlsKey;

impl TlsKey {
    #[inline(always)]
    pub fn with<R>(&self, f: impl FnOnce(&Tls) -> R) -> R {
        // SAFETY: the block is this thread's, zero-initialised (a valid `Tls`: cells of
        // integers), alive as long as the thread; the reference does not outlive `f`.
        f(unsafe { &*tls_ptr() })
    }
}

pub static TLS: TlsKey = TlsKey;

/// Bumped in the child of every fork: threads re-register and re-read their tid.
pub static PROC_GEN: AtomicU32 = AtomicU32::new(1);
pub static REAL_PID: AtomicU32 = AtomicU32::new(0);
/// The pid the application sees (recorded pid in replay).
pub static VPID: AtomicU32 = AtomicU32::new(0);
pub static VPPID: AtomicU32 = AtomicU32::new(0);
pub static PROC_VTID: AtomicU64 = AtomicU64::new(0);
static UNKNOWN_THREADS: AtomicU64 = AtomicU64::new(0);
static KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

pub static RING: OnceLock<RingProducer<'static>> = OnceLock::new();
pub static FEED: OnceLock<Feed> = OnceLock::new();
pub static PROCS: OnceLock<Procs> = OnceLock::new();

/// A read-write shared mapping of a file (feed, process table).
pub struct Shared {
    pub base: usize,
    pub len: usize,
}

impl Shared {
    fn map(path: &str, min_len: usize, create: bool) -> Option<Shared> {
        let c = std::ffi::CString::new(path).ok()?;
        let flags = libc::O_RDWR | libc::O_CLOEXEC | if create { libc::O_CREAT } else { 0 };
        let fd = sys3(libc::SYS_open, c.as_ptr() as i64, i64::from(flags), 0o600);
        if fd < 0 {
            return None;
        }
        // SAFETY: a zeroed stat is a valid out-buffer for fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        sys3(libc::SYS_fstat, fd, std::ptr::addr_of_mut!(st) as i64, 0);
        let mut len = st.st_size as usize;
        if len < min_len {
            if !create {
                sys3(libc::SYS_close, fd, 0, 0);
                return None;
            }
            sys3(libc::SYS_ftruncate, fd, min_len as i64, 0);
            len = min_len;
        }
        let p = sys(
            libc::SYS_mmap,
            0,
            len as i64,
            i64::from(libc::PROT_READ | libc::PROT_WRITE),
            i64::from(libc::MAP_SHARED),
            fd,
            0,
        );
        sys3(libc::SYS_close, fd, 0, 0);
        if p < 0 {
            return None;
        }
        Some(Shared {
            base: p as usize,
            len,
        })
    }

    #[inline]
    pub fn u64_at(&self, off: usize) -> &AtomicU64 {
        assert!(off + 8 <= self.len && off.is_multiple_of(8));
        // SAFETY: in bounds, 8-aligned (page-aligned base), valid for any bit pattern; the
        // mapping lives for the rest of the process.
        unsafe { &*((self.base + off) as *const AtomicU64) }
    }

    #[inline]
    pub fn u32_at(&self, off: usize) -> &AtomicU32 {
        assert!(off + 4 <= self.len && off.is_multiple_of(4));
        // SAFETY: as for u64_at.
        unsafe { &*((self.base + off) as *const AtomicU32) }
    }

    pub fn bytes(&self, off: usize, len: usize) -> &'static [u8] {
        assert!(off + len <= self.len);
        // SAFETY: in bounds of a mapping never unmapped; feed message bytes are never written
        // after the file is created.
        unsafe { std::slice::from_raw_parts((self.base + off) as *const u8, len) }
    }
}

/// Table of the application's processes, shared by all of them: real pid -> vtid. Lets a
/// process find its name after `execve` (and a posix_spawn child its parent's).
pub struct Procs(Shared);

const PROC_SLOTS: usize = 4096;
const PROC_ENTRY: usize = 32; // pid u32, spawns u32, vtid u64, ready u32, execs u32, pad

impl Procs {
    fn entry(&self, pid: u32, create: bool) -> Option<usize> {
        let start = (pid as usize).wrapping_mul(2_654_435_761) % PROC_SLOTS;
        for k in 0..PROC_SLOTS {
            let off = ((start + k) % PROC_SLOTS) * PROC_ENTRY;
            let p = self.0.u32_at(off);
            let cur = p.load(Ordering::SeqCst);
            if cur == pid {
                return Some(off);
            }
            if cur == 0 {
                if !create {
                    return None;
                }
                match p.compare_exchange(0, pid, Ordering::SeqCst, Ordering::SeqCst) {
                    Ok(_) => return Some(off),
                    Err(now) if now == pid => return Some(off),
                    Err(_) => {}
                }
            }
        }
        None
    }

    pub fn vtid_of(&self, pid: u32) -> Option<(usize, u64)> {
        self.entry(pid, false)
            .map(|o| (o, self.0.u64_at(o + 8).load(Ordering::SeqCst)))
    }

    pub fn set(&self, pid: u32, vtid: u64) -> Option<usize> {
        let o = self.entry(pid, true)?;
        self.0.u64_at(o + 8).store(vtid, Ordering::SeqCst);
        Some(o)
    }

    /// A new process (fork child) takes `pid`'s entry: its name, no execs or spawns yet.
    /// The `ready` flag is left alone (the fork handshake owns it).
    pub fn reset(&self, pid: u32, vtid: u64) -> Option<usize> {
        let o = self.set(pid, vtid)?;
        self.execs(o).store(0, Ordering::SeqCst);
        self.spawns(o).store(0, Ordering::SeqCst);
        Some(o)
    }

    pub fn ready(&self, off: usize) -> &AtomicU32 {
        self.0.u32_at(off + 16)
    }

    pub fn execs(&self, off: usize) -> &AtomicU32 {
        self.0.u32_at(off + 20)
    }

    pub fn spawns(&self, off: usize) -> &AtomicU32 {
        self.0.u32_at(off + 4)
    }
}

pub fn futex_wait(w: &AtomicU32, v: u32, ms: i64) {
    let ts = libc::timespec {
        tv_sec: ms / 1000,
        tv_nsec: (ms % 1000) * 1_000_000,
    };
    sys(
        libc::SYS_futex,
        w.as_ptr() as i64,
        i64::from(libc::FUTEX_WAIT),
        i64::from(v),
        std::ptr::addr_of!(ts) as i64,
        0,
        0,
    );
}

pub fn futex_wake(w: &AtomicU32) {
    sys(
        libc::SYS_futex,
        w.as_ptr() as i64,
        i64::from(libc::FUTEX_WAKE),
        i64::from(i32::MAX),
        0,
        0,
        0,
    );
}

pub fn getenv(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Library constructor: decide the mode and name this process.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    TLS.with(|t| t.depth.set(1));
    let mode = match getenv("UNDERSTUDY_MODE").as_deref() {
        Some("record") => RECORD,
        Some("replay") => REPLAY,
        _ => {
            TLS.with(|t| t.depth.set(0));
            return;
        }
    };
    let pid = sys3(libc::SYS_getpid, 0, 0, 0) as u32;
    let ppid = sys3(libc::SYS_getppid, 0, 0, 0) as u32;
    REAL_PID.store(pid, Ordering::SeqCst);
    VPID.store(pid, Ordering::SeqCst);
    VPPID.store(ppid, Ordering::SeqCst);
    let Some(procs_path) = getenv("UNDERSTUDY_PROCS") else {
        say(&[b"understudy: UNDERSTUDY_PROCS not set; interceptor disabled\n"]);
        TLS.with(|t| t.depth.set(0));
        return;
    };
    let Some(procs) = Shared::map(&procs_path, PROC_SLOTS * PROC_ENTRY, true) else {
        say(&[b"understudy: cannot map the process table; interceptor disabled\n"]);
        TLS.with(|t| t.depth.set(0));
        return;
    };
    let procs = PROCS.get_or_init(|| Procs(procs));
    // Name this process: after execve it keeps its entry; a posix_spawn child takes one from
    // its parent; otherwise it is the root.
    let (vtid, execs) = if let Some((o, v)) = procs.vtid_of(pid).filter(|(_, v)| *v != 0) {
        let n = procs.execs(o).fetch_add(1, Ordering::SeqCst) + 1;
        (intercept::vtid::exec(v, u64::from(n)), n)
    } else if let Some((o, pv)) = procs.vtid_of(ppid).filter(|(_, v)| *v != 0) {
        let n = procs.spawns(o).fetch_add(1, Ordering::SeqCst) + 1;
        (intercept::vtid::spawn(pv, u64::from(n)), 0)
    } else {
        (intercept::vtid::ROOT, 0)
    };
    if let Some(o) = procs.set(pid, vtid) {
        procs.execs(o).store(execs, Ordering::SeqCst);
    }
    PROC_VTID.store(vtid, Ordering::SeqCst);
    TLS.with(|t| {
        t.vtid.set(vtid);
        t.tseq.set(0);
    });
    // SAFETY: plain key creation with a C destructor; key stored for later setspecific.
    unsafe {
        let mut key: libc::pthread_key_t = 0;
        if libc::pthread_key_create(&mut key, Some(thread_exit)) == 0 {
            KEY.store(key as usize, Ordering::SeqCst);
        }
    }
    match mode {
        RECORD => {
            let Some(ring_path) = getenv("UNDERSTUDY_RING") else {
                say(&[b"understudy: UNDERSTUDY_RING not set; interceptor disabled\n"]);
                TLS.with(|t| t.depth.set(0));
                return;
            };
            match RingProducer::open(std::path::Path::new(&ring_path)) {
                Ok(r) => {
                    let _ = RING.set(r);
                }
                Err(e) => {
                    let m = format!("understudy: cannot open ring: {e}; interceptor disabled\n");
                    say(&[m.as_bytes()]);
                    TLS.with(|t| t.depth.set(0));
                    return;
                }
            }
            if getenv("UNDERSTUDY_SYNC").as_deref() == Some("1") {
                SYNC.store(1, Ordering::SeqCst);
            }
            crate::hooks::resolve_time_fast();
            MODE.store(RECORD, Ordering::SeqCst);
            TLS.with(|t| {
                arm(t);
                t.depth.set(0);
            });
            if let Some(g) = enter() {
                g.emit(
                    Kind::ProcStart,
                    0,
                    u64::from(pid),
                    u64::from(ppid),
                    u64::from(execs),
                    &[],
                );
            }
        }
        _ => {
            let Some(feed_path) = getenv("UNDERSTUDY_FEED") else {
                say(&[b"understudy: UNDERSTUDY_FEED not set; interceptor disabled\n"]);
                TLS.with(|t| t.depth.set(0));
                return;
            };
            let Some(f) = Feed::open(&feed_path) else {
                say(&[b"understudy: cannot map the replay feed; interceptor disabled\n"]);
                TLS.with(|t| t.depth.set(0));
                return;
            };
            let _ = FEED.set(f);
            parse_own_out();
            MODE.store(REPLAY, Ordering::SeqCst);
            TLS.with(|t| t.depth.set(0));
            if let Some(_g) = enter() {
                let r = replay_next(Kind::ProcStart, None);
                VPID.store(r.h.a0 as u32, Ordering::SeqCst);
                VPPID.store(r.h.a1 as u32, Ordering::SeqCst);
                replay_done(&r);
            }
        }
    }
    if getenv("UNDERSTUDY_SECCOMP").as_deref() != Some("0") {
        crate::seccomp::install();
    }
}

/// Library destructor (run by `exit`, also when `main` returns): the exiting thread's buffered
/// time results go out before the process ends.
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;

extern "C" fn fini() {
    flush_before_release();
}

extern "C" fn thread_exit(v: *mut libc::c_void) {
    let idx = v as usize;
    if idx == 0 {
        return;
    }
    // The thread's buffered time results go out before it does.
    flush_before_release();
    if let Some(r) = RING.get() {
        r.unregister_thread(ThreadToken {
            index: (idx - 1) as u32,
        });
    }
}

/// Called in the child of a fork: new pid, new process generation. `scan_from`: replay, the
/// feed index after the parent's fork message (every message of the child lies beyond it).
pub fn after_fork_child(vtid: u64, vpid: u32, parent_vpid: u32, scan_from: u64) {
    let pid = sys3(libc::SYS_getpid, 0, 0, 0) as u32;
    REAL_PID.store(pid, Ordering::SeqCst);
    PROC_GEN.fetch_add(1, Ordering::SeqCst);
    PROC_VTID.store(vtid, Ordering::SeqCst);
    if MODE.load(Ordering::Relaxed) == REPLAY {
        VPID.store(vpid, Ordering::SeqCst);
    } else {
        VPID.store(pid, Ordering::SeqCst);
    }
    VPPID.store(parent_vpid, Ordering::SeqCst);
    TLS.with(|t| {
        t.vtid.set(vtid);
        t.tseq.set(0);
        t.children.set(0);
        t.token.set(0);
        new_thread_name(t, scan_from);
    });
    crate::hooks::forget_children();
}

/// The thread took a new name (fork child, new thread): no buffered time results (the parent
/// flushed its own before the fork; a new thread has none), no replay position of the old name.
pub fn new_thread_name(t: &Tls, scan_from: u64) {
    clear_batch(t);
    arm(t);
    t.rb_idx.set(0);
    t.rb_k.set(0);
    t.rb_n.set(0);
    t.scan.set(scan_from);
    t.nx_for.set(0);
}

/// The barrier's entry side. `None`: pass the call through untouched (interceptor off, or a
/// call made from inside the interceptor itself).
pub struct Guard {
    token: Option<ThreadToken>,
    /// The token's slot, resolved once per call.
    slot: Option<SlotRef<'static>>,
    /// The ring (record mode): saves the `OnceLock` check at every step of the call.
    ring: Option<&'static RingProducer<'static>>,
    /// This thread's `Tls` (saves a `__tls_get_addr` per use; valid while the thread lives,
    /// and a guard never leaves its thread).
    tls: *const Tls,
    /// Made by [`enter_light`]: the thread has not passed the ring's boundary (its slot still
    /// says `Outside`); [`Guard::activate`] does that before anything is emitted.
    light: bool,
}

// Always inlined: returned out of line, the Guard came back through memory and its reload
// stalled on store forwarding (~20 ns per call). Its first steps are those of `enter_light`,
// written out again on purpose: `enter_light()` followed by `pass_boundary` costs 9 more
// instructions per recorded `write` (callgrind: 282 against 273).
#[inline(always)]
pub fn enter() -> Option<Guard> {
    let mode = MODE.load(Ordering::Relaxed);
    if mode == OFF {
        return None;
    }
    let tp: *const Tls = tls_ptr();
    // SAFETY: as in `enter_light`.
    let t = unsafe { &*tp };
    if t.depth.get() != 0 {
        return None;
    }
    if mode == RECORD && crate::signals::pending() {
        crate::signals::deliver_pending();
    }
    t.depth.set(1);
    if t.vtid.get() == 0 {
        name_unknown_thread(t);
    }
    let (mut token, mut slot, mut ring) = (None, None, None);
    if mode == RECORD {
        let Some(r) = RING.get() else {
            // Not recording after all (no ring): leave the interceptor as we found it.
            t.depth.set(0);
            return None;
        };
        (token, slot) = pass_boundary(t, r);
        ring = Some(r);
    }
    Some(Guard {
        token,
        slot,
        ring,
        tls: tp,
        light: false,
    })
}

/// Passes the ring's boundary for this thread (registers it if needed; parks first if a
/// quiesce is active): its slot says `Active` until the guard leaves. No slot (the thread
/// table is full): the thread records nothing, as before.
#[inline(always)]
fn pass_boundary(
    t: &Tls,
    r: &'static RingProducer<'static>,
) -> (Option<ThreadToken>, Option<SlotRef<'static>>) {
    let gen = PROC_GEN.load(Ordering::Relaxed);
    if t.token.get() == 0 || t.gen.get() != gen {
        register(t, r, gen);
    }
    if t.token.get() == 0 {
        return (None, None);
    }
    let tok = ThreadToken {
        index: t.token.get() - 1,
    };
    let sr = r.slot_ref(tok);
    r.enter_at(sr);
    (Some(tok), Some(sr))
}

/// The entry of a time call: depth, pending signals, thread name, but not the ring's boundary.
/// A time call that only buffers its result emits nothing, so it need not be `Active` for a
/// quiesce: the thread stays `Outside` (running its own code, as far as the cut is concerned;
/// its buffered results are in its memory). [`Guard::activate`] passes the boundary when the
/// call does emit (a full buffer, a result that does not fit a batch).
#[inline(always)]
pub fn enter_light() -> Option<Guard> {
    let mode = MODE.load(Ordering::Relaxed);
    if mode == OFF {
        return None;
    }
    // Only the address goes through `with` (a closure this small is inlined; the whole entry
    // inside `with` was not, and its result was returned through memory).
    let tp: *const Tls = tls_ptr();
    // SAFETY: `tp` is this thread's const-initialised thread-local without destructor, alive as
    // long as the thread; the reference does not leave this call except inside the Guard,
    // which is !Send and therefore stays on this thread too.
    let t = unsafe { &*tp };
    if t.depth.get() != 0 {
        return None;
    }
    if mode == RECORD && crate::signals::pending() {
        crate::signals::deliver_pending();
    }
    t.depth.set(1);
    if t.vtid.get() == 0 {
        name_unknown_thread(t);
    }
    let mut ring = None;
    if mode == RECORD {
        let Some(r) = RING.get() else {
            t.depth.set(0);
            return None;
        };
        ring = Some(r);
    }
    Some(Guard {
        token: None,
        slot: None,
        ring,
        tls: tp,
        light: true,
    })
}

/// The record path of a time call whose result can go into the thread's time batch (`out`
/// non-null, 16 bytes; clock id fits an `i32`), as flat as it can be: one compare of the
/// thread's first TLS word (armed: recording and named; depth 0), the real call made at depth
/// 1, its entry appended to the buffer. `false`: not done, the caller takes the general path
/// ([`enter_light`]): the thread is not armed (another mode, an unnamed thread), the call is
/// nested, or the real call failed (`real` returned non-zero: the general path makes the call
/// again through libc and records what it returns). A signal pending at the entry is not
/// delivered there but at this call's exit boundary, with any that arrive during the call
/// (both are boundaries; the recorded position is where it was delivered). A full buffer and
/// a pending signal go out of line ([`time_fast_exit`]).
#[inline(always)]
pub fn time_fast(kind: Kind, a0: u64, out: *mut u8, real: impl FnOnce() -> libc::c_int) -> bool {
    let tp = tls_ptr();
    // SAFETY: the block starts with `armed` and `depth` (`repr(C)`, two `Cell<u32>`, 8-aligned):
    // one 8-byte read of this thread's own cells; nothing else writes them meanwhile.
    if unsafe { tp.cast::<u64>().read() } != u64::from_le(1) {
        return false;
    }
    // SAFETY: this thread's TLS block (see `TlsKey::with`).
    unsafe { &*tp }.depth.set(1);
    if real() != 0 {
        time_fast_undo();
        return false;
    }
    let (lo, hi) = read16(out);
    // The block's address again rather than kept across the call: one callee-saved register
    // (push and pop) fewer in the exported wrapper, for the same two instructions.
    let tp = tls_ptr_again();
    // SAFETY: as above.
    let t = unsafe { &*tp };
    let pos = t.tb_len.get() as usize & TB_MASK;
    if let Some((code, unit)) = msg::clock_code(kind, a0) {
        let refs: &Cell<[i64]> = &t.tb_refs;
        if let Some(r) = refs.as_slice_of_cells().get(usize::from(code)) {
            let (sec, sub) = (
                i64::from_le_bytes(lo.to_le_bytes()),
                i64::from_le_bytes(hi.to_le_bytes()),
            );
            if let Some((v, z)) = msg::time_delta(unit, sec, sub, r.get()) {
                // SAFETY: the buffer is this thread's (its TLS block); no reference to it is
                // alive (a flush's slice ends before it returns; depth is 1, so nothing nested
                // appends).
                let buf = unsafe { &mut *t.tb.get() };
                r.set(v);
                if z < 7 {
                    // z < 7: the cast cannot truncate.
                    #[allow(clippy::cast_possible_truncation)]
                    let tag = code | (z as u8) << 4;
                    buf[pos] = tag;
                    t.tb_len.set((pos + 1) as u32);
                } else {
                    let (tag, len) = msg::delta_tag(code, z);
                    buf[pos] = tag;
                    buf[pos + 1..pos + 9].copy_from_slice(&z.to_le_bytes());
                    t.tb_len.set((pos + len) as u32);
                }
                time_fast_done(tp);
                return true;
            }
        }
    }
    time_fast_escaped(tp, pos, kind, a0, lo, hi);
    true
}

/// The end of [`time_fast`] once its entry is in the buffer: the count, then the exit (out
/// of line when the buffer is full or a signal is pending).
#[inline(always)]
fn time_fast_done(tp: *const Tls) {
    // SAFETY: this thread's TLS block.
    let t = unsafe { &*tp };
    let n = t.tb_n.get() + 1;
    t.tb_n.set(n);
    if n >= BATCH_CAP as u32 || crate::signals::pending() {
        // Emit the full buffer and/or deliver signals at the exit boundary, as the general
        // path's guard would.
        time_fast_exit(tp);
    } else {
        // depth 0, written as the whole first word (`armed` 1, as the entry found it): the
        // next call's 8-byte compare is then forwarded from this one store; after a 4-byte
        // store of `depth` it waited for the store to retire (≈ 4 ns per call in
        // `scripts/intercept-ab.sh`).
        // SAFETY: the first 8 bytes of this thread's TLS block are its `armed` and `depth`
        // cells (see the compare in `time_fast`); only this thread writes them.
        unsafe { tp.cast_mut().cast::<u64>().write(u64::from_le(1)) };
    }
}

/// [`time_fast`] for an entry that takes the escape form, and the rest of the call.
#[cold]
#[inline(never)]
fn time_fast_escaped(tp: *const Tls, pos: usize, kind: Kind, a0: u64, lo: u64, hi: u64) {
    // SAFETY: this thread's TLS block.
    append_escaped(unsafe { &*tp }, pos, kind, a0, lo, hi);
    time_fast_done(tp);
}

/// [`time_fast`]'s real call failed: the thread leaves depth 1; the general path follows.
#[cold]
#[inline(never)]
fn time_fast_undo() {
    // SAFETY: this thread's TLS block.
    unsafe { &*tls_ptr() }.depth.set(0);
}

/// Let this thread take the time calls' fast path ([`time_fast`]) if the process records.
/// Called once the thread has its name (`vtid`): at start-up for the main thread, in
/// `thread_start`, for an unknown thread when it is named; a forked child inherits it.
#[inline]
pub fn arm(t: &Tls) {
    t.armed
        .set(u32::from(MODE.load(Ordering::Relaxed) == RECORD));
}

/// Drop this thread's buffered time results (a new name; recording stopped).
fn clear_batch(t: &Tls) {
    t.tb_n.set(0);
    t.tb_len.set(0);
    t.tb_refs.set([0; msg::CODES]);
}

/// Append a successful time call's entry to the thread's encoded batch (message version 4):
/// the delta form when the call has a clock code and its delta fits, the 24-byte escape
/// otherwise (out of line). The caller holds the thread at depth 1 and has fewer than
/// [`BATCH_CAP`] entries buffered, so the entry fits the buffer.
#[inline(always)]
fn append_time(t: &Tls, kind: Kind, a0: u64, lo: u64, hi: u64) {
    let pos = t.tb_len.get() as usize;
    if let Some((code, unit)) = msg::clock_code(kind, a0) {
        let refs: &Cell<[i64]> = &t.tb_refs;
        if let Some(r) = refs.as_slice_of_cells().get(usize::from(code)) {
            let (sec, sub) = (
                i64::from_le_bytes(lo.to_le_bytes()),
                i64::from_le_bytes(hi.to_le_bytes()),
            );
            if let Some((v, z)) = msg::time_delta(unit, sec, sub, r.get()) {
                let (tag, len) = msg::delta_tag(code, z);
                // SAFETY: the buffer is this thread's (its TLS block); no reference to it is
                // alive (the flush's slice ends before it returns, and a nested call cannot
                // append: depth is 1).
                let buf = unsafe { &mut *t.tb.get() };
                if let Some(dst) = buf.get_mut(pos..pos + 9) {
                    r.set(v);
                    dst[0] = tag;
                    dst[1..9].copy_from_slice(&z.to_le_bytes());
                    t.tb_len.set((pos + len) as u32);
                    return;
                }
            }
        }
    }
    append_escaped(t, pos, kind, a0, lo, hi);
}

/// [`append_time`]'s escape form: the tag and the 24-byte version-3 entry.
#[cold]
#[inline(never)]
fn append_escaped(t: &Tls, pos: usize, kind: Kind, a0: u64, lo: u64, hi: u64) {
    // SAFETY: as in `append_time`.
    let buf = unsafe { &mut *t.tb.get() };
    if let Some(dst) = buf.get_mut(pos..pos + msg::BATCH_ENTRY_MAX) {
        let w = TimeEntry::words_of(kind, a0, lo, hi);
        dst[0] = msg::CODE_ESCAPE;
        dst[1..9].copy_from_slice(&w[0].to_le_bytes());
        dst[9..17].copy_from_slice(&w[1].to_le_bytes());
        dst[17..25].copy_from_slice(&w[2].to_le_bytes());
        t.tb_len.set((pos + msg::BATCH_ENTRY_MAX) as u32);
    }
}

/// The 16 bytes a time call just stored at `out`, as two 8-byte loads (not merged by LLVM into
/// one 16-byte load, which cannot be forwarded from the two 8-byte stores still in the store
/// buffer and waits for them to retire); x86-64 loads need no alignment.
#[inline(always)]
pub fn read16(out: *mut u8) -> (u64, u64) {
    let (lo, hi): (u64, u64);
    // SAFETY: `out` is the application's non-null 16-byte out buffer of this call (a timespec
    // or timeval), which the call has just filled; two plain loads, no other effect.
    unsafe {
        std::arch::asm!(
            "mov {lo}, qword ptr [{p}]",
            "mov {hi}, qword ptr [{p} + 8]",
            p = in(reg) out,
            lo = out(reg) lo,
            hi = out(reg) hi,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    (lo, hi)
}

/// Before this thread makes its state visible to others without a message of its own (a
/// lock release, thread exit, exec, process exit): its buffered time results go out, so that
/// anything another thread reads from it and externalises is in the log first (that thread's
/// output waits only for what has been emitted). The inline check costs a TLS load.
#[inline(always)]
pub fn flush_before_release() {
    if MODE.load(Ordering::Relaxed) == RECORD {
        // SAFETY: this thread's TLS block (see `TlsKey::with`).
        let t = unsafe { &*tls_ptr() };
        if t.tb_n.get() != 0 && t.depth.get() == 0 {
            flush_released(tls_ptr());
        }
    }
}

/// [`flush_before_release`]'s emission: the ring's boundary is passed (a quiesce may park the
/// thread here), the batch emitted, the boundary left. Pending signals are left for the
/// thread's next intercepted call (replay delivers them there, never at a release).
#[cold]
#[inline(never)]
fn flush_released(tp: *const Tls) {
    // SAFETY: this thread's TLS block.
    let t = unsafe { &*tp };
    t.depth.set(1);
    let mut g = fast_guard(tp);
    g.activate(); // emits the batch
    if let (Some(slot), Some(r)) = (g.slot, g.ring) {
        r.leave_at(slot);
    }
    std::mem::forget(g);
    t.depth.set(0);
}

/// A light guard for the thread whose depth [`time_fast`] set to 1 (record mode, ring mapped).
fn fast_guard(tp: *const Tls) -> Guard {
    Guard {
        token: None,
        slot: None,
        ring: RING.get(),
        tls: tp,
        light: true,
    }
}

/// [`time_fast`]'s exit when the buffer is full or a signal arrived during the call.
#[cold]
#[inline(never)]
fn time_fast_exit(tp: *const Tls) {
    // SAFETY: this thread's TLS block.
    let t = unsafe { &*tp };
    if MODE.load(Ordering::Relaxed) != RECORD {
        // Recording stopped (`fatal_record`): this thread leaves the fast path.
        t.armed.set(0);
        clear_batch(t);
        t.depth.set(0);
        return;
    }
    let mut g = fast_guard(tp);
    if t.tb_n.get() as usize >= BATCH_CAP {
        g.activate();
        g.flush_time();
    }
    // Dropping the guard passes the exit boundary (signals recorded and delivered there).
}

/// A thread not created through pthread_create (raw clone): named in order of appearance,
/// which is not guaranteed to repeat in replay.
#[cold]
fn name_unknown_thread(t: &Tls) {
    let n = UNKNOWN_THREADS.fetch_add(1, Ordering::SeqCst) + 1;
    t.vtid.set(intercept::vtid::child(
        PROC_VTID.load(Ordering::Relaxed),
        (1 << 40) + n,
    ));
    arm(t);
}

#[cold]
fn register(t: &Tls, r: &RingProducer<'static>, gen: u32) {
    let tid = sys3(libc::SYS_gettid, 0, 0, 0) as u32;
    t.tid.set(tid);
    t.gen.set(gen);
    match r.register_thread(REAL_PID.load(Ordering::Relaxed), tid) {
        Ok(tok) => {
            t.token.set(tok.index + 1);
            let key = KEY.load(Ordering::Relaxed);
            if key != usize::MAX {
                // SAFETY: key was created by pthread_key_create; the value is an integer
                // smuggled as a pointer, never dereferenced.
                unsafe {
                    libc::pthread_setspecific(
                        key as libc::pthread_key_t,
                        (tok.index as usize + 1) as *const _,
                    );
                }
            }
        }
        Err(_) => t.token.set(0),
    }
}

impl Guard {
    /// The thread is about to make a real call that may block: its buffered time results go
    /// out first (a quiesce does not wait for a blocked thread, and a sync-mode output waits
    /// for the acknowledgement of everything the thread emitted).
    #[inline]
    pub fn blocking(&self) {
        self.flush_pending();
        if let (Some(t), Some(r)) = (self.slot, self.ring) {
            r.blocking_at(t);
        }
    }

    /// The blocking call returned: pass the boundary again (parks if a quiesce is active).
    #[inline]
    pub fn unblocked(&self) {
        if let (Some(t), Some(r)) = (self.slot, self.ring) {
            r.enter_at(t);
        }
    }
}

impl Guard {
    #[inline]
    fn tls(&self) -> &Tls {
        // SAFETY: `tls` points to this thread's const-initialised thread-local (no destructor),
        // which lives as long as the thread; Guard is !Send (raw pointer), so it stays here.
        unsafe { &*self.tls }
    }

    /// The header of this thread's next message (its per-thread sequence number taken).
    #[inline(always)]
    fn next_header(&self, kind: Kind, ret: i64, a0: u64, a1: u64, a2: u64, len: usize) -> Header {
        let t = self.tls();
        debug_assert_eq!(t.tb_n.get(), 0, "a message numbered before the time batch");
        let tseq = t.tseq.get() + 1;
        t.tseq.set(tseq);
        Header {
            kind,
            pid: REAL_PID.load(Ordering::Relaxed),
            tid: t.tid.get(),
            data_len: len as u32,
            vtid: t.vtid.get(),
            tseq,
            ret,
            a0,
            a1,
            a2,
        }
    }

    /// Record one finished call. `data` parts are concatenated into the message. The thread's
    /// buffered time results are emitted first (per-thread order).
    #[inline]
    pub fn emit(&self, kind: Kind, ret: i64, a0: u64, a1: u64, a2: u64, data: &[&[u8]]) -> u64 {
        let Some(r) = self.ring else { return 0 };
        self.flush_pending();
        let mut len = 0;
        for d in data {
            len += d.len();
        }
        let h = self.next_header(kind, ret, a0, a1, a2, len);
        r.push_as(self.token, HEADER_LEN + len, |buf| {
            h.encode_into(buf);
            let mut o = HEADER_LEN;
            for d in data {
                buf[o..o + d.len()].copy_from_slice(d);
                o += d.len();
            }
        })
        .unwrap_or_else(|e| {
            fatal_record(&e);
            0
        })
    }
}

impl Guard {
    /// [`emit`](Self::emit) with at most one data part, inlined into the hot wrappers
    /// (`read`, `write` and the other outputs): the same message bytes. The caller has passed
    /// [`Guard::blocking`] or [`Guard::activate`] (which emit the thread's time batch).
    #[inline(always)]
    pub fn emit1(&self, kind: Kind, ret: i64, a0: u64, a1: u64, a2: u64, data: &[u8]) -> u64 {
        let Some(r) = self.ring else { return 0 };
        // Every caller passed `blocking` or `activate` first, which emitted the thread's
        // buffered time results (a check here too cost the `write` path 6 instructions).
        debug_assert_eq!(self.tls().tb_n.get(), 0, "time results buffered at emit1");
        let len = data.len();
        let h = self.next_header(kind, ret, a0, a1, a2, len);
        r.push_as(self.token, HEADER_LEN + len, |buf| {
            h.encode_into(buf);
            if len != 0 {
                buf[HEADER_LEN..HEADER_LEN + len].copy_from_slice(data);
            }
        })
        .unwrap_or_else(|e| {
            fatal_record(&e);
            0
        })
    }

    /// Record a successful time call that filled 16 bytes: buffered in this thread's next time
    /// batch (`intercept::msg`, version 3), emitted when the buffer is full, before any other
    /// message of the thread and before it blocks. No ring access otherwise. `lo`, `hi`: the 16
    /// bytes the call returned, as two little-endian words. The caller checked
    /// [`Header::compact_fits`].
    #[inline(always)]
    pub fn buffer_time(&mut self, kind: Kind, a0: u64, lo: u64, hi: u64) {
        if self.ring.is_none() {
            return;
        }
        let t = self.tls();
        let n = t.tb_n.get() as usize;
        append_time(t, kind, a0, lo, hi);
        t.tb_n.set(n as u32 + 1);
        if n + 1 >= BATCH_CAP {
            self.activate();
            self.flush_time();
        }
    }

    /// Pass the ring's boundary for a guard made by [`enter_light`] (registers the thread if
    /// needed; parks first if a quiesce is active), so that the call may emit.
    #[cold]
    #[inline(never)]
    pub fn activate(&mut self) {
        if !self.light {
            return;
        }
        self.light = false;
        let Some(r) = self.ring else { return };
        (self.token, self.slot) = pass_boundary(self.tls(), r);
        // What the thread buffered goes out before anything this call emits.
        self.flush_pending();
    }

    /// Emit the buffered time results, if any (inlined check, out-of-line emission).
    #[inline(always)]
    pub fn flush_pending(&self) {
        if self.tls().tb_n.get() != 0 {
            self.flush_time();
        }
    }

    /// Emit this thread's buffered time results as one time batch. The guard has passed the
    /// ring's boundary (not a light one).
    #[cold]
    #[inline(never)]
    pub fn flush_time(&self) {
        let t = self.tls();
        let n = (t.tb_n.get() as usize).min(BATCH_CAP);
        if n == 0 {
            return;
        }
        let len = (t.tb_len.get() as usize).min(TB_BYTES);
        clear_batch(t);
        // The batch's calls take their numbers now, before anything else of the thread.
        let first = t.tseq.get() + 1;
        t.tseq.set(t.tseq.get() + n as u64);
        debug_assert!(
            !self.light,
            "time batch emitted outside the ring's boundary"
        );
        let Some(r) = self.ring else { return };
        let (pid, tid, vtid, first) = (
            REAL_PID.load(Ordering::Relaxed),
            t.tid.get(),
            t.vtid.get(),
            first,
        );
        // SAFETY: the buffer is this thread's; nothing appends to it while this shared slice
        // lives (the thread is inside the interceptor, and the closure only reads).
        let entries = unsafe { &(&*t.tb.get())[..len] };
        if let Err(e) = r.push_as(self.token, msg::BATCH_HEADER + len, |buf| {
            msg::encode_batch_compact_raw(buf, pid, tid, vtid, first, n, entries);
        }) {
            fatal_record(&e);
        }
    }
}

impl Drop for Guard {
    /// The exit boundary. Signals that arrived during the call are delivered here, before the
    /// call returns (so a handler runs before the program sees `EINTR`, as natively): recorded
    /// as `signal` messages with `a1 = 1` right after the call's own message, and replayed at
    /// the same place. The common case (record, nothing pending) is inlined; the rest is
    /// [`Guard::exit_slow`].
    #[inline(always)]
    fn drop(&mut self) {
        if MODE.load(Ordering::Relaxed) != RECORD || crate::signals::pending() {
            self.exit_slow();
            return;
        }
        if let (Some(t), Some(r)) = (self.slot, self.ring) {
            r.leave_at(t);
        }
        self.tls().depth.set(0);
    }
}

impl Guard {
    #[cold]
    #[inline(never)]
    fn exit_slow(&mut self) {
        let mut run = 0u64;
        match MODE.load(Ordering::Relaxed) {
            RECORD if crate::signals::pending() => {
                // A light guard passes the ring's boundary before the signal messages.
                self.activate();
                run = crate::signals::take_pending();
                for sig in 1..65u64 {
                    if run & (1 << (sig - 1)) != 0 {
                        self.emit(Kind::Signal, 0, sig, 1, 0, &[]);
                    }
                }
            }
            REPLAY => {
                while let Some(sig) = exit_signal_next() {
                    let r = replay_next(Kind::Signal, None);
                    replay_done(&r);
                    run |= 1 << (sig - 1);
                }
            }
            _ => {}
        }
        if let (Some(t), Some(r)) = (self.slot, self.ring) {
            r.leave_at(t);
        }
        self.tls().depth.set(0);
        if run != 0 {
            crate::signals::run_handlers(run);
        }
    }
}

/// Replay: whether this thread's next message is a signal delivered at an exit boundary
/// (`a1 = 1`), and which. Such a message was emitted right after the thread's previous one
/// (after the time batch that ends with the call just made, when that was a time call).
fn exit_signal_next() -> Option<u64> {
    let f = FEED.get()?;
    // SAFETY: this thread's TLS block (see `TlsKey::with`).
    let t = unsafe { &*tls_ptr() };
    if t.rb_idx.get() != 0 && t.rb_k.get() < t.rb_n.get() {
        return None; // the next message is the current time batch
    }
    let i = next_own(f, t)?;
    let (h, _) = msg::decode(f.at(i).1).ok()?;
    (h.kind == Kind::Signal && h.a1 == 1 && (1..65).contains(&h.a0)).then_some(h.a0)
}

/// Replay: the feed index of this thread's next message not consumed yet (past the current
/// time batch), or `None` when the journal holds no further message of this thread. Scans
/// forward from the thread's own position, not from the shared cursor: time batches have no
/// place in the order between threads, so the cursor may already have passed one of them.
fn next_own(f: &Feed, t: &Tls) -> Option<u64> {
    let from = t.scan.get();
    if t.nx_for.get() == from + 1 {
        let v = t.nx.get();
        return (v != u64::MAX).then_some(v);
    }
    let my = t.vtid.get();
    let mut found = None;
    for i in from..f.n {
        // vtid sits at offset 16 in every form.
        if let Some(v) = f.at(i).1.get(16..24) {
            if u64::from_le_bytes(v.try_into().expect("8 bytes")) == my {
                found = Some(i);
                break;
            }
        }
    }
    t.nx_for.set(from + 1);
    t.nx.set(found.unwrap_or(u64::MAX));
    found
}

/// What the journal says about a time call of this thread in replay.
pub enum TimeReplay {
    /// The next entry of the thread's time batch: the 16 bytes the call returned.
    Entry([u8; 16]),
    /// The thread's next message is not a time batch: take it in order ([`replay_next`]).
    Ordered,
    /// The journal holds no further message of this thread: the recorded call's result was
    /// still buffered when the recorded process ended, so it was never emitted and never
    /// externalised (every output emits the buffer first). The caller makes the real call.
    Beyond,
}

/// Replay of a successful-looking time call (`kind`, clock id `a0`, 16 bytes out): the next
/// entry of this thread's time batch, without waiting for the thread's turn in the recorded
/// order (time results are ordered only within their thread). An entry of another call or
/// clock is a departure.
pub fn replay_time(kind: Kind, a0: u64) -> TimeReplay {
    let Some(f) = FEED.get() else {
        return TimeReplay::Ordered;
    };
    // SAFETY: this thread's TLS block (see `TlsKey::with`).
    let t = unsafe { &*tls_ptr() };
    loop {
        let idx = t.rb_idx.get();
        let k = t.rb_k.get();
        if idx != 0 && k < t.rb_n.get() {
            let (h, data) = batch_at(f, idx - 1, kind);
            let mut cur = t.rb_cur.get();
            let Some(e) = cur.next_entry(data) else {
                diverge_batch(f, idx - 1, kind, "the journal's time batch is damaged");
            };
            t.rb_cur.set(cur);
            let call = h.batch_call(&e, k as usize);
            t.tseq.set(call.tseq);
            if e.kind != kind || e.a0 != a0 {
                diverge(
                    &Rec {
                        idx: idx - 1,
                        h: call,
                        data: &[],
                    },
                    &format!("{}(clock {a0})", kind.name()),
                );
            }
            t.rb_k.set(k + 1);
            return TimeReplay::Entry(e.data);
        }
        let Some(i) = next_own(f, t) else {
            return TimeReplay::Beyond;
        };
        let b = f.at(i).1;
        if b.first() != Some(&msg::BATCH_MAGIC) {
            // A recorded signal delivered before this call (at its entry boundary): deliver it
            // in its turn, as `replay_next` would, then look again.
            match msg::decode(b) {
                Ok((h, data)) if h.kind == Kind::Signal => {
                    wait_turn(f, i, kind, None);
                    t.tseq.set(h.tseq);
                    t.scan.set(i + 1);
                    replay_done(&Rec { idx: i, h, data });
                    crate::signals::deliver_recorded(h.a0 as i32);
                    continue;
                }
                _ => return TimeReplay::Ordered,
            }
        }
        let (h, _) = batch_at(f, i, kind);
        t.rb_idx.set(i + 1);
        t.rb_k.set(0);
        t.rb_n.set(u32::try_from(h.a0).unwrap_or(0));
        t.rb_cur.set(msg::BatchCursor::new(&h));
        t.scan.set(i + 1);
    }
}

/// The time batch at feed index `i` (a departure if it does not decode).
fn batch_at(f: &Feed, i: u64, kind: Kind) -> (Header, &'static [u8]) {
    match msg::decode(f.at(i).1) {
        Ok((h, d)) if h.kind == Kind::TimeBatch => (h, d),
        _ => diverge_batch(
            f,
            i,
            kind,
            "the journal holds an undecodable time batch here",
        ),
    }
}

#[cold]
fn diverge_batch(_f: &Feed, _i: u64, kind: Kind, what: &str) -> ! {
    diverge_at(None, &Actual { kind, what }, None)
}

/// The departure of a call that is not the time call this thread's current or next time
/// batch holds.
#[cold]
fn diverge_expected_time(f: &Feed, i: u64, k: usize, kind: Kind, fd: Option<i64>, what: &str) -> ! {
    let (jseq, b) = f.at(i);
    match msg::decode(b) {
        Ok((h, d)) => {
            let e = msg::batch_entries(&h, d).nth(k);
            let expected = e.map(|e| h.batch_call(&e, k)).unwrap_or(h);
            diverge_at(Some((jseq, expected)), &Actual { kind, what }, fd)
        }
        Err(_) => diverge_at(None, &Actual { kind, what }, fd),
    }
}

static SYNC: AtomicU8 = AtomicU8::new(0);

/// Sync mode (`UNDERSTUDY_SYNC=1`): outputs leave only after the collector acknowledged every
/// message before them.
#[inline]
pub fn sync_mode() -> bool {
    SYNC.load(Ordering::Relaxed) != 0
}

/// Wait until `ack_seq` covers every message reserved so far (bounded: 60 s, then a warning).
#[cold]
pub fn wait_durable() {
    if let Some(r) = RING.get() {
        let last = r.last_seq();
        if let Err(e) = r.wait_ack(last, std::time::Duration::from_secs(60)) {
            let m = format!(
                "understudy: pid {}: output released without acknowledgement of message {last}: {e}\n",
                REAL_PID.load(Ordering::Relaxed)
            );
            say(&[m.as_bytes()]);
        }
    }
}

#[cold]
fn fatal_record(e: &shmring::RingError) {
    let m = format!(
        "understudy: pid {}: cannot record a call: {e}; recording stops here, the journal is incomplete\n",
        REAL_PID.load(Ordering::Relaxed)
    );
    say(&[m.as_bytes()]);
    MODE.store(OFF, Ordering::SeqCst);
}

// ---------------------------------------------------------------- replay

pub struct Feed {
    sh: Shared,
    n: u64,
    data_off: usize,
}

/// One message of the feed, taken by the thread whose turn it is.
pub struct Rec {
    pub idx: u64,
    pub h: Header,
    pub data: &'static [u8],
}

impl Feed {
    fn open(path: &str) -> Option<Feed> {
        let sh = Shared::map(path, 4096, false)?;
        if sh.bytes(0, 8) != intercept::feed::MAGIC {
            return None;
        }
        let n = sh.u64_at(intercept::feed::OFF_N).load(Ordering::SeqCst);
        let data_off = sh.u64_at(32).load(Ordering::SeqCst) as usize;
        Some(Feed { sh, n, data_off })
    }

    fn cursor(&self) -> &AtomicU64 {
        self.sh.u64_at(intercept::feed::OFF_CURSOR)
    }

    fn futex(&self) -> &AtomicU32 {
        self.sh.u32_at(intercept::feed::OFF_FUTEX)
    }

    fn waiters(&self) -> &AtomicU32 {
        self.sh.u32_at(intercept::feed::OFF_WAITERS)
    }

    fn at(&self, i: u64) -> (u64, &'static [u8]) {
        let e = intercept::feed::INDEX_OFF as usize + i as usize * 24;
        let off = self.sh.u64_at(e).load(Ordering::Relaxed) as usize;
        let len = self.sh.u32_at(e + 8).load(Ordering::Relaxed) as usize;
        let jseq = self.sh.u64_at(e + 16).load(Ordering::Relaxed);
        (jseq, self.sh.bytes(self.data_off + off, len))
    }
}

/// What this thread is doing, for a divergence report.
pub struct Actual<'a> {
    pub kind: Kind,
    pub what: &'a str,
}

/// Wait for this thread's turn in the recorded order and take its next message, which must be
/// a `kind` call (on `fd`, when given). Recorded signals due before the call are delivered here.
pub fn replay_next(kind: Kind, fd: Option<i64>) -> Rec {
    replay_next_with(kind, fd, String::new)
}

/// [`replay_next`], with a description of the call for the divergence report.
pub fn replay_next_with(kind: Kind, fd: Option<i64>, describe: impl Fn() -> String) -> Rec {
    let f = FEED.get().expect("replay feed mapped");
    // SAFETY: this thread's TLS block (see `TlsKey::with`).
    let t = unsafe { &*tls_ptr() };
    loop {
        // A call while the thread's current time batch still holds results: the recorded
        // thread made more time calls before this one.
        let (idx, k) = (t.rb_idx.get(), t.rb_k.get());
        if idx != 0 && k < t.rb_n.get() {
            let d = describe();
            diverge_expected_time(f, idx - 1, k as usize, kind, fd, &d);
        }
        let Some(i) = next_own(f, t) else {
            diverge_at(
                None,
                &Actual {
                    kind,
                    what: "a call after the end of the journal",
                },
                fd,
            );
        };
        let (jseq, bytes) = f.at(i);
        let (h, data) = match msg::decode(bytes) {
            Ok(x) => x,
            Err(_) => diverge_at(
                None,
                &Actual {
                    kind,
                    what: "the journal holds an undecodable message here",
                },
                fd,
            ),
        };
        if h.kind == Kind::TimeBatch {
            let d = describe();
            diverge_expected_time(f, i, 0, kind, fd, &d);
        }
        wait_turn(f, i, kind, fd);
        t.tseq.set(h.tseq);
        t.scan.set(i + 1);
        if h.kind == Kind::Signal && kind != Kind::Signal {
            let r = Rec { idx: i, h, data };
            replay_done(&r);
            crate::signals::deliver_recorded(h.a0 as i32);
            continue;
        }
        if h.kind != kind || fd.is_some_and(|fd| fd as u64 != h.a0) {
            let d = describe();
            diverge_at(Some((jseq, h)), &Actual { kind, what: &d }, fd);
        }
        return Rec { idx: i, h, data };
    }
}

/// Wait until the shared cursor reaches feed index `i` (this thread's next message). Time
/// batches met at the cursor are passed over by whichever thread waits (they are ordered
/// only within their own thread, whose replay reads them without the cursor).
fn wait_turn(f: &Feed, i: u64, kind: Kind, fd: Option<i64>) {
    let limit_ms: i64 = getenv_ms();
    let mut waited_ms = 0i64;
    loop {
        let c = f.cursor().load(Ordering::Acquire);
        if c == i {
            return;
        }
        if c > i || c >= f.n {
            diverge_at(
                None,
                &Actual {
                    kind,
                    what: "the replay order passed this thread's next message",
                },
                fd,
            );
        }
        let (jseq, bytes) = f.at(c);
        if bytes.first() == Some(&msg::BATCH_MAGIC) {
            if f.cursor()
                .compare_exchange(c, c + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                f.futex().fetch_add(1, Ordering::SeqCst);
                if f.waiters().load(Ordering::SeqCst) > 0 {
                    futex_wake(f.futex());
                }
            }
            waited_ms = 0;
            continue;
        }
        // Not this thread's turn.
        let v = f.futex().load(Ordering::SeqCst);
        f.waiters().fetch_add(1, Ordering::SeqCst);
        if f.cursor().load(Ordering::SeqCst) == c {
            futex_wait(f.futex(), v, 100);
            waited_ms += 100;
        }
        f.waiters().fetch_sub(1, Ordering::SeqCst);
        if f.cursor().load(Ordering::SeqCst) != c {
            waited_ms = 0;
        } else if waited_ms >= limit_ms {
            let m = match msg::decode(bytes) {
                Ok((h, _)) => format!(
                    "waited {} s for its turn while the journal's next message (#{c}, journal seq {jseq}) belongs to thread {:x}: {h}",
                    limit_ms / 1000,
                    h.vtid
                ),
                Err(_) => format!(
                    "waited {} s for its turn at an undecodable message (#{c}, journal seq {jseq})",
                    limit_ms / 1000
                ),
            };
            diverge_at(None, &Actual { kind, what: &m }, fd);
        }
    }
}

fn getenv_ms() -> i64 {
    static MS: AtomicU64 = AtomicU64::new(0);
    let v = MS.load(Ordering::Relaxed);
    if v != 0 {
        return v as i64;
    }
    let s = getenv("UNDERSTUDY_REPLAY_WAIT_SECS")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(10)
        * 1000;
    MS.store(s, Ordering::Relaxed);
    s as i64
}

/// The message is consumed: let the next call in the recorded order go.
pub fn replay_done(r: &Rec) {
    let f = FEED.get().expect("feed");
    f.cursor().store(r.idx + 1, Ordering::SeqCst);
    f.futex().fetch_add(1, Ordering::SeqCst);
    if f.waiters().load(Ordering::SeqCst) > 0 {
        futex_wake(f.futex());
    }
}

/// Report a departure from the journal and end this process with [`DIVERGENCE_EXIT`].
pub fn diverge(r: &Rec, what: &str) -> ! {
    let f = FEED.get().expect("feed");
    let (jseq, _) = f.at(r.idx);
    diverge_at(
        Some((jseq, r.h)),
        &Actual {
            kind: r.h.kind,
            what,
        },
        None,
    )
}

pub fn diverge_at(expected: Option<(u64, Header)>, actual: &Actual<'_>, fd: Option<i64>) -> ! {
    TLS.with(|t| t.depth.set(1));
    let f = FEED.get().expect("feed");
    let (vtid, tseq) = TLS.with(|t| (t.vtid.get(), t.tseq.get()));
    let tid = sys3(libc::SYS_gettid, 0, 0, 0);
    let cursor = f.cursor().load(Ordering::SeqCst);
    let fd_s = fd.map(|fd| format!(" on fd {fd}")).unwrap_or_default();
    let mut m = String::new();
    use std::fmt::Write;
    match expected {
        Some((jseq, h)) => {
            let _ = write!(
                m,
                "divergence at journal seq {jseq}: process {} (recorded pid {}, now pid {}), thread {vtid:x} (recorded tid {}, now tid {tid}), call #{}\n  expected: {h}\n  actual:   {}{fd_s}{}{}\n",
                VPID.load(Ordering::Relaxed),
                h.pid,
                REAL_PID.load(Ordering::Relaxed),
                h.tid,
                h.tseq,
                actual.kind.name(),
                if actual.what.is_empty() { "" } else { ": " },
                actual.what
            );
        }
        None => {
            let _ = write!(
                m,
                "divergence at replay step {cursor}: process {} (now pid {}), thread {vtid:x} (now tid {tid}) after call #{tseq}\n  expected: nothing more from this thread here\n  actual:   {}{fd_s}: {}\n",
                VPID.load(Ordering::Relaxed),
                REAL_PID.load(Ordering::Relaxed),
                actual.kind.name(),
                actual.what
            );
        }
    }
    let dv = f.sh.u32_at(intercept::feed::OFF_DIVERGED);
    if dv
        .compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        let b = m.as_bytes();
        let n = b.len().min(intercept::feed::REPORT_MAX);
        // SAFETY: the report area lies inside the mapping (header page) and only the thread
        // that won the CAS above writes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                b.as_ptr(),
                (f.sh.base + intercept::feed::OFF_REPORT) as *mut u8,
                n,
            );
        }
        f.sh.u32_at(intercept::feed::OFF_REPORT_LEN)
            .store(n as u32, Ordering::SeqCst);
        dv.store(1, Ordering::SeqCst);
    }
    // Wake every waiting thread so the whole replay ends promptly.
    f.futex().fetch_add(1, Ordering::SeqCst);
    futex_wake(f.futex());
    sys3(libc::SYS_exit_group, i64::from(DIVERGENCE_EXIT), 0, 0);
    unreachable!("exit_group returned")
}

// ---------------------------------------------------------------- fd classes

/// Kinds of file descriptor, cached per fd number.
pub const FD_UNKNOWN: u8 = 0;
/// Regular file, directory, block device: reads are not recorded (the file is assumed to be
/// there at replay); writes are recorded as digests and performed in replay.
pub const FD_FILE: u8 = 1;
/// Socket, pipe, FIFO, terminal, character device: leads outside; reads recorded, writes
/// suppressed in replay.
pub const FD_OUTSIDE: u8 = 2;
/// Replay only: the replaying command's own stdout/stderr: writes performed.
pub const FD_OWN: u8 = 3;

const FD_CACHE: usize = 4096;
static FDK: [AtomicU8; FD_CACHE] = [const { AtomicU8::new(0) }; FD_CACHE];
static OWN_OUT: [AtomicU64; 4] = [const { AtomicU64::new(u64::MAX) }; 4];

fn parse_own_out() {
    let Some(s) = getenv("UNDERSTUDY_OWN_OUT") else {
        return;
    };
    for (i, part) in s.split(',').take(2).enumerate() {
        let mut it = part.split(':');
        if let (Some(d), Some(n)) = (it.next(), it.next()) {
            if let (Ok(d), Ok(n)) = (d.parse::<u64>(), n.parse::<u64>()) {
                OWN_OUT[2 * i].store(d, Ordering::SeqCst);
                OWN_OUT[2 * i + 1].store(n, Ordering::SeqCst);
            }
        }
    }
}

pub fn fd_kind(fd: i64) -> u8 {
    if (0..FD_CACHE as i64).contains(&fd) {
        let k = FDK[fd as usize].load(Ordering::Relaxed);
        if k != FD_UNKNOWN {
            return k;
        }
        let k = classify(fd);
        FDK[fd as usize].store(k, Ordering::Relaxed);
        k
    } else {
        classify(fd)
    }
}

pub fn fd_forget(fd: i64) {
    if (0..FD_CACHE as i64).contains(&fd) {
        FDK[fd as usize].store(FD_UNKNOWN, Ordering::Relaxed);
    }
}

pub fn fd_set_kind(fd: i64, k: u8) {
    if (0..FD_CACHE as i64).contains(&fd) {
        FDK[fd as usize].store(k, Ordering::Relaxed);
    }
}

fn classify(fd: i64) -> u8 {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if sys3(libc::SYS_fstat, fd, std::ptr::addr_of_mut!(st) as i64, 0) < 0 {
        return FD_OUTSIDE;
    }
    let fmt = st.st_mode & libc::S_IFMT;
    if MODE.load(Ordering::Relaxed) == REPLAY {
        for i in 0..2 {
            if OWN_OUT[2 * i].load(Ordering::Relaxed) == st.st_dev
                && OWN_OUT[2 * i + 1].load(Ordering::Relaxed) == st.st_ino
            {
                return FD_OWN;
            }
        }
    }
    if fmt == libc::S_IFREG || fmt == libc::S_IFDIR || fmt == libc::S_IFBLK {
        // /proc and /sys files are the kernel talking, not stored data: record their reads.
        // SAFETY: zeroed statfs is a valid out-buffer.
        let mut sf: libc::statfs = unsafe { std::mem::zeroed() };
        if sys3(libc::SYS_fstatfs, fd, std::ptr::addr_of_mut!(sf) as i64, 0) == 0
            && (sf.f_type == libc::PROC_SUPER_MAGIC || sf.f_type == libc::SYSFS_MAGIC)
        {
            return FD_OUTSIDE;
        }
        FD_FILE
    } else {
        FD_OUTSIDE
    }
}
