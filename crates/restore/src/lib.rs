//! The restore engine: re-create a dumped process tree with the same PIDs and TIDs and leave it
//! running exactly where it stopped.
//!
//! Order of work (each step only starts once the previous one succeeded for every process):
//! 1. read and verify the whole image (headers, sizes, CRC32C of every pages file): a bad image
//!    is refused before anything is created;
//! 2. create stub processes with `clone3(set_tid)`: the root from the restorer, every other
//!    process by a `clone3` injected into its restored parent (so parent links, sessions and
//!    process groups are real);
//! 3. in each stub, by injected syscalls: drop everything but the vDSO block, move that block
//!    to its recorded address, map every region, fill pages with `process_vm_writev`, protect,
//!    set the mm fields, install fds (pulled from the restorer with an injected `pidfd_getfd`),
//!    signal handlers, timers, limits, threads (`clone3(CLONE_THREAD, set_tid)`), rseq,
//!    credentials;
//! 4. registers, xstate and signal masks last, then detach everything.
//!
//! On any error every stub created so far is killed: nothing is half-restored.

#![forbid(unsafe_code)]

mod evfd;
pub mod lazy;
mod process;
mod stubs;
mod timers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Progress callback: bytes of memory written so far, and the total.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

#[derive(Clone, Default)]
pub struct RestoreOptions {
    pub image_dir: PathBuf,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("image_dir", &self.image_dir)
            .finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    /// Root pid in the restorer's namespace.
    pub root_pid: i32,
    pub processes: usize,
    /// Zombies re-created (children that had exited unreaped; not part of `processes`).
    pub zombies: usize,
    pub threads: usize,
    pub pages_bytes: u64,
    /// Reading and verifying the image.
    pub verify: Duration,
    /// From the first stub to the last detach.
    pub restore: Duration,
    /// Established TCP connections re-created.
    pub tcp_connections: usize,
    /// Time spent re-creating them (in repair mode, then out of it; part of `restore`).
    pub tcp_restore: Duration,
    /// Releasing the checkpoint's network lock once the tree runs (not part of `restore`).
    pub unlock: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("pid {pid}: {err}")]
    Sys { pid: i32, err: sys::Error },
    #[error("pid {pid}: {why}")]
    Invalid { pid: i32, why: String },
    #[error("pid {pid} is already taken by a running process; a tree can only be restored with its own pids")]
    PidTaken { pid: i32 },
    #[error("lazy restore: {0}")]
    Lazy(String),
}

pub use lazy::{restore_lazy, LazyOptions, LazyProgress, LazyRestore, LazySummary};

pub type Result<T> = std::result::Result<T, RestoreError>;

pub(crate) trait PidCtx<T> {
    fn pid(self, pid: i32) -> Result<T>;
}

impl<T> PidCtx<T> for std::result::Result<T, sys::Error> {
    fn pid(self, pid: i32) -> Result<T> {
        self.map_err(|err| match err.errno() {
            Some(libc::EEXIST) if err.to_string().contains("clone3") => {
                RestoreError::PidTaken { pid }
            }
            _ => RestoreError::Sys { pid, err },
        })
    }
}

/// Restores the image in `opts.image_dir`; returns once every process runs.
pub fn restore(opts: &RestoreOptions) -> Result<RestoreReport> {
    let t0 = Instant::now();
    let loaded = process::Loaded::load(&opts.image_dir)?;
    let verify = t0.elapsed();
    tracing::debug!("restore: image loaded in {verify:?}");
    let root = loaded.tree.processes.first().map_or(0, |p| p.pid);
    let lock =
        sys::netlock::LockRecord::read(&opts.image_dir).map_err(|e| RestoreError::Invalid {
            pid: root,
            why: e.to_string(),
        })?;
    let t1 = Instant::now();
    let mut report = std::thread::scope(|s| {
        let check = s.spawn(|| loaded.verify());
        process::restore_tree(&loaded, opts, move || {
            check.join().unwrap_or_else(|_| {
                Err(RestoreError::Invalid {
                    pid: 0,
                    why: "image verification panicked".into(),
                })
            })
        })
    })
    .inspect_err(|_| {
        // Only when it is still there (a second restore of the same image finds it gone).
        if let Some(l) = lock
            .as_ref()
            .filter(|l| sys::netlock::is_locked(&l.table, None).unwrap_or(false))
        {
            tracing::warn!(
                "the network lock {} stays in place (the peers' segments are dropped, they retransmit): a successful restore releases it, or by hand: nft delete table inet {}",
                l.table,
                l.table
            );
        }
    })?;
    report.verify = verify;
    report.restore = t1.elapsed();
    if let Some(lock) = lock {
        let t = Instant::now();
        release_lock(&lock);
        report.unlock = t.elapsed();
    }
    Ok(report)
}

/// Releases the network lock the checkpoint left (the restored sockets are live now). A
/// failure is only a warning: the tree runs; the peers stay stalled until the table is removed
/// by hand. A failed restore keeps the lock, so that a second attempt can still succeed.
fn release_lock(lock: &sys::netlock::LockRecord) {
    let ours = sys::netlock::netns_inode(None).ok();
    let released = if ours == Some(lock.netns) {
        sys::netlock::unlock(&lock.table, None)
    } else {
        // Restored into another network namespace (a migration simulated on one host): the
        // lock is released where it was taken, if that namespace is still on this host.
        let Some(ns) = sys::netlock::find_netns(lock.netns) else {
            tracing::warn!(
                "the network lock {} is in another network namespace (inode {}), not found on this host: release it there with: nft delete table inet {}",
                lock.table,
                lock.netns,
                lock.table
            );
            return;
        };
        sys::netlock::unlock_in(&lock.table, &ns)
    };
    match released {
        Ok(true) => tracing::debug!("network lock {} released", lock.table),
        Ok(false) => tracing::debug!("network lock {} was already gone", lock.table),
        Err(e) => tracing::warn!(
            "{e}; the restored tree's peers stay stalled until it is released by hand: nft delete table inet {}",
            lock.table
        ),
    }
}
