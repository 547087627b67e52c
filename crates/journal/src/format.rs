//! The on-disk format of a journal: segment headers and record frames.
//!
//! Everything here is pure encoding and decoding over byte slices, with no I/O, so the same
//! code validates records read from disk, records shipped over the wire as raw frames
//! ([`crate::Journal::read_raw_from`]) and records handed to [`crate::Journal::append_raw`].
//! All integers are little-endian. See `docs/journal-format.md` for the layout and the
//! version rules.

use std::fmt;

use serde::Serialize;

/// The first eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"USTJRNL\0";
/// The segment format version this crate writes. Readers accept this version and
/// [`MIN_FORMAT_VERSION`]; any other version with a valid header checksum is refused (never cut
/// as a torn tail). Version 2 added batch frames ([`FLAG_BATCH`]).
pub const FORMAT_VERSION: u16 = 2;
/// The oldest segment format version this crate reads (version 1: single-record frames only).
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Record frame flag (version 2): the frame holds a batch of consecutive records. Its `seq`
/// field is the first record's seq, its `stream` field the record count (at least 1), and its
/// payload the records as `(stream:u32 len:u32 payload)*`, covered by the frame's one CRC32C.
pub const FLAG_BATCH: u32 = 1;
/// Per-record overhead inside a batch frame (`stream:u32 len:u32`).
pub const BATCH_RECORD_OVERHEAD: usize = 8;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_LEN: usize = 56;
/// Size of a record frame header in bytes (the payload follows it).
pub const RECORD_HEADER_LEN: usize = 24;
/// Hard upper bound on a record payload. A length field above this is corruption, so a
/// damaged length can never make a reader allocate more than this.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// File-name suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".seg";

/// Why a segment header or a record frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Corruption {
    /// The file ends inside the segment header.
    ShortHeader {
        /// Bytes the file has.
        len: u64,
    },
    /// The segment header does not start with [`SEGMENT_MAGIC`].
    BadMagic,
    /// The segment header checksum does not match.
    HeaderChecksum,
    /// The segment header has a valid checksum but a version this build does not read.
    UnsupportedVersion {
        /// The version found.
        version: u16,
    },
    /// The segment header declares a length other than [`SEGMENT_HEADER_LEN`].
    BadHeaderLength {
        /// The length found.
        len: u16,
    },
    /// The file name says one first sequence number, the header another.
    NameMismatch {
        /// From the file name.
        name_seq: u64,
        /// From the header.
        header_seq: u64,
    },
    /// The segment belongs to another journal (its journal id differs).
    ForeignSegment {
        /// The journal id of the earlier segments.
        expected: u64,
        /// This segment's journal id.
        found: u64,
    },
    /// Segment indices must increase by one from segment to segment.
    IndexMismatch {
        /// Previous index + 1.
        expected: u64,
        /// This segment's index.
        found: u64,
    },
    /// The file ends inside a record frame header.
    ShortRecordHeader {
        /// Bytes left in the file.
        have: u64,
    },
    /// The length field is larger than [`MAX_PAYLOAD`].
    LengthTooLarge {
        /// The length found.
        len: u32,
    },
    /// The file ends inside the record payload.
    ShortPayload {
        /// The declared payload length.
        len: u32,
        /// Bytes left in the file after the frame header.
        have: u64,
    },
    /// Reserved header bits (segment or record) are set.
    ReservedBits {
        /// The bits found.
        flags: u32,
    },
    /// The record checksum does not match.
    RecordChecksum,
    /// A batch frame whose checksum is valid but whose records do not fill its payload exactly.
    BadBatch {
        /// The record count the header declares.
        count: u32,
        /// The payload length.
        len: u32,
    },
    /// A well-formed record carries an unexpected sequence number.
    SeqMismatch {
        /// The seq that had to come next.
        expected: u64,
        /// The seq found.
        found: u64,
    },
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortHeader { len } => write!(
                f,
                "file of {len} bytes ends inside the {SEGMENT_HEADER_LEN}-byte segment header"
            ),
            Self::BadMagic => write!(f, "segment header has a bad magic"),
            Self::HeaderChecksum => write!(f, "segment header checksum mismatch"),
            Self::UnsupportedVersion { version } => write!(
                f,
                "segment format version {version} is not supported (this build reads {MIN_FORMAT_VERSION} to {FORMAT_VERSION})"
            ),
            Self::BadHeaderLength { len } => write!(f, "segment header length {len} is not {SEGMENT_HEADER_LEN}"),
            Self::NameMismatch { name_seq, header_seq } => write!(
                f,
                "file name says first seq {name_seq} but the header says {header_seq}"
            ),
            Self::ForeignSegment { expected, found } => write!(
                f,
                "segment belongs to journal {found:016x}, not {expected:016x}"
            ),
            Self::IndexMismatch { expected, found } => {
                write!(f, "segment index {found}, expected {expected}")
            }
            Self::ShortRecordHeader { have } => write!(
                f,
                "only {have} bytes left for a {RECORD_HEADER_LEN}-byte record header (torn write)"
            ),
            Self::LengthTooLarge { len } => {
                write!(f, "record length {len} exceeds the limit of {MAX_PAYLOAD} bytes")
            }
            Self::ShortPayload { len, have } => write!(
                f,
                "record payload of {len} bytes but only {have} bytes left (torn write)"
            ),
            Self::ReservedBits { flags } => write!(f, "reserved flags {flags:#x} are set"),
            Self::RecordChecksum => write!(f, "record checksum mismatch"),
            Self::BadBatch { count, len } => write!(
                f,
                "batch frame of {count} records does not fill its {len}-byte payload exactly"
            ),
            Self::SeqMismatch { expected, found } => {
                write!(f, "record has seq {found}, expected {expected}")
            }
        }
    }
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SegmentHeader {
    /// Sequence number of the first record the segment holds (or would hold, when empty).
    pub first_seq: u64,
    /// Position of the segment in the journal: 0 for the first segment ever written, then +1.
    pub index: u64,
    /// Random identity of the journal, shared by all its segments.
    pub journal_id: u64,
    /// Incremented by every `Journal::reset`; all live segments share it.
    pub epoch: u64,
}

impl SegmentHeader {
    /// Encode the header into its fixed-size on-disk form.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        // The header length always fits in u16 (it is a small constant).
        let hl = u16::try_from(SEGMENT_HEADER_LEN).unwrap_or(u16::MAX);
        b[10..12].copy_from_slice(&hl.to_le_bytes());
        // 12..16: flags, zero (no segment flags are defined).
        b[16..24].copy_from_slice(&self.first_seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.index.to_le_bytes());
        b[32..40].copy_from_slice(&self.journal_id.to_le_bytes());
        b[40..48].copy_from_slice(&self.epoch.to_le_bytes());
        let crc = crc32c::crc32c(&b[0..48]);
        b[48..52].copy_from_slice(&crc.to_le_bytes());
        // 52..56: reserved, zero.
        b
    }

    /// Decode and validate a segment header from the start of a segment file.
    pub fn decode(b: &[u8]) -> Result<Self, Corruption> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(Corruption::ShortHeader {
                len: b.len() as u64,
            });
        }
        if b[0..8] != SEGMENT_MAGIC {
            return Err(Corruption::BadMagic);
        }
        if crc32c::crc32c(&b[0..48]) != le_u32(&b[48..52]) {
            return Err(Corruption::HeaderChecksum);
        }
        let version = le_u16(&b[8..10]);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Corruption::UnsupportedVersion { version });
        }
        let len = le_u16(&b[10..12]);
        if usize::from(len) != SEGMENT_HEADER_LEN {
            return Err(Corruption::BadHeaderLength { len });
        }
        // Flags (covered by the checksum) and the trailing reserved word (not covered) must be
        // zero (no segment flags are defined in versions 1 and 2).
        let flags = le_u32(&b[12..16]) | le_u32(&b[52..56]);
        if flags != 0 {
            return Err(Corruption::ReservedBits { flags });
        }
        Ok(Self {
            first_seq: le_u64(&b[16..24]),
            index: le_u64(&b[24..32]),
            journal_id: le_u64(&b[32..40]),
            epoch: le_u64(&b[40..48]),
        })
    }
}

/// The fixed header in front of every record payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Payload length in bytes.
    pub len: u32,
    /// Stream the record belongs to (opaque to the journal).
    pub stream: u32,
    /// Sequence number.
    pub seq: u64,
    /// Stored checksum.
    pub crc: u32,
    /// Flags: 0, or [`FLAG_BATCH`].
    pub flags: u32,
}

/// Records `(stream, payload)` of a batch payload, `(stream:u32 len:u32 payload)*`; ends at the
/// first record that does not fit.
#[derive(Debug, Clone)]
pub struct BatchRecords<'a> {
    b: &'a [u8],
}

impl<'a> Iterator for BatchRecords<'a> {
    type Item = (u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.b.get(..BATCH_RECORD_OVERHEAD)?;
        let stream = le_u32(&h[0..4]);
        let len = usize::try_from(le_u32(&h[4..8])).unwrap_or(usize::MAX);
        let end = BATCH_RECORD_OVERHEAD.checked_add(len)?;
        let p = self.b.get(BATCH_RECORD_OVERHEAD..end)?;
        self.b = &self.b[end..];
        Some((stream, p))
    }
}

/// The number of records of a batch encoding if they fill it exactly (`None` if the last
/// one runs past the end, or for more than `u32::MAX` records).
pub fn batch_count(encoded: &[u8]) -> Option<u32> {
    let mut it = BatchRecords { b: encoded };
    let mut n = 0u32;
    while it.next().is_some() {
        n = n.checked_add(1)?;
    }
    it.b.is_empty().then_some(n)
}

/// Records `(seq, stream, payload)` of one frame (see [`RecordHeader::records`]).
#[derive(Debug, Clone)]
pub struct FrameRecords<'a> {
    single: Option<(u32, &'a [u8])>,
    batch: BatchRecords<'a>,
    seq: u64,
}

impl<'a> Iterator for FrameRecords<'a> {
    type Item = (u64, u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let (stream, p) = match self.single.take() {
            Some(r) => r,
            None => self.batch.next()?,
        };
        let seq = self.seq;
        self.seq += 1;
        Some((seq, stream, p))
    }
}

impl RecordHeader {
    /// Parse a record header. Checks the length bound and the reserved bits; the checksum is
    /// checked by [`RecordHeader::verify`] once the payload is at hand.
    pub fn decode(b: &[u8]) -> Result<Self, Corruption> {
        if b.len() < RECORD_HEADER_LEN {
            return Err(Corruption::ShortRecordHeader {
                have: b.len() as u64,
            });
        }
        let len = le_u32(&b[4..8]);
        if len > MAX_PAYLOAD {
            return Err(Corruption::LengthTooLarge { len });
        }
        let flags = le_u32(&b[12..16]);
        if flags & !FLAG_BATCH != 0 {
            return Err(Corruption::ReservedBits { flags });
        }
        let stream = le_u32(&b[8..12]);
        if flags == FLAG_BATCH
            && (stream == 0 || u64::from(stream) * BATCH_RECORD_OVERHEAD as u64 > u64::from(len))
        {
            return Err(Corruption::BadBatch { count: stream, len });
        }
        Ok(Self {
            len,
            stream,
            seq: le_u64(&b[16..24]),
            crc: le_u32(&b[0..4]),
            flags,
        })
    }

    /// Whether the frame is a batch ([`FLAG_BATCH`]).
    pub fn is_batch(&self) -> bool {
        self.flags & FLAG_BATCH != 0
    }

    /// Number of records the frame holds (1, or a batch's count).
    pub fn count(&self) -> u64 {
        if self.is_batch() {
            u64::from(self.stream)
        } else {
            1
        }
    }

    /// Seq of the last record the frame holds.
    pub fn last_seq(&self) -> u64 {
        self.seq + self.count() - 1
    }

    /// Check a batch frame's payload layout (after its checksum): its records fill it exactly.
    pub fn check_layout(&self, payload: &[u8]) -> Result<(), Corruption> {
        if !self.is_batch() {
            return Ok(());
        }
        let mut n = 0u64;
        let mut it = BatchRecords { b: payload };
        while it.next().is_some() {
            n += 1;
        }
        if n == self.count() && it.b.is_empty() {
            Ok(())
        } else {
            Err(Corruption::BadBatch {
                count: self.stream,
                len: self.len,
            })
        }
    }

    /// The records of a frame whose checksum and layout were checked: `(seq, stream, payload)`.
    pub fn records<'a>(&self, payload: &'a [u8]) -> FrameRecords<'a> {
        FrameRecords {
            single: (!self.is_batch()).then_some((self.stream, payload)),
            batch: BatchRecords {
                b: if self.is_batch() { payload } else { &[] },
            },
            seq: self.seq,
        }
    }

    /// Check the stored checksum against the header bytes and the payload.
    pub fn verify(&self, header: &[u8], payload: &[u8]) -> Result<(), Corruption> {
        let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..RECORD_HEADER_LEN]), payload);
        if crc == self.crc {
            self.check_layout(payload)
        } else {
            Err(Corruption::RecordChecksum)
        }
    }

    /// Total frame size (header plus payload).
    pub fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

/// Append one framed record to `out`. The caller has checked `payload.len() <= MAX_PAYLOAD`.
pub fn encode_record(out: &mut Vec<u8>, seq: u64, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    // 0..4: crc, filled in below; 12..16: flags, zero for a single-record frame.
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&stream.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let start = out.len();
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    // One pass over the contiguous bytes after the checksum field.
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Append one batch frame holding records `first_seq, first_seq + 1, ...` given in their batch
/// encoding `(stream:u32 len:u32 payload)*` (`count` of them). The caller has checked the
/// encoding, `count >= 1` and `encoded.len() <= MAX_PAYLOAD`.
pub fn encode_batch(out: &mut Vec<u8>, first_seq: u64, count: u32, encoded: &[u8]) {
    out.reserve(RECORD_HEADER_LEN + encoded.len());
    out.extend_from_slice(&batch_header(first_seq, count, encoded));
    out.extend_from_slice(encoded);
}

/// The header of the batch frame [`encode_batch`] writes (CRC32C over the rest of the header
/// and `encoded` included), for a writer that sends the header and `encoded` from where they
/// are. Same preconditions as [`encode_batch`].
pub fn batch_header(first_seq: u64, count: u32, encoded: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    let len = u32::try_from(encoded.len()).unwrap_or(u32::MAX);
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[4..8].copy_from_slice(&len.to_le_bytes());
    h[8..12].copy_from_slice(&count.to_le_bytes());
    h[12..16].copy_from_slice(&FLAG_BATCH.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[4..]), encoded);
    h[0..4].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A record decoded from a contiguous buffer of frames, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// Sequence number (of the first record, for a batch).
    pub seq: u64,
    /// Stream id (the record count, for a batch).
    pub stream: u32,
    /// Payload bytes (the encoded records, for a batch).
    pub payload: &'a [u8],
    /// Records the frame holds (1, or a batch's count).
    pub count: u64,
    /// Frame flags (0 or [`FLAG_BATCH`]).
    pub flags: u32,
}

impl<'a> FrameRef<'a> {
    /// Seq of the last record of the frame.
    pub fn last_seq(&self) -> u64 {
        self.seq + self.count - 1
    }

    /// The records of the frame, `(seq, stream, payload)`.
    pub fn records(&self) -> FrameRecords<'a> {
        let h = RecordHeader {
            len: 0,
            stream: self.stream,
            seq: self.seq,
            crc: 0,
            flags: self.flags,
        };
        h.records(self.payload)
    }
}

/// Decode the first frame of `buf`, returning it and its total length in bytes.
///
/// Used on raw frame batches ([`crate::RawBatch`]); never allocates.
pub fn decode_frame(buf: &[u8]) -> Result<(FrameRef<'_>, usize), Corruption> {
    let h = RecordHeader::decode(buf)?;
    let have = buf.len() - RECORD_HEADER_LEN;
    let len = usize::try_from(h.len).unwrap_or(usize::MAX);
    if have < len {
        return Err(Corruption::ShortPayload {
            len: h.len,
            have: have as u64,
        });
    }
    let payload = &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    // Header and payload are contiguous here: one CRC pass over the frame after the field.
    if crc32c::crc32c(&buf[4..RECORD_HEADER_LEN + len]) != h.crc {
        return Err(Corruption::RecordChecksum);
    }
    h.check_layout(payload)?;
    Ok((
        FrameRef {
            seq: h.seq,
            stream: h.stream,
            payload,
            count: h.count(),
            flags: h.flags,
        },
        RECORD_HEADER_LEN + len,
    ))
}

/// Iterate over the frames of a contiguous buffer, stopping at the first invalid one
/// (which is returned as an error item; iteration then ends).
pub fn frames(buf: &[u8]) -> Frames<'_> {
    Frames { buf, failed: false }
}

/// Iterator returned by [`frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<FrameRef<'a>, Corruption>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        match decode_frame(self.buf) {
            Ok((f, n)) => {
                self.buf = &self.buf[n..];
                Some(Ok(f))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The file name of the segment whose first record has sequence number `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:020}{SEGMENT_SUFFIX}")
}

/// Parse a segment file name back into its first sequence number.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn le_u16(b: &[u8]) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[..2]);
    u16::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = SegmentHeader {
            first_seq: 42,
            index: 3,
            journal_id: 0xdead_beef_0123_4567,
            epoch: 2,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        let mut b = h.encode();
        b[20] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(Corruption::HeaderChecksum));
        assert_eq!(
            SegmentHeader::decode(&b[..10]),
            Err(Corruption::ShortHeader { len: 10 })
        );
    }

    #[test]
    fn frame_round_trip_and_every_bit_flip_is_caught() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 3, b"hello world");
        let (f, n) = decode_frame(&buf).unwrap();
        assert_eq!(
            (f.seq, f.stream, f.payload, n),
            (7, 3, &b"hello world"[..], buf.len())
        );
        for bit in 0..buf.len() * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_frame(&b).is_err(), "flip of bit {bit} not detected");
        }
    }

    #[test]
    fn huge_length_is_refused_without_allocating() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 1, 0, b"x");
        buf[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_frame(&buf).unwrap_err(),
            Corruption::LengthTooLarge { len: u32::MAX }
        );
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_file_name("00000000000000000001.seg"), Some(1));
        assert_eq!(parse_segment_file_name("1.seg"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000001.seg.tmp"),
            None
        );
    }
}
