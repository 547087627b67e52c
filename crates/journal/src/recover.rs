//! Opening a journal: locking, scanning every segment, cutting a torn tail, finishing an
//! interrupted reset, and reporting all of it in a [`Recovery`].

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::format::{
    decode_frame, segment_file_name, Corruption, SegmentHeader, RECORD_HEADER_LEN,
    SEGMENT_HEADER_LEN,
};
use crate::segment::{self, list_dir, read_header, scan_segment, ScanResult, SegmentFile};
use crate::{
    create_segment, file_len, remove_file, sync_dir, FsyncPolicy, Journal, JournalOptions,
    Recovery, SegmentInfo, Stats, TailCut, LOCK_FILE,
};

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
            std::io::ErrorKind::WouldBlock => Error::Locked {
                dir: dir.clone(),
                holder: fs::read_to_string(&lock_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok()),
            },
            _ => Error::io(&lock_path, "flock", e),
        })?;
        // Say who holds it, for the error message of the next opener (best effort).
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
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
            valid_after_cut: None,
        };
        let sync = opts.fsync != FsyncPolicy::Never;
        let mut listing = list_dir(&dir)?;
        // A segment whose creation a crash interrupted never held a record.
        for p in std::mem::take(&mut listing.partial) {
            rec.bytes_cut += file_len(&p)?;
            remove_file(&p)?;
            rec.removed_files.push(p);
        }
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
            let scan_last_seq = scan.last_seq();
            if let Some((offset, reason)) = scan.problem {
                if !is_last {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset,
                        reason,
                    });
                }
                // A well-formed record with a later seq beyond the damage means this was not
                // (only) a torn write: keep the cut bytes aside rather than destroy them.
                if let Some(seq) =
                    later_valid_record(&seg.path, scan.valid_len, scan.file_len, scan_last_seq)?
                {
                    let aside = aside_tail_path(&seg.path, scan.valid_len);
                    save_tail(&seg.path, scan.valid_len, &aside, sync)?;
                    rec.set_aside.push(aside);
                    rec.valid_after_cut = Some(seq);
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
        let mut j = Journal {
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
            direct: None,
            direct_refused: None,
        };
        j.attach_direct()?;
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
        let mut j = Journal {
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
            direct: None,
            direct_refused: None,
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
            valid_after_cut: None,
        };
        j.attach_direct()?;
        Ok((j, rec))
    }
}

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

/// How far past a cut [`later_valid_record`] looks for well-formed records.
const RESYNC_WINDOW: u64 = 64 << 20;

/// After damage at `from` in a segment whose last valid record is `last_seq`: the seq of a
/// well-formed record (checksum valid, seq after `last_seq`) starting anywhere in the next
/// [`RESYNC_WINDOW`] bytes, if there is one. Reads at most that window into memory.
fn later_valid_record(path: &Path, from: u64, file_len: u64, last_seq: u64) -> Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    let len = usize::try_from((file_len - from).min(RESYNC_WINDOW)).unwrap_or(0);
    if len < RECORD_HEADER_LEN + 1 {
        return Ok(None);
    }
    let mut f = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    f.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io(path, "seek", e))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)
        .map_err(|e| Error::io(path, "read", e))?;
    // Skip the damaged frame's first byte: a frame starting exactly at the cut is the bad one.
    for at in 1..len.saturating_sub(RECORD_HEADER_LEN - 1) {
        if let Ok((frame, _)) = decode_frame(&buf[at..]) {
            if frame.seq > last_seq && frame.seq <= last_seq + (len as u64) {
                return Ok(Some(frame.seq));
            }
        }
    }
    Ok(None)
}

/// `X.seg` -> `X.seg.damaged.tail-OFFSET`.
fn aside_tail_path(path: &Path, offset: u64) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".damaged.tail-{offset}"));
    PathBuf::from(name)
}

/// Copy the bytes of `path` from `from` to its end into a new file `to`.
fn save_tail(path: &Path, from: u64, to: &Path, sync: bool) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let mut src = File::open(path).map_err(|e| Error::io(path, "open", e))?;
    src.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io(path, "seek", e))?;
    let mut dst = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(to)
        .map_err(|e| Error::io(to, "create", e))?;
    std::io::copy(&mut src, &mut dst).map_err(|e| Error::io(to, "copy", e))?;
    if sync {
        dst.sync_all().map_err(|e| Error::io(to, "fsync", e))?;
    }
    Ok(())
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
