//! End to end: a single-threaded process with every kind of private memory, signal state, cwd
//! and umask is checkpointed (killed), restored with the same pid, and verifies itself.

mod common;

use common::*;

#[test]
fn single_process_memory_patterns_survive_checkpoint_and_restore() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    cycle(&w, 1);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn two_checkpoints_in_a_row() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn leave_running_keeps_the_process_going() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    let img = w.dir.path().join("img");
    ok(&checkpoint(w.pid, &img, true), "checkpoint --leave-running");
    assert!(std::path::Path::new(&format!("/proc/{}", w.pid)).exists());
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
    // inspect decodes it, as text and as one JSON object
    let o = std::process::Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(&img)
        .output()
        .unwrap();
    ok(&o, "inspect --json");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["processes"][0]["pid"].as_i64(), Some(i64::from(w.pid)));
}
