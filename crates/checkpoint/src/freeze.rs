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
    /// Processes of the tree that have exited and wait for their (frozen) parent to reap
    /// them: not seized (there is nothing to stop), recorded from /proc.
    pub zombies: Vec<i32>,
    released: bool,
}

/// True when `tid` has exited: gone, or a zombie or dead task in /proc.
fn has_exited(tid: i32) -> bool {
    sys::proc::stat(tid).map_or(true, |st| st.state == 'Z' || st.state == 'X')
}

/// What seizing one thread gave.
#[derive(Debug)]
enum Seized {
    Thread(FrozenThread),
    /// The thread exited meanwhile.
    Gone,
    /// The thread is its process's main thread and has exited: the process is a zombie now
    /// (or its main thread exited while other threads run: the caller tells them apart).
    Exited,
}

fn freeze_thread(pid: i32, tid: i32) -> Result<Seized> {
    if let Err(e) = ptrace::seize(tid, ptrace::options::SUSPEND_SECCOMP) {
        if e.errno() == Some(libc::ESRCH) {
            return Ok(Seized::Gone); // exited meanwhile
        }
        // A task that exited between the listing and the seize is refused with EPERM (its
        // exit state is set): a thread is gone like with ESRCH; a process is a zombie now.
        if e.errno() == Some(libc::EPERM) && has_exited(tid) {
            return Ok(if tid == pid {
                Seized::Exited
            } else {
                Seized::Gone
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
            Ok(Seized::Thread(FrozenThread { tid, stolen }))
        }
        // The process exited between the seize and its stop. We collected its exit as its
        // tracer, which ends the trace and hands it to its real parent: frozen already, that
        // parent cannot reap it, so it stays a zombie with its wait status in /proc.
        WaitStatus::Exited(_) | WaitStatus::Signaled(_) if tid == pid => Ok(Seized::Exited),
        other => Err(CheckpointError::Tree {
            pid,
            why: format!("tid {tid} ended while freezing: {other:?}"),
        }),
    }
}

/// The refusal of a process whose main thread exited while other threads still run.
fn leader_gone(pid: i32) -> CheckpointError {
    CheckpointError::Unsupported {
        pid,
        what: "main thread".into(),
        why: "has exited while other threads run".into(),
    }
}

impl Frozen {
    /// Freezes the tree rooted at `root`.
    pub fn freeze(root: i32) -> Result<Frozen> {
        let mut fz = Frozen::default();
        let t0 = std::time::Instant::now();
        let mut queue = vec![root];
        let mut seen: BTreeSet<i32> = BTreeSet::new();
        while let Some(pid) = queue.first().copied() {
            queue.remove(0);
            if !seen.insert(pid) {
                continue;
            }
            // Every pid but the root was listed as a child of a frozen parent, which cannot
            // reap it any more: only a child reaping itself (its parent ignores SIGCHLD) can
            // vanish now, and is left out.
            let st = match sys::proc::stat(pid) {
                Ok(st) => st,
                Err(_) if pid != root && !sys::pid::pid_exists(pid) => continue,
                Err(e) => return Err(e).pid(pid),
            };
            if st.state == 'X' && pid != root {
                continue; // being released (self-reaping)
            }
            if st.state == 'Z' || st.state == 'X' {
                fz.add_zombie(root, pid)?;
                continue;
            }
            let mut fp = FrozenProcess {
                pid,
                threads: Vec::new(),
            };
            // Converge: threads may be created until every existing one is stopped.
            let mut exited = false;
            loop {
                let tids = match sys::proc::tasks(pid) {
                    Ok(t) => t,
                    Err(_) if exited => Vec::new(),
                    Err(e) => {
                        fz.procs.push(fp);
                        return Err(e).pid(pid);
                    }
                };
                let mut new = false;
                for tid in tids {
                    if fp.threads.iter().any(|t| t.tid == tid) || (exited && tid == pid) {
                        continue;
                    }
                    new = true;
                    match freeze_thread(pid, tid) {
                        Ok(Seized::Thread(t)) => fp.threads.push(t),
                        Ok(Seized::Gone) => {}
                        Ok(Seized::Exited) => exited = true,
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
            if exited && fp.threads.is_empty() {
                // It exited between the listing and its seize (or stop): a zombie now.
                fz.add_zombie(root, pid)?;
                continue;
            }
            if fp.threads.first().map(|t| t.tid) != Some(pid) {
                fz.procs.push(fp);
                return Err(leader_gone(pid));
            }
            tracing::debug!(
                "pid {pid}: {} threads frozen at {:?}",
                fp.threads.len(),
                t0.elapsed()
            );
            fz.procs.push(fp);
            queue.extend(sys::proc::children(pid).pid(pid)?);
        }
        Ok(fz)
    }

    /// Records `pid`, found exited, as a zombie of the tree; refuses a root that exited and a
    /// main thread that exited while other threads run (`/proc` shows such a leader as a
    /// zombie too).
    fn add_zombie(&mut self, root: i32, pid: i32) -> Result<()> {
        if sys::proc::tasks(pid).is_ok_and(|t| t.iter().any(|&tid| tid != pid)) {
            return Err(leader_gone(pid));
        }
        if pid == root {
            return Err(CheckpointError::Unsupported {
                pid,
                what: "process".into(),
                why: "is a zombie; the root of a tree must be running".into(),
            });
        }
        self.zombies.push(pid);
        Ok(())
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
            // (zombies of the tree are reaped by whoever inherits them when their parent dies)
            let left: Vec<i32> = self
                .procs
                .iter()
                .map(|p| p.pid)
                .chain(self.zombies.iter().copied())
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

    fn is_root() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    }

    fn wait_exited(pid: i32) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !has_exited(pid) {
            assert!(std::time::Instant::now() < deadline, "{pid} did not exit");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// A process that exited between the tree's listing and its seize: ptrace refuses it with
    /// EPERM, which must be reported as the exit it is, not as a permission error.
    #[test]
    fn a_process_that_became_a_zombie_is_reported_as_exited() {
        if !is_root() {
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = i32::try_from(child.id()).expect("pid");
        // Not reaped: it stays a zombie until the wait below.
        wait_exited(pid);
        let r = freeze_thread(pid, pid);
        let _ = child.wait();
        assert!(
            matches!(r, Ok(Seized::Exited)),
            "seizing zombie {pid}: {r:?}"
        );
    }

    /// A tree whose process keeps an exited child unreaped freezes, with the child recorded
    /// as a zombie whose wait status /proc gives; a zombie root is refused.
    #[test]
    fn a_tree_with_an_unreaped_child_freezes_with_it_as_a_zombie() {
        if !is_root() {
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        // The subshell exits with 7; `exec sleep` keeps its pid and never reaps it.
        let mut parent = std::process::Command::new("sh")
            .args(["-c", "(exit 7) & exec sleep 600"])
            .spawn()
            .expect("spawn sh");
        let ppid = i32::try_from(parent.id()).expect("pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let zpid = loop {
            let exec_done = sys::proc::status(ppid).is_ok_and(|s| s.name == "sleep");
            let kids = sys::proc::children(ppid).unwrap_or_default();
            if let (true, [z]) = (exec_done, kids.as_slice()) {
                if has_exited(*z) {
                    break *z;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no zombie under {ppid}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let fz = Frozen::freeze(ppid).map(|f| (f.procs.len(), f.zombies.clone()));
        let root_refused = Frozen::freeze(zpid).map(|f| f.zombies.clone());
        let st = sys::proc::stat(zpid);
        let _ = parent.kill();
        let _ = parent.wait();
        assert_eq!(fz.expect("freeze"), (1, vec![zpid]));
        assert_eq!(
            st.expect("stat").exit_code,
            7 << 8,
            "wait status of zombie {zpid}"
        );
        match root_refused {
            Err(CheckpointError::Unsupported { pid, why, .. }) => {
                assert_eq!(pid, zpid);
                assert!(why.contains("root of a tree must be running"), "{why}");
            }
            other => panic!("freezing zombie root {zpid}: {other:?}"),
        }
    }

    /// A process whose main thread called `pthread_exit` while another thread runs: /proc
    /// shows its leader as a zombie, but it is no zombie process; it is refused as such.
    #[test]
    fn a_main_thread_that_exited_while_others_run_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root (ptrace)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("freeze-leader-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let src = dir.join("leader.c");
        let bin = dir.join("leader");
        std::fs::write(
            &src,
            "#include <pthread.h>\n#include <unistd.h>\n\
             static void *run(void *a) { (void)a; for (;;) pause(); return 0; }\n\
             int main(void) { pthread_t t; pthread_create(&t, 0, run, 0); pthread_exit(0); }\n",
        )
        .expect("write leader.c");
        let built = std::process::Command::new("cc")
            .arg("-pthread")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .status();
        if !built.is_ok_and(|s| s.success()) {
            eprintln!("skipped: needs a C compiler `cc`");
            let _ = std::fs::remove_dir_all(&dir);
            return;
        }
        let mut child = std::process::Command::new(&bin)
            .spawn()
            .expect("spawn leader");
        let pid = i32::try_from(child.id()).expect("pid");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !(has_exited(pid) && sys::proc::tasks(pid).is_ok_and(|t| t.len() == 2)) {
            assert!(
                std::time::Instant::now() < deadline,
                "the leader of {pid} did not exit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let r = Frozen::freeze(pid).map(|f| f.zombies.clone());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Err(CheckpointError::Unsupported { pid: p, what, why }) => {
                assert_eq!(
                    (p, what.as_str(), why.as_str()),
                    (pid, "main thread", "has exited while other threads run")
                );
            }
            other => panic!("freezing {pid} whose main thread exited: {other:?}"),
        }
    }
}
