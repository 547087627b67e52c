//! Dumping an address space: classify every mapping, find the pages that hold data
//! (`PAGEMAP_SCAN`), copy them with large `process_vm_readv` batches (or `/proc/PID/mem` for
//! unreadable mappings) straight into the process's pages file.

use std::path::Path;
use std::time::Instant;

use image::{PageRun, PagesRef, PagesWriter, Vma, VmaKind};
use sys::mem::{ProcMem, RemoteRange};
use sys::proc::MapEntry;
use sys::PAGE_SIZE;

use crate::{CheckpointError, PidCtx, ProgressFn, Result};

/// Copy buffer size: large batches amortise the per-call cost of `process_vm_readv`.
const BATCH: usize = 8 << 20;

/// Classifies one mapping, or refuses it with a reason.
pub fn classify(pid: i32, m: &MapEntry) -> Result<Option<VmaKind>> {
    let what = || format!("mapping {:#x}-{:#x} {}", m.start, m.end, m.path);
    let unsupported = |why: &str| CheckpointError::Unsupported {
        pid,
        what: what(),
        why: why.to_string(),
    };
    let p = m.path.as_str();
    Ok(Some(match p {
        "[vsyscall]" => return Ok(None),
        "[vvar]" | "[vvar_vclock]" | "[vdso]" => VmaKind::Vdso {
            name: p.to_string(),
        },
        "[stack]" => VmaKind::Stack,
        _ if m.shared && crate::shmem::is_shmem_path(p) => {
            // Resolved to an object id by the caller (see `dump_process`).
            VmaKind::Shmem {
                id: u32::MAX,
                offset: m.offset,
            }
        }
        "" | "[heap]" => {
            if m.shared {
                return Err(unsupported("unnamed shared mapping"));
            }
            VmaKind::Anon {
                name: p.to_string(),
            }
        }
        _ if p.starts_with("[anon:") || p.starts_with("[anon_shmem:") => {
            if m.shared {
                return Err(unsupported("named shared anonymous mapping"));
            }
            VmaKind::Anon {
                name: p.to_string(),
            }
        }
        _ if p.ends_with(" (deleted)") => return Err(unsupported("the mapped file was deleted")),
        _ if p.starts_with('/') => {
            let st = sys::proc::stat_path(p).pid(pid)?;
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt != libc::S_IFREG {
                return Err(unsupported(
                    "only regular files can be mapped (devices are not supported)",
                ));
            }
            if st.st_ino != m.inode {
                return Err(unsupported(
                    "the file at this path was replaced since it was mapped",
                ));
            }
            if m.shared {
                VmaKind::FileShared {
                    path: p.to_string(),
                    offset: m.offset,
                }
            } else {
                VmaKind::FilePrivate {
                    path: p.to_string(),
                    offset: m.offset,
                }
            }
        }
        _ => return Err(unsupported("unknown kind of mapping")),
    }))
}

/// Copies the data pages of every mapping into `dir/pages-PID.img`; fills each `Vma::pages`.
/// A pool of copy buffers, faulted in (allocate it before freezing). A full dump's workers
/// use one buffer each and only one planned piece of it ([`plan_batch`], 1 MiB): faulting in
/// 3 x 8 MiB there took ~20 ms before every freeze (a third of a 64 MiB dump) for 2 MiB used.
/// Incremental and live copies fill whole [`BATCH`] buffers (and grow smaller ones).
pub fn buffer_pool(full_dump: bool) -> std::sync::Mutex<Vec<Vec<u8>>> {
    std::sync::Mutex::new(pool_buffers(full_dump))
}

/// The buffers of [`buffer_pool`], faulted in (a full dump faults them on a thread of their
/// own while the tree is frozen and its first mappings are read: ~1 ms for 2 x 1 MiB here).
pub fn pool_buffers(full_dump: bool) -> Vec<Vec<u8>> {
    let (count, len) = if full_dump {
        (dump_threads(), plan_batch())
    } else {
        (3, BATCH)
    };
    (0..count).map(|_| vec![1u8; len]).collect()
}

pub struct MemoryDumper<'a> {
    /// Copy buffers, allocated and faulted in before the freeze and reused for every process.
    pub pool: &'a std::sync::Mutex<Vec<Vec<u8>>>,
    pub pid: i32,
    pub dir: &'a Path,
    pub progress: Option<&'a ProgressFn>,
    pub done_before: u64,
    pub total_hint: u64,
    /// Incremental dump: ranges whose data is left in the parent image (normalized).
    pub unchanged: &'a [(u64, u64)],
    /// Copy the pages into memory only; the file is written by [`DeferredPages::write`] once
    /// the tree runs again (the returned `PagesRef` already names its length and checksum).
    pub defer: Option<&'a std::sync::Mutex<Vec<DeferredPages>>>,
    /// The pages file was recycled from an older image (its pages exist): copy straight into
    /// a shared mapping of it instead of through a buffer and `pwrite`.
    pub map_copy: bool,
}

/// Page data copied while the tree was frozen, written to its pages file after the resume.
#[derive(Debug)]
pub struct DeferredPages {
    pub pid: i32,
    dir: std::path::PathBuf,
    name: String,
    /// (buffer, bytes used, running CRC32C up to and including this buffer)
    chunks: Vec<(Vec<u8>, usize, u32)>,
    expect: PagesRef,
}

impl DeferredPages {
    /// Writes and fsyncs the pages file and returns its reference: the one put in the tree
    /// with the CRC32C, which is computed here (after the resume), filled in.
    pub fn write(self) -> Result<PagesRef> {
        let mut w = PagesWriter::create(&self.dir, &self.name)?;
        for (buf, used, _) in &self.chunks {
            w.write(&buf[..*used])?;
        }
        let r = w.finish_synced()?;
        if r.file != self.expect.file || r.len != self.expect.len {
            return Err(CheckpointError::Tree {
                pid: self.pid,
                why: format!("{}: deferred pages do not match the image", self.name),
            });
        }
        Ok(r)
    }
}

/// An incremental copy into memory running on its own thread (see [`spawn_deferred_copy`]).
pub struct DeferredCopy {
    pid: i32,
    go: std::sync::mpsc::Sender<Option<CopyPlan>>,
    handle: std::thread::JoinHandle<DeferredCopyResult>,
}

type DeferredCopyResult = (
    Option<Result<(PagesRef, u64, std::time::Duration)>>,
    Vec<Vma>,
    Vec<Vec<u8>>,
    Vec<DeferredPages>,
);

/// What the main thread hands the copy thread once the dirty tracker is read.
#[derive(Debug, Default)]
pub struct CopyPlan {
    /// The tracker's answer for this process (`unchanged` is left in the parent; inside
    /// `known`, `Delta::data` replaces the scan for data).
    pub delta: crate::incr::Delta,
}

/// Whether the whole address space is scanned for data while frozen, as before the tracker's
/// page states were used for the ranges it watched (`UNDERSTUDY_FROZEN_DATA_SCAN=1`; for A/B).
fn frozen_data_scan() -> bool {
    std::env::var_os("UNDERSTUDY_FROZEN_DATA_SCAN").is_some_and(|v| v == "1")
}

/// Starts an incremental copy into memory of `vmas` on a new thread, with the pool's buffers
/// moved to it: it scans for data at once every part of the mappings outside `tracked_before`
/// (the ranges the parent's tracker watched; the tracker read says what holds data inside
/// them), then waits for [`DeferredCopy::start`] (the tracker's answer, or `None`: no copy),
/// scans what the tracker turned out not to know and runs [`MemoryDumper::dump`] into memory
/// (`defer`). [`DeferredCopy::join`] hands buffers, pages and `vmas` back. The caller keeps
/// the tree frozen until it has joined.
pub fn spawn_deferred_copy(
    pool: &std::sync::Mutex<Vec<Vec<u8>>>,
    pid: i32,
    opts: &crate::DumpOptions,
    mut vmas: Vec<Vma>,
    tracked_before: &[(u64, u64)],
) -> DeferredCopy {
    let bufs = pool
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    let dir = opts.image_dir.clone();
    let progress = opts.progress.clone();
    let exhaustive = frozen_data_scan();
    let skip = if exhaustive {
        Vec::new()
    } else {
        crate::incr::normalize(tracked_before.to_vec())
    };
    let (go, wait) = std::sync::mpsc::channel::<Option<CopyPlan>>();
    let handle = std::thread::spawn(move || {
        let t0 = Instant::now();
        let early = scan_data(pid, &vmas, &skip);
        let scan_time = t0.elapsed();
        let Ok(Some(plan)) = wait.recv() else {
            return (None, vmas, bufs, Vec::new());
        };
        let t1 = Instant::now();
        let scanned = early.and_then(|data| {
            if exhaustive {
                Ok(data)
            } else {
                complete_scan(pid, &vmas, data, &skip, &plan.delta)
            }
        });
        let late_scan = t1.elapsed();
        let unchanged = plan.delta.unchanged;
        let pool = std::sync::Mutex::new(bufs);
        let deferred = std::sync::Mutex::new(Vec::new());
        let md = MemoryDumper {
            pool: &pool,
            pid,
            dir: &dir,
            progress: progress.as_ref(),
            done_before: 0,
            total_hint: 0,
            unchanged: &unchanged,
            defer: Some(&deferred),
            map_copy: false,
        };
        let res = scanned.and_then(|data| {
            let name = format!("pages-{pid}.img");
            md.dump_to_memory(&mut vmas, name, &deferred, t0, Some(data))
        });
        tracing::debug!(
            "pid {pid}: early scan for data {scan_time:?}, after the tracker read {late_scan:?}"
        );
        (
            Some(res),
            vmas,
            pool.into_inner().unwrap_or_default(),
            deferred.into_inner().unwrap_or_default(),
        )
    });
    DeferredCopy { pid, go, handle }
}

/// Completes the early scan (`data`, of every mapping outside `skip`): inside the ranges the
/// tracker watched for the whole interval (`delta.known`) the data ranges are the tracker's
/// (see `Delta::data`); the rest of `skip` (ranges the tracker lost: re-created mappings) is
/// scanned now.
fn complete_scan(
    pid: i32,
    vmas: &[Vma],
    mut data: Vec<Vec<(u64, u64)>>,
    skip: &[(u64, u64)],
    delta: &crate::incr::Delta,
) -> Result<Vec<Vec<(u64, u64)>>> {
    let mut scanner: Option<sys::memscan::PageScanner> = None;
    for (v, d) in vmas.iter().zip(data.iter_mut()) {
        let Some(anon_only) = scan_kind(&v.kind) else {
            continue;
        };
        let whole = [(v.start, v.end)];
        let inside = crate::incr::intersect(&whole, skip);
        if inside.is_empty() {
            continue;
        }
        let known = crate::incr::intersect(&inside, &delta.known);
        for (s, e) in crate::incr::subtract(&inside, &known) {
            let sc = match &mut scanner {
                Some(sc) => sc,
                None => scanner.insert(sys::memscan::PageScanner::open(pid).pid(pid)?),
            };
            d.extend(sc.data_ranges(s, e, anon_only).pid(pid)?);
        }
        for (s, e) in known {
            d.extend(delta.data(s, e));
        }
        *d = crate::incr::normalize(std::mem::take(d));
    }
    Ok(data)
}

impl DeferredCopy {
    /// Lets the copy run with the tracker's answer; `None`: no copy.
    pub fn start(&self, plan: Option<CopyPlan>) {
        let _ = self.go.send(plan);
    }

    /// Waits for the thread; returns the copy's result (`None` if it was not started) and the
    /// mappings (with their page runs), and puts the buffers back in `pool` and the copied
    /// pages in `deferred`.
    #[allow(clippy::type_complexity)] // the result of MemoryDumper::dump, plus the mappings
    pub fn join(
        self,
        pool: &std::sync::Mutex<Vec<Vec<u8>>>,
        deferred: &std::sync::Mutex<Vec<DeferredPages>>,
    ) -> Result<(
        Option<Result<(PagesRef, u64, std::time::Duration)>>,
        Vec<Vma>,
    )> {
        let pid = self.pid;
        drop(self.go);
        let (res, vmas, bufs, pages) = self.handle.join().map_err(|_| CheckpointError::Tree {
            pid,
            why: "memory copy thread panicked".into(),
        })?;
        if let Ok(mut p) = pool.lock() {
            p.extend(bufs);
        }
        deferred
            .lock()
            .map_err(|_| CheckpointError::Tree {
                pid,
                why: "deferred pages list poisoned".into(),
            })?
            .extend(pages);
        Ok((res, vmas))
    }
}

/// Which mappings hold data to dump and how to scan them: `Some(anon_only)`, or `None` for
/// mappings whose data is not dumped with the process (vdso, shared file, shmem objects).
fn scan_kind(kind: &VmaKind) -> Option<bool> {
    match kind {
        VmaKind::Anon { .. } | VmaKind::Stack => Some(false),
        VmaKind::FilePrivate { .. } => Some(true),
        VmaKind::Vdso { .. } | VmaKind::FileShared { .. } | VmaKind::Shmem { .. } => None,
    }
}

/// The data ranges of every mapping outside `skip` (normalized; empty for the mappings
/// [`scan_kind`] skips), in order.
fn scan_data(pid: i32, vmas: &[Vma], skip: &[(u64, u64)]) -> Result<Vec<Vec<(u64, u64)>>> {
    let mut scanner = sys::memscan::PageScanner::open(pid).pid(pid)?;
    vmas.iter()
        .map(|v| match scan_kind(&v.kind) {
            Some(anon_only) => {
                let mut out = Vec::new();
                for (s, e) in crate::incr::subtract(&[(v.start, v.end)], skip) {
                    out.extend(scanner.data_ranges(s, e, anon_only).pid(pid)?);
                }
                Ok(out)
            }
            None => Ok(Vec::new()),
        })
        .collect()
}

/// Number of copy workers of a full dump: one per CPU, at least 2 and at most 4
/// (`UNDERSTUDY_DUMP_THREADS` overrides it, 1 to 16, for measurements).
pub fn dump_threads() -> usize {
    if let Some(n) = std::env::var("UNDERSTUDY_DUMP_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        return n.clamp(1, 16);
    }
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(2)
        .clamp(2, 4)
}

/// Size of one planned piece of a full dump: small enough that the data a worker has just
/// read is still in its CPU cache when it checksums and writes it
/// (`UNDERSTUDY_DUMP_BATCH_KIB` overrides it, for measurements).
fn plan_batch() -> usize {
    std::env::var("UNDERSTUDY_DUMP_BATCH_KIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(PLAN_BATCH, |k| (k.clamp(4, BATCH >> 10) & !3) << 10)
}

/// Whether a full dump copies into a shared mapping of the pages file: `recycled` (the file's
/// pages exist already), unless `UNDERSTUDY_DUMP_MAP` says otherwise (`1`/`0`, for
/// measurements).
fn map_copy(recycled: bool) -> bool {
    match std::env::var("UNDERSTUDY_DUMP_MAP").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => recycled,
    }
}

/// `UNDERSTUDY_DUMP_MAP=1`: map even a file whose space is not there yet (measurements).
fn map_forced() -> bool {
    std::env::var("UNDERSTUDY_DUMP_MAP").ok().as_deref() == Some("1")
}

/// Whether each piece of a mapped copy is faulted in with `madvise(MADV_POPULATE_*)` before
/// `process_vm_readv` fills it (default; `UNDERSTUDY_DUMP_POPULATE=0` turns it off, for
/// measurements).
fn populate_first() -> bool {
    std::env::var("UNDERSTUDY_DUMP_POPULATE").ok().as_deref() != Some("0")
}

/// How many part files a fresh process's pages are split over (`UNDERSTUDY_DUMP_PARTS`,
/// 1 = one file as before; default: one per copy worker).
pub fn pages_parts() -> usize {
    std::env::var("UNDERSTUDY_DUMP_PARTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(dump_threads)
        .clamp(1, image::MAX_PAGES_PARTS)
}

/// Part files a process with about `bytes` of data is split over (what [`part_starts`]
/// gives for a plan of that size).
pub fn planned_parts(bytes: u64) -> usize {
    let n = u64::try_from(pages_parts()).unwrap_or(1);
    usize::try_from(n.min(bytes / part_min().max(1)).max(1)).unwrap_or(1)
}

/// Least data per part file (`UNDERSTUDY_DUMP_PART_MIN_KIB`, for tests; default 4 MiB):
/// below it a process's pages stay in one file.
fn part_min() -> u64 {
    std::env::var("UNDERSTUDY_DUMP_PART_MIN_KIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(PART_MIN, |k| k.max(1) << 10)
}

/// Default of [`part_min`].
const PART_MIN: u64 = 4 << 20;

/// Index of the first job of each part when the planned `jobs` are split into at most
/// `nparts` parts of about equal size, at least `min` bytes each: a part starts at a job
/// whose data offset is a multiple of [`image::PAGES_CHUNK`] (so the part's chunk table
/// lines up with the whole data's). Always starts with 0.
fn part_starts(jobs: &[Job], nparts: usize, min: u64) -> Vec<usize> {
    let total: u64 = jobs.iter().map(|j| j.len).sum();
    let n = u64::try_from(nparts)
        .unwrap_or(1)
        .min(total / min.max(1))
        .max(1);
    let mut starts = vec![0usize];
    for k in 1..n {
        let target = total / n * k;
        let last = starts.last().copied().unwrap_or(0);
        if let Some(i) = (last + 1..jobs.len()).find(|&i| {
            jobs[i].offset >= target && jobs[i].offset.is_multiple_of(image::PAGES_CHUNK)
        }) {
            starts.push(i);
        }
    }
    starts
}

/// Default of [`plan_batch`].
const PLAN_BATCH: usize = 1 << 20;

/// One planned piece of a full dump: `len` bytes landing at data offset `offset` of the
/// pages file.
struct Job {
    offset: u64,
    len: u64,
    data: JobData,
}

enum JobData {
    /// Read from the tree with `process_vm_readv`.
    Remote(Vec<RemoteRange>),
    /// Already read (through `/proc/PID/mem`).
    Bytes(Vec<u8>),
}

/// Where a [`Reader`] sends its batches.
enum Sink {
    /// Read now, hand the filled buffer (bytes used, running CRC32C) to a consumer thread.
    Pipeline(std::sync::mpsc::SyncSender<(Vec<u8>, usize, u32)>),
    /// Only record what to read and where it lands; [`MemoryDumper::copy_jobs`] copies.
    Plan(Vec<Job>),
}

struct Batch {
    buf: Vec<u8>,
    used: usize,
    ranges: Vec<RemoteRange>,
}

/// The reading side of the copy pipeline: fills buffers with `process_vm_readv` and hands them
/// to the writer thread, which appends them to the pages file (and checksums them) while the
/// next buffer is being read.
struct Reader<'a> {
    pid: i32,
    batch: Batch,
    /// Largest batch (bytes).
    limit: usize,
    /// Bytes handed to the writer so far (the file offset of the batch's first byte).
    pos: u64,
    sink: Sink,
    /// Running CRC32C of everything handed over (computed here, to balance the pipeline: the
    /// writer's page-cache allocation is the slower side).
    crc: u32,
    empty: &'a std::sync::mpsc::Receiver<Vec<u8>>,
    progress: Option<&'a ProgressFn>,
    done_before: u64,
    total_hint: u64,
    /// Time spent in `process_vm_readv`, checksumming, and scanning for data (`PAGEMAP_SCAN`).
    busy: std::time::Duration,
    crc_time: std::time::Duration,
    scan_time: std::time::Duration,
    /// Compute the running CRC32C (not for the copy into memory: [`DeferredPages::write`]
    /// computes it after the resume).
    checksum: bool,
    /// Split a batch of many scattered ranges over two threads (the incremental copy into
    /// memory, where the per-range cost of `process_vm_readv` dominates; see
    /// `one_copy_thread`).
    split: bool,
}

/// A batch with at least this many ranges is read by two threads when `Reader::split` is set.
const SPLIT_MIN_RANGES: usize = 256;

/// A mapping at least this large is scanned for data by two threads in the incremental copy.
const SPLIT_SCAN_MIN_BYTES: u64 = 64 << 20;

/// The data ranges of `[start, end)`, its two halves scanned at once by two scanners; a range
/// crossing the middle is joined again.
fn scan_split(
    pid: i32,
    a: &mut sys::memscan::PageScanner,
    b: &mut sys::memscan::PageScanner,
    start: u64,
    end: u64,
    anon_only: bool,
) -> Result<Vec<(u64, u64)>> {
    let mid = start + (end - start) / 2 / PAGE_SIZE * PAGE_SIZE;
    let (lo, hi) = std::thread::scope(|s| {
        let h = s.spawn(move || b.data_ranges(mid, end, anon_only));
        let lo = a.data_ranges(start, mid, anon_only);
        (lo, h.join())
    });
    let mut out = lo.pid(pid)?;
    let hi = hi
        .map_err(|_| CheckpointError::Tree {
            pid,
            why: "second page scanner thread panicked".into(),
        })?
        .pid(pid)?;
    for (s, e) in hi {
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = e,
            _ => out.push((s, e)),
        }
    }
    Ok(out)
}

/// `UNDERSTUDY_COPY_THREADS=1`: the incremental copy reads (and, without the early scan, scans)
/// on one thread only. The default splits the reads over two threads: with the scan done early
/// it shortened the freeze at load 5-6 (docs/PERFORMANCE.md); kept switchable for A/B runs.
fn one_copy_thread() -> bool {
    std::env::var_os("UNDERSTUDY_COPY_THREADS").is_some_and(|v| v == "1")
}

/// Reads `ranges` into `buf` (their lengths summing to `buf.len()`), the second half of the
/// ranges on a second thread.
fn read_split(pid: i32, buf: &mut [u8], ranges: &[RemoteRange]) -> Result<()> {
    let mid = ranges.len() / 2;
    let first: u64 = ranges[..mid].iter().map(|r| r.len).sum();
    let at = usize::try_from(first).unwrap_or(usize::MAX).min(buf.len());
    let (a, b) = buf.split_at_mut(at);
    let (ra, rb) = ranges.split_at(mid);
    std::thread::scope(|s| {
        let other = s.spawn(move || sys::mem::read_vectored(pid, b, rb));
        let mine = sys::mem::read_vectored(pid, a, ra).pid(pid);
        let theirs = other.join().map_err(|_| CheckpointError::Tree {
            pid,
            why: "second memory reader thread panicked".into(),
        })?;
        mine.and(theirs.pid(pid))
    })
}

impl Reader<'_> {
    fn offset(&self) -> u64 {
        self.pos + self.batch.used as u64
    }

    fn flush(&mut self) -> Result<()> {
        let b = &mut self.batch;
        if b.used == 0 {
            return Ok(());
        }
        if let Sink::Plan(jobs) = &mut self.sink {
            jobs.push(Job {
                offset: self.pos,
                len: b.used as u64,
                data: JobData::Remote(std::mem::take(&mut b.ranges)),
            });
            self.pos += b.used as u64;
            b.used = 0;
            return Ok(());
        }
        let t = Instant::now();
        if self.split && b.ranges.len() >= SPLIT_MIN_RANGES && !one_copy_thread() {
            read_split(self.pid, &mut b.buf[..b.used], &b.ranges)?;
        } else {
            sys::mem::read_vectored(self.pid, &mut b.buf[..b.used], &b.ranges).pid(self.pid)?;
        }
        self.busy += t.elapsed();
        self.hand_over()
    }

    fn hand_over(&mut self) -> Result<()> {
        let Sink::Pipeline(full) = &self.sink else {
            return Err(CheckpointError::Tree {
                pid: self.pid,
                why: "internal: a planned dump handed over a buffer".into(),
            });
        };
        let next = self.empty.recv().unwrap_or_else(|_| vec![0u8; BATCH]);
        let buf = std::mem::replace(&mut self.batch.buf, next);
        let used = self.batch.used;
        if self.checksum {
            let t = Instant::now();
            self.crc = crc32c::crc32c_append(self.crc, &buf[..used]);
            self.crc_time += t.elapsed();
        }
        if full.send((buf, used, self.crc)).is_err() {
            // The writer failed; its error is reported when it is joined.
            return Err(CheckpointError::Tree {
                pid: self.pid,
                why: "image writer stopped".into(),
            });
        }
        self.pos += used as u64;
        self.batch.used = 0;
        self.batch.ranges.clear();
        if let Some(p) = self.progress {
            p(self.done_before + self.pos, self.total_hint);
        }
        Ok(())
    }

    /// Appends bytes read by other means (`/proc/PID/mem`).
    fn push_bytes(&mut self, data: &[u8]) -> Result<()> {
        self.flush()?;
        if let Sink::Plan(jobs) = &mut self.sink {
            if !data.is_empty() {
                jobs.push(Job {
                    offset: self.pos,
                    len: data.len() as u64,
                    data: JobData::Bytes(data.to_vec()),
                });
                self.pos += data.len() as u64;
            }
            return Ok(());
        }
        for part in data.chunks(BATCH) {
            self.batch.buf[..part.len()].copy_from_slice(part);
            self.batch.used = part.len();
            self.hand_over()?;
        }
        Ok(())
    }
}

impl MemoryDumper<'_> {
    pub fn dump(&self, vmas: &mut [Vma]) -> Result<(PagesRef, u64, std::time::Duration)> {
        let pid = self.pid;
        let t0 = Instant::now();
        let name = format!("pages-{pid}.img");
        if let Some(defer) = self.defer {
            return self.dump_to_memory(vmas, name, defer, t0, None);
        }
        let w = PagesWriter::create(self.dir, &name)?;
        // Plan first (cheap: page scans and offsets only), then copy with parallel workers.
        let (_unused_tx, unused_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let mut r = Reader {
            pid,
            batch: Batch {
                buf: Vec::new(),
                used: 0,
                ranges: Vec::new(),
            },
            limit: plan_batch(),
            pos: 0,
            sink: Sink::Plan(Vec::new()),
            empty: &unused_rx,
            progress: None,
            done_before: 0,
            total_hint: 0,
            busy: std::time::Duration::ZERO,
            crc_time: std::time::Duration::ZERO,
            scan_time: std::time::Duration::ZERO,
            crc: 0,
            split: false,
            checksum: true,
        };
        self.read_all(&mut r, vmas, None)?;
        r.flush()?;
        let jobs = match std::mem::replace(&mut r.sink, Sink::Plan(Vec::new())) {
            Sink::Plan(j) => j,
            Sink::Pipeline(_) => Vec::new(),
        };
        // One part file per copy worker: ext4's buffered write holds the inode's lock for the
        // whole `pwrite`, so writers of one file take turns (recycled files are copied into
        // through mappings, which takes no such lock, but keep the same layout so that the
        // next recycling finds the files it needs).
        let nparts = pages_parts();
        let starts = part_starts(&jobs, nparts, part_min());
        let mut ws = vec![w];
        for k in 1..starts.len() {
            ws.push(PagesWriter::create(
                self.dir,
                &image::pages_part_name(pid, k),
            )?);
        }
        let len = self.copy_jobs(&mut ws, &jobs, &starts)?;
        let refs = ws
            .into_iter()
            .map(PagesWriter::finish)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok((image::join_parts(refs), len, t0.elapsed()))
    }

    /// Copies every planned job into the pages file with [`dump_threads`] workers, each
    /// reading a batch with `process_vm_readv` into its own buffer, checksumming it and
    /// writing it at its offset, so that both the copy out of the tree and the page-cache
    /// work of the write spread over every CPU. Returns the data length and its CRC32C.
    ///
    /// With several part files (`starts`: the index of each part's first job, its data
    /// offset chunk-aligned) worker `w` copies the jobs of part `w` first, then helps with the
    /// others, so that each file has one writer at a time until a part runs out.
    fn copy_jobs(&self, ws: &mut [PagesWriter], jobs: &[Job], starts: &[usize]) -> Result<u64> {
        let pid = self.pid;
        let nparts = ws.len();
        let bad_plan = || CheckpointError::Tree {
            pid,
            why: "internal: pages file parts do not match the planned copies".into(),
        };
        if nparts == 0 || starts.len() != nparts || starts.first().is_some_and(|&s| s != 0) {
            return Err(bad_plan());
        }
        // Each part's job range and data offset.
        let ranges: Vec<(usize, usize, u64)> = (0..nparts)
            .map(|k| {
                let a = starts[k];
                let b = starts.get(k + 1).copied().unwrap_or(jobs.len());
                (a, b, jobs.get(a).map_or(0, |j| j.offset))
            })
            .collect();
        if ranges.iter().any(|&(a, b, o)| {
            a > b || (nparts > 1 && (a == b || !o.is_multiple_of(image::PAGES_CHUNK)))
        }) {
            return Err(bad_plan());
        }
        // Copy straight into a shared mapping of each file (recycled pages files: their
        // pages exist, so the mapping costs no allocation and saves the `pwrite` copy).
        let mut maps = Vec::new();
        let mut populate_write = false;
        if map_copy(self.map_copy) && !jobs.is_empty() {
            let mut at = 0u64;
            for j in jobs {
                if j.offset != at {
                    return Err(CheckpointError::Tree {
                        pid,
                        why: format!(
                            "internal: planned copy at data offset {} expected {at}",
                            j.offset
                        ),
                    });
                }
                at += j.len;
            }
            // Only files whose space is there already (recycled or reserved): mapping a
            // sparse file would allocate page by page in the faults.
            let part_len = |k: usize| -> u64 {
                let (a, b, _) = ranges[k];
                jobs[a..b].iter().map(|j| j.len).sum()
            };
            if (0..nparts).all(|k| ws[k].capacity() >= part_len(k)) || map_forced() {
                populate_write = !ws[0].on_tmpfs();
                for (k, w) in ws.iter().enumerate() {
                    maps.push(w.map_data(part_len(k))?);
                }
            }
        }
        let slots: Option<Vec<std::sync::Mutex<Option<&mut [u8]>>>> =
            (!maps.is_empty()).then(|| {
                let mut slots = Vec::with_capacity(jobs.len());
                for (m, &(a, b, _)) in maps.iter_mut().zip(&ranges) {
                    let mut rest = m.as_mut_slice();
                    for j in &jobs[a..b] {
                        let n = usize::try_from(j.len).unwrap_or(usize::MAX).min(rest.len());
                        let (x, y) = std::mem::take(&mut rest).split_at_mut(n);
                        slots.push(std::sync::Mutex::new(Some(x)));
                        rest = y;
                    }
                }
                slots
            });
        let slots = slots.as_deref();
        let populate = populate_first();
        let next: Vec<std::sync::atomic::AtomicUsize> = ranges
            .iter()
            .map(|&(a, _, _)| std::sync::atomic::AtomicUsize::new(a))
            .collect();
        let (next, ranges) = (&next, &ranges);
        let failed = std::sync::atomic::AtomicBool::new(false);
        let nworkers = dump_threads().min(jobs.len()).max(1);
        let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Vec<(u32, u64)>, u64)>();
        let wr: &[PagesWriter] = ws;
        let take = || {
            self.pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_else(|| vec![0u8; BATCH])
        };
        let results = std::thread::scope(|s| {
            let mut handles = Vec::new();
            for me in 0..nworkers {
                let mut buf = take();
                let (failed, done_tx) = (&failed, done_tx.clone());
                handles.push(s.spawn(move || -> Result<Vec<u8>> {
                    let mut busy = (std::time::Duration::ZERO, std::time::Duration::ZERO);
                    // Own part first (worker `me` owns parts me, me + nworkers, ...), then
                    // the others in turn.
                    let mut part = me % nparts;
                    let mut tried = 0;
                    let res = loop {
                        if failed.load(std::sync::atomic::Ordering::Relaxed) {
                            break Ok(());
                        }
                        let i = next[part].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= ranges[part].1 {
                            tried += 1;
                            if tried >= nparts {
                                break Ok(());
                            }
                            part = (part + 1) % nparts;
                            continue;
                        }
                        let Some(job) = jobs.get(i) else {
                            break Ok(());
                        };
                        let t = Instant::now();
                        let slot = slots.and_then(|v| v.get(i)).map(|m| {
                            m.lock()
                                .map(|mut g| g.take())
                                .unwrap_or_default()
                                .unwrap_or_default()
                        });
                        let data: &[u8] = match (&job.data, slot) {
                            (JobData::Remote(ranges), Some(dst)) => {
                                if populate {
                                    let _ = sys::mem::populate(dst, populate_write);
                                }
                                if let Err(e) = sys::mem::read_vectored(pid, dst, ranges).pid(pid) {
                                    break Err(e);
                                }
                                dst
                            }
                            (JobData::Bytes(b), Some(dst)) => {
                                if dst.len() != b.len() {
                                    break Err(CheckpointError::Tree {
                                        pid,
                                        why: "internal: mapped piece of the wrong size".into(),
                                    });
                                }
                                dst.copy_from_slice(b);
                                dst
                            }
                            (JobData::Remote(ranges), None) => {
                                let n = usize::try_from(job.len).unwrap_or(usize::MAX);
                                if buf.len() < n {
                                    buf.resize(n, 0);
                                }
                                if let Err(e) =
                                    sys::mem::read_vectored(pid, &mut buf[..n], ranges).pid(pid)
                                {
                                    break Err(e);
                                }
                                &buf[..n]
                            }
                            (JobData::Bytes(b), None) => b,
                        };
                        // One CRC32C per piece within a chunk of the pages file's table.
                        let mut crc = Vec::new();
                        let (mut o, mut d) = (job.offset, data);
                        while !d.is_empty() {
                            let room = image::PAGES_CHUNK - o % image::PAGES_CHUNK;
                            let n = usize::try_from(room).unwrap_or(usize::MAX).min(d.len());
                            crc.push((crc32c::crc32c(&d[..n]), n as u64));
                            o += n as u64;
                            d = &d[n..];
                        }
                        let t1 = Instant::now();
                        busy.0 += t1 - t;
                        if slots.is_none() {
                            let at = job.offset - ranges[part].2;
                            if let Err(e) = wr[part].write_data_at(at, data) {
                                break Err(e.into());
                            }
                        }
                        busy.1 += t1.elapsed();
                        let _ = done_tx.send((i, crc, job.len));
                    };
                    tracing::debug!(
                        "pid {pid}: dump worker read+crc {:?}, write {:?}",
                        busy.0,
                        busy.1
                    );
                    if res.is_err() {
                        failed.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    res.map(|()| buf)
                }));
            }
            drop(done_tx);
            let mut crcs = vec![None; jobs.len()];
            let mut done = 0u64;
            for (i, crc, len) in done_rx.iter() {
                if let Some(c) = crcs.get_mut(i) {
                    *c = Some(crc);
                }
                done += len;
                if let Some(p) = self.progress {
                    p(self.done_before + done, self.total_hint);
                }
            }
            let mut first_err = None;
            for h in handles {
                match h.join() {
                    Ok(Ok(buf)) => {
                        if let Ok(mut p) = self.pool.lock() {
                            p.push(buf);
                        }
                    }
                    Ok(Err(e)) => {
                        first_err.get_or_insert(e);
                    }
                    Err(_) => {
                        first_err.get_or_insert(CheckpointError::Tree {
                            pid,
                            why: "dump worker thread panicked".into(),
                        });
                    }
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(crcs),
            }
        })?;
        drop(maps);
        let mut len = 0u64;
        for (i, (job, c)) in jobs.iter().zip(results).enumerate() {
            let Some(c) = c else {
                return Err(CheckpointError::Tree {
                    pid,
                    why: "a dump worker stopped before copying every batch".into(),
                });
            };
            let k = ranges.iter().rposition(|&(a, _, _)| a <= i).unwrap_or(0);
            ws[k].record_written(&c)?;
            len += job.len;
        }
        Ok(len)
    }

    /// [`Self::dump`] into memory: the "writer" keeps every filled buffer and hands back a
    /// fresh one.
    fn dump_to_memory(
        &self,
        vmas: &mut [Vma],
        name: String,
        defer: &std::sync::Mutex<Vec<DeferredPages>>,
        t0: Instant,
        scanned: Option<Vec<Vec<(u64, u64)>>>,
    ) -> Result<(PagesRef, u64, std::time::Duration)> {
        let pid = self.pid;
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize, u32)>(2);
        let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        // The pool's buffers are faulted in already: fresh ones would fault during the copy.
        let pool = self.pool;
        let take = move || {
            let mut b = pool
                .lock()
                .ok()
                .and_then(|mut p| p.pop())
                .unwrap_or_default();
            // The reader fills whole batches (a full dump's pool holds smaller buffers).
            if b.len() < BATCH {
                b.resize(BATCH, 0);
            }
            b
        };
        let mut r = Reader {
            pid,
            batch: Batch {
                buf: take(),
                used: 0,
                ranges: Vec::new(),
            },
            limit: BATCH,
            pos: 0,
            sink: Sink::Pipeline(full_tx),
            empty: &empty_rx,
            progress: self.progress,
            done_before: self.done_before,
            total_hint: 0,
            busy: std::time::Duration::ZERO,
            crc_time: std::time::Duration::ZERO,
            scan_time: std::time::Duration::ZERO,
            crc: 0,
            split: true,
            checksum: false,
        };
        let _ = empty_tx.send(take());
        let (res, chunks, last) = std::thread::scope(|s| {
            let keeper = s.spawn(move || {
                let mut chunks = Vec::new();
                while let Ok((buf, used, crc)) = full_rx.recv() {
                    let _ = empty_tx.send(take());
                    if used > 0 {
                        chunks.push((buf, used, crc));
                    }
                }
                chunks
            });
            let res = self
                .read_all(&mut r, vmas, scanned)
                .and_then(|()| r.flush());
            tracing::debug!(
                "pid {pid}: copy into memory: process_vm_readv {:?}, checksum {:?}, scan {:?}",
                r.busy,
                r.crc_time,
                r.scan_time
            );
            let last = std::mem::take(&mut r.batch.buf);
            drop(r);
            (res, keeper.join().unwrap_or_default(), last)
        });
        if let Ok(mut p) = self.pool.lock() {
            p.push(last);
            p.extend(empty_rx.try_iter());
        }
        res?;
        let len: u64 = chunks.iter().map(|c| c.1 as u64).sum();
        // The CRC32C is filled in by `DeferredPages::write` once the tree runs again.
        let expect = PagesRef {
            parts: Vec::new(),
            file: name.clone(),
            len,
            crc32c: 0,
        };
        defer
            .lock()
            .map_err(|_| CheckpointError::Tree {
                pid,
                why: "deferred pages list poisoned".into(),
            })?
            .push(DeferredPages {
                pid,
                dir: self.dir.to_path_buf(),
                name,
                chunks,
                expect: expect.clone(),
            });
        Ok((expect, len, t0.elapsed()))
    }

    /// Copies the data of `vmas`; `scanned`: their data ranges found beforehand (see
    /// [`scan_data`]), else each is scanned here.
    fn read_all(
        &self,
        r: &mut Reader<'_>,
        vmas: &mut [Vma],
        mut scanned: Option<Vec<Vec<(u64, u64)>>>,
    ) -> Result<()> {
        let pid = self.pid;
        let mut scanner = sys::memscan::PageScanner::open(pid).pid(pid)?;
        // Not scanned early: the incremental copy scans large mappings in two halves at once.
        let mut second: Option<sys::memscan::PageScanner> = None;
        let parallel = self.defer.is_some() && !one_copy_thread();
        let mut procmem: Option<ProcMem> = None;
        for (i, v) in vmas.iter_mut().enumerate() {
            let Some(anon_only) = scan_kind(&v.kind) else {
                continue;
            };
            let readable = v.prot & 1 != 0;
            let t_scan = Instant::now();
            let pre = scanned
                .as_mut()
                .and_then(|s| s.get_mut(i))
                .map(std::mem::take);
            let data = if let Some(d) = pre {
                d
            } else if parallel && v.end - v.start >= SPLIT_SCAN_MIN_BYTES {
                let other = match &mut second {
                    Some(s) => s,
                    None => second.insert(sys::memscan::PageScanner::open(pid).pid(pid)?),
                };
                scan_split(pid, &mut scanner, other, v.start, v.end, anon_only)?
            } else {
                scanner.data_ranges(v.start, v.end, anon_only).pid(pid)?
            };
            r.scan_time += t_scan.elapsed();
            let mut pieces = Vec::with_capacity(data.len());
            for (s, e) in data {
                if self.unchanged.is_empty() {
                    pieces.push((s, e, false));
                } else {
                    pieces.extend(crate::incr::split(s, e, self.unchanged));
                }
            }
            for (s, e, in_parent) in pieces {
                if in_parent {
                    let npages = (e - s) / PAGE_SIZE;
                    match v.pages.last_mut() {
                        Some(last)
                            if last.in_parent && last.vaddr + last.npages * PAGE_SIZE == s =>
                        {
                            last.npages += npages
                        }
                        _ => v.pages.push(PageRun {
                            vaddr: s,
                            npages,
                            offset: 0,
                            in_parent: true,
                        }),
                    }
                    continue;
                }
                if !readable {
                    let pm = match &procmem {
                        Some(p) => p,
                        None => procmem.insert(ProcMem::open(pid, false).pid(pid)?),
                    };
                    let mut data = vec![0u8; usize::try_from(e - s).unwrap_or(0)];
                    pm.read_exact_at(&mut data, s).pid(pid)?;
                    r.flush()?;
                    v.pages.push(PageRun {
                        vaddr: s,
                        npages: (e - s) / PAGE_SIZE,
                        offset: r.offset(),
                        in_parent: false,
                    });
                    r.push_bytes(&data)?;
                    continue;
                }
                let mut a = s;
                while a < e {
                    let room = (r.limit - r.batch.used) as u64;
                    if room == 0 {
                        r.flush()?;
                        continue;
                    }
                    let len = (e - a).min(room);
                    let offset = r.offset();
                    match v.pages.last_mut() {
                        Some(last)
                            if !last.in_parent
                                && last.vaddr + last.npages * PAGE_SIZE == a
                                && last.offset + last.npages * PAGE_SIZE == offset =>
                        {
                            last.npages += len / PAGE_SIZE
                        }
                        _ => v.pages.push(PageRun {
                            vaddr: a,
                            npages: len / PAGE_SIZE,
                            offset,
                            in_parent: false,
                        }),
                    }
                    r.batch.ranges.push(RemoteRange { addr: a, len });
                    r.batch.used += usize::try_from(len).unwrap_or(0);
                    a += len;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod deferred_tests {
    use super::*;

    fn deferred(dir: &Path, parts: &[&[u8]]) -> DeferredPages {
        let mut crc = 0;
        let mut chunks = Vec::new();
        for p in parts {
            crc = crc32c::crc32c_append(crc, p);
            let mut buf = vec![0u8; p.len() + 16];
            buf[..p.len()].copy_from_slice(p);
            chunks.push((buf, p.len(), crc));
        }
        let len = parts.iter().map(|p| p.len() as u64).sum();
        DeferredPages {
            pid: 1,
            dir: dir.to_path_buf(),
            name: "pages-1.img".into(),
            chunks,
            expect: PagesRef {
                parts: Vec::new(),
                file: "pages-1.img".into(),
                len,
                crc32c: crc,
            },
        }
    }

    #[test]
    fn deferred_pages_write_the_file_the_tree_names() {
        let d = tempfile::tempdir().expect("tempdir");
        let (a, b) = (vec![7u8; 4096], vec![9u8; 8192]);
        let p = deferred(d.path(), &[&a, &b]);
        let want = p.expect.clone();
        let r = p.write().expect("write");
        assert_eq!((r.len, r.crc32c), (12288, want.crc32c));
        let data = image::read_pages(d.path(), &r).expect("read back");
        assert_eq!(data, [a, b].concat());
    }

    #[test]
    fn deferred_pages_fail_cleanly_on_a_mismatch_or_a_missing_dir() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut p = deferred(d.path(), &[&[1u8; 4096]]);
        p.expect.len += 4096;
        let e = p.write().expect_err("mismatch");
        assert!(e.to_string().contains("do not match"), "{e}");
        let p = deferred(&d.path().join("gone"), &[&[1u8; 4096]]);
        assert!(p.write().is_err());
    }
}
