//! Event descriptors (eventfd, timerfd, signalfd, epoll): their state from `/proc/PID/fdinfo`,
//! and the epoll registrations resolved to fds of one process of the tree.

use std::collections::BTreeMap;

use image::{EpollReg, Fd, FileKind, Process};
use sys::fdinfo::{AnonKind, FdInfoExtra, FdKind};

use crate::{CheckpointError, PidCtx, Result};

fn unsupported(pid: i32, fd: i32, link: &str, why: impl Into<String>) -> CheckpointError {
    CheckpointError::Unsupported {
        pid,
        what: format!("fd {fd} ({link})"),
        why: why.into(),
    }
}

fn ns(t: &sys::fdinfo::Timespec) -> u64 {
    t.sec.saturating_mul(1_000_000_000).saturating_add(t.nsec)
}

/// An epoll instance whose registrations still have to be tied to a process.
struct PendingEpoll {
    entries: Vec<sys::fdinfo::EpollEntry>,
    /// Every (pid, fd) through which the tree holds this instance, in dump order.
    holders: Vec<(i32, i32)>,
}

/// Epoll instances of the tree, by open file description id.
#[derive(Default)]
pub struct Epolls {
    pending: BTreeMap<u32, PendingEpoll>,
}

impl Epolls {
    /// Another fd of an already recorded open file description.
    pub fn also_held(&mut self, file: u32, pid: i32, fd: i32) {
        if let Some(p) = self.pending.get_mut(&file) {
            p.holders.push((pid, fd));
        }
    }

    /// The kind of the anonymous-inode fd `fd` of `pid`; `file` is the id it will get.
    pub fn kind(&mut self, pid: i32, fd: i32, link: &str, file: u32) -> Result<FileKind> {
        let desc = sys::fdinfo::read_fd(pid, fd).map_err(|e| CheckpointError::Tree {
            pid,
            why: e.to_string(),
        })?;
        let FdKind::Anon(anon) = &desc.kind else {
            return Err(unsupported(pid, fd, link, "not an anonymous inode"));
        };
        Ok(match (anon, desc.info.extra) {
            (AnonKind::EventFd, FdInfoExtra::EventFd(e)) => FileKind::EventFd {
                count: e.count,
                semaphore: e.semaphore,
            },
            (AnonKind::TimerFd, FdInfoExtra::TimerFd(t)) => FileKind::TimerFd {
                clockid: t.clockid,
                value_ns: ns(&t.it_value),
                interval_ns: ns(&t.it_interval),
                settime_flags: t.settime_flags,
                ticks: t.ticks,
            },
            (AnonKind::SignalFd, FdInfoExtra::SignalFd { sigmask }) => {
                FileKind::SignalFd { sigmask }
            }
            (AnonKind::Epoll, FdInfoExtra::Epoll(entries)) => {
                self.pending.insert(
                    file,
                    PendingEpoll {
                        entries,
                        holders: vec![(pid, fd)],
                    },
                );
                FileKind::Epoll
            }
            (AnonKind::IoUring, _) => {
                return Err(unsupported(
                    pid,
                    fd,
                    link,
                    "io_uring instances cannot be checkpointed",
                ))
            }
            _ => {
                return Err(unsupported(
                    pid,
                    fd,
                    link,
                    "this kind of anonymous inode (inotify, fanotify, userfaultfd, pidfd, ...) cannot be checkpointed yet",
                ))
            }
        })
    }

    /// Ties every epoll instance's registrations to a process holding it in whose fd table each
    /// registered fd number still refers to the registered file (same inode), and records them
    /// in that process's [`Process::epoll_regs`].
    pub fn resolve(self, processes: &mut [Process]) -> Result<()> {
        for (file, pe) in self.pending {
            let mut chosen = None;
            let mut why = String::from("no process holds it");
            'holders: for &(pid, epfd) in &pe.holders {
                let Some(p) = processes.iter().find(|p| p.pid == pid) else {
                    continue;
                };
                for e in &pe.entries {
                    let Some(_f) = p.fds.iter().find(|f: &&Fd| f.fd == e.tfd) else {
                        why = format!(
                            "pid {pid} fd {epfd}: registered fd {} is not open in any process holding the epoll instance",
                            e.tfd
                        );
                        continue 'holders;
                    };
                    let st = sys::proc::stat_path(&format!("/proc/{pid}/fd/{}", e.tfd)).pid(pid)?;
                    if st.st_ino != e.ino {
                        why = format!(
                            "pid {pid} fd {epfd}: registered fd {} now refers to another file (inode {} instead of {})",
                            e.tfd, st.st_ino, e.ino
                        );
                        continue 'holders;
                    }
                }
                chosen = Some((pid, epfd));
                break;
            }
            let Some((pid, epfd)) = chosen else {
                let (pid, fd) = pe.holders.first().copied().unwrap_or((0, -1));
                return Err(CheckpointError::Unsupported {
                    pid,
                    what: format!("fd {fd} (epoll instance, file {file})"),
                    why: format!("its registrations cannot be re-created: {why}"),
                });
            };
            let p = processes.iter_mut().find(|p| p.pid == pid).ok_or_else(|| {
                CheckpointError::Tree {
                    pid,
                    why: "epoll holder vanished from the process list".into(),
                }
            })?;
            p.epoll_regs.extend(pe.entries.iter().map(|e| EpollReg {
                epfd,
                tfd: e.tfd,
                events: e.events,
                data: e.data,
            }));
        }
        Ok(())
    }
}
