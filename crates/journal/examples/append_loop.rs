//! Profiling aid: append 64-byte records in batches of 64 with fsync `Never`.
//! `cargo run --release -p journal --example append_loop -- DIR [RECORDS]`

use journal::{FsyncPolicy, Journal, JournalOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: append_loop DIR [RECORDS]");
    let n: u64 = args
        .next()
        .map_or(2_000_000, |s| s.parse().expect("RECORDS"));
    let opts = JournalOptions {
        fsync: FsyncPolicy::Never,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&dir, opts).expect("open");
    let payload = [0xa5u8; 64];
    let t = std::time::Instant::now();
    for seq in 1..=n {
        j.append(1, seq, &payload).expect("append");
        if seq % 64 == 0 {
            j.commit().expect("commit");
        }
    }
    j.commit().expect("commit");
    let dt = t.elapsed().as_secs_f64();
    println!("{n} records in {dt:.3} s: {:.0} records/s", n as f64 / dt);
}
