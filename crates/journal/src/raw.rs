//! Shipping records as raw frames: read whole frames exactly as stored, append them on the
//! other side without re-encoding (see `docs/journal-format.md`, "Shipping raw frames").

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{self, Corruption, MAX_PAYLOAD, RECORD_HEADER_LEN};
use crate::segment;
use crate::{Journal, RawAppend, RawBatch, RawRange, MAX_RAW_BATCH};

impl Journal {
    /// Append whole frames exactly as produced by [`Journal::read_raw_from`] on another
    /// journal (no re-encoding). Every frame is checked (length bound, CRC, `seq` continuing
    /// `last_seq()`) before anything is appended, so a bad batch appends nothing.
    /// Returns the last sequence number.
    pub fn append_raw(&mut self, frames: &[u8]) -> Result<u64> {
        self.check_ok()?;
        let mut expected = self.last_seq + 1;
        let mut off = 0usize;
        let max = self.opts.max_payload.min(MAX_PAYLOAD);
        let mut spans = Vec::new();
        while off < frames.len() {
            let (f, n) =
                format::decode_frame(&frames[off..]).map_err(|reason| Error::BadFrame {
                    dir: self.dir.clone(),
                    offset: off,
                    reason,
                })?;
            if f.seq != expected {
                return Err(Error::OutOfOrder {
                    dir: self.dir.clone(),
                    expected,
                    got: f.seq,
                });
            }
            let max_len = usize::try_from(max).unwrap_or(usize::MAX);
            for (seq, _, p) in f.records() {
                if p.len() > max_len {
                    return Err(Error::TooLarge {
                        dir: self.dir.clone(),
                        seq,
                        len: p.len(),
                        max,
                    });
                }
            }
            spans.push((f.seq, f.count, off, n));
            expected += f.count;
            off += n;
        }
        for (seq, count, off, n) in spans {
            let frame = n as u64;
            self.before_frame(seq, frame)?;
            self.buf.extend_from_slice(&frames[off..off + n]);
            self.after_frames(seq + count - 1, count, frame)?;
        }
        Ok(self.last_seq)
    }

    /// Like [`Journal::append_raw`], but frames whose seq the journal already holds are
    /// accepted when they are byte-for-byte the stored frames (same seq, stream and payload)
    /// and skipped; a differing one is [`Error::Conflict`]. For a receiver that may be sent an
    /// overlap after a reconnect. Nothing is appended unless the whole batch is acceptable.
    pub fn append_raw_idempotent(&mut self, frames: &[u8]) -> Result<RawAppend> {
        self.check_ok()?;
        self.flush()?;
        // Length of the prefix of frames already held.
        let mut overlap = 0usize;
        let mut first_seq = None;
        while overlap < frames.len() {
            let (f, n) =
                format::decode_frame(&frames[overlap..]).map_err(|reason| Error::BadFrame {
                    dir: self.dir.clone(),
                    offset: overlap,
                    reason,
                })?;
            if f.seq > self.last_seq {
                break;
            }
            first_seq.get_or_insert(f.seq);
            overlap += n;
        }
        let mut skipped = 0u64;
        if let Some(mut seq) = first_seq {
            let mut checked = 0usize;
            let mut stored = Vec::new();
            while checked < overlap {
                stored.clear();
                let r = self.read_raw_into(seq, overlap - checked, &mut stored)?;
                let theirs = &frames[checked..];
                let same = stored.len() <= theirs.len() && theirs[..stored.len()] == stored[..];
                if r.records == 0 || !same {
                    // Find the first differing frame for the message.
                    let mut at = checked;
                    for (mine, other) in format::frames(&stored).zip(format::frames(theirs)) {
                        match (mine, other) {
                            (Ok(m), Ok(o)) if m == o => at += RECORD_HEADER_LEN + o.payload.len(),
                            (_, Ok(o)) => {
                                return Err(Error::Conflict {
                                    dir: self.dir.clone(),
                                    seq: o.seq,
                                    offset: at,
                                })
                            }
                            _ => break,
                        }
                    }
                    return Err(Error::Conflict {
                        dir: self.dir.clone(),
                        seq,
                        offset: at,
                    });
                }
                checked += stored.len();
                skipped += r.records;
                seq = r.last_seq + 1;
            }
        }
        let appended_from = self.last_seq;
        let last = self.append_raw(&frames[overlap..])?;
        Ok(RawAppend {
            skipped,
            appended: last - appended_from,
            last_seq: last,
        })
    }

    /// Read whole record frames starting at `seq`, exactly as stored, for shipping to a
    /// backup that appends them with [`Journal::append_raw`]. Returns at most `max_bytes` of
    /// frames (capped at [`MAX_RAW_BATCH`]), but always at least one frame if `seq` is held,
    /// so that a large record still makes progress, and never crosses a segment boundary. Each frame's CRC is verified
    /// before it is returned. An empty batch means `seq > last_seq()`.
    pub fn read_raw_from(&mut self, seq: u64, max_bytes: usize) -> Result<RawBatch> {
        let mut bytes = Vec::new();
        let r = self.read_raw_into(seq, max_bytes, &mut bytes)?;
        Ok(RawBatch {
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            records: r.records,
            bytes,
        })
    }

    /// [`Journal::read_raw_from`] into the caller's buffer: the frames are *appended* to `out`
    /// (after whatever it holds, e.g. a transport frame header), read from the segment file
    /// straight into it, with no intermediate copy and no decoding into records. With a
    /// reused buffer the steady state allocates nothing. On error `out` is left as it was.
    pub fn read_raw_into(
        &mut self,
        seq: u64,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<RawRange> {
        self.flush()?;
        let empty = RawRange {
            first_seq: 0,
            last_seq: 0,
            records: 0,
        };
        if seq > self.written_seq {
            return Ok(empty);
        }
        if seq < self.first_seq() {
            return Err(self.not_held(seq));
        }
        let Some(seg) = self
            .segments
            .iter()
            .find(|s| s.records > 0 && s.header.first_seq <= seq && s.last_seq() >= seq)
        else {
            return Err(self.not_held(seq));
        };
        let path = seg.path.clone();
        let end = seg.len;
        let mut f = File::open(&path).map_err(|e| Error::io(&path, "open", e))?;
        let start =
            segment::seek_to_seq(&path, &mut f, &seg.index, seg.header.first_seq, seq, end)?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(&path, "seek", e))?;
        let base = out.len();
        let result = read_frames(&path, &mut f, start, end - start, seq, max_bytes, out, base);
        match result {
            Ok(r) => Ok(r),
            Err(e) => {
                out.truncate(base);
                Err(e)
            }
        }
    }
}

/// Read whole frames of `path` from `start` (the frame of `seq`) into `out[base..]`: up to
/// `max_bytes` of them, at least one, never past `avail` bytes; verify each.
#[allow(clippy::too_many_arguments)]
fn read_frames(
    path: &Path,
    f: &mut File,
    start: u64,
    avail: u64,
    seq: u64,
    max_bytes: usize,
    out: &mut Vec<u8>,
    base: usize,
) -> Result<RawRange> {
    let corrupt = |at: usize, reason| Error::Corrupt {
        path: path.to_path_buf(),
        offset: start + at as u64,
        reason,
    };
    let avail_usize = usize::try_from(avail).unwrap_or(usize::MAX);
    // Read at least one frame header, at most max_bytes (bounded by what the segment holds).
    let want = max_bytes
        .clamp(RECORD_HEADER_LEN, MAX_RAW_BATCH)
        .min(avail_usize);
    out.resize(base + want, 0);
    f.read_exact(&mut out[base..])
        .map_err(|e| Error::io(path, "read", e))?;
    let mut used = 0usize;
    let mut records = 0u64;
    let mut next = seq;
    loop {
        let have = out.len() - base - used;
        if have < RECORD_HEADER_LEN {
            if records == 0 {
                return Err(corrupt(
                    used,
                    Corruption::ShortRecordHeader { have: have as u64 },
                ));
            }
            break;
        }
        let h = format::RecordHeader::decode(&out[base + used..]).map_err(|c| corrupt(used, c))?;
        let flen = usize::try_from(h.frame_len()).unwrap_or(usize::MAX);
        if have < flen {
            if records > 0 {
                break;
            }
            // A single frame larger than max_bytes: read the rest of it (bounded by the
            // segment's valid length, itself bounded by MAX_PAYLOAD per frame).
            if flen > avail_usize {
                return Err(corrupt(
                    used,
                    Corruption::ShortPayload {
                        len: h.len,
                        have: avail - RECORD_HEADER_LEN as u64,
                    },
                ));
            }
            let old = out.len();
            out.resize(base + flen, 0);
            f.read_exact(&mut out[old..])
                .map_err(|e| Error::io(path, "read", e))?;
        }
        let (fr, n) = format::decode_frame(&out[base + used..]).map_err(|c| corrupt(used, c))?;
        if records == 0 && fr.seq < next && next <= fr.last_seq() {
            // A batch frame that starts before `seq`: ship its records from `seq` on as a new
            // batch frame (same records, so the same digest; the bytes differ from the stored
            // frame's).
            let mut enc = Vec::new();
            let mut count = 0u32;
            for (_, stream, p) in fr.records().filter(|&(s, _, _)| s >= next) {
                enc.extend_from_slice(&stream.to_le_bytes());
                enc.extend_from_slice(&u32::try_from(p.len()).unwrap_or(u32::MAX).to_le_bytes());
                enc.extend_from_slice(p);
                count += 1;
            }
            let mut frame = Vec::with_capacity(RECORD_HEADER_LEN + enc.len());
            format::encode_batch(&mut frame, next, count, &enc);
            let last = fr.last_seq();
            out.splice(base..base + n, frame.iter().copied());
            used += frame.len();
            records += u64::from(count);
            next = last + 1;
            continue;
        }
        if fr.seq != next {
            return Err(corrupt(
                used,
                Corruption::SeqMismatch {
                    expected: next,
                    found: fr.seq,
                },
            ));
        }
        used += n;
        records += fr.count;
        next += fr.count;
    }
    out.truncate(base + used);
    Ok(RawRange {
        first_seq: seq,
        last_seq: next - 1,
        records,
    })
}
