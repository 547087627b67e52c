//! [`BatchWriter`]: records written one by one straight into the journal's write buffer as
//! batch frames, for a caller that gets them from memory it cannot keep (a collector draining
//! a shared-memory ring): one copy of each payload, one CRC32C pass per frame.

use crate::format::{self, BATCH_RECORD_OVERHEAD, MAX_PAYLOAD, RECORD_HEADER_LEN};
use crate::{Error, Journal, Result, BATCH_MAX_BYTES};

/// Appends records `last_seq() + 1, last_seq() + 2, ...` to a [`Journal`] as batch frames
/// ([`format::FLAG_BATCH`], the same frames as [`Journal::append_encoded`] writes), encoding
/// each record straight into the journal's write buffer. Made by [`Journal::batch_writer`].
///
/// A frame holds up to [`BATCH_MAX_BYTES`] of encoded records (a larger record gets a frame of
/// its own) and never makes the active segment exceed its size, unless the segment holds no
/// record yet (as for every append). When a frame is full it is closed (header and CRC32C
/// written) and the next one opened; [`BatchWriter::finish`] closes the last one. Dropping the
/// writer closes it too (records pushed are never discarded), but only `finish` reports an
/// error.
#[derive(Debug)]
pub struct BatchWriter<'j> {
    j: &'j mut Journal,
    /// Offset in the write buffer of the open frame's header (`None`: no frame open).
    start: Option<usize>,
    /// The open frame may grow until the write buffer holds this many bytes (0: no frame open).
    end: usize,
    /// Records in the open frame.
    count: u32,
    /// Largest encoded frame payload (the journal's payload limit).
    max: usize,
    /// The first error met; pushes are refused from then on.
    err: Option<Error>,
}

impl Journal {
    /// A writer of batch frames into this journal's write buffer (see [`BatchWriter`]). Fails
    /// when the journal has failed before.
    pub fn batch_writer(&mut self) -> Result<BatchWriter<'_>> {
        self.check_ok()?;
        let max = usize::try_from(self.opts.max_payload.min(MAX_PAYLOAD)).unwrap_or(usize::MAX);
        Ok(BatchWriter {
            j: self,
            start: None,
            end: 0,
            count: 0,
            max,
            err: None,
        })
    }
}

impl BatchWriter<'_> {
    /// Append one record with the next sequence number. Returns `false` (and appends nothing)
    /// when the record cannot be appended: its payload plus its 8-byte record header exceeds the
    /// journal's payload limit, or writing a full frame to the kernel failed; the error is then
    /// returned by [`BatchWriter::finish`] and every later push is refused.
    #[inline]
    pub fn push(&mut self, stream: u32, payload: &[u8]) -> bool {
        let need = BATCH_RECORD_OVERHEAD + payload.len();
        let buf = &mut self.j.buf;
        // `end` is 0 while no frame is open.
        if buf.len() + need <= self.end {
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            buf.extend_from_slice(&(u64::from(stream) | (u64::from(len) << 32)).to_le_bytes());
            buf.extend_from_slice(payload);
            self.count += 1;
            return true;
        }
        self.push_slow(stream, payload)
    }

    /// `push` when no frame is open, the open one is full, or the record is refused.
    #[cold]
    #[inline(never)]
    fn push_slow(&mut self, stream: u32, payload: &[u8]) -> bool {
        if self.err.is_some() {
            return false;
        }
        let need = BATCH_RECORD_OVERHEAD + payload.len();
        if need > self.max {
            self.err = Some(Error::TooLarge {
                dir: self.j.dir.clone(),
                seq: self.j.last_seq + 1 + u64::from(self.count),
                len: payload.len(),
                max: u32::try_from(self.max - BATCH_RECORD_OVERHEAD).unwrap_or(u32::MAX),
            });
            return false;
        }
        if let Err(e) = self.close().and_then(|()| self.open(need)) {
            self.err = Some(e);
            return false;
        }
        self.push(stream, payload)
    }

    /// Open a frame that can hold at least `need` encoded bytes.
    fn open(&mut self, need: usize) -> Result<()> {
        let j = &mut *self.j;
        let seq = j.last_seq + 1;
        // Rolls the segment when even this record would make it too long, and samples the
        // index at the frame's offset.
        j.before_frame(seq, (RECORD_HEADER_LEN + need) as u64)?;
        let active = j.segments.last().unwrap_or_else(|| unreachable!());
        let room = if active.records > 0 {
            usize::try_from(j.opts.segment_bytes.saturating_sub(active.len))
                .unwrap_or(usize::MAX)
                .saturating_sub(RECORD_HEADER_LEN)
        } else {
            usize::MAX
        };
        let limit = BATCH_MAX_BYTES.min(room).min(self.max).max(need);
        j.buf.reserve(RECORD_HEADER_LEN + limit);
        let start = j.buf.len();
        j.buf.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
        self.start = Some(start);
        self.end = start + RECORD_HEADER_LEN + limit;
        self.count = 0;
        Ok(())
    }

    /// Close the open frame, if any: header with CRC32C, accounting, and a write to the kernel
    /// once the write buffer is full. An open frame without records is removed.
    fn close(&mut self) -> Result<()> {
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        self.end = 0;
        let j = &mut *self.j;
        if self.count == 0 {
            j.buf.truncate(start);
            return Ok(());
        }
        let seq = j.last_seq + 1;
        let body = start + RECORD_HEADER_LEN;
        let h = format::batch_header(seq, self.count, &j.buf[body..]);
        j.buf[start..body].copy_from_slice(&h);
        let frame = (j.buf.len() - start) as u64;
        let count = u64::from(self.count);
        self.count = 0;
        j.after_frames(seq + count - 1, count, frame)
    }

    /// Close the last frame and return the journal's `last_seq()`, or the first error met.
    pub fn finish(mut self) -> Result<u64> {
        let closed = self.close();
        if let Some(e) = self.err.take() {
            return Err(e);
        }
        closed?;
        Ok(self.j.last_seq)
    }
}

impl Drop for BatchWriter<'_> {
    fn drop(&mut self) {
        // Records pushed are kept: an error here leaves the journal failed (reported by its
        // next call).
        let _ = self.close();
    }
}
