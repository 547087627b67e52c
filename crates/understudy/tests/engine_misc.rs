//! End to end: a FIFO with bytes queued (opened by path), an interval timer firing into a
//! handler during the dump, an alternate signal stack, a lowered rlimit and the thread name.

mod common;

use common::*;

#[test]
fn fifo_itimer_sigaltstack_rlimit_and_name_survive_twice() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("misc", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
