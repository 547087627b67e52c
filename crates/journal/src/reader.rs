//! Reading records back: [`RecordIter`].

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    Corruption, RecordHeader, SegmentHeader, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN,
};
use crate::segment::{list_dir, seek_to_seq};
use crate::Record;

#[derive(Debug, Clone)]
pub(crate) struct SegRef {
    pub path: PathBuf,
    pub first_seq: u64,
    pub index: Vec<(u64, u64)>,
}

/// Iterator over records in sequence order, from [`crate::Journal::read_from`] or
/// [`RecordIter::open_dir`]. Owns its file handles; yields an error item and then ends at
/// the first damaged record.
#[derive(Debug)]
pub struct RecordIter {
    dir: PathBuf,
    segs: VecDeque<SegRef>,
    next_seq: u64,
    end_seq: u64,
    cur: Option<(BufReader<File>, PathBuf, u64)>,
    /// Reading a live journal from outside: the end of valid data in the last segment (a
    /// torn or still-being-written tail) ends the iteration quietly.
    lenient_tail: bool,
    done: bool,
    payload_limit: u32,
    buf: Vec<u8>,
    /// The batch frame being handed out record by record: its payload, the offset of its next
    /// record, that record's seq and how many records are left.
    batch: Vec<u8>,
    bpos: usize,
    bseq: u64,
    bleft: u64,
}

impl RecordIter {
    pub(crate) fn new(dir: PathBuf, segs: Vec<SegRef>, from: u64, end_seq: u64) -> Self {
        Self {
            dir,
            segs: segs.into(),
            next_seq: from,
            end_seq,
            cur: None,
            lenient_tail: false,
            done: false,
            payload_limit: crate::format::MAX_PAYLOAD,
            buf: Vec::new(),
            batch: Vec::new(),
            bpos: 0,
            bseq: 0,
            bleft: 0,
        }
    }

    /// Read a journal directory without opening it for writing (no lock, no repair): every
    /// record from `from_seq` on (or from the first one held, if `from_seq` is older), up to
    /// the end of the valid data of the last segment. A damaged record in a sealed segment is
    /// an error item. Suitable for `replay` and for readers in other processes.
    pub fn open_dir(dir: impl AsRef<Path>, from_seq: u64) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let listing = list_dir(&dir)?;
        let mut segs: Vec<SegRef> = listing
            .segments
            .into_iter()
            .map(|s| SegRef {
                path: s.path,
                first_seq: s.name_seq,
                index: Vec::new(),
            })
            .collect();
        // Drop segments that end before from_seq (their successor starts at or before it).
        let keep_from = segs
            .iter()
            .rposition(|s| s.first_seq <= from_seq)
            .unwrap_or(0);
        segs.drain(..keep_from);
        let from = segs.first().map_or(from_seq, |s| from_seq.max(s.first_seq));
        let mut it = Self::new(dir, segs, from, u64::MAX);
        it.lenient_tail = true;
        Ok(it)
    }

    /// A damaged frame ends the iteration: with an error, or quietly at the tail of a
    /// journal read from outside.
    fn corrupt(&mut self, path: PathBuf, offset: u64, reason: Corruption) -> Option<Error> {
        self.done = true;
        if self.lenient_tail && self.segs.is_empty() {
            return None;
        }
        Some(Error::Corrupt {
            path,
            offset,
            reason,
        })
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some(seg) = self.segs.pop_front() else {
            return Ok(false);
        };
        let mut f = match File::open(&seg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Removed by retention since the iterator was created.
                return Err(Error::NotHeld {
                    dir: self.dir.clone(),
                    seq: self.next_seq,
                    first: self.segs.front().map_or(self.next_seq, |s| s.first_seq),
                    last: self.end_seq,
                });
            }
            Err(e) => return Err(Error::io(&seg.path, "open", e)),
        };
        let mut hb = [0u8; SEGMENT_HEADER_LEN];
        let n = read_full(&mut f, &mut hb).map_err(|e| Error::io(&seg.path, "read", e))?;
        let h = match SegmentHeader::decode(&hb[..n]) {
            Ok(h) => h,
            // The newest segment of a live journal read from outside: a header not (yet)
            // complete is the end of the data, like a torn tail.
            Err(_) if self.lenient_tail && self.segs.is_empty() => {
                self.done = true;
                return Ok(false);
            }
            Err(reason) => {
                return Err(Error::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason,
                })
            }
        };
        if h.first_seq != seg.first_seq {
            return Err(Error::Corrupt {
                path: seg.path.clone(),
                offset: 0,
                reason: Corruption::NameMismatch {
                    name_seq: seg.first_seq,
                    header_seq: h.first_seq,
                },
            });
        }
        if self.next_seq < h.first_seq {
            return Err(Error::SegmentGap {
                path: seg.path.clone(),
                found: h.first_seq,
                prev_last: self.next_seq - 1,
            });
        }
        let off = match seek_to_seq(
            &seg.path,
            &mut f,
            &seg.index,
            h.first_seq,
            self.next_seq,
            u64::MAX,
        ) {
            Ok(off) => off,
            Err(Error::Corrupt { .. }) if self.lenient_tail && self.segs.is_empty() => {
                self.done = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let f2 = {
            use std::io::{Seek, SeekFrom};
            f.seek(SeekFrom::Start(off))
                .map_err(|e| Error::io(&seg.path, "seek", e))?;
            f
        };
        self.cur = Some((BufReader::with_capacity(64 << 10, f2), seg.path, off));
        Ok(true)
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut have = 0;
    while have < buf.len() {
        match r.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(have)
}

/// A record borrowed from a [`RecordIter`]'s buffer (see [`RecordIter::next_ref`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Stream id.
    pub stream: u32,
    /// Payload, valid until the next call on the iterator.
    pub payload: &'a [u8],
}

impl RecordIter {
    /// Like `next()`, but the payload is borrowed from a buffer the iterator reuses, so
    /// iterating allocates nothing per record (a lending iterator: the borrow ends at the
    /// next call).
    pub fn next_ref(&mut self) -> Option<Result<RecordRef<'_>>> {
        match self.advance()? {
            Ok((seq, stream)) => Some(Ok(RecordRef {
                seq,
                stream,
                payload: &self.buf,
            })),
            Err(e) => Some(Err(e)),
        }
    }

    fn cur_path(&self) -> PathBuf {
        self.cur
            .as_ref()
            .map_or_else(|| self.dir.clone(), |(_, p, _)| p.clone())
    }

    /// Read the next record's payload into `self.buf`; return its seq and stream.
    fn advance(&mut self) -> Option<Result<(u64, u32)>> {
        loop {
            if self.done || self.next_seq > self.end_seq {
                return None;
            }
            if self.bleft > 0 {
                // The next record of the current batch (its layout was checked with its CRC).
                let b = &self.batch[self.bpos..];
                let stream = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes"));
                let len = usize::try_from(u32::from_le_bytes(b[4..8].try_into().expect("4 bytes")))
                    .unwrap_or(usize::MAX);
                let seq = self.bseq;
                self.bpos += crate::format::BATCH_RECORD_OVERHEAD + len;
                self.bseq += 1;
                self.bleft -= 1;
                if seq < self.next_seq {
                    continue;
                }
                self.buf.clear();
                self.buf
                    .extend_from_slice(&b[crate::format::BATCH_RECORD_OVERHEAD..][..len]);
                self.next_seq += 1;
                return Some(Ok((seq, stream)));
            }
            if self.cur.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        if self.lenient_tail {
                            return None;
                        }
                        return Some(Err(Error::NotHeld {
                            dir: self.dir.clone(),
                            seq: self.next_seq,
                            first: self.next_seq,
                            last: self.end_seq,
                        }));
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            let (r, _, off) = self.cur.as_mut().unwrap_or_else(|| unreachable!());
            let offset = *off;
            let h = match read_frame(r, &mut self.buf, self.payload_limit) {
                Step::Frame(h) => h,
                Step::Eof => {
                    // End of this segment at a frame boundary: continue with the next one.
                    self.cur = None;
                    continue;
                }
                Step::Bad(c) => return self.corrupt(self.cur_path(), offset, c).map(Err),
                Step::Io(e) => {
                    self.done = true;
                    return Some(Err(Error::io(self.cur_path(), "read", e)));
                }
            };
            if let Some((_, _, off)) = self.cur.as_mut() {
                *off += h.frame_len();
            }
            if h.last_seq() < self.next_seq {
                // Before the requested start (seek without an index lands on an earlier frame).
                continue;
            }
            if h.is_batch() && h.seq <= self.next_seq {
                // Hand the batch's records out one by one (skipping any before the start).
                std::mem::swap(&mut self.batch, &mut self.buf);
                self.bpos = 0;
                self.bseq = h.seq;
                self.bleft = h.count();
                continue;
            }
            if h.seq != self.next_seq {
                let c = Corruption::SeqMismatch {
                    expected: self.next_seq,
                    found: h.seq,
                };
                return self.corrupt(self.cur_path(), offset, c).map(Err);
            }
            self.next_seq += 1;
            return Some(Ok((h.seq, h.stream)));
        }
    }
}

/// One step of reading a segment.
enum Step {
    /// A valid frame; its payload is in the caller's buffer.
    Frame(RecordHeader),
    /// End of file exactly at a frame boundary.
    Eof,
    /// A damaged or incomplete frame.
    Bad(Corruption),
    /// The read itself failed.
    Io(io::Error),
}

/// Read the next frame of `r`, its payload into `buf`.
fn read_frame(r: &mut BufReader<File>, buf: &mut Vec<u8>, limit: u32) -> Step {
    // Fast path: the whole frame is already in the reader's buffer: verify it there and copy
    // the payload once.
    match r.fill_buf() {
        Err(e) => return Step::Io(e),
        Ok([]) => return Step::Eof,
        Ok(avail) => {
            if let Ok(h) = RecordHeader::decode(avail) {
                let flen = usize::try_from(h.frame_len()).unwrap_or(usize::MAX);
                if h.len <= limit && avail.len() >= flen {
                    if crc32c::crc32c(&avail[4..flen]) != h.crc {
                        return Step::Bad(Corruption::RecordChecksum);
                    }
                    if let Err(c) = h.check_layout(&avail[RECORD_HEADER_LEN..flen]) {
                        return Step::Bad(c);
                    }
                    buf.clear();
                    buf.extend_from_slice(&avail[RECORD_HEADER_LEN..flen]);
                    r.consume(flen);
                    return Step::Frame(h);
                }
            }
        }
    }
    // Slow path: the frame spans the end of the buffer (or is invalid, which is diagnosed
    // here).
    let mut hb = [0u8; RECORD_HEADER_LEN];
    let n = match read_full(r, &mut hb) {
        Ok(n) => n,
        Err(e) => return Step::Io(e),
    };
    if n < RECORD_HEADER_LEN {
        return Step::Bad(Corruption::ShortRecordHeader { have: n as u64 });
    }
    let h = match RecordHeader::decode(&hb) {
        Ok(h) if h.len <= limit => h,
        Ok(h) => return Step::Bad(Corruption::LengthTooLarge { len: h.len }),
        Err(c) => return Step::Bad(c),
    };
    let len = usize::try_from(h.len).unwrap_or(usize::MAX);
    // Bounded by MAX_PAYLOAD, and read through `take` so a lying length on a short file ends
    // at end of file instead of allocating up front.
    buf.clear();
    buf.reserve(len.min(1 << 20));
    if let Err(e) = r.by_ref().take(u64::from(h.len)).read_to_end(buf) {
        return Step::Io(e);
    }
    if buf.len() < len {
        return Step::Bad(Corruption::ShortPayload {
            len: h.len,
            have: buf.len() as u64,
        });
    }
    match h.verify(&hb, buf) {
        Ok(()) => Step::Frame(h),
        Err(c) => Step::Bad(c),
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        let (seq, stream) = match self.advance()? {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        // Hand the buffer over (no copy); the next record gets a fresh one.
        let payload = std::mem::take(&mut self.buf);
        Some(Ok(Record {
            seq,
            stream,
            payload,
        }))
    }
}
