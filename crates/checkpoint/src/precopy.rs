//! Iterative pre-copy (for live migration): copy everything while the tree runs, then copy
//! what was dirtied meanwhile, a few times, and finally freeze and copy the last dirty set.
//!
//! Every round is an image directory `DIR/round-N`; each names the previous one as its parent.
//! Rounds before the last are `live_memory` images (state taken at a brief freeze, memory
//! copied while the tree runs, dirty trackers armed at that freeze); the last round is an
//! ordinary incremental dump with the tree frozen throughout, and its directory is the image
//! to restore (restore follows the chain).
//!
//! Why it is exact: every round reads and re-arms the trackers while the tree is frozen (the
//! round's cut). A page the tree writes after a cut, including while that round's copy is in
//! progress, is reported written by the next round and copied again; the last round copies
//! its dirty set with the tree frozen, so the chain ends at one consistent cut.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::{dump, DumpOptions, Result};

/// What to pre-copy and when to stop.
#[derive(Debug, Clone)]
pub struct PreCopyOptions {
    pub root_pid: i32,
    /// Round images go to `dir/round-0`, `dir/round-1`, ... (created).
    pub dir: PathBuf,
    /// Live rounds at most (the first, full copy included); at least 1.
    pub max_live_rounds: usize,
    /// Stop iterating once a live round copied at most this many bytes.
    pub converged_bytes: u64,
    /// Keep the tree running after the final (frozen) round instead of killing it.
    pub leave_running: bool,
    /// The root is the init of its own PID namespace.
    pub pidns: bool,
}

/// One round of a pre-copy.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub round: usize,
    pub image_dir: PathBuf,
    /// Copied while the tree ran (false: the final, frozen round).
    pub live: bool,
    /// Pages and bytes copied in this round.
    pub pages: u64,
    pub bytes: u64,
    /// Pages the trackers reported written since the previous round's cut.
    pub written_pages: u64,
    /// How long the tree was stopped in this round.
    pub frozen: Duration,
    /// Whole round, wall time.
    pub took: Duration,
}

/// Runs a pre-copy; `on_round` is called after each round (for progress or, in tests, to let
/// the workload change memory between rounds). Returns every round; the last one's
/// `image_dir` is the image to restore.
pub fn precopy(
    opts: &PreCopyOptions,
    mut on_round: impl FnMut(&RoundReport),
) -> Result<Vec<RoundReport>> {
    let mut rounds: Vec<RoundReport> = Vec::new();
    let max_live = opts.max_live_rounds.max(1);
    loop {
        let n = rounds.len();
        let last_live = rounds.last().map(|r| r.bytes);
        let finish = n >= max_live || last_live.is_some_and(|b| n > 0 && b <= opts.converged_bytes);
        let image_dir = opts.dir.join(format!("round-{n}"));
        let t = Instant::now();
        let rep = dump(&DumpOptions {
            root_pid: opts.root_pid,
            image_dir: image_dir.clone(),
            leave_running: !finish || opts.leave_running,
            parent: rounds.last().map(|r| r.image_dir.clone()),
            pidns: opts.pidns,
            progress: None,
            live_memory: !finish,
            reuse_from: None,
        })?;
        let r = RoundReport {
            round: n,
            image_dir,
            live: !finish,
            pages: rep.pages_bytes / sys::PAGE_SIZE,
            bytes: rep.pages_bytes,
            written_pages: rep.written_pages,
            frozen: rep.frozen,
            took: t.elapsed(),
        };
        on_round(&r);
        rounds.push(r);
        if finish {
            return Ok(rounds);
        }
    }
}
