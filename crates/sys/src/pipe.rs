//! Pipes: reading the bytes queued in a pipe without consuming them (`tee(2)` into a private
//! pipe), creating pipes pre-filled with data for restore.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

/// Creates a pipe (`O_CLOEXEC`); returns (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a valid out-array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if r != 0 {
        return Err(Error::last("pipe2"));
    }
    // SAFETY: both fds were just returned by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `F_GETPIPE_SZ`.
pub fn capacity(fd: &OwnedFd) -> Result<u64> {
    // SAFETY: fcntl with an integer command on a valid fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) };
    if r < 0 {
        return Err(Error::last("fcntl(F_GETPIPE_SZ)"));
    }
    Ok(u64::try_from(r).unwrap_or(0))
}

/// Whether the pipe whose write end is `w` still has a read end open anywhere (in any
/// process): `poll` reports `POLLERR` on a write end once every reader is gone.
pub fn has_readers(w: &OwnedFd) -> Result<bool> {
    let mut p = libc::pollfd {
        fd: w.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, timeout 0 (never blocks).
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r < 0 {
        return Err(Error::last("poll(pipe write end)"));
    }
    Ok(p.revents & libc::POLLERR == 0)
}

/// `F_SETPIPE_SZ`; returns the size granted.
pub fn set_capacity(fd: &OwnedFd, size: u64) -> Result<u64> {
    let s = libc::c_int::try_from(size)
        .map_err(|_| Error::invalid("F_SETPIPE_SZ", "size too large"))?;
    // SAFETY: fcntl with integer arguments on a valid fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, s) };
    if r < 0 {
        return Err(Error::last(format!("fcntl(F_SETPIPE_SZ, {size})")));
    }
    Ok(u64::try_from(r).unwrap_or(0))
}

/// Copies the bytes queued in the pipe whose read end is `rd` without consuming them.
pub fn peek(rd: &OwnedFd) -> Result<Vec<u8>> {
    let cap = capacity(rd)?;
    let (tr, tw) = pipe()?;
    if capacity(&tw)? < cap {
        set_capacity(&tw, cap)?;
    }
    let len = usize::try_from(cap).unwrap_or(usize::MAX);
    // SAFETY: tee between two valid pipe fds; no user memory involved.
    let n = unsafe { libc::tee(rd.as_raw_fd(), tw.as_raw_fd(), len, libc::SPLICE_F_NONBLOCK) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EAGAIN) {
            return Ok(Vec::new()); // empty pipe
        }
        return Err(Error::io("tee", e));
    }
    drop(tw);
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    std::fs::File::from(tr)
        .read_to_end(&mut out)
        .map_err(|e| Error::io("read teed pipe data", e))?;
    Ok(out)
}

/// A new pipe holding `data`, with at least `capacity` bytes of buffer (as far as allowed
/// without `CAP_SYS_RESOURCE`). Returns (read end, write end).
pub fn filled(data: &[u8], capacity_wanted: u64) -> Result<(OwnedFd, OwnedFd)> {
    let (r, w) = pipe()?;
    let need = capacity_wanted.max(data.len() as u64);
    if capacity(&w)? < need {
        if let Err(e) = set_capacity(&w, need) {
            if (data.len() as u64) > capacity(&w)? {
                return Err(Error::invalid(
                    format!("pipe with {} queued bytes", data.len()),
                    format!("cannot grow the pipe buffer: {e}"),
                ));
            }
        }
    }
    let mut f = std::fs::File::from(w);
    f.write_all(data).map_err(|e| Error::io("fill pipe", e))?;
    Ok((r, OwnedFd::from(f)))
}

/// Queues `data` into an existing pipe through `w` (a write end, or a FIFO opened read-write),
/// growing its buffer to `capacity_wanted` first when allowed.
pub fn fill(w: &OwnedFd, data: &[u8], capacity_wanted: u64) -> Result<()> {
    let need = capacity_wanted.max(data.len() as u64);
    if capacity(w)? < need {
        let _ = set_capacity(w, need);
    }
    if (data.len() as u64) > capacity(w)? {
        return Err(Error::invalid(
            format!("pipe with {} queued bytes", data.len()),
            "the pipe buffer cannot hold them",
        ));
    }
    let mut done = 0;
    while done < data.len() {
        let part = &data[done..];
        // SAFETY: writing from a live local buffer to a valid fd.
        let n = unsafe { libc::write(w.as_raw_fd(), part.as_ptr().cast(), part.len()) };
        if n <= 0 {
            return Err(Error::last("write queued pipe data"));
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipe_without_readers_is_seen_from_its_write_end() {
        let (r, w) = pipe().unwrap();
        assert!(has_readers(&w).unwrap());
        drop(r);
        assert!(!has_readers(&w).unwrap());
    }
}
