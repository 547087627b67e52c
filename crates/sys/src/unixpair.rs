//! Connected pairs of unix sockets for the restorer.

use std::os::fd::{FromRawFd, OwnedFd};

use crate::{Error, Result};

/// `socketpair(AF_UNIX, sock_type | SOCK_CLOEXEC [| SOCK_NONBLOCK])`.
pub fn socketpair(sock_type: i32, nonblock: bool) -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1i32; 2];
    let mut ty = sock_type | libc::SOCK_CLOEXEC;
    if nonblock {
        ty |= libc::SOCK_NONBLOCK;
    }
    // SAFETY: writes two ints into the live array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty, 0, fds.as_mut_ptr()) };
    if r < 0 {
        return Err(Error::last(format!(
            "socketpair(AF_UNIX, type {sock_type})"
        )));
    }
    // SAFETY: two fresh fds just returned by the kernel, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
