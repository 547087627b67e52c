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

fn one_case(case: u64) {
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

    let damage = match rng.below(3) {
        0 => Damage::Truncate(rng.below(len)),
        1 => Damage::FlipBit(rng.below(len), u8::try_from(rng.below(8)).unwrap()),
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
}

#[test]
fn torn_or_corrupt_tail_recovers_to_last_valid_record_200_cases() {
    for case in 0..200 {
        one_case(case);
    }
}
