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
    pub threads: usize,
    pub pages_bytes: u64,
    /// Reading and verifying the image.
    pub verify: Duration,
    /// From the first stub to the last detach.
    pub restore: Duration,
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
    })?;
    report.verify = verify;
    report.restore = t1.elapsed();
    Ok(report)
}
