//! [`SharedJournal`]: a journal shared between threads, with group commit.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::{Journal, JournalOptions, Recovery};

/// A [`Journal`] behind a mutex, for appenders on several threads.
///
/// [`SharedJournal::commit`] is a group commit: the fsync runs *outside* the journal lock,
/// so other threads keep appending while it runs, and one fsync makes every record written
/// before it durable; a thread whose records an fsync in progress (or just finished) covers
/// waits for it instead of issuing its own.
///
/// Anything not wrapped here is reachable through [`SharedJournal::lock`]. A panic while the
/// lock is held does not poison it (the journal's state is updated only after each step
/// succeeds, and a failed write or fsync marks the journal failed).
#[derive(Debug)]
pub struct SharedJournal {
    inner: Mutex<Journal>,
    syncing: Mutex<bool>,
    synced: Condvar,
}

impl SharedJournal {
    /// Wrap an open journal.
    pub fn new(journal: Journal) -> Self {
        Self {
            inner: Mutex::new(journal),
            syncing: Mutex::new(false),
            synced: Condvar::new(),
        }
    }

    /// [`Journal::open`], wrapped.
    pub fn open(dir: impl AsRef<Path>, opts: JournalOptions) -> Result<(Self, Recovery)> {
        let (j, r) = Journal::open(dir, opts)?;
        Ok((Self::new(j), r))
    }

    /// Lock the journal for direct use (do not hold the guard across a `commit`).
    pub fn lock(&self) -> MutexGuard<'_, Journal> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unwrap the journal.
    pub fn into_inner(self) -> Journal {
        self.inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Journal::append`].
    pub fn append(&self, stream: u32, seq: u64, payload: &[u8]) -> Result<()> {
        self.lock().append(stream, seq, payload)
    }

    /// [`Journal::append_next`]: the journal assigns the sequence number.
    pub fn append_next(&self, stream: u32, payload: &[u8]) -> Result<u64> {
        self.lock().append_next(stream, payload)
    }

    /// [`Journal::last_seq`].
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq()
    }

    /// [`Journal::durable_seq`].
    pub fn durable_seq(&self) -> u64 {
        self.lock().durable_seq()
    }

    /// Group commit per the fsync policy; returns the durable watermark, which covers every
    /// record this thread appended before the call whenever the policy fsyncs.
    pub fn commit(&self) -> Result<u64> {
        let target = {
            let mut j = self.lock();
            j.flush()?;
            if !j.sync_due() {
                return Ok(j.durable_seq());
            }
            j.written_seq()
        };
        self.sync_to(target)
    }

    /// [`Journal::sync_deadline`].
    pub fn sync_deadline(&self) -> Option<Instant> {
        self.lock().sync_deadline()
    }

    /// Start a thread that makes a quiet tail durable: every `tick` it checks
    /// [`Journal::sync_deadline`] and calls [`SharedJournal::sync`] once it has passed. For
    /// `EveryN` and `Interval` policies, whose last records otherwise wait for the next
    /// commit. The thread holds only a weak reference and ends once the journal is dropped
    /// (within one tick); an fsync error marks the journal failed, for its next caller to see.
    pub fn spawn_syncer(self: &Arc<Self>, tick: Duration) -> std::thread::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::spawn(move || loop {
            std::thread::sleep(tick);
            let Some(j) = weak.upgrade() else { break };
            if j.sync_deadline().is_some_and(|d| d <= Instant::now()) && j.sync().is_err() {
                break;
            }
        })
    }

    /// Make every record appended so far durable, whatever the policy.
    pub fn sync(&self) -> Result<u64> {
        let target = {
            let mut j = self.lock();
            j.flush()?;
            j.written_seq()
        };
        self.sync_to(target)
    }

    fn sync_to(&self, target: u64) -> Result<u64> {
        loop {
            {
                let j = self.lock();
                if j.durable_seq() >= target {
                    return Ok(j.durable_seq());
                }
            }
            let mut syncing = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
            if *syncing {
                // Another thread's fsync is running; it may cover us.
                drop(
                    self.synced
                        .wait(syncing)
                        .unwrap_or_else(PoisonError::into_inner),
                );
                continue;
            }
            *syncing = true;
            drop(syncing);
            let result = self.lead_sync();
            *self.syncing.lock().unwrap_or_else(PoisonError::into_inner) = false;
            self.synced.notify_all();
            // The ticket covered everything written when it was taken, which includes
            // `target` (unless a reset intervened, which makes `target` moot): done.
            return result;
        }
    }

    /// As the one thread syncing: take a ticket under the lock, fsync without it.
    fn lead_sync(&self) -> Result<u64> {
        let ticket = self.lock().sync_ticket()?;
        match ticket {
            None => Ok(self.lock().durable_seq()),
            Some(t) => {
                let r = t.file.sync_data();
                self.lock().sync_done(t, r)
            }
        }
    }
}
