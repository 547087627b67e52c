//! Incremental checkpoints (issue 3): a process writes 1% of 256 MiB between dumps; a chain of
//! 5 dumps (one full, four incremental) is restored from the newest link and the process checks
//! every page against what it knows it wrote.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Whether the full dump `img` left dirty tracking armed (userfaultfd write-protect, async).
fn tracking_armed(img: &Path) -> bool {
    let o = Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(img)
        .output()
        .unwrap();
    ok(&o, "inspect --json");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    j["chain"][0]["tracking_armed"].as_bool() == Some(true)
}

fn write_round(w: &Workload, n: usize) {
    std::fs::write(w.dir.path().join(format!("write-{n}")), b"x").unwrap();
    wait_written(w, n);
}

fn wait_written(w: &Workload, n: usize) {
    let ack = w.dir.path().join(format!("wrote-{n}"));
    let t = Instant::now();
    while !ack.exists() {
        assert!(t.elapsed() < PATIENCE, "workload did not write round {n}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn checkpoint_with_parent(
    pid: i32,
    img: &Path,
    parent: &Path,
    leave: bool,
) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.args(["checkpoint", "--pid", &pid.to_string(), "--image"])
        .arg(img)
        .arg("--parent")
        .arg(parent);
    if leave {
        c.arg("--leave-running");
    }
    c.output().unwrap()
}

fn stored_and_parent(img: &Path) -> (u64, u64) {
    let o = Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(img)
        .output()
        .unwrap();
    ok(&o, "inspect --json");
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = &j["chain"][0];
    (
        l["stored_bytes"].as_u64().unwrap(),
        l["in_parent_bytes"].as_u64().unwrap(),
    )
}

#[test]
fn chain_of_five_dumps_restores_page_for_page() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("incr", &[]);
    let w = start_with_arg(&prog, "256");
    let root = w.dir.path();
    // Link 0: full, tracking armed.
    ok(&checkpoint(w.pid, &root.join("d0"), true), "checkpoint d0");
    if !tracking_armed(&root.join("d0")) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    let (full, _) = stored_and_parent(&root.join("d0"));
    assert!(full >= 256 << 20, "full dump holds {full} bytes");
    for n in 1..5 {
        write_round(&w, n - 1);
        let img = root.join(format!("d{n}"));
        // relative --parent (to the current directory) for odd links, absolute for even ones;
        // the last link kills the process
        let o = if n % 2 == 0 {
            checkpoint_with_parent(w.pid, &img, &root.join(format!("d{}", n - 1)), n < 4)
        } else {
            // odd links read the written pages on one thread (default: two) and the dirty
            // tracker on two (default: one)
            Command::new(BIN)
                .current_dir(root)
                .env("UNDERSTUDY_COPY_THREADS", "1")
                .env("UNDERSTUDY_DIRTY_THREADS", "2")
                .args(["checkpoint", "--pid", &w.pid.to_string(), "--image"])
                .arg(&img)
                .args(["--parent", &format!("d{}", n - 1), "--leave-running"])
                .output()
                .unwrap()
        };
        ok(&o, &format!("checkpoint d{n} --parent"));
        let (stored, in_parent) = stored_and_parent(&img);
        // 1% of 64Ki pages written (some twice), plus the gen[] array and stack
        assert!(stored < 8 << 20, "link {n} stores {stored} bytes");
        assert!(
            in_parent > 240 << 20,
            "link {n} leaves {in_parent} bytes in its parent"
        );
    }
    // d4 was dumped without --leave-running: the process is gone
    assert!(!Path::new(&format!("/proc/{}", w.pid)).exists());
    let o = Command::new(BIN)
        .arg("inspect")
        .arg(root.join("d4"))
        .output()
        .unwrap();
    ok(&o, "inspect");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("chain of 5 image(s)"), "{text}");
    let o = restore(&root.join("d4"));
    ok(&o, "restore d4");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// Pages dropped with `MADV_DONTNEED` between incremental dumps (single pages, a whole aligned
/// 2 MiB block, half of it written again a round later, the other half read) read back as zeros
/// after restore of the newest link. Every link is taken with `--leave-running`: that copy
/// takes the data ranges of tracked memory from the dirty tracker's page states, without a
/// scan for data (see docs/incremental.md).
#[test]
fn dropped_pages_read_back_as_zero_from_the_newest_link() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("incr", &[]);
    let w = start_with_arg(&prog, "64 drop");
    let root = w.dir.path();
    ok(&checkpoint(w.pid, &root.join("d0"), true), "checkpoint d0");
    if !tracking_armed(&root.join("d0")) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    for n in 1..4 {
        write_round(&w, n - 1);
        let img = root.join(format!("d{n}"));
        let o = checkpoint_with_parent(w.pid, &img, &root.join(format!("d{}", n - 1)), true);
        ok(&o, &format!("checkpoint d{n} --parent"));
    }
    let st = Command::new("kill")
        .args(["-9", &w.pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    while Path::new(&format!("/proc/{}", w.pid)).exists() {
        assert!(t.elapsed() < PATIENCE, "pid {} stays", w.pid);
        std::thread::sleep(Duration::from_millis(5));
    }
    ok(&restore(&root.join("d3")), "restore d3");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn missing_or_mismatched_parent_is_refused_by_name() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("incr", &[]);
    let w = start_with_arg(&prog, "4");
    let root = w.dir.path();
    ok(&checkpoint(w.pid, &root.join("a"), true), "checkpoint a");
    if !tracking_armed(&root.join("a")) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    write_round(&w, 0);
    ok(
        &checkpoint_with_parent(w.pid, &root.join("b"), &root.join("a"), true),
        "checkpoint b",
    );
    // A second child of the same parent cannot trust the tracking: everything is dumped.
    ok(
        &checkpoint_with_parent(w.pid, &root.join("b2"), &root.join("a"), true),
        "checkpoint b2",
    );
    let (_, in_parent) = stored_and_parent(&root.join("b2"));
    assert_eq!(
        in_parent, 0,
        "a second child of one parent must not use its tracking"
    );
    // Replace the parent with another image: mismatched.
    std::fs::rename(root.join("a"), root.join("a.orig")).unwrap();
    ok(
        &checkpoint(w.pid, &root.join("a"), true),
        "checkpoint a again",
    );
    let o = restore(&root.join("b"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("parent image") && err.contains("mismatched"),
        "{err}"
    );
    // Missing.
    std::fs::remove_dir_all(root.join("a")).unwrap();
    let o = restore(&root.join("b"));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("parent image") && err.contains("missing"),
        "{err}"
    );
    assert!(
        Path::new(&format!("/proc/{}", w.pid)).exists(),
        "the running process was not touched"
    );
}

#[test]
fn precopy_rounds_then_frozen_final_round_restore_exactly() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("incr", &[]);
    let w = start_with_arg(&prog, "64");
    let root = w.dir.path().to_path_buf();
    let mut n = 0usize;
    let opts = checkpoint::PreCopyOptions {
        root_pid: w.pid,
        dir: root.join("pre"),
        max_live_rounds: 3,
        converged_bytes: 0,
        leave_running: false,
        pidns: false,
    };
    // Between rounds, and overlapping the next live round, the workload rewrites 1%.
    let rounds = checkpoint::precopy(&opts, |r| {
        eprintln!(
            "round {}: live {} pages {} bytes {} written {} frozen {:?}",
            r.round, r.live, r.pages, r.bytes, r.written_pages, r.frozen
        );
        if r.live {
            // Round N's rewrite starts now and overlaps round N+1 (its cut and its live
            // copy); only the final, frozen round waits for a quiet workload.
            if n > 0 {
                wait_written(&w, n - 1);
            }
            std::fs::write(w.dir.path().join(format!("write-{n}")), b"x").unwrap();
            if r.round + 1 == 3 {
                wait_written(&w, n);
            }
            n += 1;
        }
    })
    .expect("precopy");
    assert_eq!(rounds.len(), 4, "3 live rounds and the final one");
    if !tracking_armed(&rounds[0].image_dir) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    assert!(rounds[0].bytes >= 64 << 20);
    for r in &rounds[1..] {
        assert!(
            r.bytes < 4 << 20,
            "round {} copied {} bytes",
            r.round,
            r.bytes
        );
        assert!(
            r.written_pages >= 160,
            "round {}: {} pages written",
            r.round,
            r.written_pages
        );
    }
    assert!(!rounds[3].live);
    // A live round alone is refused; the final round restores the process exactly.
    let o = restore(&rounds[2].image_dir);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("pre-copy round"));
    ok(&restore(&rounds[3].image_dir), "restore final round");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// Full dump (left running), then an incremental one that kills, then restore of the newest.
fn incremental_cycle(w: &Workload) {
    let root = w.dir.path();
    ok(&checkpoint(w.pid, &root.join("f"), true), "checkpoint f");
    std::thread::sleep(Duration::from_millis(100));
    ok(
        &checkpoint_with_parent(w.pid, &root.join("i"), &root.join("f"), false),
        "checkpoint i --parent f",
    );
    let o = restore(&root.join("i"));
    ok(&o, "restore i");
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
fn process_tree_restores_from_an_incremental_image() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tree", &[]);
    let w = start(&prog);
    incremental_cycle(&w);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn threads_restore_from_an_incremental_image() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("threads8", &[]);
    let w = start(&prog);
    incremental_cycle(&w);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// Incremental dumps read the madvise flags before the freeze and reuse them only for mappings
/// whose `maps` line is unchanged at the freeze. The `vmchurn` workload splits and merges an
/// `MADV_DONTFORK` region without pause while a chain of dumps is taken, so the mapping almost
/// always differs between the pre-read and the freeze; after restore every piece of the region
/// must still carry `dc`, be laid out merged or split, and hold its data.
#[test]
fn mapping_split_and_merged_while_dumps_run_keeps_its_flags() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("vmchurn", &[]);
    let w = start(&prog);
    let root = w.dir.path();
    ok(&checkpoint(w.pid, &root.join("d0"), true), "checkpoint d0");
    if !tracking_armed(&root.join("d0")) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    for n in 1..=4 {
        let img = root.join(format!("d{n}"));
        let o = checkpoint_with_parent(w.pid, &img, &root.join(format!("d{}", n - 1)), n < 4);
        ok(&o, &format!("checkpoint d{n} --parent"));
    }
    let o = restore(&root.join("d4"));
    ok(&o, "restore d4");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// The same, made deterministic: each dump pauses between its pre-read of smaps and the freeze
/// (`UNDERSTUDY_TEST_PREREAD_PAUSE`), and in that window the workload makes one more page of
/// the `MADV_DONTFORK` region read-only (a new mapping start). Reusing the pre-read flags by
/// start address would restore those pieces without `dc`; the engine sees the changed `maps`
/// lines and reads smaps again while frozen.
#[test]
fn mapping_changed_between_the_preread_and_the_freeze_is_read_again() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("vmchurn", &[]);
    let w = start_with_arg(&prog, "window");
    let root = w.dir.path();
    ok(&checkpoint(w.pid, &root.join("d0"), true), "checkpoint d0");
    if !tracking_armed(&root.join("d0")) {
        eprintln!("skipped: dirty tracking (userfaultfd write-protect, async) is not available");
        return;
    }
    for n in 1..=3 {
        let mut c = Command::new(BIN);
        c.env("UNDERSTUDY_TEST_PREREAD_PAUSE", root.join("window"))
            .args(["checkpoint", "--pid", &w.pid.to_string(), "--image"])
            .arg(root.join(format!("d{n}")))
            .arg("--parent")
            .arg(root.join(format!("d{}", n - 1)));
        if n < 3 {
            c.arg("--leave-running");
        }
        ok(&c.output().unwrap(), &format!("checkpoint d{n} --parent"));
        assert!(!root.join("window").exists(), "workload missed window {n}");
    }
    let o = restore(&root.join("d3"));
    ok(&o, "restore d3");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
    // pages 1, 3 and 5 read-only: 7 mappings in the region
    assert!(v.contains("PASS 7 mappings"), "{v}");
}
