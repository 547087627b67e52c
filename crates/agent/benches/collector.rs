//! The collector's cost per message, ring → journal, no fsync (issue 4: the collector runs on
//! the recorded server's CPU, so every ns it spends per message is taken from the server).
//!
//! `cargo bench -p agent --bench collector` (env `BENCH_RUNS`, default 7; `BENCH_MSGS`,
//! default 2,000,000; `BENCH_DIR`, default the system temp dir, where the journals go;
//! `BENCH_ONLY=collector|direct|session3|poll|passes` runs one variant alone, for a profiler).
//!
//! Each run fills an anonymous 16 MiB ring with 50,000 messages at a time (payloads of 24, 32,
//! 40, 40, 32 and 112 bytes in turn: mostly the compact time messages a recorded server emits,
//! now and then a `read` with data), then drains it into a journal (`FsyncPolicy::Never`, so
//! every commit writes to the page cache and nothing waits for a disk), and counts the
//! draining thread's CPU time only (`CLOCK_THREAD_CPUTIME_ID`). Printed per message, median
//! of the runs:
//! - `collector`: `agent::collector::JournalCollector` (`drain` until the ring is empty, then
//!   one `commit`), what `understudy record` ran at each wake-up until session 4;
//! - `collector, O_DIRECT`: the same into a journal opened as `understudy record` opens it since
//!   session 5 (`JournalOptions::direct_io`, fsync every 200 ms): whole blocks go to the device
//!   with `O_DIRECT` once the 1 MiB write buffer fills, instead of every commit into the page
//!   cache (the line says so when the file system refuses `O_DIRECT`);
//! - `session 3`: the loop `understudy record` ran before (every payload copied into an
//!   encoding buffer by `transport::frame::push_record`, then into the journal's write buffer
//!   by `Journal::append_encoded_counted`);
//! - the limits, measured in the same run: `ring poll only` (the ring's own walk with an empty
//!   callback, the consumer's floor), and `unavoidable passes` (one copy of the same encoded
//!   bytes into a buffer, their CRC32C and their `write(2)` to a file: what any journal of these
//!   messages pays).

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

use journal::{FsyncPolicy, Journal, JournalOptions};
use shmring::{RingConsumer, RingProducer};

const SIZES: [usize; 6] = [24, 32, 40, 40, 32, 112];
const FILL: u64 = 50_000;
const CAPACITY: usize = 16 << 20;
const DRAIN_MAX: usize = 4096;
const STREAM: u32 = 1;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| {
            u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                + u64::try_from(t.tv_nsec()).unwrap_or(0)
        })
        .unwrap_or(0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn fill(p: &RingProducer<'_>, k: &mut usize, n: u64) {
    let payload = [0x5au8; 128];
    for _ in 0..n {
        let len = SIZES[*k % SIZES.len()];
        *k += 1;
        p.push(&payload[..len]).unwrap();
    }
}

fn journal(dir: &Path, direct: bool) -> Journal {
    let opts = JournalOptions {
        fsync: if direct {
            FsyncPolicy::Interval(std::time::Duration::from_millis(200))
        } else {
            FsyncPolicy::Never
        },
        direct_io: direct,
        write_buffer: usize::try_from(env_u64("BENCH_WRITE_BUFFER", 1 << 20)).unwrap(),
        ..JournalOptions::default()
    };
    let j = Journal::open(dir, opts).unwrap().0;
    if let Some(why) = j.direct_io_refused() {
        eprintln!("collector, O_DIRECT: {why}");
    }
    j
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Collector,
    Direct,
    Session3,
    PollOnly,
}

/// Consumer CPU ns per message for one run of `msgs` messages.
fn run(variant: Variant, msgs: u64, base: &Path) -> f64 {
    let ring = RingConsumer::anonymous(CAPACITY).unwrap();
    let prod = ring.producer();
    let dir = tempfile::tempdir_in(base).unwrap();
    let mut j = journal(dir.path(), variant == Variant::Direct);
    let mut enc: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut pending: VecDeque<(u64, u64)> = VecDeque::new();
    let mut col = agent::collector::JournalCollector::new();
    let mut k = 0usize;
    let mut cpu = 0u64;
    let mut done = 0u64;
    while done < msgs {
        let n = FILL.min(msgs - done);
        fill(&prod, &mut k, n);
        let t0 = thread_cpu_ns();
        let mut got = 0u64;
        loop {
            let d = match variant {
                Variant::Collector | Variant::Direct => {
                    col.drain(&ring, &mut j, STREAM, DRAIN_MAX).unwrap()
                }
                Variant::Session3 => session3(&ring, &mut j, &mut enc, &mut pending),
                Variant::PollOnly => ring.poll(DRAIN_MAX, |_, _| {}).unwrap(),
            };
            got += d as u64;
            if d < DRAIN_MAX {
                break;
            }
        }
        if matches!(variant, Variant::Collector | Variant::Direct) {
            // One group commit per wake-up, as `understudy record` does.
            col.commit(&ring, &mut j).unwrap();
        }
        cpu += thread_cpu_ns() - t0;
        assert_eq!(got, n, "drained {got} of {n} messages");
        done += n;
    }
    if variant != Variant::PollOnly {
        assert_eq!(j.last_seq(), msgs, "journal holds every message");
    }
    cpu as f64 / msgs as f64
}

/// `understudy record`'s drain as it was at the end of session 3.
fn session3(
    ring: &RingConsumer,
    j: &mut Journal,
    enc: &mut Vec<u8>,
    pending: &mut VecDeque<(u64, u64)>,
) -> usize {
    enc.clear();
    let mut last_rs = None;
    let n = ring
        .poll(DRAIN_MAX, |rs, payload| {
            transport::frame::push_record(enc, STREAM, payload);
            last_rs = Some(rs);
        })
        .unwrap();
    if let Some(rs) = last_rs {
        let first = j.last_seq() + 1;
        let js = j
            .append_encoded_counted(first, u32::try_from(n).unwrap(), enc)
            .unwrap();
        pending.push_back((js, rs));
    }
    if !pending.is_empty() {
        let durable = j.commit().unwrap();
        let mut ack = None;
        while pending.front().is_some_and(|(js, _)| *js <= durable) {
            ack = pending.pop_front().map(|(_, rs)| rs);
        }
        if let Some(rs) = ack {
            ring.set_ack(rs);
        }
    }
    n
}

/// The passes any journal of these messages pays, per message: copy the encoded records
/// (8-byte header + payload) into a buffer, CRC32C them, `write(2)` them to a file.
fn passes(msgs: u64, base: &Path) -> f64 {
    let dir = tempfile::tempdir_in(base).unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let src = [0x5au8; 128];
    let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut cpu = 0u64;
    let mut k = 0usize;
    let mut done = 0u64;
    while done < msgs {
        let n = FILL.min(msgs - done);
        let t0 = thread_cpu_ns();
        let mut i = 0;
        while i < n {
            buf.clear();
            let m = (DRAIN_MAX as u64).min(n - i);
            for _ in 0..m {
                let len = SIZES[k % SIZES.len()];
                k += 1;
                buf.extend_from_slice(&STREAM.to_le_bytes());
                buf.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
                buf.extend_from_slice(&src[..len]);
            }
            std::hint::black_box(crc32c::crc32c(&buf));
            f.write_all(&buf).unwrap();
            i += m;
        }
        cpu += thread_cpu_ns() - t0;
        done += n;
    }
    cpu as f64 / msgs as f64
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs = env_u64("BENCH_RUNS", 7).max(1);
    let msgs = env_u64("BENCH_MSGS", 2_000_000).max(1);
    let base = std::env::var("BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let mut col = vec![];
    let mut dio = vec![];
    let mut s3 = vec![];
    let mut poll = vec![];
    let mut raw = vec![];
    if let Ok(only) = std::env::var("BENCH_ONLY") {
        // One variant alone (for a profiler): collector | session3 | poll | passes.
        for _ in 0..runs {
            let ns = match only.as_str() {
                "collector" => run(Variant::Collector, msgs, &base),
                "direct" => run(Variant::Direct, msgs, &base),
                "session3" => run(Variant::Session3, msgs, &base),
                "poll" => run(Variant::PollOnly, msgs, &base),
                "passes" => passes(msgs, &base),
                o => panic!("BENCH_ONLY={o}: one of collector, direct, session3, poll, passes"),
            };
            println!("{only}: {ns:.1} ns per message");
        }
        return;
    }
    // Interleaved, so that a change of the machine's load hits every variant alike.
    for r in 0..runs {
        let c = run(Variant::Collector, msgs, &base);
        let d = run(Variant::Direct, msgs, &base);
        let s = run(Variant::Session3, msgs, &base);
        let p = run(Variant::PollOnly, msgs, &base);
        let w = passes(msgs, &base);
        println!(
            "run {}: collector {c:.1} ns, collector O_DIRECT {d:.1} ns, session 3 {s:.1} ns, ring poll only {p:.1} ns, unavoidable passes {w:.1} ns per message",
            r + 1
        );
        col.push(c);
        dio.push(d);
        s3.push(s);
        poll.push(p);
        raw.push(w);
    }
    let avg = SIZES.iter().sum::<usize>() as f64 / SIZES.len() as f64;
    println!(
        "median of {runs} runs ({msgs} messages of {avg:.1} bytes on average, consumer CPU time per message, ring -> journal, no fsync but the O_DIRECT variant's every 200 ms):"
    );
    let (c, d, s, p, w) = (
        median(&mut col),
        median(&mut dio),
        median(&mut s3),
        median(&mut poll),
        median(&mut raw),
    );
    println!("  collector (JournalCollector)   {c:6.1} ns");
    println!(
        "  collector, O_DIRECT (record)   {d:6.1} ns (the journal as `understudy record` opens it)"
    );
    println!("  session 3 loop (enc + append)  {s:6.1} ns");
    println!("  limit: ring poll only          {p:6.1} ns");
    println!("  limit: unavoidable passes      {w:6.1} ns (copy + CRC32C + write(2) of the encoded bytes)");
    println!(
        "  collector, O_DIRECT, against the page-cache limit: {:+.1} ns per message",
        d - p - w
    );
    println!(
        "  collector above the sum of both limits: {:+.1} ns per message",
        c - p - w
    );
}
