//! The collector: drains an application's shared-memory ring into the primary's journal and
//! moves the ring's `ack_seq`, which is what lets an output leave the application.
//!
//! In sync mode `ack_seq` only covers records that at least one backup has journaled
//! ([`Primary::acked_seq`]); in async mode, records journaled locally. Each ring record becomes
//! exactly one journal record (stream [`STREAM_MSG`]: the payload, encoded by the interceptor,
//! says which process and thread it came from), in ring order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shmring::RingConsumer;

use crate::{AgentError, Primary};

/// Journal stream of replication messages (the same as `understudy record` uses; stream 0 is
/// its metadata).
pub const STREAM_MSG: u32 = 1;

/// How often a collector polls the ring while records flow, when no output waits for an ack
/// (async mode, `understudy record` without `--sync`). Each wake-up costs ~20 µs of CPU on
/// these VMs, taken from whatever shares the collector's CPU (redis recorded at 100 k requests/s
/// lost 17% of its throughput at 200 µs, under 5% at 2 ms); the ring holds far more than 2 ms
/// of records. Sync mode polls every 20 µs (agent) or 200 µs (`record`): there each interval
/// adds to an output's wait.
pub const ASYNC_POLL: Duration = Duration::from_millis(2);

/// Drain the ring into the primary until `stop` and the ring is empty; forward acks to the
/// ring's `ack_seq`.
pub fn collect(
    ring: &RingConsumer,
    p: &Primary,
    stop: &AtomicBool,
    sync: bool,
) -> Result<(), AgentError> {
    // (journal seq, ring seq) at the end of each submitted batch, until acknowledged.
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut lens: Vec<usize> = Vec::with_capacity(4096);
    let mut last_data = Instant::now();
    loop {
        let acked = if sync { p.acked_seq() } else { p.last_seq() };
        let mut release = None;
        while pending.front().is_some_and(|(j, _)| *j <= acked) {
            release = pending.pop_front().map(|(_, r)| r);
        }
        if let Some(r) = release {
            ring.set_ack(r);
        }
        // Whether to stop is looked at before the poll: a stop set after the application's
        // last records were pushed then ends the loop only once a poll that began after it came
        // back empty. (Looked at after an empty poll, records pushed between that poll and the
        // stop were never collected.)
        let stopping = stop.load(Ordering::SeqCst);
        buf.clear();
        lens.clear();
        let mut last_ring = 0;
        let n = ring
            .poll(4096, |seq, payload| {
                buf.extend_from_slice(payload);
                lens.push(payload.len());
                last_ring = seq;
            })
            .map_err(|e| AgentError::Ring(e.to_string()))?;
        if n > 0 {
            last_data = Instant::now();
            let mut off = 0;
            let msgs = lens.iter().map(|&l| {
                let s = &buf[off..off + l];
                off += l;
                (STREAM_MSG, s)
            });
            let j = p.submit_batch(msgs)?;
            pending.push_back((j, last_ring));
            continue;
        }
        if stopping {
            return Ok(());
        }
        // Waiting for acks: poll the primary often. Records flowing recently: poll the ring
        // without announcing sleep (a sleeping consumer costs every producer a wake-up and
        // the ring's sleep path a global memory barrier, milliseconds here). Idle for 20 ms:
        // sleep on the ring's futex.
        // In sync mode every poll interval adds to an output's latency: poll tighter.
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_micros(if sync { 20 } else { 50 }));
        } else if last_data.elapsed() < Duration::from_millis(20) {
            std::thread::sleep(if sync {
                Duration::from_micros(20)
            } else {
                ASYNC_POLL
            });
        } else {
            ring.wait(Duration::from_millis(20));
        }
    }
}

/// Drains a ring into a local journal, one stream, and acknowledges on the ring what the
/// journal says is durable: `understudy record`'s collector (the replicated path is
/// [`collect`]). A ring seq is acknowledged only once the journal record holding it is durable.
///
/// Each payload is copied once, from the ring straight into the journal's write buffer
/// ([`journal::BatchWriter`]), and the ring gives the consumed bytes back in bulk
/// ([`RingConsumer::poll_take`]).
#[derive(Debug, Default)]
pub struct JournalCollector {
    /// (journal seq, ring seq) at the end of each appended run, until durable.
    pending: VecDeque<(u64, u64)>,
    /// Messages drained so far.
    pub messages: u64,
}

impl JournalCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append up to `max` records from `ring` to `j` (stream `stream`), in ring order; returns
    /// how many (less than `max`: the ring was empty). They are acknowledged on the ring by a
    /// later [`commit`](Self::commit), once durable. A record the journal refuses stays in the
    /// ring, and the journal's error is returned.
    pub fn drain(
        &mut self,
        ring: &RingConsumer,
        j: &mut journal::Journal,
        stream: u32,
        max: usize,
    ) -> Result<usize, AgentError> {
        let mut w = j.batch_writer().map_err(store_err)?;
        let mut last_rs = 0;
        let polled = ring.poll_take(max, |rs, payload| {
            let took = w.push(stream, payload);
            if took {
                last_rs = rs;
            }
            took
        });
        // The records taken are in the journal's buffer whatever the ring says next.
        let js = w.finish().map_err(store_err)?;
        let n = polled.map_err(|e| AgentError::Ring(e.to_string()))?;
        self.messages += n as u64;
        if n > 0 {
            self.pending.push_back((js, last_rs));
        }
        Ok(n)
    }

    /// Group commit of what [`drain`](Self::drain) appended (written to the kernel, fsynced if
    /// the journal's policy says so), then move the ring's `ack_seq` to the last ring record
    /// whose journal record is durable. Nothing to do (no syscall) when every drained record
    /// is acknowledged already. Returns the journal's durable seq.
    pub fn commit(
        &mut self,
        ring: &RingConsumer,
        j: &mut journal::Journal,
    ) -> Result<u64, AgentError> {
        if self.pending.is_empty() {
            return Ok(j.durable_seq());
        }
        let durable = j.commit().map_err(store_err)?;
        let mut ack = None;
        while self.pending.front().is_some_and(|(js, _)| *js <= durable) {
            ack = self.pending.pop_front().map(|(_, rs)| rs);
        }
        if let Some(rs) = ack {
            ring.set_ack(rs);
        }
        Ok(durable)
    }
}

fn store_err(e: journal::Error) -> AgentError {
    AgentError::Store(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use journal::{FsyncPolicy, Journal, JournalOptions};

    /// `JournalCollector`: every ring record becomes one journal record in order, a drain is
    /// bounded by `max`, and a ring seq is acknowledged only once its journal record is durable
    /// (here: an hour-long fsync interval, so only an explicit `sync` makes records durable).
    #[test]
    fn journal_collector_acks_only_what_is_durable() {
        let ring = RingConsumer::anonymous(1 << 16).unwrap();
        let p = ring.producer();
        let dir = tempfile::tempdir().unwrap();
        let opts = JournalOptions {
            fsync: FsyncPolicy::Interval(Duration::from_secs(3600)),
            ..JournalOptions::default()
        };
        let (mut j, _) = Journal::open(dir.path(), opts).unwrap();
        j.append_next(0, b"meta").unwrap();
        j.sync().unwrap();
        for i in 0..10u32 {
            p.push(format!("message {i}").as_bytes()).unwrap();
        }
        let mut col = JournalCollector::new();
        assert_eq!(col.drain(&ring, &mut j, STREAM_MSG, 4).unwrap(), 4);
        assert_eq!(col.commit(&ring, &mut j).unwrap(), 1);
        assert_eq!(col.drain(&ring, &mut j, STREAM_MSG, 100).unwrap(), 6);
        assert_eq!(col.drain(&ring, &mut j, STREAM_MSG, 100).unwrap(), 0);
        assert_eq!(col.messages, 10);
        assert_eq!(j.last_seq(), 11);
        assert_eq!(col.commit(&ring, &mut j).unwrap(), 1);
        let why = "nothing durable yet, nothing acknowledged";
        assert_eq!(ring.ack_seq(), 0, "{why}");
        j.sync().unwrap();
        assert_eq!(col.commit(&ring, &mut j).unwrap(), 11);
        assert_eq!(ring.ack_seq(), 10, "durable, acknowledged");
        let recs: Vec<_> = j.read_from(2).unwrap().map(Result::unwrap).collect();
        assert_eq!(recs.len(), 10);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!((r.seq, r.stream), (i as u64 + 2, STREAM_MSG));
            assert_eq!(r.payload, format!("message {i}").as_bytes());
        }
        // A record the journal refuses stays in the ring, and nothing after it is taken.
        p.push(b"small").unwrap();
        p.push(&[7u8; 200]).unwrap();
        p.push(b"after").unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let small = JournalOptions {
            fsync: FsyncPolicy::Never,
            max_payload: 100,
            ..JournalOptions::default()
        };
        let (mut j2, _) = Journal::open(dir2.path(), small).unwrap();
        let e = col.drain(&ring, &mut j2, STREAM_MSG, 100).unwrap_err();
        assert!(e.to_string().contains("200"), "{e}");
        assert_eq!(
            j2.last_seq(),
            1,
            "the record before the refused one is kept"
        );
        assert_eq!(
            ring.next_seq(),
            12,
            "the refused record is still in the ring"
        );
    }
}
