//! The agents' view of a journal: just what replication needs. The real implementation is
//! crate `journal` ([`crate::journal_store`]); [`MemStore`] serves unit tests.

use std::path::Path;
use std::sync::Arc;

/// A journal operation failed; the message names the journal and why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// A gapless, durable sequence of records `{seq, stream, payload}`, seqs from 1.
pub trait Store: Send + 'static {
    /// First seq still held (`last_seq() + 1` when empty).
    fn first_seq(&self) -> u64;
    /// Last seq appended (0 when nothing was ever appended).
    fn last_seq(&self) -> u64;
    /// Last seq known durable.
    fn durable_seq(&self) -> u64;
    /// Append one record; `seq` must be `last_seq() + 1`.
    fn append(&mut self, seq: u64, stream: u32, payload: &[u8]) -> Result<(), StoreError>;
    /// Append records `first_seq, first_seq + 1, ...` given in the `Data` record encoding
    /// `(stream:u32 len:u32 payload)*` (as the wire and the primary's window carry them);
    /// `first_seq` must be `last_seq() + 1`. Returns the last seq. The journal stores them as
    /// batch frames (one header and CRC per batch).
    fn append_encoded(&mut self, first_seq: u64, encoded: &[u8]) -> Result<u64, StoreError> {
        let mut seq = first_seq;
        for (stream, p) in transport::frame::records(encoded) {
            self.append(seq, stream, p)?;
            seq += 1;
        }
        Ok(seq - 1)
    }
    /// [`Store::append_encoded`] of `count` records whose encoding the caller built or
    /// validated (the journal then does not walk them again).
    fn append_encoded_counted(
        &mut self,
        first_seq: u64,
        count: u32,
        encoded: &[u8],
    ) -> Result<u64, StoreError> {
        let _ = count;
        self.append_encoded(first_seq, encoded)
    }
    /// Group commit per the store's fsync policy; returns the durable seq.
    fn commit(&mut self) -> Result<u64, StoreError>;
    /// Call `f` for records `from..` in order, stopping after `max_records` or once
    /// `max_bytes` of payload were visited.
    fn read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        f: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Result<(), StoreError>;
    /// How many fsyncs (or equivalent) the store has done, for metrics.
    fn fsyncs(&self) -> u64 {
        0
    }
}

/// Opens the store of one application's journal directory.
pub type OpenStore = Arc<dyn Fn(&Path) -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// An in-memory store (tests; nothing survives the process).
#[derive(Debug, Default)]
pub struct MemStore {
    first: u64,
    recs: Vec<(u32, Vec<u8>)>,
    durable: u64,
}

impl MemStore {
    /// An empty store whose first record will be seq 1.
    pub fn new() -> Self {
        Self {
            first: 1,
            recs: Vec::new(),
            durable: 0,
        }
    }
    /// An empty store whose first record will be `first` (as after retention dropped
    /// everything before it).
    pub fn starting_at(first: u64) -> Self {
        Self {
            first,
            recs: Vec::new(),
            durable: first - 1,
        }
    }

    /// A factory for [`OpenStore`] that gives a fresh in-memory store per directory.
    pub fn factory() -> OpenStore {
        Arc::new(|_| Ok(Box::new(MemStore::new()) as Box<dyn Store>))
    }
}

impl Store for MemStore {
    fn first_seq(&self) -> u64 {
        self.first
    }
    fn last_seq(&self) -> u64 {
        self.first + self.recs.len() as u64 - 1
    }
    fn durable_seq(&self) -> u64 {
        self.durable
    }
    fn append(&mut self, seq: u64, stream: u32, payload: &[u8]) -> Result<(), StoreError> {
        if seq != self.last_seq() + 1 {
            return Err(StoreError(format!(
                "memory store: append of seq {seq}, expected {}",
                self.last_seq() + 1
            )));
        }
        self.recs.push((stream, payload.to_vec()));
        Ok(())
    }
    fn commit(&mut self) -> Result<u64, StoreError> {
        self.durable = self.last_seq();
        Ok(self.durable)
    }
    fn read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        f: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Result<(), StoreError> {
        let start = usize::try_from(from.saturating_sub(self.first)).unwrap_or(usize::MAX);
        let mut bytes = 0;
        for (i, (stream, p)) in self.recs.iter().enumerate().skip(start).take(max_records) {
            if bytes >= max_bytes {
                break;
            }
            bytes += p.len();
            f(self.first + i as u64, *stream, p);
        }
        Ok(())
    }
}
