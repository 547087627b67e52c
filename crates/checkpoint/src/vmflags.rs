//! The `madvise` flags of every mapping (`VmFlags` in `/proc/PID/smaps`, the only source on
//! this kernel), read before the freeze for incremental dumps.
//!
//! Reading smaps walks every page table of the process (10–15 ms per GiB of present memory on
//! a quiet machine), which alone exceeds the freeze budget of an incremental dump. So an
//! incremental dump reads smaps of every process of the tree while the tree still runs, and
//! while frozen compares that read's mapping lines with `/proc/PID/maps` (which the dump reads
//! anyway and which walks no page table): if every line is unchanged, the pre-read flags are
//! used; if any line differs (a mapping created, removed, split, merged, moved, grown or
//! `mprotect`ed since), smaps of that process is read again while frozen.
//!
//! What this does not see: `madvise` of the flags of a whole mapping that neither splits nor
//! merges it (so its `maps` line stays the same), made in the window between the pre-read and
//! the freeze. docs/incremental.md states the guarantee; `UNDERSTUDY_VMFLAGS_FROZEN=1` reads
//! smaps while frozen for every process (exact, slower).

use std::collections::{BTreeMap, HashMap};

use sys::proc::MapEntry;

/// Flags read before the freeze, by pid.
#[derive(Debug, Default)]
pub struct PreRead {
    by_pid: HashMap<i32, Vec<(MapEntry, Vec<String>)>>,
}

/// Where the flags of one process came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The pre-freeze read: every `maps` line was unchanged.
    PreRead,
    /// smaps read while frozen (no pre-read, or a mapping changed since).
    Frozen,
}

/// Whether the flags are to be read only while frozen (`UNDERSTUDY_VMFLAGS_FROZEN=1`).
pub fn frozen_only() -> bool {
    std::env::var_os("UNDERSTUDY_VMFLAGS_FROZEN").is_some_and(|v| v == "1")
}

impl PreRead {
    /// Reads smaps of `root` and every descendant (best effort: a process that cannot be read
    /// now is read while frozen).
    pub fn read_tree(root: i32) -> Self {
        let mut by_pid = HashMap::new();
        let mut queue = vec![root];
        while let Some(pid) = queue.pop() {
            if by_pid.len() >= 4096 {
                break;
            }
            if let Ok(v) = sys::proc::smaps_vmas(pid) {
                by_pid.insert(pid, v);
            }
            queue.extend(sys::proc::children(pid).unwrap_or_default());
        }
        PreRead { by_pid }
    }

    /// The flags of `pid` by mapping start, given its `maps` read while frozen: the pre-read
    /// ones when every line is unchanged, else smaps read now.
    pub fn flags(
        &self,
        pid: i32,
        maps: &[MapEntry],
    ) -> sys::Result<(BTreeMap<u64, Vec<String>>, Source)> {
        if let Some(f) = self.by_pid.get(&pid).and_then(|pre| reuse(pre, maps)) {
            return Ok((f, Source::PreRead));
        }
        Ok((sys::proc::vm_flags(pid)?, Source::Frozen))
    }
}

/// Tests only: with `UNDERSTUDY_TEST_PREREAD_PAUSE=PATH` set, creates PATH after the pre-read
/// and waits until it is removed (at most 10 s), so that a test workload can change its
/// mappings between the pre-read and the freeze.
pub fn test_pause() {
    let Some(path) = std::env::var_os("UNDERSTUDY_TEST_PREREAD_PAUSE") else {
        return;
    };
    let path = std::path::PathBuf::from(path);
    if std::fs::write(&path, b"pre-read done\n").is_err() {
        return;
    }
    let t = std::time::Instant::now();
    while path.exists() && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// The pre-read flags by start address if `pre`'s mapping lines equal `now` line for line.
pub fn reuse(
    pre: &[(MapEntry, Vec<String>)],
    now: &[MapEntry],
) -> Option<BTreeMap<u64, Vec<String>>> {
    if pre.len() != now.len() || pre.iter().zip(now).any(|((a, _), b)| a != b) {
        return None;
    }
    Some(pre.iter().map(|(m, f)| (m.start, f.clone())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> MapEntry {
        sys::proc::parse_maps(s).unwrap().remove(0)
    }

    #[test]
    fn flags_are_reused_only_when_every_maps_line_is_unchanged() {
        let a = line("1000-5000 rw-p 00000000 00:00 0");
        let b = line("7000-8000 r--p 00002000 fd:01 77 /usr/lib/x.so");
        let pre = vec![
            (a.clone(), vec!["rd".into(), "wr".into(), "dc".into()]),
            (b.clone(), vec!["rd".into()]),
        ];
        let got = reuse(&pre, &[a.clone(), b.clone()]).expect("unchanged");
        assert_eq!(got[&0x1000], vec!["rd", "wr", "dc"]);
        // Split by an mprotect of the middle: three lines where there was one.
        let split = [
            line("1000-2000 rw-p 00000000 00:00 0"),
            line("2000-3000 r--p 00000000 00:00 0"),
            line("3000-5000 rw-p 00000000 00:00 0"),
            b.clone(),
        ];
        assert!(reuse(&pre, &split).is_none());
        // mprotect of the whole mapping: same range, other permissions.
        assert!(reuse(&pre, &[line("1000-5000 r--p 00000000 00:00 0"), b.clone()]).is_none());
        // Grown (or merged with a neighbour), and a mapping removed.
        assert!(reuse(&pre, &[line("1000-6000 rw-p 00000000 00:00 0"), b.clone()]).is_none());
        assert!(reuse(&pre, &[a]).is_none());
    }

    #[test]
    fn a_changed_process_is_read_again_while_frozen() {
        // This process as the "tree". Its mappings as read right after the pre-read: reused.
        let me = i32::try_from(std::process::id()).unwrap();
        let pre = PreRead::read_tree(me);
        let same: Vec<MapEntry> = pre.by_pid[&me].iter().map(|(e, _)| e.clone()).collect();
        let (flags, src) = pre.flags(me, &same).unwrap();
        assert_eq!(src, Source::PreRead);
        assert_eq!(flags.len(), same.len());
        // One line different (as after an mprotect): smaps is read again.
        let mut changed = same.clone();
        changed[0].write = !changed[0].write;
        assert_eq!(pre.flags(me, &changed).unwrap().1, Source::Frozen);
        // A process without a pre-read: read while frozen.
        assert_eq!(
            PreRead::default().flags(me, &same).unwrap().1,
            Source::Frozen
        );
    }
}
