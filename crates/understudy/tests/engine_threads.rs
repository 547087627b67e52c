//! End to end: 8 worker threads under a mutex and condition variable (each checking its TLS and
//! TID), plus threads blocked in a futex wait, nanosleep and read, survive checkpoint and
//! restore with the same TIDs and finish correctly (pthread_join works: clear_child_tid).

mod common;

use common::*;

#[test]
fn eight_threads_and_blocked_threads_survive() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("threads8", &[]);
    let w = start(&prog);
    cycle(&w, 1);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
