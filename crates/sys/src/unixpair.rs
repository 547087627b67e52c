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

/// A listening unix socket of `sock_type` bound to `name` (a path, replacing a stale socket
/// file there, or `@name` in the abstract namespace), listening with `backlog`; the socket file
/// gets `mode` when given.
pub fn listen(sock_type: i32, name: &str, backlog: u32, mode: Option<u32>) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: socket() has no memory arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_UNIX, sock_type | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(Error::last(format!("socket(AF_UNIX, type {sock_type})")));
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).unwrap_or(1);
    let (bytes, abstract_) = match name.strip_prefix('@') {
        Some(a) => (a.as_bytes(), true),
        None => (name.as_bytes(), false),
    };
    let off = usize::from(abstract_);
    if bytes.len() + off >= sa.sun_path.len() {
        return Err(Error::invalid(
            "unix socket name",
            format!("{name} is too long"),
        ));
    }
    for (i, b) in bytes.iter().enumerate() {
        sa.sun_path[i + off] = libc::c_char::from_ne_bytes([*b]);
    }
    let path_off = std::mem::size_of::<libc::sa_family_t>();
    let len = if abstract_ {
        path_off + 1 + bytes.len()
    } else {
        let _ = std::fs::remove_file(name);
        path_off + bytes.len() + 1
    };
    let len = libc::socklen_t::try_from(len).unwrap_or(0);
    // SAFETY: `sa` is a valid sockaddr_un of at least `len` bytes.
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_un).cast(),
            len,
        )
    } < 0
    {
        return Err(Error::last(format!("bind to {name}")));
    }
    if let (Some(m), false) = (mode, abstract_) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(name, std::fs::Permissions::from_mode(m & 0o7777))
            .map_err(|e| Error::io(format!("chmod {name}"), e))?;
    }
    let bl = i32::try_from(backlog).unwrap_or(i32::MAX);
    // SAFETY: listen on our bound socket; no memory arguments.
    if unsafe { libc::listen(fd.as_raw_fd(), bl) } < 0 {
        return Err(Error::last(format!("listen on {name}")));
    }
    Ok(fd)
}
