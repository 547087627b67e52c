//! Typed errors of the journal.

use std::io;
use std::path::PathBuf;

use crate::format::Corruption;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O call failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// What was being done ("open", "write", "fdatasync", ...).
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another `Journal` in this one) holds the journal directory.
    #[error("{dir}: journal is already open elsewhere (lock file held{})", holder.map_or_else(String::new, |p| format!(" by pid {p}")))]
    Locked {
        /// The journal directory.
        dir: PathBuf,
        /// The pid recorded in the lock file by its holder, if readable.
        holder: Option<u32>,
    },
    /// A record that is not the last one written is damaged: this is not a torn tail and is
    /// never repaired automatically.
    #[error("{path} offset {offset}: corrupt journal segment: {reason}")]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Byte offset of the bad header or frame in that file.
        offset: u64,
        /// What is wrong.
        reason: Corruption,
    },
    /// Two consecutive segments do not continue each other.
    #[error("{path}: segment starts at seq {found}, but the previous segment ends at {prev_last}")]
    SegmentGap {
        /// The later segment.
        path: PathBuf,
        /// Its first sequence number.
        found: u64,
        /// Last sequence number of the segment before it.
        prev_last: u64,
    },
    /// `append` with a sequence number other than `last_seq() + 1`.
    #[error("{dir}: append of seq {got} refused: expected seq {expected}{}", if *got < *expected { " (already present)" } else { " (would leave a gap)" })]
    OutOfOrder {
        /// The journal directory.
        dir: PathBuf,
        /// The only acceptable sequence number.
        expected: u64,
        /// The sequence number offered.
        got: u64,
    },
    /// A payload larger than the configured limit.
    #[error("{dir}: record seq {seq} of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The journal directory.
        dir: PathBuf,
        /// Its sequence number.
        seq: u64,
        /// Payload length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// A raw frame handed to `append_raw` is malformed.
    #[error("{dir}: raw frame at byte {offset} of the batch refused: {reason}")]
    BadFrame {
        /// The journal directory.
        dir: PathBuf,
        /// Offset inside the batch.
        offset: usize,
        /// What is wrong.
        reason: Corruption,
    },
    /// A frame offered again for a seq already held differs from the stored one.
    #[error("{dir}: frame for seq {seq} (batch byte {offset}) differs from the record already journaled")]
    Conflict {
        /// The journal directory.
        dir: PathBuf,
        /// The sequence number.
        seq: u64,
        /// Offset of the frame in the batch.
        offset: usize,
    },
    /// The requested sequence number is no longer (or not yet) held.
    #[error("{dir}: seq {seq} is not held (journal holds {first}..={last})")]
    NotHeld {
        /// The journal directory.
        dir: PathBuf,
        /// Requested sequence number.
        seq: u64,
        /// First held.
        first: u64,
        /// Last held.
        last: u64,
    },
    /// An earlier write or fsync failed; the state of the file is unknown, so the journal
    /// refuses every further write until it is reopened (and its tail re-validated).
    #[error("{dir}: journal failed earlier ({cause}); reopen it")]
    Failed {
        /// The journal directory.
        dir: PathBuf,
        /// The first failure.
        cause: String,
    },
}

impl Error {
    /// True for [`Error::OutOfOrder`] with a sequence number already in the journal: a
    /// backup that receives a duplicate after a reconnect can ignore it.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Error::OutOfOrder { expected, got, .. } if got < expected)
    }

    pub(crate) fn io(path: impl Into<PathBuf>, op: &'static str, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            op,
            source,
        }
    }
}
