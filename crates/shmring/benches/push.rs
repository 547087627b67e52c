//! Producer cost per record (`cargo bench -p shmring --bench push`): one producer thread pushes
//! 80-byte records (an interceptor message of a `clock_gettime`) while a consumer thread drains
//! the ring the way `understudy record` does (poll every 200 µs while data flows). Reports the
//! producer thread's CPU time per push, median of 7 runs, and the consumer thread's CPU time per
//! record drained (its poll, which gives the bytes back to the producers, with an empty callback).

use std::time::Duration;

fn thread_cpu_ns() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// (producer ns per push, consumer ns per record), CPU time of each thread.
fn run(capacity: usize, n: u64) -> (f64, f64) {
    let ring = shmring::RingConsumer::anonymous(capacity).unwrap();
    let prod = ring.producer();
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let p = &prod;
        let done = &done;
        let h = s.spawn(move || {
            let payload = [7u8; 80];
            let t0 = thread_cpu_ns();
            for _ in 0..n {
                p.push(&payload).unwrap();
            }
            let t = thread_cpu_ns() - t0;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            t / n as f64
        });
        let mut got = 0;
        let mut consumer = 0.0;
        while got < n {
            let t0 = thread_cpu_ns();
            got += ring.poll(usize::MAX, |_, _| {}).unwrap() as u64;
            consumer += thread_cpu_ns() - t0;
            std::thread::sleep(Duration::from_micros(200));
        }
        let _ = done;
        (h.join().unwrap(), consumer / n as f64)
    })
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for cap in [1 << 20, 16 << 20] {
        let runs: Vec<(f64, f64)> = (0..7).map(|_| run(cap, 1_000_000)).collect();
        let mut v: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut c: Vec<f64> = runs.iter().map(|r| r.1).collect();
        v.sort_by(f64::total_cmp);
        c.sort_by(f64::total_cmp);
        println!(
            "capacity {:>2} MiB: {:.1} ns per 80-byte push (producer CPU time, median of 7; min {:.1}, max {:.1})",
            cap >> 20,
            v[3],
            v[0],
            v[6]
        );
        println!(
            "capacity {:>2} MiB: {:.1} ns per record drained (consumer CPU time, median of 7; min {:.1}, max {:.1})",
            cap >> 20,
            c[3],
            c[0],
            c[6]
        );
    }
}
