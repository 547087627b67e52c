//! Record framing inside the data area (pure functions, property-tested).
//!
//! ```text
//! offset 0  u32  word: bit 31 COMMITTED, bit 30 PAD, bits 0..30 total length in bytes
//! offset 4  u32  payload length
//! offset 8  u64  ring_seq
//! offset 16 ..   payload, then zero padding to a multiple of 8
//! ```
//! A PAD record (written when a record would not fit before the end of the data area) has only
//! the word; the consumer skips it and continues at offset 0.

/// Bytes of record header before the payload.
pub const RECORD_HEADER_LEN: usize = 16;
/// The record is completely written.
pub const COMMITTED: u32 = 1 << 31;
/// The record is padding up to the end of the data area.
pub const PAD: u32 = 1 << 30;
/// Mask of the total length in the word.
pub const LEN_MASK: u32 = PAD - 1;

/// Total bytes a payload of `len` bytes occupies in the ring (header, payload, alignment).
pub fn total_len(len: usize) -> usize {
    (RECORD_HEADER_LEN + len + 7) & !7
}

/// The part of the record header after the word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub len: u32,
}

impl RecordHeader {
    /// Write `len` and `seq` into `rec[4..16]` (the word is published separately).
    pub fn encode_tail(&self, rec: &mut [u8]) {
        rec[4..8].copy_from_slice(&self.len.to_le_bytes());
        rec[8..16].copy_from_slice(&self.seq.to_le_bytes());
    }

    /// Read the header of a record whose word says it occupies `rec.len()` bytes; checks that the
    /// payload fits. Inlined into the consumer's poll; the error text is built out of line.
    #[inline]
    pub fn decode(rec: &[u8]) -> Result<Self, String> {
        if let Some(h) = rec.get(..RECORD_HEADER_LEN) {
            let len = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
            if total_len(len as usize) == rec.len() {
                return Ok(Self { seq, len });
            }
        }
        Err(decode_error(rec))
    }
}

#[cold]
#[inline(never)]
fn decode_error(rec: &[u8]) -> String {
    if rec.len() < RECORD_HEADER_LEN {
        return format!("record of {} bytes is shorter than its header", rec.len());
    }
    let len = u32::from_le_bytes(rec[4..8].try_into().expect("4 bytes"));
    format!(
        "payload length {len} does not match record length {}",
        rec.len()
    )
}
