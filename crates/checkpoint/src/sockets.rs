//! Sockets: unix pairs whose two ends are both open in the tree, with the bytes queued in each
//! end (peeked, not consumed); unix listeners bound to a name; TCP listeners; UDP sockets.
//! Everything else is refused with the reason.

use std::collections::BTreeMap;

use image::{FileKind, Hex, OpenFile};
use sys::sockdiag::{SockDiag, UnixSock};

use crate::{CheckpointError, PidCtx, Result};

fn unsupported(pid: i32, fd: i32, link: &str, why: impl Into<String>) -> CheckpointError {
    CheckpointError::Unsupported {
        pid,
        what: format!("fd {fd} ({link})"),
        why: why.into(),
    }
}

struct End {
    file: u32,
    pid: i32,
    fd: i32,
    peer: u64,
}

/// Unix sockets of the tree.
#[derive(Default)]
pub struct Sockets {
    /// sock_diag's view of the unix sockets of the tree's network namespace, by inode.
    unix: Option<BTreeMap<u64, UnixSock>>,
    /// sock_diag's view of the TCP and UDP sockets, by inode.
    inet: Option<BTreeMap<u64, sys::sockdiag::InetSock>>,
    /// Recorded ends by socket inode.
    ends: BTreeMap<u64, End>,
    next_pair: u32,
    /// pair id of each recorded end's inode
    pair_of: BTreeMap<u64, (u32, u8)>,
    /// Established TCP connections put in repair mode.
    pub repaired: RepairGuard,
}

/// Established TCP connections of the tree in repair mode (the dumper's copies). Dropped
/// without [`RepairGuard::keep`] it takes them out of repair mode again, so the connections
/// go on (a failed dump, or `--leave-running`); kept, the tree can be killed without the
/// peers noticing (closing a socket in repair mode sends nothing).
#[derive(Default)]
pub struct RepairGuard {
    fds: Vec<std::os::fd::OwnedFd>,
}

impl RepairGuard {
    /// Leaves every socket in repair mode (call just before killing the tree).
    pub fn keep(mut self) {
        self.fds.clear();
    }
}

impl Drop for RepairGuard {
    fn drop(&mut self) {
        for fd in &self.fds {
            let back = sys::tcp_repair::Repair::enter(std::os::fd::AsFd::as_fd(fd))
                .and_then(sys::tcp_repair::Repair::leave);
            if let Err(e) = back {
                tracing::warn!("leaving TCP repair mode: {e}");
            }
        }
    }
}

impl Sockets {
    fn table(&mut self, pid: i32) -> Result<&BTreeMap<u64, UnixSock>> {
        if self.unix.is_none() {
            let diag = |e: sys::sockdiag::SockDiagError| CheckpointError::Tree {
                pid,
                why: format!("sock_diag: {e}"),
            };
            let mut d = SockDiag::open_in_netns_of(pid).map_err(diag)?;
            let list = d.unix_sockets().map_err(diag)?;
            self.unix = Some(list.into_iter().map(|s| (s.ino, s)).collect());
        }
        Ok(self.unix.get_or_insert_with(BTreeMap::new))
    }

    /// The kind of socket fd `fd` of `pid` (link `socket:[ino]`), which gets file id `file`.
    pub fn kind(&mut self, pid: i32, fd: i32, link: &str, ino: u64, file: u32) -> Result<FileKind> {
        let Some(s) = self.table(pid)?.get(&ino).cloned() else {
            return self.inet_kind(pid, fd, link, ino);
        };
        if s.state == 10 {
            return self.unix_listener(pid, fd, link, &s);
        }
        if s.state != 1 || s.peer == 0 {
            return Err(unsupported(
                pid,
                fd,
                link,
                format!(
                    "only connected unix socket pairs and listeners can be checkpointed yet (state {}, peer inode {})",
                    s.state, s.peer
                ),
            ));
        }
        if s.name.is_some() && s.sock_type == 2 {
            return Err(unsupported(
                pid,
                fd,
                link,
                "bound unix datagram sockets cannot be checkpointed yet",
            ));
        }
        if s.shutdown != 0 {
            return Err(unsupported(
                pid,
                fd,
                link,
                format!(
                    "shut down sockets (shutdown bits {}) cannot be checkpointed yet",
                    s.shutdown
                ),
            ));
        }
        let (pair, end) = match self.pair_of.get(&s.peer) {
            Some(&(pair, 0)) => (pair, 1u8),
            Some(_) => {
                return Err(unsupported(
                    pid,
                    fd,
                    link,
                    "a third socket connected to one end of a pair",
                ))
            }
            None => {
                let p = self.next_pair;
                self.next_pair += 1;
                (p, 0u8)
            }
        };
        self.pair_of.insert(ino, (pair, end));
        self.ends.insert(
            ino,
            End {
                file,
                pid,
                fd,
                peer: s.peer,
            },
        );
        let pidfd = sys::pid::pidfd_open(pid).pid(pid)?;
        let local = sys::pid::pidfd_getfd(&pidfd, fd).pid(pid)?;
        let q = sys::sockqueue::peek_queue(std::os::fd::AsFd::as_fd(&local))
            .map_err(|e| unsupported(pid, fd, link, format!("reading its queue: {e}")))?;
        if q.messages.iter().any(|m| m.from.is_some()) {
            return Err(unsupported(
                pid,
                fd,
                link,
                "queued datagrams from named senders cannot be restored yet",
            ));
        }
        Ok(FileKind::UnixPair {
            pair,
            end,
            sock_type: q.sock_type,
            queue: q.messages.into_iter().map(|m| Hex(m.data)).collect(),
        })
    }

    fn unix_listener(&mut self, pid: i32, fd: i32, link: &str, s: &UnixSock) -> Result<FileKind> {
        let Some(name) = s.name.clone() else {
            return Err(unsupported(
                pid,
                fd,
                link,
                "an unbound listening unix socket",
            ));
        };
        if !s.icons.is_empty() {
            return Err(unsupported(
                pid,
                fd,
                link,
                format!(
                    "{} connection(s) wait in the accept queue of {name} (they cannot be carried)",
                    s.icons.len()
                ),
            ));
        }
        let (name, mode) = if name.starts_with('@') {
            (name, None)
        } else {
            // sock_diag reports the name as given to bind(): a relative one is resolved against
            // the current directory and must lead to the bound socket file (same inode).
            let path = if name.starts_with('/') {
                name.clone()
            } else {
                let cwd = sys::proc::read_link(&format!("/proc/{pid}/cwd")).pid(pid)?;
                format!("{}/{name}", cwd.trim_end_matches('/'))
            };
            let st = sys::proc::stat_path(&path)
                .map_err(|e| unsupported(pid, fd, link, format!("its socket file {path}: {e}")))?;
            if let Some((ino, _)) = s.vfs {
                // unix_diag reports the inode number truncated to 32 bits.
                if st.st_ino & 0xffff_ffff != u64::from(ino) {
                    return Err(unsupported(
                        pid,
                        fd,
                        link,
                        format!("{path} is no longer the socket file it was bound to"),
                    ));
                }
            }
            (path, Some(st.st_mode & 0o7777))
        };
        Ok(FileKind::UnixListen {
            sock_type: i32::from(s.sock_type),
            name,
            backlog: s.wqueue,
            mode,
        })
    }

    fn inet_kind(&mut self, pid: i32, fd: i32, link: &str, ino: u64) -> Result<FileKind> {
        if self.inet.is_none() {
            let diag = |e: sys::sockdiag::SockDiagError| CheckpointError::Tree {
                pid,
                why: format!("sock_diag: {e}"),
            };
            let mut d = SockDiag::open_in_netns_of(pid).map_err(diag)?;
            let list = d.all_inet().map_err(diag)?;
            self.inet = Some(list.into_iter().map(|s| (s.ino, s)).collect());
        }
        let Some(s) = self
            .inet
            .get_or_insert_with(BTreeMap::new)
            .get(&ino)
            .cloned()
        else {
            return Err(unsupported(
                pid,
                fd,
                link,
                "only unix, TCP (listening, established) and UDP sockets can be checkpointed yet (netlink, raw, packet, ... are not)",
            ));
        };
        let pidfd = sys::pid::pidfd_open(pid).pid(pid)?;
        let local = sys::pid::pidfd_getfd(&pidfd, fd).pid(pid)?;
        let bad = |e: sys::inetsock::InetSockError| unsupported(pid, fd, link, e.to_string());
        match (i32::from(s.protocol), s.state) {
            (libc::IPPROTO_TCP, 10) => Ok(FileKind::TcpListen {
                state: sys::inetsock::dump_listener(
                    std::os::fd::AsFd::as_fd(&local),
                    s.wqueue,
                    s.rqueue,
                    false,
                )
                .map_err(bad)?,
            }),
            (libc::IPPROTO_TCP, 1) => {
                let bad = |e: sys::tcp_repair::TcpRepairError| {
                    unsupported(pid, fd, link, format!("TCP_REPAIR: {e}"))
                };
                let r = sys::tcp_repair::Repair::enter(std::os::fd::AsFd::as_fd(&local))
                    .map_err(bad)?;
                // On error `r` is dropped here, which leaves repair mode.
                let state = r.dump().map_err(bad)?;
                r.keep();
                self.repaired.fds.push(local);
                Ok(FileKind::TcpEstablished { state })
            }
            (libc::IPPROTO_TCP, st) => Err(unsupported(
                pid,
                fd,
                link,
                format!(
                    "TCP socket {} -> {} in state {} ({st}) cannot be checkpointed yet (only listening and established ones)",
                    s.local,
                    s.remote,
                    sys::tcp_repair::state_name(st)
                ),
            )),
            (libc::IPPROTO_UDP, _) => {
                if s.rqueue > 0 {
                    tracing::warn!(
                        "pid {pid} fd {fd}: {} bytes of queued UDP datagrams are dropped",
                        s.rqueue
                    );
                }
                Ok(FileKind::Udp {
                    state: sys::inetsock::dump_udp(std::os::fd::AsFd::as_fd(&local))
                        .map_err(bad)?,
                })
            }
            (p, _) => Err(unsupported(pid, fd, link, format!("inet protocol {p}"))),
        }
    }

    /// Checks that the peer of every recorded end is recorded too and points back.
    pub fn check(&self, files: &[OpenFile]) -> Result<()> {
        for (ino, e) in &self.ends {
            let back = self.ends.get(&e.peer).map(|p| p.peer);
            if back != Some(*ino) {
                return Err(unsupported(
                    e.pid,
                    e.fd,
                    &format!("socket:[{ino}]"),
                    format!(
                        "its peer (socket inode {}) is not open in the checkpointed tree or is connected elsewhere",
                        e.peer
                    ),
                ));
            }
            if files
                .get(usize::try_from(e.file).unwrap_or(usize::MAX))
                .is_none()
            {
                return Err(CheckpointError::Tree {
                    pid: e.pid,
                    why: format!("socket file {} missing", e.file),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcp_states_are_named() {
        assert_eq!(sys::tcp_repair::state_name(8), "CLOSE_WAIT");
        assert_eq!(sys::tcp_repair::state_name(2), "SYN_SENT");
        assert_eq!(sys::tcp_repair::state_name(99), "unknown");
    }
}
