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
