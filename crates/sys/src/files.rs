//! Plain fd helpers for the restorer: open by path, seek, place an fd at a chosen number,
//! file status flags.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{Error, Result};

/// `open(path, flags)`; `flags` are raw `O_*` bits (never creates a file).
pub fn open(path: &str, flags: u32) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(path).map_err(|_| Error::invalid(path, "contains NUL"))?;
    let flags = libc::c_int::try_from(flags & !(0o100 | 0o200 | 0o1000)).unwrap_or(0); // no O_CREAT/O_EXCL/O_TRUNC
                                                                                       // SAFETY: c is a NUL-terminated path; open has no other memory arguments.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_NOCTTY) };
    if fd < 0 {
        return Err(Error::last(format!("open {path}")));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the file offset.
pub fn seek(fd: &OwnedFd, pos: u64) -> Result<()> {
    let off =
        libc::off_t::try_from(pos).map_err(|_| Error::invalid("lseek", "offset too large"))?;
    // SAFETY: lseek on a valid fd with integer arguments.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, libc::SEEK_SET) };
    if r < 0 {
        return Err(Error::last(format!("lseek to {pos}")));
    }
    Ok(())
}

/// Sets the file status flags (`F_SETFL`: `O_APPEND`, `O_NONBLOCK`, ...).
pub fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<()> {
    let f = libc::c_int::try_from(flags).unwrap_or(0);
    // SAFETY: fcntl with integer arguments on a valid fd.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, f) };
    if r < 0 {
        return Err(Error::last("fcntl(F_SETFL)"));
    }
    Ok(())
}

/// Duplicates `fd` onto number `target` without `O_CLOEXEC`, so processes forked afterwards
/// inherit it. `target` must be free: an fd already open there is refused (`EBUSY`) instead of
/// being silently replaced, since whoever owns it would later close our duplicate. (A thread of
/// this process opening `target` between the check and the `dup2` is not excluded: callers
/// pick numbers above every fd they hold, see [`dup_above`].)
pub fn dup_to(fd: &OwnedFd, target: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) on an integer fd only reads its flags (EBADF when it is not open).
    if unsafe { libc::fcntl(target, libc::F_GETFD) } >= 0 {
        return Err(Error::from_errno(
            format!("dup2 to fd {target}: already open"),
            libc::EBUSY,
        ));
    }
    // SAFETY: dup2 with two integer fds; the old one is valid and `target` was checked free.
    let r = unsafe { libc::dup2(fd.as_raw_fd(), target) };
    if r < 0 {
        return Err(Error::last(format!("dup2 to fd {target}")));
    }
    // SAFETY: fd `target` was free and now refers to our new duplicate: nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// Duplicates `fd` onto the lowest free number at or above `floor` (close-on-exec), leaving
/// every fd below `floor` alone (unlike [`dup_to`], nothing open is ever replaced).
pub fn dup_above(fd: &OwnedFd, floor: RawFd) -> Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) with a valid fd and an integer floor.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if r < 0 {
        return Err(Error::last(format!("fcntl(F_DUPFD_CLOEXEC, {floor})")));
    }
    // SAFETY: `r` is a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

/// The soft limit on open files, raised to the hard limit if that is needed to reach `need`.
pub fn ensure_nofile(need: u64) -> Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: l is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(Error::last("getrlimit(NOFILE)"));
    }
    if l.rlim_cur >= need {
        return Ok(l.rlim_cur);
    }
    let n = libc::rlimit {
        rlim_cur: need.min(l.rlim_max),
        rlim_max: l.rlim_max,
    };
    // SAFETY: n is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &n) } != 0 {
        return Err(Error::last("setrlimit(NOFILE)"));
    }
    Ok(n.rlim_cur)
}

/// `memfd_create(name, MFD_CLOEXEC)`.
pub fn memfd(name: &str) -> Result<OwnedFd> {
    let c = std::ffi::CString::new(name).map_err(|_| Error::invalid(name, "contains NUL"))?;
    // SAFETY: c is a NUL-terminated name; no other memory arguments.
    let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last(format!("memfd_create {name}")));
    }
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Data ranges `[start, end)` of a file (`SEEK_DATA`/`SEEK_HOLE`), up to `size`.
pub fn data_ranges(fd: &OwnedFd, size: u64) -> Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let p =
            libc::off_t::try_from(pos).map_err(|_| Error::invalid("lseek", "offset too large"))?;
        // SAFETY: lseek on a valid fd with integer arguments.
        let d = unsafe { libc::lseek(fd.as_raw_fd(), p, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(Error::io("lseek(SEEK_DATA)", e));
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd.as_raw_fd(), d, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(Error::last("lseek(SEEK_HOLE)"));
        }
        let (d, h) = (
            u64::try_from(d).unwrap_or(0),
            u64::try_from(h).unwrap_or(0).min(size),
        );
        if h <= d {
            break;
        }
        out.push((d, h));
        pos = h;
    }
    Ok(out)
}

/// `fallocate(fd, 0, offset, len)`: allocates that part of the file's space now (several
/// threads may reserve disjoint parts of one file at once).
pub fn fallocate_range(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    let o = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    let l =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate on a valid fd with integer arguments.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, o, l) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// `fallocate(fd, 0, 0, len)`: allocates the file's space (tmpfs: its pages) now.
pub fn fallocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    let l =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: fallocate on a valid fd with integer arguments.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, l) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file` lives on tmpfs (or another shmem-backed filesystem): `fstatfs` reports
/// `TMPFS_MAGIC`. False when it cannot be told.
pub fn is_tmpfs(file: &std::fs::File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs on a valid fd, writing into a zeroed statfs we own.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if r != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the struct (and it was zeroed before).
    let st = unsafe { st.assume_init() };
    st.f_type == TMPFS_MAGIC
}
