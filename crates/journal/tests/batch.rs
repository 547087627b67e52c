//! Batch frames (format version 2, `Journal::append_encoded`): the same records as
//! single-record frames (reads from any seq, raw shipping from inside a batch, digests), and a
//! torn or bit-flipped batch tail cut back to the last whole batch frame.

mod common;

use common::{append_all, gen_records, opts, read_all, segment_files, Rng};
use journal::format::{self, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
use journal::{inspect, FsyncPolicy, Journal, Record};

/// The batch encoding `(stream:u32 len:u32 payload)*` of `recs`.
fn encode(recs: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in recs {
        out.extend_from_slice(&r.stream.to_le_bytes());
        out.extend_from_slice(&u32::try_from(r.payload.len()).unwrap().to_le_bytes());
        out.extend_from_slice(&r.payload);
    }
    out
}

/// Append `recs` in random runs: single `append`s and `append_encoded` batches. Returns the
/// (first, last) seq of every batch call.
fn append_mixed(j: &mut Journal, recs: &[Record], rng: &mut Rng) -> Vec<(u64, u64)> {
    let mut i = 0;
    let mut batches = Vec::new();
    while i < recs.len() {
        let n = usize::try_from(1 + rng.below(40))
            .unwrap()
            .min(recs.len() - i);
        if rng.below(4) == 0 {
            for r in &recs[i..i + n] {
                j.append(r.stream, r.seq, &r.payload).unwrap();
            }
        } else {
            let last = j
                .append_encoded(recs[i].seq, &encode(&recs[i..i + n]))
                .unwrap();
            assert_eq!(last, recs[i + n - 1].seq);
            batches.push((recs[i].seq, last));
        }
        if rng.below(3) == 0 {
            j.commit().unwrap();
        }
        i += n;
    }
    j.commit().unwrap();
    batches
}

#[test]
fn batches_read_back_from_any_seq_ship_raw_and_digest_like_single_records() {
    for case in 0..6u64 {
        let mut rng = Rng(0xba7c_0000 + case);
        let recs = gen_records(&mut rng, 1, 400, 300);
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = Journal::open(da.path(), opts(8192, FsyncPolicy::Never)).unwrap();
        append_mixed(&mut a, &recs, &mut rng);
        let (mut b, _) = Journal::open(db.path(), opts(8192, FsyncPolicy::Never)).unwrap();
        append_all(&mut b, &recs);
        assert_eq!(read_all(&mut a), recs);
        // Every start seq, through the open journal and from outside.
        for from in (1..=400u64).step_by(7) {
            let got: Vec<Record> = a.read_from(from).unwrap().map(Result::unwrap).collect();
            assert_eq!(
                got,
                recs[usize::try_from(from - 1).unwrap()..],
                "case {case}"
            );
            let mut it = journal::RecordIter::open_dir(da.path(), from).unwrap();
            let r = it.next_ref().unwrap().unwrap();
            assert_eq!(
                (r.seq, r.payload),
                (from, &recs[usize::try_from(from - 1).unwrap()].payload[..])
            );
        }
        // Raw shipping resumed from arbitrary seqs, possibly inside a batch frame.
        for start in [1u64, 2, 57, 199, 400] {
            let dc = tempfile::tempdir().unwrap();
            let mut o = opts(4096, FsyncPolicy::Never);
            o.start_seq = start;
            let (mut c, _) = Journal::open(dc.path(), o).unwrap();
            let mut seq = start;
            let mut buf = Vec::new();
            while seq <= 400 {
                buf.clear();
                let r = a
                    .read_raw_into(seq, 1 + usize::try_from(rng.below(3000)).unwrap(), &mut buf)
                    .unwrap();
                assert_eq!(r.first_seq, seq);
                assert!(r.records > 0);
                assert_eq!(c.append_raw(&buf).unwrap(), r.last_seq);
                seq = r.last_seq + 1;
            }
            c.commit().unwrap();
            let (sa, sc) = (
                inspect::summarize_range(da.path(), start, 400).unwrap(),
                inspect::summarize(dc.path()).unwrap(),
            );
            assert_eq!((sc.records, sc.gaps), (401 - start, 0));
            assert_eq!(sa.digest, sc.digest, "case {case} start {start}");
        }
        drop(a);
        drop(b);
        let (sa, sb) = (
            inspect::summarize(da.path()).unwrap(),
            inspect::summarize(db.path()).unwrap(),
        );
        assert_eq!((sa.records, sa.gaps, sa.format_version), (400, 0, 2));
        assert_eq!(sa.digest, sb.digest);
        // Reopen: clean, and appends continue after the batches.
        let (mut a, rec) = Journal::open(da.path(), opts(8192, FsyncPolicy::Never)).unwrap();
        assert!(rec.is_clean(), "{rec}");
        assert_eq!(a.last_seq(), 400);
        a.append_encoded(401, &encode(&gen_records(&mut rng, 401, 3, 10)))
            .unwrap();
        assert!(a
            .append_encoded(401, &encode(&recs[..1]))
            .unwrap_err()
            .is_duplicate());
    }
}

/// `append_encoded_counted` (no walk of the records; runs of `DIRECT_WRITE_BYTES` or more
/// written from the caller's buffer) stores what `append` does: same records, digest, clean
/// reopen, across segment rolls and interleaved with buffered single records.
#[test]
fn counted_batches_buffered_or_written_direct_equal_single_records() {
    for case in 0..4u64 {
        let mut rng = Rng(0xc0a7_0000 + case);
        let recs = gen_records(&mut rng, 1, 600, 3000);
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = Journal::open(da.path(), opts(256 << 10, FsyncPolicy::Never)).unwrap();
        let mut i = 0;
        let mut direct = 0;
        while i < recs.len() {
            let n = usize::try_from(1 + rng.below(60))
                .unwrap()
                .min(recs.len() - i);
            if rng.below(5) == 0 {
                a.append(recs[i].stream, recs[i].seq, &recs[i].payload)
                    .unwrap();
                i += 1;
                continue;
            }
            let enc = encode(&recs[i..i + n]);
            direct += usize::from(enc.len() >= journal::DIRECT_WRITE_BYTES);
            let last = a
                .append_encoded_counted(recs[i].seq, u32::try_from(n).unwrap(), &enc)
                .unwrap();
            assert_eq!(last, recs[i + n - 1].seq);
            if rng.below(3) == 0 {
                a.commit().unwrap();
            }
            i += n;
        }
        a.commit().unwrap();
        assert!(direct > 0, "case {case}: no run took the direct write");
        assert_eq!(read_all(&mut a), recs);
        let (mut b, _) = Journal::open(db.path(), opts(256 << 10, FsyncPolicy::Never)).unwrap();
        append_all(&mut b, &recs);
        drop((a, b));
        let (sa, sb) = (
            inspect::summarize(da.path()).unwrap(),
            inspect::summarize(db.path()).unwrap(),
        );
        assert_eq!((sa.records, sa.gaps), (600, 0));
        assert_eq!(sa.digest, sb.digest, "case {case}");
        let (mut a, rec) = Journal::open(da.path(), opts(256 << 10, FsyncPolicy::Never)).unwrap();
        assert!(rec.is_clean(), "{rec}");
        assert_eq!(read_all(&mut a), recs);
        assert!(a
            .append_encoded_counted(600, 1, &encode(&recs[599..]))
            .unwrap_err()
            .is_duplicate());
    }
}

#[test]
fn malformed_or_oversized_batch_input_appends_nothing() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(1 << 20, FsyncPolicy::Never);
    o.max_payload = 100;
    let (mut j, _) = Journal::open(d.path(), o).unwrap();
    let good = Record {
        seq: 1,
        stream: 3,
        payload: vec![1; 10],
    };
    let big = Record {
        seq: 2,
        stream: 3,
        payload: vec![2; 101],
    };
    let mut short = encode(std::slice::from_ref(&good));
    short.pop();
    assert!(j.append_encoded(1, &short).is_err());
    assert!(j.append_encoded(1, &encode(&[good.clone(), big])).is_err());
    assert!(j
        .append_encoded(2, &encode(std::slice::from_ref(&good)))
        .is_err());
    assert_eq!(j.last_seq(), 0);
    assert_eq!(j.append_encoded(1, &encode(&[good])).unwrap(), 1);
}

/// Torn or bit-flipped batch tails: recovery keeps exactly the whole batch frames before the
/// damage (never part of a batch, never a record that was not written).
#[test]
fn damaged_batch_tail_is_cut_back_to_the_last_whole_batch() {
    for case in 0..60u64 {
        let mut rng = Rng(0xc07_0000 + case);
        let d = tempfile::tempdir().unwrap();
        let n = 1 + rng.below(150);
        let recs = gen_records(&mut rng, 1, n, 120);
        let frames = {
            let (mut j, _) = Journal::open(d.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
            let mut i = 0;
            let mut ends = Vec::new();
            while i < recs.len() {
                let n = usize::try_from(1 + rng.below(20))
                    .unwrap()
                    .min(recs.len() - i);
                j.append_encoded(recs[i].seq, &encode(&recs[i..i + n]))
                    .unwrap();
                i += n;
                ends.push(recs[i - 1].seq);
            }
            j.commit().unwrap();
            ends
        };
        let seg = segment_files(d.path()).pop().unwrap();
        let mut bytes = std::fs::read(&seg).unwrap();
        // Frame boundaries: (end offset, last seq).
        let mut bounds = Vec::new();
        let mut off = SEGMENT_HEADER_LEN;
        for (f, n) in format::frames(&bytes[SEGMENT_HEADER_LEN..]).map(|f| {
            let f = f.unwrap();
            (f.last_seq(), RECORD_HEADER_LEN + f.payload.len())
        }) {
            off += n;
            bounds.push((off, f));
        }
        assert_eq!(bounds.iter().map(|b| b.1).collect::<Vec<_>>(), frames);
        let len = bytes.len();
        let at = SEGMENT_HEADER_LEN
            + usize::try_from(rng.below((len - SEGMENT_HEADER_LEN) as u64)).unwrap();
        if case % 2 == 0 {
            bytes.truncate(at);
        } else {
            bytes[at] ^= 1 << rng.below(8);
        }
        std::fs::write(&seg, &bytes).unwrap();
        let expect_last = bounds
            .iter()
            .take_while(|b| b.0 <= at)
            .last()
            .map_or(0, |b| b.1);
        let (mut j, rec) = Journal::open(d.path(), opts(1 << 20, FsyncPolicy::Never)).unwrap();
        assert_eq!(j.last_seq(), expect_last, "case {case}: {rec}");
        let cut_mid_frame = case % 2 == 1 || !bounds.iter().any(|b| b.0 == at);
        assert_eq!(rec.cut.is_some(), cut_mid_frame, "case {case}: {rec}");
        let got = read_all(&mut j);
        assert_eq!(
            got,
            recs[..usize::try_from(expect_last).unwrap()],
            "case {case}"
        );
        let next = expect_last + 1;
        j.append_encoded(next, &encode(&gen_records(&mut rng, next, 2, 5)))
            .unwrap();
        j.commit().unwrap();
        assert_eq!(j.last_seq(), next + 1);
    }
}

/// `BatchWriter` (records encoded straight into the write buffer): the same records as
/// single-record frames (reads, digest, clean reopen), across segment rolls and frames cut at
/// `BATCH_MAX_BYTES`, with a record larger than a frame in a frame of its own, and writers
/// interleaved with single appends.
#[test]
fn batch_writer_equals_single_records_across_rolls_and_large_records() {
    for case in 0..4u64 {
        let mut rng = Rng(0xb7c0_0000 + case);
        let mut recs = gen_records(&mut rng, 1, 700, 3000);
        // One record larger than a whole batch frame, one just under it.
        recs[300].payload = rng.bytes(journal::BATCH_MAX_BYTES + 17);
        recs[500].payload = rng.bytes(journal::BATCH_MAX_BYTES - 8);
        let seg = 1 << 20;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (mut a, _) = Journal::open(da.path(), opts(seg, FsyncPolicy::Never)).unwrap();
        let mut i = 0;
        while i < recs.len() {
            let n = usize::try_from(1 + rng.below(200))
                .unwrap()
                .min(recs.len() - i);
            if rng.below(5) == 0 {
                a.append(recs[i].stream, recs[i].seq, &recs[i].payload)
                    .unwrap();
                i += 1;
                continue;
            }
            let mut w = a.batch_writer().unwrap();
            for r in &recs[i..i + n] {
                assert!(w.push(r.stream, &r.payload), "case {case}: seq {}", r.seq);
            }
            assert_eq!(w.finish().unwrap(), recs[i + n - 1].seq);
            if rng.below(3) == 0 {
                a.commit().unwrap();
            }
            i += n;
        }
        a.commit().unwrap();
        assert!(
            segment_files(da.path()).len() > 3,
            "case {case}: the segments rolled"
        );
        assert_eq!(read_all(&mut a), recs);
        let (mut b, _) = Journal::open(db.path(), opts(seg, FsyncPolicy::Never)).unwrap();
        append_all(&mut b, &recs);
        drop((a, b));
        let (sa, sb) = (
            inspect::summarize(da.path()).unwrap(),
            inspect::summarize(db.path()).unwrap(),
        );
        assert_eq!((sa.records, sa.gaps), (700, 0));
        assert_eq!(sa.digest, sb.digest, "case {case}");
        // Every sealed segment stays within its size unless it holds a single frame.
        for f in segment_files(da.path()) {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(
                len <= seg || len > journal::BATCH_MAX_BYTES as u64,
                "{}: {len} bytes",
                f.display()
            );
        }
        let (mut a, rec) = Journal::open(da.path(), opts(seg, FsyncPolicy::Never)).unwrap();
        assert!(rec.is_clean(), "{rec}");
        assert_eq!(read_all(&mut a), recs);
    }
}

/// A record over the payload limit is refused by `push` (nothing of it appended), `finish`
/// reports it, the records pushed before it are kept, and the journal stays usable; a writer
/// dropped without `finish` keeps its records too; an empty writer appends nothing.
#[test]
fn batch_writer_refuses_oversized_records_and_keeps_what_it_took() {
    let d = tempfile::tempdir().unwrap();
    let mut o = opts(1 << 20, FsyncPolicy::Never);
    o.max_payload = 100;
    let (mut j, _) = Journal::open(d.path(), o.clone()).unwrap();
    assert_eq!(j.batch_writer().unwrap().finish().unwrap(), 0);
    let mut w = j.batch_writer().unwrap();
    assert!(w.push(2, &[1; 10]));
    assert!(w.push(2, &[2; 92]));
    assert!(!w.push(2, &[3; 93]), "payload + 8 over the limit of 100");
    assert!(!w.push(2, &[4; 1]), "refused after an error");
    let e = w.finish().unwrap_err();
    assert!(
        matches!(
            e,
            journal::Error::TooLarge {
                seq: 3,
                len: 93,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(j.last_seq(), 2);
    let mut w = j.batch_writer().unwrap();
    assert!(w.push(5, b"dropped, not lost"));
    drop(w);
    assert_eq!(j.last_seq(), 3);
    assert_eq!(j.append_next(5, b"after").unwrap(), 4);
    j.commit().unwrap();
    let got: Vec<(u64, u32, Vec<u8>)> = read_all(&mut j)
        .into_iter()
        .map(|r| (r.seq, r.stream, r.payload))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, 2, vec![1; 10]),
            (2, 2, vec![2; 92]),
            (3, 5, b"dropped, not lost".to_vec()),
            (4, 5, b"after".to_vec()),
        ]
    );
    drop(j);
    let (_, rec) = Journal::open(d.path(), o).unwrap();
    assert!(rec.is_clean(), "{rec}");
}
