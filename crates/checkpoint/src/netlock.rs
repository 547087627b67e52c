//! The network lock around a checkpoint (see `sys::netlock` and docs/network-lock.md): taken
//! right after the freeze, before any socket is put in repair mode and dumped, over every TCP
//! connection and listening socket open in the frozen tree; released when the checkpoint fails
//! or leaves the tree running; left in place (and recorded in the image) when the tree is
//! killed, for the restore to release once the re-created sockets are live.
//!
//! Without `nft`, a checkpoint that kills a tree holding TCP sockets is refused (peers sending
//! in the gap would be reset); with `leave_running` it only warns. `UNDERSTUDY_NETLOCK=off`
//! checkpoints without the lock (with a warning).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sys::netlock::{LockRecord, LockSet};

use crate::freeze::Frozen;
use crate::{CheckpointError, DumpOptions, PidCtx, Result};

/// A lock held over the tree's TCP sockets; released on drop unless [`NetLock::keep`] was called.
pub struct NetLock {
    table: String,
    /// A pid of the tree (its network namespace holds the table).
    pid: i32,
    netns: u64,
    set: LockSet,
    held: bool,
    /// How long taking the lock took.
    pub took: Duration,
}

/// The tag naming the lock of the checkpoint of `root` into `dir`: root pid and a hash of the
/// image directory, so two checkpoints never share a table.
fn tag(root: i32, dir: &std::path::Path) -> String {
    let path = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    // FNV-1a: stable across builds (unlike the std hasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in path.as_os_str().as_encoded_bytes() {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    format!("{root}_{h:08x}")
}

/// The TCP connections and listeners open in the frozen tree (sock_diag's view of the root's
/// network namespace, restricted to the socket inodes the tree's fds hold).
fn tree_tcp(frozen: &Frozen, root: i32) -> Result<LockSet> {
    let mut inodes = BTreeSet::new();
    for p in &frozen.procs {
        for fd in sys::proc::fds(p.pid).pid(p.pid)? {
            let Ok(link) = sys::proc::read_link(&format!("/proc/{}/fd/{fd}", p.pid)) else {
                continue;
            };
            if let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
            {
                inodes.insert(ino);
            }
        }
    }
    let mut set = LockSet::default();
    if inodes.is_empty() {
        return Ok(set);
    }
    let diag = |e: sys::sockdiag::SockDiagError| CheckpointError::Tree {
        pid: root,
        why: format!("listing TCP sockets for the network lock: sock_diag: {e}"),
    };
    let mut d = sys::sockdiag::SockDiag::open_in_netns_of(root).map_err(diag)?;
    for s in d.all_inet().map_err(diag)? {
        if i32::from(s.protocol) != libc::IPPROTO_TCP || !inodes.contains(&s.ino) {
            continue;
        }
        match s.state {
            1 => set.connections.push((s.local, s.remote)),
            10 => set.listeners.push(s.local),
            // Other states are refused by the dump itself.
            _ => {}
        }
    }
    Ok(set)
}

impl NetLock {
    /// Takes the lock over the frozen tree's TCP sockets; `None` when it holds none, or when
    /// the lock is switched off or (with `leave_running`) unavailable.
    pub fn take(opts: &DumpOptions, frozen: &Frozen) -> Result<Option<NetLock>> {
        let root = opts.root_pid;
        let set = tree_tcp(frozen, root)?;
        if set.is_empty() {
            return Ok(None);
        }
        let what = format!(
            "{} TCP connection(s) and {} listener(s)",
            set.connections.len(),
            set.listeners.len()
        );
        if std::env::var("UNDERSTUDY_NETLOCK").is_ok_and(|v| v == "off") {
            tracing::warn!(
                "pid {root}: checkpoint of {what} without a network lock (UNDERSTUDY_NETLOCK=off): a peer sending before the restore is reset"
            );
            return Ok(None);
        }
        let table = sys::netlock::table_name(&tag(root, &opts.image_dir));
        if sys::netlock::find_nft().is_none() {
            if opts.leave_running {
                tracing::warn!(
                    "pid {root}: no network lock over {what} (nft is not installed): segments arriving while the tree is frozen are taken in after their socket was dumped"
                );
                return Ok(None);
            }
            return Err(CheckpointError::Unsupported {
                pid: root,
                what,
                why: "the network lock that keeps peers from being reset between the kill and the restore needs nft (Debian package nftables), which is not installed; install it, or use --leave-running, or set UNDERSTUDY_NETLOCK=off to accept resets".into(),
            });
        }
        let netns = sys::netlock::netns_inode(Some(root)).map_err(|e| CheckpointError::Tree {
            pid: root,
            why: format!("network lock: reading /proc/{root}/ns/net: {e}"),
        })?;
        let t = Instant::now();
        sys::netlock::lock(&table, &set, Some(root)).map_err(|e| CheckpointError::Tree {
            pid: root,
            why: e.to_string(),
        })?;
        let took = t.elapsed();
        tracing::debug!("network lock {table} over {what} taken in {took:?}");
        Ok(Some(NetLock {
            table,
            pid: root,
            netns,
            set,
            held: true,
            took,
        }))
    }

    /// Writes the record of the lock into the image directory (for the restore).
    pub fn record(&self, dir: &std::path::Path) -> Result<()> {
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        LockRecord {
            table: self.table.clone(),
            netns: self.netns,
            connections: count(self.set.connections.len()),
            listeners: count(self.set.listeners.len()),
        }
        .write(dir)
        .map_err(|e| CheckpointError::ImageDir {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })
    }

    /// Leaves the lock in place (the tree is being killed; the restore releases it).
    pub fn keep(mut self) {
        self.held = false;
    }
}

impl Drop for NetLock {
    fn drop(&mut self) {
        if !self.held {
            return;
        }
        match sys::netlock::unlock(&self.table, Some(self.pid)) {
            Ok(_) => tracing::debug!("network lock {} released", self.table),
            Err(e) => tracing::warn!(
                "{e}; release it by hand in the network namespace of pid {}: nft delete table inet {}",
                self.pid,
                self.table
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tags_differ_by_image_and_root() {
        let a = super::tag(10, std::path::Path::new("/nonexistent/a"));
        let b = super::tag(10, std::path::Path::new("/nonexistent/b"));
        let c = super::tag(11, std::path::Path::new("/nonexistent/a"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("10_"));
    }
}
