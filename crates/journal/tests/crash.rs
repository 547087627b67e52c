//! Real process crashes: a child process (this test binary re-executed) appends and commits as
//! fast as it can and reports each durable watermark on stdout; the parent SIGKILLs it at a
//! random moment, reopens the journal and checks that every record reported durable is there,
//! intact, and that nothing was invented. Repeated with every fsync policy.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Rng;
use journal::{inspect, FsyncPolicy, Journal, JournalOptions};

const CHILD_ENV: &str = "JOURNAL_CRASH_CHILD_DIR";
const POLICY_ENV: &str = "JOURNAL_CRASH_CHILD_POLICY";

/// The payload of record `seq`: derived from it, so the parent can check content.
fn payload(seq: u64) -> Vec<u8> {
    let len = usize::try_from(seq % 300).unwrap();
    (0..len)
        .map(|i| u8::try_from((seq.wrapping_mul(31) + i as u64) % 251).unwrap())
        .collect()
}

fn policy(name: &str) -> FsyncPolicy {
    match name {
        "always" => FsyncPolicy::Always,
        "every8" => FsyncPolicy::EveryN(8),
        _ => FsyncPolicy::Never,
    }
}

/// The child's body; a no-op when not started by the parent below.
#[test]
fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        eprintln!("helper of crash tests: runs only when re-executed by them");
        return;
    };
    let policy_name = std::env::var(POLICY_ENV).unwrap_or_default();
    let retain = policy_name.contains("+retain");
    // `+direct`: O_DIRECT appends, with a write buffer small enough that whole blocks are
    // written between commits (and a kill may land in the middle of one).
    let direct = policy_name.contains("+direct");
    let policy = policy(policy_name.split('+').next().unwrap_or_default());
    let opts = JournalOptions {
        fsync: policy,
        direct_io: direct,
        write_buffer: if direct { 6000 } else { 1 << 20 },
        segment_bytes: 16 << 10,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&dir, opts).unwrap();
    let out = std::io::stdout();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        for _ in 0..7 {
            let seq = j.last_seq() + 1;
            j.append(u32::try_from(seq % 5).unwrap(), seq, &payload(seq))
                .unwrap();
        }
        let durable = j.commit().unwrap();
        if retain && durable % 5 == 0 {
            // Retention while writing: a kill may land between two unlinks.
            j.truncate_before(durable / 2).unwrap();
        }
        let mut o = out.lock();
        use std::io::Write;
        writeln!(o, "{durable}").unwrap();
        o.flush().unwrap();
    }
}

#[test]
fn sigkilled_writer_loses_nothing_it_reported_durable() {
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(4242);
    for (round, pol) in [
        "never",
        "always",
        "every8",
        "always+retain",
        "never+retain",
        "every8+retain",
        "always+direct",
        "every8+direct+retain",
        "never+direct",
    ]
    .iter()
    .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        // Several kills per journal: each restart continues the same journal.
        let mut reported = 0u64;
        for _ in 0..3 {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "crash_child_writer",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path())
                .env(POLICY_ENV, pol)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            // Let it run for a random number of commits, then kill it mid-stream.
            let commits = 20 + rng.below(200);
            for _ in 0..commits {
                let Some(Ok(line)) = lines.next() else { break };
                if let Ok(d) = line.trim().parse::<u64>() {
                    reported = reported.max(d);
                }
            }
            child.kill().unwrap();
            let _ = child.wait();
            // Lines written before the kill still count (they were reported).
            for line in lines.map_while(Result::ok) {
                if let Ok(d) = line.trim().parse::<u64>() {
                    reported = reported.max(d);
                }
            }
            let (mut j, rec) = Journal::open(dir.path(), JournalOptions::default())
                .unwrap_or_else(|e| panic!("round {round} ({pol}): reopen failed: {e}"));
            assert!(
                rec.last_valid_seq >= reported,
                "round {round} ({pol}): reported durable {reported}, recovered {rec}"
            );
            for r in j.read_from(j.first_seq()).unwrap() {
                let r = r.unwrap();
                assert_eq!(
                    r.payload,
                    payload(r.seq),
                    "round {round}: seq {} differs",
                    r.seq
                );
                assert_eq!(r.stream, u32::try_from(r.seq % 5).unwrap());
            }
        }
        let s = inspect::summarize(dir.path()).unwrap();
        assert_eq!(s.gaps, 0);
        assert!(s.tail.is_none(), "round {round}: {s}");
        assert!(s.last_seq.unwrap_or(0) >= reported && reported > 0);
        if pol.ends_with("+retain") {
            assert!(
                s.first_seq.unwrap() > 1,
                "round {round}: retention ran: {s}"
            );
        } else {
            assert!(s.records >= reported);
        }
    }
}

const EFBIG_ENV: &str = "JOURNAL_EFBIG_CHILD_DIR";

/// Child of the write-failure test: appends until a write fails (the parent set a file size
/// limit), then checks that the journal refuses everything afterwards. Prints the outcome.
#[test]
fn efbig_child_writer() {
    let Ok(dir) = std::env::var(EFBIG_ENV) else {
        eprintln!("helper of write_failure_marks_the_journal_failed: runs only when re-executed");
        return;
    };
    let opts = JournalOptions {
        fsync: FsyncPolicy::Always,
        write_buffer: 1 << 10,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&dir, opts).unwrap();
    let mut committed = 0;
    let err = loop {
        let seq = j.last_seq() + 1;
        match j.append(1, seq, &payload(seq)).and_then(|()| j.commit()) {
            Ok(d) => committed = d,
            Err(e) => break e,
        }
        assert!(seq < 1_000_000, "the file size limit never hit");
    };
    let first = err.to_string();
    let again = j.append(1, j.last_seq() + 1, b"x").unwrap_err();
    let commit = j.commit().unwrap_err();
    println!("committed {committed}");
    println!("first error: {first}");
    println!(
        "then: failed={} {}",
        matches!(again, journal::Error::Failed { .. })
            && matches!(commit, journal::Error::Failed { .. }),
        again
    );
}

/// A write error (here EFBIG from a file size limit) marks the journal failed: every later
/// call is refused, and reopening recovers everything committed before the error.
#[test]
fn write_failure_marks_the_journal_failed() {
    if !std::path::Path::new("/bin/sh").exists() {
        eprintln!("skipped: needs /bin/sh for ulimit");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // ulimit -f counts 512-byte blocks in POSIX sh: 64 KiB per file. SIGXFSZ is ignored so
    // the write returns EFBIG instead of killing the child.
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -f 128 && trap '' XFSZ && exec \"$0\" --exact efbig_child_writer --nocapture --test-threads=1")
        .arg(&exe)
        .env(EFBIG_ENV, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed: u64 = stdout
        .lines()
        .find_map(|l| l.split("committed ").nth(1)) // libtest may prefix "test … ... "
        .and_then(|rest| rest.split_whitespace().next())
        .expect("child reports")
        .parse()
        .unwrap();
    assert!(stdout.contains("then: failed=true"), "{stdout}");
    assert!(
        stdout.contains("File too large") || stdout.contains("write"),
        "{stdout}"
    );
    let (mut j, rec) = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert!(
        rec.last_valid_seq >= committed && committed > 10,
        "{rec} vs {committed}"
    );
    for r in j.read_from(1).unwrap() {
        let r = r.unwrap();
        assert_eq!(r.payload, payload(r.seq));
    }
}
