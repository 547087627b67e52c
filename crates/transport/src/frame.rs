//! Frames: the unit of the encrypted byte stream between two agents.
//!
//! ```text
//! frame   = len:u32le  crc:u32le  body[len]
//! body    = type:u8 fields...            (1 <= len <= MAX_FRAME)
//! crc     = crc32c(body) in version 3; 0 from version 4 on
//! ```
//! From version 4 on the frame checksum is 0 and not computed: every frame travels inside an
//! AES-256-GCM sealed record whose tag authenticates every byte of it (a CRC under the AEAD
//! would only repeat that check, at the cost of two passes over every replicated byte).
//! Integers are little-endian; strings are `u16 len` + UTF-8 (at most [`MAX_STRING`] bytes).
//! The decoder never trusts a length before checking it against the bytes at hand and the caps,
//! so a garbage stream costs at most one capped buffer and yields a typed error.

use crate::{PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// Largest frame body accepted (type byte included).
pub const MAX_FRAME: usize = 8 << 20;
/// Largest string field accepted.
pub const MAX_STRING: usize = 4096;
/// Size of the frame header (`len` + `crc`).
pub const HEADER_LEN: usize = 8;
/// Per-record overhead inside a `Data` frame (`stream:u32` + `len:u32`).
pub const RECORD_OVERHEAD: usize = 8;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_REFUSE: u8 = 3;
const T_DATA: u8 = 4;
const T_ACK: u8 = 5;
const T_HEARTBEAT: u8 = 6;
const T_GOODBYE: u8 = 7;

/// Why a frame could not be decoded. Every one of these ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {len} exceeds the cap of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame length 0 (a frame holds at least its type byte)")]
    Empty,
    #[error("frame checksum mismatch: header says {expected:08x}, body has {actual:08x}")]
    Checksum { expected: u32, actual: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("frame type {kind}: body ends inside field `{field}`")]
    Truncated {
        kind: &'static str,
        field: &'static str,
    },
    #[error("frame type {kind}: {extra} unexpected bytes after the last field")]
    Trailing { kind: &'static str, extra: usize },
    #[error("frame type {kind}: field `{field}` {why}")]
    Invalid {
        kind: &'static str,
        field: &'static str,
        why: String,
    },
    #[error("protocol version {0} has no frame codec")]
    Version(u16),
}

/// Why a peer refused a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseCode {
    /// The backup's watermark is older than the first record the primary still holds.
    TooFarBehind,
    /// The backup holds records the primary does not (different history).
    Diverged,
    /// The request was malformed or out of order.
    BadRequest,
    /// The backup could not open or write the application's journal.
    Internal,
    /// A code from a newer peer.
    Other(u16),
}

impl RefuseCode {
    fn to_u16(self) -> u16 {
        match self {
            Self::TooFarBehind => 1,
            Self::Diverged => 2,
            Self::BadRequest => 3,
            Self::Internal => 4,
            Self::Other(c) => c,
        }
    }
    fn from_u16(c: u16) -> Self {
        match c {
            1 => Self::TooFarBehind,
            2 => Self::Diverged,
            3 => Self::BadRequest,
            4 => Self::Internal,
            c => Self::Other(c),
        }
    }
}

/// The records of a `Data` frame, `(stream, payload)` in seq order (record `i` has seq
/// `first_seq + i`). Held in their wire encoding (`(stream:u32 len:u32 payload)*`), validated
/// once when decoded and parsed on the fly by [`DataBatch::iter`]: one buffer per frame and no
/// per-record work besides reading two integers. A batch decoded by a
/// [`crate::SecureReader`] may hold the reader's whole receive buffer (the records are a range
/// of it, no copy); give it back with [`BufferPool::put`] once done.
#[derive(Debug, Clone, Default)]
pub struct DataBatch {
    bytes: Vec<u8>,
    /// The records are `bytes[start..end]`.
    start: usize,
    end: usize,
    count: usize,
}

impl PartialEq for DataBatch {
    fn eq(&self, other: &Self) -> bool {
        self.count == other.count && self.encoded() == other.encoded()
    }
}

impl Eq for DataBatch {}

impl DataBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a record.
    ///
    /// # Panics
    /// If the payload is 4 GiB or more (frames are capped far below that).
    pub fn push(&mut self, stream: u32, payload: &[u8]) {
        if self.start != 0 || self.end != self.bytes.len() {
            self.bytes = self.encoded().to_vec();
            self.start = 0;
        }
        push_record(&mut self.bytes, stream, payload);
        self.end = self.bytes.len();
        self.count += 1;
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The records in their wire encoding, `(stream:u32 len:u32 payload)*`.
    pub fn encoded(&self) -> &[u8] {
        &self.bytes[self.start..self.end]
    }

    /// Payload bytes of every record (the encoding minus the per-record headers).
    pub fn payload_bytes(&self) -> usize {
        (self.end - self.start) - self.count * RECORD_OVERHEAD
    }

    /// Fill in a batch from [`decode_at`]: its records are `buf[start..end]`, which the batch
    /// now owns (`buf` must be the buffer `decode_at` read them from).
    pub(crate) fn resolve(&mut self, buf: Vec<u8>) {
        debug_assert!(self.end <= buf.len());
        self.bytes = buf;
    }

    /// Copy the records out of `buf` (the buffer [`decode_at`] read them from).
    pub(crate) fn resolve_copy(&mut self, buf: &[u8]) {
        self.bytes = buf[self.start..self.end].to_vec();
        self.end -= self.start;
        self.start = 0;
    }

    /// The records in order.
    pub fn iter(&self) -> RecordsIter<'_> {
        records(self.encoded())
    }
}

/// Receive buffers handed back by the user of a [`crate::SecureReader`] (see [`DataBatch`]),
/// so that the reader does not allocate, and page-fault in, a fresh buffer per data frame.
/// Holds buffers of at most [`BufferPool::MAX_BYTES`] of capacity in all (as many as a
/// backup's queue of received frames holds at full speed); clones share the pool.
#[derive(Debug, Clone, Default)]
pub struct BufferPool(std::sync::Arc<std::sync::Mutex<(Vec<Vec<u8>>, usize)>>);

impl BufferPool {
    /// Capacity kept at most, over all buffers.
    pub const MAX_BYTES: usize = 16 << 20;

    /// Give back the buffer of a batch that is no longer needed.
    pub fn put(&self, batch: DataBatch) {
        let mut b = batch.bytes;
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if b.capacity() == 0 || pool.1 + b.capacity() > Self::MAX_BYTES {
            return;
        }
        b.clear();
        pool.1 += b.capacity();
        pool.0.push(b);
    }

    /// A buffer from the pool, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        let mut pool = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let b = pool.0.pop()?;
        pool.1 -= b.capacity();
        Some(b)
    }
}

/// Append one record in its `Data` encoding (`stream:u32 len:u32 payload`) to `out`.
///
/// # Panics
/// If the payload is 4 GiB or more.
pub fn push_record(out: &mut Vec<u8>, stream: u32, payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("payload under 4 GiB");
    let mut h = [0u8; RECORD_OVERHEAD];
    h[..4].copy_from_slice(&stream.to_le_bytes());
    h[4..].copy_from_slice(&len.to_le_bytes());
    out.reserve(RECORD_OVERHEAD + payload.len());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
}

/// Bytes taken by the first `count` records encoded at the start of `b`, or `None` when they
/// do not all fit in it.
fn records_len(b: &[u8], count: usize) -> Option<usize> {
    let mut off = 0usize;
    for _ in 0..count {
        let len = b.get(off + 4..off + RECORD_OVERHEAD)?;
        let len = u32::from_le_bytes(len.try_into().ok()?);
        off = off
            .checked_add(RECORD_OVERHEAD)?
            .checked_add(usize::try_from(len).ok()?)?;
    }
    (off <= b.len()).then_some(off)
}

/// Iterate over records encoded as `(stream:u32 len:u32 payload)*`. Stops at the end of the
/// buffer or at the first record that does not fit in it (a [`DataBatch`] was validated when
/// decoded, so for it that never happens).
pub fn records(encoded: &[u8]) -> RecordsIter<'_> {
    RecordsIter { b: encoded }
}

/// Iterator returned by [`records`] and [`DataBatch::iter`].
#[derive(Debug, Clone)]
pub struct RecordsIter<'a> {
    b: &'a [u8],
}

impl<'a> Iterator for RecordsIter<'a> {
    type Item = (u32, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.b.get(..RECORD_OVERHEAD)?;
        let stream = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
        let len = usize::try_from(u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")))
            .unwrap_or(usize::MAX);
        let end = RECORD_OVERHEAD.checked_add(len)?;
        let payload = self.b.get(RECORD_OVERHEAD..end)?;
        self.b = &self.b[end..];
        Some((stream, payload))
    }
}

impl<'a> FromIterator<(u32, &'a [u8])> for DataBatch {
    fn from_iter<I: IntoIterator<Item = (u32, &'a [u8])>>(iter: I) -> Self {
        let mut b = DataBatch::new();
        for (stream, p) in iter {
            b.push(stream, p);
        }
        b
    }
}

/// A protocol frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Primary → backup, first frame: which application's stream this is and what the
    /// primary's journal holds.
    Hello {
        app: String,
        first_seq: u64,
        last_seq: u64,
        sync: bool,
    },
    /// Backup → primary: the backup's durable watermark for this application; the primary
    /// sends from `durable_seq + 1`.
    Welcome {
        durable_seq: u64,
        journaled_bytes: u64,
    },
    /// Either side: the stream cannot go on, and why.
    Refuse { code: RefuseCode, message: String },
    /// Primary → backup: records `first_seq, first_seq + 1, ...` in order.
    Data { first_seq: u64, records: DataBatch },
    /// Backup → primary: every record up to `durable_seq` is durable in the backup's journal.
    /// `journaled_bytes` (payload bytes) exists from version 2 on; version 1 peers send 0.
    Ack {
        durable_seq: u64,
        journaled_bytes: u64,
    },
    /// Either side, when it has sent nothing for a heartbeat interval.
    Heartbeat { sent_unix_nanos: u64 },
    /// Either side: orderly close.
    Goodbye { reason: String },
}

impl Frame {
    /// Short name, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::Welcome { .. } => "welcome",
            Frame::Refuse { .. } => "refuse",
            Frame::Data { .. } => "data",
            Frame::Ack { .. } => "ack",
            Frame::Heartbeat { .. } => "heartbeat",
            Frame::Goodbye { .. } => "goodbye",
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let b = s.as_bytes();
    let b = &b[..b.len().min(MAX_STRING)];
    // Cut on a char boundary so the peer's UTF-8 check holds.
    let mut n = b.len();
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    let n16 = u16::try_from(n).unwrap_or(u16::MAX);
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&b[..usize::from(n16)]);
}

/// Whether frames of protocol `version` carry a CRC32C of their body (version 3), or 0
/// (version 4 on: the AEAD tag of the sealed record authenticates them).
pub const fn frame_checksummed(version: u16) -> bool {
    version < 4
}

/// Start a frame in `out`; returns the offset of its header, to be closed by [`end_frame`].
pub fn begin_frame(out: &mut Vec<u8>, kind: u8) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    out.push(kind);
    at
}

/// Fill in the header of the frame started at `at`, for protocol `version`.
///
/// # Panics
/// If the body exceeds [`MAX_FRAME`]: encoders must cap what they put in a frame.
pub fn end_frame(out: &mut [u8], at: usize, version: u16) {
    let body = &out[at + HEADER_LEN..];
    assert!(
        body.len() <= MAX_FRAME,
        "frame body of {} bytes exceeds the cap",
        body.len()
    );
    let len = u32::try_from(body.len()).expect("capped above");
    let crc = if frame_checksummed(version) {
        crc32c::crc32c(body)
    } else {
        0
    };
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encode a `Data` frame straight from borrowed records (the primary's hot path).
/// The caller keeps the body under [`MAX_FRAME`].
pub fn encode_data<'a>(
    out: &mut Vec<u8>,
    version: u16,
    first_seq: u64,
    records: impl Iterator<Item = (u32, &'a [u8])>,
) {
    let at = begin_frame(out, T_DATA);
    out.extend_from_slice(&first_seq.to_le_bytes());
    let count_at = out.len();
    out.extend_from_slice(&0u32.to_le_bytes());
    let mut count: u32 = 0;
    for (stream, payload) in records {
        out.extend_from_slice(&stream.to_le_bytes());
        let len = u32::try_from(payload.len()).expect("payload under the frame cap");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(payload);
        count += 1;
    }
    out[count_at..count_at + 4].copy_from_slice(&count.to_le_bytes());
    end_frame(out, at, version);
}

/// Encode a `Data` frame from records already in their `Data` encoding
/// (`(stream:u32 len:u32 payload)*`, see [`push_record`]): `count` records in the pieces of
/// `encoded`, back to back. One copy of each piece, no per-record work. The caller keeps the
/// body under [`MAX_FRAME`] and `count` equal to the records the pieces hold.
pub fn encode_data_encoded(
    out: &mut Vec<u8>,
    version: u16,
    first_seq: u64,
    count: u32,
    encoded: &[&[u8]],
) {
    let at = begin_frame(out, T_DATA);
    out.reserve(12 + encoded.iter().map(|p| p.len()).sum::<usize>());
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for p in encoded {
        out.extend_from_slice(p);
    }
    end_frame(out, at, version);
}

/// Append the encoding of `frame` for protocol `version` to `out`.
pub fn encode(frame: &Frame, version: u16, out: &mut Vec<u8>) -> Result<(), FrameError> {
    if !(PREVIOUS_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    let at;
    match frame {
        Frame::Hello {
            app,
            first_seq,
            last_seq,
            sync,
        } => {
            at = begin_frame(out, T_HELLO);
            put_str(out, app);
            out.extend_from_slice(&first_seq.to_le_bytes());
            out.extend_from_slice(&last_seq.to_le_bytes());
            out.push(u8::from(*sync));
        }
        Frame::Welcome {
            durable_seq,
            journaled_bytes,
        } => {
            at = begin_frame(out, T_WELCOME);
            out.extend_from_slice(&durable_seq.to_le_bytes());
            if version >= 2 {
                out.extend_from_slice(&journaled_bytes.to_le_bytes());
            }
        }
        Frame::Refuse { code, message } => {
            at = begin_frame(out, T_REFUSE);
            out.extend_from_slice(&code.to_u16().to_le_bytes());
            put_str(out, message);
        }
        Frame::Data { first_seq, records } => {
            let count = u32::try_from(records.len()).expect("frame under the cap");
            encode_data_encoded(out, version, *first_seq, count, &[records.encoded()]);
            return Ok(());
        }
        Frame::Ack {
            durable_seq,
            journaled_bytes,
        } => {
            at = begin_frame(out, T_ACK);
            out.extend_from_slice(&durable_seq.to_le_bytes());
            if version >= 2 {
                out.extend_from_slice(&journaled_bytes.to_le_bytes());
            }
        }
        Frame::Heartbeat { sent_unix_nanos } => {
            at = begin_frame(out, T_HEARTBEAT);
            out.extend_from_slice(&sent_unix_nanos.to_le_bytes());
        }
        Frame::Goodbye { reason } => {
            at = begin_frame(out, T_GOODBYE);
            put_str(out, reason);
        }
    }
    end_frame(out, at, version);
    Ok(())
}

struct Body<'a> {
    b: &'a [u8],
    kind: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Truncated {
                kind: self.kind,
                field,
            });
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        let b = self.take(8, field)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let n = usize::from(self.u16(field)?);
        if n > MAX_STRING {
            return Err(FrameError::Invalid {
                kind: self.kind,
                field,
                why: format!("is {n} bytes, over the cap of {MAX_STRING}"),
            });
        }
        let b = self.take(n, field)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Invalid {
            kind: self.kind,
            field,
            why: "is not UTF-8".into(),
        })
    }
    fn finish(self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing {
                kind: self.kind,
                extra: self.b.len(),
            })
        }
    }
}

/// Decode one frame from the front of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a frame (read more and call again),
/// `Ok(Some((frame, consumed)))` for a whole frame, and an error for anything malformed.
/// A length over the cap is refused as soon as the header is read, before buffering the body.
pub fn decode(buf: &[u8], version: u16) -> Result<Option<(Frame, usize)>, FrameError> {
    let Some((mut frame, n)) = decode_at(buf, version)? else {
        return Ok(None);
    };
    if let Frame::Data { records, .. } = &mut frame {
        records.resolve_copy(buf);
    }
    Ok(Some((frame, n)))
}

/// [`decode`], except that the records of a `Data` frame are left in `buf`: the batch has no
/// bytes yet, and its `start..end` is the range of its records in `buf` (the caller copies
/// them out with `resolve_copy` or hands `buf` itself over with `resolve`).
pub(crate) fn decode_at(buf: &[u8], version: u16) -> Result<Option<(Frame, usize)>, FrameError> {
    if !(PREVIOUS_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::Version(version));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::try_from(u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")))
        .unwrap_or(usize::MAX);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME,
        });
    }
    if buf.len() < HEADER_LEN + len {
        return Ok(None);
    }
    let expected = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[HEADER_LEN..HEADER_LEN + len];
    if frame_checksummed(version) {
        let actual = crc32c::crc32c(body);
        if actual != expected {
            return Err(FrameError::Checksum { expected, actual });
        }
    } else if expected != 0 {
        return Err(FrameError::Invalid {
            kind: "frame header",
            field: "crc",
            why: format!(
                "is {expected:08x}, not 0 (version {version} frames carry no checksum: the \
                 sealed record's tag authenticates them)"
            ),
        });
    }
    let mut frame = decode_body(body, version)?;
    if let Frame::Data { records, .. } = &mut frame {
        records.start += HEADER_LEN;
        records.end += HEADER_LEN;
    }
    Ok(Some((frame, HEADER_LEN + len)))
}

fn decode_body(body: &[u8], version: u16) -> Result<Frame, FrameError> {
    let kind = body[0];
    let name = match kind {
        T_HELLO => "hello",
        T_WELCOME => "welcome",
        T_REFUSE => "refuse",
        T_DATA => "data",
        T_ACK => "ack",
        T_HEARTBEAT => "heartbeat",
        T_GOODBYE => "goodbye",
        other => return Err(FrameError::UnknownType(other)),
    };
    let mut b = Body {
        b: &body[1..],
        kind: name,
    };
    let frame = match kind {
        T_HELLO => {
            let app = b.string("app")?;
            let first_seq = b.u64("first_seq")?;
            let last_seq = b.u64("last_seq")?;
            let sync = match b.u8("sync")? {
                0 => false,
                1 => true,
                v => {
                    return Err(FrameError::Invalid {
                        kind: name,
                        field: "sync",
                        why: format!("is {v}, not 0 or 1"),
                    })
                }
            };
            Frame::Hello {
                app,
                first_seq,
                last_seq,
                sync,
            }
        }
        T_WELCOME => {
            let durable_seq = b.u64("durable_seq")?;
            let journaled_bytes = if version >= 2 {
                b.u64("journaled_bytes")?
            } else {
                0
            };
            Frame::Welcome {
                durable_seq,
                journaled_bytes,
            }
        }
        T_REFUSE => {
            let code = RefuseCode::from_u16(b.u16("code")?);
            let message = b.string("message")?;
            Frame::Refuse { code, message }
        }
        T_DATA => {
            let first_seq = b.u64("first_seq")?;
            let count = b.u32("count")?;
            // Each record needs at least RECORD_OVERHEAD bytes: bound the count by the body
            // before reserving anything.
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            if count > b.b.len() / RECORD_OVERHEAD {
                return Err(FrameError::Invalid {
                    kind: name,
                    field: "count",
                    why: format!("is {count}, more records than the body can hold"),
                });
            }
            if first_seq == 0 && count > 0 {
                return Err(FrameError::Invalid {
                    kind: name,
                    field: "first_seq",
                    why: "is 0 (sequence numbers start at 1)".into(),
                });
            }
            // Validate the record lengths once; the records stay in their encoding. A tight
            // walk over the lengths first; only a frame it refuses is walked again field by
            // field, for the error that names what is wrong.
            let start = b.b;
            let used = match records_len(start, count) {
                Some(used) => {
                    b.b = &start[used..];
                    used
                }
                None => {
                    for _ in 0..count {
                        let _stream = b.u32("stream")?;
                        let n = usize::try_from(b.u32("payload_len")?).unwrap_or(usize::MAX);
                        b.take(n, "payload")?;
                    }
                    // (Not reached: the field checks refuse whatever `records_len` does.)
                    start.len() - b.b.len()
                }
            };
            // Offsets in `body`; `decode_at` makes them offsets in its buffer.
            let at = body.len() - start.len();
            let records = DataBatch {
                bytes: Vec::new(),
                start: at,
                end: at + used,
                count,
            };
            Frame::Data { first_seq, records }
        }
        T_ACK => {
            let durable_seq = b.u64("durable_seq")?;
            let journaled_bytes = if version >= 2 {
                b.u64("journaled_bytes")?
            } else {
                0
            };
            Frame::Ack {
                durable_seq,
                journaled_bytes,
            }
        }
        T_HEARTBEAT => Frame::Heartbeat {
            sent_unix_nanos: b.u64("sent_unix_nanos")?,
        },
        T_GOODBYE => Frame::Goodbye {
            reason: b.string("reason")?,
        },
        _ => unreachable!("checked above"),
    };
    b.finish()?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let s = "[a-z0-9é-]{0,40}";
        prop_oneof![
            (s, any::<u64>(), any::<u64>(), any::<bool>()).prop_map(
                |(app, first_seq, last_seq, sync)| Frame::Hello {
                    app,
                    first_seq,
                    last_seq,
                    sync
                }
            ),
            (any::<u64>(), any::<u64>()).prop_map(|(d, j)| Frame::Welcome {
                durable_seq: d,
                journaled_bytes: j
            }),
            (1u16..6, s).prop_map(|(c, m)| Frame::Refuse {
                code: RefuseCode::from_u16(c),
                message: m
            }),
            (
                1u64..u64::MAX / 2,
                proptest::collection::vec(
                    (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..100)),
                    0..20
                )
            )
                .prop_map(|(first_seq, rs)| Frame::Data {
                    first_seq,
                    records: rs.iter().map(|(stream, p)| (*stream, &p[..])).collect()
                }),
            (any::<u64>(), any::<u64>()).prop_map(|(d, j)| Frame::Ack {
                durable_seq: d,
                journaled_bytes: j
            }),
            any::<u64>().prop_map(|t| Frame::Heartbeat { sent_unix_nanos: t }),
            s.prop_map(|reason| Frame::Goodbye { reason }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every frame survives encode → decode, and every strict prefix asks for more bytes.
        #[test]
        fn round_trip(frame in arb_frame()) {
            for v in [PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION] {
                let mut buf = Vec::new();
                encode(&frame, v, &mut buf).unwrap();
                let (back, n) = decode(&buf, v).unwrap().unwrap();
                prop_assert_eq!(n, buf.len());
                prop_assert_eq!(&back, &frame);
                for cut in [0, 1, HEADER_LEN - 1, HEADER_LEN, buf.len() - 1] {
                    if cut < buf.len() {
                        prop_assert_eq!(decode(&buf[..cut], v).unwrap(), None);
                    }
                }
            }
        }

        /// Version 4 (no frame checksum): arbitrary bodies behind a well-formed header reach
        /// the body decoder, which never panics; a result is an error or a frame that
        /// re-encodes to the bytes it came from.
        #[test]
        fn garbage_bodies_never_panic_without_checksum(
            kind in 0u8..9,
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut buf = Vec::new();
            buf.extend_from_slice(&u32::try_from(bytes.len() + 1).unwrap().to_le_bytes());
            buf.extend_from_slice(&0u32.to_le_bytes());
            buf.push(kind);
            buf.extend_from_slice(&bytes);
            if let Ok(Some((f, n))) = decode(&buf, PROTOCOL_VERSION) {
                let mut again = Vec::new();
                encode(&f, PROTOCOL_VERSION, &mut again).unwrap();
                prop_assert_eq!(&again[..], &buf[..n]);
            }
        }

        /// Arbitrary bytes never panic the decoder; a result is an error, a request for more,
        /// or a frame that re-encodes to the bytes it came from.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            for v in [PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION] {
                if let Ok(Some((f, n))) = decode(&bytes, v) {
                    let mut again = Vec::new();
                    encode(&f, v, &mut again).unwrap();
                    prop_assert_eq!(&again[..], &bytes[..n]);
                }
            }
        }

        /// Any single bit flipped in an encoded frame is never decoded as the same frame:
        /// version 3 catches it (checksum, or a length that no longer fits); version 4, whose
        /// frames the AEAD tag protects instead, decodes at most a different frame.
        #[test]
        fn bit_flip_detected(frame in arb_frame(), pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
            for v in [PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION] {
                let mut buf = Vec::new();
                encode(&frame, v, &mut buf).unwrap();
                let i = pos.index(buf.len());
                buf[i] ^= 1 << bit;
                match decode(&buf, v) {
                    Err(_) | Ok(None) => {}
                    Ok(Some((f, _))) => {
                        prop_assert!(!frame_checksummed(v), "version {} decoded a flipped bit", v);
                        prop_assert_ne!(f, frame.clone());
                    }
                }
            }
        }
    }

    #[test]
    fn caps_and_versions() {
        let mut hdr = Vec::new();
        hdr.extend_from_slice(&u32::try_from(MAX_FRAME + 1).unwrap().to_le_bytes());
        hdr.extend_from_slice(&0u32.to_le_bytes());
        for v in [3, 4] {
            assert!(matches!(decode(&hdr, v), Err(FrameError::TooLarge { .. })));
            assert!(matches!(decode(&[0; 8], v), Err(FrameError::Empty)));
        }
        assert!(matches!(decode(&hdr, 9), Err(FrameError::Version(9))));
        // Versions 1 and 2 are no longer spoken; versions 3 and 4 differ only in the frame
        // checksum (version 4 carries 0).
        let ack = Frame::Ack {
            durable_seq: 7,
            journaled_bytes: 5,
        };
        for v in [1, 2] {
            assert!(matches!(
                encode(&ack, v, &mut Vec::new()),
                Err(FrameError::Version(x)) if x == v
            ));
        }
        let (mut v3, mut v4) = (Vec::new(), Vec::new());
        encode(&ack, 3, &mut v3).unwrap();
        encode(&ack, 4, &mut v4).unwrap();
        assert_eq!(v3[..4], v4[..4]);
        assert_eq!(v3[8..], v4[8..]);
        assert_eq!(v4[4..8], [0; 4]);
        assert_eq!(decode(&v3, 3).unwrap().unwrap().0, ack);
        assert_eq!(decode(&v4, 4).unwrap().unwrap().0, ack);
        assert!(matches!(decode(&v4, 3), Err(FrameError::Checksum { .. })));
        assert!(matches!(
            decode(&v3, 4),
            Err(FrameError::Invalid { field: "crc", .. })
        ));
        assert!(matches!(decode(&v3, 2), Err(FrameError::Version(2))));
        // A data count larger than the body is refused before allocating.
        let mut d = Vec::new();
        let at = begin_frame(&mut d, T_DATA);
        d.extend_from_slice(&1u64.to_le_bytes());
        d.extend_from_slice(&u32::MAX.to_le_bytes());
        end_frame(&mut d, at, 3);
        assert!(matches!(
            decode(&d, 3),
            Err(FrameError::Invalid { field: "count", .. })
        ));
    }
}
