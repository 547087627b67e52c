//! Lazy (post-copy) restore: memory registered with userfaultfd `MISSING` mode is filled on
//! first touch (`UFFDIO_COPY` of the faulting page plus a prefetch window, `UFFDIO_ZEROPAGE` for
//! pages that are zero), while the rest is pushed in the background in larger chunks
//! (kernel-facts `t10_uffd_lazy.c`: ~12–24 µs per single-page fault, ~2 µs per page with a
//! 64-page window, ~2.3 GB/s bulk push).
//!
//! The server also follows the address space: it negotiates `EVENT_FORK` (a forked child gets
//! its own userfaultfd, served with a copy of the parent's page states — without this feature
//! the child would silently read zeros), `EVENT_REMOVE` (`MADV_DONTNEED`: those pages must read
//! as zero from now on, never be filled from the image), `EVENT_UNMAP` and `EVENT_REMAP`
//! (`mremap` moves the pending pages' image addresses along).
//!
//! **In-process use.** A fork in the served process waits until the server has read the fork
//! event. glibc's `fork()` holds the malloc locks across the syscall, so a server *thread in the
//! forking process* that allocates before reading the event deadlocks; the server therefore
//! keeps its poll set preallocated, but it is meant to run in another process (the restorer).
//! Tests that fork next to a server use the raw `fork` syscall.
//!
//! **Failure semantics.** If the page source fails, [`LazyServer::step`]/[`LazyServer::run`]
//! return [`LazyError::Source`] and leave the faulting thread blocked — it never runs on wrong
//! memory. The caller must then SIGKILL the restored tree *before* dropping the server: closing
//! the last userfaultfd reference wakes blocked threads and lets the kernel map zero pages.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::uffd::{page_size, Event, Features, RegisterMode, UffdError, Userfaultfd};

/// Features a lazy-restore userfaultfd must be created with ([`crate::uffd::Userfaultfd::open`]
/// or `from_unconfigured` for one created in the target).
pub const LAZY_FEATURES: Features = Features(
    Features::EVENT_FORK.0
        | Features::EVENT_REMAP.0
        | Features::EVENT_REMOVE.0
        | Features::EVENT_UNMAP.0,
);

/// Where page contents come from (an image file, a socket to the image host, memory, …).
pub trait PageSource: Send {
    /// Fills `buf` (a whole number of pages) with the image contents of the pages at address
    /// `image_addr` (the address the pages had when dumped). Pages absent from the image must
    /// be filled with zeros.
    fn read_pages(&mut self, image_addr: u64, buf: &mut [u8]) -> std::io::Result<()>;

    /// The same pages without a copy, if the source holds them in memory (an `mmap`ed image
    /// file, a buffer); `None` (the default) makes the server use [`read_pages`](Self::read_pages).
    fn borrow_pages(&self, _image_addr: u64, _len: usize) -> Option<&[u8]> {
        None
    }
}

/// Why lazy serving failed.
#[derive(Debug, thiserror::Error)]
pub enum LazyError {
    /// The page source failed: the restored tree must be killed (see the module docs).
    #[error("lazy restore: page source failed for {pages} page(s) at {addr:#x}: {source}; the faulting thread is left blocked, kill the restored tree")]
    Source {
        /// first page address requested
        addr: u64,
        /// pages requested
        pages: usize,
        /// the source's error
        source: std::io::Error,
    },
    /// A userfaultfd operation failed.
    #[error("lazy restore: {0}")]
    Uffd(#[from] UffdError),
    /// `poll` failed.
    #[error("lazy restore: poll on userfaultfd: {0}")]
    Poll(std::io::Error),
}

/// Tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LazyOptions {
    /// pages filled per fault (the faulting page and the following pending ones)
    pub prefetch_pages: usize,
    /// pages per background push (0 = no background push: faults only)
    pub push_pages: usize,
}

impl Default for LazyOptions {
    fn default() -> Self {
        Self {
            prefetch_pages: 16,
            push_pages: 512,
        }
    }
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LazyStats {
    /// page faults served
    pub faults: u64,
    /// pages filled with image data in response to faults (including prefetch)
    pub fault_pages: u64,
    /// pages filled by the background push
    pub pushed_pages: u64,
    /// pages mapped to the zero page
    pub zero_pages: u64,
    /// `EEXIST` races (page already present)
    pub races: u64,
    /// forked children followed
    pub forks: u64,
    /// remove/unmap/remap events handled
    pub layout_events: u64,
}

const PENDING: u8 = 0;
const ZERO: u8 = 1;
const DONE: u8 = 2;

#[derive(Debug, Clone)]
struct Region {
    start: u64,
    image: u64,
    state: Vec<u8>,
}

#[derive(Debug)]
struct Mm {
    uffd: Userfaultfd,
    regions: Vec<Region>,
    alive: bool,
}

/// Serves page faults of one or more address spaces (the restored process and any children it
/// forks) from a [`PageSource`].
pub struct LazyServer<S: PageSource> {
    mms: Vec<Mm>,
    source: S,
    opts: LazyOptions,
    page: u64,
    buf: Vec<u8>,
    stats: LazyStats,
    push_cursor: (usize, usize, usize),
    /// faults whose fill returned `EAGAIN` (address space changing, e.g. during a fork or
    /// mremap): retried after the pending events are read, so the thread is never left waiting
    retry: Vec<(usize, u64)>,
    /// preallocated poll set (rebuilt only when address spaces are added or die)
    pollfds: Vec<libc::pollfd>,
}

impl<S: PageSource> std::fmt::Debug for LazyServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyServer")
            .field("stats", &self.stats)
            .field("opts", &self.opts)
            .finish()
    }
}

fn set_nonblock(fd: &impl AsFd) {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we hold; no pointers.
    unsafe {
        let fl = libc::fcntl(raw, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

fn is_errno(e: &UffdError, n: i32) -> bool {
    matches!(e, UffdError::Range { source, .. } if source.raw_os_error() == Some(n))
}

impl<S: PageSource> LazyServer<S> {
    /// A server for the address space `uffd` belongs to. `uffd` must have been configured with
    /// (at least) [`LAZY_FEATURES`]; it is switched to non-blocking.
    pub fn new(uffd: Userfaultfd, source: S, opts: LazyOptions) -> Self {
        set_nonblock(&uffd);
        let page = page_size();
        let window = opts.prefetch_pages.max(opts.push_pages).max(1);
        Self {
            mms: vec![Mm {
                uffd,
                regions: Vec::new(),
                alive: true,
            }],
            source,
            opts: LazyOptions {
                prefetch_pages: opts.prefetch_pages.max(1),
                push_pages: opts.push_pages,
            },
            page,
            buf: vec![0u8; window * usize::try_from(page).unwrap_or(4096)],
            stats: LazyStats::default(),
            push_cursor: (0, 0, 0),
            retry: Vec::with_capacity(64),
            pollfds: Vec::with_capacity(8),
        }
    }

    /// Registers `[start, start+len)` of the (first) address space for missing-page faults;
    /// its contents are the image's pages at `image_addr` (usually `start`). The range must be
    /// mapped, anonymous and still empty.
    pub fn register(&mut self, start: u64, len: u64, image_addr: u64) -> Result<(), LazyError> {
        self.mms[0]
            .uffd
            .register(start, len, RegisterMode::MISSING)?;
        let n = usize::try_from(len / self.page).unwrap_or(0);
        self.mms[0].regions.push(Region {
            start,
            image: image_addr,
            state: vec![PENDING; n],
        });
        self.mms[0].regions.sort_by_key(|r| r.start);
        Ok(())
    }

    /// Marks `[start, start+len)` of the (first) address space as needing no fill (pages the
    /// image does not hold): never pushed; a fault there is still answered (with the source's
    /// zeros) while the server runs, and after it the kernel's normal zero-fill applies.
    pub fn mark_done(&mut self, start: u64, len: u64) {
        self.set_state(0, start, start.saturating_add(len), DONE);
    }

    /// Fills up to `pages` missing pages from `addr` (page aligned down) of the first address
    /// space now, without waking anyone (e.g. around a thread's stack pointer before the
    /// process first runs). `addr` must lie in a registered range; counted as pushed.
    pub fn prefill(&mut self, addr: u64, pages: usize) -> Result<usize, LazyError> {
        let page = self.page;
        let addr = addr & !(page - 1);
        let known = self.mms[0]
            .regions
            .iter()
            .any(|r| addr >= r.start && addr < r.start + r.state.len() as u64 * page);
        if !known {
            return Ok(0);
        }
        let want = pages
            .max(1)
            .min(self.buf.len() / usize::try_from(page).unwrap_or(4096));
        self.fill_at(0, addr, want, false)
    }

    /// Pages per background push from now on (0 stops the push: faults only).
    pub fn set_push_pages(&mut self, pages: usize) {
        self.opts.push_pages = pages;
        let want = pages.max(self.opts.prefetch_pages) * usize::try_from(self.page).unwrap_or(4096);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    /// Pages of every live address space still waiting for their contents.
    pub fn pending_pages(&self) -> u64 {
        self.mms
            .iter()
            .filter(|m| m.alive)
            .flat_map(|m| m.regions.iter())
            .map(|r| r.state.iter().filter(|&&s| s != DONE).count() as u64)
            .sum()
    }

    /// Counters so far.
    pub fn stats(&self) -> LazyStats {
        self.stats
    }

    /// Whether every registered page of every live address space has been filled.
    pub fn is_complete(&self) -> bool {
        self.mms
            .iter()
            .filter(|m| m.alive)
            .all(|m| m.regions.iter().all(|r| r.state.iter().all(|&s| s == DONE)))
    }

    /// Serves everything pending, waiting up to `timeout` for an event; when idle, pushes one
    /// background chunk. Returns whether all pages are in place (checked on an idle step, so
    /// a step that served events or pushed a chunk returns false; call it again).
    pub fn step(&mut self, timeout: Duration) -> Result<bool, LazyError> {
        let mut handled = self.drain_events()?;
        let mut k = 0;
        while k < self.retry.len() {
            let (mi, addr) = self.retry.swap_remove(k);
            handled += 1;
            if self.mms[mi].alive {
                let before = self.retry.len();
                self.fill_at(mi, addr, self.opts.prefetch_pages, true)?;
                if self.retry.len() > before {
                    k += 1; // still busy: keep it for the next step
                }
            }
        }
        if handled == 0 {
            if self.opts.push_pages > 0 && self.push_one()? {
                // (completeness is checked once the push finds nothing left: a full scan of
                // the page states after every chunk or fault would cost O(pages) each time)
                return Ok(false);
            }
            if self.is_complete() {
                return Ok(true);
            }
            self.wait(timeout)?;
            self.drain_events()?;
        }
        Ok(false)
    }

    /// Serves until every page is in place (then the caller drops the server, which closes the
    /// userfaultfd and unregisters the ranges) or `stop` is set.
    pub fn run(&mut self, stop: &AtomicBool) -> Result<LazyStats, LazyError> {
        while !stop.load(Ordering::Relaxed) {
            if self.step(Duration::from_millis(50))? {
                break;
            }
        }
        Ok(self.stats)
    }

    fn wait(&mut self, timeout: Duration) -> Result<(), LazyError> {
        let live = self.mms.iter().filter(|m| m.alive).count();
        let same = self.pollfds.len() == live
            && self
                .mms
                .iter()
                .filter(|m| m.alive)
                .zip(&self.pollfds)
                .all(|(m, p)| m.uffd.as_fd().as_raw_fd() == p.fd);
        if !same {
            self.pollfds.clear();
            for m in self.mms.iter().filter(|m| m.alive) {
                self.pollfds.push(libc::pollfd {
                    fd: m.uffd.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let n = libc::nfds_t::try_from(self.pollfds.len()).unwrap_or(0);
        // SAFETY: `pollfds` holds `n` valid pollfd entries for the duration of the call.
        let r = unsafe { libc::poll(self.pollfds.as_mut_ptr(), n, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(LazyError::Poll(e));
            }
        }
        Ok(())
    }

    /// Reads and handles every pending event; returns how many.
    fn drain_events(&mut self) -> Result<usize, LazyError> {
        let mut handled = 0;
        let mut i = 0;
        while i < self.mms.len() {
            if !self.mms[i].alive {
                i += 1;
                continue;
            }
            loop {
                let ev = match self.mms[i].uffd.read_event() {
                    Ok(Some(ev)) => ev,
                    Ok(None) => break,
                    Err(_) => {
                        // the address space is gone (process exited)
                        self.mms[i].alive = false;
                        break;
                    }
                };
                handled += 1;
                self.handle(i, ev)?;
            }
            i += 1;
        }
        Ok(handled)
    }

    fn handle(&mut self, mi: usize, ev: Event) -> Result<(), LazyError> {
        let page = self.page;
        match ev {
            Event::PageFault { address, .. } => {
                self.stats.faults += 1;
                self.fill_at(mi, address & !(page - 1), self.opts.prefetch_pages, true)?;
            }
            Event::Fork { ufd } => {
                let raw = i32::try_from(ufd).unwrap_or(-1);
                if raw >= 0 {
                    // SAFETY: the kernel installed this fd in our table for the child's
                    // userfaultfd context; we are its only owner.
                    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                    let features = self.mms[mi].uffd.features();
                    let uffd = Userfaultfd::from_configured(fd, features);
                    set_nonblock(&uffd);
                    let regions = self.mms[mi].regions.clone();
                    self.mms.push(Mm {
                        uffd,
                        regions,
                        alive: true,
                    });
                    self.stats.forks += 1;
                }
            }
            Event::Remove { start, end } => {
                self.stats.layout_events += 1;
                self.set_state(mi, start, end, ZERO);
            }
            Event::Unmap { start, end } => {
                self.stats.layout_events += 1;
                self.set_state(mi, start, end, DONE);
            }
            Event::Remap { from, to, len } => {
                self.stats.layout_events += 1;
                self.remap(mi, from, to, len);
            }
            Event::Other(_) => {}
        }
        Ok(())
    }

    fn set_state(&mut self, mi: usize, start: u64, end: u64, st: u8) {
        let page = self.page;
        for r in &mut self.mms[mi].regions {
            let rend = r.start + r.state.len() as u64 * page;
            let (s, e) = (start.max(r.start), end.min(rend));
            if s >= e {
                continue;
            }
            let a = usize::try_from((s - r.start) / page).unwrap_or(0);
            let b = usize::try_from((e - r.start).div_ceil(page))
                .unwrap_or(0)
                .min(r.state.len());
            for x in &mut r.state[a..b] {
                // a page dropped by MADV_DONTNEED now reads as zero even if it had been filled
                *x = if st == ZERO || *x != DONE { st } else { *x };
            }
        }
    }

    fn remap(&mut self, mi: usize, from: u64, to: u64, len: u64) {
        let page = self.page;
        let mut moved = Vec::new();
        for r in &mut self.mms[mi].regions {
            let rend = r.start + r.state.len() as u64 * page;
            let (s, e) = (from.max(r.start), (from + len).min(rend));
            if s >= e {
                continue;
            }
            let a = usize::try_from((s - r.start) / page).unwrap_or(0);
            let b = usize::try_from((e - r.start) / page).unwrap_or(0);
            let state: Vec<u8> = r.state[a..b].to_vec();
            for x in &mut r.state[a..b] {
                *x = DONE; // nothing is left at the old address
            }
            moved.push(Region {
                start: to + (s - from),
                image: r.image + (s - r.start),
                state,
            });
        }
        self.mms[mi].regions.extend(moved);
        self.mms[mi].regions.sort_by_key(|r| r.start);
    }

    /// Fills up to `max` pages starting at `addr` (page aligned) in address space `mi`, taking
    /// the run of pages in the same state as the first one. `wake` wakes waiting threads.
    fn fill_at(
        &mut self,
        mi: usize,
        addr: u64,
        max: usize,
        wake: bool,
    ) -> Result<usize, LazyError> {
        let page = self.page;
        let found = self.mms[mi]
            .regions
            .iter()
            .position(|r| addr >= r.start && addr < r.start + r.state.len() as u64 * page);
        let Some(ri) = found else {
            // a registered range we do not know (e.g. grown): new memory is zero
            return self.zero(mi, addr, 1, wake).map(|_| 1);
        };
        let (first, image, run) = {
            let r = &self.mms[mi].regions[ri];
            let i = usize::try_from((addr - r.start) / page).unwrap_or(0);
            let st = r.state[i];
            let run = r.state[i..]
                .iter()
                .take(max)
                .take_while(|&&s| s == st)
                .count();
            (st, r.image + (addr - r.start), run)
        };
        if first == DONE {
            if !wake {
                return Ok(0);
            }
            // A fault on a page we consider filled: either it raced with a fill (the copy below
            // fails with EEXIST and we wake the waiter), or it is a forked child's page whose
            // state was cloned after the parent filled its own copy (the child's page is still
            // the image's: fill it from the source).
            self.stats.races += 1;
            let bytes = usize::try_from(page).unwrap_or(4096);
            self.source
                .read_pages(image, &mut self.buf[..bytes])
                .map_err(|source| LazyError::Source {
                    addr: image,
                    pages: 1,
                    source,
                })?;
            return match self.mms[mi].uffd.copy(addr, &self.buf[..bytes], true) {
                Ok(_) => Ok(1),
                Err(e) if is_errno(&e, libc::EEXIST) => {
                    let _ = self.mms[mi].uffd.wake(addr, page);
                    Ok(0)
                }
                Err(e) if is_errno(&e, libc::EAGAIN) => {
                    self.retry.push((mi, addr));
                    Ok(0)
                }
                Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => {
                    self.mms[mi].alive = false;
                    Ok(0)
                }
                Err(e) => Err(e.into()),
            };
        }
        let done = match first {
            ZERO => self.zero(mi, addr, run, wake)?,
            _ => {
                let bytes = run * usize::try_from(page).unwrap_or(4096);
                // zero-copy when the source holds the pages in memory, else read into our buffer
                let borrowed = self.source.borrow_pages(image, bytes).is_some();
                if !borrowed {
                    self.source
                        .read_pages(image, &mut self.buf[..bytes])
                        .map_err(|source| LazyError::Source {
                            addr: image,
                            pages: run,
                            source,
                        })?;
                }
                let copied = {
                    let data: &[u8] = if borrowed {
                        self.source.borrow_pages(image, bytes).unwrap_or(&[])
                    } else {
                        &self.buf[..bytes]
                    };
                    // (stops at the first non-zero byte, so cheap for data pages)
                    if data.len() != bytes {
                        return Err(LazyError::Source {
                            addr: image,
                            pages: run,
                            source: std::io::Error::other("source lent a short buffer"),
                        });
                    }
                    if data.iter().all(|&b| b == 0) {
                        None
                    } else {
                        Some(self.mms[mi].uffd.copy(addr, data, wake))
                    }
                };
                if let Some(copied) = copied {
                    match copied {
                        Ok(n) => usize::try_from(n / page).unwrap_or(0).max(1).min(run),
                        Err(e) if is_errno(&e, libc::EEXIST) => {
                            self.stats.races += 1;
                            if wake {
                                let _ = self.mms[mi].uffd.wake(addr, page);
                            }
                            1
                        }
                        Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => {
                            self.mms[mi].alive = false;
                            return Ok(0);
                        }
                        Err(e) if is_errno(&e, libc::EAGAIN) => {
                            // layout changing: retry after the pending events are read
                            if wake {
                                self.retry.push((mi, addr));
                            }
                            return Ok(0);
                        }
                        Err(e) => return Err(e.into()),
                    }
                } else {
                    self.zero(mi, addr, run, wake)?
                }
            }
        };
        if first == PENDING {
            if wake {
                self.stats.fault_pages += done as u64;
            } else {
                self.stats.pushed_pages += done as u64;
            }
        }
        let r = &mut self.mms[mi].regions[ri];
        let i = usize::try_from((addr - r.start) / page).unwrap_or(0);
        for s in &mut r.state[i..i + done] {
            *s = DONE;
        }
        Ok(done)
    }

    fn zero(&mut self, mi: usize, addr: u64, pages: usize, wake: bool) -> Result<usize, LazyError> {
        let len = pages as u64 * self.page;
        match self.mms[mi].uffd.zeropage(addr, len, wake) {
            Ok(()) => {
                self.stats.zero_pages += pages as u64;
                Ok(pages)
            }
            Err(e) if is_errno(&e, libc::EEXIST) => {
                self.stats.races += 1;
                if wake {
                    let _ = self.mms[mi].uffd.wake(addr, self.page);
                }
                Ok(1)
            }
            Err(e) if is_errno(&e, libc::ESRCH) || is_errno(&e, libc::ENOENT) => {
                self.mms[mi].alive = false;
                Ok(0)
            }
            Err(e) if is_errno(&e, libc::EAGAIN) => {
                if wake {
                    self.retry.push((mi, addr));
                }
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Pushes the next run of not-yet-filled pages; returns false when nothing is left.
    fn push_one(&mut self) -> Result<bool, LazyError> {
        let page = self.page;
        let (mut mi, mut ri, mut pi) = self.push_cursor;
        while mi < self.mms.len() {
            if self.mms[mi].alive && ri < self.mms[mi].regions.len() {
                let r = &self.mms[mi].regions[ri];
                if let Some(off) = r.state[pi.min(r.state.len())..]
                    .iter()
                    .position(|&s| s != DONE)
                {
                    let idx = pi + off;
                    let addr = r.start + idx as u64 * page;
                    self.push_cursor = (mi, ri, idx);
                    self.fill_at(mi, addr, self.opts.push_pages, false)?;
                    return Ok(true);
                }
                ri += 1;
                pi = 0;
                continue;
            }
            mi += 1;
            ri = 0;
            pi = 0;
        }
        // wrap around once: states may have changed behind the cursor (remove/remap events)
        if self.push_cursor != (0, 0, 0) {
            self.push_cursor = (0, 0, 0);
            return self.push_one();
        }
        Ok(false)
    }
}

/// A [`PageSource`] over a byte buffer that holds the image of `[base, base + data.len())`.
#[derive(Debug)]
pub struct MemSource<'a> {
    /// image address of `data[0]`
    pub base: u64,
    /// the bytes
    pub data: &'a [u8],
}

impl PageSource for MemSource<'_> {
    fn borrow_pages(&self, image_addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(image_addr.checked_sub(self.base)?).ok()?;
        self.data.get(off..off.checked_add(len)?)
    }

    fn read_pages(&mut self, image_addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let off = image_addr
            .checked_sub(self.base)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o + buf.len() <= self.data.len())
            .ok_or_else(|| {
                std::io::Error::other(format!("address {image_addr:#x} outside the image"))
            })?;
        buf.copy_from_slice(&self.data[off..off + buf.len()]);
        Ok(())
    }
}
