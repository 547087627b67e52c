//! Behaviour of `Journal`: round trip, ordering errors, segments, retention, durability
//! watermarks, raw shipping, reset, locking and concurrent appenders.

mod common;

use std::sync::Arc;

use common::{append_all, gen_records, opts, read_all, segment_files, Rng};
use journal::format::{MAX_PAYLOAD, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use journal::{inspect, Error, FsyncPolicy, Journal, JournalOptions, RecordIter, SharedJournal};

#[test]
fn round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(1);
    let recs = gen_records(&mut rng, 1, 500, 300);
    {
        let (mut j, rec) = Journal::open(dir.path(), opts(8 << 10, FsyncPolicy::Never)).unwrap();
        assert!(rec.created && rec.is_clean());
        assert_eq!((j.last_seq(), j.first_seq()), (0, 1));
        append_all(&mut j, &recs);
        assert_eq!(j.last_seq(), 500);
        assert!(j.segment_count() > 3, "small segments roll");
        assert_eq!(read_all(&mut j), recs);
        let mid: Vec<_> = j.read_from(250).unwrap().map(Result::unwrap).collect();
        assert_eq!(mid, recs[249..]);
    }
    let (mut j, rec) = Journal::open(dir.path(), opts(8 << 10, FsyncPolicy::Always)).unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert!(!rec.created);
    assert_eq!(
        (rec.records, rec.first_seq, rec.last_valid_seq),
        (500, 1, 500)
    );
    assert_eq!(j.durable_seq(), 500);
    assert_eq!(read_all(&mut j), recs);
    // Readers from outside (no lock) see the same.
    let outside: Vec<_> = RecordIter::open_dir(dir.path(), 1)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(outside, recs);
    let from_400: Vec<_> = RecordIter::open_dir(dir.path(), 400)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(from_400, recs[399..]);
    assert_eq!(RecordIter::open_dir(dir.path(), 501).unwrap().count(), 0);
    // Borrowing iteration sees the same records.
    let mut it = j.read_from(1).unwrap();
    let mut n = 0;
    while let Some(r) = it.next_ref() {
        let r = r.unwrap();
        let want = &recs[n];
        assert_eq!(
            (r.seq, r.stream, r.payload),
            (want.seq, want.stream, &want.payload[..])
        );
        n += 1;
    }
    assert_eq!(n, 500);
    // Empty and oversized payloads.
    j.append(9, 501, b"").unwrap();
    assert!(matches!(
        j.append(9, 502, &vec![0u8; 17 << 20]),
        Err(Error::TooLarge { .. })
    ));
    assert_eq!(j.commit().unwrap(), 501);
}

#[test]
fn out_of_order_appends_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append(0, 1, b"a").unwrap();
    j.append(0, 2, b"b").unwrap();
    let dup = j.append(0, 2, b"b").unwrap_err();
    assert!(dup.is_duplicate(), "{dup}");
    assert!(dup.to_string().contains("already present"), "{dup}");
    let gap = j.append(0, 4, b"d").unwrap_err();
    assert!(
        matches!(
            gap,
            Error::OutOfOrder {
                expected: 3,
                got: 4,
                ..
            }
        ),
        "{gap}"
    );
    assert!(!gap.is_duplicate());
    assert_eq!(j.append_next(0, b"c").unwrap(), 3);
    let last = j
        .append_batch([(1, 4, &b"d"[..]), (1, 5, &b"e"[..])])
        .unwrap();
    assert_eq!(last, 5);
    assert_eq!(j.commit().unwrap(), 5);
}

#[test]
fn start_seq_and_second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let o = JournalOptions {
        start_seq: 1000,
        ..JournalOptions::default()
    };
    let (mut j, rec) = Journal::open(dir.path(), o).unwrap();
    assert_eq!((rec.first_seq, j.last_seq()), (1000, 999));
    let locked = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    assert!(
        matches!(locked, Error::Locked { holder: Some(p), .. } if p == std::process::id()),
        "{locked}"
    );
    assert!(locked.to_string().contains("by pid"), "{locked}");
    j.append(0, 1000, b"x").unwrap();
    drop(j);
    let (j, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!((j.first_seq(), j.last_seq()), (1000, 1000));
}

#[test]
fn durable_watermark_follows_the_policy() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::EveryN(10))).unwrap();
    for i in 1..=5 {
        j.append(0, i, b"x").unwrap();
    }
    assert_eq!(j.commit().unwrap(), 0, "5 < 10 unsynced records");
    assert_eq!((j.written_seq(), j.durable_seq()), (5, 0));
    for i in 6..=10 {
        j.append(0, i, b"x").unwrap();
    }
    assert_eq!(j.commit().unwrap(), 10);
    j.append(0, 11, b"x").unwrap();
    assert_eq!(j.sync().unwrap(), 11, "sync forces");
    let fsyncs = j.stats().fsyncs;
    assert_eq!(j.commit().unwrap(), 11);
    assert_eq!(j.stats().fsyncs, fsyncs, "nothing pending, no fsync");
    drop(j);

    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    j.append(0, 1, b"x").unwrap();
    assert_eq!(j.durable_seq(), 0, "buffered is not durable");
    assert_eq!(
        j.commit().unwrap(),
        1,
        "never: written to the kernel counts"
    );
    assert_eq!(j.stats().fsyncs, 0);

    let dir = tempfile::tempdir().unwrap();
    let policy = FsyncPolicy::Interval(std::time::Duration::from_secs(3600));
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, policy)).unwrap();
    assert_eq!(j.sync_deadline(), None);
    j.append(0, 1, b"x").unwrap();
    assert_eq!(j.commit().unwrap(), 0, "interval not elapsed");
    assert!(j.sync_deadline().unwrap() > std::time::Instant::now());
    assert_eq!(j.sync().unwrap(), 1);
    assert_eq!(j.sync_deadline(), None);
    drop(j);

    // A short interval: a commit at the deadline makes the quiet tail durable.
    let dir = tempfile::tempdir().unwrap();
    let policy = FsyncPolicy::Interval(std::time::Duration::from_millis(20));
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, policy)).unwrap();
    j.append(0, 1, b"x").unwrap();
    j.commit().unwrap();
    j.append(0, 2, b"y").unwrap();
    let commit = j.commit().unwrap();
    if commit < 2 {
        let deadline = j.sync_deadline().unwrap();
        std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
        assert_eq!(j.commit().unwrap(), 2, "deadline passed: commit fsyncs");
    }
}

#[test]
fn retention_drops_whole_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let recs = gen_records(&mut rng, 1, 400, 200);
    let (mut j, _) = Journal::open(dir.path(), opts(4 << 10, FsyncPolicy::Always)).unwrap();
    append_all(&mut j, &recs);
    let segs = j.segment_count();
    assert!(segs > 5);
    let none = j.truncate_before(1).unwrap();
    assert_eq!(none.segments_removed, 0);
    let t = j.truncate_before(200).unwrap();
    assert!(t.segments_removed > 0 && t.bytes_removed > 0);
    assert!(t.first_seq <= 200, "a segment holding seq 200 is kept");
    assert_eq!(j.first_seq(), t.first_seq);
    assert_eq!(segment_files(dir.path()).len(), segs - t.segments_removed);
    assert!(matches!(j.read_from(1), Err(Error::NotHeld { .. })));
    let rest: Vec<_> = j
        .read_from(t.first_seq)
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rest, recs[usize::try_from(t.first_seq - 1).unwrap()..]);
    // Everything before the last seq: only the active segment stays.
    let all = j.truncate_before(u64::MAX).unwrap();
    assert_eq!(j.segment_count(), 1);
    assert_eq!(j.last_seq(), 400);
    assert_eq!(all.first_seq, j.first_seq());
    j.append(0, 401, b"after").unwrap();
    j.commit().unwrap();
    drop(j);
    let (j, rec) = Journal::open(dir.path(), opts(4 << 10, FsyncPolicy::Always)).unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!((j.first_seq(), j.last_seq()), (all.first_seq, 401));
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!(
        (s.first_seq, s.last_seq, s.gaps),
        (Some(all.first_seq), Some(401), 0)
    );
}

#[test]
fn raw_frames_ship_between_journals_with_identical_digests() {
    let primary = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let mut rng = Rng(11);
    let recs = gen_records(&mut rng, 1, 300, 500);
    let (mut p, _) = Journal::open(primary.path(), opts(16 << 10, FsyncPolicy::Never)).unwrap();
    append_all(&mut p, &recs);
    p.append(3, 301, &vec![7u8; 40_000]).unwrap(); // larger than max_bytes and a segment
    p.commit().unwrap();
    let (mut b, _) = Journal::open(backup.path(), opts(8 << 10, FsyncPolicy::Always)).unwrap();
    let mut next = 1;
    let mut batches = 0;
    loop {
        let batch = p.read_raw_from(next, 4096).unwrap();
        if batch.records == 0 {
            break;
        }
        batches += 1;
        assert_eq!(batch.first_seq, next);
        assert!(batch.bytes.len() <= 4096 || batch.records == 1);
        let decoded: Vec<_> = journal::format::frames(&batch.bytes)
            .map(Result::unwrap)
            .collect();
        assert_eq!(decoded.len(), usize::try_from(batch.records).unwrap());
        assert_eq!(b.append_raw(&batch.bytes).unwrap(), batch.last_seq);
        next = batch.last_seq + 1;
    }
    assert!(batches > 10);
    // Into a caller's buffer after its own header, reusing the allocation.
    let mut buf = b"HDR".to_vec();
    let r = p.read_raw_into(10, 2000, &mut buf).unwrap();
    assert_eq!(&buf[..3], b"HDR");
    assert_eq!(r.first_seq, 10);
    let got: Vec<_> = journal::format::frames(&buf[3..])
        .map(Result::unwrap)
        .collect();
    assert_eq!(got.len(), usize::try_from(r.records).unwrap());
    assert_eq!(got.last().unwrap().seq, r.last_seq);
    assert_eq!(got[0].payload, &recs[9].payload[..]);
    let cap = buf.capacity();
    buf.truncate(3);
    p.read_raw_into(10, 2000, &mut buf).unwrap();
    assert_eq!(buf.capacity(), cap, "no reallocation in the steady state");
    assert_eq!(b.commit().unwrap(), 301);
    // A replayed batch is refused as a duplicate and appends nothing.
    let again = p.read_raw_from(1, 4096).unwrap();
    assert!(b.append_raw(&again.bytes).unwrap_err().is_duplicate());
    // A damaged batch appends nothing.
    let mut bad = p.read_raw_from(301, 1).unwrap();
    assert_eq!(bad.records, 1);
    bad.bytes[RECORD_HEADER_LEN + 5] ^= 1;
    drop(p);
    drop(b);
    let sp = inspect::summarize(primary.path()).unwrap();
    let sb = inspect::summarize(backup.path()).unwrap();
    assert_eq!(sp.digest, sb.digest);
    assert_eq!((sb.records, sb.gaps, sb.last_seq), (301, 0, Some(301)));
    assert_ne!(
        sp.segments.len(),
        sb.segments.len(),
        "digest ignores segmentation"
    );
    // Over a common range, after retention on one side only.
    let (mut p3, _) = Journal::open(primary.path(), JournalOptions::default()).unwrap();
    let t = p3.truncate_before(150).unwrap();
    assert!(t.segments_removed > 0);
    drop(p3);
    let from = t.first_seq;
    let rp = inspect::summarize_range(primary.path(), from, 301).unwrap();
    let rb = inspect::summarize_range(backup.path(), from, 301).unwrap();
    assert_eq!((rp.first_seq, rp.records), (Some(from), 302 - from));
    assert_eq!(rp.digest, rb.digest);
    assert_ne!(rb.digest, sb.digest);
    assert_ne!(
        inspect::summarize(primary.path()).unwrap().digest,
        sb.digest
    );
    let (mut b, _) = Journal::open(backup.path(), opts(8 << 10, FsyncPolicy::Always)).unwrap();
    let (mut p2, _) = Journal::open(primary.path(), JournalOptions::default()).unwrap();
    p2.append(0, 302, b"x").unwrap();
    let mut good = p2.read_raw_from(302, 1 << 20).unwrap();
    good.bytes[RECORD_HEADER_LEN] ^= 0x40;
    assert!(matches!(
        b.append_raw(&good.bytes),
        Err(Error::BadFrame { offset: 0, .. })
    ));
    assert_eq!(b.last_seq(), 301);
    // Past the end: empty batch. Before the start after retention: NotHeld.
    assert_eq!(p2.read_raw_from(999, 100).unwrap().records, 0);
}

#[test]
fn reset_restarts_numbering_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 10, FsyncPolicy::Always)).unwrap();
    for _ in 0..100 {
        j.append_next(0, &[1u8; 50]).unwrap();
    }
    j.commit().unwrap();
    j.reset(5000).unwrap();
    assert_eq!((j.first_seq(), j.last_seq(), j.epoch()), (5000, 4999, 1));
    assert_eq!(segment_files(dir.path()).len(), 1);
    j.append(2, 5000, b"new").unwrap();
    j.commit().unwrap();
    drop(j);
    let (mut j, rec) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert!(rec.is_clean(), "{rec}");
    assert_eq!(read_all(&mut j).len(), 1);
    assert_eq!(j.last_seq(), 5000);
}

#[test]
fn interrupted_segment_creation_is_cleaned_up_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append_next(0, b"a").unwrap();
    j.commit().unwrap();
    drop(j);
    // A crash between writing the new segment's header and renaming it into place.
    let partial = dir.path().join("00000000000000000002.seg.new");
    std::fs::write(&partial, [1u8; 20]).unwrap();
    assert!(inspect::summarize(dir.path()).unwrap().problems.is_empty());
    let (mut j, rec) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(rec.removed_files, vec![partial.clone()]);
    assert!(!partial.exists());
    assert_eq!(j.last_seq(), 1);
    j.append_next(0, b"b").unwrap();
    assert_eq!(j.commit().unwrap(), 2);
}

#[test]
fn interrupted_reset_is_completed_on_open() {
    // Build a journal, and beside it the `.seg.tmp` a reset writes first (taken from a second
    // journal whose reset we stop by hand: copy its segment under the tmp name).
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 10, FsyncPolicy::Always)).unwrap();
    for _ in 0..50 {
        j.append_next(0, &[1u8; 50]).unwrap();
    }
    j.commit().unwrap();
    drop(j);
    let other = tempfile::tempdir().unwrap();
    let (mut o, _) = Journal::open(other.path(), JournalOptions::default()).unwrap();
    o.reset(700).unwrap();
    drop(o);
    let seg = &segment_files(other.path())[0];
    let tmp = dir.path().join("00000000000000000700.seg.tmp");
    std::fs::copy(seg, &tmp).unwrap();
    let (j, rec) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert!(!rec.is_clean());
    assert!(rec.removed_files.len() > 1, "{rec}");
    assert_eq!((j.first_seq(), j.last_seq()), (700, 699));
    assert!(!tmp.exists());
}

#[test]
fn concurrent_appenders_with_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = SharedJournal::open(dir.path(), opts(64 << 10, FsyncPolicy::Always)).unwrap();
    let j = Arc::new(j);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..200u32 {
                    let mut payload = t.to_le_bytes().to_vec();
                    payload.extend_from_slice(&i.to_le_bytes());
                    let seq = j.append_next(t, &payload).unwrap();
                    if i % 10 == 9 {
                        let durable = j.commit().unwrap();
                        assert!(durable >= seq, "commit covers my records");
                    }
                    mine.push(seq);
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u64> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    assert_eq!(j.durable_seq(), 800);
    let fsyncs = j.lock().stats().fsyncs;
    assert!(
        fsyncs <= 80 + 20,
        "at most one fsync per commit call: {fsyncs}"
    );
    let j = Arc::into_inner(j).unwrap().into_inner();
    drop(j);
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!((s.records, s.gaps, s.streams), (800, 0, 4));
    assert!(s.stream_records.values().all(|&n| n == 200));

    // After a reset through the lock, commits follow the new numbering.
    let (j, _) = SharedJournal::open(dir.path(), opts(64 << 10, FsyncPolicy::Always)).unwrap();
    j.append_next(0, b"x").unwrap();
    j.lock().reset(5000).unwrap();
    assert_eq!(j.commit().unwrap(), 4999);
    j.append(0, 5000, b"y").unwrap();
    assert_eq!(j.commit().unwrap(), 5000);
}

#[test]
fn huge_length_garbage_is_cut() {
    // The scan checks a length against MAX_PAYLOAD and against the bytes left in the file
    // before it allocates anything (segment.rs), so these never allocate their claimed size.
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 20, FsyncPolicy::Always)).unwrap();
    for _ in 0..10 {
        j.append_next(1, b"0123456789").unwrap();
    }
    j.commit().unwrap();
    drop(j);
    let seg = &segment_files(dir.path())[0];
    let good_len = std::fs::metadata(seg).unwrap().len();
    for len in [u32::MAX, MAX_PAYLOAD + 1, MAX_PAYLOAD, 1 << 30] {
        // A frame header claiming `len` payload bytes, then little data.
        let mut garbage = vec![0xab; 4]; // checksum field
        garbage.extend_from_slice(&len.to_le_bytes());
        garbage.extend_from_slice(&[0; 56]); // stream, flags (valid: 0), seq, some payload
        let mut bytes = std::fs::read(seg).unwrap();
        bytes.truncate(usize::try_from(good_len).unwrap());
        bytes.extend_from_slice(&garbage);
        std::fs::write(seg, &bytes).unwrap();
        let s = inspect::summarize(dir.path()).unwrap();
        assert_eq!(s.records, 10);
        assert!(s.tail.is_some());
        let (j, rec) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        assert_eq!(rec.last_valid_seq, 10, "{rec}");
        assert_eq!(rec.bytes_cut, 64);
        assert_eq!(rec.cut.as_ref().unwrap().offset, good_len);
        assert!(matches!(
            rec.reason(),
            Some(
                journal::Corruption::LengthTooLarge { .. }
                    | journal::Corruption::ShortPayload { .. }
            )
        ));
        drop(j);
    }
}

#[test]
fn corrupt_sealed_segment_is_a_hard_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 10, FsyncPolicy::Always)).unwrap();
    for _ in 0..100 {
        j.append_next(0, &[5u8; 40]).unwrap();
    }
    j.commit().unwrap();
    drop(j);
    let segs = segment_files(dir.path());
    assert!(segs.len() > 3);
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    let frame = RECORD_HEADER_LEN + 40;
    let off = SEGMENT_HEADER_LEN + 2 * frame + 30; // inside the third record's payload
    bytes[off] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();
    let before = std::fs::read(victim).unwrap();
    let err = Journal::open(dir.path(), JournalOptions::default()).unwrap_err();
    match &err {
        Error::Corrupt { path, offset, .. } => {
            assert_eq!(path, victim);
            assert_eq!(
                *offset,
                u64::try_from(SEGMENT_HEADER_LEN + 2 * frame).unwrap()
            );
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(victim.to_str().unwrap()) && msg.contains("offset"),
        "{msg}"
    );
    assert_eq!(std::fs::read(victim).unwrap(), before, "nothing repaired");
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!(s.problems.len(), 1, "{s}");
    assert!(
        s.gaps > 0,
        "records after the damage in that segment are missing: {s}"
    );
    assert_eq!(
        std::fs::read(victim).unwrap(),
        before,
        "summarize is read-only"
    );
    // Readers from outside stop with the error.
    let r: Vec<_> = RecordIter::open_dir(dir.path(), 1).unwrap().collect();
    assert!(r.last().unwrap().is_err());
}

#[test]
fn missing_middle_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(1 << 10, FsyncPolicy::Never)).unwrap();
    for _ in 0..100 {
        j.append_next(0, &[5u8; 40]).unwrap();
    }
    j.commit().unwrap();
    drop(j);
    let segs = segment_files(dir.path());
    std::fs::remove_file(&segs[2]).unwrap();
    let s = inspect::summarize(dir.path()).unwrap();
    assert!(s.gaps > 0 && s.gap_ranges.len() == 1, "{s}");
    assert_eq!(s.records + s.gaps, 100);
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::default()),
        Err(Error::SegmentGap { .. })
    ));
    let json = serde_json::to_value(&s).unwrap();
    for key in [
        "records",
        "first_seq",
        "last_seq",
        "gaps",
        "streams",
        "digest",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
}

#[test]
fn summary_display_and_journal_detection() {
    let dir = tempfile::tempdir().unwrap();
    assert!(!inspect::is_journal_dir(dir.path()));
    let empty = inspect::summarize(dir.path()).unwrap();
    assert_eq!((empty.records, empty.first_seq, empty.gaps), (0, None, 0));
    let (mut j, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    j.append(1, 1, b"a").unwrap();
    j.append(2, 2, b"b").unwrap();
    j.commit().unwrap();
    assert!(inspect::is_journal_dir(dir.path()));
    // Summarize runs beside the live writer.
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!(
        (s.records, s.streams, s.first_seq, s.last_seq),
        (2, 2, Some(1), Some(2))
    );
    assert_eq!(s.digest.len(), 64);
    assert_ne!(s.digest, empty.digest);
    let text = s.to_string();
    assert!(
        text.contains("records   2") && text.contains(&s.digest),
        "{text}"
    );
    assert!(inspect::summarize(dir.path().join("missing")).is_err());
}

#[test]
fn idempotent_raw_append_skips_identical_and_refuses_different() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (mut p, _) = Journal::open(a.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    for i in 0..100u32 {
        p.append_next(i % 3, &i.to_le_bytes().repeat(10)).unwrap();
    }
    let (mut q, _) = Journal::open(b.path(), opts(1 << 10, FsyncPolicy::Never)).unwrap();
    q.append_raw(&p.read_raw_from(1, 3000).unwrap().bytes)
        .unwrap();
    let held = q.last_seq();
    assert!(held > 10 && held < 100);
    // Overlap crossing the backup's segment boundaries, then new records.
    let again = p.read_raw_from(3, 4000).unwrap();
    assert!(again.last_seq > held);
    let r = q.append_raw_idempotent(&again.bytes).unwrap();
    assert_eq!((r.skipped, r.last_seq), (held - 2, again.last_seq));
    assert_eq!(r.appended, again.last_seq - held);
    // Entirely held: nothing appended.
    let old = p.read_raw_from(1, 500).unwrap();
    let r = q.append_raw_idempotent(&old.bytes).unwrap();
    assert_eq!((r.skipped, r.appended), (old.records, 0));
    // Same seq, different content: conflict, nothing appended.
    let c = tempfile::tempdir().unwrap();
    let (mut other, _) = Journal::open(c.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
    for i in 0..5u32 {
        other
            .append_next(i % 3, &i.to_le_bytes().repeat(10))
            .unwrap();
    }
    other.append_next(7, b"different").unwrap();
    let diff = other.read_raw_from(1, 1 << 20).unwrap();
    let before = q.last_seq();
    assert!(matches!(
        q.append_raw_idempotent(&diff.bytes),
        Err(Error::Conflict { seq: 6, .. })
    ));
    assert_eq!(q.last_seq(), before);
}

#[test]
fn fast_open_without_verifying_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(5);
    let recs = gen_records(&mut rng, 1, 300, 100);
    let (mut j, _) = Journal::open(dir.path(), opts(2 << 10, FsyncPolicy::Never)).unwrap();
    append_all(&mut j, &recs);
    drop(j);
    let fast = JournalOptions {
        verify_sealed: false,
        ..opts(2 << 10, FsyncPolicy::Never)
    };
    let (mut j, rec) = Journal::open(dir.path(), fast.clone()).unwrap();
    assert!(rec.is_clean());
    assert_eq!((rec.records, j.last_seq()), (300, 300));
    assert_eq!(read_all(&mut j), recs);
    let mid: Vec<_> = j.read_from(150).unwrap().map(Result::unwrap).collect();
    assert_eq!(mid, recs[149..]);
    let b = j.read_raw_from(77, 1000).unwrap();
    assert_eq!(b.first_seq, 77);
    drop(j);
    // Damage in a sealed segment: found when read, not at open.
    let segs = segment_files(dir.path());
    let mut bytes = std::fs::read(&segs[1]).unwrap();
    let at = SEGMENT_HEADER_LEN + 30;
    bytes[at] ^= 4;
    std::fs::write(&segs[1], &bytes).unwrap();
    let (mut j, _) = Journal::open(dir.path(), fast).unwrap();
    let items: Vec<_> = j.read_from(1).unwrap().collect();
    assert!(matches!(items.last(), Some(Err(Error::Corrupt { .. }))));
    drop(j);
    assert!(matches!(
        Journal::open(dir.path(), JournalOptions::default()),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn types_are_thread_safe() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Journal>();
    sync::<Journal>();
    send::<SharedJournal>();
    sync::<SharedJournal>();
    send::<RecordIter>();
    send::<Error>();
    sync::<Error>();
}

#[test]
fn readers_and_retention_beside_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = SharedJournal::open(dir.path(), opts(2 << 10, FsyncPolicy::EveryN(16))).unwrap();
    let j = Arc::new(j);
    let writers: Vec<_> = (0..3u32)
        .map(|t| {
            let j = Arc::clone(&j);
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    let seq = j.append_next(t, &i.to_le_bytes().repeat(4)).unwrap();
                    if seq % 7 == 0 {
                        j.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    let reader = {
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            let mut reads = 0;
            while j.last_seq() < 1500 || reads < 5 {
                let (first, it) = {
                    let mut g = j.lock();
                    let first = g.first_seq();
                    (first, g.read_from(first).unwrap())
                };
                let mut expect = first;
                for r in it {
                    match r {
                        Ok(r) => {
                            assert_eq!(r.seq, expect, "records in order, no gap");
                            expect += 1;
                        }
                        // Retention removed a segment under the iterator: a typed error.
                        Err(Error::NotHeld { .. }) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                reads += 1;
            }
        })
    };
    let inspector = {
        let dir = dir.path().to_path_buf();
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            let mut n = 0;
            while j.last_seq() < 1500 || n < 3 {
                // Beside appends and retention: never an error, never a gap.
                let s = inspect::summarize(&dir).unwrap();
                assert_eq!(s.gaps, 0, "{s}");
                assert!(s.problems.is_empty(), "{s}");
                n += 1;
            }
        })
    };
    let retention = {
        let j = Arc::clone(&j);
        std::thread::spawn(move || {
            let mut removed = 0;
            for i in 0..5000 {
                let last = j.last_seq();
                removed += j.lock().truncate_before(last / 2).unwrap().segments_removed;
                if i >= 50 && last >= 1500 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            removed
        })
    };
    for w in writers {
        w.join().unwrap();
    }
    reader.join().unwrap();
    inspector.join().unwrap();
    assert!(retention.join().unwrap() > 0);
    assert_eq!(j.sync().unwrap(), 1500);
    let j = Arc::into_inner(j).unwrap().into_inner();
    let first = j.first_seq();
    drop(j);
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!(
        (s.first_seq, s.last_seq, s.gaps),
        (Some(first), Some(1500), 0)
    );
}

#[test]
fn outside_reader_sees_a_clean_prefix_of_a_live_journal() {
    let dir = tempfile::tempdir().unwrap();
    let (mut j, _) = Journal::open(dir.path(), opts(4 << 10, FsyncPolicy::Never)).unwrap();
    let path = dir.path().to_path_buf();
    let reader = std::thread::spawn(move || {
        let mut best = 0u64;
        for _ in 0..200 {
            let mut expect = 1;
            for r in RecordIter::open_dir(&path, 1).unwrap() {
                // Mid-write tails end the iteration quietly; sealed data never fails.
                let r = r.unwrap();
                assert_eq!(r.seq, expect);
                assert_eq!(r.payload, r.seq.to_le_bytes().repeat(3));
                expect += 1;
            }
            best = best.max(expect - 1);
        }
        best
    });
    for seq in 1..=3000u64 {
        j.append(0, seq, &seq.to_le_bytes().repeat(3)).unwrap();
        if seq % 10 == 0 {
            j.commit().unwrap();
        }
    }
    j.commit().unwrap();
    let seen = reader.join().unwrap();
    assert!(seen <= 3000);
}

#[test]
fn syncer_thread_makes_a_quiet_tail_durable_and_ends_with_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let policy = FsyncPolicy::Interval(std::time::Duration::from_millis(30));
    let (j, _) = SharedJournal::open(dir.path(), opts(1 << 20, policy)).unwrap();
    let j = Arc::new(j);
    j.append_next(0, b"a").unwrap();
    j.commit().unwrap(); // may or may not fsync, depending on the time since open
    j.append_next(0, b"b").unwrap();
    j.commit().unwrap();
    let syncer = j.spawn_syncer(std::time::Duration::from_millis(5));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while j.durable_seq() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the quiet tail never became durable"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(j.sync_deadline(), None);
    drop(j);
    syncer.join().unwrap(); // ends by itself once the journal is gone
}
