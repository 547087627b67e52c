//! Profiling aid: ship a journal of 64-byte records with `read_raw_into` in 256 KiB batches.
//! `cargo run --release -p journal --example ship_loop -- DIR [RECORDS] [PASSES]`

use journal::{FsyncPolicy, Journal, JournalOptions};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .expect("usage: ship_loop DIR [RECORDS] [PASSES]");
    let n: u64 = args
        .next()
        .map_or(1_000_000, |s| s.parse().expect("RECORDS"));
    let passes: u32 = args.next().map_or(10, |s| s.parse().expect("PASSES"));
    let opts = JournalOptions {
        fsync: FsyncPolicy::Never,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&dir, opts).expect("open");
    for seq in j.last_seq() + 1..=n {
        j.append(1, seq, &[0xa5u8; 64]).expect("append");
    }
    j.commit().expect("commit");
    let mut buf = Vec::with_capacity(300 << 10);
    let t = std::time::Instant::now();
    for _ in 0..passes {
        let mut next = 1;
        while next <= n {
            buf.clear();
            next = j
                .read_raw_into(next, 256 << 10, &mut buf)
                .expect("read")
                .last_seq
                + 1;
        }
    }
    let dt = t.elapsed().as_secs_f64();
    println!("{:.0} records/s", f64::from(passes) * n as f64 / dt);
}
