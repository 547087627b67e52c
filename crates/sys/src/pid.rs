//! Pids and pidfds: `pidfd_open`, `pidfd_getfd`, `clone3` with `set_tid` (stub processes for
//! restore), `kcmp`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::{Error, Result};

/// `pidfd_open(pid, 0)`.
pub fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(Error::last(format!("pidfd_open({pid})")));
    }
    let fd = RawFd::try_from(r).map_err(|_| Error::invalid("pidfd_open", "fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_getfd(pidfd, fd, 0)`: a duplicate of another process's fd (same open file description).
pub fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if r < 0 {
        return Err(Error::last(format!("pidfd_getfd(fd {fd})")));
    }
    let fd = RawFd::try_from(r).map_err(|_| Error::invalid("pidfd_getfd", "fd out of range"))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `kcmp(KCMP_FILE)`: whether fd `fd1` of `pid1` and `fd2` of `pid2` share an open file
/// description.
pub fn same_file(pid1: i32, fd1: i32, pid2: i32, fd2: i32) -> Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, KCMP_FILE, fd1, fd2) };
    if r < 0 {
        return Err(Error::last(format!(
            "kcmp(pid {pid1} fd {fd1}, pid {pid2} fd {fd2})"
        )));
    }
    Ok(r == 0)
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `struct clone_args` as bytes, for injecting `clone3` into a tracee: `set_tid_addr` is the
/// remote address of the `pid_t` array.
pub fn clone_args_bytes(
    flags: u64,
    exit_signal: u64,
    set_tid_addr: u64,
    set_tid_size: u64,
) -> Vec<u8> {
    let a = [
        flags,
        0,
        0,
        0,
        exit_signal,
        0,
        0,
        0,
        set_tid_addr,
        set_tid_size,
        0,
    ];
    a.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

/// Size of `struct clone_args` (version 2, with cgroup).
pub const CLONE_ARGS_SIZE: u64 = 88;

/// Creates a stub process with `clone3(set_tid)` (fork-like, no shared memory) whose pid is
/// `set_tid[0]` in the innermost namespace (outer levels follow). The stub blocks in `pause()`
/// forever; the restorer seizes it and rebuilds it. `flags` may add `CLONE_NEWPID`.
/// A taken pid gives an error with `EEXIST`.
pub fn spawn_stub(set_tid: &[i32], flags: u64) -> Result<i32> {
    let args = CloneArgs {
        flags,
        exit_signal: u64::try_from(libc::SIGCHLD).unwrap_or(17),
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: set_tid.len() as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM duplicates this process like fork(); `args` and `set_tid`
    // live across the call. The child only calls async-signal-safe pause() in a loop and never
    // returns into Rust code that could touch locks held by other threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r == 0 {
        loop {
            // SAFETY: pause() has no preconditions.
            unsafe { libc::pause() };
        }
    }
    if r < 0 {
        let e = std::io::Error::last_os_error();
        let what = if e.raw_os_error() == Some(libc::EEXIST) {
            format!("clone3 with pid {:?}: the pid is already taken", set_tid)
        } else {
            format!("clone3 with pid {:?}", set_tid)
        };
        return Err(Error::io(what, e));
    }
    i32::try_from(r).map_err(|_| Error::invalid("clone3", "pid out of range"))
}

/// Sends a signal to a process.
pub fn kill(pid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::kill(pid, sig) };
    if r != 0 {
        return Err(Error::last(format!("kill({pid}, {sig})")));
    }
    Ok(())
}

/// Whether `/proc/PID` exists (the pid is taken: running or zombie).
pub fn pid_exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends a signal to one thread (`tgkill`).
pub fn tgkill(pid: i32, tid: i32, sig: i32) -> Result<()> {
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) };
    if r != 0 {
        return Err(Error::last(format!("tgkill({pid}, {tid}, {sig})")));
    }
    Ok(())
}
