//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use journal::{FsyncPolicy, Journal, JournalOptions, Record};

/// A small deterministic generator (splitmix64), so every failure is reproducible from its seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64().to_le_bytes()[0]).collect()
    }
}

pub fn opts(segment_bytes: u64, fsync: FsyncPolicy) -> JournalOptions {
    JournalOptions {
        fsync,
        segment_bytes,
        ..JournalOptions::default()
    }
}

/// Records with seq `from..from+n`, random streams and sizes up to `max_len`.
pub fn gen_records(rng: &mut Rng, from: u64, n: u64, max_len: u64) -> Vec<Record> {
    (from..from + n)
        .map(|seq| {
            let len = usize::try_from(rng.below(max_len + 1)).unwrap();
            Record {
                seq,
                stream: u32::try_from(rng.below(4)).unwrap(),
                payload: rng.bytes(len),
            }
        })
        .collect()
}

pub fn append_all(j: &mut Journal, recs: &[Record]) {
    for r in recs {
        j.append(r.stream, r.seq, &r.payload).unwrap();
    }
    j.commit().unwrap();
}

pub fn read_all(j: &mut Journal) -> Vec<Record> {
    let first = j.first_seq();
    j.read_from(first)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}
