//! The stub processes of a restore in progress: killed and reaped on drop unless committed.

use sys::ptrace::{self, WaitStatus};

#[derive(Debug, Default)]
pub struct Stubs {
    /// Outer pids of created processes, creation order.
    pub pids: Vec<i32>,
    /// Every traced thread (outer tids).
    pub tids: Vec<i32>,
    committed: bool,
}

impl Stubs {
    pub fn add_process(&mut self, pid: i32) {
        self.pids.push(pid);
        self.tids.push(pid);
    }

    pub fn add_thread(&mut self, tid: i32) {
        self.tids.push(tid);
    }

    /// The restore succeeded: the processes are ours no more.
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for &p in &self.pids {
            let _ = sys::pid::kill(p, libc::SIGKILL);
        }
        for &t in self.tids.iter().rev() {
            loop {
                match ptrace::wait(t) {
                    Ok(WaitStatus::Exited(_)) | Ok(WaitStatus::Signaled(_)) | Err(_) => break,
                    Ok(WaitStatus::Stopped { .. }) => {
                        let _ = ptrace::cont(t, 0);
                    }
                }
            }
        }
    }
}
