//! A guard process for a lazy restore: if the restorer dies before every page is in place, the
//! restored tree is SIGKILLed instead of running on zero pages.
//!
//! [`Watchdog::spawn`] forks a child that keeps a copy of the descriptors it is given — the
//! userfaultfds of the restored processes, so their registrations outlive the restorer: a
//! fault then waits (nobody answers it) instead of getting a zero page — and closes every
//! other one (it must not hold the tree's pipes or sockets open: a reader would miss an end of
//! file, a peer a FIN). The
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
    /// Forks the guard, which keeps copies of the descriptors `keep` only; `pids` are
    /// SIGKILLed, and `pgids` SIGKILLed as groups, when it fires.
    pub fn spawn(pids: &[i32], pgids: &[i32], keep: &[i32]) -> Result<Self> {
        let mut targets: Vec<i32> = pids.iter().copied().filter(|&p| p > 0).collect();
        targets.extend(pgids.iter().filter(|&&g| g > 1).map(|&g| -g));
        let mut fds = [0i32; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(Error::last("watchdog pipe2"));
        }
        // SAFETY: pipe2 succeeded; both descriptors are new and owned here only.
        let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut keep: Vec<u32> = keep
            .iter()
            .chain(std::iter::once(&rx.as_raw_fd()))
            .filter_map(|&f| u32::try_from(f).ok())
            .collect();
        keep.sort_unstable();
        keep.dedup();
        // SAFETY: fork in a possibly multi-threaded process: the child only makes
        // async-signal-safe calls (signal, setpgid, close, read, kill, _exit) on memory
        // allocated before the fork, and never returns into Rust code.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(Error::last("watchdog fork"));
        }
        if pid == 0 {
            guard(rx.as_raw_fd(), &keep, &targets);
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

/// The child's whole life; never returns. `keep` is sorted and holds `rx`.
fn guard(rx: i32, keep: &[u32], targets: &[i32]) -> ! {
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
        // Close everything but `keep` (sorted; `rx` is in it, the pipe's write end is not).
        let mut from = 0u32;
        for &k in keep {
            if k > from {
                libc::syscall(libc::SYS_close_range, from, k - 1, 0);
            }
            from = k + 1;
        }
        libc::syscall(libc::SYS_close_range, from, u32::MAX, 0);
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
    fn guard_keeps_only_the_descriptors_it_is_given() {
        let (r1, w1) = crate::pipe::pipe().expect("pipe");
        let (r2, w2) = crate::pipe::pipe().expect("pipe");
        let a = child();
        let g = Watchdog::spawn(&[a], &[], &[w1.as_raw_fd()]).expect("spawn");
        // (the guard closes the others right after the fork: wait for that, bounded; a listing
        // of /proc/PID/fd is not atomic, so one taken during the closing can show low fds
        // already closed next to high ones gone: wait for the whole set to settle)
        let list = || -> Vec<String> {
            std::fs::read_dir(format!("/proc/{}/fd", g.pid()))
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut fds = list();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if !fds.contains(&w2.as_raw_fd().to_string()) && fds.len() <= 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
            fds = list();
        }
        assert!(fds.contains(&w1.as_raw_fd().to_string()), "{fds:?}");
        assert!(!fds.contains(&w2.as_raw_fd().to_string()), "{fds:?}");
        assert_eq!(fds.len(), 2, "kept w1 and its pipe only: {fds:?}");
        drop((r1, r2, w2));
        g.fire().expect("fire");
        assert_eq!(reaped_by_signal(a), Some(libc::SIGKILL));
        drop(w1);
    }

    #[test]
    fn disarmed_guard_kills_nothing_fired_or_dropped_guard_kills() {
        let a = child();
        let w = Watchdog::spawn(&[a], &[], &[]).expect("spawn");
        w.disarm().expect("disarm");
        assert!(crate::pid::pid_exists(a), "a disarmed guard killed {a}");
        let w = Watchdog::spawn(&[a], &[], &[]).expect("spawn");
        w.fire().expect("fire");
        assert_eq!(reaped_by_signal(a), Some(libc::SIGKILL));
        let b = child();
        drop(Watchdog::spawn(&[b], &[], &[]).expect("spawn"));
        assert_eq!(reaped_by_signal(b), Some(libc::SIGKILL));
    }
}
