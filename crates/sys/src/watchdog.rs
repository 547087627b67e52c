//! A guard process for a lazy restore: if the restorer dies before every page is in place, the
//! restored tree is SIGKILLed instead of running on zero pages.
//!
//! [`Watchdog::spawn`] forks a child that inherits a copy of every descriptor of the restorer —
//! in particular the userfaultfds of the restored processes, so their registrations outlive
//! the restorer: a fault then waits (nobody answers it) instead of getting a zero page. The
//! child waits on a pipe: one byte `d` ([`Watchdog::disarm`]) makes it exit quietly; end of file
//! (the restorer died, even by SIGKILL) or `k` ([`Watchdog::fire`], or dropping the value)
//! makes it SIGKILL the given pids and process groups, then exit (closing its copies).
//! It ignores SIGINT/SIGHUP/SIGTERM/SIGQUIT and leaves the terminal's process group, so a
//! Ctrl-C that kills the restorer does not kill it first.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

/// The guard child (see the module docs).
#[derive(Debug)]
pub struct Watchdog {
    pid: i32,
    tx: Option<OwnedFd>,
}

impl Watchdog {
    /// Forks the guard; `pids` are SIGKILLed, and `pgids` SIGKILLed as groups, when it fires.
    pub fn spawn(pids: &[i32], pgids: &[i32]) -> Result<Self> {
        let mut targets: Vec<i32> = pids.iter().copied().filter(|&p| p > 0).collect();
        targets.extend(pgids.iter().filter(|&&g| g > 1).map(|&g| -g));
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::last("watchdog pipe2"));
        }
        // SAFETY: pipe2 succeeded; both descriptors are new and owned here only.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fork in a possibly multi-threaded process: the child only makes
        // async-signal-safe calls (signal, setpgid, close, read, kill, _exit) on memory
        // allocated before the fork, and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last("watchdog fork"));
        }
        if pid == 0 {
            guard(rx.as_raw_fd(), tx.as_raw_fd(), &targets);
        }
        drop(rx);
        Ok(Watchdog { pid, tx: Some(tx) })
    }

    /// The guard's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Every page is in place: the guard exits without killing anything.
    pub fn disarm(mut self) -> Result<()> {
        self.send(b'd')
    }

    /// Kills the targets now (and waits for the guard).
    pub fn fire(mut self) -> Result<()> {
        self.send(b'k')
    }

    fn send(&mut self, b: u8) -> Result<()> {
        let Some(tx) = self.tx.take() else {
            return Ok(());
        };
        let buf = [b];
        // SAFETY: writes one byte from a live buffer to a pipe we own.
        let n = unsafe { libc::write(tx.as_raw_fd(), buf.as_ptr().cast(), 1) };
        let err = (n != 1).then(|| Error::last("watchdog write"));
        drop(tx);
        let mut st = 0;
        // SAFETY: waits for our own child; `st` is a valid int.
        while unsafe { libc::waitpid(self.pid, &mut st, 0) } < 0 {
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                break;
            }
        }
        err.map_or(Ok(()), Err)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.send(b'k');
    }
}

/// The child's whole life; never returns.
fn guard(rx: i32, tx: i32, targets: &[i32]) -> ! {
    // SAFETY: only async-signal-safe calls on integers and stack/pre-fork memory.
    unsafe {
        for s in [
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(s, libc::SIG_IGN);
        }
        libc::setpgid(0, 0);
        libc::close(tx);
        for fd in 0..3 {
            libc::close(fd);
        }
        let mut b = [0u8; 1];
        loop {
            let n = libc::read(rx, b.as_mut_ptr().cast(), 1);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n == 1 && b[0] == b'd' {
                libc::_exit(0);
            }
            break;
        }
        for &t in targets {
            libc::kill(t, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child() -> i32 {
        // SAFETY: the child only calls pause() and _exit (async-signal-safe).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: see above.
            unsafe {
                libc::pause();
                libc::_exit(0);
            }
        }
        pid
    }

    fn reaped_by_signal(pid: i32) -> Option<i32> {
        let mut st = 0;
        // SAFETY: waits for our own child.
        let r = unsafe { libc::waitpid(pid, &mut st, 0) };
        (r == pid && libc::WIFSIGNALED(st)).then(|| libc::WTERMSIG(st))
    }

    #[test]
    fn disarmed_guard_kills_nothing_fired_or_dropped_guard_kills() {
        let a = child();
        let w = Watchdog::spawn(&[a], &[]).expect("spawn");
        w.disarm().expect("disarm");
        assert!(crate::pid::pid_exists(a), "a disarmed guard killed {a}");
        let w = Watchdog::spawn(&[a], &[]).expect("spawn");
        w.fire().expect("fire");
        assert_eq!(reaped_by_signal(a), Some(libc::SIGKILL));
        let b = child();
        drop(Watchdog::spawn(&[b], &[]).expect("spawn"));
        assert_eq!(reaped_by_signal(b), Some(libc::SIGKILL));
    }
}
