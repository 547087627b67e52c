//! Which pages of a range are worth dumping, from `PAGEMAP_SCAN` on `/proc/PID/pagemap`
//! (Linux 6.7+): present or swapped pages, optionally only anonymous ones (the private copies in
//! a file-backed private mapping), never the shared zero page.
//!
//! Kernel quirk (6.18, kernel-facts `q1_pagemap_walkend.c`): `walk_end` is only meaningful when
//! the output vector was filled, so the scan resumes only then.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::{Error, Result, PAGE_SIZE};

const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PageRegion {
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

// _IOWR('f', 16, struct pm_scan_arg): dir=3 (rw) << 30 | size << 16 | 'f' << 8 | 16
const PAGEMAP_SCAN: u64 =
    (3 << 30) | ((std::mem::size_of::<PmScanArg>() as u64) << 16) | ((b'f' as u64) << 8) | 16;

const VEC_LEN: usize = 1 << 14;

/// A scanner over one process's `/proc/PID/pagemap`.
#[derive(Debug)]
pub struct PageScanner {
    pid: i32,
    file: File,
    buf: Vec<PageRegion>,
    supported: bool,
}

impl PageScanner {
    pub fn open(pid: i32) -> Result<Self> {
        let path = format!("/proc/{pid}/pagemap");
        let file = File::open(&path).map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(PageScanner {
            pid,
            file,
            buf: vec![PageRegion::default(); VEC_LEN],
            supported: true,
        })
    }

    /// Ranges `[start, end)` within `[start, end)` holding data: present or swapped, not the
    /// zero page, and with `anon_only` not page-cache pages. Falls back to the whole range when
    /// the kernel lacks `PAGEMAP_SCAN`.
    pub fn data_ranges(
        &mut self,
        start: u64,
        end: u64,
        anon_only: bool,
    ) -> Result<Vec<(u64, u64)>> {
        if !self.supported {
            return Ok(vec![(start, end)]);
        }
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut s = start;
        let (inverted, mask) = if anon_only {
            (
                PAGE_IS_FILE | PAGE_IS_PFNZERO,
                PAGE_IS_FILE | PAGE_IS_PFNZERO,
            )
        } else {
            (PAGE_IS_PFNZERO, PAGE_IS_PFNZERO)
        };
        while s < end {
            let mut arg = PmScanArg {
                size: std::mem::size_of::<PmScanArg>() as u64,
                start: s,
                end,
                vec: self.buf.as_mut_ptr() as u64,
                vec_len: VEC_LEN as u64,
                category_inverted: inverted,
                category_mask: mask,
                category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
                return_mask: PAGE_IS_PRESENT,
                ..Default::default()
            };
            // SAFETY: arg is a valid pm_scan_arg whose vec points to self.buf of VEC_LEN
            // entries, which outlives the call.
            let n = unsafe {
                libc::ioctl(
                    self.file.as_raw_fd(),
                    PAGEMAP_SCAN as libc::c_ulong,
                    &mut arg,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EINVAL))
                    && out.is_empty()
                {
                    self.supported = false;
                    return Ok(vec![(start, end)]);
                }
                return Err(Error::io(
                    format!("PAGEMAP_SCAN pid {} {s:#x}-{end:#x}", self.pid),
                    e,
                ));
            }
            let n = usize::try_from(n).unwrap_or(0);
            for r in &self.buf[..n] {
                match out.last_mut() {
                    Some(last) if last.1 == r.start => last.1 = r.end,
                    _ => out.push((r.start, r.end)),
                }
            }
            if n < VEC_LEN {
                break;
            }
            let last_end = out.last().map_or(s, |r| r.1);
            s = arg.walk_end.max(last_end).max(s + PAGE_SIZE);
        }
        Ok(out)
    }
}
