//! [`Store`] over crate `journal`: what both roles use for real.

use std::path::Path;
use std::sync::Arc;

use journal::{Journal, JournalOptions};

use crate::store::{OpenStore, Store, StoreError};

/// An application's journal, as the agents use it.
#[derive(Debug)]
pub struct JournalStore {
    j: Journal,
}

impl JournalStore {
    /// Open (or create) the journal in `dir`; a repaired tail is logged, never silent.
    pub fn open(dir: &Path, opts: JournalOptions) -> Result<Self, StoreError> {
        let (j, rec) = Journal::open(dir, opts).map_err(|e| StoreError(e.to_string()))?;
        if rec.cut.is_some() || rec.bytes_cut > 0 {
            tracing::warn!("journal {}: {rec}", dir.display());
        } else {
            tracing::info!("journal {}: {rec}", dir.display());
        }
        Ok(Self { j })
    }

    /// A factory opening every application's journal with `opts`.
    pub fn factory(opts: JournalOptions) -> OpenStore {
        Arc::new(move |dir: &Path| {
            Ok(Box::new(JournalStore::open(dir, opts.clone())?) as Box<dyn Store>)
        })
    }
}

impl Store for JournalStore {
    fn first_seq(&self) -> u64 {
        self.j.first_seq()
    }
    fn last_seq(&self) -> u64 {
        self.j.last_seq()
    }
    fn durable_seq(&self) -> u64 {
        self.j.durable_seq()
    }
    fn append(&mut self, seq: u64, stream: u32, payload: &[u8]) -> Result<(), StoreError> {
        self.j
            .append(stream, seq, payload)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn append_encoded(&mut self, first_seq: u64, encoded: &[u8]) -> Result<u64, StoreError> {
        self.j
            .append_encoded(first_seq, encoded)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn append_encoded_counted(
        &mut self,
        first_seq: u64,
        count: u32,
        encoded: &[u8],
    ) -> Result<u64, StoreError> {
        self.j
            .append_encoded_counted(first_seq, count, encoded)
            .map_err(|e| StoreError(e.to_string()))
    }
    fn commit(&mut self) -> Result<u64, StoreError> {
        self.j.commit().map_err(|e| StoreError(e.to_string()))
    }
    fn read(
        &mut self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
        f: &mut dyn FnMut(u64, u32, &[u8]),
    ) -> Result<(), StoreError> {
        let it = self
            .j
            .read_from(from)
            .map_err(|e| StoreError(e.to_string()))?;
        let mut bytes = 0;
        for r in it.take(max_records) {
            if bytes >= max_bytes {
                break;
            }
            let r = r.map_err(|e| StoreError(e.to_string()))?;
            bytes += r.payload.len();
            f(r.seq, r.stream, &r.payload);
        }
        Ok(())
    }
    fn fsyncs(&self) -> u64 {
        self.j.stats().fsyncs
    }
}
