//! Incremental checkpoint benchmark (issue 3).
//!
//! Starts the `incr` workload (tests/workloads/incr.c) holding MIB MiB (default 1024) of
//! touched anonymous memory, dumps it in full with `leave_running` (which arms dirty tracking),
//! then RUNS times: the workload rewrites 1% of its pages, and an incremental dump against the
//! previous link is taken (library `checkpoint::dump` with `parent`). A last incremental dump
//! kills the workload, the newest link is restored (`restore::restore`, following the whole
//! chain) and the workload checks every page. Prints medians next to the target.
//!
//! ```sh
//! cargo bench -p understudy --bench incr_bench -- [--mib 1024] [--runs 5] [--no-precopy]
//! ```
//! For A/B runs of one binary: `UNDERSTUDY_VMFLAGS_FROZEN=1` reads smaps while frozen (as
//! before the pre-read), `UNDERSTUDY_COPY_THREADS=1` reads the written pages on one thread
//! (default: two), `UNDERSTUDY_FROZEN_DATA_SCAN=1` scans all memory for data while frozen
//! (as before the tracker's page states were used), `UNDERSTUDY_DIRTY_THREADS=2` reads the
//! dirty tracker on two threads (ranges of 64 MiB or more; default: one).
//! Needs root and `cc`. Images go to `$UNDERSTUDY_BENCH_DIR` (default: the system temp dir).
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

const WORKLOAD: &str = include_str!("../tests/workloads/incr.c");

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn wait_file(p: &Path, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Ok(s) = fs::read_to_string(p) {
            return s;
        }
        assert!(start.elapsed() < timeout, "{} did not appear", p.display());
        sleep(Duration::from_millis(2));
    }
}

struct Killer(i32);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .output();
    }
}

fn dump(pid: i32, img: &Path, parent: Option<&Path>, leave: bool) -> checkpoint::DumpReport {
    checkpoint::dump(&checkpoint::DumpOptions {
        root_pid: pid,
        image_dir: img.to_path_buf(),
        leave_running: leave,
        parent: parent.map(Path::to_path_buf),
        ..Default::default()
    })
    .expect("dump")
}

fn main() {
    let mut mib = 1024u64;
    let mut runs = 5usize;
    let mut with_precopy = true;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => mib = it.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--no-precopy" => with_precopy = false,
            _ => {}
        }
    }
    if std::env::var_os("UNDERSTUDY_BENCH_TRACE").is_some() {
        // The engine's debug timings of each step (stderr).
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_max_level(tracing::Level::DEBUG)
            .try_init();
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: incr_bench needs root");
        return;
    }
    let base = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("understudy-incr-bench-{}", std::process::id()));
    fs::create_dir_all(&base).expect("bench dir");
    let src = base.join("incr.c");
    fs::write(&src, WORKLOAD).expect("write workload");
    let bin = base.join("incr");
    let cc = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");
    let wdir = base.join("w");
    fs::create_dir_all(&wdir).expect("workload dir");
    let cmd = format!(
        "setsid {} {} {mib} </dev/null >/dev/null 2>&1 &",
        bin.display(),
        wdir.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .expect("sh")
        .success());
    let pid: i32 = wait_file(&wdir.join("pid"), Duration::from_secs(120))
        .trim()
        .parse()
        .expect("pid");
    let _k = Killer(pid);

    let full = dump(pid, &base.join("d0"), None, true);
    let full_size = du(&base.join("d0"));
    let (mut frozen, mut scan, mut size, mut stored, mut written) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut smaps, mut copy, mut later) = (Vec::new(), Vec::new(), Vec::new());
    let (mut preread, mut reused) = (Vec::new(), 0usize);
    for n in 1..=runs + 1 {
        let r = n - 1;
        fs::write(wdir.join(format!("write-{r}")), b"x").expect("signal");
        wait_file(&wdir.join(format!("wrote-{r}")), Duration::from_secs(60));
        let img = base.join(format!("d{n}"));
        let last = n == runs + 1;
        let rep = dump(pid, &img, Some(&base.join(format!("d{r}"))), !last);
        if last {
            break; // killing dump: its freeze includes the kill, not comparable
        }
        assert_eq!(rep.incremental_processes, 1, "dump {n} was not incremental");
        frozen.push(rep.frozen.as_secs_f64() * 1e3);
        scan.push(rep.dirty_scan.as_secs_f64() * 1e3);
        smaps.push(rep.vm_flags_read.as_secs_f64() * 1e3);
        preread.push(rep.vm_flags_preread.as_secs_f64() * 1e3);
        reused += rep.vm_flags_reused;
        copy.push(rep.memory_copy.as_secs_f64() * 1e3);
        later.push(rep.deferred_write.as_secs_f64() * 1e3);
        size.push(du(&img) as f64);
        stored.push(rep.pages_bytes as f64);
        written.push(rep.written_pages as f64);
    }
    let t = Instant::now();
    restore::restore(&restore::RestoreOptions {
        image_dir: base.join(format!("d{}", runs + 1)),
        progress: None,
    })
    .expect("restore of the chain");
    let restore_s = t.elapsed().as_secs_f64();
    fs::write(wdir.join("go"), b"go").expect("go");
    let verdict = wait_file(&wdir.join("result"), Duration::from_secs(120));
    let mibf = (1u64 << 20) as f64;
    println!(
        "{mib} MiB process, {runs} incremental dumps with 1% of pages rewritten before each; medians"
    );
    println!();
    println!("| what | value | compared with |");
    println!("|---|---|---|");
    let fz = median(&mut frozen);
    println!(
        "| incremental dump freeze | {fz:.2} ms | target < 10 ms: {}; full dump freeze of the same process {:.1} ms |",
        if fz < 10.0 { "met" } else { "missed" },
        full.frozen.as_secs_f64() * 1e3
    );
    println!(
        "| of which dirty scan (PAGEMAP_SCAN, read + re-protect) | {:.2} ms | raw kernel cost |",
        median(&mut scan)
    );
    println!(
        "| of which madvise flags (smaps read while frozen, or maps check of the pre-read) | {:.2} ms | flags from the pre-read in {reused} of {} dumps |",
        median(&mut smaps),
        smaps.len()
    );
    println!(
        "| before the freeze: /proc/PID/smaps pre-read (walks every page table; not frozen) | {:.2} ms | — |",
        median(&mut preread)
    );
    println!(
        "| of which memory copy (scan for data + copy written pages into memory) | {:.2} ms | — |",
        median(&mut copy)
    );
    println!(
        "| after the resume: pages written to the pages file and fsynced, tree.img written (not frozen) | {:.2} ms | — |",
        median(&mut later)
    );
    println!(
        "| pages written since the parent | {:.0} | 1% of {} pages = {} (random, some twice) |",
        median(&mut written),
        mib * 256,
        mib * 256 / 100
    );
    println!(
        "| incremental image size | {:.2} MiB (page data {:.2} MiB) | full image {:.1} MiB |",
        median(&mut size) / mibf,
        median(&mut stored) / mibf,
        full_size as f64 / mibf
    );
    println!(
        "| restore of the newest link (chain of {} images) | {restore_s:.3} s | workload check: {} |",
        runs + 2,
        verdict.trim()
    );
    assert!(verdict.starts_with("PASS"), "{verdict}");
    if with_precopy {
        precopy_run(&bin, mib);
    }
    let _ = fs::remove_dir_all(&base);
}

/// A pre-copy of the same workload with 3 live rounds, 1% rewritten after each round.
fn precopy_run(bin: &Path, mib: u64) {
    let base = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("understudy-precopy-bench-{}", std::process::id()));
    let wdir = base.join("w");
    fs::create_dir_all(&wdir).expect("workload dir");
    let cmd = format!(
        "setsid {} {} {mib} </dev/null >/dev/null 2>&1 &",
        bin.display(),
        wdir.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .expect("sh")
        .success());
    let pid: i32 = wait_file(&wdir.join("pid"), Duration::from_secs(120))
        .trim()
        .parse()
        .expect("pid");
    let _k = Killer(pid);
    let mut n = 0;
    let rounds = checkpoint::precopy(
        &checkpoint::PreCopyOptions {
            root_pid: pid,
            dir: base.join("pre"),
            max_live_rounds: 3,
            converged_bytes: 0,
            leave_running: false,
            pidns: false,
        },
        |r| {
            if r.live {
                fs::write(wdir.join(format!("write-{n}")), b"x").expect("signal");
                wait_file(&wdir.join(format!("wrote-{n}")), Duration::from_secs(60));
                n += 1;
            }
        },
    )
    .expect("precopy");
    let last = rounds.last().expect("rounds");
    restore::restore(&restore::RestoreOptions {
        image_dir: last.image_dir.clone(),
        progress: None,
    })
    .expect("restore of the pre-copy");
    fs::write(wdir.join("go"), b"go").expect("go");
    let verdict = wait_file(&wdir.join("result"), Duration::from_secs(120));
    println!();
    println!("pre-copy of the same {mib} MiB workload (`checkpoint::precopy`, 3 live rounds, 1% rewritten after each); one run");
    println!();
    println!("| round | live | pages copied | MiB copied | pages written since previous cut | tree stopped | round wall time |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rounds {
        println!(
            "| {} | {} | {} | {:.1} | {} | {:.1} ms | {:.0} ms |",
            r.round,
            if r.live { "yes" } else { "no (final, frozen)" },
            r.pages,
            r.bytes as f64 / (1u64 << 20) as f64,
            r.written_pages,
            r.frozen.as_secs_f64() * 1e3,
            r.took.as_secs_f64() * 1e3
        );
    }
    println!();
    println!(
        "restored from the final round; workload check: {}",
        verdict.trim()
    );
    let _ = fs::remove_dir_all(&base);
    assert!(verdict.starts_with("PASS"), "{verdict}");
}
