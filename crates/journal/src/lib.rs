//! The durable, segmented, append-only journal of replication messages.
//!
//! A journal is a directory of segment files (`00000000000000000001.seg`, named by the
//! sequence number of their first record). Each segment starts with a header (magic, format
//! version, first seq, segment index, journal id, epoch, CRC32C) followed by records framed
//! with length, stream id, sequence number and a CRC32C over header and payload, or, since
//! format version 2, as batch frames holding a run of consecutive records under one header and
//! one CRC32C ([`Journal::append_encoded`]). The journal never interprets payloads.
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
//! - **Shipping without re-encoding**: [`Journal::read_raw_into`] hands out whole frames as
//!   stored (verified), [`Journal::append_raw`] / [`Journal::append_raw_idempotent`] append
//!   them on the other side; [`inspect::summarize`] gives a digest that is equal on two hosts
//!   holding the same records.
//!
//! Thread safety: [`Journal`] has a `&mut self` API; share it between threads with
//! [`SharedJournal`], which adds group commit (one fsync covers every appender waiting) and
//! an optional syncer thread for quiet tails ([`SharedJournal::spawn_syncer`]).
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
#![deny(missing_docs)]

mod direct;
mod error;
pub mod format;
pub mod inspect;
mod raw;
mod reader;
mod recover;
mod segment;
mod shared;
mod writer;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use error::{Error, Result};
pub use format::Corruption;
pub use reader::{RecordIter, RecordRef};
pub use shared::SharedJournal;
pub use writer::BatchWriter;

use format::{
    encode_record, segment_file_name, SegmentHeader, MAX_PAYLOAD, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use segment::{INDEX_STRIDE, NEW_SUFFIX, TMP_SUFFIX};

/// Upper bound on the bytes one [`Journal::read_raw_into`] call reads at once, whatever
/// `max_bytes` says (a single larger frame is still returned whole).
pub const MAX_RAW_BATCH: usize = 64 << 20;

/// Encoded bytes of records per batch frame written by [`Journal::append_encoded`] (a single
/// larger record gets a frame of its own).
pub const BATCH_MAX_BYTES: usize = 1 << 20;

/// Runs of at least this many encoded bytes given to [`Journal::append_encoded_counted`] are
/// written from the caller's buffer instead of being copied into the write buffer.
pub const DIRECT_WRITE_BYTES: usize = 32 << 10;

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
    /// Append with `O_DIRECT` (default false): the write buffer's whole 4 KiB blocks go to the
    /// device without the page cache's copy, delayed allocation and writeback (about half the
    /// CPU per byte on ext4 here), partial blocks at either end through the page cache, so
    /// the file always ends at a record's end and no block is written both ways. The
    /// buffer is written once it holds `write_buffer` bytes and whenever everything must reach
    /// the kernel: a commit that fsyncs, every commit under [`FsyncPolicy::Never`], `flush`,
    /// `sync`, a read, a new segment. A commit that does not fsync writes nothing else: a
    /// reader of the live journal sees records from then on (always every durable one). The
    /// file format, readers and what [`Journal::durable_seq`] promises are unchanged. A file
    /// system that refuses `O_DIRECT` (`EINVAL`) gets buffered appends:
    /// [`Journal::direct_io_refused`] says why.
    pub direct_io: bool,
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
            direct_io: false,
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
    /// Where bytes removed from the journal were kept rather than deleted: a last segment with
    /// a damaged header (`NAME.seg.damaged`), or a cut tail that still held well-formed
    /// records after the damage (`NAME.seg.damaged.tail-OFFSET`).
    pub set_aside: Vec<PathBuf>,
    /// Seq of a well-formed record found after the damage in the cut tail: the cut then
    /// discarded records that were written, so this was damage rather than (only) a torn
    /// write. The bytes are in `set_aside`.
    pub valid_after_cut: Option<u64>,
}

impl Recovery {
    /// Why the tail was cut, if it was.
    pub fn reason(&self) -> Option<&Corruption> {
        self.cut.as_ref().map(|c| &c.reason)
    }

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
        if let Some(seq) = self.valid_after_cut {
            write!(
                f,
                "; the cut tail still held well-formed records (seq {seq}): damage, not only a torn write"
            )?;
        }
        for p in &self.set_aside {
            write!(f, "; kept {}", p.display())?;
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
    /// `O_DIRECT` state of the active segment ([`JournalOptions::direct_io`]).
    direct: Option<direct::Direct>,
    /// Why `direct_io` was asked for but is not used.
    direct_refused: Option<String>,
}

impl Journal {
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

    /// True when the active segment is written with `O_DIRECT` ([`JournalOptions::direct_io`]).
    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
    }

    /// Why [`JournalOptions::direct_io`] was asked for but the journal writes through the page
    /// cache (the file system refused `O_DIRECT`); `None` otherwise.
    pub fn direct_io_refused(&self) -> Option<&str> {
        self.direct_refused.as_deref()
    }

    /// Bytes of the write buffer not yet written to the kernel.
    fn pending_bytes(&self) -> usize {
        self.buf.len() - self.direct.as_ref().map_or(0, direct::Direct::skip)
    }

    /// Set up `O_DIRECT` writes of the active segment (when the options ask for them), or note
    /// why not. Called when a segment becomes the active one (nothing buffered for it yet).
    fn attach_direct(&mut self) -> Result<()> {
        self.direct = None;
        if !self.opts.direct_io || self.direct_refused.is_some() {
            return Ok(());
        }
        let seg = self.segments.last().unwrap_or_else(|| unreachable!());
        self.buf.reserve(self.opts.write_buffer + 3 * direct::ALIGN);
        match direct::Direct::open(&seg.path, seg.len, &mut self.buf) {
            Ok(d) => self.direct = Some(d),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.buf.clear();
                self.direct_refused = Some(format!(
                    "{}: the file system refuses O_DIRECT ({e}); appending through the page cache",
                    seg.path.display()
                ));
            }
            Err(e) => return Err(Error::io(&seg.path, "open with O_DIRECT", e)),
        }
        Ok(())
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

    /// Append consecutive records `first_seq, first_seq + 1, ...` given in their batch encoding
    /// `(stream:u32 len:u32 payload)*` (the `Data` record encoding of the wire protocol) as
    /// batch frames ([`format::FLAG_BATCH`]): one header and one CRC32C per frame of up to
    /// [`BATCH_MAX_BYTES`] of encoded records (a larger record gets a frame of its own).
    /// `first_seq` must be `last_seq() + 1`; the whole input is checked (layout, every payload
    /// against the limit) before anything is appended. Returns the last seq.
    pub fn append_encoded(&mut self, first_seq: u64, encoded: &[u8]) -> Result<u64> {
        self.check_ok()?;
        self.check_next(first_seq)?;
        let max = self.opts.max_payload.min(MAX_PAYLOAD);
        let max_len = usize::try_from(max).unwrap_or(usize::MAX);
        // Check everything first and cut the input into frames: (start, end, count).
        let mut cuts: Vec<(usize, usize, u32)> = Vec::new();
        let (mut start, mut off, mut count, mut seq) = (0usize, 0usize, 0u32, first_seq);
        while off < encoded.len() {
            let rest = &encoded[off..];
            let bad = || Error::BadFrame {
                dir: self.dir.clone(),
                offset: off,
                reason: Corruption::BadBatch {
                    count: 0,
                    len: u32::try_from(encoded.len()).unwrap_or(u32::MAX),
                },
            };
            let h = rest.get(..format::BATCH_RECORD_OVERHEAD).ok_or_else(bad)?;
            let len = usize::try_from(u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")))
                .unwrap_or(usize::MAX);
            if len > max_len {
                return Err(Error::TooLarge {
                    dir: self.dir.clone(),
                    seq,
                    len,
                    max,
                });
            }
            let n = format::BATCH_RECORD_OVERHEAD + len;
            if rest.len() < n {
                return Err(bad());
            }
            if count > 0 && (off + n - start > BATCH_MAX_BYTES || count == u32::MAX) {
                cuts.push((start, off, count));
                start = off;
                count = 0;
            }
            off += n;
            count += 1;
            seq += 1;
        }
        if count > 0 {
            cuts.push((start, off, count));
        }
        let mut seq = first_seq;
        for (a, b, count) in cuts {
            let frame = (RECORD_HEADER_LEN + (b - a)) as u64;
            self.before_frame(seq, frame)?;
            format::encode_batch(&mut self.buf, seq, count, &encoded[a..b]);
            seq += u64::from(count);
            self.after_frames(seq - 1, u64::from(count), frame)?;
        }
        Ok(self.last_seq)
    }

    /// [`Journal::append_encoded`] for a run whose layout the caller has established:
    /// `encoded` holds exactly `count` records in the batch encoding (built record by record
    /// with the encoding's writer, or a `transport::DataBatch`, validated when it was decoded).
    /// A run of at most [`BATCH_MAX_BYTES`] and at most the payload limit is stored as one batch
    /// frame without walking its records (no record can exceed the limit when the whole run
    /// does not), and a run of [`DIRECT_WRITE_BYTES`] or more is written to the kernel straight
    /// from `encoded` (no copy into the write buffer); any other run goes through
    /// [`Journal::append_encoded`]. The frame's CRC32C covers it as usual. Debug builds check
    /// `count`; a wrong `count` is a caller bug that `open` later reports as a corrupt batch
    /// frame (and cuts there).
    pub fn append_encoded_counted(
        &mut self,
        first_seq: u64,
        count: u32,
        encoded: &[u8],
    ) -> Result<u64> {
        let max = self.opts.max_payload.min(MAX_PAYLOAD);
        let fits = u32::try_from(encoded.len()).is_ok_and(|n| n <= max);
        if count == 0
            || encoded.len() > BATCH_MAX_BYTES
            || !fits
            || encoded.len() < count as usize * format::BATCH_RECORD_OVERHEAD
        {
            return self.append_encoded(first_seq, encoded);
        }
        debug_assert_eq!(
            format::batch_count(encoded),
            Some(count),
            "append_encoded_counted: the run does not hold {count} records"
        );
        self.check_ok()?;
        self.check_next(first_seq)?;
        let frame = (RECORD_HEADER_LEN + encoded.len()) as u64;
        self.before_frame(first_seq, frame)?;
        let last = first_seq + u64::from(count) - 1;
        if encoded.len() < DIRECT_WRITE_BYTES || self.direct.is_some() {
            format::encode_batch(&mut self.buf, first_seq, count, encoded);
            self.after_frames(last, u64::from(count), frame)?;
        } else {
            let h = format::batch_header(first_seq, count, encoded);
            self.buf.extend_from_slice(&h);
            self.account_frames(last, u64::from(count), frame);
            self.flush_with(encoded)?;
        }
        Ok(self.last_seq)
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
        self.after_frames(seq, 1, frame)
    }

    /// Account for a frame of `count` records ending with `last_seq`.
    fn after_frames(&mut self, last_seq: u64, count: u64, frame: u64) -> Result<()> {
        self.account_frames(last_seq, count, frame);
        if self.buf.len() >= self.opts.write_buffer {
            self.flush()?;
        }
        Ok(())
    }

    fn account_frames(&mut self, last_seq: u64, count: u64, frame: u64) {
        let active = self.segments.last_mut().unwrap_or_else(|| unreachable!());
        active.len += frame;
        active.records += count;
        self.last_seq = last_seq;
        self.stats.records_appended += count;
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
        if let Err(e) = self.attach_direct() {
            return Err(self.fail(e));
        }
        Ok(())
    }

    /// Write buffered records to the kernel (no fsync).
    pub fn flush(&mut self) -> Result<()> {
        if self.direct.is_some() {
            return self.write_direct();
        }
        self.flush_with(&[])
    }

    /// `O_DIRECT` mode (see [`JournalOptions::direct_io`]): complete the file's partial last
    /// block through the page cache, write the buffer's following whole blocks with `O_DIRECT`,
    /// and append its partial last block through the page cache, so that the file ends at a
    /// frame's end (readers of the live journal never see half a record) and no block is ever
    /// written both ways (an `O_DIRECT` write over a cached page waits for its writeback).
    fn write_direct(&mut self) -> Result<()> {
        self.check_ok()?;
        let Some(mut d) = self.direct.take() else {
            return self.flush_with(&[]);
        };
        if self.buf.len() == d.skip() {
            self.direct = Some(d);
            return Ok(());
        }
        d.realign(&mut self.buf);
        let data = &self.buf[d.pad..];
        let path = self
            .segments
            .last()
            .unwrap_or_else(|| unreachable!())
            .path
            .clone();
        let block = direct::BLOCK;
        // data[..pos] is in the file.
        let mut pos = d.head;
        let old_pos = pos;
        let cached = |from: usize, to: usize| {
            write_all_vectored(&self.active, &data[from..to], &[])
                .map_err(|e| Error::io(&path, "write", e))
        };
        if pos % block != 0 {
            let to = data.len().min(block);
            if let Err(e) = cached(pos, to) {
                return Err(self.fail(e));
            }
            pos = to;
        }
        let full_end = data.len() / block * block;
        if full_end > pos {
            // pos is a multiple of the block here: offset, length and address are aligned.
            let at = d.off + pos as u64;
            if let Err(e) =
                std::os::unix::fs::FileExt::write_all_at(&d.file, &data[pos..full_end], at)
            {
                if e.raw_os_error() == Some(libc::EINVAL) {
                    return self.refuse_direct(d, pos, &path, &e);
                }
                return Err(self.fail(Error::io(&path, "write (O_DIRECT)", e)));
            }
            pos = full_end;
        }
        if data.len() > pos {
            if let Err(e) = cached(pos, data.len()) {
                return Err(self.fail(e));
            }
        }
        self.stats.bytes_written += (data.len() - old_pos) as u64;
        // Keep the partial last block (already in the file) as the next head.
        d.head = data.len() - full_end;
        self.buf.drain(d.pad..d.pad + full_end);
        d.off += full_end as u64;
        if self.buf.capacity() > 4 * self.opts.write_buffer.max(1 << 16) {
            // One huge record must not pin its size in memory for the journal's lifetime.
            d.shrink(&mut self.buf, self.opts.write_buffer);
        }
        self.direct = Some(d);
        self.unsynced += self.last_seq - self.written_seq;
        self.written_seq = self.last_seq;
        if self.opts.fsync == FsyncPolicy::Never {
            self.durable_seq = self.written_seq;
        }
        Ok(())
    }

    /// An `O_DIRECT` write was refused (`EINVAL`): note why, and go on through the page cache
    /// from the buffer's byte `pos` (after the padding), the file's length before that write.
    fn refuse_direct(
        &mut self,
        d: direct::Direct,
        pos: usize,
        path: &Path,
        e: &std::io::Error,
    ) -> Result<()> {
        self.direct_refused = Some(format!(
            "{}: the file system refuses O_DIRECT writes ({e}); appending through the page cache",
            path.display()
        ));
        // A refused write may still have extended the file: cut it back.
        if let Err(e) = self.active.set_len(d.off + pos as u64) {
            return Err(self.fail(Error::io(path, "truncate", e)));
        }
        self.buf.drain(..d.pad + pos);
        self.flush_with(&[])
    }

    /// Write the buffered bytes and then `tail` (the rest of the last buffered frame) to the
    /// kernel, in one `writev` when the kernel takes it all.
    fn flush_with(&mut self, tail: &[u8]) -> Result<()> {
        self.check_ok()?;
        if self.buf.is_empty() && tail.is_empty() {
            return Ok(());
        }
        let path = &self.segments.last().unwrap_or_else(|| unreachable!()).path;
        if let Err(e) = write_all_vectored(&self.active, &self.buf, tail) {
            let e = Error::io(path, "write", e);
            return Err(self.fail(e));
        }
        self.stats.bytes_written += (self.buf.len() + tail.len()) as u64;
        self.buf.clear();
        if self.buf.capacity() > 4 * self.opts.write_buffer.max(1 << 16) {
            // One huge record must not pin its size in memory for the journal's lifetime.
            self.buf = Vec::new();
        }
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
        self.sync_due_upto(self.written_seq)
    }

    /// Whether a commit that wrote every record up to `upto` would fsync.
    fn sync_due_upto(&self, upto: u64) -> bool {
        if upto == self.durable_seq && self.unsynced == 0 {
            return false;
        }
        match self.opts.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::EveryN(n) => self.unsynced + (upto - self.written_seq) >= n.max(1),
            FsyncPolicy::Interval(d) => self.last_sync.elapsed() >= d,
            FsyncPolicy::Never => false,
        }
    }

    /// By when records appended but not yet durable should be made durable: `None` when
    /// nothing is pending (or under [`FsyncPolicy::Never`]); under `Interval(d)` the end of the
    /// interval, when `commit()` will fsync; under `Always` and `EveryN` an instant already
    /// past (`EveryN` with fewer than n pending needs `sync()`). An agent that may go quiet
    /// must act by then — `sync()`, or `commit()` under `Interval` — or its last records stay
    /// non-durable (and unacknowledged) until the next append: schedule a timer on this.
    pub fn sync_deadline(&self) -> Option<Instant> {
        if self.last_seq == self.durable_seq && self.unsynced == 0 {
            return None;
        }
        match self.opts.fsync {
            FsyncPolicy::Never => None,
            FsyncPolicy::Always | FsyncPolicy::EveryN(_) => Some(self.last_sync),
            // An interval too long to represent has no deadline in practice.
            FsyncPolicy::Interval(d) => self.last_sync.checked_add(d),
        }
    }

    /// Group commit: write buffered records to the kernel, fsync if the policy says so, and
    /// return the durable watermark ([`Journal::durable_seq`]).
    pub fn commit(&mut self) -> Result<u64> {
        if self.direct.is_some()
            && self.opts.fsync != FsyncPolicy::Never
            && !self.sync_due_upto(self.last_seq)
        {
            // O_DIRECT: the buffer is written once it fills; what it holds waits for the commit
            // that fsyncs (nothing it holds is durable before that anyway).
            self.check_ok()?;
            return Ok(self.durable_seq);
        }
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
        // Nothing has changed if this fails: the journal stays usable.
        let (mut info, file) = create_segment(&self.dir, header, sync, true)?;
        let tmp = info.path.clone();
        // From here on a failure leaves a half-done reset that `open` completes: mark the
        // journal failed, but keep `segments` describing what is still on disk.
        for (removed, s) in self.segments.iter().enumerate() {
            if let Err(e) = remove_file(&s.path) {
                self.segments.drain(..removed);
                return Err(self.fail(e));
            }
        }
        let final_path = self.dir.join(segment_file_name(next_seq));
        if let Err(e) = fs::rename(&tmp, &final_path) {
            self.segments = vec![info];
            return Err(self.fail(Error::io(&tmp, "rename", e)));
        }
        info.path = final_path;
        self.segments = vec![info];
        self.active = Arc::new(file);
        self.buf.clear();
        self.direct = None;
        self.epoch += 1;
        self.last_seq = next_seq - 1;
        self.written_seq = next_seq - 1;
        self.durable_seq = next_seq - 1;
        self.unsynced = 0;
        self.stats.segments_created += 1;
        self.attach_direct().map_err(|e| self.fail(e))?;
        if sync {
            sync_dir(&self.dir).map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// For [`SharedJournal`]: what an fsync outside the lock must cover.
    fn sync_ticket(&mut self) -> Result<Option<SyncTicket>> {
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
        Ok(Some(SyncTicket {
            file: Arc::clone(&self.active),
            upto: self.written_seq,
            epoch: self.epoch,
            path,
        }))
    }

    /// For [`SharedJournal`]: the fsync of a ticket's file finished (or failed).
    fn sync_done(&mut self, ticket: SyncTicket, result: std::io::Result<()>) -> Result<u64> {
        if let Err(e) = result {
            return Err(self.fail(Error::io(ticket.path, "fdatasync", e)));
        }
        self.stats.fsyncs += 1;
        // A reset while the fsync ran makes the ticket's seqs meaningless: ignore them.
        if ticket.epoch == self.epoch {
            if ticket.upto > self.durable_seq {
                self.durable_seq = ticket.upto;
            }
            if self.written_seq == ticket.upto {
                self.unsynced = 0;
            }
            self.last_sync = Instant::now();
        }
        Ok(self.durable_seq)
    }
}

/// An fsync to run outside the journal lock ([`SharedJournal`]'s group commit).
#[derive(Debug)]
struct SyncTicket {
    file: Arc<File>,
    /// Every record up to this seq is in `file` or in an earlier, already synced, segment.
    upto: u64,
    epoch: u64,
    path: PathBuf,
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Best effort: buffered records reach the kernel; the policy decides about fsync.
        if self.failed.is_none() && self.pending_bytes() > 0 {
            let _ = self.flush().and_then(|()| self.commit());
        }
    }
}

/// Create a segment holding only its header. A normal segment is written as `X.seg.new` and
/// renamed into place, so that no reader (nor a crash) ever sees a `*.seg` without a complete
/// header; with `reset_tmp` it stays `X.seg.tmp` for [`Journal::reset`] to rename.
fn create_segment(
    dir: &Path,
    header: SegmentHeader,
    sync: bool,
    reset_tmp: bool,
) -> Result<(SegmentInfo, File)> {
    let final_path = dir.join(segment_file_name(header.first_seq));
    let suffix = if reset_tmp { TMP_SUFFIX } else { NEW_SUFFIX };
    let name = segment_file_name(header.first_seq).replace(format::SEGMENT_SUFFIX, suffix);
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
    }
    let path = if reset_tmp {
        path
    } else {
        if final_path.exists() {
            let _ = fs::remove_file(&path);
            return Err(Error::io(
                &final_path,
                "create segment",
                std::io::ErrorKind::AlreadyExists.into(),
            ));
        }
        fs::rename(&path, &final_path).map_err(|e| Error::io(&path, "rename", e))?;
        final_path
    };
    if sync {
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

/// Write `a` then `b` to `f` entirely (`writev`, continued after short writes).
fn write_all_vectored(f: &File, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write};
    let mut bufs = [IoSlice::new(a), IoSlice::new(b)];
    let mut bufs = &mut bufs[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match (&*f).write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
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
