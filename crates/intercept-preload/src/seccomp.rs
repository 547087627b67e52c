//! The seccomp filter: traps the nondeterministic system calls that glibc makes internally
//! (`printf`→`write`, `fgets`→`read`, `system`→`wait4`) or that a program makes through raw
//! `syscall()`, and refuses io_uring.
//!
//! Trapping every `read` would also trap the dynamic loader of an `execve`d image before this
//! library is loaded there (the filter survives exec, the SIGSYS handler does not), so the filter
//! traps only calls whose instruction pointer lies in **libc's text** (found in
//! `/proc/self/maps`); our own syscalls go through the gate in this library and are never
//! trapped. io_uring_setup/enter/register are trapped from anywhere. Each `execve` stacks one
//! more filter for the new libc. The program tests the number first and allows every other
//! number on the number alone (kernel action cache); it is built in `intercept::filter`, where a
//! unit test runs it.

use std::sync::atomic::{AtomicBool, Ordering};

use libc::{c_int, c_void, sock_filter};

use crate::hooks;
use crate::rt::{self, sys};

static ACTIVE: AtomicBool = AtomicBool::new(false);

pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// System calls trapped when made from libc's text.
const TRAPPED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_getrandom,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_select,
    libc::SYS_pselect6,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_wait4,
    libc::SYS_close,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_time,
];

/// Refused from anywhere.
const REFUSED: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

fn libc_text() -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (range, perms) = (f.next()?, f.next()?);
        let path = l.split_whitespace().nth(5).unwrap_or("");
        if perms.starts_with("r-x")
            && path
                .rsplit('/')
                .next()
                .is_some_and(|n| n.starts_with("libc.so"))
        {
            let (a, b) = range.split_once('-')?;
            return Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ));
        }
    }
    None
}

pub fn install() {
    rt::TLS.with(|t| t.depth.set(1));
    let done = install_inner();
    rt::TLS.with(|t| t.depth.set(0));
    if let Err(why) = done {
        let m = format!("understudy: seccomp filter not installed ({why}); calls made inside glibc are not recorded\n");
        rt::say(&[m.as_bytes()]);
    }
}

fn install_inner() -> Result<(), String> {
    let (lo, hi) = libc_text().ok_or("libc text not found in /proc/self/maps")?;
    let mut f = program(lo, hi)?;
    install_program(&mut f)
}

/// The filter program for libc text at `[lo, hi)` (built and tested in `intercept::filter`).
fn program(lo: u64, hi: u64) -> Result<Vec<sock_filter>, String> {
    let nrs = |v: &[i64]| -> Vec<u32> { v.iter().map(|&n| n as u32).collect() };
    let p = intercept::filter::program(lo, hi, rt::gate_ip(), &nrs(TRAPPED), &nrs(REFUSED))?;
    Ok(p.into_iter()
        .map(|i| sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect())
}

fn install_program(f: &mut [sock_filter]) -> Result<(), String> {
    let prog = libc::sock_fprog {
        len: f.len() as u16,
        filter: f.as_mut_ptr(),
    };
    // SAFETY: sigaction is plain data; zero is valid.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigsys as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    if crate::signals::real_sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
        return Err("sigaction(SIGSYS) failed".into());
    }
    if sys(libc::SYS_geteuid, 0, 0, 0, 0, 0, 0) != 0 {
        sys(
            libc::SYS_prctl,
            i64::from(libc::PR_SET_NO_NEW_PRIVS),
            1,
            0,
            0,
            0,
            0,
        );
    }
    let r = sys(
        libc::SYS_seccomp,
        i64::from(libc::SECCOMP_SET_MODE_FILTER),
        libc::SECCOMP_FILTER_FLAG_TSYNC as i64,
        std::ptr::addr_of!(prog) as i64,
        0,
        0,
        0,
    );
    if r != 0 {
        return Err(format!("seccomp() returned {r}"));
    }
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(())
}

extern "C" fn on_sigsys(_sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
    // SAFETY: for SIGSYS from seccomp the kernel fills si_syscall at offset 24 of siginfo_t,
    // and ctx is this thread's ucontext_t, whose registers we read and update.
    let (nr, g) = unsafe {
        let nr = *(info as *const u8).add(24).cast::<c_int>();
        let uc = &mut *(ctx as *mut libc::ucontext_t);
        (i64::from(nr), &mut uc.uc_mcontext.gregs)
    };
    let a = [
        g[libc::REG_RDI as usize],
        g[libc::REG_RSI as usize],
        g[libc::REG_RDX as usize],
        g[libc::REG_R10 as usize],
        g[libc::REG_R8 as usize],
        g[libc::REG_R9 as usize],
    ];
    let saved = rt::errno();
    let r = dispatch(nr, a);
    rt::set_errno(saved);
    g[libc::REG_RAX as usize] = r;
}

fn dispatch(nr: i64, a: [i64; 6]) -> i64 {
    let pass = || sys(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    match nr {
        libc::SYS_read => hooks::core_read(a[0], a[1] as *mut u8, a[2] as usize),
        libc::SYS_write => hooks::core_write(a[0], a[1] as *const u8, a[2] as usize),
        libc::SYS_readv => hooks::core_readv(a[0], a[1] as *const libc::iovec, a[2]),
        libc::SYS_writev => hooks::core_writev(a[0], a[1] as *const libc::iovec, a[2]),
        libc::SYS_recvfrom => hooks::core_recvfrom(
            a[0],
            a[1] as *mut u8,
            a[2] as usize,
            a[3],
            a[4] as *mut libc::sockaddr,
            a[5] as *mut libc::socklen_t,
        ),
        libc::SYS_sendto => hooks::core_sendto(
            a[0],
            a[1] as *const u8,
            a[2] as usize,
            a[3],
            a[4] as *const libc::sockaddr,
            a[5],
        ),
        libc::SYS_recvmsg => hooks::core_recvmsg(a[0], a[1] as *mut libc::msghdr, a[2]),
        libc::SYS_sendmsg => hooks::core_sendmsg(a[0], a[1] as *const libc::msghdr, a[2]),
        libc::SYS_getrandom => hooks::core_getrandom(a[0] as *mut u8, a[1] as usize, a[2]),
        libc::SYS_poll | libc::SYS_ppoll => {
            hooks::core_poll(a[0] as *mut libc::pollfd, a[1] as u64, pass)
        }
        libc::SYS_select | libc::SYS_pselect6 => hooks::core_select(
            a[0],
            a[1] as *mut libc::fd_set,
            a[2] as *mut libc::fd_set,
            a[3] as *mut libc::fd_set,
            pass,
        ),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => {
            hooks::core_epoll(a[0], a[1] as *mut libc::epoll_event, a[2], pass)
        }
        libc::SYS_accept => hooks::core_accept(
            a[0],
            a[1] as *mut libc::sockaddr,
            a[2] as *mut libc::socklen_t,
            0,
        ),
        libc::SYS_accept4 => hooks::core_accept(
            a[0],
            a[1] as *mut libc::sockaddr,
            a[2] as *mut libc::socklen_t,
            a[3],
        ),
        libc::SYS_connect => hooks::core_connect(a[0], a[1] as *const libc::sockaddr, a[2]),
        libc::SYS_wait4 => {
            hooks::core_wait4(a[0], a[1] as *mut c_int, a[2], a[3] as *mut libc::rusage)
        }
        libc::SYS_close => hooks::core_close(a[0]),
        libc::SYS_clock_gettime => {
            // SAFETY: our clock_gettime wrapper with the trapped call's arguments.
            i64::from(unsafe {
                hooks::clock_gettime(a[0] as libc::clockid_t, a[1] as *mut libc::timespec)
            })
        }
        libc::SYS_gettimeofday => {
            // SAFETY: our wrapper with the trapped call's arguments.
            i64::from(unsafe {
                hooks::gettimeofday(a[0] as *mut libc::timeval, a[1] as *mut c_void)
            })
        }
        libc::SYS_time => {
            // SAFETY: our wrapper with the trapped call's arguments.
            unsafe { hooks::time(a[0] as *mut libc::time_t) }
        }
        libc::SYS_io_uring_setup | libc::SYS_io_uring_enter | libc::SYS_io_uring_register => {
            refuse_io_uring();
            -i64::from(libc::ENOSYS)
        }
        _ => pass(),
    }
}

fn refuse_io_uring() {
    static SAID: AtomicBool = AtomicBool::new(false);
    if !SAID.swap(true, Ordering::SeqCst) {
        let m = format!(
            "understudy: pid {}: io_uring refused: its submissions bypass the interceptor, so they could be neither recorded nor replayed (io_uring_setup returns ENOSYS)\n",
            rt::REAL_PID.load(Ordering::Relaxed)
        );
        rt::say(&[m.as_bytes()]);
    }
}
