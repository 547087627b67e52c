//! Checkpoint/restore benchmark (issue 2).
//!
//! For each size (default 64, 256 and 1024 MiB) it starts a tree (a root holding that much
//! touched anonymous memory, plus one small child), measures raw `process_vm_readv` throughput
//! on that very memory, then dumps (killing the tree) and restores it RUNS times through the
//! library (`checkpoint::dump`, `restore::restore`), and finally lets the workload verify every
//! page. Prints one markdown table of medians, each next to its target.
//!
//! ```sh
//! cargo bench -p understudy --bench ckpt_bench -- [--sizes 64,256,1024] [--runs 5] [--reuse] [--no-sync] [--ab-serial | --ab-parts | --ab-sync]
//! ```
//! `--ab-serial` runs every counted run twice, the engine's serial copy and the overlapped one
//! alternated, and prints an A/B line per size (medians and per-pair differences).
//! `--ab-parts` does the same with one pages file per process (`UNDERSTUDY_DUMP_PARTS=1`, the
//! layout before image version 5) against the default part files (one per copy worker).
//! `--ab-sync`: `tree.img` fsynced while frozen before the kill (`UNDERSTUDY_TREE_SYNC_FROZEN=1`,
//! as before) against the default, its fsync beside the reap wait (the dump time still counts
//! any wait for it after the reap). `UNDERSTUDY_BENCH_TRACE=1` prints the engine's debug timings.
//! Each timed dump starts after a `sync` (`--no-sync`: without), and each run prints the
//! kernel's memory work during the dump (free and dirty memory, reclaim, stalls).
//! Needs root and `cc`. Images go to `$UNDERSTUDY_BENCH_DIR` (default: the system temp dir).
#![forbid(unsafe_code)]

use std::fs;
use std::io::IoSliceMut;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

const WORKLOAD: &str = include_str!("bench_mem.c");

struct Args {
    sizes: Vec<u64>,
    runs: usize,
    /// `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and must not start
    /// a benchmark that dumps gigabytes.
    bench: bool,
    /// `--reuse`: recycled dumps (see `parse_args`).
    reuse: bool,
    /// `sync` before each timed dump (default; `--no-sync` turns it off).
    sync: bool,
    /// `--ab-serial` / `--ab-parts`: every run twice, alternating two variants of the engine,
    /// for an A/B at the same moments.
    ab: Option<Ab>,
}

/// Two variants of the engine chosen by an environment variable: A sets `var` to `a`, B to
/// `b` (or removes it: the default).
#[derive(Clone, Copy)]
struct Ab {
    var: &'static str,
    a: &'static str,
    b: Option<&'static str>,
    a_name: &'static str,
    b_name: &'static str,
}

const AB_SERIAL: Ab = Ab {
    var: "UNDERSTUDY_DUMP_SERIAL",
    a: "1",
    b: Some("0"),
    a_name: "serial copy",
    b_name: "overlapped copy",
};

const AB_SYNC: Ab = Ab {
    var: "UNDERSTUDY_TREE_SYNC_FROZEN",
    a: "1",
    b: None,
    a_name: "tree.img fsynced frozen",
    b_name: "tree.img fsynced beside the reap",
};

const AB_PARTS: Ab = Ab {
    var: "UNDERSTUDY_DUMP_PARTS",
    a: "1",
    b: None,
    a_name: "one pages file",
    b_name: "part files",
};

fn parse_args() -> Args {
    let mut args = Args {
        sizes: vec![64, 256, 1024],
        runs: 5,
        bench: false,
        reuse: false,
        sync: true,
        ab: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                let v = it.next().expect("--sizes needs a value");
                args.sizes = v
                    .split(',')
                    .map(|s| s.trim().parse().expect("size in MiB"))
                    .collect();
            }
            "--runs" => args.runs = it.next().expect("--runs N").parse().expect("--runs N"),
            "--bench" => args.bench = true,
            // Periodic checkpoints: every counted dump recycles the previous run's image
            // (`DumpOptions::reuse_from`); one uncounted fresh dump goes first.
            "--reuse" => args.reuse = true,
            // Each timed dump starts after a `sync` (see `bench_size`) unless told otherwise.
            "--no-sync" => args.sync = false,
            "--ab-serial" => args.ab = Some(AB_SERIAL),
            "--ab-parts" => args.ab = Some(AB_PARTS),
            "--ab-sync" => args.ab = Some(AB_SYNC),
            // Anything else is a filter or a test-harness flag we do not use.
            _ => {}
        }
    }
    args
}

/// The error and every source under it, one per line: a failed dump or restore must say why.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str("\n  caused by: ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// A failed dump or restore ends the benchmark with its whole error chain (never a missing row);
/// the bench directory with its images is kept for inspection. Panics, so the tree is killed
/// on the way out and the exit status is non-zero.
fn fail(what: &str, image: &Path, root: i32, e: &dyn std::error::Error) -> ! {
    eprintln!(
        "ckpt_bench: {what} failed (image {} kept; load {}; pid {root} now: {})\n  error: {}",
        image.display(),
        fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        holder(root),
        chain(e)
    );
    panic!("{what} failed: {}", chain(e));
}

/// Restores `image`; if one of its pids was taken by another process meanwhile (the
/// restore refuses that cleanly, the image stays intact: seen once here under heavy process
/// churn, the pid free again a moment later), says so, waits up to 5 s for the pid to be free
/// and tries again, at most 3 times. Returns the report and the time of the attempt that
/// succeeded; any other failure ends the benchmark.
fn restore_retrying(image: &Path, what: &str, root: i32) -> (restore::RestoreReport, Duration) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let t = Instant::now();
        match restore::restore(&restore::RestoreOptions {
            image_dir: image.to_path_buf(),
            ..Default::default()
        }) {
            Ok(r) => return (r, t.elapsed()),
            Err(restore::RestoreError::PidTaken { pid }) if attempt < 3 => {
                eprintln!(
                    "ckpt_bench: {what}: restore attempt {attempt}: pid {pid} taken by another process ({}); waiting for it and retrying",
                    holder(pid)
                );
                let since = Instant::now();
                while fs::metadata(format!("/proc/{pid}")).is_ok()
                    && since.elapsed() < Duration::from_secs(5)
                {
                    sleep(Duration::from_millis(5));
                }
            }
            Err(e) => fail(&format!("{what}: restore"), image, root, &e),
        }
    }
}

/// Who holds `pid` now (a restore fails if another process took one of the tree's pids).
fn holder(pid: i32) -> String {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => format!(
            "taken by `{}`",
            String::from_utf8_lossy(&c).replace('\0', " ").trim()
        ),
        Err(_) => "free".into(),
    }
}

/// The counters of `/proc/vmstat` that say what the kernel's memory management did around a
/// dump (page-cache reclaim, dirty data, writeback), read before and after each timed dump.
#[derive(Default, Clone, Copy)]
struct MemState {
    free_pages: u64,
    dirty_pages: u64,
    writeback_pages: u64,
    scan_kswapd: u64,
    scan_direct: u64,
    alloc_stall: u64,
    compact_stall: u64,
}

fn mem_state() -> MemState {
    let mut m = MemState::default();
    let Ok(t) = fs::read_to_string("/proc/vmstat") else {
        return m;
    };
    for l in t.lines() {
        let mut it = l.split_whitespace();
        let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<u64>().ok())) else {
            continue;
        };
        match k {
            "nr_free_pages" => m.free_pages = v,
            "nr_dirty" => m.dirty_pages = v,
            "nr_writeback" => m.writeback_pages = v,
            "pgscan_kswapd" => m.scan_kswapd = v,
            "pgscan_direct" => m.scan_direct = v,
            "compact_stall" => m.compact_stall = v,
            _ if k.starts_with("allocstall_") => m.alloc_stall += v,
            _ => {}
        }
    }
    m
}

/// One line about the kernel's memory work during a dump: free and dirty memory at its
/// start, pages scanned by reclaim (kswapd, direct) and allocation/compaction stalls meanwhile.
fn mem_line(a: &MemState, b: &MemState) -> String {
    let mib = |pages: u64| pages * 4096 / (1 << 20);
    format!(
        "free {} MiB, dirty {} MiB, writeback {} MiB at the start; reclaim scanned {} MiB (kswapd) + {} MiB (direct), {} alloc stalls, {} compaction stalls",
        mib(a.free_pages),
        mib(a.dirty_pages),
        mib(a.writeback_pages),
        mib(b.scan_kswapd.saturating_sub(a.scan_kswapd)),
        mib(b.scan_direct.saturating_sub(a.scan_direct)),
        b.alloc_stall.saturating_sub(a.alloc_stall),
        b.compact_stall.saturating_sub(a.compact_stall),
    )
}

/// CPU seconds (user + system) of this process so far, every thread: the dump's own CPU, which
/// the load of other jobs moves much less than its wall time.
fn cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(0.0, |u| {
        let t = |tv: nix::sys::time::TimeVal| {
            #[allow(clippy::cast_precision_loss)] // seconds far below 2^52
            let secs = tv.tv_sec() as f64;
            #[allow(clippy::cast_precision_loss)]
            let us = tv.tv_usec() as f64;
            secs + us * 1e-6
        };
        t(u.user_time()) + t(u.system_time())
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn du(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                total += du(&p);
            } else if let Ok(m) = p.metadata() {
                total += m.len();
            }
        }
    }
    total
}

/// The running workload tree; killed on drop.
struct Tree {
    root: i32,
    dir: PathBuf,
    addr: usize,
    len: usize,
}

impl Drop for Tree {
    fn drop(&mut self) {
        // After a failed restore the root's pid may belong to someone else: kill only our own.
        let ours = fs::read(format!("/proc/{}/cmdline", self.root))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()));
        if !ours {
            let _ = fs::remove_dir_all(&self.dir);
            return;
        }
        // The whole tree is one session led by the root: kill its process group.
        let _ = kill(Pid::from_raw(-self.root), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.root), Signal::SIGKILL);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn wait_file(p: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(p) {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "{} did not appear within {timeout:?}",
            p.display()
        );
        sleep(Duration::from_millis(10));
    }
}

fn start_tree(bin: &Path, base: &Path, mib: u64) -> Tree {
    let dir = base.join(format!("tree-{mib}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("tree dir");
    let out = Command::new(bin)
        .arg(&dir)
        .arg(mib.to_string())
        .output()
        .expect("start workload");
    assert!(out.status.success(), "workload failed to start: {out:?}");
    let root: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("root pid");
    let mut tree = Tree {
        root,
        dir,
        addr: 0,
        len: 0,
    };
    wait_file(&tree.dir.join("ready"), Duration::from_secs(120));
    let region = wait_file(&tree.dir.join("region"), Duration::from_secs(5));
    let mut it = region
        .split_whitespace()
        .map(|s| s.parse::<usize>().expect("region"));
    tree.addr = it.next().expect("addr");
    tree.len = it.next().expect("len");
    tree
}

/// Raw process_vm_readv throughput (bytes/s) over the whole region, into a 64 MiB buffer.
fn raw_readv(tree: &Tree, buf: &mut [u8]) -> f64 {
    let start = Instant::now();
    let mut off = 0;
    while off < tree.len {
        let n = buf.len().min(tree.len - off);
        let mut local = [IoSliceMut::new(&mut buf[..n])];
        let remote = [RemoteIoVec {
            base: tree.addr + off,
            len: n,
        }];
        let got = process_vm_readv(Pid::from_raw(tree.root), &mut local, &remote)
            .expect("process_vm_readv");
        assert_eq!(got, n, "short process_vm_readv");
        off += n;
    }
    #[allow(clippy::cast_precision_loss)] // byte counts far below 2^52
    let bytes = tree.len as f64;
    bytes / start.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Samples {
    raw: Vec<f64>,
    dump_wall: Vec<f64>,
    dump: Vec<f64>,
    frozen: Vec<f64>,
    copy: Vec<f64>,
    reap: Vec<f64>,
    restore_wall: Vec<f64>,
    image: Vec<f64>,
    pages: Vec<f64>,
    /// `--ab-serial`: (dump, frozen) of each variant, in pairs taken back to back.
    ab_serial: Vec<(f64, f64, f64)>,
    ab_overlap: Vec<(f64, f64, f64)>,
}

#[allow(clippy::cast_precision_loss)] // sizes and counts far below 2^52
fn bench_size(
    bin: &Path,
    base: &Path,
    mib: u64,
    runs: usize,
    reuse: bool,
    sync_first: bool,
    ab_kind: Option<Ab>,
) -> Samples {
    let ab = ab_kind.is_some();
    let mut s = Samples::default();
    let tree = start_tree(bin, base, mib);
    let mut buf = vec![1u8; 64 << 20];
    for _ in 0..runs {
        s.raw.push(raw_readv(&tree, &mut buf));
    }
    drop(buf);
    let mut prev: Option<PathBuf> = None;
    {
        // One uncounted fresh dump + restore first, so that every counted run starts from the
        // same state: the image of the cycle before it just removed (fresh) or recycled
        // (`--reuse`). Without it the first run alone found the memory of the tree just
        // started and no freed image: it had to reclaim page cache and compact memory while
        // frozen (docs/PERFORMANCE.md, session 4). Its figures are printed, not counted.
        let image = base.join(format!("image-{mib}-first"));
        let _ = fs::remove_dir_all(&image);
        if sync_first {
            nix::unistd::sync();
        }
        let m0 = mem_state();
        let t0 = Instant::now();
        let rep = checkpoint::dump(&checkpoint::DumpOptions {
            root_pid: tree.root,
            image_dir: image.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|e| {
            fail(
                &format!("first fresh dump of {mib} MiB"),
                &image,
                tree.root,
                &e,
            )
        });
        let wall = t0.elapsed();
        let m1 = mem_state();
        restore::restore(&restore::RestoreOptions {
            image_dir: image.clone(),
            ..Default::default()
        })
        .unwrap_or_else(|e| {
            fail(
                &format!("restore of the first {mib} MiB image"),
                &image,
                tree.root,
                &e,
            )
        });
        eprintln!(
            "{mib} MiB uncounted first cycle: dump {:.3} s (frozen {:.3} s, copy {:.3} s, reap wait {:.3} s); {}",
            wall.as_secs_f64(),
            rep.frozen.as_secs_f64(),
            rep.memory_copy.as_secs_f64(),
            rep.reap_wait.as_secs_f64(),
            mem_line(&m0, &m1),
        );
        if reuse {
            prev = Some(image);
        } else {
            let _ = fs::remove_dir_all(&image);
        }
    }
    for run in 0..if ab { runs * 2 } else { runs } {
        // A/B: pair `run / 2` is serial then overlapped, the next pair the other way round.
        let serial = ab && ((run % 2 == 0) == ((run / 2) % 2 == 0));
        if let Some(k) = ab_kind {
            match (serial, k.b) {
                (true, _) => std::env::set_var(k.var, k.a),
                (false, Some(b)) => std::env::set_var(k.var, b),
                (false, None) => std::env::remove_var(k.var),
            }
        }
        let image = base.join(format!("image-{mib}-{run}"));
        let _ = fs::remove_dir_all(&image);
        let opts = checkpoint::DumpOptions {
            root_pid: tree.root,
            image_dir: image.clone(),
            leave_running: false,
            reuse_from: prev.take(),
            ..Default::default()
        };
        if sync_first {
            // Same starting state for every timed dump: nothing dirty left by earlier runs (or
            // other jobs) is written back while it runs; the raw readv it is compared with
            // writes nothing either.
            nix::unistd::sync();
        }
        let m0 = mem_state();
        let c0 = cpu_secs();
        let t0 = Instant::now();
        let rep = checkpoint::dump(&opts).unwrap_or_else(|e| {
            fail(
                &format!("{mib} MiB run {}: dump", run + 1),
                &image,
                tree.root,
                &e,
            )
        });
        let wall = t0.elapsed();
        let cpu = cpu_secs() - c0;
        let m1 = mem_state();
        s.dump_wall.push(wall.as_secs_f64());
        s.dump
            .push(wall.saturating_sub(rep.reap_wait).as_secs_f64());
        s.frozen.push(rep.frozen.as_secs_f64());
        if ab {
            let v = (
                wall.saturating_sub(rep.reap_wait).as_secs_f64(),
                rep.frozen.as_secs_f64(),
                cpu,
            );
            if serial {
                s.ab_serial.push(v);
            } else {
                s.ab_overlap.push(v);
            }
        }
        s.copy.push(rep.memory_copy.as_secs_f64());
        s.reap.push(rep.reap_wait.as_secs_f64());
        s.pages.push(rep.pages_bytes as f64);
        s.image.push(du(&image) as f64);
        let (rr, restore_took) =
            restore_retrying(&image, &format!("{mib} MiB run {}", run + 1), tree.root);
        s.restore_wall.push(restore_took.as_secs_f64());
        eprintln!(
            "{mib} MiB run {}{}: dump {:.3} s (frozen {:.3} s, copy {:.3} s, waited for the copy {:.1} ms, reap wait {:.3} s, then tree.img sync {:.1} ms, CPU {:.3} s), restore {:.3} s; {}",
            run + 1,
            match (ab_kind, serial) {
                (None, _) => String::new(),
                (Some(k), true) => format!(" ({})", k.a_name),
                (Some(k), false) => format!(" ({})", k.b_name),
            },
            wall.as_secs_f64(),
            rep.frozen.as_secs_f64(),
            rep.memory_copy.as_secs_f64(),
            rep.copy_wait.as_secs_f64() * 1e3,
            rep.reap_wait.as_secs_f64(),
            rep.tree_sync_wait.as_secs_f64() * 1e3,
            cpu,
            restore_took.as_secs_f64(),
            mem_line(&m0, &m1),
        );
        assert_eq!(rr.root_pid, tree.root, "restored root pid");
        if reuse {
            prev = Some(image);
        } else {
            let _ = fs::remove_dir_all(&image);
        }
    }
    if let Some(p) = prev {
        let _ = fs::remove_dir_all(p);
    }
    fs::write(tree.dir.join("check"), "check\n").expect("trigger");
    let verdict = wait_file(&tree.dir.join("result"), Duration::from_secs(120));
    assert_eq!(
        verdict.trim(),
        "PASS",
        "{mib} MiB workload after {runs} dump/restore cycles"
    );
    s
}

fn main() {
    let args = parse_args();
    if !args.bench {
        eprintln!(
            "ckpt_bench: skipped (run it with `cargo bench -p understudy --bench ckpt_bench`)"
        );
        return;
    }
    if std::env::var_os("UNDERSTUDY_BENCH_TRACE").is_some() {
        // The engine's debug timings of each step (stderr).
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: ckpt_bench needs root");
        return;
    }
    let base = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("understudy-ckpt-bench-{}", std::process::id()));
    fs::create_dir_all(&base).expect("bench dir");
    let src = base.join("bench_mem.c");
    fs::write(&src, WORKLOAD).expect("write workload");
    let bin = base.join("bench_mem");
    let cc = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");

    println!("runs per size: {}; medians; dump time excludes waiting for PID 1 to reap the killed tree (shown apart); {}", args.runs,
        if args.reuse { "RECYCLED dumps: each recycles the previous run's image (--reuse)" } else { "fresh dumps into new directories" });
    println!(
        "{}",
        if args.sync {
            "each timed dump starts after `sync` (the previous image removed, nothing dirty written back during the dump); --no-sync turns it off"
        } else {
            "no `sync` before the timed dumps (--no-sync)"
        }
    );
    println!();
    println!("| memory | raw readv | dump | dump rate (target >= 70% of raw) | freeze (target: no longer than the copy) | memory copy | reap wait | restore (1 GiB target < 0.5 s) | image size |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut ab_lines = Vec::new();
    for &mib in &args.sizes {
        let mut s = bench_size(&bin, &base, mib, args.runs, args.reuse, args.sync, args.ab);
        let raw = median(&mut s.raw);
        let dump = median(&mut s.dump);
        let pages = median(&mut s.pages);
        let rate = pages / dump;
        let frozen = median(&mut s.frozen);
        let copy = median(&mut s.copy);
        let reap = median(&mut s.reap);
        let restore = median(&mut s.restore_wall);
        let image = median(&mut s.image);
        let _ = median(&mut s.dump_wall);
        let gb = 1e9;
        println!(
            "| {mib} MiB | {:.2} GB/s | {:.3} s | {:.2} GB/s ({:.0}% of raw: {}) | {:.3} s (copy + {:.0} ms) | {:.3} s | {:.3} s | {:.3} s{} | {:.1} MiB |",
            raw / gb,
            dump,
            rate / gb,
            100.0 * rate / raw,
            if rate >= 0.7 * raw { "met" } else { "missed" },
            frozen,
            (frozen - copy) * 1e3,
            copy,
            reap,
            restore,
            if mib == 1024 { if restore < 0.5 { " (met)" } else { " (missed)" } } else { "" },
            image / (1u64 << 20) as f64,
        );
        if !s.ab_serial.is_empty() {
            ab_lines.push(ab_line(mib, raw, pages, &s, args.ab.unwrap_or(AB_SERIAL)));
        }
    }
    for l in ab_lines {
        println!("{l}");
    }
    let _ = fs::remove_dir_all(&base);
}

/// `--ab-serial`: medians of each variant and of the per-pair differences (pairs taken back to
/// back, so the machine's state moves both alike).
#[allow(clippy::cast_precision_loss)] // counts far below 2^52
fn ab_line(mib: u64, raw: f64, pages: f64, s: &Samples, k: Ab) -> String {
    let col = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        median(&mut x)
    };
    let mut diff: Vec<f64> = s
        .ab_serial
        .iter()
        .zip(&s.ab_overlap)
        .map(|(a, b)| (a.0 - b.0) * 1e3)
        .collect();
    let (ds, do_) = (col(&s.ab_serial, |p| p.0), col(&s.ab_overlap, |p| p.0));
    format!(
        "A/B {mib} MiB, {} pairs: dump {} {:.3} s ({:.0}% of raw) / {} {:.3} s ({:.0}% of raw); frozen {:.3} / {:.3} s; CPU {:.3} / {:.3} s; A minus B per pair: median {:.1} ms",
        diff.len(),
        k.a_name,
        ds,
        100.0 * pages / ds / raw,
        k.b_name,
        do_,
        100.0 * pages / do_ / raw,
        col(&s.ab_serial, |p| p.1),
        col(&s.ab_overlap, |p| p.1),
        col(&s.ab_serial, |p| p.2),
        col(&s.ab_overlap, |p| p.2),
        median(&mut diff),
    )
}
