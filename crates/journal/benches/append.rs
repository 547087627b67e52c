//! Journal append throughput beside raw sequential writes to the same directory, in one run.
//!
//! `cargo bench -p journal --bench append -- [--dir DIR] [--reps N] [--scale F]`
//!
//! For each record size (64 B and 1 KiB) and batch of 64 records, it measures:
//! - `raw write`: `write(2)` of the same bytes per batch into a plain file (the limit for
//!   `journal never`), and `raw write+fdatasync`: the same plus `fdatasync` per batch (the
//!   limit for `journal always`); each raw run and its journal run go in lockstep, batch by
//!   batch (`paired_run`);
//! - `journal never|always`: `append` x64 then `commit()` under that fsync policy;
//! - `4 thr, group commit`: 4 threads on a `SharedJournal` (policy `Always`), each appending
//!   16 records then `commit()` (as many records in all as `journal always`), so one fsync can
//!   cover several threads' batches; `4 thr, commit in lock`: the same through the lock
//!   (one fsync per commit). Their limit is `raw write+fdatasync/16`: one fdatasync per 16
//!   records, what committing each thread's batch alone costs. These three run in lockstep
//!   chunk by chunk (`paired_threaded_run`).
//!
//! Prints the median of `--reps` runs of each (runs interleaved so drift hits all alike), its
//! ratio to its limit's median, and the median of the per-rep ratios.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use journal::format::RECORD_HEADER_LEN;
use journal::{FsyncPolicy, Journal, JournalOptions, SharedJournal};

const BATCH: usize = 64;

struct Args {
    dir: PathBuf,
    reps: usize,
    scale: f64,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: std::env::temp_dir(),
        reps: 5,
        scale: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dir" => a.dir = it.next().expect("--dir DIR").into(),
            "--reps" => a.reps = it.next().expect("--reps N").parse().expect("--reps N"),
            "--scale" => a.scale = it.next().expect("--scale F").parse().expect("--scale F"),
            _ => {} // `cargo bench` passes --bench
        }
    }
    a
}

/// One measured run: records and on-disk frame bytes moved in `elapsed`.
#[derive(Clone, Copy)]
struct Run {
    records: u64,
    bytes: u64,
    elapsed: Duration,
    fsyncs: u64,
}

impl Run {
    fn rec_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64()
    }
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64() / 1e6
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    let _ = std::fs::remove_file(&p);
    p
}

/// A raw file and a journal (`Always` if `fsync`, else `Never`) written in lockstep: batch i
/// of the raw file (plus `fdatasync` if `fsync`), then batch i of the journal, each timed on
/// its own. Both see the disk in the same state at nearly the same moment, which matters when
/// other jobs share the disk (fsync latency then swings by 10x within a second).
fn paired_run(dir: &Path, rec_len: usize, batches: usize, fsync: bool) -> (Run, Run) {
    let path = fresh(dir, "raw.bin");
    let jdir = fresh(dir, "bench-journal-paired");
    let batch = vec![0x5au8; BATCH * (RECORD_HEADER_LEN + rec_len)];
    let payload = vec![0xa5u8; rec_len];
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let opts = JournalOptions {
        fsync: if fsync {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Never
        },
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&jdir, opts).unwrap();
    let fsyncs0 = j.stats().fsyncs;
    let (mut t_raw, mut t_journal) = (Duration::ZERO, Duration::ZERO);
    let mut seq = 0;
    for _ in 0..batches {
        let t = Instant::now();
        f.write_all(&batch).unwrap();
        if fsync {
            f.sync_data().unwrap();
        }
        t_raw += t.elapsed();
        let t = Instant::now();
        for _ in 0..BATCH {
            seq += 1;
            j.append(1, seq, &payload).unwrap();
        }
        j.commit().unwrap();
        t_journal += t.elapsed();
    }
    let fsyncs = j.stats().fsyncs - fsyncs0;
    drop(j);
    drop(f);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_dir_all(&jdir).unwrap();
    let bytes = (batches * batch.len()) as u64;
    (
        Run {
            records: seq,
            bytes,
            elapsed: t_raw,
            fsyncs: if fsync { batches as u64 } else { 0 },
        },
        Run {
            records: seq,
            bytes,
            elapsed: t_journal,
            fsyncs,
        },
    )
}

const THREADS: usize = 4;
const PER_COMMIT: usize = BATCH / THREADS;

/// 4 threads, each `append` x16 + `commit()`, `batches` times, on `j`; `group` selects
/// `SharedJournal::commit` (fsync outside the lock, shared) over committing while holding the
/// lock (one fsync per commit, the naive `Mutex<Journal>`). Returns the elapsed time.
fn threaded_chunk(j: &Arc<SharedJournal>, rec_len: usize, batches: usize, group: bool) -> Duration {
    let t = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|i| {
            let j = Arc::clone(j);
            std::thread::spawn(move || {
                let payload = vec![0xa5u8; rec_len];
                let stream = u32::try_from(i).unwrap();
                for _ in 0..batches {
                    if group {
                        for _ in 0..PER_COMMIT {
                            j.append_next(stream, &payload).unwrap();
                        }
                        j.commit().unwrap();
                    } else {
                        let mut g = j.lock();
                        for _ in 0..PER_COMMIT {
                            g.append_next(stream, &payload).unwrap();
                        }
                        g.commit().unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed()
}

/// The three multi-threaded rows in lockstep, chunk by chunk (10 chunks): the raw file with
/// one fdatasync per 16 records, then the commit-in-lock journal, then the group-commit
/// journal, each timed on its own, so all three see the shared disk in similar states.
fn paired_threaded_run(dir: &Path, rec_len: usize, batches: usize) -> [Run; 3] {
    const CHUNKS: usize = 10;
    let per_chunk = batches.div_ceil(CHUNKS);
    let path = fresh(dir, "raw16.bin");
    let chunk16 = vec![0x5au8; PER_COMMIT * (RECORD_HEADER_LEN + rec_len)];
    let mut f: File = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let opts = JournalOptions {
        fsync: FsyncPolicy::Always,
        ..JournalOptions::default()
    };
    let open = |name: &str| {
        let (j, _) = SharedJournal::open(fresh(dir, name), opts.clone()).unwrap();
        Arc::new(j)
    };
    let (jl, jg) = (open("bench-journal-lock"), open("bench-journal-group"));
    let (fl0, fg0) = (jl.lock().stats().fsyncs, jg.lock().stats().fsyncs);
    let mut t = [Duration::ZERO; 3];
    let mut raw_writes = 0u64;
    for _ in 0..CHUNKS {
        let t0 = Instant::now();
        for _ in 0..THREADS * per_chunk {
            f.write_all(&chunk16).unwrap();
            f.sync_data().unwrap();
            raw_writes += 1;
        }
        t[0] += t0.elapsed();
        t[1] += threaded_chunk(&jl, rec_len, per_chunk, false);
        t[2] += threaded_chunk(&jg, rec_len, per_chunk, true);
    }
    let frame = (RECORD_HEADER_LEN + rec_len) as u64;
    let run = |j: &Arc<SharedJournal>, fsyncs0: u64, elapsed: Duration| {
        let records = j.last_seq();
        Run {
            records,
            bytes: records * frame,
            elapsed,
            fsyncs: j.lock().stats().fsyncs - fsyncs0,
        }
    };
    let out = [
        Run {
            records: raw_writes * PER_COMMIT as u64,
            bytes: raw_writes * chunk16.len() as u64,
            elapsed: t[0],
            fsyncs: raw_writes,
        },
        run(&jl, fl0, t[1]),
        run(&jg, fg0, t[2]),
    ];
    drop((jl, jg, f));
    for name in ["bench-journal-lock", "bench-journal-group"] {
        std::fs::remove_dir_all(dir.join(name)).unwrap();
    }
    std::fs::remove_file(&path).unwrap();
    out
}

fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.mb_per_s().total_cmp(&b.mb_per_s()));
    runs[runs.len() / 2]
}

/// Reading back for shipping: `read_raw_into` (frames as stored, 256 KiB batches into one
/// reused buffer) and `read_from` (records decoded one by one, as owned `Record`s or borrowed
/// with `next_ref`) over a journal of 64-byte records, beside plain `read(2)` of the same
/// segment files in 256 KiB chunks; then `Journal::open` (which verifies every record) and
/// `inspect::summarize` (verify + SHA-256) of that journal; all from the page cache (each
/// file is read once before timing).
fn read_section(dir: &Path, args: &Args) {
    use std::io::Read;
    const CHUNK: usize = 256 << 10;
    let jdir = fresh(dir, "bench-journal-read");
    let opts = JournalOptions {
        fsync: FsyncPolicy::Never,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&jdir, opts).unwrap();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = ((1_000_000.0 * args.scale).max(1000.0)) as u64;
    let payload = [0xa5u8; 64];
    for seq in 1..=n {
        j.append(1, seq, &payload).unwrap();
    }
    j.commit().unwrap();
    let frame_bytes = n * (RECORD_HEADER_LEN as u64 + 64);
    let files: Vec<PathBuf> = {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&jdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    };
    let raw_read = || {
        let mut buf = vec![0u8; CHUNK];
        let t = Instant::now();
        let mut total = 0u64;
        for p in &files {
            let mut f = File::open(p).unwrap();
            loop {
                let k = f.read(&mut buf).unwrap();
                if k == 0 {
                    break;
                }
                total += k as u64;
            }
        }
        (t.elapsed(), total)
    };
    let _ = raw_read(); // warm the page cache
    let mut raw_runs = Vec::new();
    let mut ship_runs = Vec::new();
    let mut iter_runs = Vec::new();
    let mut ref_runs = Vec::new();
    let mut buf = Vec::with_capacity(CHUNK + (1 << 10));
    for _ in 0..args.reps {
        let (elapsed, total) = raw_read();
        raw_runs.push(Run {
            records: n,
            bytes: total,
            elapsed,
            fsyncs: 0,
        });
        let t = Instant::now();
        let mut next = 1;
        while next <= n {
            buf.clear();
            let r = j.read_raw_into(next, CHUNK, &mut buf).unwrap();
            next = r.last_seq + 1;
        }
        ship_runs.push(Run {
            records: n,
            bytes: frame_bytes,
            elapsed: t.elapsed(),
            fsyncs: 0,
        });
        let t = Instant::now();
        let mut count = 0u64;
        for r in j.read_from(1).unwrap() {
            count += r.unwrap().payload.len() as u64;
        }
        assert_eq!(count, n * 64);
        iter_runs.push(Run {
            records: n,
            bytes: frame_bytes,
            elapsed: t.elapsed(),
            fsyncs: 0,
        });
        let t = Instant::now();
        let mut count = 0u64;
        let mut it = j.read_from(1).unwrap();
        while let Some(r) = it.next_ref() {
            count += r.unwrap().payload.len() as u64;
        }
        assert_eq!(count, n * 64);
        ref_runs.push(Run {
            records: n,
            bytes: frame_bytes,
            elapsed: t.elapsed(),
            fsyncs: 0,
        });
    }
    drop(j);
    // Opening (every record verified) and summarizing the same journal.
    let mut open_runs = Vec::new();
    let mut summary_runs = Vec::new();
    let opts = JournalOptions {
        fsync: FsyncPolicy::Never,
        ..JournalOptions::default()
    };
    for _ in 0..args.reps {
        let t = Instant::now();
        let (j, rec) = Journal::open(&jdir, opts.clone()).unwrap();
        open_runs.push(Run {
            records: rec.records,
            bytes: frame_bytes,
            elapsed: t.elapsed(),
            fsyncs: 0,
        });
        drop(j);
        let t = Instant::now();
        let s = journal::inspect::summarize(&jdir).unwrap();
        summary_runs.push(Run {
            records: s.records,
            bytes: frame_bytes,
            elapsed: t.elapsed(),
            fsyncs: 0,
        });
    }
    std::fs::remove_dir_all(&jdir).unwrap();
    let raw = median(raw_runs);
    println!();
    println!("reading {n} records of 64 B back (page cache), 256 KiB batches");
    println!(
        "| {:<22} | {:>12} | {:>9} | {:>14} |",
        "mode", "records/s", "MB/s", "vs raw read"
    );
    println!("|{:-<24}|{:->14}|{:->11}|{:->16}|", "", "", "", "");
    for (name, run) in [
        ("raw read", raw),
        ("read_raw_into", median(ship_runs)),
        ("read_from (Record)", median(iter_runs)),
        ("read_from + next_ref", median(ref_runs)),
        ("open (verify all)", median(open_runs)),
        ("inspect::summarize", median(summary_runs)),
    ] {
        println!(
            "| {:<22} | {:>12.0} | {:>9.1} | {:>13.0}% |",
            name,
            run.rec_per_s(),
            run.mb_per_s(),
            100.0 * run.mb_per_s() / raw.mb_per_s()
        );
    }
}

fn main() {
    let args = parse_args();
    let dir = args
        .dir
        .join(format!("journal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    println!(
        "journal append benchmark: dir {} , {} reps (median), batch {BATCH} records",
        dir.display(),
        args.reps
    );
    // Run sizes are small positive counts; saturating float-to-int conversion is what we want.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let scaled = |n: f64| (n * args.scale).max(1.0) as usize;
    for rec_len in [64usize, 1024] {
        // Batches per run: the no-fsync runs move ~64 MiB, the fsync runs a bounded count.
        let frame = RECORD_HEADER_LEN + rec_len;
        let nofsync_batches = scaled(128.0 * 1024.0 * 1024.0 / (BATCH * frame) as f64);
        let fsync_batches = scaled(500.0);
        let mut rows: Vec<(&str, Vec<Run>)> = vec![
            ("raw write", Vec::new()),
            ("journal never", Vec::new()),
            ("raw write+fdatasync", Vec::new()),
            ("journal always", Vec::new()),
            ("raw write+fdatasync/16", Vec::new()),
            ("4 thr, commit in lock", Vec::new()),
            ("4 thr, group commit", Vec::new()),
        ];
        for _ in 0..args.reps {
            let (raw_write, journal_never) = paired_run(&dir, rec_len, nofsync_batches, false);
            rows[0].1.push(raw_write);
            rows[1].1.push(journal_never);
            let (raw_fsync, journal_always) = paired_run(&dir, rec_len, fsync_batches, true);
            rows[2].1.push(raw_fsync);
            rows[3].1.push(journal_always);
            let [raw16, in_lock, group] = paired_threaded_run(&dir, rec_len, fsync_batches);
            rows[4].1.push(raw16);
            rows[5].1.push(in_lock);
            rows[6].1.push(group);
        }
        // Each row's limit, and the median of per-rep ratios (a journal run and its limit
        // run are adjacent in time, so their ratio is less exposed to drift on a shared host).
        let limit_of = |i: usize| match i {
            0 | 1 => 0,
            2 | 3 => 2,
            _ => 4,
        };
        println!();
        println!("record payload {rec_len} B (frame {frame} B)");
        println!(
            "| {:<22} | {:>12} | {:>9} | {:>8} | {:>14} | {:>14} |",
            "mode", "records/s", "MB/s", "fsyncs", "vs limit", "per-rep ratio"
        );
        println!(
            "|{:-<24}|{:->14}|{:->11}|{:->10}|{:->16}|{:->16}|",
            "", "", "", "", "", ""
        );
        for (i, (name, runs)) in rows.iter().enumerate() {
            let (_, limit_runs) = &rows[limit_of(i)];
            let mut ratios: Vec<f64> = runs
                .iter()
                .zip(limit_runs)
                .map(|(r, l)| r.mb_per_s() / l.mb_per_s())
                .collect();
            ratios.sort_by(f64::total_cmp);
            let run = median(runs.clone());
            let limit = median(limit_runs.clone());
            println!(
                "| {:<22} | {:>12.0} | {:>9.1} | {:>8} | {:>13.0}% | {:>13.0}% |",
                name,
                run.rec_per_s(),
                run.mb_per_s(),
                run.fsyncs,
                100.0 * run.mb_per_s() / limit.mb_per_s(),
                100.0 * ratios[ratios.len() / 2]
            );
        }
    }
    read_section(&dir, &args);
    let _ = std::fs::remove_dir_all(&dir);
}
