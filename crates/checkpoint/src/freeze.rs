//! Freezing a tree: `PTRACE_SEIZE` + `PTRACE_INTERRUPT` of every thread of every process,
//! parents before children, repeated until no new thread or child appears. The [`Frozen`]
//! guard detaches everything when dropped unless the tree was killed.

use std::collections::BTreeSet;

use sys::ptrace::{self, WaitStatus};

use crate::{CheckpointError, PidCtx, Result};

/// A thread stopped under our ptrace.
#[derive(Debug, Clone)]
pub struct FrozenThread {
    pub tid: i32,
    /// A signal the thread was about to receive when it stopped (signal-delivery stop): it is
    /// delivered again on detach and recorded as pending in the image.
    pub stolen: Option<(i32, sys::ptrace::RawSiginfo)>,
}

#[derive(Debug, Clone)]
pub struct FrozenProcess {
    pub pid: i32,
    pub threads: Vec<FrozenThread>,
}

/// The frozen tree, parents before children.
#[derive(Debug, Default)]
pub struct Frozen {
    pub procs: Vec<FrozenProcess>,
    released: bool,
}

/// Why a process cannot be frozen when it is (or has just become) a zombie.
const ZOMBIE: &str = "is a zombie; a tree with unreaped children cannot be checkpointed";

/// True when `tid` has exited: gone, or a zombie or dead task in /proc.
fn has_exited(tid: i32) -> bool {
    sys::proc::stat(tid).map_or(true, |st| st.state == 'Z' || st.state == 'X')
}

fn freeze_thread(pid: i32, tid: i32) -> Result<Option<FrozenThread>> {
    if let Err(e) = ptrace::seize(tid, ptrace::options::SUSPEND_SECCOMP) {
        if e.errno() == Some(libc::ESRCH) {
            return Ok(None); // exited meanwhile
        }
        // A task that exited between the listing and the seize is refused with EPERM (its
        // exit state is set): a thread is gone like with ESRCH; a process is a zombie now.
        if e.errno() == Some(libc::EPERM) && has_exited(tid) {
            if tid != pid {
                return Ok(None);
            }
            return Err(CheckpointError::Unsupported {
                pid,
                what: "process".into(),
                why: ZOMBIE.into(),
            });
        }
        return Err(e).pid(pid);
    }
    ptrace::interrupt(tid).pid(pid)?;
    match ptrace::wait(tid).pid(pid)? {
        WaitStatus::Stopped { event, sig } => {
            let stolen = if event == 0 && sig != libc::SIGTRAP && sig != libc::SIGSTOP {
                Some((sig, ptrace::get_siginfo(tid).pid(pid)?))
            } else {
                None
            };
            if event == 0 && stolen.is_some() {
                // The interrupt is still pending; let it arrive so the thread sits in a
                // regular interrupt stop. The stolen signal is re-delivered at detach.
                ptrace::cont(tid, 0).pid(pid)?;
                match ptrace::wait(tid).pid(pid)? {
                    WaitStatus::Stopped { .. } => {}
                    other => {
                        return Err(CheckpointError::Tree {
                            pid,
                            why: format!("tid {tid} ended while freezing: {other:?}"),
                        })
                    }
                }
            }
            Ok(Some(FrozenThread { tid, stolen }))
        }
        // The process exited between the seize and its stop: its parent, frozen already,
        // cannot reap it, so it stays a zombie: the same refusal as for one found so.
        WaitStatus::Exited(_) | WaitStatus::Signaled(_) if tid == pid => {
            Err(CheckpointError::Unsupported {
                pid,
                what: "process".into(),
                why: ZOMBIE.into(),
            })
        }
        other => Err(CheckpointError::Tree {
            pid,
            why: format!("tid {tid} ended while freezing: {other:?}"),
        }),
    }
}

impl Frozen {
    /// Freezes the tree rooted at `root`.
    pub fn freeze(root: i32) -> Result<Frozen> {
        let mut fz = Frozen::default();
        let mut queue = vec![root];
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        while let Some(pid) = queue.first().copied() {
            queue.remove(0);
            if !seen.insert(pid) {
                continue;
            }
            let st = sys::proc::stat(pid).pid(pid)?;
            if st.state == 'Z' || st.state == 'X' {
                return Err(CheckpointError::Unsupported {
                    pid,
                    what: "process".into(),
                    why: ZOMBIE.into(),
                });
            }
            let mut fp = FrozenProcess {
                pid,
                threads: Vec::new(),
            };
            // Converge: threads may be created until every existing one is stopped.
            loop {
                let tids = sys::proc::tasks(pid).pid(pid)?;
                let mut new = false;
                for tid in tids {
                    if fp.threads.iter().any(|t| t.tid == tid) {
                        continue;
                    }
                    new = true;
                    match freeze_thread(pid, tid) {
                        Ok(Some(t)) => fp.threads.push(t),
                        Ok(None) => {}
                        Err(e) => {
                            fz.procs.push(fp);
                            return Err(e);
                        }
                    }
                }
                if !new {
                    break;
                }
            }
            if fp.threads.first().map(|t| t.tid) != Some(pid) {
                fz.procs.push(fp);
                return Err(CheckpointError::Unsupported {
                    pid,
                    what: "main thread".into(),
                    why: "has exited while other threads run".into(),
                });
            }
            fz.procs.push(fp);
            queue.extend(sys::proc::children(pid).pid(pid)?);
        }
        Ok(fz)
    }

    pub fn thread_count(&self) -> usize {
        self.procs.iter().map(|p| p.threads.len()).sum()
    }

    /// Detaches every thread, re-delivering stolen signals; the tree runs on.
    pub fn detach(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        for p in &self.procs {
            for t in &p.threads {
                let sig = t.stolen.map_or(0, |s| s.0);
                if let Err(e) = ptrace::detach(t.tid, sig) {
                    tracing::warn!("detach tid {}: {e}", t.tid);
                }
            }
        }
    }

    /// Kills every process while it is still stopped and collects every exit as its tracer;
    /// with a `timeout`, then waits until the parents (or init) reaped every pid and returns
    /// those still taken; without one returns at once: every process has exited and released its resources, only the
    /// zombies' pids may still be taken (right for a tree in its own PID namespace, whose
    /// restore asks for the pids inside a new namespace only).
    pub fn kill_and_wait(mut self, timeout: Option<std::time::Duration>) -> Vec<i32> {
        self.released = true;
        for p in &self.procs {
            let _ = sys::pid::kill(p.pid, libc::SIGKILL);
        }
        // Children before parents (the init of a PID namespace waits for every process of its
        // namespace to be reaped, and traced zombies are only released once we collected
        // them), and within a process non-leader threads first.
        for p in self.procs.iter().rev() {
            // Non-leader threads first: a group leader's exit is only reported once every
            // other thread of its group has been reaped.
            for t in p.threads.iter().rev() {
                // Collect the exit notifications we get as tracer so the real parent (or init)
                // can reap the process.
                loop {
                    match ptrace::wait(t.tid) {
                        Ok(WaitStatus::Exited(_)) | Ok(WaitStatus::Signaled(_)) | Err(_) => break,
                        Ok(WaitStatus::Stopped { .. }) => {
                            let _ = ptrace::cont(t.tid, 0);
                        }
                    }
                }
            }
        }
        let Some(timeout) = timeout else {
            return Vec::new();
        };
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left: Vec<i32> = self
                .procs
                .iter()
                .map(|p| p.pid)
                .filter(|&p| sys::pid::pid_exists(p))
                .collect();
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process that exited between the tree's listing and its seize: ptrace refuses it with
    /// EPERM, which must be reported as the zombie it is, not as a permission error.
    #[test]
    fn a_process_that_became_a_zombie_is_refused_as_one() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let root = status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
        if !root {
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = i32::try_from(child.id()).expect("pid");
        // Not reaped: it stays a zombie until the wait below.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = freeze_thread(pid, pid);
        let _ = child.wait();
        match r {
            Err(CheckpointError::Unsupported { pid: p, what, why }) => {
                assert_eq!((p, what.as_str(), why.as_str()), (pid, "process", ZOMBIE));
            }
            other => panic!("seizing zombie {pid}: {other:?}"),
        }
    }
}
