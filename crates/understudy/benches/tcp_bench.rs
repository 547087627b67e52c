//! 1,000 established TCP connections through the engine (issue 3).
//!
//! Each run starts a workload (`bench_tcp.c`) that accepts N connections from this process
//! (loopback; this process holds the outside ends), with bytes queued both ways (200 bytes to
//! us, 100 bytes to it, unread). The workload is checkpointed (killed, with the network lock)
//! and restored through the library (`checkpoint::dump`, `restore::restore`); then every
//! connection must deliver its queued bytes both ways and answer a ping. Printed beside it,
//! measured in the same run: the sys-level limit, re-creating N server ends with the same
//! `sys::tcp_repair` calls (in repair mode, then out of it) in a private network namespace
//! without any engine around them.
//!
//! ```sh
//! cargo bench -p understudy --bench tcp_bench -- [N=1000] [RUNS=5]
//! ```
//! Needs root and `cc`.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const WORKLOAD: &str = include_str!("bench_tcp.c");

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

struct Workload {
    root: i32,
    dir: PathBuf,
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.root), Signal::SIGKILL);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The sys-level limit: N server ends dumped, closed silently, re-created (repair mode, then
/// out of it) in a private network namespace; returns the re-creation time.
fn sys_level(n: usize) -> Duration {
    std::thread::spawn(move || {
        sys::netns::enter_new_netns().expect("private network namespace");
        let ls = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = ls.local_addr().unwrap();
        let mut clients = Vec::with_capacity(n);
        let mut states = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = TcpStream::connect(addr).unwrap();
            let (mut s, _) = ls.accept().unwrap();
            c.write_all(&[b'c'; 100]).unwrap();
            s.write_all(&[b's'; 200]).unwrap();
            clients.push(c);
            states.push(s);
        }
        sleep(Duration::from_millis(50));
        let states: Vec<_> = states
            .into_iter()
            .map(|s| {
                let r = sys::tcp_repair::Repair::enter(s.as_fd()).unwrap();
                let st = r.dump().unwrap();
                r.keep();
                st
            })
            .collect();
        let t = Instant::now();
        let fds: Vec<OwnedFd> = states
            .iter()
            .map(|st| sys::tcp_repair::restore_in_repair(st).unwrap())
            .collect();
        for (fd, st) in fds.iter().zip(&states) {
            sys::tcp_repair::finish_restore(fd.as_fd(), st).unwrap();
        }
        let took = t.elapsed();
        let mut servers: Vec<TcpStream> = fds.into_iter().map(TcpStream::from).collect();
        for (c, s) in clients.iter_mut().zip(&mut servers) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            c.write_all(b"ping").unwrap();
            let mut b = [0u8; 104];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b[100..], b"ping");
        }
        took
    })
    .join()
    .expect("sys-level run")
}

struct Run {
    frozen: Duration,
    lock: Duration,
    restore_wall: Duration,
    restore: Duration,
    tcp: Duration,
    tcp_n: usize,
    unlock: Duration,
}

fn engine_run(bin: &Path, base: &Path, n: usize, run: usize) -> Run {
    let dir = base.join(format!("tree-{run}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("tree dir");
    let out = Command::new(bin)
        .arg(&dir)
        .arg(n.to_string())
        .output()
        .expect("start workload");
    assert!(out.status.success(), "workload failed to start: {out:?}");
    let root: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("root pid");
    let w = Workload { root, dir };
    let port: u16 = wait_file(&w.dir.join("port"), Duration::from_secs(10))
        .trim()
        .parse()
        .expect("port");
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.write_all(&[b'c'; 100]).unwrap();
        clients.push(c);
    }
    wait_file(&w.dir.join("ready"), Duration::from_secs(30));
    // Let the delayed acknowledgements go out (the queues are settled).
    sleep(Duration::from_millis(300));
    let image = base.join(format!("image-{run}"));
    let rep = checkpoint::dump(&checkpoint::DumpOptions {
        root_pid: root,
        image_dir: image.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("checkpoint: {e}"));
    let t = Instant::now();
    let rr = restore::restore(&restore::RestoreOptions {
        image_dir: image.clone(),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("restore: {e}"));
    let restore_wall = t.elapsed();
    assert_eq!(rr.root_pid, root, "restored root pid");
    // Every connection: the 200 bytes queued before the checkpoint, then a ping.
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 200];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i}: queued bytes: {e}"));
        assert!(b.iter().all(|&x| x == b's'), "connection {i}: queued bytes");
        c.write_all(b"ping").unwrap();
    }
    fs::write(w.dir.join("go"), "go\n").expect("go");
    for (i, c) in clients.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        c.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("connection {i}: pong: {e}"));
        assert_eq!(&b, b"pong", "connection {i}");
    }
    let verdict = wait_file(&w.dir.join("result"), Duration::from_secs(30));
    assert_eq!(verdict.trim(), "PASS", "workload after restore");
    let _ = fs::write(w.dir.join("done"), "done\n");
    let _ = fs::remove_dir_all(&image);
    Run {
        frozen: rep.frozen,
        lock: rep.netlock,
        restore_wall,
        restore: rr.restore,
        tcp: rr.tcp_restore,
        tcp_n: rr.tcp_connections,
        unlock: rr.unlock,
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if !argv.iter().any(|a| a == "--bench") {
        eprintln!("tcp_bench: skipped (run it with `cargo bench -p understudy --bench tcp_bench`)");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: tcp_bench needs root");
        return;
    }
    if sys::netlock::find_nft().is_none() {
        eprintln!("skipped: tcp_bench needs nft (Debian package nftables) for the network lock");
        return;
    }
    let nums: Vec<usize> = argv.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(1000);
    let runs = nums.get(1).copied().unwrap_or(5).max(1);
    // This process holds N client ends, and the restore N more plus their copies.
    let want = u64::try_from(4 * n + 512).unwrap_or(u64::MAX);
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .expect("getrlimit");
    nix::sys::resource::setrlimit(
        nix::sys::resource::Resource::RLIMIT_NOFILE,
        want,
        hard.max(want),
    )
    .expect("raise RLIMIT_NOFILE");
    let base = std::env::temp_dir().join(format!("understudy-tcp-bench-{}", std::process::id()));
    fs::create_dir_all(&base).expect("bench dir");
    let src = base.join("bench_tcp.c");
    fs::write(&src, WORKLOAD).expect("write workload");
    let bin = base.join("bench_tcp");
    let cc = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .status()
        .expect("run cc");
    assert!(cc.success(), "cc failed");

    let mut s: [Vec<f64>; 7] = Default::default();
    for run in 0..runs {
        let raw = sys_level(n);
        let r = engine_run(&bin, &base, n, run);
        assert_eq!(r.tcp_n, n, "connections re-created by the restore");
        let row = [
            ms(raw),
            ms(r.tcp),
            ms(r.restore),
            ms(r.restore_wall),
            ms(r.unlock),
            ms(r.lock),
            ms(r.frozen),
        ];
        eprintln!(
            "run {}: sys-level re-create {:.1} ms | engine: sockets {:.1} ms, restore {:.1} ms (wall {:.1} ms, of which unlock {:.1} ms) | lock {:.1} ms in a freeze of {:.1} ms",
            run + 1,
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            row[5],
            row[6]
        );
        for (v, x) in s.iter_mut().zip(row) {
            v.push(x);
        }
    }
    let m: Vec<f64> = s.iter_mut().map(|v| median(v)).collect();
    println!("{n} connections, medians of {runs} runs (each: sys-level limit, then engine checkpoint + restore)");
    println!();
    println!("| sys-level: re-create {n} server ends (limit) | engine: re-create the {n} sockets (target < 100 ms) | engine: whole restore (first stub to last detach) | restore() wall (image load, restore, unlock) | unlock | lock (part of the freeze) | freeze |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {:.1} ms | {:.1} ms ({}) | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} ms |",
        m[0],
        m[1],
        if m[1] < 100.0 { "met" } else { "missed" },
        m[2],
        m[3],
        m[4],
        m[5],
        m[6]
    );
    let _ = fs::remove_dir_all(&base);
}
