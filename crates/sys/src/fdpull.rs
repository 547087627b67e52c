//! Pulling a file descriptor out of another process with `pidfd_open` + `pidfd_getfd`.
//!
//! The pulled descriptor shares the open file description with the target's (same offset,
//! same socket, same userfaultfd context); closing ours does not close theirs.

use std::os::fd::{FromRawFd, OwnedFd};

/// Why a descriptor could not be pulled from a target.
#[derive(Debug, thiserror::Error)]
pub enum FdPullError {
    /// `pidfd_open` failed (no such process, or no permission).
    #[error("pid {pid}: pidfd_open failed: {source}")]
    PidfdOpen {
        /// target pid
        pid: i32,
        /// the OS error
        source: std::io::Error,
    },
    /// `pidfd_getfd` failed (fd not open in the target, or ptrace access denied).
    #[error("pid {pid} fd {fd}: pidfd_getfd failed: {source}")]
    GetFd {
        /// target pid
        pid: i32,
        /// descriptor number in the target
        fd: i32,
        /// the OS error
        source: std::io::Error,
    },
}

/// A pidfd for a target process.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Opens a pidfd for `pid`.
    pub fn open(pid: i32) -> Result<Self, FdPullError> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if r < 0 {
            return Err(FdPullError::PidfdOpen {
                pid,
                source: std::io::Error::last_os_error(),
            });
        }
        let raw = i32::try_from(r).map_err(|_| FdPullError::PidfdOpen {
            pid,
            source: std::io::Error::other("fd out of range"),
        })?;
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(Self { fd, pid })
    }

    /// The target pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Duplicates the target's descriptor `remote_fd` into this process (close-on-exec).
    pub fn get_fd(&self, remote_fd: i32) -> Result<OwnedFd, FdPullError> {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_getfd takes a pidfd we own, a target fd number and flags (must be 0);
        // it returns a new fd or -1; no pointers.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), remote_fd, 0) };
        if r < 0 {
            return Err(FdPullError::GetFd {
                pid: self.pid,
                fd: remote_fd,
                source: std::io::Error::last_os_error(),
            });
        }
        let raw = i32::try_from(r).map_err(|_| FdPullError::GetFd {
            pid: self.pid,
            fd: remote_fd,
            source: std::io::Error::other("fd out of range"),
        })?;
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    }
}

/// Pulls descriptor `remote_fd` of process `pid` into this process.
pub fn pull_fd(pid: i32, remote_fd: i32) -> Result<OwnedFd, FdPullError> {
    PidFd::open(pid)?.get_fd(remote_fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn pull_own_fd_shares_description() {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(std::env::temp_dir().join(format!("fdpull-{}", std::process::id())))
            .unwrap();
        f.write_all(b"hello").unwrap();
        let pid = i32::try_from(std::process::id()).unwrap();
        let pulled = match pull_fd(pid, f.as_raw_fd()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipped: pidfd_getfd unavailable: {e}");
                return;
            }
        };
        let mut g = std::fs::File::from(pulled);
        // same open file description: same offset
        assert_eq!(g.stream_position().unwrap(), 5);
        g.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("fdpull-{}", std::process::id())),
        );
    }

    #[test]
    fn missing_fd_is_a_typed_error() {
        let pid = i32::try_from(std::process::id()).unwrap();
        match pull_fd(pid, 99_999) {
            Err(FdPullError::GetFd { fd: 99_999, .. }) => {}
            other => panic!("unexpected: {other:?}"),
        }
    }
}
