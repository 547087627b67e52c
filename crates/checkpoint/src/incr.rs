//! Incremental dumps: which pages of a process can be left to the parent image.
//!
//! A page is left in the parent ("in parent") only when all of these hold: it holds data now,
//! the parent image holds data for it, it lay in a range the dirty tracker watched for the
//! whole time since the parent's cut (tracked, scanned, not reported `whole`), and it was not
//! reported written. Everything else that holds data is copied into the new image.

use std::time::Duration;

use sys::dirty::{DirtyTracker, Selection, TrackOptions};
use sys::pagemap::Categories;

/// Sorted, disjoint half-open ranges.
pub type Ranges = Vec<(u64, u64)>;

/// Sorts and merges overlapping or touching ranges.
pub fn normalize(mut v: Ranges) -> Ranges {
    v.retain(|&(s, e)| s < e);
    v.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// `a ∩ b` (both normalized).
pub fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let s = a[i].0.max(b[j].0);
        let e = a[i].1.min(b[j].1);
        if s < e {
            out.push((s, e));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// `a ∖ b` (both normalized).
pub fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut pos = s;
        while j < b.len() && b[j].1 <= pos {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            if b[k].0 > pos {
                out.push((pos, b[k].0));
            }
            pos = pos.max(b[k].1);
            k += 1;
        }
        if pos < e {
            out.push((pos, e));
        }
    }
    out
}

/// Splits `[s, e)` into pieces flagged `true` where they lie inside `keep` (normalized).
pub fn split(s: u64, e: u64, keep: &[(u64, u64)]) -> Vec<(u64, u64, bool)> {
    let inside = intersect(&[(s, e)], keep);
    let mut out = Vec::with_capacity(inside.len() * 2 + 1);
    let mut pos = s;
    for (a, b) in inside {
        if a > pos {
            out.push((pos, a, false));
        }
        out.push((a, b, true));
        pos = b;
    }
    if pos < e {
        out.push((pos, e, false));
    }
    out
}

/// The data ranges of a process in a parent image (any run, stored there or further up).
pub fn parent_data(p: &image::Process) -> Ranges {
    normalize(
        p.vmas
            .iter()
            .flat_map(|v| v.pages.iter())
            .map(|r| (r.vaddr, r.vaddr + r.npages * sys::PAGE_SIZE))
            .collect(),
    )
}

/// What the dirty tracker said for one process of an incremental dump.
#[derive(Debug, Default, Clone)]
pub struct Delta {
    /// Ranges whose data may be left in the parent.
    pub unchanged: Ranges,
    /// Ranges the tracker watched for the whole interval (`unchanged` lies inside): there the
    /// tracker alone says which pages hold data, no scan is needed (see [`Delta::data`]).
    pub known: Ranges,
    /// Written regions of `known` that hold data now (present or swapped, not the zero page).
    /// Written regions that hold none were dropped since the parent (`MADV_DONTNEED`, a reclaimed `MADV_FREE`
    /// page, `munmap`+`mmap` is a new mapping and not in `known`) and read as zeros.
    pub written_data: Ranges,
    pub written_pages: u64,
    pub scan_time: Duration,
}

/// Re-acquires the tracker left in `pid` by the parent dump and collects the pages written
/// since; the tracker stays armed (re-protected) for the next dump.
pub fn collect(
    pid: i32,
    parent: &image::Process,
    tracking: &image::DirtyTracking,
) -> Result<(DirtyTracker, Delta), sys::dirty::DirtyError> {
    let mut t = DirtyTracker::reattach(
        pid,
        tracking.uffd_fd,
        tracking.tracked.clone(),
        Selection::default(),
    )?;
    let round = t.collect()?;
    let whole = normalize(round.whole.clone());
    let skipped: Ranges = normalize(round.skipped.iter().map(|s| (s.start, s.end)).collect());
    // What was watched for the whole round: tracked now, minus what was (re)started this time.
    let watched = subtract(
        &subtract(&normalize(t.tracked().to_vec()), &whole),
        &skipped,
    );
    let written = normalize(round.written.iter().map(|r| (r.start, r.end)).collect());
    let written_data = intersect(
        &normalize(
            round
                .written
                .iter()
                .filter(|r| {
                    let c = r.categories;
                    (c.contains(Categories::PRESENT) || c.contains(Categories::SWAPPED))
                        && !c.contains(Categories::PFNZERO)
                })
                .map(|r| (r.start, r.end))
                .collect(),
        ),
        &watched,
    );
    let unchanged = subtract(&intersect(&watched, &parent_data(parent)), &written);
    Ok((
        t,
        Delta {
            unchanged,
            known: watched,
            written_data,
            written_pages: round.written_pages,
            scan_time: round.scan_time,
        },
    ))
}

impl Delta {
    /// The data ranges of `[start, end)` inside [`Delta::known`], without a scan: the pages
    /// written since the parent that hold data, plus the unchanged ones.
    ///
    /// Why this is exact (kernel-facts `t03_dirty`, and the probe in docs/incremental.md): in
    /// a range registered for async write-protection with unpopulated-marker support, every
    /// page is either write-protected (present, swapped, or a marker for "no data") or
    /// reported `WRITTEN`. A page loses its data only through a zap (`MADV_DONTNEED`, reclaim
    /// of `MADV_FREE`, a zapped huge page), which leaves an empty entry that `PAGEMAP_SCAN`
    /// reports `WRITTEN` and not present — so it is never in `unchanged`. A page gains data
    /// only through a fault: on an empty entry the new entry is not protected (`WRITTEN`); on
    /// a marker a write is reported `WRITTEN` and a read maps the zero page (no data needed:
    /// it reads as zero when left out). So a page of `known` holds data now iff it is in
    /// `written_data` or (not written and) held data at the parent's cut, i.e. in `unchanged`.
    pub fn data(&self, start: u64, end: u64) -> Ranges {
        let r = [(start, end)];
        normalize(
            intersect(&self.written_data, &r)
                .into_iter()
                .chain(intersect(&self.unchanged, &r))
                .collect(),
        )
    }
}

/// Options for arming a tracker that outlives this process.
pub fn arm_options() -> TrackOptions {
    TrackOptions {
        selection: Selection::default(),
        leave_fd_in_target: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_algebra() {
        let a = normalize(vec![(10, 20), (0, 5), (18, 30), (40, 50)]);
        assert_eq!(a, vec![(0, 5), (10, 30), (40, 50)]);
        let b = vec![(3, 12), (25, 45)];
        assert_eq!(
            intersect(&a, &b),
            vec![(3, 5), (10, 12), (25, 30), (40, 45)]
        );
        assert_eq!(subtract(&a, &b), vec![(0, 3), (12, 25), (45, 50)]);
        assert_eq!(subtract(&a, &[]), a);
        assert_eq!(
            split(0, 50, &b),
            vec![
                (0, 3, false),
                (3, 12, true),
                (12, 25, false),
                (25, 45, true),
                (45, 50, false)
            ]
        );
        assert_eq!(split(13, 20, &b), vec![(13, 20, false)]);
    }

    #[test]
    fn data_of_tracked_memory_is_written_with_data_or_unchanged() {
        // known 0..100; parent held 0..60; written 10..20 (present), 30..40 (dropped: no
        // data), 70..80 (present, new since the parent)
        let d = Delta {
            unchanged: subtract(&[(0, 60)], &[(10, 20), (30, 40), (70, 80)]),
            known: vec![(0, 100)],
            written_data: vec![(10, 20), (70, 80)],
            ..Delta::default()
        };
        assert_eq!(d.data(0, 100), vec![(0, 30), (40, 60), (70, 80)]);
        assert_eq!(d.data(25, 75), vec![(25, 30), (40, 60), (70, 75)]);
        assert_eq!(d.data(30, 40), vec![]);
    }
}
