//! `JournalOptions::direct_io`: `O_DIRECT` appends of whole blocks, the partial last block
//! through the page cache. What must hold: outside readers see every durable record and never
//! a byte past the last record, reopening (also after a torn tail) recovers every record
//! written, appending continues from a partial block, and a file system that refuses
//! `O_DIRECT` gets buffered appends with the reason said.

use std::path::Path;
use std::time::Duration;

use journal::{inspect, FsyncPolicy, Journal, JournalOptions, RecordIter};

fn payload(seq: u64) -> Vec<u8> {
    // Lengths around and across block boundaries: 0..=5000 bytes.
    let len = usize::try_from(seq * 997 % 5001).unwrap();
    (0..len)
        .map(|i| u8::try_from((seq.wrapping_mul(13) + i as u64) % 251).unwrap())
        .collect()
}

fn opts(fsync: FsyncPolicy) -> JournalOptions {
    JournalOptions {
        fsync,
        direct_io: true,
        write_buffer: 20_000,
        segment_bytes: 256 << 10,
        ..JournalOptions::default()
    }
}

/// Open with `O_DIRECT`, or `None` (with a printed reason) where the temp dir refuses it.
fn open_direct(dir: &Path, o: JournalOptions) -> Option<Journal> {
    let (j, _) = Journal::open(dir, o).unwrap();
    if let Some(why) = j.direct_io_refused() {
        eprintln!("skipped: {why}");
        return None;
    }
    assert!(j.direct_io());
    Some(j)
}

fn outside_count(dir: &Path) -> u64 {
    RecordIter::open_dir(dir, 1)
        .unwrap()
        .map(|r| {
            let r = r.unwrap();
            assert_eq!(r.payload, payload(r.seq), "seq {}", r.seq);
        })
        .count() as u64
}

fn check_all(dir: &Path, last: u64) {
    let (mut j, rec) = Journal::open(dir, JournalOptions::default()).unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(j.last_seq(), last);
    let mut n = 0;
    for r in j.read_from(1).unwrap() {
        let r = r.unwrap();
        n += 1;
        assert_eq!((r.seq, &r.payload), (n, &payload(n)));
    }
    assert_eq!(n, last);
}

/// Records of every size across several segments: an outside reader sees at least every
/// durable record and nothing invalid; after `flush` all of them; a reopened journal (buffered
/// or direct) holds them all, and appending after a reopen (a partial last block loaded back)
/// keeps every earlier byte.
#[test]
fn direct_appends_round_trip_across_segments_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut j) = open_direct(dir.path(), opts(FsyncPolicy::EveryN(40))) else {
        return;
    };
    let mut last = 0;
    for round in 0..6u64 {
        for _ in 0..37 {
            last += 1;
            j.append(u32::try_from(last % 3).unwrap(), last, &payload(last))
                .unwrap();
        }
        let durable = j.commit().unwrap();
        assert!(durable <= last);
        let seen = outside_count(dir.path());
        assert!(
            seen >= durable,
            "round {round}: durable {durable}, seen {seen}"
        );
        let s = inspect::summarize(dir.path()).unwrap();
        assert!(
            s.problems.is_empty() && s.tail.is_none(),
            "round {round}: {s:?}"
        );
    }
    assert!(j.segment_count() > 1, "several segments");
    j.flush().unwrap();
    assert_eq!(outside_count(dir.path()), last);
    drop(j);
    check_all(dir.path(), last);
    // Reopen with O_DIRECT: the partial last block is read back, appending goes on.
    for _ in 0..2 {
        let mut j = open_direct(dir.path(), opts(FsyncPolicy::Always)).unwrap();
        for _ in 0..11 {
            last += 1;
            j.append(1, last, &payload(last)).unwrap();
            assert_eq!(j.commit().unwrap(), last, "Always: every commit is durable");
        }
        assert_eq!(outside_count(dir.path()), last);
        drop(j);
        check_all(dir.path(), last);
    }
}

/// A crash that tore the tail (the file cut inside the last frame, then zeros up to the next
/// block, as a torn block write may leave): reopening cuts it back to the last whole record,
/// says so, and O_DIRECT appends continue from that unaligned length.
#[test]
fn torn_tail_block_is_cut_and_appending_continues() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut j) = open_direct(dir.path(), opts(FsyncPolicy::Interval(Duration::ZERO))) else {
        return;
    };
    for seq in 1..=30 {
        j.append(0, seq, &payload(seq)).unwrap();
    }
    assert_eq!(j.sync().unwrap(), 30);
    drop(j);
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    // Tear the last record (payload(30) is 4,910 bytes long): keep 100 bytes of it, then zeros.
    let last_len = payload(30).len() as u64 + 24;
    let cut = len - last_len + 100;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut).unwrap();
    f.set_len(cut.div_ceil(4096) * 4096 + 4096).unwrap();
    drop(f);
    let (j, rec) = Journal::open(dir.path(), opts(FsyncPolicy::Always)).unwrap();
    assert_eq!(rec.last_valid_seq, 29, "{rec}");
    assert!(rec.cut.is_some(), "the torn tail is reported: {rec}");
    assert_eq!(j.last_seq(), 29);
    assert!(j.direct_io());
    let mut j = j;
    for seq in 30..=45 {
        j.append(0, seq, &payload(seq)).unwrap();
    }
    assert_eq!(j.commit().unwrap(), 45);
    drop(j);
    check_all(dir.path(), 45);
}

/// A file system that refuses `O_DIRECT` (ramfs: `open` fails with `EINVAL`): the journal
/// appends through the page cache and says why. Needs root to mount a ramfs.
#[test]
fn refused_o_direct_falls_back_to_buffered() {
    let mnt = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(mnt.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: needs root to mount a ramfs (a file system without O_DIRECT)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _u = Unmount(mnt.path());
    let dir = mnt.path().join("j");
    let (mut j, _) = Journal::open(&dir, opts(FsyncPolicy::Always)).unwrap();
    assert!(!j.direct_io());
    let why = j.direct_io_refused().expect("a reason").to_owned();
    assert!(
        why.contains("O_DIRECT") && why.contains(&*dir.to_string_lossy()),
        "{why}"
    );
    for seq in 1..=50 {
        j.append(2, seq, &payload(seq)).unwrap();
    }
    assert_eq!(j.commit().unwrap(), 50);
    assert_eq!(outside_count(&dir), 50);
    drop(j);
    check_all(&dir, 50);
}
