//! Segment files: listing a journal directory and scanning one segment's records.
//!
//! Scanning never allocates more than one record's payload at a time, and a payload length is
//! checked against both [`MAX_PAYLOAD`] and the bytes left in the file before any allocation.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::{
    parse_segment_file_name, Corruption, RecordHeader, SegmentHeader, MAX_PAYLOAD,
    RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SEGMENT_SUFFIX,
};

/// Suffix of a segment being created by `Journal::reset` (see there).
pub(crate) const TMP_SUFFIX: &str = ".seg.tmp";
/// Suffix of a segment being created (header written, then renamed to `*.seg`).
pub(crate) const NEW_SUFFIX: &str = ".seg.new";

/// Sample the offset of a record into the in-memory index every this many bytes.
pub(crate) const INDEX_STRIDE: u64 = 64 << 10;

/// A segment file found in a journal directory.
#[derive(Debug, Clone)]
pub(crate) struct SegmentFile {
    pub path: PathBuf,
    pub name_seq: u64,
}

/// What a directory listing found.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Segment files sorted by their first sequence number.
    pub segments: Vec<SegmentFile>,
    /// Leftover `*.seg.tmp` files.
    pub tmp: Vec<PathBuf>,
    /// Leftover `*.seg.new` files (a crash while creating a segment).
    pub partial: Vec<PathBuf>,
    /// Segments `open` set aside because their header was damaged (`*.seg.damaged*`).
    pub damaged: Vec<PathBuf>,
}

pub(crate) fn list_dir(dir: &Path) -> Result<Listing> {
    let mut out = Listing::default();
    let rd = fs::read_dir(dir).map_err(|e| Error::io(dir, "read directory", e))?;
    for ent in rd {
        let ent = ent.map_err(|e| Error::io(dir, "read directory", e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = parse_segment_file_name(name) {
            out.segments.push(SegmentFile {
                path: ent.path(),
                name_seq: seq,
            });
        } else if name.ends_with(TMP_SUFFIX) {
            out.tmp.push(ent.path());
        } else if name.ends_with(NEW_SUFFIX) {
            out.partial.push(ent.path());
        } else if name.contains(".seg.damaged") {
            out.damaged.push(ent.path());
        }
    }
    out.segments.sort_by_key(|s| s.name_seq);
    debug_assert!(SEGMENT_SUFFIX.len() < TMP_SUFFIX.len());
    Ok(out)
}

/// Read and validate the header of a segment file.
pub(crate) fn read_header(path: &Path) -> Result<std::result::Result<SegmentHeader, Corruption>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let mut b = [0u8; SEGMENT_HEADER_LEN];
    let mut have = 0;
    while have < b.len() {
        let n = f
            .read(&mut b[have..])
            .map_err(|e| Error::io(path, "read", e))?;
        if n == 0 {
            break;
        }
        have += n;
    }
    Ok(SegmentHeader::decode(&b[..have]))
}

/// The result of scanning one segment.
#[derive(Debug)]
pub(crate) struct Scan {
    pub header: SegmentHeader,
    /// Number of valid records.
    pub records: u64,
    /// Length of the valid prefix of the file (header plus valid records).
    pub valid_len: u64,
    /// Length of the file.
    pub file_len: u64,
    /// The first invalid frame, if the valid prefix is not the whole file.
    pub problem: Option<(u64, Corruption)>,
    /// Sparse (seq, offset) samples for seeking.
    pub index: Vec<(u64, u64)>,
}

impl Scan {
    /// Sequence number of the last valid record (`first_seq - 1` when empty).
    pub fn last_seq(&self) -> u64 {
        self.header.first_seq + self.records - 1
    }
}

/// Outcome of [`scan_segment`]: either a usable header and its records, or a bad header.
#[derive(Debug)]
pub(crate) enum ScanResult {
    Scanned(Scan),
    BadHeader { file_len: u64, reason: Corruption },
}

/// Scan a segment, verifying every record, and call `visit` for each valid one in order.
/// Stops at the first invalid frame and reports it; never reads past it.
pub(crate) fn scan_segment(
    seg: &SegmentFile,
    mut visit: impl FnMut(u64, u32, &[u8]),
) -> Result<ScanResult> {
    let path = &seg.path;
    let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    let hlen = usize::try_from(file_len.min(SEGMENT_HEADER_LEN as u64)).unwrap_or(0);
    r.read_exact(&mut hb[..hlen])
        .map_err(|e| Error::io(path, "read", e))?;
    let header = match SegmentHeader::decode(&hb[..hlen]) {
        Ok(h) => h,
        Err(reason) => return Ok(ScanResult::BadHeader { file_len, reason }),
    };
    if header.first_seq != seg.name_seq {
        return Ok(ScanResult::BadHeader {
            file_len,
            reason: Corruption::NameMismatch {
                name_seq: seg.name_seq,
                header_seq: header.first_seq,
            },
        });
    }
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut expected = header.first_seq;
    let mut records = 0u64;
    let mut payload = Vec::new();
    let mut index = Vec::new();
    let mut next_sample = 0u64;
    let problem = loop {
        let left = file_len - off;
        if left == 0 {
            break None;
        }
        if left < RECORD_HEADER_LEN as u64 {
            break Some((off, Corruption::ShortRecordHeader { have: left }));
        }
        // Fast path: a whole, valid frame inside the read buffer (and inside the length the
        // file had when the scan began: a live writer may be appending) is verified and
        // visited in place.
        let avail = r.fill_buf().map_err(|e| Error::io(path, "read", e))?;
        if let Ok(h) = RecordHeader::decode(avail) {
            let flen = usize::try_from(h.frame_len()).unwrap_or(usize::MAX);
            if avail.len() >= flen
                && h.frame_len() <= left
                && h.seq == expected
                && crc32c::crc32c(&avail[4..flen]) == h.crc
                && h.check_layout(&avail[RECORD_HEADER_LEN..flen]).is_ok()
            {
                if off >= next_sample {
                    index.push((h.seq, off));
                    next_sample = off + INDEX_STRIDE;
                }
                for (seq, stream, p) in h.records(&avail[RECORD_HEADER_LEN..flen]) {
                    visit(seq, stream, p);
                }
                r.consume(flen);
                records += h.count();
                expected += h.count();
                off += h.frame_len();
                continue;
            }
        }
        // Slow path: the frame spans the buffer's end, or something is wrong with it (the
        // checks below say what).
        let mut rh = [0u8; RECORD_HEADER_LEN];
        r.read_exact(&mut rh)
            .map_err(|e| Error::io(path, "read", e))?;
        let h = match RecordHeader::decode(&rh) {
            Ok(h) => h,
            Err(c) => break Some((off, c)),
        };
        let have = left - RECORD_HEADER_LEN as u64;
        if u64::from(h.len) > have {
            break Some((off, Corruption::ShortPayload { len: h.len, have }));
        }
        debug_assert!(h.len <= MAX_PAYLOAD);
        let len = usize::try_from(h.len).unwrap_or(usize::MAX);
        payload.clear();
        payload.resize(len, 0);
        r.read_exact(&mut payload)
            .map_err(|e| Error::io(path, "read", e))?;
        if let Err(c) = h.verify(&rh, &payload) {
            break Some((off, c));
        }
        if h.seq != expected {
            break Some((
                off,
                Corruption::SeqMismatch {
                    expected,
                    found: h.seq,
                },
            ));
        }
        if off >= next_sample {
            index.push((h.seq, off));
            next_sample = off + INDEX_STRIDE;
        }
        for (seq, stream, p) in h.records(&payload) {
            visit(seq, stream, p);
        }
        records += h.count();
        expected += h.count();
        off += h.frame_len();
    };
    Ok(ScanResult::Scanned(Scan {
        header,
        records,
        valid_len: off,
        file_len,
        problem,
        index,
    }))
}

/// Find the byte offset of the frame holding record `seq` in a segment (a batch frame may
/// start before `seq`), starting from the best sample of
/// `index` and skipping payloads by seeking (headers only are read, payloads not verified).
/// Returns the offset of the frame, or of the end of the valid data if `seq` is past it.
/// The file position afterwards is unspecified: callers seek to the returned offset.
pub(crate) fn seek_to_seq(
    path: &Path,
    file: &mut File,
    index: &[(u64, u64)],
    first_seq: u64,
    seq: u64,
    end: u64,
) -> Result<u64> {
    let file_len = file
        .metadata()
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    let end = end.min(file_len);
    let (mut cur_seq, mut off) = match index.partition_point(|&(s, _)| s <= seq) {
        0 => (first_seq, SEGMENT_HEADER_LEN as u64),
        i => index[i - 1],
    };
    if cur_seq >= seq {
        return Ok(off);
    }
    // Walk the frame headers through a buffer: skipping a payload inside the buffer is no
    // syscall, so reaching a record costs a few reads, not two syscalls per record.
    let mut r = BufReader::with_capacity(64 << 10, &mut *file);
    r.seek(SeekFrom::Start(off))
        .map_err(|e| Error::io(path, "seek", e))?;
    while cur_seq < seq && off + RECORD_HEADER_LEN as u64 <= end {
        let mut rh = [0u8; RECORD_HEADER_LEN];
        r.read_exact(&mut rh)
            .map_err(|e| Error::io(path, "read", e))?;
        let h = RecordHeader::decode(&rh).map_err(|reason| Error::Corrupt {
            path: path.to_path_buf(),
            offset: off,
            reason,
        })?;
        if cur_seq + h.count() > seq {
            // A batch frame holding `seq`: its offset (readers skip its earlier records).
            return Ok(off);
        }
        r.seek_relative(i64::from(h.len))
            .map_err(|e| Error::io(path, "seek", e))?;
        off += h.frame_len();
        cur_seq += h.count();
    }
    Ok(off)
}
