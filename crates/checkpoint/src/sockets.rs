//! Unix sockets: connected pairs whose two ends are both open in the tree, with the bytes
//! queued in each end (peeked, not consumed). Everything else is refused with the reason.

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
    /// Recorded ends by socket inode.
    ends: BTreeMap<u64, End>,
    next_pair: u32,
    /// pair id of each recorded end's inode
    pair_of: BTreeMap<u64, (u32, u8)>,
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
            return Err(unsupported(
                pid,
                fd,
                link,
                "only unix sockets can be checkpointed yet (TCP, UDP, netlink, ... are not)",
            ));
        };
        if s.state != 1 || s.peer == 0 {
            let why = match s.state {
                10 => "listening unix sockets cannot be checkpointed yet".to_string(),
                _ => format!(
                    "only connected unix socket pairs can be checkpointed yet (state {}, peer inode {})",
                    s.state, s.peer
                ),
            };
            return Err(unsupported(pid, fd, link, why));
        }
        if let Some(name) = &s.name {
            return Err(unsupported(
                pid,
                fd,
                link,
                format!("sockets bound to a name ({name}) cannot be checkpointed yet"),
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
