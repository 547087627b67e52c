//! `PAGEMAP_SCAN` (Linux 6.7+): find pages of a process by category (present, written since
//! write-protection, file-backed, …) and optionally write-protect the matching ones again in the
//! same walk (`PM_SCAN_WP_MATCHING`) — the read-and-clear step of dirty tracking.
//!
//! ## The `walk_end` quirk (kernel-facts `q1_pagemap_walkend.c`)
//! On this kernel (6.18), when a walk completes, `walk_end` is left at the last stop of the
//! kernel's internal 512-region buffer instead of the end of the range. Resuming from it
//! re-reports regions (and with `WP_MATCHING` it re-reports nothing, since they are protected
//! again — the first set would simply be counted twice). [`Pagemap::scan`] therefore:
//! - treats a call that returned fewer regions than the user buffer holds as a completed walk;
//! - on a full buffer, resumes at `max(walk_end, end of the last region returned)`;
//! - merges a region that continues the previous one and drops any overlap, so output regions
//!   are strictly increasing and disjoint whatever the kernel reports.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::ioc::iowr;

/// Page categories (`PAGE_IS_*`), a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Categories(pub u64);

impl Categories {
    /// The page's VMA is registered for async userfaultfd write-protection.
    pub const WPALLOWED: Self = Self(1 << 0);
    /// Written since it was last write-protected (or never protected).
    pub const WRITTEN: Self = Self(1 << 1);
    /// File-backed.
    pub const FILE: Self = Self(1 << 2);
    /// Present in memory.
    pub const PRESENT: Self = Self(1 << 3);
    /// Swapped out.
    pub const SWAPPED: Self = Self(1 << 4);
    /// Maps the zero page.
    pub const PFNZERO: Self = Self(1 << 5);
    /// Part of a huge page.
    pub const HUGE: Self = Self(1 << 6);
    /// Soft-dirty (always clear here: soft-dirty is compiled out of this kernel).
    pub const SOFT_DIRTY: Self = Self(1 << 7);
    /// Every category.
    pub const ALL: Self = Self(0xff);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Categories {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Scan flags (`PM_SCAN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanFlags(pub u64);

impl ScanFlags {
    /// Write-protect the matching pages again (needs a uffd-wp-async registration).
    pub const WP_MATCHING: Self = Self(1 << 0);
    /// Fail with `EPERM` if a VMA in the range is not registered for async write-protection.
    pub const CHECK_WPASYNC: Self = Self(1 << 1);
}

impl std::ops::BitOr for ScanFlags {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// A run of pages `[start, end)` with the same reported categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// first byte
    pub start: u64,
    /// one past the last byte
    pub end: u64,
    /// categories, masked by the request's `return_mask`
    pub categories: Categories,
}

impl Region {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// One `PAGEMAP_SCAN` request over `[start, end)`.
///
/// A page matches if `(cats ^ inverted) & mask == mask` and (if `anyof` is non-zero)
/// `(cats ^ inverted) & anyof != 0`. Reported categories are masked with `return_mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanRequest {
    /// start address (page aligned)
    pub start: u64,
    /// end address (page aligned, exclusive)
    pub end: u64,
    /// `PM_SCAN_*`
    pub flags: ScanFlags,
    /// categories that must all be set
    pub mask: Categories,
    /// categories inverted before matching
    pub inverted: Categories,
    /// categories of which at least one must be set (0 = no condition)
    pub anyof: Categories,
    /// categories to report
    pub return_mask: Categories,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegionRaw {
    start: u64,
    end: u64,
    categories: u64,
}

#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

const PAGEMAP_SCAN: libc::Ioctl = iowr(0x66 /* 'f' */, 16, std::mem::size_of::<PmScanArg>());

/// Why a pagemap scan failed.
#[derive(Debug, thiserror::Error)]
pub enum PagemapError {
    /// `/proc/PID/pagemap` could not be opened.
    #[error("open {path}: {source}")]
    Open {
        /// the path
        path: String,
        /// the OS error
        source: std::io::Error,
    },
    /// The ioctl failed.
    #[error("pid {pid}: PAGEMAP_SCAN [{start:#x}, {end:#x}) flags {flags:#x}: {source}{hint}")]
    Scan {
        /// target (0 = self)
        pid: i32,
        /// start of the failing call
        start: u64,
        /// end
        end: u64,
        /// scan flags
        flags: u64,
        /// the OS error
        source: std::io::Error,
        /// explanation of common errnos
        hint: &'static str,
    },
}

/// Default number of regions fetched per ioctl.
pub const DEFAULT_BATCH: usize = 4096;

/// An open `/proc/PID/pagemap` (for `PAGEMAP_SCAN`).
#[derive(Debug)]
pub struct Pagemap {
    fd: OwnedFd,
    pid: i32,
    batch: usize,
}

impl Pagemap {
    /// Opens this process's pagemap. Note: a pagemap opened before `fork` keeps referring to
    /// the parent's address space.
    pub fn open_self() -> Result<Self, PagemapError> {
        Self::open_path("/proc/self/pagemap".into(), 0)
    }

    /// Opens `/proc/PID/pagemap` (needs ptrace-read access to `pid`).
    pub fn open(pid: i32) -> Result<Self, PagemapError> {
        Self::open_path(format!("/proc/{pid}/pagemap"), pid)
    }

    fn open_path(path: String, pid: i32) -> Result<Self, PagemapError> {
        let f = std::fs::File::open(&path).map_err(|source| PagemapError::Open { path, source })?;
        Ok(Self {
            fd: f.into(),
            pid,
            batch: DEFAULT_BATCH,
        })
    }

    /// Sets how many regions one ioctl may return (tests use small values to exercise the
    /// resume path).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Runs `req` to completion, appending matching regions to `out` (sorted, disjoint,
    /// adjacent regions with equal categories merged). Returns the number of pages appended.
    pub fn scan(&self, req: &ScanRequest, out: &mut Vec<Region>) -> Result<u64, PagemapError> {
        let mut buf = vec![PageRegionRaw::default(); self.batch];
        let mut pages = 0u64;
        let page = crate::uffd::page_size();
        let mut s = req.start;
        let want_vec = req.return_mask.0 != 0;
        while s < req.end {
            let mut a = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                flags: req.flags.0,
                start: s,
                end: req.end,
                walk_end: 0,
                vec: if want_vec { buf.as_mut_ptr() as u64 } else { 0 },
                vec_len: if want_vec { buf.len() as u64 } else { 0 },
                max_pages: 0,
                category_inverted: req.inverted.0,
                category_mask: req.mask.0,
                category_anyof_mask: req.anyof.0,
                return_mask: req.return_mask.0,
            };
            let arg: *mut PmScanArg = &mut a;
            let fd = self.fd.as_raw_fd();
            // SAFETY: PAGEMAP_SCAN reads/writes the repr(C) `PmScanArg` (`size` set) and writes
            // at most `vec_len` `PageRegionRaw` entries to `vec` = `buf`, which holds exactly
            // `vec_len` entries; `a` and `buf` outlive the call.
            let n = unsafe { libc::ioctl(fd, PAGEMAP_SCAN, arg) };
            if n < 0 {
                let source = std::io::Error::last_os_error();
                let hint = match source.raw_os_error() {
                    Some(libc::EPERM) if req.flags.0 & ScanFlags::CHECK_WPASYNC.0 != 0 => {
                        " (a mapping in the range is not registered for async write-protection)"
                    }
                    Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                        " (kernel without PAGEMAP_SCAN, needs 6.7+)"
                    }
                    _ => "",
                };
                return Err(PagemapError::Scan {
                    pid: self.pid,
                    start: s,
                    end: req.end,
                    flags: req.flags.0,
                    source,
                    hint,
                });
            }
            if !want_vec {
                // without a vector the kernel walks the whole range in one call
                break;
            }
            let n = usize::try_from(n).unwrap_or(0).min(buf.len());
            for r in &buf[..n] {
                let start = match out.last() {
                    Some(last) if r.start < last.end => last.end, // overlap: drop duplicate part
                    _ => r.start,
                };
                if start >= r.end {
                    continue;
                }
                pages += (r.end - start) / page;
                match out.last_mut() {
                    Some(last) if last.end == start && last.categories.0 == r.categories => {
                        last.end = r.end
                    }
                    _ => out.push(Region {
                        start,
                        end: r.end,
                        categories: Categories(r.categories),
                    }),
                }
            }
            if n < buf.len() {
                break; // walk completed; `walk_end` may be stale here (the quirk)
            }
            let last_end = buf[n - 1].end;
            let next = a.walk_end.max(last_end);
            if next <= s {
                break; // no progress possible; never loop forever
            }
            s = next;
        }
        Ok(pages)
    }

    /// Present pages in `[start, end)` (for a full dump).
    pub fn present(&self, start: u64, end: u64) -> Result<Vec<Region>, PagemapError> {
        let mut v = Vec::new();
        self.scan(
            &ScanRequest {
                start,
                end,
                flags: ScanFlags::default(),
                mask: Categories::PRESENT,
                inverted: Categories::default(),
                anyof: Categories::default(),
                return_mask: Categories::PRESENT,
            },
            &mut v,
        )?;
        Ok(v)
    }

    /// Pages written since they were last write-protected, without changing anything.
    pub fn written(&self, start: u64, end: u64) -> Result<Vec<Region>, PagemapError> {
        let mut v = Vec::new();
        self.scan(
            &ScanRequest {
                start,
                end,
                flags: ScanFlags::default(),
                mask: Categories::WRITTEN,
                inverted: Categories::default(),
                anyof: Categories::default(),
                return_mask: Categories::WRITTEN | Categories::PRESENT,
            },
            &mut v,
        )?;
        Ok(v)
    }

    /// Pages written since they were last write-protected, write-protecting them again in the
    /// same walk (`WP_MATCHING | CHECK_WPASYNC`: every VMA in the range must be registered
    /// for async write-protection, else `EPERM`). Returned regions carry
    /// `WRITTEN|PRESENT|SWAPPED|PFNZERO`: a written page that is neither present nor swapped holds no
    /// data (dropped by `MADV_DONTNEED`, a reclaimed `MADV_FREE` page, a zapped huge page) and
    /// reads as zero; the walk installs a write-protect marker there, so it is not reported
    /// again until it is touched.
    pub fn take_written(
        &self,
        start: u64,
        end: u64,
        out: &mut Vec<Region>,
    ) -> Result<u64, PagemapError> {
        self.scan(
            &ScanRequest {
                start,
                end,
                flags: ScanFlags::WP_MATCHING | ScanFlags::CHECK_WPASYNC,
                mask: Categories::WRITTEN,
                inverted: Categories::default(),
                anyof: Categories::default(),
                return_mask: Categories::WRITTEN
                    | Categories::PRESENT
                    | Categories::SWAPPED
                    | Categories::PFNZERO,
            },
            out,
        )
    }

    /// Write-protects every written page of `[start, end)` again without reporting them.
    pub fn reprotect(&self, start: u64, end: u64) -> Result<(), PagemapError> {
        let mut v = Vec::new();
        self.scan(
            &ScanRequest {
                start,
                end,
                flags: ScanFlags::WP_MATCHING | ScanFlags::CHECK_WPASYNC,
                mask: Categories::WRITTEN,
                inverted: Categories::default(),
                anyof: Categories::default(),
                return_mask: Categories::default(),
            },
            &mut v,
        )?;
        Ok(())
    }

    /// Categories of the single page at `addr` (all bits; empty if unmapped).
    pub fn page_categories(&self, addr: u64) -> Result<Categories, PagemapError> {
        let page = crate::uffd::page_size();
        let mut v = Vec::new();
        self.scan(
            &ScanRequest {
                start: addr,
                end: addr + page,
                flags: ScanFlags::default(),
                mask: Categories::default(),
                inverted: Categories::default(),
                anyof: Categories::default(),
                return_mask: Categories::ALL,
            },
            &mut v,
        )?;
        Ok(v.first().map(|r| r.categories).unwrap_or_default())
    }
}

/// Total pages in `regions`.
pub fn count_pages(regions: &[Region]) -> u64 {
    let page = crate::uffd::page_size();
    regions.iter().map(|r| r.len() / page).sum()
}
