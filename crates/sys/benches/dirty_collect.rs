//! Benchmark: dirty-page tracking of a 1 GiB process with 1% of its pages written between
//! rounds. Arms a `DirtyTracker` in a forked child (userfaultfd injected with a test-local
//! ptrace injector), then per round: the child writes every 100th page, the child is stopped
//! (SIGSTOP, standing in for the engine's freeze), `collect()` reports and re-protects the
//! written pages, the pages are copied out with `process_vm_readv`, the child is resumed.
//!
//! `cargo bench -p sys --bench dirty_collect -- [MiB=1024] [ROUNDS=7]` (root).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use sys::dirty::{DirtyTracker, TrackOptions};
use sys::pagemap::Pagemap;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mib: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1024);
    let rounds: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    if !common::is_root() {
        eprintln!("skipped: dirty_collect needs root (ptrace)");
        return;
    }
    if let Err(e) = sys::dirty::supported() {
        eprintln!("skipped: {e}");
        return;
    }
    let len = mib << 20;
    let m = common::Map::new(len);
    let (cmd_r, cmd_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    let (base, pages) = (m.ptr as usize, len / common::PAGE);
    let child = common::fork_child(|| {
        // SAFETY: the inherited mapping is writable.
        unsafe { std::ptr::write_bytes(base as *mut u8, 1, len) };
        common::write_byte(ack_w, b'r');
        let mut round = 0u8;
        while let Some(c) = common::read_byte(cmd_r) {
            if c == b'w' {
                round = round.wrapping_add(1);
                let mut i = 0;
                while i < pages {
                    // SAFETY: in bounds of the child's writable mapping.
                    unsafe {
                        std::ptr::write_volatile((base + i * common::PAGE) as *mut u8, round)
                    };
                    i += 100;
                }
            }
            common::write_byte(ack_w, b'k');
        }
    });
    assert_eq!(common::read_byte(ack_r), Some(b'r'));

    let t0 = Instant::now();
    let mut inj = common::inject::Injector::attach(child).expect("attach");
    let mut f = |nr: i64, a: [u64; 6]| inj.syscall(nr, a);
    let tracker = DirtyTracker::arm(child, &mut f, &TrackOptions::default());
    inj.detach();
    let arm_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut t = tracker.expect("arm");
    let pm = Pagemap::open(child).unwrap();

    let want = pages.div_ceil(100) as u64;
    let (mut collect_ms, mut scan_ms, mut copy_ms, mut raw_ms) = (vec![], vec![], vec![], vec![]);
    let mut last = (0u64, 0u64, 0u64);
    // the copy target is allocated and touched once: a fresh buffer would add a first-touch
    // fault per page (~3 us here, kernel-facts q2) that a dumper reusing its buffer never pays
    let mut buf = vec![1u8; (usize::try_from(want).unwrap() + 64) * common::PAGE];
    for _ in 0..rounds {
        common::write_byte(cmd_w, b'w');
        assert_eq!(common::read_byte(ack_r), Some(b'k'));
        // SAFETY: stops our own child (stand-in for the engine's freeze).
        unsafe { libc::kill(child, libc::SIGSTOP) };
        let t0 = Instant::now();
        let r = t.collect().expect("collect");
        let c = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let ranges: Vec<sys::mem::RemoteRange> = r
            .written
            .iter()
            .filter(|x| x.categories.contains(sys::pagemap::Categories::PRESENT))
            .map(|x| sys::mem::RemoteRange {
                addr: x.start,
                len: x.len(),
            })
            .collect();
        let total: u64 = ranges.iter().map(|x| x.len).sum();
        let total_us = usize::try_from(total).unwrap();
        if buf.len() < total_us {
            buf.resize(total_us, 1);
        }
        sys::mem::read_vectored(child, &mut buf[..total_us], &ranges).expect("copy");
        let cp = t1.elapsed().as_secs_f64() * 1e3;
        // the raw limit, same state: one PAGEMAP_SCAN get of the 1 GiB mapping (nothing written)
        let t2 = Instant::now();
        let raw = pm.written(m.addr(), m.end()).unwrap();
        let rw = t2.elapsed().as_secs_f64() * 1e3;
        assert!(raw.is_empty());
        // SAFETY: resumes our own child.
        unsafe { libc::kill(child, libc::SIGCONT) };
        let inside = r
            .written
            .iter()
            .filter(|x| x.start >= m.addr() && x.end <= m.end())
            .map(|x| x.len() / 4096)
            .sum::<u64>();
        assert_eq!(inside, want);
        collect_ms.push(c);
        scan_ms.push(r.scan_time.as_secs_f64() * 1e3);
        copy_ms.push(cp);
        raw_ms.push(rw);
        last = (r.written_pages, r.scanned_bytes, total);
        println!(
            "round: collect {c:.2} ms (scan {:.2} ms) for {} pages over {} MiB tracked; copy {} KiB {cp:.2} ms; raw PAGEMAP_SCAN of the {mib} MiB map {rw:.2} ms",
            r.scan_time.as_secs_f64() * 1e3,
            r.written_pages,
            r.scanned_bytes >> 20,
            total >> 10
        );
    }
    println!(
        "median of {rounds}: {mib} MiB, 1% written ({want} pages in the map, {} in all): arm {arm_ms:.2} ms; collect {:.2} ms (of which scan {:.2} ms) over {} MiB; copy of {} KiB {:.2} ms; collect+copy {:.2} ms vs target freeze < 10 ms; raw one-call PAGEMAP_SCAN of the map {:.2} ms",
        last.0,
        median(&mut collect_ms.clone()),
        median(&mut scan_ms),
        last.1 >> 20,
        last.2 >> 10,
        median(&mut copy_ms.clone()),
        median(&mut collect_ms.iter().zip(&copy_ms).map(|(a, b)| a + b).collect::<Vec<_>>()),
        median(&mut raw_ms)
    );
    common::kill_and_reap(child);
}
