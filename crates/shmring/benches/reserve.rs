//! The reservation instruction alone (`cargo bench -p shmring --bench reserve`): a load and a
//! `lock cmpxchg` retry loop (what `push` does today) against one `lock xadd` (a fetch-add
//! reservation, which the ring protocol would need a new version for), on one shared
//! 64-byte-aligned word, by 1 and by 2 threads. Thread CPU time per reservation, median of 7.

use std::sync::atomic::{AtomicU64, Ordering};

#[repr(align(64))]
struct Word(AtomicU64);

fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

const N: u32 = 10_000_000;

fn work(w: &AtomicU64, xadd: bool) -> f64 {
    let t0 = thread_cpu_ns();
    let mut s = 0u64;
    for _ in 0..N {
        if xadd {
            s = s.wrapping_add(w.fetch_add(96, Ordering::AcqRel));
        } else {
            let mut h = w.load(Ordering::Acquire);
            loop {
                match w.compare_exchange_weak(h, h + 96, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => break,
                    Err(x) => h = x,
                }
            }
            s = s.wrapping_add(h);
        }
    }
    std::hint::black_box(s);
    (thread_cpu_ns() - t0) / f64::from(N)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for threads in [1, 2] {
        for (name, xadd) in [("load + lock cmpxchg loop", false), ("lock xadd", true)] {
            let mut v: Vec<f64> = (0..7)
                .map(|_| {
                    let w = Word(AtomicU64::new(0));
                    std::thread::scope(|s| {
                        let hs: Vec<_> =
                            (0..threads).map(|_| s.spawn(|| work(&w.0, xadd))).collect();
                        hs.into_iter().map(|h| h.join().unwrap()).sum::<f64>() / f64::from(threads)
                    })
                })
                .collect();
            v.sort_by(f64::total_cmp);
            println!(
                "{threads} thread(s), {name}: {:.1} ns per reservation (thread CPU time, median of 7; min {:.1}, max {:.1})",
                v[3], v[0], v[6]
            );
        }
    }
}
