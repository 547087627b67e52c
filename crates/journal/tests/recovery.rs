//! Torn and corrupt tails: 200 seeded cases of truncation, bit flips and trailing garbage at
//! random offsets of the last segment. Each must recover to exactly its last valid record,
//! never report a record that was not written, say what it cut, and append correctly after.

mod common;

use common::{append_all, gen_records, opts, read_all, segment_files, Rng};
use journal::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use journal::{inspect, FsyncPolicy, Journal, Record};

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate(u64),
    FlipBit(u64, u8),
    Garbage(u64, bool),
}

/// Byte offsets of every frame of the last segment, given its records.
fn frame_starts(last_seg_records: &[Record]) -> Vec<(u64, u64)> {
    let mut off = SEGMENT_HEADER_LEN as u64;
    last_seg_records
        .iter()
        .map(|r| {
            let start = off;
            off += (RECORD_HEADER_LEN + r.payload.len()) as u64;
            (start, off)
        })
        .collect()
}

/// Returns (header of the last segment hit, a cut was reported).
fn one_case(case: u64) -> (bool, bool) {
    let mut rng = Rng(0x5eed_0000 + case);
    let dir = tempfile::tempdir().unwrap();
    let n = 1 + rng.below(120);
    let recs = gen_records(&mut rng, 1, n, 200);
    let segment_bytes = 2048;
    {
        let (mut j, _) =
            Journal::open(dir.path(), opts(segment_bytes, FsyncPolicy::Never)).unwrap();
        append_all(&mut j, &recs);
    }
    let segs = segment_files(dir.path());
    let last = segs.last().unwrap().clone();
    let last_first: u64 = last.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let in_last: Vec<Record> = recs
        .iter()
        .filter(|r| r.seq >= last_first)
        .cloned()
        .collect();
    let frames = frame_starts(&in_last);
    let len = std::fs::metadata(&last).unwrap().len();
    assert_eq!(
        frames.last().map_or(SEGMENT_HEADER_LEN as u64, |f| f.1),
        len
    );

    let damage = match rng.below(7) {
        0 | 1 => Damage::Truncate(rng.below(len)),
        2 => {
            // Exactly at a frame boundary: a shorter journal, nothing to cut.
            let k = usize::try_from(rng.below(frames.len() as u64)).unwrap();
            Damage::Truncate(frames[k].0)
        }
        3 | 4 => Damage::FlipBit(rng.below(len), u8::try_from(rng.below(8)).unwrap()),
        _ => Damage::Garbage(1 + rng.below(100), rng.below(2) == 0),
    };
    let mut bytes = std::fs::read(&last).unwrap();
    // The offset from which data is damaged (records from the frame holding it are lost).
    let damaged_from = match damage {
        Damage::Truncate(at) => {
            bytes.truncate(usize::try_from(at).unwrap());
            at
        }
        Damage::FlipBit(at, bit) => {
            bytes[usize::try_from(at).unwrap()] ^= 1 << bit;
            at
        }
        Damage::Garbage(count, zeros) => {
            let extra = if zeros {
                vec![0u8; usize::try_from(count).unwrap()]
            } else {
                rng.bytes(usize::try_from(count).unwrap())
            };
            bytes.extend_from_slice(&extra);
            len
        }
    };
    std::fs::write(&last, &bytes).unwrap();

    // Expected: every record before the damaged frame; all of the last segment's records if
    // its header is damaged (the segment goes as a whole).
    let header_hit = damaged_from < SEGMENT_HEADER_LEN as u64;
    let survivors_in_last = if header_hit {
        0
    } else {
        frames.iter().filter(|f| f.1 <= damaged_from).count()
    };
    let expected_last = if header_hit {
        last_first - 1
    } else {
        last_first - 1 + survivors_in_last as u64
    };
    let truncated_at_boundary = matches!(damage, Damage::Truncate(at)
        if at >= SEGMENT_HEADER_LEN as u64 && frames.iter().any(|f| f.1 == at));
    let clean_truncation_of_empty =
        matches!(damage, Damage::Truncate(at) if at == SEGMENT_HEADER_LEN as u64);

    // summarize sees the same thing without touching the files.
    let s = inspect::summarize(dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&last).unwrap(),
        bytes,
        "case {case}: summarize wrote"
    );
    if !header_hit {
        assert_eq!(
            s.last_seq,
            (expected_last > 0).then_some(expected_last),
            "case {case}"
        );
    }

    let (mut j, rec) = Journal::open(dir.path(), opts(segment_bytes, FsyncPolicy::Always))
        .unwrap_or_else(|e| panic!("case {case} {damage:?}: open failed: {e}"));
    assert_eq!(
        rec.last_valid_seq, expected_last,
        "case {case} {damage:?}: {rec}"
    );
    if truncated_at_boundary || clean_truncation_of_empty {
        assert!(rec.is_clean(), "case {case}: nothing to cut: {rec}");
    } else {
        assert!(
            !rec.is_clean()
                && rec.cut.is_some()
                && (rec.bytes_cut > 0 || matches!(damage, Damage::Truncate(0))),
            "case {case} {damage:?}: the cut must be reported: {rec}"
        );
    }
    if header_hit && bytes.len() > SEGMENT_HEADER_LEN {
        assert_eq!(
            rec.set_aside.len(),
            1,
            "case {case}: damaged segment kept aside: {rec}"
        );
        assert!(rec.set_aside[0].exists());
        let s = inspect::summarize(dir.path()).unwrap();
        assert_eq!(s.set_aside, rec.set_aside, "case {case}: inspect lists it");
    }
    // Damage with intact records after it (a flipped bit before the last frame) is told apart
    // from a torn write, and the cut bytes are kept.
    let later_frames_intact = matches!(damage, Damage::FlipBit(..))
        && !header_hit
        && survivors_in_last + 1 < frames.len();
    if later_frames_intact {
        assert_eq!(
            rec.valid_after_cut,
            Some(expected_last + 2),
            "case {case} {damage:?}: {rec}"
        );
        assert!(
            rec.set_aside.iter().any(|p| p.exists()),
            "case {case}: {rec}"
        );
    } else if !header_hit {
        assert_eq!(rec.valid_after_cut, None, "case {case} {damage:?}: {rec}");
    }
    let reported_cut = rec.cut.is_some();
    let got = read_all(&mut j);
    assert_eq!(
        got,
        recs[..usize::try_from(expected_last).unwrap()],
        "case {case} {damage:?}: records differ"
    );
    // Appending after recovery continues the sequence.
    let more = gen_records(&mut rng, expected_last + 1, 5, 50);
    append_all(&mut j, &more);
    drop(j);
    let (mut j, rec) = Journal::open(dir.path(), opts(segment_bytes, FsyncPolicy::Always)).unwrap();
    assert!(rec.is_clean(), "case {case}: second open: {rec}");
    let mut want = recs[..usize::try_from(expected_last).unwrap()].to_vec();
    want.extend(more);
    assert_eq!(read_all(&mut j), want, "case {case}");
    (header_hit, reported_cut)
}

#[test]
fn torn_or_corrupt_tail_recovers_to_last_valid_record_200_cases() {
    let (mut header_hits, mut cuts) = (0, 0);
    for case in 0..200 {
        let (h, c) = one_case(case);
        header_hits += usize::from(h);
        cuts += usize::from(c);
    }
    // The seeds must exercise every path: header damage, record damage, clean truncations.
    assert!(header_hits > 0, "no case hit a segment header");
    assert!(cuts > 100, "only {cuts} cases reported a cut");
    assert!(cuts < 200, "no case truncated at a record boundary");
    eprintln!("200 cases: {header_hits} hit the segment header, {cuts} reported a cut");
}

mod decoder {
    use journal::format::{decode_frame, encode_record, frames, RecordHeader};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary bytes never panic the decoder, and whatever it accepts is a whole,
        /// checksummed frame lying inside the input.
        #[test]
        fn decoder_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok((f, n)) = decode_frame(&bytes) {
                prop_assert!(n <= bytes.len());
                prop_assert_eq!(f.payload.len() + journal::format::RECORD_HEADER_LEN, n);
            }
            let _ = RecordHeader::decode(&bytes);
            let _ = frames(&bytes).count();
        }

        /// Encoded frames decode to what was encoded; any single-byte change is refused.
        #[test]
        fn frames_round_trip_and_detect_damage(
            recs in proptest::collection::vec((any::<u32>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..20),
            at in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let mut buf = Vec::new();
            for (i, (stream, payload)) in recs.iter().enumerate() {
                encode_record(&mut buf, 1 + i as u64, *stream, payload);
            }
            let decoded: Vec<_> = frames(&buf).map(Result::unwrap).collect();
            prop_assert_eq!(decoded.len(), recs.len());
            for (i, (f, (stream, payload))) in decoded.iter().zip(&recs).enumerate() {
                prop_assert_eq!(f.seq, 1 + i as u64);
                prop_assert_eq!(f.stream, *stream);
                prop_assert_eq!(f.payload, &payload[..]);
            }
            let mut bad = buf.clone();
            let i = at.index(bad.len());
            bad[i] ^= xor;
            let ok: Vec<_> = frames(&bad).collect();
            prop_assert!(ok.iter().any(Result::is_err), "damage at byte {} not detected", i);
        }
    }
}

/// A backup that crashes (here: its tail torn at a random offset while it is down) and
/// restarts, again and again, resumes from its durable watermark and ends with exactly the
/// primary's records: no gap, no duplicate, the same digest.
#[test]
fn backup_resumes_from_durable_watermark_after_torn_restarts() {
    let primary = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let mut rng = Rng(99);
    let recs = gen_records(&mut rng, 1, 1500, 300);
    let (mut p, _) = Journal::open(primary.path(), opts(16 << 10, FsyncPolicy::Never)).unwrap();
    append_all(&mut p, &recs);
    let bopts = || opts(4 << 10, FsyncPolicy::EveryN(7));
    let (mut b, _) = Journal::open(backup.path(), bopts()).unwrap();
    let mut restarts = 0;
    let mut overlaps = 0;
    // Resume point of a (re)connection: what the backup holds durably.
    let mut from = b.durable_seq() + 1;
    loop {
        if from > 1500 {
            break;
        }
        let batch = p
            .read_raw_from(from, 1 + usize::try_from(rng.below(3000)).unwrap())
            .unwrap();
        b.append_raw(&batch.bytes).unwrap();
        b.commit().unwrap();
        from = b.last_seq() + 1;
        if rng.below(5) == 0 {
            // Crash while down: tear the last segment somewhere after its header.
            b.sync().unwrap();
            drop(b);
            let last = segment_files(backup.path()).pop().unwrap();
            let len = std::fs::metadata(&last).unwrap().len();
            if len > SEGMENT_HEADER_LEN as u64 + 1 {
                let at = SEGMENT_HEADER_LEN as u64 + rng.below(len - SEGMENT_HEADER_LEN as u64);
                let f = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
                f.set_len(at).unwrap();
            }
            let (nb, rec) = Journal::open(backup.path(), bopts()).unwrap();
            assert_eq!(nb.durable_seq(), nb.last_seq(), "after open all is durable");
            assert_eq!(rec.last_valid_seq, nb.last_seq());
            b = nb;
            restarts += 1;
            from = b.durable_seq() + 1;
        } else if rng.below(4) == 0 {
            // Reconnect without a restart: the backup syncs and announces its watermark.
            from = b.sync().unwrap() + 1;
            assert_eq!(from, b.last_seq() + 1);
        } else if rng.below(3) == 0 && b.last_seq() > 5 {
            // A re-sent batch overlapping what the backup holds: refused by append_raw, skipped
            // by append_raw_idempotent, never duplicated.
            let back = b.last_seq() - rng.below(5);
            let again = p.read_raw_from(back, 1 << 12).unwrap();
            let last = b.last_seq();
            assert!(b.append_raw(&again.bytes).unwrap_err().is_duplicate());
            let r = b.append_raw_idempotent(&again.bytes).unwrap();
            assert_eq!(r.skipped + r.appended, again.records);
            assert_eq!(r.last_seq, last.max(again.last_seq));
            overlaps += 1;
            from = b.last_seq() + 1;
        }
    }
    assert!(restarts > 10, "only {restarts} restarts");
    assert!(overlaps > 5, "only {overlaps} overlaps");
    drop(b);
    drop(p);
    let sp = inspect::summarize(primary.path()).unwrap();
    let sb = inspect::summarize(backup.path()).unwrap();
    assert_eq!(
        (sb.records, sb.gaps, sb.first_seq, sb.last_seq),
        (1500, 0, Some(1), Some(1500))
    );
    assert_eq!(sp.digest, sb.digest);
}

mod garbage_dirs {
    use journal::format::{segment_file_name, SegmentHeader};
    use journal::{inspect, Journal, JournalOptions};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Directories of segment files with arbitrary contents (sometimes behind a valid
        /// header) never panic `open`, `summarize` or a reader: each returns a value or a
        /// typed error, and a successful open reports a consistent journal.
        #[test]
        fn open_and_summarize_never_panic(
            files in proptest::collection::vec(
                (1u64..1000, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..400)),
                1..4,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            for (seq, valid_header, body) in &files {
                let mut bytes = Vec::new();
                if *valid_header {
                    let h = SegmentHeader { first_seq: *seq, index: 0, journal_id: 1, epoch: 0 };
                    bytes.extend_from_slice(&h.encode());
                }
                bytes.extend_from_slice(body);
                std::fs::write(dir.path().join(segment_file_name(*seq)), &bytes).unwrap();
            }
            let _ = inspect::summarize(dir.path()).unwrap();
            if let Ok(it) = journal::RecordIter::open_dir(dir.path(), 0) {
                let _ = it.take(1000).count();
            }
            if let Ok((mut j, rec)) = Journal::open(dir.path(), JournalOptions::default()) {
                prop_assert_eq!(j.last_seq(), rec.last_valid_seq);
                let n = j.read_from(j.first_seq()).unwrap().map(Result::unwrap).count() as u64;
                prop_assert_eq!(n, j.last_seq() + 1 - j.first_seq());
                // And it accepts the next record.
                let next = j.last_seq() + 1;
                j.append(0, next, b"x").unwrap();
                j.commit().unwrap();
            }
        }
    }
}

mod raw_input {
    use journal::{Journal, JournalOptions};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Bytes from the wire handed to `append_raw*`: garbage is refused as a whole (nothing
        /// appended, the journal still usable), never a panic.
        #[test]
        fn garbage_frames_append_nothing(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dir = tempfile::tempdir().unwrap();
            let (mut j, _) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
            j.append_next(1, b"before").unwrap();
            let r1 = j.append_raw(&bytes);
            let r2 = j.append_raw_idempotent(&bytes);
            if !bytes.is_empty() {
                prop_assert!(r1.is_err() && r2.is_err());
            }
            prop_assert_eq!(j.last_seq(), 1);
            j.append_next(1, b"after").unwrap();
            prop_assert_eq!(j.commit().unwrap(), 2);
        }
    }
}
