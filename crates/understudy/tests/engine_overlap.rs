//! A full dump copies each process's memory on a copier thread while the collecting thread
//! reads the rest of the state (registers, smaps, injected calls, files, the next processes);
//! `UNDERSTUDY_DUMP_SERIAL=1` copies after each process's state, as before. Both must describe
//! a quiet multi-process tree the same way (mappings, madvise flags, page runs, threads, fds),
//! and the overlapped image restores a tree that passes its own checks.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// What must not depend on the order of collection: per process, its threads, fds and every
/// mapping with its protection, kind, madvise flags and dumped page runs.
fn layout(dir: &Path) -> Vec<String> {
    let tree = image::read_tree(dir).expect("read tree.img");
    tree.processes
        .iter()
        .map(|p| {
            let vmas: Vec<String> = p
                .vmas
                .iter()
                .map(|v| {
                    let runs: Vec<(u64, u64)> =
                        v.pages.iter().map(|r| (r.vaddr, r.npages)).collect();
                    format!(
                        "{:#x}-{:#x} {:?} {:?} {:?} {runs:?}",
                        v.start, v.end, v.prot, v.kind, v.madvise
                    )
                })
                .collect();
            let fds: Vec<i32> = p.fds.iter().map(|f| f.fd).collect();
            format!(
                "pid {} threads {} fds {fds:?} pages {} bytes\n  {}",
                p.pid,
                p.threads.len(),
                p.pages.len,
                vmas.join("\n  ")
            )
        })
        .collect()
}

fn checkpoint_serial(pid: i32, img: &Path) -> std::process::Output {
    Command::new(BIN)
        .env("UNDERSTUDY_DUMP_SERIAL", "1")
        .args(["checkpoint", "--pid", &pid.to_string(), "--image"])
        .arg(img)
        .output()
        .expect("run understudy checkpoint")
}

#[test]
fn overlapped_and_serial_dumps_describe_the_tree_alike_and_it_restores() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tree", &[]);
    let w = start(&prog);
    let dir = w.dir.path();
    // Dumps that kill the tree (no dirty tracker is armed: with one, its markers on
    // unpopulated pages make the data scan see whole mappings), each restored before the next;
    // the restored tree is blocked where the first dump left it, so the third dump (serial
    // again) shows what may differ between two dumps of the same state.
    ok(
        &checkpoint_serial(w.pid, &dir.join("s1")),
        "checkpoint (serial)",
    );
    ok(&restore(&dir.join("s1")), "restore s1");
    ok(
        &checkpoint(w.pid, &dir.join("o"), false),
        "checkpoint (overlap)",
    );
    ok(&restore(&dir.join("o")), "restore o");
    ok(
        &checkpoint_serial(w.pid, &dir.join("s2")),
        "checkpoint (serial)",
    );
    ok(&restore(&dir.join("s2")), "restore s2");
    let (s1, o, s2) = (
        layout(&dir.join("s1")),
        layout(&dir.join("o")),
        layout(&dir.join("s2")),
    );
    assert!(o.len() >= 4, "the tree has a parent and 3 children: {o:#?}");
    assert_eq!(s1, s2, "two serial dumps of the same state differ");
    assert_eq!(
        s1, o,
        "serial and overlapped dumps of the same state differ"
    );
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
