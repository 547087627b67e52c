//! Which pages of a range are worth dumping: present or swapped pages, optionally only anonymous
//! ones (the private copies in a file-backed private mapping), never the shared zero page.
//!
//! A thin use of [`crate::pagemap::Pagemap`] (which owns the `PAGEMAP_SCAN` ioctl and its
//! `walk_end` quirk) that merges adjacent regions and falls back to the whole range on a kernel
//! without `PAGEMAP_SCAN`.

use crate::pagemap::{Categories, Pagemap, PagemapError, Region, ScanFlags, ScanRequest};
use crate::{Error, Result};

/// A scanner over one process's `/proc/PID/pagemap`.
#[derive(Debug)]
pub struct PageScanner {
    map: Pagemap,
    buf: Vec<Region>,
    supported: bool,
}

impl PageScanner {
    pub fn open(pid: i32) -> Result<Self> {
        let map = Pagemap::open(pid)
            .map_err(|e| Error::invalid(format!("pid {pid} pagemap"), e.to_string()))?;
        Ok(PageScanner {
            map,
            buf: Vec::new(),
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
        // Matching pages: (cats ^ inverted) & mask == mask, i.e. not the zero page (and not
        // file-backed with `anon_only`), and present or swapped.
        let not = if anon_only {
            Categories::FILE | Categories::PFNZERO
        } else {
            Categories::PFNZERO
        };
        let req = ScanRequest {
            start,
            end,
            flags: ScanFlags::default(),
            mask: not,
            inverted: not,
            anyof: Categories::PRESENT | Categories::SWAPPED,
            return_mask: Categories::PRESENT,
        };
        self.buf.clear();
        if let Err(e) = self.map.scan(&req, &mut self.buf) {
            if let PagemapError::Scan { source, .. } = &e {
                if matches!(
                    source.raw_os_error(),
                    Some(libc::ENOTTY) | Some(libc::EINVAL)
                ) {
                    self.supported = false;
                    return Ok(vec![(start, end)]);
                }
            }
            return Err(Error::invalid(
                format!("{start:#x}-{end:#x}"),
                e.to_string(),
            ));
        }
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.buf.len());
        for r in &self.buf {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        Ok(out)
    }
}
