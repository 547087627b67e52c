//! Benchmark: lazy (post-copy) restore of a region served by `sys::uffd_lazy` from memory.
//! Per run: map N MiB, register it for missing faults, start the server thread (16-page
//! prefetch, 2 MiB background pushes), touch one page (first-fault latency), touch 2,000 random
//! pages, then wait until the background push has put every page in place; contents checked.
//!
//! `cargo bench -p sys --bench lazy_restore -- [MiB=1024] [RUNS=5]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::AtomicBool;
use std::time::Instant;

use sys::uffd::{OpenFlags, Userfaultfd};
use sys::uffd_lazy::{LazyOptions, LazyServer, MemSource, LAZY_FEATURES};

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
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    let len = mib << 20;
    let pages = len / common::PAGE;
    let mut img = vec![0u8; len];
    for i in 0..pages {
        img[i * common::PAGE..i * common::PAGE + 8].copy_from_slice(&(i as u64).to_ne_bytes());
    }
    let (mut reg, mut first, mut rnd, mut full, mut base) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        // baseline in the same run: copy the image into a fresh mapping without userfaultfd
        // (fresh guest memory costs ~3 us per page to fault in here, kernel-facts q2)
        let b = common::Map::new(len);
        let tb = Instant::now();
        // SAFETY: the fresh mapping is `len` bytes, writable, and does not overlap `img`.
        unsafe { std::ptr::copy_nonoverlapping(img.as_ptr(), b.ptr, len) };
        let base_ms = tb.elapsed().as_secs_f64() * 1e3;
        drop(b);
        base.push(base_ms);
        let m = common::Map::new(len);
        let u = match Userfaultfd::open(OpenFlags { nonblock: true }, LAZY_FEATURES) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let mut server = LazyServer::new(
            u,
            MemSource {
                base: m.addr(),
                data: &img,
            },
            LazyOptions {
                prefetch_pages: 16,
                push_pages: 512,
            },
        );
        let t0 = Instant::now();
        server.register(m.addr(), len as u64, m.addr()).unwrap();
        let reg_us = t0.elapsed().as_secs_f64() * 1e6;
        let stop = AtomicBool::new(false);
        let (f_us, r_us, full_ms, stats) = std::thread::scope(|s| {
            let t_start = Instant::now();
            let h = s.spawn(|| server.run(&stop));
            let t1 = Instant::now();
            // SAFETY: in bounds of the mapping; served by the server thread.
            let w =
                unsafe { std::ptr::read_volatile(m.ptr.add(12345 * common::PAGE).cast::<u64>()) };
            let f_us = t1.elapsed().as_secs_f64() * 1e6;
            assert_eq!(w, 12345);
            let t2 = Instant::now();
            let mut j = 0usize;
            for _ in 0..2000 {
                j = (j + 104_729) % pages;
                // SAFETY: as above.
                let w =
                    unsafe { std::ptr::read_volatile(m.ptr.add(j * common::PAGE).cast::<u64>()) };
                assert_eq!(w, j as u64);
            }
            let r_us = t2.elapsed().as_secs_f64() * 1e6 / 2000.0;
            let stats = h.join().unwrap().unwrap();
            (f_us, r_us, t_start.elapsed().as_secs_f64() * 1e3, stats)
        });
        // SAFETY: fully populated now.
        let all = unsafe { std::slice::from_raw_parts(m.ptr, len) };
        assert!(all == &img[..], "contents differ");
        println!(
            "run {run}: baseline plain copy into fresh memory {base_ms:.1} ms | register {reg_us:.1} us | first fault served {f_us:.1} us | random touch {r_us:.2} us/page | all {mib} MiB in place {full_ms:.1} ms ({:.2} GB/s) | {stats:?}",
            len as f64 / (full_ms / 1e3) / 1e9
        );
        reg.push(reg_us);
        first.push(f_us);
        rnd.push(r_us);
        full.push(full_ms);
    }
    let mf = median(&mut full);
    println!(
        "median of {runs}: {mib} MiB: register {:.1} us; first fault served {:.1} us; random touch {:.2} us/page; all in place {mf:.1} ms ({:.2} GB/s); baseline: plain copy of the image into fresh memory {:.1} ms; raw limits (t10): 12-24 us per single-page fault, 2.3 GB/s bulk UFFDIO_COPY",
        median(&mut reg),
        median(&mut first),
        median(&mut rnd),
        len as f64 / (mf / 1e3) / 1e9,
        median(&mut base)
    );
}
