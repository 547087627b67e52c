//! `checkpoint --reuse-from OLD_DIR` (periodic checkpoints recycling an older image's pages
//! files): the new image restores page for page, the old one is consumed, and a bad OLD_DIR
//! fails before the freeze with the tree left running.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn checkpoint_reusing(pid: i32, img: &Path, old: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["checkpoint", "--pid", &pid.to_string(), "--image"])
        .arg(img)
        .arg("--reuse-from")
        .arg(old)
        .output()
        .unwrap()
}

#[test]
fn recycled_image_restores_and_the_old_one_is_consumed() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    let (img0, img1) = (w.dir.path().join("img0"), w.dir.path().join("img1"));
    ok(&checkpoint(w.pid, &img0, false), "checkpoint");
    ok(&restore(&img0), "restore");
    ok(
        &checkpoint_reusing(w.pid, &img1, &img0),
        "checkpoint --reuse-from",
    );
    assert!(
        !img0.join("tree.img").exists(),
        "the recycled image must no longer look valid"
    );
    let o = restore(&img1);
    ok(&o, "restore of the recycled image");
    let printed: i32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    assert_eq!(printed, w.pid);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn reuse_from_a_directory_without_an_image_fails_and_leaves_the_tree_running() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    let empty = w.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let img = w.dir.path().join("img");
    let o = checkpoint_reusing(w.pid, &img, &empty);
    assert!(!o.status.success(), "checkpoint must fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("empty") && err.contains("no tree.img"),
        "the error names the directory and the reason: {err}"
    );
    assert!(!img.join("tree.img").exists());
    assert!(Path::new(&format!("/proc/{}", w.pid)).exists());
    // On another filesystem (tmpfs against the test's directory): refused before the old image
    // is touched.
    let other = Path::new("/dev/shm").join(format!("understudy-recycle-test-{}", w.pid));
    let same_fs = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/dev/shm").map(|m| m.dev()).ok()
            == std::fs::metadata(w.dir.path()).map(|m| m.dev()).ok()
    };
    if !same_fs && std::fs::create_dir_all(&other).is_ok() {
        std::fs::write(other.join("tree.img"), b"not read").unwrap();
        let o = checkpoint_reusing(w.pid, &img, &other);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let kept = other.join("tree.img").exists();
        let _ = std::fs::remove_dir_all(&other);
        assert!(!o.status.success(), "checkpoint must fail");
        assert!(err.contains("another filesystem"), "{err}");
        assert!(kept, "the old image must be left alone");
        assert!(Path::new(&format!("/proc/{}", w.pid)).exists());
    } else {
        eprintln!("cross-filesystem case skipped: /dev/shm is not another filesystem here");
    }
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// A restored tree does not use its image once `restore` has returned (pages are copied in,
/// never mapped from the pages files): recycling that very image while the tree keeps running
/// (`--leave-running --reuse-from`, its pages files overwritten in place), then scribbling over
/// the recycled files, leaves the tree's memory intact.
#[test]
fn a_running_restored_tree_survives_the_recycling_of_its_own_image() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("mem_single", &[]);
    let w = start(&prog);
    let (img0, img1) = (w.dir.path().join("img0"), w.dir.path().join("img1"));
    ok(&checkpoint(w.pid, &img0, false), "checkpoint");
    ok(&restore(&img0), "restore");
    let o = Command::new(BIN)
        .args([
            "checkpoint",
            "--leave-running",
            "--pid",
            &w.pid.to_string(),
            "--image",
        ])
        .arg(&img1)
        .arg("--reuse-from")
        .arg(&img0)
        .output()
        .unwrap();
    ok(
        &o,
        "checkpoint --leave-running --reuse-from (the running tree's own image)",
    );
    let mut scribbled = 0;
    for e in std::fs::read_dir(&img1).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("pages-") {
            let len = usize::try_from(e.metadata().unwrap().len()).unwrap();
            std::fs::write(e.path(), vec![0xa5u8; len]).unwrap();
            scribbled += 1;
        }
    }
    assert!(scribbled > 0, "the recycled image holds pages files");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}
