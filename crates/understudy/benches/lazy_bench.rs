//! Lazy restore benchmark (issue 3): time from the start of a lazy restore to the first
//! instruction of the restored tree, for a process holding 1 GiB (default) of private
//! anonymous memory, and the time until every page is in place, beside the eager restore of
//! the same image and the raw read+checksum speed of its pages file, all in the same run.
//!
//! The workload (`tests/workloads/lazy.c`) sits in `read()` on a FIFO when dumped. Before each
//! restore the bench puts one byte `p` into that FIFO (it holds both FIFOs open, so the byte
//! waits there); the restored process's first action is to finish that `read()` and write
//! `pong` into the answer FIFO, which the bench reads: "first instruction" = restore start →
//! pong received (it includes the faults the answer itself takes).
//!
//! ```sh
//! cargo bench -p understudy --bench lazy_bench -- [--mib 1024] [--runs 5] [--push-pages N] [--prefetch-pages N]
//! ```
//! Needs root and `cc`. Images go to `$UNDERSTUDY_BENCH_DIR` (default: the system temp dir).
#![forbid(unsafe_code)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const WORKLOAD: &str = include_str!("../tests/workloads/lazy.c");

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

struct Chan {
    req: fs::File,
    ans: BufReader<fs::File>,
}

impl Chan {
    fn send(&mut self, c: u8) {
        self.req.write_all(&[c]).expect("write request");
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        self.ans.read_line(&mut l).expect("read answer");
        l.trim().to_string()
    }
}

fn start(bin: &Path, dir: &Path, mib: u64) -> (i32, Chan) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).expect("workload dir");
    let cmd = format!(
        "setsid {} {} {mib} </dev/null >/dev/null 2>&1 &",
        bin.display(),
        dir.display()
    );
    assert!(Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .expect("sh")
        .success());
    let t = Instant::now();
    while !dir.join("pid").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "workload did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = fs::read_to_string(dir.join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid number");
    let ans = fs::File::open(dir.join("ans")).expect("ans fifo");
    // Read-write: the FIFO keeps a reader (us, never reading) while the workload is dumped,
    // so the request byte written before a restore waits in it.
    let req = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join("req"))
        .expect("req fifo");
    (
        pid,
        Chan {
            req,
            ans: BufReader::new(ans),
        },
    )
}

fn kill_and_reap(pid: i32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let p = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::wait::waitpid(p, None);
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sequential pread + CRC32C of the pages file (every part file of it, see
/// `image::PagesRef::parts`; what the push must at least do), in s.
fn raw_read(image: &Path, pid: i32) -> f64 {
    let mut buf = vec![0u8; 2 << 20];
    let t = Instant::now();
    let mut crc = 0u32;
    for k in 0..image::MAX_PAGES_PARTS {
        let Ok(f) = fs::File::open(image.join(image::pages_part_name(pid, k))) else {
            break;
        };
        let len = f.metadata().expect("stat").len();
        let mut off = 4096;
        while off < len {
            let n = f.read_at(&mut buf, off).expect("read");
            if n == 0 {
                break;
            }
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            off += n as u64;
        }
    }
    std::hint::black_box(crc);
    t.elapsed().as_secs_f64()
}

#[derive(Default)]
struct Samples {
    lazy_return: Vec<f64>,
    lazy_first: Vec<f64>,
    lazy_all: Vec<f64>,
    eager_first: Vec<f64>,
    raw: Vec<f64>,
    fault_pages: Vec<f64>,
}

#[allow(clippy::cast_precision_loss)]
fn one_run(
    bin: &Path,
    base: &Path,
    mib: u64,
    run: usize,
    lazy: restore::LazyOptions,
    s: &mut Samples,
) {
    let dir = base.join(format!("w{run}"));
    let (pid, mut chan) = start(bin, &dir, mib);
    let image = base.join(format!("image-{run}"));
    let _ = fs::remove_dir_all(&image);
    checkpoint::dump(&checkpoint::DumpOptions {
        root_pid: pid,
        image_dir: image.clone(),
        leave_running: false,
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("dump: {e}"));
    s.raw.push(raw_read(&image, pid));
    let opts = restore::RestoreOptions {
        image_dir: image.clone(),
        ..Default::default()
    };
    // Lazy.
    chan.send(b'p');
    let t0 = Instant::now();
    let lr = restore::restore_lazy(&opts, lazy).unwrap_or_else(|e| panic!("restore --lazy: {e}"));
    let ret = t0.elapsed();
    let pong = chan.line();
    let first = t0.elapsed();
    assert_eq!(pong, "pong");
    let sum = lr
        .wait(|_| {})
        .unwrap_or_else(|e| panic!("lazy serving: {e}"));
    let all = t0.elapsed();
    chan.send(b'c');
    let v = chan.line();
    assert!(v.starts_with("PASS"), "after the lazy restore: {v}");
    kill_and_reap(pid);
    // Eager, same image.
    chan.send(b'p');
    let t1 = Instant::now();
    restore::restore(&opts).unwrap_or_else(|e| panic!("restore: {e}"));
    let pong = chan.line();
    let eager = t1.elapsed();
    assert_eq!(pong, "pong");
    chan.send(b'c');
    let v = chan.line();
    assert!(v.starts_with("PASS"), "after the eager restore: {v}");
    kill_and_reap(pid);
    eprintln!(
        "run {}: lazy: tree running {:.2} ms, first response {:.2} ms, all in place {:.3} s ({} pages on {} faults, {} pushed); eager: first response {:.3} s",
        run + 1,
        ret.as_secs_f64() * 1e3,
        first.as_secs_f64() * 1e3,
        all.as_secs_f64(),
        sum.progress.fault_pages,
        sum.progress.faults,
        sum.progress.pushed_pages,
        eager.as_secs_f64()
    );
    s.lazy_return.push(ret.as_secs_f64());
    s.lazy_first.push(first.as_secs_f64());
    s.lazy_all.push(all.as_secs_f64());
    s.eager_first.push(eager.as_secs_f64());
    s.fault_pages.push(sum.progress.fault_pages as f64);
    let _ = fs::remove_dir_all(&image);
    let _ = fs::remove_dir_all(&dir);
}

fn main() {
    let mut mib = 1024u64;
    let mut runs = 5usize;
    let mut bench = false;
    let mut lazy = restore::LazyOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--mib" => mib = it.next().and_then(|v| v.parse().ok()).expect("--mib N"),
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--bench" => bench = true,
            "--push-pages" => {
                lazy.push_pages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--push-pages N")
            }
            "--prefetch-pages" => {
                lazy.prefetch_pages = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--prefetch-pages N")
            }
            _ => {}
        }
    }
    if !bench {
        eprintln!(
            "lazy_bench: skipped (run it with `cargo bench -p understudy --bench lazy_bench`)"
        );
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: lazy_bench needs root");
        return;
    }
    let base = std::env::var_os("UNDERSTUDY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("understudy-lazy-bench-{}", std::process::id()));
    fs::create_dir_all(&base).expect("bench dir");
    let src = base.join("lazy.c");
    fs::write(&src, WORKLOAD).expect("workload source");
    let bin = base.join("lazy");
    let st = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success(), "cc failed");
    let mut s = Samples::default();
    for run in 0..runs {
        one_run(&bin, &base, mib, run, lazy, &mut s);
    }
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "\n### lazy restore, {mib} MiB, prefetch {} pages, push {} pages, median of {runs} run(s) (load average {})\n\n",
        lazy.prefetch_pages,
        lazy.push_pages,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    out.push_str("| figure | value | compared with |\n|---|---|---|\n");
    out.push_str(&format!(
        "| lazy: restore start → tree running (restore_lazy returns) | {:.2} ms | target < 20 ms |\n",
        median(&mut s.lazy_return) * 1e3
    ));
    out.push_str(&format!(
        "| lazy: restore start → first response of the tree | {:.2} ms | target < 20 ms; eager first response {:.3} s |\n",
        median(&mut s.lazy_first) * 1e3,
        median(&mut s.eager_first)
    ));
    out.push_str(&format!(
        "| lazy: restore start → every page in place | {:.3} s | eager restore {:.3} s; raw pread+CRC32C of the pages file {:.3} s |\n",
        median(&mut s.lazy_all),
        median(&mut s.eager_first),
        median(&mut s.raw)
    ));
    out.push_str(&format!(
        "| pages served on fault (rest pushed) | {:.0} | of {} |\n",
        median(&mut s.fault_pages),
        mib * 256
    ));
    println!("{out}");
    let _ = fs::remove_dir_all(&base);
}
