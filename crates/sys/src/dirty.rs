//! Dirty-page tracking of another process without soft-dirty (compiled out of this kernel):
//! a userfaultfd created *inside* the target by one injected `userfaultfd()` syscall, pulled
//! into the tracker with `pidfd_getfd`, negotiated with `WP_ASYNC | WP_UNPOPULATED`, every
//! writable private mapping registered for write-protection and protected; each
//! [`DirtyTracker::collect`] then reports the pages written since the previous one and
//! write-protects them again in the same `PAGEMAP_SCAN` walk.
//!
//! Write faults on protected pages are resolved by the kernel itself (`WP_ASYNC`): the target
//! never blocks and needs no helper thread; each first write per round costs it ~1.5 µs.
//!
//! What is reported and what the caller must do:
//! - [`DirtyRound::written`]: regions written since the last round; those with
//!   both [`crate::pagemap::Categories::PRESENT`] and [`crate::pagemap::Categories::SWAPPED`]
//!   clear were dropped (`MADV_DONTNEED`) and now read as zeros (a page being migrated by the
//!   kernel at that instant is a swap-type entry: `SWAPPED`, not `PRESENT`, yet it holds data);
//! - [`DirtyRound::whole`]: ranges that were not tracked during the whole round (new mappings,
//!   grown mappings, mappings made writable, a mapping replaced at the same address): dump
//!   them whole; they are tracked from now on;
//! - [`DirtyRound::skipped`]: mappings the kernel refused to register (dump them whole every
//!   time).
//!
//! `MAP_SHARED` mappings are not tracked: uffd-wp state lives in each process's page tables, so
//! a write by another process sharing the pages is invisible here (kernel-facts t03, "per-process
//! PTE state"). Shared memory must be dumped whole (once per object) or tracked in every process
//! that maps it. A `fork` in the target does not carry the registration to the child.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::fdpull::{FdPullError, PidFd};
use crate::pagemap::{Pagemap, PagemapError, Region};
use crate::uffd::{Features, RegisterMode, UffdError, Userfaultfd};

/// The error an injector returns when it could not run the syscall at all (ptrace failure).
pub type InjectError = Box<dyn std::error::Error + Send + Sync>;

/// Runs one syscall `nr` with `args` inside the target (which the caller keeps stopped) and
/// returns its raw result (`-errno` on failure), e.g. the engine's remote-syscall guard.
pub type Inject<'a> = dyn FnMut(i64, [u64; 6]) -> Result<i64, InjectError> + 'a;

/// Why dirty tracking failed.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// The injector failed.
    #[error("pid {pid}: injecting {call}: {source}")]
    Inject {
        /// target
        pid: i32,
        /// the syscall
        call: &'static str,
        /// injector error
        source: InjectError,
    },
    /// The injected syscall returned an error.
    #[error("pid {pid}: injected {call} failed: {source}")]
    Remote {
        /// target
        pid: i32,
        /// the syscall
        call: &'static str,
        /// decoded errno
        source: std::io::Error,
    },
    /// pidfd_open / pidfd_getfd failed.
    #[error(transparent)]
    Pull(#[from] FdPullError),
    /// A userfaultfd ioctl failed.
    #[error("pid {pid}: {source}")]
    Uffd {
        /// target
        pid: i32,
        /// the ioctl error
        source: UffdError,
    },
    /// A pagemap scan failed.
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    /// `/proc/PID/maps` could not be read.
    #[error("pid {pid}: reading /proc/{pid}/maps: {source}")]
    Maps {
        /// target
        pid: i32,
        /// the OS error
        source: std::io::Error,
    },
    /// The descriptor given to [`DirtyTracker::reattach`] is not a userfaultfd.
    #[error("pid {pid} fd {fd}: not a userfaultfd ({link})")]
    NotUffd {
        /// target
        pid: i32,
        /// descriptor
        fd: i32,
        /// what /proc/PID/fd/FD points to
        link: String,
    },
}

/// Which mappings to track.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every writable private mapping: anonymous (including `[heap]`, `[stack]`, named
    /// `[anon:…]`) and, if `include_file` is set, private file mappings (`.data`, `.bss`-like,
    /// whose written pages are anonymous copies).
    WritablePrivate {
        /// also track writable `MAP_PRIVATE` file mappings
        include_file: bool,
    },
    /// Exactly these ranges (each must be covered by registrable mappings).
    Ranges(Vec<(u64, u64)>),
}

impl Default for Selection {
    fn default() -> Self {
        Self::WritablePrivate { include_file: true }
    }
}

/// Options for [`DirtyTracker::arm`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrackOptions {
    /// which mappings to track
    pub selection: Selection,
    /// Leave the userfaultfd open in the target (so that a later process can
    /// [`DirtyTracker::reattach`] to it); the engine must then leave that fd out of dumps. If
    /// false, the injected fd is closed in the target at once and tracking lasts as long as this
    /// tracker (closing the last reference to a userfaultfd unregisters everything).
    pub leave_fd_in_target: bool,
}

/// A mapping the kernel would not register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// start
    pub start: u64,
    /// end
    pub end: u64,
    /// why
    pub reason: String,
}

/// The result of one [`DirtyTracker::collect`].
#[derive(Debug, Clone, Default)]
pub struct DirtyRound {
    /// regions written since the previous round (now protected again)
    pub written: Vec<Region>,
    /// pages in `written`
    pub written_pages: u64,
    /// ranges not tracked for the whole round: dump them whole
    pub whole: Vec<(u64, u64)>,
    /// mappings that cannot be tracked: dump them whole
    pub skipped: Vec<Skipped>,
    /// bytes of tracked memory scanned
    pub scanned_bytes: u64,
    /// time spent in the scan (the part of a freeze this costs)
    pub scan_time: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MapLine {
    start: u64,
    end: u64,
    writable: bool,
    private: bool,
    path: String,
}

fn parse_maps(text: &str) -> Vec<MapLine> {
    let mut v = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let (Some(range), Some(perms)) = (it.next(), it.next()) else {
            continue;
        };
        let (_off, _dev, _ino) = (it.next(), it.next(), it.next());
        let path = it.collect::<Vec<_>>().join(" ");
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        let p = perms.as_bytes();
        if p.len() < 4 {
            continue;
        }
        v.push(MapLine {
            start,
            end,
            writable: p[1] == b'w',
            private: p[3] == b'p',
            path,
        });
    }
    v
}

fn is_anon_path(p: &str) -> bool {
    p.is_empty()
        || p == "[heap]"
        || p == "[stack]"
        || p.starts_with("[anon:")
        || p.starts_with("[stack:")
}

fn select(lines: &[MapLine], sel: &Selection) -> Vec<(u64, u64)> {
    match sel {
        Selection::Ranges(r) => {
            let mut r = r.clone();
            r.sort_unstable();
            r
        }
        Selection::WritablePrivate { include_file } => lines
            .iter()
            .filter(|l| l.writable && l.private)
            .filter(|l| is_anon_path(&l.path) || (*include_file && l.path.starts_with('/')))
            .map(|l| (l.start, l.end))
            .collect(),
    }
}

/// Merges sorted ranges that touch or overlap.
fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// Splits `[s, e)` into (covered, uncovered) parts against the normalized set `set`.
type Ranges = Vec<(u64, u64)>;

fn split_by(s: u64, e: u64, set: &[(u64, u64)]) -> (Ranges, Ranges) {
    let (mut cov, mut unc) = (Vec::new(), Vec::new());
    let mut pos = s;
    for &(a, b) in set {
        if b <= pos || a >= e {
            continue;
        }
        if a > pos {
            unc.push((pos, a.min(e)));
        }
        let cs = a.max(pos);
        let ce = b.min(e);
        if cs < ce {
            cov.push((cs, ce));
        }
        pos = ce;
        if pos >= e {
            break;
        }
    }
    if pos < e {
        unc.push((pos, e));
    }
    (cov, unc)
}

/// Tracks pages written by one process (see the module documentation).
#[derive(Debug)]
pub struct DirtyTracker {
    pid: i32,
    uffd: Userfaultfd,
    pagemap: Pagemap,
    selection: Selection,
    tracked: Vec<(u64, u64)>,
    skipped: Vec<Skipped>,
    remote_fd: Option<i32>,
}

/// The userfaultfd features dirty tracking needs.
pub const FEATURES: Features = Features(Features::WP_ASYNC.0 | Features::WP_UNPOPULATED.0);

fn remote_errno(r: i64) -> Option<std::io::Error> {
    if (-4095..0).contains(&r) {
        Some(std::io::Error::from_raw_os_error(
            i32::try_from(-r).unwrap_or(libc::EIO),
        ))
    } else {
        None
    }
}

impl DirtyTracker {
    /// Arms tracking in `pid`, which the caller keeps stopped; `inject` runs one syscall in it.
    /// Injects `userfaultfd(O_CLOEXEC|O_NONBLOCK)`, pulls the fd, closes it in the target
    /// (unless [`TrackOptions::leave_fd_in_target`]), registers and write-protects the selected
    /// mappings. Every page written after this returns is reported by the next
    /// [`collect`](Self::collect).
    pub fn arm(pid: i32, inject: &mut Inject<'_>, opts: &TrackOptions) -> Result<Self, DirtyError> {
        let flags = u64::try_from(libc::O_CLOEXEC | libc::O_NONBLOCK).unwrap_or(0);
        let r = inject(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]).map_err(|source| {
            DirtyError::Inject {
                pid,
                call: "userfaultfd",
                source,
            }
        })?;
        if let Some(source) = remote_errno(r) {
            return Err(DirtyError::Remote {
                pid,
                call: "userfaultfd",
                source,
            });
        }
        let rfd = i32::try_from(r).map_err(|_| DirtyError::Remote {
            pid,
            call: "userfaultfd",
            source: std::io::Error::other(format!("returned {r}")),
        })?;
        let pulled = PidFd::open(pid).and_then(|p| p.get_fd(rfd));
        let keep = opts.leave_fd_in_target && pulled.is_ok();
        if !keep {
            let rfd_arg = u64::try_from(rfd).unwrap_or(0);
            let c = inject(libc::SYS_close, [rfd_arg, 0, 0, 0, 0, 0]).map_err(|source| {
                DirtyError::Inject {
                    pid,
                    call: "close",
                    source,
                }
            })?;
            if let Some(source) = remote_errno(c) {
                return Err(DirtyError::Remote {
                    pid,
                    call: "close",
                    source,
                });
            }
        }
        let fd = pulled?;
        match Self::with_uffd(pid, fd, opts.selection.clone()) {
            Ok(mut t) => {
                t.remote_fd = keep.then_some(rfd);
                Ok(t)
            }
            Err(e) => {
                if keep {
                    // do not leave a useless userfaultfd in the target's table
                    let rfd_arg = u64::try_from(rfd).unwrap_or(0);
                    let _ = inject(libc::SYS_close, [rfd_arg, 0, 0, 0, 0, 0]);
                }
                Err(e)
            }
        }
    }

    /// [`arm`](Self::arm) through the engine's remote-syscall guard (the target's thread must be
    /// stopped under ptrace and `rs` made for it).
    pub fn arm_remote(
        pid: i32,
        rs: &mut crate::RemoteSyscalls,
        opts: &TrackOptions,
    ) -> Result<Self, DirtyError> {
        let mut inject = |nr: i64, args: [u64; 6]| -> Result<i64, InjectError> {
            let nr = u64::try_from(nr).map_err(|_| format!("bad syscall number {nr}"))?;
            rs.syscall_raw(nr, args).map_err(Into::into)
        };
        Self::arm(pid, &mut inject, opts)
    }

    /// Re-attaches to a userfaultfd left in the target by an earlier
    /// `arm(.., leave_fd_in_target: true)`; `tracked` are the ranges that tracker reported as
    /// tracked ([`tracked`](Self::tracked)), recorded with the parent image.
    pub fn reattach(
        pid: i32,
        remote_fd: i32,
        tracked: Vec<(u64, u64)>,
        selection: Selection,
    ) -> Result<Self, DirtyError> {
        let link = std::fs::read_link(format!("/proc/{pid}/fd/{remote_fd}"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        if link != "anon_inode:[userfaultfd]" {
            return Err(DirtyError::NotUffd {
                pid,
                fd: remote_fd,
                link,
            });
        }
        let fd = PidFd::open(pid)?.get_fd(remote_fd)?;
        let pagemap = Pagemap::open(pid)?;
        Ok(Self {
            pid,
            // UFFDIO_API was done by the first tracker; features are per context
            uffd: Userfaultfd::from_configured(fd, FEATURES),
            pagemap,
            selection,
            tracked: normalize(tracked),
            skipped: Vec::new(),
            remote_fd: Some(remote_fd),
        })
    }

    /// Starts tracking with a userfaultfd `fd` that belongs to `pid`'s address space and on
    /// which `UFFDIO_API` has not been done (created in the target, or in this process when
    /// `pid` is our own pid).
    pub fn with_uffd(pid: i32, fd: OwnedFd, selection: Selection) -> Result<Self, DirtyError> {
        let uffd = Userfaultfd::from_unconfigured(fd, FEATURES)
            .map_err(|source| DirtyError::Uffd { pid, source })?;
        let pagemap = Pagemap::open(pid)?;
        let mut t = Self {
            pid,
            uffd,
            pagemap,
            selection,
            tracked: Vec::new(),
            skipped: Vec::new(),
            remote_fd: None,
        };
        let lines = t.read_maps()?;
        for (s, e) in select(&lines, &t.selection) {
            t.start_tracking(s, e);
        }
        t.tracked = normalize(std::mem::take(&mut t.tracked));
        Ok(t)
    }

    /// The target.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The fd number of the userfaultfd left in the target, if any.
    pub fn remote_fd(&self) -> Option<i32> {
        self.remote_fd
    }

    /// Ranges currently tracked (sorted, disjoint).
    pub fn tracked(&self) -> &[(u64, u64)] {
        &self.tracked
    }

    /// Mappings that could not be registered.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    fn read_maps(&self) -> Result<Vec<MapLine>, DirtyError> {
        let text =
            std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).map_err(|source| {
                DirtyError::Maps {
                    pid: self.pid,
                    source,
                }
            })?;
        Ok(parse_maps(&text))
    }

    /// Registers and write-protects `[s, e)`; on refusal records it in `skipped`.
    fn start_tracking(&mut self, s: u64, e: u64) -> bool {
        let r = self
            .uffd
            .register(s, e - s, RegisterMode::WP)
            .and_then(|_| self.uffd.writeprotect(s, e - s, true));
        match r {
            Ok(()) => {
                self.tracked.push((s, e));
                true
            }
            Err(err) => {
                self.skipped.push(Skipped {
                    start: s,
                    end: e,
                    reason: err.to_string(),
                });
                false
            }
        }
    }

    /// Reports pages written since the previous call (or since arming) and protects them again.
    /// Mappings that appeared or changed are returned in [`DirtyRound::whole`] and tracked from
    /// now on. Call with the target stopped for an exact cut.
    pub fn collect(&mut self) -> Result<DirtyRound, DirtyError> {
        let lines = self.read_maps()?;
        let current = select(&lines, &self.selection);
        let mut round = DirtyRound::default();
        let mut new_tracked = Vec::with_capacity(current.len());
        self.skipped.clear();
        let t0 = Instant::now();
        for &(s, e) in &current {
            let (covered, uncovered) = split_by(s, e, &self.tracked);
            for (cs, ce) in covered {
                let before = round.written.len();
                match take_written_split(&self.pagemap, cs, ce, &mut round.written) {
                    Ok(pages) => {
                        round.written_pages += pages;
                        round.scanned_bytes += ce - cs;
                        new_tracked.push((cs, ce));
                    }
                    Err(PagemapError::Scan { source, .. })
                        if source.raw_os_error() == Some(libc::EPERM) =>
                    {
                        // not registered any more (replaced at the same address): dump whole
                        round.written.truncate(before);
                        round.whole.push((cs, ce));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            round.whole.extend(uncovered);
        }
        round.scan_time = t0.elapsed();
        // start tracking what must be dumped whole this time
        self.tracked = new_tracked;
        let whole = normalize(round.whole.clone());
        for &(s, e) in &whole {
            self.start_tracking(s, e);
        }
        self.tracked = normalize(std::mem::take(&mut self.tracked));
        round.whole = whole;
        round.skipped = self.skipped.clone();
        Ok(round)
    }
}

/// With `UNDERSTUDY_DIRTY_THREADS=2`, a tracked range at least this large is read (and
/// re-protected) by two threads at once, one half each. Off by default: on the shared 2-vCPU
/// test machine the second walker waited for a CPU and the read got slower (docs/PERFORMANCE.md,
/// branch `freeze3`); it is kept for an A/B on a quiet machine.
const SPLIT_TAKE_MIN: u64 = 64 << 20;

/// [`Pagemap::take_written`] of `[s, e)`, in two halves split on a 2 MiB boundary (so that no
/// huge page is split by the walk) and walked at once when the range is large. The regions
/// are appended in address order; on an error nothing is guaranteed about `out` (the caller
/// truncates it).
fn take_written_split(
    pm: &Pagemap,
    s: u64,
    e: u64,
    out: &mut Vec<Region>,
) -> Result<u64, PagemapError> {
    const HUGE: u64 = 2 << 20;
    let mid = (s + (e - s) / 2) & !(HUGE - 1);
    let two = std::env::var_os("UNDERSTUDY_DIRTY_THREADS").is_some_and(|v| v == "2");
    if !two || e - s < SPLIT_TAKE_MIN || mid <= s || mid >= e {
        return pm.take_written(s, e, out);
    }
    let mut second = Vec::new();
    let (a, b) = std::thread::scope(|sc| {
        let h = sc.spawn(|| pm.take_written(mid, e, &mut second));
        let a = pm.take_written(s, mid, out);
        (a, h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    });
    let n = a? + b?;
    out.extend(second);
    Ok(n)
}

/// Whether this kernel offers what dirty tracking needs.
pub fn supported() -> Result<(), UffdError> {
    let a = crate::uffd::available_features()?;
    if a.contains(FEATURES) {
        Ok(())
    } else {
        Err(UffdError::MissingFeatures {
            missing: FEATURES.0 & !a.0,
            available: a.0,
        })
    }
}

/// Re-exported for callers that only look at categories.
pub use crate::pagemap::count_pages;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_maps_lines() {
        let t = "55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]\n\
                 7f0000000000-7f0000100000 rw-p 00000000 00:00 0 \n\
                 7f0000100000-7f0000200000 rw-s 00000000 00:01 1387                       /dev/zero (deleted)\n\
                 7f0000200000-7f0000201000 rw-p 00003000 08:01 42                         /usr/lib/libc.so.6\n\
                 7f0000300000-7f0000301000 r--p 00000000 08:01 42                         /usr/lib/libc.so.6\n\
                 ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n";
        let l = parse_maps(t);
        assert_eq!(l.len(), 6);
        assert_eq!(l[2].path, "/dev/zero (deleted)");
        assert_eq!(
            select(
                &l,
                &Selection::WritablePrivate {
                    include_file: false
                }
            ),
            vec![
                (0x55d0_c0a0_0000, 0x55d0_c0a2_1000),
                (0x7f00_0000_0000, 0x7f00_0010_0000)
            ]
        );
        assert_eq!(
            select(&l, &Selection::WritablePrivate { include_file: true }).len(),
            3
        );
    }

    #[test]
    fn split_ranges() {
        let set = vec![(10, 20), (30, 40)];
        assert_eq!(
            split_by(0, 50, &set),
            (vec![(10, 20), (30, 40)], vec![(0, 10), (20, 30), (40, 50)])
        );
        assert_eq!(split_by(12, 18, &set), (vec![(12, 18)], vec![]));
        assert_eq!(
            split_by(15, 35, &set),
            (vec![(15, 20), (30, 35)], vec![(20, 30)])
        );
        assert_eq!(
            normalize(vec![(5, 10), (0, 5), (20, 30), (25, 26)]),
            vec![(0, 10), (20, 30)]
        );
    }
}
