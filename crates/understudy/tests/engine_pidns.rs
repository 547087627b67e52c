//! End to end: a process tree that is its own PID namespace (its root is PID 1 inside, as for
//! applications started by `understudy run`) is restored into a new namespace with every pid
//! the same inside and outside.

mod common;

use common::*;

#[test]
fn pid_namespace_tree_is_recreated() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: needs unshare(1) to create the namespace");
        return;
    }
    let prog = build("tree", &[]);
    let w = start_in_pidns(&prog);
    let nspids = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .map(str::to_string)
    };
    let before = nspids(w.pid);
    cycle(&w, 1);
    assert_eq!(nspids(w.pid), before);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
