//! Asynchronous signals are delivered at interceptor boundaries, so their position in the
//! thread's sequence of calls is recorded and can be reproduced.
//!
//! When the application installs a handler, the kernel is given our trampoline instead. In
//! record mode the trampoline only marks the signal pending; the next time a thread of the
//! process enters the interceptor, the signal is recorded (`Kind::Signal`) and the application's
//! handler runs there. In replay mode real asynchronous signals are dropped and the recorded
//! ones are delivered when the thread reaches the same place in its sequence of calls.
//! Synchronous signals (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP) go straight to the handler.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use intercept::msg::Kind;
use libc::{c_int, c_void};

use crate::rt::{self, enter, MODE, REPLAY, TLS};

static HANDLER: [AtomicUsize; 65] = [const { AtomicUsize::new(0) }; 65];
static FLAGS: [AtomicU64; 65] = [const { AtomicU64::new(0) }; 65];
static PENDING: AtomicU64 = AtomicU64::new(0);

fn synchronous(sig: c_int) -> bool {
    matches!(
        sig,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGFPE | libc::SIGILL | libc::SIGTRAP | libc::SIGSYS
    )
}

#[inline]
pub fn pending() -> bool {
    PENDING.load(Ordering::Relaxed) != 0
}

extern "C" fn trampoline(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    if !(1..65).contains(&sig) {
        return;
    }
    if synchronous(sig) {
        call_app(sig, info, ctx);
        return;
    }
    if MODE.load(Ordering::Relaxed) == REPLAY {
        return; // replay delivers the recorded signals instead
    }
    PENDING.fetch_or(1 << (sig - 1), Ordering::SeqCst);
}

fn call_app(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    let h = HANDLER[sig as usize].load(Ordering::SeqCst);
    if h == 0 || h == libc::SIG_IGN || h == libc::SIG_DFL {
        return;
    }
    let flags = FLAGS[sig as usize].load(Ordering::SeqCst);
    let saved = TLS.with(|t| t.depth.replace(0));
    if flags & libc::SA_SIGINFO as u64 != 0 {
        // SAFETY: the application registered h as a three-argument SA_SIGINFO handler.
        let f: extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) =
            unsafe { std::mem::transmute(h) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the application registered h as a one-argument handler.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(h) };
        f(sig);
    }
    TLS.with(|t| t.depth.set(saved));
}

fn synth_info(sig: c_int) -> libc::siginfo_t {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    si.si_signo = sig;
    si.si_code = libc::SI_USER;
    si
}

/// Record mode, at a boundary: record and run every pending signal's handler.
pub fn deliver_pending() {
    let bits = PENDING.swap(0, Ordering::SeqCst);
    for sig in 1..65 {
        if bits & (1 << (sig - 1)) == 0 {
            continue;
        }
        if let Some(g) = enter() {
            g.emit(Kind::Signal, 0, sig as u64, 0, 0, &[]);
        }
        let mut si = synth_info(sig);
        call_app(sig, &mut si, std::ptr::null_mut());
    }
}

/// Take the pending signals (record mode, exit boundary).
pub fn take_pending() -> u64 {
    PENDING.swap(0, Ordering::SeqCst)
}

/// Run the application's handler for every signal in `bits` (bit n-1 = signal n).
pub fn run_handlers(bits: u64) {
    for sig in 1..65 {
        if bits & (1 << (sig - 1)) != 0 {
            let mut si = synth_info(sig);
            call_app(sig, &mut si, std::ptr::null_mut());
        }
    }
}

/// Replay mode: the journal says this signal was delivered here.
pub fn deliver_recorded(sig: c_int) {
    if (1..65).contains(&sig) {
        let mut si = synth_info(sig);
        call_app(sig, &mut si, std::ptr::null_mut());
    }
}

type SigactionFn =
    unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;

pub fn real_sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    use std::sync::atomic::AtomicUsize as A;
    static P: A = A::new(0);
    let mut p = P.load(Ordering::Relaxed);
    if p == 0 {
        // SAFETY: dlsym with a NUL-terminated name.
        p = unsafe { libc::dlsym(libc::RTLD_NEXT, c"sigaction".as_ptr()) } as usize;
        P.store(p, Ordering::Relaxed);
    }
    // SAFETY: p is libc's sigaction.
    let f: SigactionFn = unsafe { std::mem::transmute(p) };
    // SAFETY: arguments are the caller's, valid or null as sigaction allows.
    unsafe { f(sig, act, old) }
}

#[no_mangle]
pub unsafe extern "C" fn sigaction(
    sig: c_int,
    act: *const libc::sigaction,
    old: *mut libc::sigaction,
) -> c_int {
    let mode = MODE.load(Ordering::Relaxed);
    if mode == rt::OFF || !(1..65).contains(&sig) || sig == libc::SIGKILL || sig == libc::SIGSTOP {
        return real_sigaction(sig, act, old);
    }
    if sig == libc::SIGSYS && crate::seccomp::active() {
        // Our seccomp handler owns SIGSYS: pretend.
        if !old.is_null() {
            // SAFETY: the caller's out pointer.
            unsafe { std::ptr::write_bytes(old, 0, 1) };
        }
        return 0;
    }
    let prev_h = HANDLER[sig as usize].load(Ordering::SeqCst);
    let prev_f = FLAGS[sig as usize].load(Ordering::SeqCst);
    let r = if act.is_null() {
        real_sigaction(sig, act, old)
    } else {
        // SAFETY: the caller's sigaction.
        let a = unsafe { *act };
        if a.sa_sigaction == libc::SIG_DFL || a.sa_sigaction == libc::SIG_IGN {
            HANDLER[sig as usize].store(0, Ordering::SeqCst);
            real_sigaction(sig, act, old)
        } else {
            HANDLER[sig as usize].store(a.sa_sigaction, Ordering::SeqCst);
            FLAGS[sig as usize].store(a.sa_flags as u64, Ordering::SeqCst);
            let mut ours = a;
            ours.sa_sigaction = trampoline as *const () as usize;
            ours.sa_flags = (a.sa_flags | libc::SA_SIGINFO) & !libc::SA_RESETHAND;
            real_sigaction(sig, &ours, old)
        }
    };
    if r == 0 && !old.is_null() {
        // SAFETY: the kernel just filled the caller's out pointer.
        let o = unsafe { &mut *old };
        if o.sa_sigaction == trampoline as *const () as usize {
            o.sa_sigaction = prev_h;
            o.sa_flags = prev_f as c_int;
        }
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn signal(sig: c_int, h: libc::sighandler_t) -> libc::sighandler_t {
    // SAFETY: sigaction is plain data; zero is valid.
    let mut a: libc::sigaction = unsafe { std::mem::zeroed() };
    a.sa_sigaction = h;
    a.sa_flags = libc::SA_RESTART;
    // SAFETY: zeroed storage for the old action.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: our own wrapper with valid pointers.
    if unsafe { sigaction(sig, &a, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}
