//! End to end: a process tree that is its own PID namespace (its root is PID 1 inside, as for
//! applications started by `understudy run`) is restored into a new namespace with every pid
//! the same inside; its outer pids are whatever the host gives (`checkpoint` does not wait for
//! the old ones to be reaped, `restore` does not ask for them).

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
    let mut w = start_in_pidns(&prog);
    let nspids = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .map(str::to_string)
    };
    let inner =
        |pid: i32| nspids(pid).and_then(|l| l.split_whitespace().last().map(str::to_string));
    assert_eq!(inner(w.pid).as_deref(), Some("1"));
    let img = w.dir.path().join("img0");
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    let o = restore(&img);
    ok(&o, "restore");
    let printed: i32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .expect("restore prints the root pid");
    assert_eq!(
        inner(printed).as_deref(),
        Some("1"),
        "restored root {printed}"
    );
    // `Workload`'s drop kills `w.pid`: point it at the restored init.
    w.pid = printed;
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
