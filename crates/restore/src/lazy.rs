//! Lazy (post-copy) restore: the tree runs before its private anonymous memory is in place.
//!
//! Each restored process gets a userfaultfd created inside it (injected `userfaultfd()`,
//! pulled with `pidfd_getfd`, closed in the target). Every private anonymous mapping that has
//! pages in the image is registered for `MISSING` faults instead of being written; a
//! [`sys::uffd_lazy::LazyServer`] per process, on its own thread from that moment on (the
//! kernel itself may touch that memory while the restore continues, e.g. `rseq`), answers
//! faults from the process's pages file (and, for an incremental image, from its ancestors'
//! files) and, once the tree runs, pushes the rest in the background. Every chunk of page data is checked against the pages file's chunk table
//! (version 4, one CRC32C per 256 KiB) as it is read, before any of it is served; pages files
//! of versions 1 and 2 have no table and are verified whole before the tree starts.
//! Everything else (file-backed private pages, shared memory) is written eagerly as usual.
//!
//! If a page cannot be served (file truncated, removed and unreadable, a checksum mismatch,
//! a read error), the tree is SIGKILLed before any server is dropped: a faulting thread stays
//! blocked until it dies and never sees a wrong page. If the restorer itself dies, the
//! [`sys::watchdog::Watchdog`] (which holds copies of the userfaultfds, so faults keep
//! waiting) kills the tree.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image::{ChunkTable, Process, VmaKind};
use sys::remote::nr;
use sys::uffd_lazy::{LazyError, LazyServer, LazyStats, PageSource, LAZY_FEATURES};
use sys::{RemoteSyscalls, PAGE_SIZE};

use crate::{RestoreError, RestoreOptions, RestoreReport, Result};

/// Tuning of the page servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyOptions {
    /// pages filled per fault (the faulting page and the following pending ones)
    pub prefetch_pages: usize,
    /// pages per background push once the tree runs (0 = serve faults only: the restore then
    /// completes only once the tree has touched every page)
    pub push_pages: usize,
    /// serve faults only until [`LazyRestore::start_push`] is called (tests, staged starts)
    pub hold_push: bool,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self {
            prefetch_pages: 16,
            push_pages: 512,
            hold_push: false,
        }
    }
}

/// Where the lazy restore stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyProgress {
    /// pages registered for lazy filling (data pages of the image)
    pub total_pages: u64,
    /// of those, still missing
    pub pending_pages: u64,
    /// faults served
    pub faults: u64,
    /// pages filled in answer to faults (with prefetch)
    pub fault_pages: u64,
    /// pages filled by the background push
    pub pushed_pages: u64,
}

/// What a completed lazy restore did.
#[derive(Debug, Clone, Copy, Default)]
pub struct LazySummary {
    pub progress: LazyProgress,
    /// from the end of [`restore_lazy`] (tree running) until every page was in place
    pub serve_time: Duration,
}

/// A per-process page server thread: it returns its server so that it is dropped (and the
/// userfaultfd closed) only after the tree has been killed when serving failed.
type Served = (std::result::Result<(), LazyError>, Box<dyn Send>);

#[derive(Default)]
struct Shared {
    /// per server: (stats, pending pages)
    slots: Mutex<Vec<(LazyStats, u64)>>,
    stop: AtomicBool,
    go: AtomicBool,
}

/// Collects the page servers while the tree is rebuilt (used by `process::rebuild`).
pub(crate) struct Collector {
    opts: LazyOptions,
    dir: PathBuf,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<Served>>,
    total_pages: u64,
    /// descriptor numbers of the servers' userfaultfds (for the watchdog to keep)
    uffds: Arc<Mutex<Vec<i32>>>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        // Only reached with threads left on a failed restore: the stubs are killed by then.
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// One pages file a process's data comes from (its own, or an ancestor's in a chain).
struct PagesFile {
    path: PathBuf,
    file: File,
    /// `None` for versions 1 and 2 (verified whole before the tree started)
    table: Option<ChunkTable>,
}

impl PagesFile {
    fn open(dir: &Path, r: &image::PagesRef) -> Result<PagesFile> {
        let file = image::open_pages(dir, r)?;
        let table = image::read_chunk_table(dir, r, &file)?;
        Ok(PagesFile {
            path: dir.join(&r.file),
            file,
            table,
        })
    }

    /// Opens every file of `r` (one, or each part file) into `files`; returns each one's
    /// `(data offset, length, index in files)`.
    fn open_all(
        dir: &Path,
        r: &image::PagesRef,
        files: &mut Vec<PagesFile>,
    ) -> Result<Vec<(u64, u64, usize)>> {
        let mut out = Vec::new();
        for (o, piece) in r.pieces() {
            if r.parts.is_empty() {
                files.push(PagesFile::open(dir, r)?);
            } else {
                files.push(PagesFile::open(dir, &piece)?);
            }
            out.push((o, piece.len, files.len() - 1));
        }
        Ok(out)
    }

    fn try_clone(&self) -> std::io::Result<PagesFile> {
        Ok(PagesFile {
            path: self.path.clone(),
            file: self.file.try_clone()?,
            table: self.table.clone(),
        })
    }
}

/// Page data of one process, read with `pread` (a truncated file is an error, not a SIGBUS)
/// and checked chunk by chunk before it is served.
struct FileSource {
    files: Vec<PagesFile>,
    /// (vaddr, len, index in `files`, offset in that file's data), by vaddr, disjoint
    runs: Vec<(u64, u64, usize, u64)>,
    /// last verified chunk: (file, chunk index, bytes)
    cache: Option<(usize, usize, Vec<u8>)>,
}

impl FileSource {
    fn read_verified(&mut self, fi: usize, off: u64, out: &mut [u8]) -> std::io::Result<()> {
        let pf = &self.files[fi];
        let Some(t) = &pf.table else {
            // Versions 1 and 2: the whole data was verified before the tree started.
            return pf
                .file
                .read_exact_at(out, image::PAGES_HEADER_LEN + off)
                .map_err(|e| short(&pf.path, e, off, out.len() as u64));
        };
        let mut at = off;
        let end = off + out.len() as u64;
        if end > t.len {
            return Err(std::io::Error::other(format!(
                "{}: page data bytes {off}..{end} are beyond its {} bytes",
                pf.path.display(),
                t.len
            )));
        }
        while at < end {
            let c = usize::try_from(at / t.chunk).unwrap_or(usize::MAX);
            let (cs, ce) = t.range(c);
            if self.cache.as_ref().map(|x| (x.0, x.1)) != Some((fi, c)) {
                let mut buf = self.cache.take().map(|x| x.2).unwrap_or_default();
                buf.resize(usize::try_from(ce - cs).unwrap_or(0), 0);
                pf.file
                    .read_exact_at(&mut buf, image::PAGES_HEADER_LEN + cs)
                    .map_err(|e| short(&pf.path, e, cs, ce - cs))?;
                t.check(&pf.path, c, &buf)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.cache = Some((fi, c, buf));
            }
            let data = self.cache.as_ref().map(|x| x.2.as_slice()).unwrap_or(&[]);
            let n = usize::try_from(ce.min(end) - at).unwrap_or(0);
            let from = usize::try_from(at - cs).unwrap_or(0);
            let to = usize::try_from(at - off).unwrap_or(0);
            out[to..to + n].copy_from_slice(&data[from..from + n]);
            at += n as u64;
        }
        Ok(())
    }

    fn try_clone(&self) -> std::io::Result<FileSource> {
        Ok(FileSource {
            files: self
                .files
                .iter()
                .map(PagesFile::try_clone)
                .collect::<std::io::Result<_>>()?,
            runs: self.runs.clone(),
            cache: None,
        })
    }
}

/// Where one file's data lies in a process's data: (data offset, length, index in the
/// source's files).
type FileSpan = (u64, u64, usize);

/// Adds the run of `len` bytes at `vaddr`, stored at data offset `off`, to `runs` as one
/// run per file it lies in (`files`: each file's data offset, length and index).
fn split_run(
    runs: &mut Vec<(u64, u64, usize, u64)>,
    vaddr: u64,
    len: u64,
    off: u64,
    files: &[(u64, u64, usize)],
) {
    for &(fo, flen, fi) in files {
        let (s, e) = (off.max(fo), (off + len).min(fo + flen));
        if s < e {
            runs.push((vaddr + (s - off), e - s, fi, s - fo));
        }
    }
}

fn short(path: &Path, e: std::io::Error, off: u64, len: u64) -> std::io::Error {
    let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "the file ends before them (truncated)".to_string()
    } else {
        e.to_string()
    };
    std::io::Error::other(format!(
        "{}: cannot read page data bytes {off}..{}: {why}",
        path.display(),
        off + len
    ))
}

impl PageSource for FileSource {
    fn read_pages(&mut self, image_addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let end = image_addr + buf.len() as u64;
        let first = self.runs.partition_point(|r| r.0 + r.1 <= image_addr);
        for k in first..self.runs.len() {
            let (va, len, fi, off) = self.runs[k];
            if va >= end {
                break;
            }
            let (s, e) = (va.max(image_addr), (va + len).min(end));
            let b0 = usize::try_from(s - image_addr).unwrap_or(0);
            let b1 = usize::try_from(e - image_addr).unwrap_or(0);
            self.read_verified(fi, off + (s - va), &mut buf[b0..b1])?;
        }
        Ok(())
    }
}

impl Collector {
    pub(crate) fn new(dir: &Path, opts: LazyOptions) -> Self {
        Collector {
            opts,
            dir: dir.to_path_buf(),
            shared: Arc::new(Shared::default()),
            threads: Vec::new(),
            total_pages: 0,
            uffds: Arc::default(),
        }
    }

    /// Instead of writing the pages of process `p` (restored as `pid`, stopped, `data` = its
    /// mapped pages file): registers its private anonymous memory on a userfaultfd created
    /// in it, starts its page server, and writes the rest eagerly (checked first).
    pub(crate) fn take_process(
        &mut self,
        p: &Process,
        pid: i32,
        rs: &mut RemoteSyscalls,
        parents: (&[crate::process::Piece], &[crate::process::Ancestor]),
    ) -> Result<u64> {
        let fail = |why: String| RestoreError::Lazy(format!("pid {}: {why}", p.pid));
        let fd = rs
            .syscall(
                "userfaultfd",
                nr::USERFAULTFD,
                [0o2000000 | 0o4000, 0, 0, 0, 0, 0],
            )
            .map_err(|e| fail(format!("cannot create a userfaultfd in the process: {e}")))?;
        let got = sys::pid::pidfd_open(pid)
            .and_then(|pidfd| sys::pid::pidfd_getfd(&pidfd, i32::try_from(fd).unwrap_or(-1)));
        let _ = rs.syscall("close(userfaultfd)", nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
        let fd = got.map_err(|e| fail(format!("cannot take its userfaultfd: {e}")))?;
        let uffd = sys::uffd::Userfaultfd::from_unconfigured(fd, LAZY_FEATURES)
            .map_err(|e| fail(format!("userfaultfd lacks what a lazy restore needs: {e}")))?;
        if let Ok(mut v) = self.uffds.lock() {
            v.push(std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(
                &uffd,
            )));
        }
        // Its own pages file, then (incremental image) the ancestors' files its pieces are in.
        let mut files = Vec::new();
        let own = PagesFile::open_all(&self.dir, &p.pages, &mut files)?;
        let mut runs = Vec::new();
        for r in p.vmas.iter().flat_map(|v| v.pages.iter()) {
            if !r.in_parent {
                split_run(&mut runs, r.vaddr, r.npages * PAGE_SIZE, r.offset, &own);
            }
        }
        let mut opened: std::collections::BTreeMap<(usize, usize), Vec<FileSpan>> =
            Default::default();
        for x in parents.0 {
            let fi = match opened.get(&(x.level, x.proc)) {
                Some(fi) => fi.clone(),
                None => {
                    let a = &parents.1[x.level];
                    let ap = a.tree.processes.get(x.proc).ok_or_else(|| {
                        fail(format!(
                            "ancestor {} has no process {}",
                            a.dir.display(),
                            x.proc
                        ))
                    })?;
                    let fi = PagesFile::open_all(&a.dir, &ap.pages, &mut files)?;
                    opened.insert((x.level, x.proc), fi.clone());
                    fi
                }
            };
            split_run(&mut runs, x.addr, x.len, x.offset, &fi);
        }
        runs.sort_unstable();
        let source = FileSource {
            files,
            runs,
            cache: None,
        };
        let mut eager = source
            .try_clone()
            .map_err(|e| fail(format!("cannot reopen its pages files: {e}")))?;
        let mut server = LazyServer::new(
            uffd,
            source,
            sys::uffd_lazy::LazyOptions {
                prefetch_pages: self.opts.prefetch_pages,
                push_pages: 0,
            },
        );
        let mut lazy_pages = 0u64;
        let mut eager_bytes = 0u64;
        for v in &p.vmas {
            if v.pages.is_empty() {
                continue;
            }
            let anon = matches!(v.kind, VmaKind::Anon { .. } | VmaKind::Stack);
            if anon && server.register(v.start, v.end - v.start, v.start).is_ok() {
                // Pages the image does not hold need no fill.
                let mut at = v.start;
                for r in &v.pages {
                    if r.vaddr > at {
                        server.mark_done(at, r.vaddr - at);
                    }
                    at = r.vaddr + r.npages * PAGE_SIZE;
                    lazy_pages += r.npages;
                }
                if v.end > at {
                    server.mark_done(at, v.end - at);
                }
                continue;
            }
            for r in &v.pages {
                let len = r.npages * PAGE_SIZE;
                let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
                // (read and checked, not taken from the mapped file: what is written is
                // exactly what was checked; an `in_parent` run comes from the ancestors)
                eager
                    .read_pages(r.vaddr, &mut buf)
                    .map_err(|e| fail(e.to_string()))?;
                sys::mem::write_exact(pid, &buf, r.vaddr)
                    .map_err(|err| RestoreError::Sys { pid: p.pid, err })?;
                eager_bytes += len;
            }
        }
        // What each thread touches first: its stack around the stack pointer and its thread
        // control block (TLS around fs_base). Filled now, it costs no fault after the resume.
        for t in &p.threads {
            let sp = t.regs.rsp & !(PAGE_SIZE - 1);
            for (at, n) in [
                (sp.saturating_sub(PAGE_SIZE), 8),
                (t.regs.fs_base & !(PAGE_SIZE - 1), 1),
                (
                    (t.regs.fs_base & !(PAGE_SIZE - 1)).saturating_sub(PAGE_SIZE),
                    1,
                ),
            ] {
                if at != 0 {
                    server.prefill(at, n).map_err(|e| fail(e.to_string()))?;
                }
            }
        }
        self.total_pages += lazy_pages;
        let shared = Arc::clone(&self.shared);
        let slot = {
            let mut s = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
            s.push((LazyStats::default(), lazy_pages));
            s.len() - 1
        };
        let push = self.opts.push_pages;
        let t = std::thread::Builder::new()
            .name(format!("lazy-{}", p.pid))
            .spawn(move || {
                let mut pushing = false;
                let mut last = Instant::now();
                let res = loop {
                    if shared.stop.load(Ordering::Relaxed) {
                        break Ok(());
                    }
                    if !pushing && shared.go.load(Ordering::Relaxed) {
                        server.set_push_pages(push);
                        pushing = true;
                    }
                    match server.step(Duration::from_millis(10)) {
                        Ok(true) => break Ok(()),
                        Ok(false) => {}
                        Err(e) => break Err(e),
                    }
                    if last.elapsed() > Duration::from_millis(50) {
                        last = Instant::now();
                        let mut s = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
                        s[slot] = (server.stats(), server.pending_pages());
                    }
                };
                {
                    let mut s = shared.slots.lock().unwrap_or_else(|e| e.into_inner());
                    s[slot] = (server.stats(), server.pending_pages());
                }
                (res, Box::new(server) as Box<dyn Send>)
            })
            .map_err(|e| fail(format!("cannot start its page server thread: {e}")))?;
        self.threads.push(t);
        Ok(eager_bytes)
    }

    fn progress(&self) -> LazyProgress {
        let s = self.shared.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut p = LazyProgress {
            total_pages: self.total_pages,
            ..Default::default()
        };
        for (st, pending) in s.iter() {
            p.pending_pages += pending;
            p.faults += st.faults;
            p.fault_pages += st.fault_pages;
            p.pushed_pages += st.pushed_pages;
        }
        p
    }
}

/// A tree restored lazily and running; its memory is still being filled.
pub struct LazyRestore {
    report: RestoreReport,
    collector: Collector,
    watchdog: Option<sys::watchdog::Watchdog>,
    pids: Vec<i32>,
    started: Instant,
}

impl std::fmt::Debug for LazyRestore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyRestore")
            .field("report", &self.report)
            .field("pids", &self.pids)
            .finish()
    }
}

/// Whether every file of a process's pages (each part file) has a chunk table (version 4),
/// so that it can be verified chunk by chunk as it is served.
fn all_have_tables(dir: &Path, r: &image::PagesRef) -> Result<bool> {
    for (_, piece, f) in image::open_pages_parts(dir, r)? {
        if image::read_chunk_table(dir, &piece, &f)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Restores the image in `opts.image_dir` lazily: returns as soon as every process runs, with
/// the page servers working; call [`LazyRestore::wait`] to finish (or to learn the failure).
pub fn restore_lazy(opts: &RestoreOptions, lazy: LazyOptions) -> Result<LazyRestore> {
    let t0 = Instant::now();
    let loaded = crate::process::Loaded::load(&opts.image_dir)?;
    // What is written eagerly and has no chunk table is verified whole, before anything runs.
    for (o, m) in loaded.tree.shmem.iter().zip(&loaded.shmem) {
        image::check_pages_data(&loaded.dir, &o.data, m.as_slice())?;
    }
    for (p, m) in loaded.tree.processes.iter().zip(&loaded.pages) {
        if !all_have_tables(&loaded.dir, &p.pages)? {
            image::check_pages_data(&loaded.dir, &p.pages, m.as_slice())?;
        }
    }
    for a in &loaded.ancestors {
        for (p, m) in a.tree.processes.iter().zip(&a.pages) {
            if !all_have_tables(&a.dir, &p.pages)? {
                image::check_pages_data(&a.dir, &p.pages, m.as_slice())?;
            }
        }
    }
    let verify = t0.elapsed();
    let mut collector = Collector::new(&loaded.dir, lazy);
    let t1 = Instant::now();
    let pids: Vec<i32> = loaded.tree.processes.iter().map(|p| p.pid).collect();
    // Process groups led by a process of the tree (numbers of this namespace only).
    let mut pgids: Vec<i32> = if loaded.tree.pidns {
        Vec::new()
    } else {
        loaded
            .tree
            .processes
            .iter()
            .map(|p| p.pgid)
            .filter(|g| pids.contains(g))
            .collect()
    };
    pgids.sort_unstable();
    pgids.dedup();
    let mut watchdog = None;
    // The pids the tree really runs under (outer pids of a PID-namespace tree differ from the
    // image's): learned just before it resumes.
    let mut live_pids = pids.clone();
    let uffds = Arc::clone(&collector.uffds);
    let mut report = crate::process::restore_tree_with(
        &loaded,
        opts,
        || Ok(()),
        Some(&mut collector),
        &mut |outer_pids: &[i32]| {
            // Before the tree runs: the guard takes copies of every userfaultfd.
            live_pids = outer_pids.to_vec();
            let uffds: Vec<i32> = uffds.lock().map(|v| v.clone()).unwrap_or_default();
            let own = own_pgrp();
            let groups: Vec<i32> = pgids.iter().copied().filter(|&g| g != own).collect();
            watchdog = Some(
                sys::watchdog::Watchdog::spawn(outer_pids, &groups, &uffds).map_err(|err| {
                    RestoreError::Sys {
                        pid: outer_pids.first().copied().unwrap_or(0),
                        err,
                    }
                })?,
            );
            Ok(())
        },
    )?;
    if !lazy.hold_push {
        collector.shared.go.store(true, Ordering::Relaxed);
    }
    report.verify = verify;
    report.restore = t1.elapsed();
    Ok(LazyRestore {
        report,
        collector,
        watchdog,
        pids: live_pids,
        started: Instant::now(),
    })
}

/// The restorer's own process group (never killed as a group by the guard).
fn own_pgrp() -> i32 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            rest.split_whitespace().nth(2)?.parse().ok()
        })
        .unwrap_or(0)
}

impl LazyRestore {
    /// The restore report (root pid, counts, times up to the tree running).
    pub fn report(&self) -> &RestoreReport {
        &self.report
    }

    /// Where the page servers stand (updated by each server about every 50 ms).
    pub fn progress(&self) -> LazyProgress {
        self.collector.progress()
    }

    /// Starts the background push held back by [`LazyOptions::hold_push`].
    pub fn start_push(&self) {
        self.collector.shared.go.store(true, Ordering::Relaxed);
    }

    /// Serves until every page is in place (then the userfaultfds are closed and the tree
    /// runs on its own) and returns the summary; `tick` is called about every 50 ms. If a
    /// page cannot be served, the tree is SIGKILLed first and the error names the file and
    /// the reason.
    pub fn wait(mut self, mut tick: impl FnMut(&LazyProgress)) -> Result<LazySummary> {
        let mut failure: Option<RestoreError> = None;
        let mut keep: Vec<Box<dyn Send>> = Vec::new();
        while !self.collector.threads.is_empty() {
            let mut k = 0;
            while k < self.collector.threads.len() {
                if !self.collector.threads[k].is_finished() {
                    k += 1;
                    continue;
                }
                let t = self.collector.threads.swap_remove(k);
                match t.join() {
                    Ok((Ok(()), server)) => keep.push(server),
                    Ok((Err(e), server)) => {
                        keep.push(server);
                        let why = match e {
                            LazyError::Source {
                                addr,
                                pages,
                                source,
                            } => format!("cannot serve {pages} page(s) at {addr:#x}: {source}"),
                            other => other.to_string(),
                        };
                        failure.get_or_insert(RestoreError::Lazy(why));
                    }
                    Err(_) => {
                        failure.get_or_insert(RestoreError::Lazy(
                            "a page server thread panicked".into(),
                        ));
                    }
                }
            }
            if failure.is_some() {
                break;
            }
            tick(&self.collector.progress());
            std::thread::sleep(Duration::from_millis(
                if self.collector.threads.is_empty() {
                    0
                } else {
                    20
                },
            ));
        }
        if let Some(e) = failure {
            // Kill first: only then may the servers (and their userfaultfds) go.
            kill_tree(&self.pids);
            if let Some(w) = self.watchdog.take() {
                let _ = w.fire();
            }
            self.collector.shared.stop.store(true, Ordering::Relaxed);
            for t in self.collector.threads.drain(..) {
                let _ = t.join();
            }
            drop(keep);
            return Err(e);
        }
        let progress = self.collector.progress();
        if let Some(w) = self.watchdog.take() {
            w.disarm().map_err(|err| RestoreError::Sys {
                pid: self.report.root_pid,
                err,
            })?;
        }
        drop(keep);
        Ok(LazySummary {
            progress,
            serve_time: self.started.elapsed(),
        })
    }
}

/// SIGKILLs `pids` and every descendant, and reaps the ones that are our children.
fn kill_tree(pids: &[i32]) {
    let mut all = Vec::new();
    let mut todo: Vec<i32> = pids.to_vec();
    while let Some(p) = todo.pop() {
        if all.contains(&p) {
            continue;
        }
        all.push(p);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let f = t.path().join("children");
                if let Ok(s) = std::fs::read_to_string(f) {
                    todo.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
    }
    for &p in &all {
        let _ = sys::pid::kill(p, libc::SIGKILL);
    }
    for &p in &all {
        let _ = sys::ptrace::wait(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pages file of 3 chunks and a source over two runs with a hole between them.
    fn source(dir: &Path) -> (FileSource, Vec<u8>, image::PagesRef) {
        let data: Vec<u8> = (0..image::PAGES_CHUNK * 2 + 8192)
            .map(|i| u8::try_from(i % 253).unwrap_or(0))
            .collect();
        let mut w = image::PagesWriter::create(dir, "pages-9.img").expect("create");
        w.write(&data).expect("write");
        let r = w.finish().expect("finish");
        let pf = PagesFile::open(dir, &r).expect("open");
        assert!(pf.table.is_some());
        let first = image::PAGES_CHUNK + 4096;
        let s = FileSource {
            files: vec![pf],
            // run A: data [0, first) at 0x10000; run B: the rest at 0x10000 + first + 2 pages
            runs: vec![
                (0x10000, first, 0, 0),
                (0x10000 + first + 8192, data.len() as u64 - first, 0, first),
            ],
            cache: None,
        };
        (s, data, r)
    }

    #[test]
    fn file_source_reads_across_runs_and_chunks_and_zero_fills_holes() {
        let d = tempfile::tempdir().expect("tempdir");
        let (mut s, data, _) = source(d.path());
        let first = usize::try_from(image::PAGES_CHUNK).unwrap_or(0) + 4096;
        // from the last page of run A, over the 2-page hole, into run B
        let mut buf = vec![0xffu8; 5 * 4096];
        let at = 0x10000 + first as u64 - 4096;
        s.read_pages(at, &mut buf).expect("read");
        assert_eq!(&buf[..4096], &data[first - 4096..first]);
        assert!(buf[4096..3 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&buf[3 * 4096..], &data[first..first + 2 * 4096]);
    }

    #[test]
    fn file_source_names_the_file_and_chunk_on_damage() {
        let d = tempfile::tempdir().expect("tempdir");
        let (mut s, _, r) = source(d.path());
        let p = d.path().join("pages-9.img");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .expect("open for damage");
        f.write_all_at(&[0xaa], image::PAGES_HEADER_LEN + image::PAGES_CHUNK + 17)
            .expect("flip");
        let mut buf = vec![0u8; 4096];
        s.read_pages(0x10000, &mut buf).expect("chunk 0 is intact");
        let e = s
            .read_pages(0x10000 + image::PAGES_CHUNK, &mut buf)
            .expect_err("chunk 1 is damaged");
        assert!(
            e.to_string().contains("pages-9.img") && e.to_string().contains("chunk 1"),
            "{e}"
        );
        f.set_len(image::PAGES_HEADER_LEN + r.len / 2)
            .expect("truncate");
        s.cache = None;
        let e = s
            .read_pages(0x10000, &mut vec![0u8; 4096])
            .and_then(|()| {
                let last = 0x10000 + image::PAGES_CHUNK + 4096 + 8192 + image::PAGES_CHUNK;
                s.read_pages(last, &mut buf)
            })
            .expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
