//! The replay feed: the journal's messages laid out in one file that every process of the
//! replayed program maps (`UNDERSTUDY_FEED`), plus the shared cursor that orders their calls.
//!
//! ```text
//! off   size  field
//!   0    8    magic "USFEED01"
//!   8    4    version (1)
//!  16    8    n: number of messages
//!  24    8    index_off (4096)
//!  32    8    data_off
//!  40    8    cursor: AtomicU64, index of the next message to replay (shared by all processes)
//!  48    4    cursor_futex: AtomicU32 (bumped on every advance)
//!  52    4    waiters: AtomicU32
//!  56    4    diverged: AtomicU32 (1 once a divergence report is written)
//!  60    4    report_len
//!  64   ..    divergence report text (up to REPORT_MAX bytes)
//! 4096  n*24  index: { off: u64 (from data_off), len: u32, pad: u32, jseq: u64 (journal seq) }
//! data_off    messages (crate::msg), back to back
//! ```
//! The file is written once by `understudy replay` and never outlives the replay.

use std::io::Write;
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"USFEED01";
pub const VERSION: u32 = 1;
pub const INDEX_OFF: u64 = 4096;
pub const INDEX_ENTRY: u64 = 24;
pub const OFF_N: usize = 16;
pub const OFF_CURSOR: usize = 40;
pub const OFF_FUTEX: usize = 48;
pub const OFF_WAITERS: usize = 52;
pub const OFF_DIVERGED: usize = 56;
pub const OFF_REPORT_LEN: usize = 60;
pub const OFF_REPORT: usize = 64;
pub const REPORT_MAX: usize = 4096 - OFF_REPORT;

/// Write a feed file holding `msgs` (each with its journal seq) in order.
pub fn write(path: &Path, msgs: &[(u64, Vec<u8>)]) -> std::io::Result<()> {
    let n = msgs.len() as u64;
    let data_off = INDEX_OFF + n * INDEX_ENTRY;
    let mut hdr = vec![0u8; usize::try_from(INDEX_OFF).expect("fits")];
    hdr[0..8].copy_from_slice(&MAGIC);
    hdr[8..12].copy_from_slice(&VERSION.to_le_bytes());
    hdr[16..24].copy_from_slice(&n.to_le_bytes());
    hdr[24..32].copy_from_slice(&INDEX_OFF.to_le_bytes());
    hdr[32..40].copy_from_slice(&data_off.to_le_bytes());
    let mut index = Vec::with_capacity(msgs.len() * 24);
    let mut off = 0u64;
    for (jseq, m) in msgs {
        index.extend_from_slice(&off.to_le_bytes());
        index.extend_from_slice(
            &u32::try_from(m.len())
                .expect("message fits u32")
                .to_le_bytes(),
        );
        index.extend_from_slice(&0u32.to_le_bytes());
        index.extend_from_slice(&jseq.to_le_bytes());
        off += m.len() as u64;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    f.write_all(&hdr)?;
    f.write_all(&index)?;
    for (_, m) in msgs {
        f.write_all(m)?;
    }
    // Round the file up so the preloaded library can map whole pages.
    let total = data_off + off;
    let pad = (4096 - total % 4096) % 4096;
    f.write_all(&vec![0u8; usize::try_from(pad).expect("fits")])?;
    f.flush()
}

/// State of a feed after (or during) a replay, read with ordinary file reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedState {
    pub n: u64,
    pub cursor: u64,
    pub report: Option<String>,
}

/// Read the cursor and the divergence report, if any.
pub fn state(path: &Path) -> std::io::Result<FeedState> {
    use std::io::Read;
    let mut b = vec![0u8; 4096];
    std::fs::File::open(path)?.read_exact(&mut b)?;
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let report = (u32_at(OFF_DIVERGED) != 0).then(|| {
        let len = (u32_at(OFF_REPORT_LEN) as usize).min(REPORT_MAX);
        String::from_utf8_lossy(&b[OFF_REPORT..OFF_REPORT + len]).into_owned()
    });
    Ok(FeedState {
        n: u64_at(OFF_N),
        cursor: u64_at(OFF_CURSOR),
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_state() {
        let d = std::env::temp_dir().join(format!("feedtest-{}", std::process::id()));
        write(&d, &[(2, vec![1, 2, 3]), (3, vec![4])]).unwrap();
        let s = state(&d).unwrap();
        assert_eq!(
            s,
            FeedState {
                n: 2,
                cursor: 0,
                report: None
            }
        );
        assert_eq!(std::fs::metadata(&d).unwrap().len() % 4096, 0);
        std::fs::remove_file(&d).unwrap();
    }
}
