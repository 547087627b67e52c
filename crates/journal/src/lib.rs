//! The durable, segmented, append-only journal of replication messages.
//!
//! A journal is a directory of segment files (`00000000000000000001.seg`, named by the
//! sequence number of their first record). Each segment starts with a header (magic, format
//! version, first seq, segment index, journal id, epoch, CRC32C) followed by records framed
//! with length, stream id, sequence number and a CRC32C over header and payload. The journal
//! never interprets payloads.
//!
//! What it promises:
//! - **Gapless order**: `append` accepts exactly `last_seq() + 1`; anything else is
//!   [`Error::OutOfOrder`] (duplicates are refused, not silently accepted; see
//!   [`Error::is_duplicate`]).
//! - **Durability per policy**: [`Journal::commit`] writes buffered records to the kernel and
//!   fsyncs according to [`FsyncPolicy`]; it returns [`Journal::durable_seq`], the highest
//!   sequence number that survives a crash of the host (for [`FsyncPolicy::Never`], of the
//!   process only).
//! - **Honest recovery**: [`Journal::open`] scans the segments, cuts a torn or corrupt tail of
//!   the last segment back to its last valid record and says so in [`Recovery`]; damage
//!   anywhere else is a hard [`Error::Corrupt`] naming the file and offset.
//! - **Bounded reads**: a length field is checked against [`format::MAX_PAYLOAD`] and the bytes
//!   left in the file before anything is allocated.
//!
//! Thread safety: [`Journal`] has a `&mut self` API; share it between threads with
//! [`SharedJournal`], which adds group commit (one fsync covers every appender waiting).
//!
//! The layout and its version rules are documented in `docs/journal-format.md`.
//!
//! ```
//! use journal::{FsyncPolicy, Journal, JournalOptions, RecordIter};
//!
//! # fn main() -> Result<(), journal::Error> {
//! # let tmp = std::env::temp_dir().join(format!("journal-doc-{}", std::process::id()));
//! # let _ = std::fs::remove_dir_all(&tmp);
//! let opts = JournalOptions { fsync: FsyncPolicy::Always, ..JournalOptions::default() };
//! let (mut j, recovery) = Journal::open(&tmp, opts.clone())?;
//! if !recovery.is_clean() {
//!     eprintln!("journal repaired: {recovery}"); // never silent
//! }
//! j.append(7, j.last_seq() + 1, b"first")?;
//! let seq = j.append_next(7, b"second")?; // the journal picks last_seq() + 1
//! assert_eq!(j.commit()?, seq); // durable (fsynced) up to `seq`
//! assert!(j.append(7, 9, b"gap").is_err()); // typed error: seq must be last_seq() + 1
//!
//! // Primary -> backup: ship frames as stored, append them without re-encoding.
//! let batch = j.read_raw_from(1, 64 << 10)?;
//! # let backup_dir = tmp.join("backup");
//! let (mut backup, _) = Journal::open(&backup_dir, opts)?;
//! backup.append_raw(&batch.bytes)?;
//! backup.commit()?;
//!
//! // Readers: on the open journal, or from another process without the lock.
//! let records: Vec<_> = j.read_from(1)?.collect::<Result<_, _>>()?;
//! assert_eq!(records[1].payload, b"second");
//! assert_eq!(RecordIter::open_dir(&backup_dir, 1)?.count(), 2);
//!
//! // Same records on both sides: same digest.
//! drop((j, backup));
//! let (a, b) = (journal::inspect::summarize(&tmp)?, journal::inspect::summarize(&backup_dir)?);
//! assert_eq!((a.records, a.gaps, &a.digest), (2, 0, &b.digest));
//! # std::fs::remove_dir_all(&tmp).ok();
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod error;
pub mod format;
pub mod inspect;
mod reader;
mod segment;
mod shared;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

pub use error::{Error, Result};
pub use format::Corruption;
pub use reader::{RecordIter, RecordRef};
pub use shared::SharedJournal;

use format::{
    encode_record, segment_file_name, SegmentHeader, MAX_PAYLOAD, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use segment::{
    list_dir, read_header, scan_segment, ScanResult, SegmentFile, INDEX_STRIDE, TMP_SUFFIX,
};

/// Upper bound on the bytes one [`Journal::read_raw_into`] call reads at once, whatever
/// `max_bytes` says (a single larger frame is still returned whole).
pub const MAX_RAW_BATCH: usize = 64 << 20;

/// Name of the lock file inside a journal directory.
pub const LOCK_FILE: &str = "LOCK";

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number (gapless per journal, starting at 1 unless configured otherwise).
    pub seq: u64,
    /// Stream id (opaque to the journal).
    pub stream: u32,
    /// Payload (opaque to the journal).
    pub payload: Vec<u8>,
}

/// When [`Journal::commit`] calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every commit that wrote something fsyncs: `commit()` returns `last_seq()`.
    Always,
    /// A commit fsyncs once at least this many records are written but not yet synced.
    EveryN(u64),
    /// A commit fsyncs when records are pending and the last fsync is at least this old.
    /// The check happens at `commit()` time only: call `commit()` periodically.
    Interval(Duration),
    /// Never fsync (except [`Journal::sync`] on explicit request). `durable_seq()` then means
    /// "written to the kernel": it survives a crash of the process, not of the host.
    Never,
}

/// Options of [`Journal::open`].
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// fsync policy of [`Journal::commit`].
    pub fsync: FsyncPolicy,
    /// A segment is sealed and a new one started once it would grow past this size
    /// (a segment always holds at least one record, whatever its size).
    pub segment_bytes: u64,
    /// Largest payload `append` accepts (at most [`format::MAX_PAYLOAD`]).
    pub max_payload: u32,
    /// Sequence number of the first record of a journal created by this `open`.
    pub start_seq: u64,
    /// Buffered bytes that trigger a write to the kernel before `commit()`.
    pub write_buffer: usize,
    /// Verify every record of the sealed segments on open (default). When false, `open`
    /// checks only their headers and file-name continuity (fast for large journals); damage
    /// inside a sealed segment then surfaces as [`Error::Corrupt`] when it is read. The last
    /// segment is always verified record by record.
    pub verify_sealed: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            fsync: FsyncPolicy::Always,
            segment_bytes: 64 << 20,
            max_payload: 16 << 20,
            start_seq: 1,
            write_buffer: 1 << 20,
            verify_sealed: true,
        }
    }
}

/// Where a torn or corrupt tail was cut.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TailCut {
    /// The segment file.
    pub file: PathBuf,
    /// Offset of the first byte removed.
    pub offset: u64,
    /// Why the data from there on was not valid.
    pub reason: Corruption,
}

/// What [`Journal::open`] found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// True when the directory held no journal and a new one was created.
    pub created: bool,
    /// Segment files scanned.
    pub segments_scanned: usize,
    /// Valid records found.
    pub records: u64,
    /// First sequence number held (for an empty journal: the next one to append).
    pub first_seq: u64,
    /// Last valid sequence number (`first_seq - 1` when empty).
    pub last_valid_seq: u64,
    /// Bytes removed from the tail (a cut tail plus removed segment files).
    pub bytes_cut: u64,
    /// The tail cut, if any.
    pub cut: Option<TailCut>,
    /// Files removed: a last segment whose header was torn, leftovers of an interrupted
    /// [`Journal::reset`].
    pub removed_files: Vec<PathBuf>,
    /// Where a removed last segment that held more than a header was moved
    /// (`NAME.seg.damaged`), rather than deleted.
    pub set_aside: Vec<PathBuf>,
}

impl Recovery {
    /// True when nothing had to be cut or removed.
    pub fn is_clean(&self) -> bool {
        self.bytes_cut == 0 && self.cut.is_none() && self.removed_files.is_empty()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.created {
            return write!(
                f,
                "created a new journal starting at seq {}",
                self.first_seq
            );
        }
        write!(
            f,
            "scanned {} segment(s): {} record(s), seq {}..={}",
            self.segments_scanned, self.records, self.first_seq, self.last_valid_seq
        )?;
        if let Some(c) = &self.cut {
            write!(
                f,
                "; cut torn tail of {} at offset {} ({})",
                c.file.display(),
                c.offset,
                c.reason
            )?;
        }
        for p in &self.removed_files {
            write!(f, "; removed {}", p.display())?;
        }
        for p in &self.set_aside {
            write!(f, " (kept as {})", p.display())?;
        }
        if self.bytes_cut > 0 {
            write!(f, "; {} byte(s) cut", self.bytes_cut)?;
        }
        Ok(())
    }
}

/// What [`Journal::truncate_before`] removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Truncation {
    /// Segment files removed.
    pub segments_removed: usize,
    /// Bytes freed.
    pub bytes_removed: u64,
    /// First sequence number still held.
    pub first_seq: u64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Records appended since open.
    pub records_appended: u64,
    /// Bytes written to segment files since open (frames and headers).
    pub bytes_written: u64,
    /// fdatasync calls on segment files since open.
    pub fsyncs: u64,
    /// Segments created since open.
    pub segments_created: u64,
}

/// What [`Journal::append_raw_idempotent`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawAppend {
    /// Frames already held (identical) and skipped.
    pub skipped: u64,
    /// Frames appended.
    pub appended: u64,
    /// `last_seq()` afterwards.
    pub last_seq: u64,
}

/// What [`Journal::read_raw_into`] appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRange {
    /// Sequence number of the first frame (0 when empty).
    pub first_seq: u64,
    /// Sequence number of the last frame (0 when empty).
    pub last_seq: u64,
    /// Number of frames.
    pub records: u64,
}

/// A batch of whole record frames, exactly as stored, for shipping (see
/// [`Journal::read_raw_from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// Sequence number of the first frame (0 when empty).
    pub first_seq: u64,
    /// Sequence number of the last frame (0 when empty).
    pub last_seq: u64,
    /// Number of frames.
    pub records: u64,
    /// The frames, back to back; decode with [`format::frames`].
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
struct SegmentInfo {
    path: PathBuf,
    header: SegmentHeader,
    /// Bytes in the file (for the active segment: written plus buffered).
    len: u64,
    /// Records held.
    records: u64,
    /// Sparse (seq, offset) samples.
    index: Vec<(u64, u64)>,
}

impl SegmentInfo {
    fn last_seq(&self) -> u64 {
        self.header.first_seq + self.records - 1
    }
}

/// A journal opened for writing. See the crate documentation.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    opts: JournalOptions,
    _lock: File,
    epoch: u64,
    /// Every segment, oldest first; the last one is the active segment.
    segments: Vec<SegmentInfo>,
    active: Arc<File>,
    buf: Vec<u8>,
    last_seq: u64,
    written_seq: u64,
    durable_seq: u64,
    unsynced: u64,
    last_sync: Instant,
    failed: Option<String>,
    stats: Stats,
}

impl Journal {
    /// Open (or create) the journal in `dir`, recovering its tail. See [`Recovery`].
    pub fn open(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<(Journal, Recovery)> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, "create directory", e))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, "open", e))?;
        try_lock(&lock).map_err(|e| match e.kind() {
            std::io::ErrorKind::WouldBlock => Error::Locked { dir: dir.clone() },
            _ => Error::io(&lock_path, "flock", e),
        })?;
        let mut rec = Recovery {
            created: false,
            segments_scanned: 0,
            records: 0,
            first_seq: 0,
            last_valid_seq: 0,
            bytes_cut: 0,
            cut: None,
            removed_files: Vec::new(),
            set_aside: Vec::new(),
        };
        let sync = opts.fsync != FsyncPolicy::Never;
        let mut listing = list_dir(&dir)?;
        complete_pending_reset(&dir, &mut listing, &mut rec, sync)?;

        // A last segment whose header never made it to disk completely is a torn tail.
        if let Some(last) = listing.segments.last() {
            if let Err(reason) = read_header(&last.path)? {
                if !matches!(reason, Corruption::UnsupportedVersion { .. }) {
                    let len = file_len(&last.path)?;
                    let last = listing.segments.pop().unwrap_or_else(|| unreachable!());
                    if len > SEGMENT_HEADER_LEN as u64 {
                        // It may hold records written before its header got damaged: keep the
                        // bytes for forensics instead of deleting them.
                        let aside = aside_path(&last.path);
                        fs::rename(&last.path, &aside)
                            .map_err(|e| Error::io(&last.path, "rename", e))?;
                        rec.set_aside.push(aside);
                    } else {
                        remove_file(&last.path)?;
                    }
                    rec.bytes_cut += len;
                    rec.cut = Some(TailCut {
                        file: last.path.clone(),
                        offset: 0,
                        reason,
                    });
                    rec.removed_files.push(last.path.clone());
                    if listing.segments.is_empty() {
                        // Keep the sequence numbering the file name promised.
                        let (j, mut r) =
                            Self::create(dir, opts, lock, last.name_seq, 0, new_journal_id(), 0)?;
                        r.created = false;
                        r.bytes_cut = rec.bytes_cut;
                        r.cut = rec.cut;
                        r.removed_files = rec.removed_files;
                        r.set_aside = rec.set_aside;
                        r.segments_scanned = 1;
                        return Ok((j, r));
                    }
                }
            }
        }
        if listing.segments.is_empty() {
            let start = opts.start_seq.max(1);
            return Self::create(dir, opts, lock, start, 0, new_journal_id(), 0);
        }

        let n = listing.segments.len();
        let mut segments: Vec<SegmentInfo> = Vec::with_capacity(n);
        for (i, seg) in listing.segments.iter().enumerate() {
            let is_last = i + 1 == n;
            if !is_last && !opts.verify_sealed {
                let header = read_header(&seg.path)?.map_err(|reason| Error::Corrupt {
                    path: seg.path.clone(),
                    offset: 0,
                    reason,
                })?;
                let next_first = listing.segments[i + 1].name_seq;
                let prev_last = segments.last().map(SegmentInfo::last_seq);
                let continues = prev_last.is_none_or(|l| header.first_seq == l + 1);
                if header.first_seq != seg.name_seq || !continues || next_first < header.first_seq {
                    return Err(Error::SegmentGap {
                        path: seg.path.clone(),
                        found: header.first_seq,
                        prev_last: prev_last.unwrap_or(0),
                    });
                }
                rec.segments_scanned += 1;
                rec.records += next_first - header.first_seq;
                segments.push(SegmentInfo {
                    path: seg.path.clone(),
                    header,
                    len: file_len(&seg.path)?,
                    records: next_first - header.first_seq,
                    index: Vec::new(),
                });
                continue;
            }
            let scan = match scan_segment(seg, |_, _, _| {})? {
                ScanResult::Scanned(s) => s,
                ScanResult::BadHeader { reason, .. } => {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason,
                    })
                }
            };
            rec.segments_scanned += 1;
            if let Some(prev) = segments.last() {
                let h = &scan.header;
                let p = &prev.header;
                if h.journal_id != p.journal_id {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: Corruption::ForeignSegment {
                            expected: p.journal_id,
                            found: h.journal_id,
                        },
                    });
                }
                if h.first_seq != prev.last_seq() + 1 {
                    return Err(Error::SegmentGap {
                        path: seg.path.clone(),
                        found: h.first_seq,
                        prev_last: prev.last_seq(),
                    });
                }
                if h.index != p.index + 1 {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset: 0,
                        reason: Corruption::IndexMismatch {
                            expected: p.index + 1,
                            found: h.index,
                        },
                    });
                }
            }
            let mut len = scan.file_len;
            if let Some((offset, reason)) = scan.problem {
                if !is_last {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset,
                        reason,
                    });
                }
                cut_file(&seg.path, scan.valid_len, sync)?;
                rec.bytes_cut += scan.file_len - scan.valid_len;
                rec.cut = Some(TailCut {
                    file: seg.path.clone(),
                    offset,
                    reason,
                });
                len = scan.valid_len;
            }
            rec.records += scan.records;
            segments.push(SegmentInfo {
                path: seg.path.clone(),
                header: scan.header,
                len,
                records: scan.records,
                index: scan.index,
            });
        }
        let last = segments.last().unwrap_or_else(|| unreachable!());
        let last_seq = last.last_seq();
        let epoch = last.header.epoch;
        rec.first_seq = segments[0].header.first_seq;
        rec.last_valid_seq = last_seq;
        let active = OpenOptions::new()
            .append(true)
            .open(&last.path)
            .map_err(|e| Error::io(&last.path, "open", e))?;
        let mut stats = Stats::default();
        if sync {
            // Records written by a process that crashed may still sit in the page cache.
            active
                .sync_data()
                .map_err(|e| Error::io(&last.path, "fdatasync", e))?;
            stats.fsyncs += 1;
            if !rec.removed_files.is_empty() {
                sync_dir(&dir)?;
            }
        }
        let j = Journal {
            dir,
            opts,
            _lock: lock,
            epoch,
            segments,
            active: Arc::new(active),
            buf: Vec::new(),
            last_seq,
            written_seq: last_seq,
            durable_seq: last_seq,
            unsynced: 0,
            last_sync: Instant::now(),
            failed: None,
            stats,
        };
        Ok((j, rec))
    }

    /// Create a journal (no segment exists) whose first record will be `first_seq`.
    #[allow(clippy::too_many_arguments)]
    fn create(
        dir: PathBuf,
        opts: JournalOptions,
        lock: File,
        first_seq: u64,
        index: u64,
        journal_id: u64,
        epoch: u64,
    ) -> Result<(Journal, Recovery)> {
        let header = SegmentHeader {
            first_seq,
            index,
            journal_id,
            epoch,
        };
        let sync = opts.fsync != FsyncPolicy::Never;
        let (info, file) = create_segment(&dir, header, sync, false)?;
        let j = Journal {
            dir,
            opts,
            _lock: lock,
            epoch,
            segments: vec![info],
            active: Arc::new(file),
            buf: Vec::new(),
            last_seq: first_seq - 1,
            written_seq: first_seq - 1,
            durable_seq: first_seq - 1,
            unsynced: 0,
            last_sync: Instant::now(),
            failed: None,
            stats: Stats {
                segments_created: 1,
                bytes_written: SEGMENT_HEADER_LEN as u64,
                fsyncs: u64::from(sync),
                ..Stats::default()
            },
        };
        let rec = Recovery {
            created: true,
            segments_scanned: 0,
            records: 0,
            first_seq,
            last_valid_seq: first_seq - 1,
            bytes_cut: 0,
            cut: None,
            removed_files: Vec::new(),
            set_aside: Vec::new(),
        };
        Ok((j, rec))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &JournalOptions {
        &self.opts
    }

    /// Sequence number of the last record appended (possibly still buffered);
    /// `first_seq() - 1` when the journal holds no record (0 for a new journal).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Sequence number of the last record written to the kernel.
    pub fn written_seq(&self) -> u64 {
        self.written_seq
    }

    /// The durable watermark: every record up to it survives a host crash (process crash only
    /// under [`FsyncPolicy::Never`]). A backup resumes from `durable_seq() + 1`.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// First sequence number held (after retention); if the journal is empty, the next one.
    pub fn first_seq(&self) -> u64 {
        self.segments[0].header.first_seq
    }

    /// Counters since open.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Epoch of the journal (incremented by each [`Journal::reset`]).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    fn check_ok(&self) -> Result<()> {
        match &self.failed {
            None => Ok(()),
            Some(cause) => Err(Error::Failed {
                dir: self.dir.clone(),
                cause: cause.clone(),
            }),
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        if self.failed.is_none() {
            self.failed = Some(e.to_string());
        }
        e
    }

    /// Append one record. `seq` must be `last_seq() + 1`. The record is buffered; it reaches
    /// the kernel at the latest at the next [`Journal::commit`].
    pub fn append(&mut self, stream: u32, seq: u64, payload: &[u8]) -> Result<()> {
        self.check_ok()?;
        self.check_next(seq)?;
        if payload.len()
            > usize::try_from(self.opts.max_payload.min(MAX_PAYLOAD)).unwrap_or(usize::MAX)
        {
            return Err(Error::TooLarge {
                dir: self.dir.clone(),
                seq,
                len: payload.len(),
                max: self.opts.max_payload.min(MAX_PAYLOAD),
            });
        }
        let frame = (RECORD_HEADER_LEN + payload.len()) as u64;
        self.before_frame(seq, frame)?;
        encode_record(&mut self.buf, seq, stream, payload);
        self.after_frame(seq, frame)
    }

    /// Append `payload` with the next sequence number and return it.
    pub fn append_next(&mut self, stream: u32, payload: &[u8]) -> Result<u64> {
        let seq = self.last_seq + 1;
        self.append(stream, seq, payload)?;
        Ok(seq)
    }

    /// Append records `(stream, seq, payload)` in order and return the last sequence number.
    /// Stops at the first refused record; the records before it stay appended.
    pub fn append_batch<'a, I>(&mut self, records: I) -> Result<u64>
    where
        I: IntoIterator<Item = (u32, u64, &'a [u8])>,
    {
        for (stream, seq, payload) in records {
            self.append(stream, seq, payload)?;
        }
        Ok(self.last_seq)
    }

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
            if f.payload.len() > usize::try_from(max).unwrap_or(usize::MAX) {
                return Err(Error::TooLarge {
                    dir: self.dir.clone(),
                    seq: f.seq,
                    len: f.payload.len(),
                    max,
                });
            }
            spans.push((f.seq, off, n));
            expected += 1;
            off += n;
        }
        for (seq, off, n) in spans {
            let frame = n as u64;
            self.before_frame(seq, frame)?;
            self.buf.extend_from_slice(&frames[off..off + n]);
            self.after_frame(seq, frame)?;
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

    fn check_next(&self, seq: u64) -> Result<()> {
        let expected = self.last_seq + 1;
        if seq != expected {
            return Err(Error::OutOfOrder {
                dir: self.dir.clone(),
                expected,
                got: seq,
            });
        }
        Ok(())
    }

    /// Roll to a new segment if the frame does not fit, and record an index sample.
    fn before_frame(&mut self, seq: u64, frame: u64) -> Result<()> {
        let active = self.segments.last().unwrap_or_else(|| unreachable!());
        if active.records > 0 && active.len + frame > self.opts.segment_bytes {
            self.roll(seq)?;
        }
        let active = self.segments.last_mut().unwrap_or_else(|| unreachable!());
        let next_sample = active.index.last().map_or(0, |&(_, o)| o + INDEX_STRIDE);
        if active.len >= next_sample {
            active.index.push((seq, active.len));
        }
        Ok(())
    }

    fn after_frame(&mut self, seq: u64, frame: u64) -> Result<()> {
        let active = self.segments.last_mut().unwrap_or_else(|| unreachable!());
        active.len += frame;
        active.records += 1;
        self.last_seq = seq;
        self.stats.records_appended += 1;
        if self.buf.len() >= self.opts.write_buffer {
            self.flush()?;
        }
        Ok(())
    }

    /// Seal the active segment and start a new one whose first record is `first_seq`.
    fn roll(&mut self, first_seq: u64) -> Result<()> {
        self.flush()?;
        let sync = self.opts.fsync != FsyncPolicy::Never;
        if sync {
            // Sealed segments are always complete on disk: only the last one can be torn.
            self.sync_active()?;
        }
        let prev = self
            .segments
            .last()
            .unwrap_or_else(|| unreachable!())
            .header;
        let header = SegmentHeader {
            first_seq,
            index: prev.index + 1,
            journal_id: prev.journal_id,
            epoch: self.epoch,
        };
        let (info, file) =
            create_segment(&self.dir, header, sync, false).map_err(|e| self.fail(e))?;
        self.stats.segments_created += 1;
        self.stats.bytes_written += SEGMENT_HEADER_LEN as u64;
        if sync {
            self.stats.fsyncs += 1;
        }
        self.segments.push(info);
        self.active = Arc::new(file);
        Ok(())
    }

    /// Write buffered records to the kernel (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        self.check_ok()?;
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = &self.segments.last().unwrap_or_else(|| unreachable!()).path;
        if let Err(e) = (&*self.active).write_all(&self.buf) {
            let e = Error::io(path, "write", e);
            return Err(self.fail(e));
        }
        self.stats.bytes_written += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced += self.last_seq - self.written_seq;
        self.written_seq = self.last_seq;
        if self.opts.fsync == FsyncPolicy::Never {
            self.durable_seq = self.written_seq;
        }
        Ok(())
    }

    fn sync_active(&mut self) -> Result<()> {
        if self.durable_seq == self.written_seq && self.unsynced == 0 {
            return Ok(());
        }
        let path = &self.segments.last().unwrap_or_else(|| unreachable!()).path;
        if let Err(e) = self.active.sync_data() {
            // After a failed fsync the page cache state is unknown: never retry, fail.
            let e = Error::io(path, "fdatasync", e);
            return Err(self.fail(e));
        }
        self.stats.fsyncs += 1;
        self.durable_seq = self.written_seq;
        self.unsynced = 0;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn sync_due(&self) -> bool {
        if self.written_seq == self.durable_seq && self.unsynced == 0 {
            return false;
        }
        match self.opts.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => self.unsynced >= n.max(1),
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        }
    }

    /// Group commit: write buffered records to the kernel, fsync if the policy says so, and
    /// return the durable watermark ([`Journal::durable_seq`]).
    pub fn commit(&mut self) -> Result<u64> {
        self.flush()?;
        if self.sync_due() {
            self.sync_active()?;
        }
        Ok(self.durable_seq)
    }

    /// Write and fsync everything appended, whatever the policy; returns `last_seq()`.
    pub fn sync(&mut self) -> Result<u64> {
        self.flush()?;
        self.sync_active()?;
        Ok(self.durable_seq)
    }

    /// Iterate over records from `seq` on, up to the last one appended when this is called
    /// (buffered records are written to the kernel first). The iterator reads the segment
    /// files itself and borrows nothing from the journal. `seq` below [`Journal::first_seq`]
    /// is [`Error::NotHeld`]; `seq` past the end yields nothing.
    pub fn read_from(&mut self, seq: u64) -> Result<RecordIter> {
        self.flush()?;
        let first = self.first_seq();
        if seq < first {
            return Err(self.not_held(seq));
        }
        let segs = self
            .segments
            .iter()
            .filter(|s| s.records > 0 && s.last_seq() >= seq)
            .map(|s| reader::SegRef {
                path: s.path.clone(),
                first_seq: s.header.first_seq,
                index: s.index.clone(),
            })
            .collect();
        Ok(RecordIter::new(
            self.dir.clone(),
            segs,
            seq,
            self.written_seq,
        ))
    }

    fn not_held(&self, seq: u64) -> Error {
        Error::NotHeld {
            dir: self.dir.clone(),
            seq,
            first: self.first_seq(),
            last: self.last_seq,
        }
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

    /// Retention: remove every segment whose records all have a sequence number below `seq`
    /// (typically the cut of a checkpoint the backups hold). Only whole sealed segments are
    /// removed; the active segment is always kept, so `last_seq()` is unchanged.
    pub fn truncate_before(&mut self, seq: u64) -> Result<Truncation> {
        self.check_ok()?;
        // Segments [0, k) hold only seqs below `seq` (their successor starts at or before it).
        let k = self
            .segments
            .windows(2)
            .take_while(|w| w[1].header.first_seq <= seq)
            .count();
        let mut removed = 0usize;
        let mut bytes = 0u64;
        let mut result = Ok(());
        // Oldest first, so a crash or an error midway leaves a contiguous suffix; the list
        // only drops what is really gone, so a failed removal leaves the journal usable.
        for s in &self.segments[..k] {
            if let Err(e) = remove_file(&s.path) {
                result = Err(e);
                break;
            }
            removed += 1;
            bytes += s.len;
        }
        self.segments.drain(..removed);
        result?;
        if removed > 0 && self.opts.fsync != FsyncPolicy::Never {
            sync_dir(&self.dir)?;
        }
        Ok(Truncation {
            segments_removed: removed,
            bytes_removed: bytes,
            first_seq: self.first_seq(),
        })
    }

    /// Discard every record and restart the journal so that the next append is `next_seq`
    /// (a backup re-seeded from a checkpoint). Atomic across crashes: the new segment is
    /// written as `*.seg.tmp` first; `open` completes an interrupted reset.
    pub fn reset(&mut self, next_seq: u64) -> Result<()> {
        self.check_ok()?;
        let next_seq = next_seq.max(1);
        self.buf.clear();
        let sync = self.opts.fsync != FsyncPolicy::Never;
        let prev = self
            .segments
            .last()
            .unwrap_or_else(|| unreachable!())
            .header;
        let header = SegmentHeader {
            first_seq: next_seq,
            index: 0,
            journal_id: prev.journal_id,
            epoch: self.epoch + 1,
        };
        let (mut info, file) =
            create_segment(&self.dir, header, sync, true).map_err(|e| self.fail(e))?;
        let tmp = info.path.clone();
        for s in std::mem::take(&mut self.segments) {
            remove_file(&s.path).map_err(|e| self.fail(e))?;
        }
        let final_path = self.dir.join(segment_file_name(next_seq));
        fs::rename(&tmp, &final_path).map_err(|e| self.fail(Error::io(&tmp, "rename", e)))?;
        if sync {
            sync_dir(&self.dir)?;
        }
        info.path = final_path;
        self.segments.push(info);
        self.active = Arc::new(file);
        self.epoch += 1;
        self.last_seq = next_seq - 1;
        self.written_seq = next_seq - 1;
        self.durable_seq = next_seq - 1;
        self.unsynced = 0;
        self.stats.segments_created += 1;
        Ok(())
    }

    /// For [`SharedJournal`]: what an fsync outside the lock must cover.
    fn sync_ticket(&mut self) -> Result<Option<(Arc<File>, u64, PathBuf)>> {
        self.flush()?;
        if self.durable_seq >= self.written_seq && self.unsynced == 0 {
            return Ok(None);
        }
        let path = self
            .segments
            .last()
            .unwrap_or_else(|| unreachable!())
            .path
            .clone();
        Ok(Some((Arc::clone(&self.active), self.written_seq, path)))
    }

    /// For [`SharedJournal`]: an fsync of the ticket's file finished (or failed).
    fn sync_done(&mut self, upto: u64, result: std::io::Result<()>, path: PathBuf) -> Result<u64> {
        match result {
            Ok(()) => {
                self.stats.fsyncs += 1;
                if upto > self.durable_seq {
                    self.durable_seq = upto;
                }
                if self.written_seq == upto {
                    self.unsynced = 0;
                }
                self.last_sync = Instant::now();
                Ok(self.durable_seq)
            }
            Err(e) => Err(self.fail(Error::io(path, "fdatasync", e))),
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Best effort: buffered records reach the kernel; the policy decides about fsync.
        if self.failed.is_none() && !self.buf.is_empty() {
            let _ = self.commit();
        }
    }
}

#[allow(clippy::incompatible_msrv)] // File::try_lock is stable since 1.89; the toolchain is newer.
fn try_lock(f: &File) -> std::io::Result<()> {
    match f.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::ErrorKind::WouldBlock.into()),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[allow(clippy::cast_possible_truncation)] // folding 128 bits into 64 on purpose
fn new_journal_id() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = t ^ (u128::from(std::process::id()) << 64);
    // Fold 128 bits into 64 and scramble; uniqueness, not secrecy, is the goal.
    let folded = (mixed as u64) ^ ((mixed >> 64) as u64);
    folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn create_segment(
    dir: &Path,
    header: SegmentHeader,
    sync: bool,
    tmp: bool,
) -> Result<(SegmentInfo, File)> {
    let mut name = segment_file_name(header.first_seq);
    if tmp {
        name = name.replace(format::SEGMENT_SUFFIX, TMP_SUFFIX);
    }
    let path = dir.join(name);
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .read(true)
        .open(&path)
        .map_err(|e| Error::io(&path, "create segment", e))?;
    f.write_all(&header.encode())
        .map_err(|e| Error::io(&path, "write", e))?;
    if sync {
        f.sync_data()
            .map_err(|e| Error::io(&path, "fdatasync", e))?;
        sync_dir(dir)?;
    }
    Ok((
        SegmentInfo {
            path,
            header,
            len: SEGMENT_HEADER_LEN as u64,
            records: 0,
            index: Vec::new(),
        },
        f,
    ))
}

/// Finish (or discard) a `reset` that a crash interrupted.
fn complete_pending_reset(
    dir: &Path,
    listing: &mut segment::Listing,
    rec: &mut Recovery,
    sync: bool,
) -> Result<()> {
    let mut best: Option<(PathBuf, SegmentHeader)> = None;
    for tmp in std::mem::take(&mut listing.tmp) {
        match read_header(&tmp)? {
            Ok(h) if best.as_ref().is_none_or(|(_, b)| h.epoch > b.epoch) => {
                if let Some((old, _)) = best.take() {
                    rec.bytes_cut += file_len(&old)?;
                    remove_file(&old)?;
                    rec.removed_files.push(old);
                }
                best = Some((tmp, h));
            }
            _ => {
                rec.bytes_cut += file_len(&tmp)?;
                remove_file(&tmp)?;
                rec.removed_files.push(tmp);
            }
        }
    }
    if let Some((tmp, h)) = best {
        for s in std::mem::take(&mut listing.segments) {
            rec.bytes_cut += file_len(&s.path)?;
            remove_file(&s.path)?;
            rec.removed_files.push(s.path);
        }
        let final_path = dir.join(segment_file_name(h.first_seq));
        fs::rename(&tmp, &final_path).map_err(|e| Error::io(&tmp, "rename", e))?;
        listing.segments.push(SegmentFile {
            path: final_path,
            name_seq: h.first_seq,
        });
    }
    if sync && !rec.removed_files.is_empty() {
        sync_dir(dir)?;
    }
    Ok(())
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
        records += 1;
        next += 1;
    }
    out.truncate(base + used);
    Ok(RawRange {
        first_seq: seq,
        last_seq: next - 1,
        records,
    })
}

/// `X.seg` -> `X.seg.damaged` (or `X.seg.damaged.N` if that exists).
fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".damaged");
    let mut p = PathBuf::from(&name);
    let mut n = 1;
    while p.exists() {
        let mut alt = name.clone();
        alt.push(format!(".{n}"));
        p = PathBuf::from(alt);
        n += 1;
    }
    p
}

fn cut_file(path: &Path, len: u64, sync: bool) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, "open", e))?;
    f.set_len(len).map_err(|e| Error::io(path, "truncate", e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io(path, "fsync", e))?;
    }
    Ok(())
}

fn file_len(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .map_err(|e| Error::io(path, "stat", e))?
        .len())
}

fn remove_file(path: &Path) -> Result<()> {
    fs::remove_file(path).map_err(|e| Error::io(path, "remove", e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, "fsync directory", e))
}
