//! End to end: a process tree (parent, 3 children, a grandchild) with pipes holding data in
//! flight, a shared O_APPEND log and a shared file offset, its own process group and session
//! layout, children blocked in read() and waitpid(): same pids, same links after restore.

mod common;

use common::*;

#[test]
fn process_tree_with_pipes_sessions_and_groups_survives() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tree", &[]);
    let w = start(&prog);
    cycle(&w, 1);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
