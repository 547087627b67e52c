//! Dump/restore benchmark: trees with N MiB of touched anonymous memory, dumped and restored
//! with the library entry points, next to raw `process_vm_readv` throughput measured in the
//! same run. Usage (as root): `cargo bench -p checkpoint --bench dump_restore -- [MiB...]`
//! (default 64 256 1024; `UNDERSTUDY_BENCH_RUNS` runs per size, default 5; `UNDERSTUDY_BENCH_DIR`
//! image location, default a temporary directory).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The error and every source under it: a failed dump or restore must say why.
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

/// A failed dump or restore ends the benchmark with its whole error chain and a non-zero exit
/// (never a missing row); the image is kept for inspection and the tree is killed.
/// `pid` is the tree's root: killed if `running` (a failed dump leaves the tree running; after
/// a failed restore the pid may belong to another process, whose command line is printed).
fn fail(what: &str, image: &Path, pid: i32, running: bool, e: &dyn std::error::Error) -> ! {
    let holder = match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) => format!(
            "taken by `{}`",
            String::from_utf8_lossy(&c).replace('\0', " ").trim()
        ),
        Err(_) => "free".into(),
    };
    if running {
        let _ = sys::pid::kill(pid, libc::SIGKILL);
    }
    eprintln!(
        "dump_restore: {what} failed (image {} kept; load {}; pid {pid} now: {holder})\n  error: {}",
        image.display(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        chain(e)
    );
    std::process::exit(1);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// CPU time (user + system) this process has used so far, all threads, in seconds
/// (`/proc/self/stat`, clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn start_hog(bin: &Path, mib: u64, dir: &Path) -> (i32, u64) {
    let pidf = dir.join("hog.pid");
    let _ = std::fs::remove_file(&pidf);
    let cmd = format!(
        "setsid {} {mib} {} </dev/null >/dev/null 2>&1 &",
        bin.display(),
        pidf.display()
    );
    Command::new("sh").args(["-c", &cmd]).status().expect("sh");
    let t = Instant::now();
    while !pidf.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "memhog did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = std::fs::read_to_string(&pidf).unwrap();
    let mut it = s.split_whitespace();
    (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    )
}

fn raw_readv(pid: i32, addr: u64, len: u64) -> f64 {
    let chunk = 8u64 << 20;
    let mut buf = vec![1u8; usize::try_from(chunk).unwrap()];
    let t = Instant::now();
    let mut off = 0;
    while off < len {
        let n = chunk.min(len - off);
        sys::mem::read_vectored(
            pid,
            &mut buf[..usize::try_from(n).unwrap()],
            &[sys::mem::RemoteRange {
                addr: addr + off,
                len: n,
            }],
        )
        .unwrap();
        off += n;
    }
    len as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if !status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    {
        eprintln!("skipped: needs root");
        return;
    }
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![64, 256, 1024]
    } else {
        sizes
    };
    let runs: usize = std::env::var("UNDERSTUDY_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // Images go to tmpfs by default (what a checkpoint-to-memory or a migration uses); set
    // UNDERSTUDY_BENCH_DIR to measure a disk.
    let base: PathBuf = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            }
        });
    let work = base.join(format!("understudy-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let hog = work.join("memhog");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/memhog.c");
    assert!(Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&hog)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    println!(
        "dump threads: {} (UNDERSTUDY_DUMP_THREADS); images in {}; medians of {runs} runs; \
         % of raw = median of each run's dump rate / that run's raw readv rate",
        checkpoint::dump_threads(),
        base.display()
    );
    println!(
        "| MiB | raw readv GB/s | dump s | dump GB/s | % of raw (target >= 70%) | frozen s | \
         restore s (target 1 GiB < 0.5 s) | CRIU 4.2 dump / restore s | dump CPU s | raw readv CPU s | image MiB | \
         recycled dump s | recycled % of raw (target >= 70%) | recycled dump CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut breakdown = Vec::new();
    for &mib in &sizes {
        let (mut raw, mut dumps, mut frozen, mut restores, mut img) =
            (vec![], vec![], vec![], vec![], 0u64);
        let (mut ratios, mut dump_cpu, mut raw_cpu) = (vec![], vec![], vec![]);
        let (mut re_dumps, mut re_cpu, mut re_ratios) = (vec![], vec![], vec![]);
        // Where a fresh dump's time goes: reserving before the freeze, the memory copy, the
        // rest of the frozen time, and what follows (kill, without the reap wait).
        let (mut b_reserve, mut b_copy, mut b_frozen_rest, mut b_after) =
            (vec![], vec![], vec![], vec![]);
        for run in 0..runs {
            let (pid, addr) = start_hog(&hog, mib, &work);
            let c = cpu_secs();
            raw.push(raw_readv(pid, addr, mib << 20));
            raw_cpu.push(cpu_secs() - c);
            let c = cpu_secs();
            let dir = work.join(format!("img-{mib}-{run}"));
            let t = Instant::now();
            let rep = checkpoint::dump(&checkpoint::DumpOptions {
                root_pid: pid,
                image_dir: dir.clone(),
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                fail(
                    &format!("{mib} MiB run {}: fresh dump", run + 1),
                    &dir,
                    pid,
                    true,
                    &e,
                )
            });
            // Dump time excludes waiting for init to reap the killed tree.
            dumps.push((t.elapsed() - rep.reap_wait).as_secs_f64());
            // Reaping is a wait (no CPU of ours).
            dump_cpu.push(cpu_secs() - c);
            ratios.push(((mib << 20) as f64 / dumps[run]) / raw[run]);
            b_reserve.push(rep.reserve.as_secs_f64());
            b_copy.push(rep.memory_copy.as_secs_f64());
            b_frozen_rest.push(rep.frozen.saturating_sub(rep.memory_copy).as_secs_f64());
            b_after
                .push((dumps[run] - rep.reserve.as_secs_f64() - rep.frozen.as_secs_f64()).max(0.0));
            frozen.push(rep.frozen.as_secs_f64());
            img = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .map(|e| e.metadata().unwrap().len())
                .sum();
            let t = Instant::now();
            let r = restore::restore(&restore::RestoreOptions {
                image_dir: dir.clone(),
                progress: None,
            })
            .unwrap_or_else(|e| {
                fail(
                    &format!("{mib} MiB run {}: restore", run + 1),
                    &dir,
                    pid,
                    false,
                    &e,
                )
            });
            restores.push(t.elapsed().as_secs_f64());
            // The restored tree dumped again, recycling the first image's pages files
            // (`reuse_from`, periodic checkpoints), against the same run's raw readv.
            let dir2 = work.join(format!("img-{mib}-{run}-re"));
            let c = cpu_secs();
            let t = Instant::now();
            let rep2 = checkpoint::dump(&checkpoint::DumpOptions {
                root_pid: r.root_pid,
                image_dir: dir2.clone(),
                reuse_from: Some(dir.clone()),
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                fail(
                    &format!("{mib} MiB run {}: recycled dump", run + 1),
                    &dir2,
                    r.root_pid,
                    true,
                    &e,
                )
            });
            re_dumps.push((t.elapsed() - rep2.reap_wait).as_secs_f64());
            re_cpu.push(cpu_secs() - c);
            re_ratios.push(((mib << 20) as f64 / re_dumps[run]) / raw[run]);
            assert!(
                !dir.join("tree.img").exists(),
                "the recycled image is consumed"
            );
            let _ = sys::pid::kill(r.root_pid, libc::SIGKILL);
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::remove_dir_all(&dir2);
            let t = Instant::now();
            while sys::pid::pid_exists(pid) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let (raw, dump) = (median(raw), median(dumps));
        let bytes = (mib << 20) as f64;
        let ratio = median(ratios);
        let restore = median(restores);
        let criu = match mib {
            64 => "~0.1 / ~0.1",
            1024 => "~1.0 / ~0.72",
            _ => "-",
        };
        println!(
            "| {mib} | {:.2} | {:.3} | {:.2} | {:.0}% {} | {:.3} | {:.3}{} | {criu} | {:.2} | {:.2} | {:.1} | {:.3} | {:.0}% {} | {:.2} |",
            raw / 1e9,
            dump,
            bytes / dump / 1e9,
            100.0 * ratio,
            if ratio >= 0.7 { "met" } else { "missed" },
            median(frozen),
            restore,
            match (mib, restore < 0.5) {
                (1024, true) => " met",
                (1024, false) => " missed",
                _ => "",
            },
            median(dump_cpu),
            median(raw_cpu),
            img as f64 / (1u64 << 20) as f64,
            median(re_dumps),
            100.0 * median(re_ratios.clone()),
            if median(re_ratios) >= 0.7 {
                "met"
            } else {
                "missed"
            },
            median(re_cpu),
        );
        breakdown.push(format!(
            "{mib} MiB fresh dump, medians: reserve {:.1} ms, memory copy {:.1} ms, rest of the freeze {:.1} ms, rest {:.1} ms (other phases: before the reservation, the kill)",
            1e3 * median(b_reserve),
            1e3 * median(b_copy),
            1e3 * median(b_frozen_rest),
            1e3 * median(b_after)
        ));
    }
    for b in breakdown {
        println!("{b}");
    }
    let _ = std::fs::remove_dir_all(&work);
}
