//! End to end: seccomp filters (an errno filter and a RET_TRAP filter with a SIGSYS handler,
//! as the interceptor installs) and no_new_privs survive, in every thread; the engine's own
//! injected calls are not filtered (PTRACE_O_SUSPEND_SECCOMP).

mod common;

use common::*;

#[test]
fn seccomp_filters_and_no_new_privs_survive() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("seccomp", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
