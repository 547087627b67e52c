//! The dump itself: freeze, collect every process, write the image, then kill or release.

use std::time::{Duration, Instant};

use image::{Creds, Hex, MmInfo, Process, SigAction, Thread, Tree, Vma, FORMAT_VERSION};
use sys::remote::nr;
use sys::{ptrace, RemoteSyscalls};

use crate::files::FileTable;
use crate::freeze::{Frozen, FrozenProcess};
use crate::memory::{classify, MemoryDumper};
use crate::shmem::ShmemTable;
use crate::{CheckpointError, DumpOptions, DumpReport, PidCtx, Result};

/// How long `dump` waits for the pids of a killed tree to be free.
const REAP_TIMEOUT: Duration = Duration::from_secs(15);

/// Dumps the tree rooted at `opts.root_pid` into `opts.image_dir`.
/// Largest delta of one process an incremental `leave_running` dump holds in memory until the
/// tree runs again.
const DEFER_MAX_BYTES: u64 = 256 << 20;

pub fn dump(opts: &DumpOptions) -> Result<DumpReport> {
    if opts.live_memory && !opts.leave_running {
        return Err(CheckpointError::ImageDir {
            path: opts.image_dir.clone(),
            why: "a live memory copy needs leave_running".into(),
        });
    }
    prepare_dir(&opts.image_dir)?;
    let parent = match &opts.parent {
        Some(p) => Some(ParentImage::open(p, &opts.image_dir)?),
        None => None,
    };
    // The init of its own PID namespace (an application started by `understudy run`) is
    // dumped as a namespace tree even when named by --pid.
    let mut eff = opts.clone();
    if !eff.pidns {
        let me = sys::proc::status(i32::try_from(std::process::id()).unwrap_or(0))
            .map(|s| s.nspid.len())
            .unwrap_or(1);
        if let Ok(st) = sys::proc::status(opts.root_pid) {
            eff.pidns = st.nspid.len() > me && st.nspid.last() == Some(&1);
        }
    }
    let opts = &eff;
    // A full dump's copy buffers are faulted in on a thread of their own, beside the freeze
    // and the first `/proc` reads; the copier thread takes them before its first copy.
    let full = parent.is_none() && !opts.live_memory;
    let (pool, warming) = if full && !copy_serial() {
        (
            std::sync::Mutex::new(Vec::new()),
            Some(std::thread::spawn(|| crate::memory::pool_buffers(true))),
        )
    } else {
        (crate::memory::buffer_pool(full), None)
    };
    let deferred = std::sync::Mutex::new(Vec::new());
    // An incremental dump writes only what changed: nothing worth reserving.
    let t_reserve = Instant::now();
    let recycled = match &opts.reuse_from {
        Some(old) => {
            if parent.is_some() {
                return Err(CheckpointError::ImageDir {
                    path: old.clone(),
                    why: "an incremental dump cannot recycle an older image".into(),
                });
            }
            if let Err(e) = recycle_space(opts, old) {
                cleanup_dir(&opts.image_dir);
                return Err(e);
            }
            true
        }
        None => false,
    };
    if !recycled && parent.is_none() && std::env::var_os("UNDERSTUDY_NO_RESERVE").is_none() {
        reserve_space(opts);
    }
    let reserve = t_reserve.elapsed();
    // Incremental: the madvise flags are read before the freeze (see `vmflags`).
    let t_pre = Instant::now();
    let pre = if parent.as_ref().is_some_and(|p| !p.consumed) && !crate::vmflags::frozen_only() {
        let pre = crate::vmflags::PreRead::read_tree(opts.root_pid);
        crate::vmflags::test_pause();
        pre
    } else {
        crate::vmflags::PreRead::default()
    };
    let vm_flags_preread = t_pre.elapsed();
    let t_freeze = Instant::now();
    let frozen = Frozen::freeze(opts.root_pid)?;
    tracing::debug!("frozen at {:?}", t_freeze.elapsed());
    let mut report = DumpReport {
        root_pid: opts.root_pid,
        processes: frozen.procs.len(),
        threads: frozen.thread_count(),
        vm_flags_preread,
        reserve,
        ..Default::default()
    };
    // Any error from here on drops `frozen`, which detaches every thread: the tree runs on.
    // The network lock goes first, before any socket is dumped; an error releases it.
    let netlock = crate::netlock::NetLock::take(opts, &frozen)?;
    report.netlock = netlock.as_ref().map_or(Duration::ZERO, |l| l.took);
    let mut redeliver = Vec::new();
    let mut repaired = crate::sockets::RepairGuard::default();
    let mut live_jobs = Vec::new();
    let mut tree = match collect(
        opts,
        parent.as_ref(),
        &frozen,
        &mut report,
        &mut redeliver,
        &pool,
        warming,
        &mut repaired,
        &mut live_jobs,
        &deferred,
        &pre,
    ) {
        Ok(t) => t,
        Err(e) => {
            cleanup_dir(&opts.image_dir);
            return Err(e);
        }
    };
    tracing::debug!("tree collected at {:?}", t_freeze.elapsed());
    if opts.live_memory {
        // The state is taken and the trackers are armed (or read) at the cut: let the tree run
        // and copy the memory while it does. Pages it writes from now on are reported by the
        // next round's trackers, so a page copied after a change is copied again.
        // The connections leave repair mode before the tree runs again.
        drop(repaired);
        frozen.detach();
        drop(netlock);
        report.frozen = t_freeze.elapsed();
        for (pid, tid, sig) in redeliver {
            let _ = sys::pid::tgkill(pid, tid, sig);
        }
        let mut copied = 0u64;
        for (i, unchanged) in live_jobs {
            let p = &mut tree.processes[i];
            let md = MemoryDumper {
                pool: &pool,
                pid: p.pid,
                dir: &opts.image_dir,
                progress: opts.progress.as_ref(),
                done_before: copied,
                total_hint: 0,
                unchanged: &unchanged,
                defer: None,
                map_copy: false,
            };
            let (pages, _, took) = match md.dump(&mut p.vmas) {
                Ok(r) => r,
                Err(e) => {
                    cleanup_dir(&opts.image_dir);
                    return Err(e);
                }
            };
            report.memory_copy += took;
            report.in_parent_bytes += in_parent_bytes(&p.vmas);
            copied += pages.len;
            p.pages = pages;
        }
        report.pages_bytes = copied;
        tree.format_version = tree.version_for_content();
        if let Err(e) = image::write_tree(&opts.image_dir, &tree) {
            cleanup_dir(&opts.image_dir);
            return Err(e.into());
        }
        return Ok(report);
    }
    let deferred = deferred.into_inner().unwrap_or_default();
    if !deferred.is_empty() {
        // Incremental dump with --leave-running: the written pages were copied into memory
        // while frozen; the tree runs again before they reach the image. `tree.img` is written
        // last, so a failure here leaves no image (and the tree running, as it would anyway).
        drop(repaired);
        frozen.detach();
        drop(netlock);
        report.frozen = t_freeze.elapsed();
        for (pid, tid, sig) in redeliver {
            let _ = sys::pid::tgkill(pid, tid, sig);
        }
        let t = Instant::now();
        for d in deferred {
            let pid = d.pid;
            match d.write() {
                // The checksum of data copied while frozen is computed by the write.
                Ok(r) => {
                    if let Some(p) = tree.processes.iter_mut().find(|p| p.pid == pid) {
                        p.pages = r;
                    }
                }
                Err(e) => {
                    cleanup_dir(&opts.image_dir);
                    return Err(e);
                }
            }
        }
        tree.format_version = tree.version_for_content();
        if let Err(e) = image::write_tree(&opts.image_dir, &tree) {
            cleanup_dir(&opts.image_dir);
            return Err(e.into());
        }
        report.deferred_write = t.elapsed();
        return Ok(report);
    }
    // The lock stays in place once the tree is killed: the image names it for the restore.
    if let Some(l) = netlock.as_ref().filter(|_| !opts.leave_running) {
        if let Err(e) = l.record(&opts.image_dir) {
            cleanup_dir(&opts.image_dir);
            return Err(e);
        }
    }
    tree.format_version = tree.version_for_content();
    // A dump that kills the tree writes `tree.img` while frozen (an error there leaves the
    // tree running) but fsyncs it and puts it in place while the killed tree is reaped,
    // before `dump` returns (docs/image-format.md, "Durability").
    let sync_late = !opts.leave_running && !tree_sync_frozen();
    let pending = if sync_late {
        match image::write_tree_pending(&opts.image_dir, &tree) {
            Ok(p) => Some(p),
            Err(e) => {
                cleanup_dir(&opts.image_dir);
                return Err(e.into());
            }
        }
    } else {
        if let Err(e) = image::write_tree(&opts.image_dir, &tree) {
            cleanup_dir(&opts.image_dir);
            return Err(e.into());
        }
        remove_unnamed_pages(&opts.image_dir, &tree);
        None
    };
    report.frozen = t_freeze.elapsed();
    tracing::debug!("tree.img written at {:?}", report.frozen);
    if opts.leave_running {
        drop(repaired);
        frozen.detach();
        drop(netlock);
        for (pid, tid, sig) in redeliver {
            let _ = sys::pid::tgkill(pid, tid, sig);
        }
    } else {
        let t = Instant::now();
        // Killed in repair mode, the sockets close silently (no FIN, no RST); the peers'
        // segments are dropped by the lock until the restore releases it.
        repaired.keep();
        // A tree in its own PID namespace: the init's death killed everything inside, and a
        // restore asks only for the pids inside a new namespace, so the outer pids need not
        // be free (waiting for the host's init to reap them took ~1.4 s here).
        if let Some(l) = netlock {
            l.keep();
        }
        let left = std::thread::scope(|s| {
            // `tree.img` made durable beside the reap (ptrace waits belong to this thread).
            let commit = pending.map(|p| {
                let tree = &tree;
                s.spawn(move || {
                    let r = p.commit();
                    remove_unnamed_pages(&opts.image_dir, tree);
                    r
                })
            });
            let left = frozen.kill_and_wait((!opts.pidns).then_some(REAP_TIMEOUT));
            report.reap_wait = t.elapsed();
            let t_sync = Instant::now();
            let synced = commit.map(|h| h.join());
            report.tree_sync_wait = t_sync.elapsed();
            match synced {
                Some(Ok(Err(e))) => Err(CheckpointError::from(e)),
                Some(Err(_)) => Err(CheckpointError::Tree {
                    pid: opts.root_pid,
                    why: "the thread writing tree.img panicked".into(),
                }),
                _ => Ok(left),
            }
        })?;
        tracing::debug!(
            "reaped after {:?}, tree.img durable {:?} later",
            report.reap_wait,
            report.tree_sync_wait
        );
        if !left.is_empty() {
            return Err(CheckpointError::PidsNotFreed {
                pids: left,
                secs: REAP_TIMEOUT.as_secs(),
            });
        }
    }
    Ok(report)
}

/// Smallest resident anonymous size worth reserving before the freeze: on tmpfs a 64 MiB
/// reservation took 20-30 ms and the frozen copy was no shorter for it, while from 256 MiB up
/// it shortens the freeze and leaves the whole dump as long (branch dump3, docs/PERFORMANCE.md).
const RESERVE_MIN: u64 = 128 << 20;

/// Reserves each process's pages file (from [`RESERVE_MIN`] up) at about its resident
/// anonymous size while the tree still runs (best effort: a wrong estimate only costs the
/// time it would have cost anyway).
fn reserve_space(opts: &DumpOptions) {
    for (pid, rss) in tree_rss(opts.root_pid) {
        if rss >= RESERVE_MIN {
            // One reservation per part file the copy will write (see `memory::pages_parts`).
            let parts = crate::memory::planned_parts(rss);
            if parts <= 1 {
                let name = image::pages_part_name(pid, 0);
                let _ = image::reserve_pages(&opts.image_dir, &name, rss, reserve_parallel);
                continue;
            }
            let each = (rss / parts as u64).next_multiple_of(image::PAGES_CHUNK);
            std::thread::scope(|s| {
                for k in 0..parts {
                    let name = image::pages_part_name(pid, k);
                    s.spawn(move || {
                        image::reserve_pages(&opts.image_dir, &name, each, |f, len| {
                            sys::files::fallocate(f, len)
                        })
                    });
                }
            });
        }
    }
}

/// Pids of the tree with their resident anonymous memory (bytes), walked while it runs.
fn tree_rss(root: i32) -> Vec<(i32, u64)> {
    let mut queue = vec![root];
    let mut out = Vec::new();
    while let Some(pid) = queue.pop() {
        if out.len() >= 4096 {
            break;
        }
        let rss = sys::proc::read_to_string(&format!("/proc/{pid}/status"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("RssAnon:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            });
        out.push((pid, rss.unwrap_or(0) * 1024));
        queue.extend(sys::proc::children(pid).unwrap_or_default());
    }
    out
}

/// Moves the pages files of the older image `old` into the new image directory, one per
/// part file each process of the tree will be written to (largest file to the largest
/// part), so that the dump overwrites
/// page cache that exists instead of allocating new. `old` stops being an image first (its
/// `tree.img` is removed), then its page files are moved or removed, then the directory is
/// removed if nothing else is left in it.
fn recycle_space(opts: &DumpOptions, old: &std::path::Path) -> Result<()> {
    let bad = |why: String| CheckpointError::ImageDir {
        path: old.to_path_buf(),
        why,
    };
    let same = |a: &std::path::Path, b: &std::path::Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if same(old, &opts.image_dir) {
        return Err(bad(
            "cannot recycle the image directory being written".into()
        ));
    }
    if !old.join(image::TREE_FILE).is_file() {
        return Err(bad("holds no image to recycle (no tree.img)".into()));
    }
    // Checked before anything is consumed: the pages files are moved with `rename`.
    {
        use std::os::unix::fs::MetadataExt;
        let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev());
        if let (Ok(a), Ok(b)) = (dev(old), dev(&opts.image_dir)) {
            if a != b {
                return Err(bad(format!(
                    "is on another filesystem than the image directory {} (its pages files are moved, not copied)",
                    opts.image_dir.display()
                )));
            }
        }
    }
    std::fs::remove_file(old.join(image::TREE_FILE))
        .map_err(|e| bad(format!("cannot remove tree.img: {e}")))?;
    let mut files: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(old)
        .map_err(|e| bad(format!("cannot list: {e}")))?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            (n.starts_with("pages-") || n.starts_with("shmem-")) && n.ends_with(".img")
        })
        .filter_map(|e| Some((e.metadata().ok()?.len(), e.path())))
        .collect();
    files.sort();
    // One slot per part file each process's pages will be written to (about its resident
    // anonymous size split evenly), largest first.
    let mut slots: Vec<(u64, i32, usize)> = Vec::new();
    for (pid, rss) in tree_rss(opts.root_pid) {
        let n = crate::memory::planned_parts(rss);
        for k in 0..n {
            slots.push((rss / n as u64, pid, k));
        }
    }
    slots.sort_by_key(|&(size, _, _)| std::cmp::Reverse(size));
    for (rss, pid, k) in slots {
        let Some((size, from)) = files.pop() else {
            break;
        };
        let to = opts.image_dir.join(image::pages_part_name(pid, k));
        std::fs::rename(&from, &to).map_err(|e| {
            bad(format!(
                "cannot move {} to {}: {e} (the old image must be on the same filesystem)",
                from.display(),
                to.display()
            ))
        })?;
        // A smaller file gets the missing tail reserved, as a fresh one would.
        let want = image::PAGES_HEADER_LEN + rss;
        if size < want {
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&to) {
                let _ = sys::files::fallocate_range(&f, size, want - size);
            }
        }
    }
    for (_, f) in files {
        let _ = std::fs::remove_file(f);
    }
    cleanup_dir(old);
    let _ = std::fs::remove_dir(old);
    Ok(())
}

/// Reserves `len` bytes of `file` with one `fallocate` per dump worker on disjoint 2 MiB
/// aligned parts, at once: on tmpfs the reservation allocates (and clears) every page, work
/// that spreads over the CPUs like the copy that follows.
fn reserve_parallel(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    const ALIGN: u64 = 2 << 20;
    let n = crate::memory::dump_threads() as u64;
    let part = (len / n).div_ceil(ALIGN) * ALIGN;
    if n < 2 || part >= len {
        return sys::files::fallocate(file, len);
    }
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..n)
            .map(|i| (i * part, (len.saturating_sub(i * part)).min(part)))
            .filter(|&(_, l)| l > 0)
            .map(|(o, l)| s.spawn(move || sys::files::fallocate_range(file, o, l)))
            .collect();
        parts
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("fallocate thread panicked")))
            })
            .collect::<std::io::Result<Vec<()>>>()
            .map(|_| ())
    })
}

fn prepare_dir(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| CheckpointError::ImageDir {
        path: dir.to_path_buf(),
        why: format!("cannot create: {e}"),
    })?;
    if dir.join(image::TREE_FILE).exists() {
        return Err(CheckpointError::ImageDir {
            path: dir.to_path_buf(),
            why: "already holds an image".into(),
        });
    }
    Ok(())
}

fn cleanup_dir(dir: &std::path::Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("pages-")
                || n.starts_with("shmem-")
                || n.starts_with(".tree")
                || n == sys::netlock::RECORD_FILE
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The parent of an incremental dump, read and checked (with its whole chain).
struct ParentImage {
    tree: Tree,
    /// As recorded in the child: relative to the child's directory, or absolute.
    recorded: String,
    digest: u32,
    /// Its dirty tracking was already used by another child (or a failed attempt): its pages
    /// since are unknown, so everything is dumped whole.
    consumed: bool,
}

/// Marker left in a parent image once a child dump has read (and reset) its dirty tracking.
pub const CONSUMED_MARKER: &str = "dirty-consumed";

impl ParentImage {
    fn open(dir: &std::path::Path, child: &std::path::Path) -> Result<Self> {
        let chain = image::read_chain(dir)?;
        let tree =
            chain
                .into_iter()
                .next()
                .map(|(_, t)| t)
                .ok_or_else(|| CheckpointError::ImageDir {
                    path: dir.to_path_buf(),
                    why: "parent image is empty".into(),
                })?;
        let digest = image::tree_digest(dir)?;
        let recorded = relative_to(dir, child);
        let marker = dir.join(CONSUMED_MARKER);
        let consumed = marker.exists();
        if consumed {
            tracing::warn!(
                "parent {}: its dirty tracking was already used by another dump; every page is dumped again",
                dir.display()
            );
        } else if tree.processes.iter().any(|p| p.dirty.is_some()) {
            // Written before the tracker is read: a second child of the same parent, or a retry
            // after a failure, must not trust tracking that this dump resets.
            std::fs::write(&marker, b"dirty tracking consumed by a child dump\n").map_err(|e| {
                CheckpointError::ImageDir {
                    path: marker.clone(),
                    why: format!("cannot write: {e}"),
                }
            })?;
        }
        Ok(ParentImage {
            tree,
            recorded,
            digest,
            consumed,
        })
    }
}

/// `parent` as the child records it: relative to `child` when both can be resolved, else
/// absolute.
fn relative_to(parent: &std::path::Path, child: &std::path::Path) -> String {
    let (Ok(p), Ok(c)) = (parent.canonicalize(), child.canonicalize()) else {
        return parent.to_string_lossy().into_owned();
    };
    let pc: Vec<_> = p.components().collect();
    let cc: Vec<_> = c.components().collect();
    let common = pc.iter().zip(&cc).take_while(|(a, b)| a == b).count();
    let mut rel = std::path::PathBuf::new();
    for _ in common..cc.len() {
        rel.push("..");
    }
    for comp in &pc[common..] {
        rel.push(comp);
    }
    if rel.as_os_str().is_empty() {
        return p.to_string_lossy().into_owned();
    }
    rel.to_string_lossy().into_owned()
}

#[allow(clippy::too_many_arguments)] // the per-dump state threaded through one pass; a struct would only rename it
fn collect(
    opts: &DumpOptions,
    parent: Option<&ParentImage>,
    frozen: &Frozen,
    report: &mut DumpReport,
    redeliver: &mut Vec<(i32, i32, i32)>,
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    warming: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
    repaired: &mut crate::sockets::RepairGuard,
    live_jobs: &mut Vec<(usize, crate::incr::Ranges)>,
    deferred: &std::sync::Mutex<Vec<crate::memory::DeferredPages>>,
    pre: &crate::vmflags::PreRead,
) -> Result<Tree> {
    // A full dump copies each process's pages on a copier thread (with its workers) as soon
    // as its mappings are known, while this thread collects the rest of the state of that
    // process and of the next ones (registers, injected calls, smaps, files). Everything is
    // read while the tree is frozen; the scope joins the copier before the tree can run.
    let overlap = parent.is_none() && !opts.live_memory && !copy_serial();
    let take_warm = |warming: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>| {
        if let Some(bufs) = warming.and_then(|h| h.join().ok()) {
            if let Ok(mut p) = pool.lock() {
                p.extend(bufs);
            }
        }
    };
    let warming = if overlap {
        warming
    } else {
        take_warm(warming);
        None
    };
    // Set when the state collection failed: the copies still queued are skipped.
    let cancel = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::channel::<CopyReq>();
        let cancel = &cancel;
        let copier = overlap.then(|| {
            s.spawn(move || {
                take_warm(warming);
                copy_loop(opts, pool, &rx, cancel)
            })
        });
        let res = collect_procs(
            opts,
            parent,
            frozen,
            report,
            redeliver,
            pool,
            repaired,
            live_jobs,
            deferred,
            pre,
            copier.as_ref().map(|_| &tx),
        );
        if res.is_err() {
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        drop(tx);
        let t_wait = Instant::now();
        let copies = match copier {
            Some(h) => h.join().map_err(|_| CheckpointError::Tree {
                pid: opts.root_pid,
                why: "memory copy thread panicked".into(),
            }),
            None => Ok(Vec::new()),
        };
        report.copy_wait = t_wait.elapsed();
        // The state collection's error first: it happened first, or stopped the copies.
        let (mut tree, mut pending) = res?;
        let copies = copies?;
        for done in copies {
            let (pages, _bytes, took) = done.res?;
            report.memory_copy += took;
            let Some(i) = pending.iter().position(|(idx, _)| *idx == done.index) else {
                return Err(CheckpointError::Tree {
                    pid: done.pid,
                    why: "internal: a memory copy nobody asked for".into(),
                });
            };
            let (idx, madvise) = pending.swap_remove(i);
            let p = &mut tree.processes[idx];
            let mut vmas = done.vmas;
            for (v, m) in vmas.iter_mut().zip(madvise) {
                v.madvise = m;
            }
            p.vmas = vmas;
            report.pages_bytes += pages.len;
            p.pages = pages;
        }
        if let Some((idx, _)) = pending.first() {
            return Err(CheckpointError::Tree {
                pid: tree.processes[*idx].pid,
                why: "internal: the memory copy of this process was not done".into(),
            });
        }
        Ok(tree)
    })
}

/// Removes the pages files reserved for processes that were not dumped (they exited
/// meanwhile).
fn remove_unnamed_pages(dir: &std::path::Path, tree: &Tree) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let named =
                |p: &image::Process| p.pages.file == n || p.pages.parts.iter().any(|q| q.file == n);
            if n.starts_with("pages-") && !tree.processes.iter().any(named) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `UNDERSTUDY_TREE_SYNC_FROZEN=1`: a dump that kills the tree fsyncs `tree.img` while
/// frozen, before the kill, as before (measurements only).
fn tree_sync_frozen() -> bool {
    std::env::var("UNDERSTUDY_TREE_SYNC_FROZEN").ok().as_deref() == Some("1")
}

/// `UNDERSTUDY_DUMP_SERIAL=1`: copy each process's memory on the collecting thread, after
/// its state, as before the overlap (measurements only).
fn copy_serial() -> bool {
    std::env::var("UNDERSTUDY_DUMP_SERIAL").ok().as_deref() == Some("1")
}

/// One process's memory copy handed to the copier thread: its mappings, without madvise
/// flags (added when the copy is back).
struct CopyReq {
    index: usize,
    pid: i32,
    vmas: Vec<Vma>,
}

/// A finished copy: the mappings with their page runs, and the pages file it wrote.
struct CopyDone {
    index: usize,
    pid: i32,
    vmas: Vec<Vma>,
    res: Result<(image::PagesRef, u64, Duration)>,
}

/// The copier thread: copies each requested process in order (each copy spreads over the
/// dump workers), and stops copying after the first failure or once `cancel` is set (the
/// state collection failed).
fn copy_loop(
    opts: &DumpOptions,
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    rx: &std::sync::mpsc::Receiver<CopyReq>,
    cancel: &std::sync::atomic::AtomicBool,
) -> Vec<CopyDone> {
    let mut out = Vec::new();
    let mut done_before = 0u64;
    let mut failed = false;
    for req in rx.iter() {
        let mut vmas = req.vmas;
        let res = if failed || cancel.load(std::sync::atomic::Ordering::Relaxed) {
            Err(CheckpointError::Tree {
                pid: req.pid,
                why: "memory not copied: the dump failed earlier (an earlier copy or the state collection)".into(),
            })
        } else {
            let md = MemoryDumper {
                pool,
                pid: req.pid,
                dir: &opts.image_dir,
                progress: opts.progress.as_ref(),
                done_before,
                total_hint: 0,
                unchanged: &[],
                defer: None,
                map_copy: opts.reuse_from.is_some(),
            };
            md.dump(&mut vmas)
        };
        match &res {
            Ok((pages, _, _)) => done_before += pages.len,
            Err(_) => failed = true,
        }
        tracing::debug!("pid {}: memory copied (overlapped)", req.pid);
        out.push(CopyDone {
            index: req.index,
            pid: req.pid,
            vmas,
            res,
        });
    }
    out
}

/// Processes whose memory copy was handed to the copier: index in `Tree::processes`, and the
/// madvise flags of each mapping in order.
type PendingCopies = Vec<(usize, Vec<Vec<String>>)>;

#[allow(clippy::too_many_arguments)] // the per-dump state threaded through one pass; a struct would only rename it
fn collect_procs(
    opts: &DumpOptions,
    parent: Option<&ParentImage>,
    frozen: &Frozen,
    report: &mut DumpReport,
    redeliver: &mut Vec<(i32, i32, i32)>,
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    repaired: &mut crate::sockets::RepairGuard,
    live_jobs: &mut Vec<(usize, crate::incr::Ranges)>,
    deferred: &std::sync::Mutex<Vec<crate::memory::DeferredPages>>,
    pre: &crate::vmflags::PreRead,
    copier: Option<&std::sync::mpsc::Sender<CopyReq>>,
) -> Result<(Tree, PendingCopies)> {
    let mut files = FileTable::default();
    let mut shm = ShmemTable::default();
    let mut processes = Vec::with_capacity(frozen.procs.len());
    let mut pending = Vec::new();
    let mut copied = 0u64;
    for (i, fp) in frozen.procs.iter().enumerate() {
        let pp = parent.and_then(|par| {
            (!par.consumed)
                .then(|| par.tree.processes.iter().find(|q| q.pid == fp.pid))
                .flatten()
        });
        let to_copier = copier.map(|tx| (i, tx));
        let (mut p, skip_fd, unchanged, madvise) = dump_process(
            opts, pp, fp, copied, report, &mut shm, redeliver, pool, deferred, pre, to_copier,
        )?;
        if let Some(m) = madvise {
            pending.push((i, m));
        }
        if opts.live_memory {
            live_jobs.push((i, unchanged));
        }
        if i == 0 {
            p.ppid = 0;
        }
        p.fds = files.add_process(fp.pid, &mut shm, &opts.image_dir, skip_fd)?;
        copied += p.pages.len;
        processes.push(p);
    }
    report.pages_bytes = copied;
    let pipes = files.pipe_data()?;
    std::mem::swap(repaired, &mut files.sockets.repaired);
    files.sockets.check(&files.files)?;
    std::mem::take(&mut files.epolls).resolve(&mut processes)?;
    let zombies = frozen
        .zombies
        .iter()
        .map(|&pid| read_zombie(opts, pid))
        .collect::<Result<Vec<_>>>()?;
    report.zombies = zombies.len();
    let mut tree = Tree {
        format_version: FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        root_pid: opts.root_pid,
        pidns: opts.pidns,
        parent: parent.map(|p| p.recorded.clone()),
        parent_digest: parent.map(|p| p.digest),
        live_memory: opts.live_memory,
        processes,
        files: files.files,
        shmem: shm.objects,
        pipes,
        zombies,
    };
    tree.format_version = tree.version_for_content();
    Ok((tree, pending))
}

/// Records a zombie of the frozen tree: its ids and its wait status (`/proc/PID/stat` field
/// 52), stable while its parent is frozen.
fn read_zombie(opts: &DumpOptions, pid: i32) -> Result<image::Zombie> {
    let status = sys::proc::status(pid).pid(pid)?;
    let stat = sys::proc::stat(pid).pid(pid)?;
    let end =
        image::ExitHow::from_wait_status(stat.exit_code).ok_or_else(|| CheckpointError::Tree {
            pid,
            why: format!(
                "zombie with wait status {:#x}, which is no exit",
                stat.exit_code
            ),
        })?;
    let ns = |v: &[i32], outer: i32| {
        if opts.pidns {
            v.last().copied().unwrap_or(outer)
        } else {
            outer
        }
    };
    Ok(image::Zombie {
        pid,
        ns_pid: ns(&status.nspid, pid),
        ppid: stat.ppid,
        pgid: ns(&status.nspgid, stat.pgrp),
        sid: ns(&status.nssid, stat.session),
        comm: status.name,
        exit_signal: stat.exit_signal,
        end,
    })
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Dumps one process; also returns the fd of the dirty tracker in it (left out of `fds`) and
/// the ranges left in the parent (for a live copy done by the caller).
// The dump state is threaded through explicitly (parent record, report, tables, buffers).
#[allow(clippy::too_many_arguments)]
fn dump_process(
    opts: &DumpOptions,
    parent: Option<&Process>,
    fp: &FrozenProcess,
    copied_before: u64,
    report: &mut DumpReport,
    shm: &mut ShmemTable,
    redeliver: &mut Vec<(i32, i32, i32)>,
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    deferred: &std::sync::Mutex<Vec<crate::memory::DeferredPages>>,
    pre: &crate::vmflags::PreRead,
    copier: Option<(usize, &std::sync::mpsc::Sender<CopyReq>)>,
) -> Result<DumpedProcess> {
    let pid = fp.pid;
    let t0 = Instant::now();
    let maps = sys::proc::maps(pid).pid(pid)?;
    // A full copy of this process goes to the copier thread now, before the rest of its
    // state is read (nothing below writes to its memory: injected calls write only to a
    // scratch mapping of their own, outside every mapping listed here).
    let copier = copier.filter(|_| parent.is_none() && !opts.live_memory);
    let mut vmas = Vec::new();
    for m in &maps {
        if let Some(mut kind) = classify(pid, m)? {
            if let image::VmaKind::Shmem { id, .. } = &mut kind {
                let key = (libc::makedev(m.dev_major, m.dev_minor), m.inode);
                let name = match m.path.trim_end_matches(" (deleted)") {
                    "/dev/zero" => "shared-anon".to_string(),
                    other => other.trim_start_matches('/').to_string(),
                };
                let via = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                *id = shm.object(&opts.image_dir, pid, key, &via, &name)?;
            }
            vmas.push(Vma {
                start: m.start,
                end: m.end,
                prot: m.prot(),
                kind,
                pages: Vec::new(),
                madvise: Vec::new(),
            });
        }
    }
    let starts: Vec<u64> = vmas.iter().map(|v| v.start).collect();
    let sent = if let Some((index, tx)) = copier {
        tx.send(CopyReq {
            index,
            pid,
            vmas: std::mem::take(&mut vmas),
        })
        .map_err(|_| CheckpointError::Tree {
            pid,
            why: "internal: the memory copy thread is gone".into(),
        })?;
        true
    } else {
        false
    };
    let status = sys::proc::status(pid).pid(pid)?;
    let stat = sys::proc::stat(pid).pid(pid)?;
    let ns_pid = if opts.pidns {
        status.nspid.last().copied().unwrap_or(pid)
    } else {
        pid
    };

    // Threads first, before any injected call touches registers.
    let mut threads = Vec::with_capacity(fp.threads.len());
    for t in &fp.threads {
        let tid = t.tid;
        let regs = ptrace::get_regs(tid).pid(pid)?;
        let xstate = ptrace::get_xstate(tid).pid(pid)?;
        let sigmask = ptrace::get_sigmask(tid).pid(pid)?;
        let rseq = ptrace::get_rseq(tid).pid(pid)?;
        let mut pending: Vec<Hex> = ptrace::peek_siginfo(tid, 0)
            .pid(pid)?
            .into_iter()
            .map(|s| Hex(s.to_vec()))
            .collect();
        if let Some((_, si)) = t.stolen {
            pending.push(Hex(si.to_vec()));
        }
        let ns_tid = if opts.pidns {
            sys::proc::read_to_string(&format!("/proc/{pid}/task/{tid}/status"))
                .ok()
                .and_then(|s| sys::proc::parse_status(&s).ok())
                .and_then(|s| s.nspid.last().copied())
                .unwrap_or(tid)
        } else {
            tid
        };
        threads.push(Thread {
            tid,
            ns_tid,
            regs,
            xstate: Hex(xstate),
            sigmask,
            rseq,
            sigaltstack: (0, libc::SS_DISABLE, 0),
            pending,
            clear_child_tid: 0,
            comm: sys::proc::read_to_string(&format!("/proc/{pid}/task/{tid}/comm"))
                .map(|c| c.trim_end_matches('\n').to_string())
                .unwrap_or_default(),
        });
    }

    // POSIX timers (`timer_create`): listed here, their times read by injected calls below.
    let mut posix_timers = crate::timers::list(pid, |tid| {
        threads.iter().find(|t| t.tid == tid).map(|t| t.ns_tid)
    })?;

    // Seccomp: filters are read from the main thread; every thread must have the same ones.
    if status.seccomp == 1 {
        return Err(CheckpointError::Unsupported {
            pid,
            what: "seccomp".into(),
            why: "strict mode cannot be checkpointed".into(),
        });
    }
    let seccomp_filters: Vec<Hex> = if status.seccomp == 2 {
        let read = |tid: i32| {
            sys::seccomp::filters(tid).map_err(|e| CheckpointError::Tree {
                pid,
                why: format!("seccomp filters: {e}"),
            })
        };
        let main = read(pid)?;
        for t in fp.threads.iter().skip(1) {
            if read(t.tid)? != main {
                return Err(CheckpointError::Unsupported {
                    pid,
                    what: format!("thread {} seccomp filters", t.tid),
                    why: "threads with different seccomp filters cannot be checkpointed yet".into(),
                });
            }
        }
        main.iter().map(|f| Hex(f.to_bytes())).collect()
    } else {
        Vec::new()
    };

    const KEPT_FLAGS: [&str; 5] = ["hg", "nh", "dc", "wf", "dd"];
    // `/proc/PID/smaps` (the only source of the madvise flags) walks every page table: 10-30 ms
    // per GiB of present memory here. An incremental dump read it before the freeze and reads
    // it again now only if a `maps` line changed since (see `vmflags`).
    let t_flags = Instant::now();
    let (flags, source) = pre.flags(pid, &maps).pid(pid)?;
    if source == crate::vmflags::Source::PreRead {
        report.vm_flags_reused += 1;
    }
    report.vm_flags_read += t_flags.elapsed();
    let madvise: Vec<Vec<String>> = starts
        .iter()
        .map(|start| {
            flags
                .get(start)
                .map(|f| {
                    f.iter()
                        .filter(|x| KEPT_FLAGS.contains(&x.as_str()))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    let pending_madvise = if sent {
        Some(madvise)
    } else {
        for (v, m) in vmas.iter_mut().zip(madvise) {
            v.madvise = m;
        }
        None
    };
    let vdso =
        maps.iter()
            .find(|m| m.path == "[vdso]")
            .ok_or_else(|| CheckpointError::Unsupported {
                pid,
                what: "address space".into(),
                why: "has no [vdso]".into(),
            })?;
    let insn = sys::remote::find_syscall_insn(pid, vdso.start, vdso.end).pid(pid)?;

    tracing::debug!(
        "pid {pid}: threads, maps, seccomp, madvise flags read at {:?}",
        t0.elapsed()
    );
    // An incremental copy into memory needs no ptrace stop: on its own thread it scans the
    // mappings for data now, during the dirty-tracker read, and copies the written pages
    // during the injected calls below (the tree stays frozen until it is joined).
    let early_copy =
        (!opts.live_memory && opts.leave_running && parent.is_some_and(|p| p.dirty.is_some()))
            .then(|| {
                let tracked_before = parent
                    .and_then(|p| p.dirty.as_ref())
                    .map(|d| d.tracked.as_slice())
                    .unwrap_or_default();
                crate::memory::spawn_deferred_copy(
                    pool,
                    pid,
                    opts,
                    std::mem::take(&mut vmas),
                    tracked_before,
                )
            });
    // Incremental: the tracker the parent dump left in the process says what changed since.
    let mut tracker = None;
    let mut unchanged = Vec::new();
    let mut delta_for_copy = None;
    let mut written_bytes = None;
    if let Some(tr) = parent.and_then(|p| p.dirty.as_ref().map(|d| (p, d))) {
        match crate::incr::collect(pid, tr.0, tr.1) {
            Ok((t, delta)) => {
                report.incremental_processes += 1;
                report.written_pages += delta.written_pages;
                written_bytes = Some(delta.written_pages.saturating_mul(sys::PAGE_SIZE));
                report.dirty_scan += delta.scan_time;
                unchanged = delta.unchanged.clone();
                delta_for_copy = Some(delta);
                tracker = Some(t);
            }
            Err(e) => tracing::warn!("pid {pid}: dirty tracking lost ({e}); dumping every page"),
        }
    }
    // A tracker of an earlier chain still open in the process (a new full dump): re-armed
    // below by re-reading it from scratch.
    let stale_uffd = if tracker.is_none() {
        own_uffd(
            pid,
            parent.and_then(|p| p.dirty.as_ref()).map(|d| d.uffd_fd),
        )
    } else {
        None
    };

    tracing::debug!("pid {pid}: dirty tracker read at {:?}", t0.elapsed());
    // The early copy (started above) reads the written pages from now on, during the injected
    // calls; `None` if tracking was lost or the delta is too large to hold in memory.
    if let Some(c) = &early_copy {
        c.start(
            written_bytes
                .is_some_and(|b| b <= DEFER_MAX_BYTES)
                .then(|| crate::memory::CopyPlan {
                    delta: delta_for_copy.take().unwrap_or_default(),
                }),
        );
    }
    // Injected calls: signal handlers, brk, itimers, alternate signal stacks.
    let mut sigactions = Vec::with_capacity(64);
    let mut itimers = Vec::with_capacity(3);
    let brk;
    {
        let mut rs = RemoteSyscalls::new(pid, insn).pid(pid)?;
        let scratch = rs.map_scratch(None, 4096).pid(pid)?.addr();
        let mut b = [0u8; 32];
        // Each old action lands in its own 32-byte slot of the scratch page; one read gets all.
        for sig in 1..=64u64 {
            let slot = scratch + (sig - 1) * 32;
            rs.syscall("rt_sigaction", nr::RT_SIGACTION, [sig, 0, slot, 8, 0, 0])
                .pid(pid)?;
        }
        let mut all = [0u8; 64 * 32];
        rs.get(0, &mut all).pid(pid)?;
        for a in all.chunks_exact(32) {
            sigactions.push(SigAction {
                handler: le_u64(a, 0),
                flags: le_u64(a, 8),
                restorer: le_u64(a, 16),
                mask: le_u64(a, 24),
            });
        }
        brk = rs.syscall("brk(0)", nr::BRK, [0; 6]).pid(pid)?;
        for which in 0..3u64 {
            rs.syscall("getitimer", nr::GETITIMER, [which, scratch, 0, 0, 0, 0])
                .pid(pid)?;
            rs.get(0, &mut b).pid(pid)?;
            let us = |at: usize| {
                le_u64(&b, at)
                    .saturating_mul(1_000_000)
                    .saturating_add(le_u64(&b, at + 8))
            };
            itimers.push((us(0), us(16)));
        }
        crate::timers::read_times(&mut rs, pid, scratch, 128, &mut posix_timers)?;
        for (i, t) in fp.threads.iter().enumerate() {
            let mut sb = [0u8; 24];
            let mut ct = [0u8; 8];
            {
                let mut own;
                let trs: &mut RemoteSyscalls = if i == 0 {
                    &mut rs
                } else {
                    own = RemoteSyscalls::new(t.tid, insn).pid(pid)?;
                    &mut own
                };
                trs.syscall("sigaltstack", nr::SIGALTSTACK, [0, scratch, 0, 0, 0, 0])
                    .pid(pid)?;
                // PR_GET_TID_ADDRESS = 40
                trs.syscall(
                    "prctl(PR_GET_TID_ADDRESS)",
                    nr::PRCTL,
                    [40, scratch + 64, 0, 0, 0, 0],
                )
                .pid(pid)?;
                if i != 0 {
                    for (sig, info) in trs.take_deferred_signals() {
                        threads[i].pending.push(Hex(info.to_vec()));
                        redeliver.push((pid, t.tid, sig));
                    }
                }
            }
            rs.get(0, &mut sb).pid(pid)?;
            rs.get(64, &mut ct).pid(pid)?;
            threads[i].clear_child_tid = u64::from_le_bytes(ct);
            let flags = i32::from_le_bytes([sb[8], sb[9], sb[10], sb[11]]);
            threads[i].sigaltstack = (le_u64(&sb, 0), flags, le_u64(&sb, 16));
        }
        // Signals that arrived while a call was injected were held back: they are pending in
        // the image and sent again if the tree runs on.
        for (sig, info) in rs.take_deferred_signals() {
            threads[0].pending.push(Hex(info.to_vec()));
            redeliver.push((pid, pid, sig));
        }
        if tracker.is_none() && opts.leave_running {
            let armed = match stale_uffd {
                Some(fd) => sys::dirty::DirtyTracker::reattach(
                    pid,
                    fd,
                    Vec::new(),
                    sys::dirty::Selection::default(),
                )
                .and_then(|mut t| t.collect().map(|_| t)),
                None => {
                    sys::dirty::DirtyTracker::arm_remote(pid, &mut rs, &crate::incr::arm_options())
                }
            };
            match armed {
                Ok(t) => tracker = Some(t),
                Err(e) => tracing::warn!(
                    "pid {pid}: dirty tracking not armed ({e}); a later --parent dump copies every page"
                ),
            }
        }
        rs.finish().pid(pid)?;
    }
    tracing::debug!("pid {pid}: injected calls done at {:?}", t0.elapsed());
    let shared_pending = ptrace::peek_siginfo(pid, ptrace::PEEKSIGINFO_SHARED)
        .pid(pid)?
        .into_iter()
        .map(|s| Hex(s.to_vec()))
        .collect();

    // Live copy: done by the caller once the tree runs again.
    let mut early = None;
    if let Some(h) = early_copy {
        let (res, done_vmas) = h.join(pool, deferred)?;
        vmas = done_vmas;
        early = res;
    }
    let pages = if let Some(res) = early {
        let (pages, _bytes, took) = res?;
        report.memory_copy += took;
        tracing::debug!(
            "pid {pid}: memory copied (during the injected calls) at {:?}",
            t0.elapsed()
        );
        report.in_parent_bytes += in_parent_bytes(&vmas);
        pages
    } else if opts.live_memory || sent {
        image::PagesRef::default()
    } else {
        let md = MemoryDumper {
            pool,
            pid,
            dir: &opts.image_dir,
            progress: opts.progress.as_ref(),
            done_before: copied_before,
            total_hint: 0,
            unchanged: &unchanged,
            // An incremental dump that leaves the tree running copies the written pages into
            // memory and writes them once the tree runs again (bounded: a large delta is
            // written while frozen, as a full dump is).
            defer: (opts.leave_running && written_bytes.is_some_and(|b| b <= DEFER_MAX_BYTES))
                .then_some(deferred),
            map_copy: opts.reuse_from.is_some() && parent.is_none(),
        };
        let (pages, _bytes, took) = md.dump(&mut vmas)?;
        report.memory_copy += took;
        tracing::debug!("pid {pid}: memory copied at {:?}", t0.elapsed());
        report.in_parent_bytes += in_parent_bytes(&vmas);
        pages
    };
    let skip_fd = tracker.as_ref().and_then(|t| t.remote_fd()).or(stale_uffd);
    let dirty = if opts.leave_running {
        tracker.as_ref().and_then(|t| {
            Some(image::DirtyTracking {
                uffd_fd: t.remote_fd()?,
                tracked: t.tracked().to_vec(),
            })
        })
    } else {
        None
    };

    let mm = MmInfo {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: sys::proc::auxv(pid).pid(pid)?,
    };
    let proc = Process {
        pid,
        ns_pid,
        ppid: stat.ppid,
        pgid: if opts.pidns {
            status.nspgid.last().copied().unwrap_or(stat.pgrp)
        } else {
            stat.pgrp
        },
        sid: if opts.pidns {
            status.nssid.last().copied().unwrap_or(stat.session)
        } else {
            stat.session
        },
        comm: status.name.clone(),
        exe: sys::proc::read_link(&format!("/proc/{pid}/exe")).unwrap_or_default(),
        threads,
        mm,
        vmas,
        pages,
        sigactions,
        shared_pending,
        fds: Vec::new(),
        cwd: sys::proc::read_link(&format!("/proc/{pid}/cwd")).pid(pid)?,
        root: sys::proc::read_link(&format!("/proc/{pid}/root")).pid(pid)?,
        umask: status.umask,
        rlimits: sys::proc::rlimits(pid).pid(pid)?,
        creds: Creds {
            uid: status.uid,
            gid: status.gid,
            groups: status.groups.clone(),
        },
        itimers,
        exit_signal: stat.exit_signal,
        seccomp_filters,
        no_new_privs: status.no_new_privs,
        epoll_regs: Vec::new(),
        dirty,
        posix_timers,
    };
    Ok((proc, skip_fd, unchanged, pending_madvise))
}

/// What [`dump_process`] returns: the process (its memory still being copied when the copy
/// went to the copier thread), the fd of the dirty tracker in it (left out of `fds`), the
/// ranges left in the parent (for a live copy done by the caller), and, when its copy went to
/// the copier thread, the madvise flags of its mappings in order.
type DumpedProcess = (
    Process,
    Option<i32>,
    crate::incr::Ranges,
    Option<Vec<Vec<String>>>,
);

fn in_parent_bytes(vmas: &[Vma]) -> u64 {
    vmas.iter()
        .flat_map(|v| v.pages.iter())
        .filter(|r| r.in_parent)
        .map(|r| r.npages * sys::PAGE_SIZE)
        .sum()
}

/// The userfaultfd the engine left in `pid` earlier (`recorded` if still one, else the only
/// userfaultfd of the process), if any.
fn own_uffd(pid: i32, recorded: Option<i32>) -> Option<i32> {
    let is_uffd = |fd: i32| {
        sys::proc::read_link(&format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|l| l == "anon_inode:[userfaultfd]")
    };
    if let Some(fd) = recorded.filter(|&fd| is_uffd(fd)) {
        return Some(fd);
    }
    let all: Vec<i32> = sys::proc::fds(pid)
        .ok()?
        .into_iter()
        .filter(|&fd| is_uffd(fd))
        .collect();
    (all.len() == 1).then(|| all[0])
}
