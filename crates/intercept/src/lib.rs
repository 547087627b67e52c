//! The interceptor's shared part: the replication message format ([`msg`]), the replay feed
//! that `understudy replay` hands to the preloaded library ([`feed`]), output digests and
//! deterministic thread names ([`vtid`]).
//!
//! The preloaded library itself is crate `intercept-preload` (`libunderstudy_intercept.so`);
//! see `docs/interceptor.md`.
#![forbid(unsafe_code)]

pub mod feed;
pub mod filter;
pub mod launch;
pub mod msg;

/// Streaming 64-bit digest of output bytes (not cryptographic: it detects a departure, it
/// does not authenticate). Processes 8 bytes per step; the value depends only on the bytes, not on
/// how they were split (`writev` and `write` of the same bytes agree). Stable: part of message
/// version 1.
#[derive(Debug, Clone, Copy)]
pub struct Digest {
    h: u64,
    buf: [u8; 8],
    fill: usize,
    len: u64,
}

const DK: u64 = 0x9E37_79B9_7F4A_7C15;

impl Default for Digest {
    fn default() -> Self {
        Self::new()
    }
}

impl Digest {
    pub const fn new() -> Self {
        Self {
            h: 0xcbf2_9ce4_8422_2325,
            buf: [0; 8],
            fill: 0,
            len: 0,
        }
    }

    #[inline]
    fn step(&mut self, v: u64) {
        self.h = (self.h ^ v).wrapping_mul(DK).rotate_left(29);
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if self.fill > 0 {
            let take = (8 - self.fill).min(data.len());
            self.buf[self.fill..self.fill + take].copy_from_slice(&data[..take]);
            self.fill += take;
            data = &data[take..];
            if self.fill < 8 {
                return;
            }
            let v = u64::from_le_bytes(self.buf);
            self.step(v);
            self.fill = 0;
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.step(v);
        }
        let rem = chunks.remainder();
        self.buf[..rem.len()].copy_from_slice(rem);
        self.fill = rem.len();
    }

    pub fn finish(mut self) -> u64 {
        self.buf[self.fill..].fill(0);
        let v = u64::from_le_bytes(self.buf);
        self.step(v);
        let h = (self.h ^ self.len).wrapping_mul(DK);
        h ^ (h >> 32)
    }
}

/// Digest of one buffer.
///
/// Same value as [`Digest`] fed the same bytes, computed in registers: the tail of fewer than 8
/// bytes is assembled with shifts instead of being copied into a buffer and reloaded as a word
/// (a store-forwarding stall that cost a recorded 1-byte `write` about 20 ns).
#[inline]
pub fn digest(data: &[u8]) -> u64 {
    const SEED: u64 = Digest::new().h;
    let step = |h: u64, v: u64| (h ^ v).wrapping_mul(DK).rotate_left(29);
    let mut h = SEED;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        h = step(
            h,
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        );
    }
    let mut v = 0u64;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        v |= u64::from(b) << (8 * i);
    }
    h = step(h, v);
    let h = (h ^ data.len() as u64).wrapping_mul(DK);
    h ^ (h >> 32)
}

#[cfg(test)]
mod digest_tests {
    use super::{digest, Digest};

    #[test]
    fn one_shot_digest_equals_streaming_digest() {
        let data: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
        for n in 0..=data.len() {
            let mut d = Digest::new();
            d.update(&data[..n / 3]);
            d.update(&data[n / 3..n]);
            assert_eq!(digest(&data[..n]), d.finish(), "length {n}");
        }
    }
}

/// Deterministic thread names ("virtual tids"): the same in record and in replay, because they
/// follow the program's own structure rather than the kernel's numbering.
pub mod vtid {
    /// The first thread of the first process.
    pub const ROOT: u64 = 1;

    fn mix(a: u64, b: u64) -> u64 {
        let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 29;
        x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 32;
        x | 2 // never ROOT, never 0
    }

    /// The `n`-th thread or process (1-based) created by `parent` with `pthread_create`/`fork`.
    pub fn child(parent: u64, n: u64) -> u64 {
        mix(parent, n)
    }

    /// The thread that continues after the `n`-th `execve` of `v`.
    pub fn exec(v: u64, n: u64) -> u64 {
        mix(v ^ 0xE8EC_0000_0000_0000, n)
    }

    /// The `n`-th process started by `parent` without a wrapped `fork` (posix_spawn, system).
    pub fn spawn(parent: u64, n: u64) -> u64 {
        mix(parent ^ 0x5EA7_0000_0000_0000, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_separates_lengths_and_content() {
        assert_ne!(digest(b""), digest(b"\0"));
        assert_ne!(digest(b"hello"), digest(b"hellp"));
        assert_ne!(digest(&[0; 8]), digest(&[0; 16]));
        assert_eq!(digest(b"abc"), digest(b"abc"));
        let data: Vec<u8> = (0..100u8).collect();
        for split in [0, 1, 7, 8, 9, 50, 99, 100] {
            let mut d = Digest::new();
            d.update(&data[..split]);
            d.update(&data[split..]);
            assert_eq!(d.finish(), digest(&data), "split at {split}");
        }
    }

    #[test]
    fn vtids_differ() {
        let a = vtid::child(vtid::ROOT, 1);
        assert_ne!(a, vtid::child(vtid::ROOT, 2));
        assert_ne!(a, vtid::exec(vtid::ROOT, 1));
        assert_ne!(a, vtid::ROOT);
    }
}
