//! End to end: MAP_SHARED anonymous memory and a memfd written by a parent and two children
//! stay shared after restore (one object, mapped again in each process), and the memfd's fd
//! sees the same data as the mappings.

mod common;

use common::*;

#[test]
fn shared_anonymous_memory_and_memfd_stay_shared() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("shm", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
