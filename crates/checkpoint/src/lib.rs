//! The checkpoint engine: freeze a process tree with ptrace, dump every process and thread into
//! an image, then either let the tree run on or kill it and wait until its pids are free.
//!
//! Guarantees: on any error every tracee is put back (registers, borrowed memory) and detached,
//! so a failed checkpoint leaves the tree running and untouched. Nothing in the tree runs
//! between the start of the freeze and the end of the dump.

#![forbid(unsafe_code)]

mod dump;
mod evfd;
mod files;
mod freeze;
mod incr;
mod memory;
pub use memory::dump_threads;
mod netlock;
pub mod precopy;
mod shmem;
mod sockets;
mod timers;
mod vmflags;

use std::path::PathBuf;
use std::sync::Arc;

pub use dump::dump;
pub use precopy::{precopy, PreCopyOptions, RoundReport};

/// Progress callback: bytes of memory copied so far, and the total expected.
pub type ProgressFn = Arc<dyn Fn(u64, u64) + Send + Sync>;

/// What to dump and how.
#[derive(Clone, Default)]
pub struct DumpOptions {
    /// Root of the tree, in the dumper's PID namespace.
    pub root_pid: i32,
    /// Image directory (created if missing; must not already hold an image).
    pub image_dir: PathBuf,
    /// Keep the tree running after the dump instead of killing it.
    pub leave_running: bool,
    /// Parent image for an incremental dump: only pages written since it are copied (where the
    /// parent's dump left dirty tracking armed with `leave_running`).
    pub parent: Option<PathBuf>,
    /// The root is the init of its own PID namespace (launched by `understudy run`).
    pub pidns: bool,
    /// Called while memory is copied.
    pub progress: Option<ProgressFn>,
    /// Pre-copy round: take the state and arm (or read) the dirty trackers while frozen, then
    /// let the tree run and copy the memory while it runs. The image is marked `live_memory`:
    /// only usable as the parent of a later dump (see [`precopy`]). Needs `leave_running`.
    pub live_memory: bool,
    /// An older image directory to recycle (periodic checkpoints): its pages files are moved
    /// into `image_dir` and overwritten in place, which saves allocating new page cache. The
    /// old image is consumed: its `tree.img` is removed first, so it is never valid again,
    /// even if this dump fails. Must be on the same filesystem as `image_dir`; not with
    /// `parent`.
    pub reuse_from: Option<PathBuf>,
}

impl std::fmt::Debug for DumpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DumpOptions")
            .field("root_pid", &self.root_pid)
            .field("image_dir", &self.image_dir)
            .field("leave_running", &self.leave_running)
            .field("parent", &self.parent)
            .field("pidns", &self.pidns)
            .field("live_memory", &self.live_memory)
            .field("reuse_from", &self.reuse_from)
            .finish()
    }
}

/// What a dump did and how long each part took.
#[derive(Debug, Clone, Default)]
pub struct DumpReport {
    pub root_pid: i32,
    pub processes: usize,
    /// Zombies recorded (exited children not yet reaped; not part of `processes`).
    pub zombies: usize,
    pub threads: usize,
    /// Bytes of memory pages written.
    pub pages_bytes: u64,
    /// Time before the freeze reserving (or recycling) the pages files' space.
    pub reserve: std::time::Duration,
    /// Time from the first freeze to the end of the dump (the tree was stopped that long).
    pub frozen: std::time::Duration,
    /// Time spent copying memory (a full dump copies on a thread of its own while the rest of
    /// the state is collected: see `copy_wait`).
    pub memory_copy: std::time::Duration,
    /// Full dumps: time the collecting thread waited, once every process's state was read,
    /// for the memory copies still running (part of `frozen`; the rest of the state
    /// collection overlapped with the copy).
    pub copy_wait: std::time::Duration,
    /// Time waiting for the killed tree's pids to be free (zero with `leave_running`).
    pub reap_wait: std::time::Duration,
    /// A dump that kills the tree: time `dump` waited, after the reap, for `tree.img` to be
    /// fsynced and put in place (its fsync runs beside the reap; zero once it ended first).
    pub tree_sync_wait: std::time::Duration,
    /// Processes dumped incrementally (their unchanged pages left in the parent).
    pub incremental_processes: usize,
    /// Pages reported written since the parent.
    pub written_pages: u64,
    /// Bytes of data left in the parent image.
    pub in_parent_bytes: u64,
    /// Time spent reading the dirty trackers (part of `frozen`).
    pub dirty_scan: std::time::Duration,
    /// Time spent while frozen getting the madvise flags: reading `/proc/PID/smaps` (it walks
    /// every page table), or for an incremental dump checking the pre-freeze read against
    /// `maps` (part of `frozen`).
    pub vm_flags_read: std::time::Duration,
    /// Incremental dumps: time reading smaps before the freeze (not part of `frozen`), and the
    /// processes whose flags came from that read (every `maps` line unchanged at the freeze).
    pub vm_flags_preread: std::time::Duration,
    pub vm_flags_reused: usize,
    /// Time spent after the resume writing page data copied into memory while frozen
    /// (incremental `leave_running` dumps; not part of `frozen`).
    pub deferred_write: std::time::Duration,
    /// Time taken by the network lock over the tree's TCP sockets (part of `frozen`; zero
    /// without TCP sockets).
    pub netlock: std::time::Duration,
}

/// Everything that makes a checkpoint fail.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("pid {pid}: {err}")]
    Sys { pid: i32, err: sys::Error },
    #[error("pid {pid} {what}: {why}")]
    Unsupported { pid: i32, what: String, why: String },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error("{path}: {why}")]
    ImageDir { path: PathBuf, why: String },
    #[error("pid {pid}: {why}")]
    Tree { pid: i32, why: String },
    #[error("the image is complete, but pids {pids:?} are still taken {secs}s after the tree was killed (a parent outside the tree has not reaped them)")]
    PidsNotFreed { pids: Vec<i32>, secs: u64 },
}

impl CheckpointError {
    /// Whether the tree was left running untouched (every error before the kill), as opposed
    /// to a failure after a complete dump (the killed tree's pids not freed in time).
    pub fn tree_left_running(&self) -> bool {
        !matches!(self, CheckpointError::PidsNotFreed { .. })
    }
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

pub(crate) trait PidCtx<T> {
    fn pid(self, pid: i32) -> Result<T>;
}

impl<T> PidCtx<T> for std::result::Result<T, sys::Error> {
    fn pid(self, pid: i32) -> Result<T> {
        self.map_err(|err| CheckpointError::Sys { pid, err })
    }
}
