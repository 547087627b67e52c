//! Model-based test: random sequences of journal operations (append, raw append, commit,
//! sync, retention, reset, reopen, reads, summaries) checked after every step against a plain
//! in-memory model of what the journal must hold.

use journal::{inspect, FsyncPolicy, Journal, JournalOptions, Record};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append records with these (stream, payload length) pairs.
    Append(Vec<(u32, usize)>),
    /// Append the same records as raw frames built by a scratch journal.
    AppendRaw(Vec<(u32, usize)>),
    Commit,
    Sync,
    /// `truncate_before(first + k)`.
    Truncate(u64),
    /// `reset(last + 1 + k)`.
    Reset(u64),
    Reopen,
    /// `read_from(first + k)` and compare.
    Read(u64),
    Summarize,
}

fn op() -> impl Strategy<Value = Op> {
    let recs = proptest::collection::vec((0u32..4, 0usize..300), 1..12);
    prop_oneof![
        4 => recs.clone().prop_map(Op::Append),
        2 => recs.prop_map(Op::AppendRaw),
        2 => Just(Op::Commit),
        1 => Just(Op::Sync),
        1 => (0u64..60).prop_map(Op::Truncate),
        1 => (0u64..5).prop_map(Op::Reset),
        1 => Just(Op::Reopen),
        2 => (0u64..80).prop_map(Op::Read),
        1 => Just(Op::Summarize),
    ]
}

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| u8::try_from((seq.wrapping_mul(7) + i as u64) % 251).unwrap())
        .collect()
}

struct Model {
    first: u64,
    recs: Vec<Record>,
}

impl Model {
    fn last(&self) -> u64 {
        self.first + self.recs.len() as u64 - 1
    }
    fn from(&self, seq: u64) -> &[Record] {
        let i = usize::try_from(seq.saturating_sub(self.first)).unwrap();
        &self.recs[i.min(self.recs.len())..]
    }
}

fn options(policy: u8) -> JournalOptions {
    JournalOptions {
        // Policies 3..=5: the same three fsync policies, opening without verifying sealed
        // segments; 6..=11: the same six with `O_DIRECT` appends (and a write buffer small
        // enough that whole blocks are written between commits).
        verify_sealed: policy % 6 < 3,
        direct_io: policy >= 6,
        write_buffer: if policy >= 6 { 5000 } else { 1 << 20 },
        fsync: match policy % 3 {
            0 => FsyncPolicy::Never,
            1 => FsyncPolicy::Always,
            _ => FsyncPolicy::EveryN(5),
        },
        segment_bytes: 1500,
        ..JournalOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn journal_matches_its_model(ops in proptest::collection::vec(op(), 1..40), policy in 0u8..12) {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), options(policy)).unwrap();
        let mut m = Model { first: 1, recs: Vec::new() };
        let mut scratch_n = 0;
        for op in ops {
            match op {
                Op::Append(recs) => {
                    for (stream, len) in recs {
                        let seq = m.last() + 1;
                        let p = payload(seq, len);
                        j.append(stream, seq, &p).unwrap();
                        m.recs.push(Record { seq, stream, payload: p });
                    }
                }
                Op::AppendRaw(recs) => {
                    // Frames made by another journal numbered to continue this one.
                    scratch_n += 1;
                    let sdir = scratch.path().join(format!("s{scratch_n}"));
                    let o = JournalOptions { start_seq: m.last() + 1, ..options(0) };
                    let (mut s, _) = Journal::open(&sdir, o).unwrap();
                    for (stream, len) in &recs {
                        let seq = s.last_seq() + 1;
                        let p = payload(seq, *len);
                        s.append(*stream, seq, &p).unwrap();
                        m.recs.push(Record { seq, stream: *stream, payload: p });
                    }
                    let batch = s.read_raw_from(m.last() + 1 - recs.len() as u64, usize::MAX).unwrap();
                    let mut bytes = batch.bytes;
                    let mut next = batch.last_seq + 1;
                    while next <= s.last_seq() {
                        let more = s.read_raw_from(next, usize::MAX).unwrap();
                        bytes.extend_from_slice(&more.bytes);
                        next = more.last_seq + 1;
                    }
                    prop_assert_eq!(j.append_raw(&bytes).unwrap(), m.last());
                }
                Op::Commit => {
                    let d = j.commit().unwrap();
                    prop_assert!(d <= j.last_seq());
                    if policy % 3 != 2 {
                        prop_assert_eq!(d, m.last());
                    }
                }
                Op::Sync => prop_assert_eq!(j.sync().unwrap(), m.last()),
                Op::Truncate(k) => {
                    let t = j.truncate_before(m.first + k).unwrap();
                    prop_assert!(t.first_seq >= m.first);
                    prop_assert!(t.first_seq <= (m.first + k).max(m.first));
                    prop_assert!(t.first_seq <= m.last() + 1);
                    let drop_n = usize::try_from(t.first_seq - m.first).unwrap();
                    m.recs.drain(..drop_n.min(m.recs.len()));
                    m.first = t.first_seq;
                    prop_assert_eq!(j.last_seq(), m.last());
                }
                Op::Reset(k) => {
                    let next = m.last() + 1 + k;
                    j.reset(next).unwrap();
                    m = Model { first: next, recs: Vec::new() };
                }
                Op::Reopen => {
                    drop(j);
                    let (nj, rec) = Journal::open(dir.path(), options(policy)).unwrap();
                    prop_assert!(rec.is_clean(), "{}", rec);
                    prop_assert_eq!(nj.durable_seq(), nj.last_seq());
                    j = nj;
                }
                Op::Read(k) => {
                    let from = m.first + k;
                    let got: Vec<Record> = j.read_from(from).unwrap().map(Result::unwrap).collect();
                    prop_assert_eq!(&got[..], m.from(from));
                }
                Op::Summarize => {
                    if policy >= 6 {
                        // O_DIRECT: a commit that does not fsync may keep the partial last
                        // block in the buffer; `flush` writes everything.
                        j.commit().unwrap();
                        j.flush().unwrap();
                    } else {
                        j.commit().unwrap();
                    }
                    let s = inspect::summarize(dir.path()).unwrap();
                    prop_assert_eq!(s.records, m.recs.len() as u64);
                    prop_assert_eq!(s.gaps, 0);
                    prop_assert_eq!(s.first_seq, m.recs.first().map(|r| r.seq));
                    prop_assert_eq!(s.last_seq, m.recs.last().map(|r| r.seq));
                    prop_assert!(s.problems.is_empty() && s.tail.is_none());
                }
            }
            prop_assert_eq!(j.last_seq(), m.last());
            prop_assert_eq!(j.first_seq(), m.first);
        }
        drop(j);
        let (mut j, rec) = Journal::open(dir.path(), options(policy)).unwrap();
        prop_assert!(rec.is_clean());
        let all: Vec<Record> = j.read_from(m.first).unwrap().map(Result::unwrap).collect();
        prop_assert_eq!(&all[..], &m.recs[..]);
    }
}
