//! Read-only inspection of a journal directory: [`summarize`] (what `understudy inspect DIR`
//! prints).
//!
//! Never repairs and never takes the journal lock, so it can run beside a live writer; a
//! torn tail is reported in [`Summary::tail`], damage elsewhere in [`Summary::problems`]
//! (the records it makes unreadable then show up as gaps).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::format::{Corruption, FORMAT_VERSION};
use crate::segment::{list_dir, scan_segment, ScanResult};
use crate::TailCut;

/// Name of the digest algorithm in [`Summary::digest_algorithm`].
pub const DIGEST_ALGORITHM: &str = "sha256(seq u64le, stream u32le, len u64le, payload)*";

/// One segment file, as found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentSummary {
    /// File name.
    pub file: String,
    /// First sequence number (from the header; from the name if the header is bad).
    pub first_seq: u64,
    /// Last valid sequence number (`None` when the segment holds no valid record).
    pub last_seq: Option<u64>,
    /// Valid records.
    pub records: u64,
    /// File size.
    pub bytes: u64,
    /// Size of the valid prefix.
    pub valid_bytes: u64,
    /// Segment index (position in the journal's history).
    pub index: Option<u64>,
    /// Journal epoch (incremented by each reset).
    pub epoch: Option<u64>,
    /// Journal id, hex.
    pub journal_id: Option<String>,
    /// What is wrong with it, if anything.
    pub problem: Option<String>,
}

/// What a journal directory holds. Serializes to the object `understudy inspect --json`
/// prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Always `"journal"` (`understudy inspect` also prints images, whose `kind` is `"image"`).
    pub kind: &'static str,
    /// The directory.
    pub dir: PathBuf,
    /// Segment format version this reader understands.
    pub format_version: u16,
    /// Valid records.
    pub records: u64,
    /// First sequence number held.
    pub first_seq: Option<u64>,
    /// Last sequence number held.
    pub last_seq: Option<u64>,
    /// Number of sequence numbers missing between `first_seq` and `last_seq`.
    pub gaps: u64,
    /// The missing ranges, inclusive `[from, to]`.
    pub gap_ranges: Vec<[u64; 2]>,
    /// Number of distinct streams.
    pub streams: usize,
    /// Records per stream.
    pub stream_records: BTreeMap<u32, u64>,
    /// Hex SHA-256 over every record in sequence order (see [`DIGEST_ALGORITHM`]); equal on
    /// two hosts exactly when they hold the same records.
    pub digest: String,
    /// How `digest` is computed.
    pub digest_algorithm: &'static str,
    /// Total bytes of the segment files.
    pub bytes: u64,
    /// Total payload bytes of the valid records.
    pub payload_bytes: u64,
    /// The segment files in order.
    pub segments: Vec<SegmentSummary>,
    /// A torn or corrupt tail of the last segment (open would cut it there).
    pub tail: Option<TailCut>,
    /// Damage that `open` would refuse (corrupt sealed segments, overlaps, foreign segments).
    pub problems: Vec<String>,
    /// Files an earlier `open` set aside (a newest segment whose header was damaged), kept for
    /// forensics; not part of the journal.
    pub set_aside: Vec<PathBuf>,
}

/// True when `path` is a directory holding at least one journal segment file (lets
/// `understudy inspect PATH` tell a journal from a checkpoint image).
pub fn is_journal_dir(path: impl AsRef<Path>) -> bool {
    list_dir(path.as_ref()).is_ok_and(|l| !l.segments.is_empty() || !l.tmp.is_empty())
}

/// Summarize the journal in `dir`, verifying every record. Read-only.
pub fn summarize(dir: impl AsRef<Path>) -> Result<Summary> {
    summarize_range(dir, 0, u64::MAX)
}

/// [`summarize`] restricted to the records with `from <= seq <= to`: `records`, `first_seq`,
/// `last_seq`, `gaps`, `streams` and `digest` then cover only those (the segment list still
/// shows every file). Two hosts whose retention differs compare digests over a range both
/// hold.
pub fn summarize_range(dir: impl AsRef<Path>, from: u64, to: u64) -> Result<Summary> {
    let dir = dir.as_ref();
    // A live writer's retention may remove a listed segment before it is read; the listing
    // is then stale and the pass starts over (retention is rare and quick).
    let mut attempts = 0;
    loop {
        match summarize_once(dir, from, to)? {
            Some(s) => return Ok(s),
            None if attempts < 10 => attempts += 1,
            None => {
                return Err(Error::io(
                    dir,
                    "summarize",
                    std::io::Error::other("segments kept vanishing while being read"),
                ))
            }
        }
    }
}

/// One pass; `None` when a listed segment vanished meanwhile.
fn summarize_once(dir: &Path, from: u64, to: u64) -> Result<Option<Summary>> {
    let listing = list_dir(dir)?;
    let mut s = Summary {
        kind: "journal",
        dir: dir.to_path_buf(),
        format_version: FORMAT_VERSION,
        records: 0,
        first_seq: None,
        last_seq: None,
        gaps: 0,
        gap_ranges: Vec::new(),
        streams: 0,
        stream_records: BTreeMap::new(),
        digest: String::new(),
        digest_algorithm: DIGEST_ALGORITHM,
        bytes: 0,
        payload_bytes: 0,
        segments: Vec::new(),
        tail: None,
        problems: Vec::new(),
        set_aside: listing.damaged.clone(),
    };
    for tmp in &listing.tmp {
        s.problems.push(format!(
            "{}: leftover of an interrupted reset (open completes or discards it)",
            tmp.display()
        ));
    }
    let mut hasher = Sha256::new();
    let mut journal_id = None;
    let mut prev_index: Option<u64> = None;
    let n = listing.segments.len();
    for (i, seg) in listing.segments.iter().enumerate() {
        let is_last = i + 1 == n;
        let file = seg
            .path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        // Records of this segment that continue the sequence are hashed; an overlap (a seq
        // already seen) is a problem and is skipped so the digest stays "each seq once".
        let mut last = s.last_seq;
        let mut skipped = 0u64;
        let mut overlap = None;
        let mut first_in_seg = None;
        let result = scan_segment(seg, |seq, stream, payload| {
            if seq < from || seq > to {
                return;
            }
            if last.is_some_and(|l| seq <= l) {
                skipped += 1;
                overlap.get_or_insert(seq);
                return;
            }
            if let Some(l) = last {
                if seq > l + 1 {
                    s.gaps += seq - l - 1;
                    s.gap_ranges.push([l + 1, seq - 1]);
                }
            }
            first_in_seg.get_or_insert(seq);
            hasher.update(seq.to_le_bytes());
            hasher.update(stream.to_le_bytes());
            hasher.update((payload.len() as u64).to_le_bytes());
            hasher.update(payload);
            *s.stream_records.entry(stream).or_insert(0) += 1;
            s.payload_bytes += payload.len() as u64;
            s.records += 1;
            if s.first_seq.is_none() {
                s.first_seq = Some(seq);
            }
            last = Some(seq);
        });
        let result = match result {
            Ok(r) => r,
            // Removed by the writer's retention since the listing.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        s.last_seq = last;
        if let Some(seq) = overlap {
            s.problems.push(format!(
                "{}: {skipped} record(s) from seq {seq} repeat sequence numbers already seen",
                seg.path.display()
            ));
        }
        let mut summary = SegmentSummary {
            file,
            first_seq: seg.name_seq,
            last_seq: None,
            records: 0,
            bytes: 0,
            valid_bytes: 0,
            index: None,
            epoch: None,
            journal_id: None,
            problem: None,
        };
        let problem: Option<(u64, Corruption)> = match result {
            ScanResult::BadHeader { file_len, reason } => {
                summary.bytes = file_len;
                Some((0, reason))
            }
            ScanResult::Scanned(scan) => {
                summary.first_seq = scan.header.first_seq;
                summary.records = scan.records;
                summary.last_seq = (scan.records > 0).then(|| scan.last_seq());
                summary.bytes = scan.file_len;
                summary.valid_bytes = scan.valid_len;
                summary.index = Some(scan.header.index);
                summary.epoch = Some(scan.header.epoch);
                summary.journal_id = Some(format!("{:016x}", scan.header.journal_id));
                match journal_id {
                    None => journal_id = Some(scan.header.journal_id),
                    Some(id) if id != scan.header.journal_id => s.problems.push(format!(
                        "{}: {}",
                        seg.path.display(),
                        Corruption::ForeignSegment {
                            expected: id,
                            found: scan.header.journal_id
                        }
                    )),
                    Some(_) => {}
                }
                if let Some(prev) = prev_index {
                    if scan.header.index != prev + 1 {
                        s.problems.push(format!(
                            "{}: {}",
                            seg.path.display(),
                            Corruption::IndexMismatch {
                                expected: prev + 1,
                                found: scan.header.index
                            }
                        ));
                    }
                }
                prev_index = Some(scan.header.index);
                scan.problem
            }
        };
        s.bytes += summary.bytes;
        if let Some((offset, reason)) = problem {
            summary.problem = Some(format!("offset {offset}: {reason}"));
            if is_last && !matches!(reason, Corruption::UnsupportedVersion { .. }) {
                s.tail = Some(TailCut {
                    file: seg.path.clone(),
                    offset,
                    reason,
                });
            } else {
                s.problems.push(format!(
                    "{} offset {offset}: corrupt sealed segment: {reason}",
                    seg.path.display()
                ));
            }
        }
        s.segments.push(summary);
    }
    s.streams = s.stream_records.len();
    s.digest = hex::encode(hasher.finalize());
    Ok(Some(s))
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "journal {}", self.dir.display())?;
        match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => writeln!(f, "  records   {} (seq {a}..={b})", self.records)?,
            _ => writeln!(f, "  records   0")?,
        }
        write!(f, "  gaps      {}", self.gaps)?;
        for [a, b] in self.gap_ranges.iter().take(10) {
            write!(f, " [{a}..={b}]")?;
        }
        if self.gap_ranges.len() > 10 {
            write!(f, " ...")?;
        }
        writeln!(f)?;
        write!(f, "  streams   {}", self.streams)?;
        if !self.stream_records.is_empty() {
            write!(f, " (records per stream:")?;
            for (st, n) in self.stream_records.iter().take(16) {
                write!(f, " {st}={n}")?;
            }
            if self.stream_records.len() > 16 {
                write!(f, " ...")?;
            }
            write!(f, ")")?;
        }
        writeln!(f)?;
        writeln!(f, "  digest    {} (sha256)", self.digest)?;
        writeln!(
            f,
            "  bytes     {} on disk, {} payload",
            self.bytes, self.payload_bytes
        )?;
        writeln!(f, "  segments  {}", self.segments.len())?;
        for s in &self.segments {
            let last = s
                .last_seq
                .map_or_else(|| "-".to_string(), |l| l.to_string());
            write!(
                f,
                "    {}  seq {}..{}  {} record(s)  {} bytes",
                s.file, s.first_seq, last, s.records, s.bytes
            )?;
            if let Some(p) = &s.problem {
                write!(f, "  [{p}]")?;
            }
            writeln!(f)?;
        }
        if let Some(t) = &self.tail {
            writeln!(
                f,
                "  tail      torn/corrupt at {} offset {}: {} (open will cut it)",
                t.file.display(),
                t.offset,
                t.reason
            )?;
        }
        for p in &self.problems {
            writeln!(f, "  problem   {p}")?;
        }
        for p in &self.set_aside {
            writeln!(
                f,
                "  set aside {} (damaged header, kept by open)",
                p.display()
            )?;
        }
        Ok(())
    }
}
