//! Seccomp filters read from a stopped child and re-installed in order in another; POSIX
//! timers listed from /proc.

mod common;

use sys::seccomp::{self, Filter, Insn};
use sys::timers::{self, Notify};

const NR_GETPPID: u32 = 110;
const NR_GETPGRP: u32 = 111;

/// `if (nr == NR) return ERRNO(errno); return ALLOW;`
fn deny(nr: u32, errno: u32, flags: u64) -> Filter {
    Filter {
        insns: vec![
            Insn {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            }, // ld [nr]
            Insn {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: nr,
            }, // jeq #nr
            Insn {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x0005_0000 | errno,
            }, // ret ERRNO
            Insn {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }, // ret ALLOW
        ],
        flags,
    }
}

fn raw_errno(nr: i64) -> u8 {
    // SAFETY: getppid/getpgrp take no arguments.
    let r = unsafe { libc::syscall(nr) };
    if r < 0 {
        // SAFETY: reading errno of this thread.
        u8::try_from(unsafe { *libc::__errno_location() }).unwrap_or(255)
    } else {
        0
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn filters_read_in_order_and_reinstalled() {
    if !common::is_root() {
        eprintln!("skipped: needs root (PTRACE_SECCOMP_GET_FILTER needs CAP_SYS_ADMIN)");
        return;
    }
    let installed = vec![
        deny(NR_GETPPID, 1, 0),
        deny(NR_GETPGRP, 13, 2 /* SECCOMP_FILTER_FLAG_LOG */),
    ];
    let (ready_r, ready_w) = common::pipe();
    let (hold_r, hold_w) = common::pipe();
    let inst = installed.clone();
    let child = common::fork_child(move || {
        let ok = seccomp::install(&inst, true).is_ok();
        common::write_byte(ready_w, u8::from(ok));
        common::read_byte(hold_r);
    });
    let _g = common::ChildGuard(child);
    assert_eq!(
        common::read_byte(ready_r),
        Some(1),
        "child could not install its filters"
    );
    let st = seccomp::status(child).unwrap();
    assert_eq!((st.mode, st.filters, st.no_new_privs), (2, 2, true));
    sys::ptrace::seize(child, 0).unwrap();
    sys::ptrace::interrupt(child).unwrap();
    sys::ptrace::wait_stop(child).unwrap();
    let got = seccomp::filters(child);
    sys::ptrace::detach(child, 0).unwrap();
    let got = got.unwrap();
    assert_eq!(
        got, installed,
        "filters come back oldest first, with their LOG flag"
    );

    // a fresh child gets them back in that order and behaves the same
    let (res_r, res_w) = common::pipe();
    let again = got.clone();
    let child2 = common::fork_child(move || {
        if seccomp::install(&again, st.no_new_privs).is_err() {
            common::write_byte(res_w, 254);
            return;
        }
        common::write_byte(res_w, raw_errno(libc::SYS_getppid));
        common::write_byte(res_w, raw_errno(libc::SYS_getpgrp));
        common::write_byte(res_w, raw_errno(libc::SYS_getpid));
    });
    let _g2 = common::ChildGuard(child2);
    let r: Vec<Option<u8>> = (0..3).map(|_| common::read_byte(res_r)).collect();
    assert_eq!(
        r,
        vec![Some(1), Some(13), Some(0)],
        "getppid EPERM, getpgrp EACCES, getpid allowed"
    );
    common::write_byte(hold_w, b'x');
    for fd in [ready_r, ready_w, hold_r, hold_w, res_r, res_w] {
        // SAFETY: closing pipe ends we own.
        unsafe { libc::close(fd) };
    }
}

#[test]
fn filters_of_unfiltered_process_are_empty() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (hold_r, hold_w) = common::pipe();
    let child = common::fork_child(move || {
        common::read_byte(hold_r);
    });
    let _g = common::ChildGuard(child);
    sys::ptrace::seize(child, 0).unwrap();
    sys::ptrace::interrupt(child).unwrap();
    sys::ptrace::wait_stop(child).unwrap();
    let got = seccomp::filters(child);
    sys::ptrace::detach(child, 0).unwrap();
    match got {
        Ok(v) => assert!(v.is_empty()),
        // some kernels answer EINVAL when the task has no seccomp at all
        Err(e) => assert!(e.to_string().contains("PTRACE_SECCOMP_GET_FILTER"), "{e}"),
    }
    common::write_byte(hold_w, b'x');
    // SAFETY: closing pipe ends we own.
    unsafe {
        libc::close(hold_r);
        libc::close(hold_w);
    }
}

#[test]
fn posix_timers_listed() {
    let me = i32::try_from(std::process::id()).unwrap();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut ids = Vec::new();
    for (clock, notify, signo, value) in [
        (
            libc::CLOCK_MONOTONIC,
            libc::SIGEV_SIGNAL,
            libc::SIGUSR1,
            0x1234u64,
        ),
        (
            libc::CLOCK_REALTIME,
            libc::SIGEV_THREAD_ID,
            libc::SIGUSR2,
            0,
        ),
        (libc::CLOCK_BOOTTIME, libc::SIGEV_NONE, 0, 0),
    ] {
        // SAFETY: sigevent is plain old data; zeroed is valid.
        let mut se: libc::sigevent = unsafe { std::mem::zeroed() };
        se.sigev_notify = notify;
        se.sigev_signo = signo;
        se.sigev_value = libc::sigval {
            sival_ptr: value as *mut libc::c_void,
        };
        se.sigev_notify_thread_id = tid;
        let mut t: libc::timer_t = std::ptr::null_mut();
        // SAFETY: valid sigevent and out pointer.
        assert_eq!(unsafe { libc::timer_create(clock, &mut se, &mut t) }, 0);
        ids.push(t);
    }
    let v = timers::timers(me).unwrap();
    let find = |k: usize| {
        let id = i32::try_from(ids[k] as usize).unwrap();
        *v.iter()
            .find(|t| t.id == id)
            .unwrap_or_else(|| panic!("timer {id} not listed in {v:?}"))
    };
    let a = find(0);
    assert_eq!(
        (a.signo, a.value, a.notify, a.clock),
        (libc::SIGUSR1, 0x1234, Notify::Signal, libc::CLOCK_MONOTONIC)
    );
    let b = find(1);
    assert_eq!(
        (b.signo, b.notify, b.clock),
        (libc::SIGUSR2, Notify::Thread { tid }, libc::CLOCK_REALTIME)
    );
    let c = find(2);
    assert_eq!((c.notify, c.clock), (Notify::None, libc::CLOCK_BOOTTIME));
    for t in ids {
        // SAFETY: deleting timers we created.
        unsafe { libc::timer_delete(t) };
    }
}
