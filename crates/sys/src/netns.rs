//! Private network namespaces for tests and benchmarks: move the calling *thread* into a fresh
//! network namespace with only `lo`, brought up.
//!
//! `unshare(CLONE_NEWNET)` affects only the calling thread; run it in a thread created for the
//! purpose (a test harness may run several tests on one thread).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why a namespace could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// `unshare(CLONE_NEWNET)` failed (needs CAP_SYS_ADMIN).
    #[error("unshare(CLONE_NEWNET): {0}")]
    Unshare(std::io::Error),
    /// Bringing `lo` up failed.
    #[error("bringing lo up in the new network namespace: {0}")]
    LoUp(std::io::Error),
}

/// Moves the calling thread into a new network namespace and brings `lo` up.
pub fn enter_new_netns() -> Result<(), NetnsError> {
    // SAFETY: unshare takes a flag word; no memory arguments.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Unshare(std::io::Error::last_os_error()));
    }
    lo_up()
}

fn lo_up() -> Result<(), NetnsError> {
    // SAFETY: socket() has no memory arguments; the result is checked.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(NetnsError::LoUp(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh fd owned by nobody else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; zeroed is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, c) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = libc::c_char::from_ne_bytes([*c]);
    }
    // SAFETY: SIOCGIFFLAGS reads the name and writes the flags of the valid `ifr`.
    if unsafe {
        libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCGIFFLAGS,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        return Err(NetnsError::LoUp(std::io::Error::last_os_error()));
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags member.
    unsafe {
        ifr.ifr_ifru.ifru_flags |= libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    }
    // SAFETY: SIOCSIFFLAGS reads the valid `ifr`.
    if unsafe {
        libc::ioctl(
            s.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &ifr as *const libc::ifreq,
        )
    } < 0
    {
        return Err(NetnsError::LoUp(std::io::Error::last_os_error()));
    }
    Ok(())
}
