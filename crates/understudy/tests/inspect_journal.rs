//! `understudy inspect DIR --json` on a journal directory prints the journal summary, and a
//! directory that is neither an image nor a journal is refused with a clear message.

use std::process::Command;

use journal::{Journal, JournalOptions};

fn understudy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_understudy"))
}

#[test]
fn inspect_json_of_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    {
        let (mut j, _) = Journal::open(&jdir, JournalOptions::default()).unwrap();
        for seq in 1..=10u64 {
            let stream = u32::from(seq % 2 == 0);
            j.append(stream, seq, format!("record {seq}").as_bytes())
                .unwrap();
        }
        j.commit().unwrap();
    }
    let out = understudy()
        .arg("inspect")
        .arg(&jdir)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"], 10);
    assert_eq!(v["first_seq"], 1);
    assert_eq!(v["last_seq"], 10);
    assert_eq!(v["gaps"], 0);
    assert_eq!(v["streams"], 2);
    let digest = v["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 64, "sha-256 hex digest: {digest}");

    // The same records give the same digest (what primary and backup compare).
    let text = understudy().arg("inspect").arg(&jdir).output().unwrap();
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains(digest));
}

#[test]
fn inspect_refuses_a_directory_that_is_neither() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), b"hi").unwrap();
    let out = understudy()
        .arg("inspect")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("neither a checkpoint image") && err.contains(&*dir.path().to_string_lossy()),
        "{err}"
    );
}

/// `understudy inspect DIR | head`: a reader that goes away early ends inspect quietly with
/// success instead of a panic on EPIPE.
#[test]
fn inspect_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    {
        let (mut j, _) = Journal::open(&jdir, JournalOptions::default()).unwrap();
        j.append(0, 1, b"one").unwrap();
        j.commit().unwrap();
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = understudy()
        .arg("inspect")
        .arg(&jdir)
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
