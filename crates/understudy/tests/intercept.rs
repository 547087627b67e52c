//! Record/replay tests of the interceptor: C programs from `tests/intercept/` (compiled here
//! with `cc`) are recorded with `understudy record`, then replayed with the outside world gone,
//! and their outputs compared byte for byte.
//!
//! The preloaded library is a separate cdylib (`intercept-preload`); these tests build it with
//! the same cargo (`cargo build -p intercept-preload`) before the first run, so
//! `cargo test -p understudy` works on its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const DIVERGENCE_EXIT: i32 = 86;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Build the interceptor library next to the understudy binary (once per test process).
fn lib_ready() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "intercept-preload"])
            .current_dir(root())
            .status();
        matches!(st, Ok(s) if s.success())
    })
}

fn understudy() -> Command {
    Command::new(env!("CARGO_BIN_EXE_understudy"))
}

/// Compile tests/intercept/NAME.c into `dir`; None (after printing why) if cc is missing.
fn compile(dir: &Path, name: &str) -> Option<PathBuf> {
    assert!(lib_ready(), "cargo build -p intercept-preload failed");
    let out = dir.join(name);
    let src = root().join(format!("tests/intercept/{name}.c"));
    match Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
    {
        Ok(s) if s.success() => Some(out),
        Ok(s) => panic!("cc {} failed: {s}", src.display()),
        Err(_) => {
            eprintln!("skipped: needs a C compiler (cc)");
            None
        }
    }
}

fn run(mode: &str, journal: &Path, prog: &[&str]) -> Output {
    let mut c = understudy();
    c.arg(mode).arg("--journal").arg(journal).arg("--");
    c.args(prog);
    c.stdin(Stdio::null());
    let out = c.output().expect("run understudy");
    if !out.stderr.is_empty() {
        eprintln!("[{mode} stderr] {}", String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// Record then replay `prog`; both succeed and print the same bytes. Returns the output.
fn record_replay(dir: &Path, prog: &[&str]) -> Vec<u8> {
    let j = dir.join("journal");
    let rec = run("record", &j, prog);
    assert!(rec.status.success(), "record failed: {:?}", rec.status);
    let rep = run("replay", &j, prog);
    assert!(rep.status.success(), "replay failed: {:?}", rep.status);
    assert_eq!(
        String::from_utf8_lossy(&rec.stdout),
        String::from_utf8_lossy(&rep.stdout),
        "replay output differs from the recorded run"
    );
    assert!(!rec.stdout.is_empty());
    rec.stdout
}

#[test]
fn time_and_random_values_replay_identically() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timerand") else {
        return;
    };
    let out = record_replay(d.path(), &[p.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out);
    for what in [
        "realtime",
        "getrandom",
        "urandom",
        "fread urandom",
        "rand",
        "cpuclock -6",
        "bad clock -1 22",
    ] {
        assert!(s.contains(what), "{what} missing in {s}");
    }
    // A second, unrecorded run differs: the values really come from the journal.
    let native = Command::new(&p).output().unwrap();
    assert_ne!(native.stdout, out);
    // `inspect --messages` and `replay --sizes` decode every message (the time batches entry
    // by entry: compact ones, and the escaped CPU-time clock).
    let j = d.path().join("journal");
    for args in [
        vec![
            "inspect".into(),
            j.clone().into_os_string(),
            "--messages".into(),
        ],
        vec![
            "replay".into(),
            "--journal".into(),
            j.clone().into_os_string(),
            "--sizes".into(),
            "--per".into(),
            "1".into(),
        ],
    ] {
        let out = understudy().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let t = String::from_utf8_lossy(&out.stdout);
        let batch = t
            .lines()
            .find(|l| l.starts_with("time batch v4"))
            .unwrap_or_else(|| panic!("{args:?}: no time batch line in {t}"));
        // 3 clock reads and a gettimeofday at the start, 2 calls at the end (+ the failed one
        // as a full message): every call counted.
        let calls: u64 = batch.split_whitespace().nth(4).unwrap().parse().unwrap();
        assert!(calls >= 5, "{batch}");
        assert!(t.contains("journal segment files"), "{t}");
    }
}

#[test]
fn tcp_client_replays_without_its_server() {
    let d = tempfile::tempdir().unwrap();
    let Some(server) = compile(d.path(), "tcpserver") else {
        return;
    };
    let Some(client) = compile(d.path(), "tcpclient") else {
        return;
    };
    let mut srv = Command::new(&server)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    BufReader::new(srv.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port = port.trim().to_string();
    let j = d.path().join("journal");
    let args = [client.to_str().unwrap(), port.as_str()];
    let rec = run("record", &j, &args);
    let _ = srv.wait();
    assert!(rec.status.success());
    let s = String::from_utf8_lossy(&rec.stdout);
    assert!(s.contains("line 4") && s.contains("total"), "{s}");
    // The server is gone now: the client must still see the same conversation.
    let rep = run("replay", &j, &args);
    assert!(rep.status.success());
    assert_eq!(rec.stdout, rep.stdout);
}

#[test]
fn four_threads_contending_for_mutexes_replay_in_order() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "mutex4") else {
        return;
    };
    let out = record_replay(d.path(), &[p.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out).contains("[x1 3x1 ]x1") || !out.is_empty());
}

#[test]
fn parent_and_children_over_pipes() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "pipes") else {
        return;
    };
    let out = record_replay(d.path(), &[p.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out);
    assert_eq!(s.matches("(same) status 1").count(), 3, "{s}");
}

#[test]
fn signals_from_outside_arrive_at_the_same_points() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "signals") else {
        return;
    };
    let j = d.path().join("journal");
    let out_path = d.path().join("record.out");
    let mut rec = understudy()
        .arg("record")
        .arg("--journal")
        .arg(&j)
        .arg("--")
        .arg(&p)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    // Wait for "ready PID".
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid = loop {
        let s = std::fs::read_to_string(&out_path).unwrap_or_default();
        // Only a whole line: a read racing the program's write may see part of it.
        if let Some(l) = s.split_inclusive('\n').next().filter(|l| l.ends_with('\n')) {
            if let Some(pid) = l.trim_end().strip_prefix("ready ") {
                break pid.trim().parse::<i32>().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "program never got ready");
        std::thread::sleep(Duration::from_millis(5));
    };
    // 12 signals at pseudo-random moments (seeded by the clock), bounded.
    let mut x = u64::from(std::process::id())
        ^ u64::from(
            std::time::SystemTime::now()
                .elapsed()
                .unwrap_or_default()
                .subsec_nanos(),
        );
    let mut sent = 0;
    for _ in 0..12 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(5 + (x >> 33) % 60));
        let sig = if (x >> 20) & 1 == 0 { "-USR1" } else { "-USR2" };
        if Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
        {
            sent += 1;
        }
    }
    let st = rec.wait().unwrap();
    assert!(st.success());
    let recorded = std::fs::read(&out_path).unwrap();
    let s = String::from_utf8_lossy(&recorded);
    assert!(sent > 0 && s.contains("signals "), "{s}");
    let rep = run("replay", &j, &[p.to_str().unwrap()]);
    assert!(rep.status.success());
    assert_eq!(
        String::from_utf8_lossy(&recorded),
        String::from_utf8_lossy(&rep.stdout)
    );
}

#[test]
fn shell_pipeline() {
    let d = tempfile::tempdir().unwrap();
    assert!(lib_ready());
    let script = "head -c 24 /dev/urandom | od -An -tx1 | tr a-f A-F; date +%s%N; echo $$; \
                  (echo from-subshell; sleep 0.01; date +%N) | cat -n; cat /proc/uptime";
    let out = record_replay(d.path(), &["sh", "-c", script]);
    assert!(String::from_utf8_lossy(&out).contains("from-subshell"));
    // The program's exit status comes out of both commands.
    let j = d.path().join("j-exit");
    let prog = ["sh", "-c", "date +%N; exit 3"];
    assert_eq!(run("record", &j, &prog).status.code(), Some(3));
    assert_eq!(run("replay", &j, &prog).status.code(), Some(3));
}

#[test]
fn divergence_of_a_modified_program_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let Some(orig) = compile(d.path(), "timerand") else {
        return;
    };
    let Some(modified) = compile(d.path(), "divergent") else {
        return;
    };
    let prog = d.path().join("prog");
    std::fs::copy(&orig, &prog).unwrap();
    let j = d.path().join("journal");
    assert!(run("record", &j, &[prog.to_str().unwrap()])
        .status
        .success());
    std::fs::copy(&modified, &prog).unwrap();
    let rep = run("replay", &j, &[prog.to_str().unwrap()]);
    assert_eq!(rep.status.code(), Some(DIVERGENCE_EXIT));
    let err = String::from_utf8_lossy(&rep.stderr);
    for what in [
        "divergence at journal seq",
        "process",
        "thread",
        "call #",
        "expected:",
        "actual:",
    ] {
        assert!(err.contains(what), "report lacks {what:?}: {err}");
    }
}

#[test]
fn bad_journals_and_programs_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timerand") else {
        return;
    };
    let ps = p.to_str().unwrap();
    let missing = run("replay", &d.path().join("none"), &[ps]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    let j = d.path().join("journal");
    assert!(run("record", &j, &[ps]).status.success());
    let other = run("replay", &j, &["/bin/true"]);
    assert!(!other.status.success());
    assert!(String::from_utf8_lossy(&other.stderr).contains("recorded from program"));
    let again = run("record", &j, &[ps]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));

    // Truncate the journal's segment in the middle of its last record.
    let t = d.path().join("truncated");
    std::fs::create_dir(&t).unwrap();
    for e in std::fs::read_dir(&j).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), t.join(e.file_name())).unwrap();
        }
    }
    let seg = std::fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let tr = run("replay", &t, &[ps]);
    assert!(!tr.status.success());
    assert!(String::from_utf8_lossy(&tr.stderr).contains("truncated"));

    // A statically linked program cannot be entered by the preloaded library.
    let src = d.path().join("st.c");
    std::fs::write(&src, "int main(void){return 0;}\n").unwrap();
    let st = d.path().join("st");
    if Command::new("cc")
        .arg("-static")
        .arg("-o")
        .arg(&st)
        .arg(&src)
        .status()
        .is_ok_and(|s| s.success())
    {
        let r = run("record", &d.path().join("j2"), &[st.to_str().unwrap()]);
        assert!(!r.status.success());
        assert!(String::from_utf8_lossy(&r.stderr).contains("statically linked"));
    } else {
        eprintln!("skipped static-binary case: cc -static unavailable");
    }
}

#[test]
fn io_uring_is_refused_with_a_message() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "uring") else {
        return;
    };
    let out = run("record", &d.path().join("journal"), &[p.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Function not implemented"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("io_uring refused"));
}

/// Start `prog` preloaded in record mode on a ring this test consumes itself (as the agent does).
fn start_on_ring(
    dir: &Path,
    prog: &Path,
    sync: bool,
) -> (shmring::RingConsumer, std::process::Child, RmOnDrop) {
    let lib = Path::new(env!("CARGO_BIN_EXE_understudy"))
        .parent()
        .unwrap()
        .join("libunderstudy_intercept.so");
    assert!(lib.is_file(), "{} missing", lib.display());
    let ring_path = PathBuf::from(format!(
        "/dev/shm/understudy-test-{}-{}",
        std::process::id(),
        dir.file_name().unwrap().to_string_lossy()
    ));
    let ring = shmring::RingConsumer::create(&ring_path, 1 << 20).unwrap();
    let child = Command::new(prog)
        .env("LD_PRELOAD", &lib)
        .env("UNDERSTUDY_MODE", "record")
        .env("UNDERSTUDY_RING", &ring_path)
        .env("UNDERSTUDY_PROCS", dir.join("procs"))
        .env("UNDERSTUDY_SYNC", if sync { "1" } else { "0" })
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    (ring, child, RmOnDrop(ring_path))
}

/// Removes the ring file at the end of a test.
struct RmOnDrop(PathBuf);

impl Drop for RmOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn sync_mode_holds_output_until_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timerand") else {
        return;
    };
    let (ring, mut child, _rm) = start_on_ring(d.path(), &p, true);
    let mut out = child.stdout.take().unwrap();
    // Drain without acknowledging: the program's output must not appear.
    let reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut b).unwrap();
        (Instant::now(), b)
    });
    let t0 = Instant::now();
    let mut last = 0;
    while t0.elapsed() < Duration::from_millis(300) {
        ring.wait(Duration::from_millis(10));
        ring.poll(usize::MAX, |s, _| last = s).unwrap();
    }
    assert!(
        !reader.is_finished(),
        "output left before its messages were acknowledged"
    );
    let acked_at = Instant::now();
    // Acknowledge as messages arrive until the program ends.
    while child.try_wait().unwrap().is_none() {
        ring.wait(Duration::from_millis(5));
        ring.poll(usize::MAX, |s, _| last = s).unwrap();
        ring.set_ack(last);
        assert!(acked_at.elapsed() < Duration::from_secs(60));
    }
    let (done_at, bytes) = reader.join().unwrap();
    assert!(done_at >= acked_at);
    assert!(String::from_utf8_lossy(&bytes).contains("getrandom"));
}

#[test]
fn quiesce_parks_a_running_program_and_reports_the_cut() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "mutex4") else {
        return;
    };
    // mutex4 is short; loop it in a shell until told to stop, so threads are busy when we
    // quiesce however slow the machine is (a fixed number of runs may all be over by then).
    let script = d.path().join("loop.sh");
    let stop = d.path().join("stop");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nwhile [ ! -e {} ]; do {} >/dev/null; done\necho done\n",
            stop.display(),
            p.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ring, mut child, _rm) = start_on_ring(d.path(), &script, false);
    let mut seen = 0u64;
    let t0 = Instant::now();
    while seen < 2000 {
        ring.wait(Duration::from_millis(5));
        ring.poll(usize::MAX, |s, _| seen = s).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(60), "no traffic");
    }
    let report = ring.quiesce(Duration::from_secs(60)).unwrap();
    // Everything up to the cut is committed; nothing is emitted beyond it while quiesced.
    ring.poll(usize::MAX, |s, _| seen = s).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    ring.poll(usize::MAX, |s, _| seen = s).unwrap();
    assert_eq!(seen, report.cut, "{report:?}");
    assert!(!report.parked.is_empty() || !report.blocked.is_empty() || !report.outside.is_empty());
    ring.resume();
    // Traffic goes on after the resume.
    let t1 = Instant::now();
    while seen <= report.cut {
        ring.wait(Duration::from_millis(5));
        ring.poll(usize::MAX, |s, _| seen = s).unwrap();
        assert!(
            t1.elapsed() < Duration::from_secs(60),
            "no traffic after the resume"
        );
    }
    std::fs::write(&stop, b"").unwrap();
    while child.try_wait().unwrap().is_none() {
        ring.wait(Duration::from_millis(5));
        ring.poll(usize::MAX, |s, _| seen = s).unwrap();
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "the loop did not stop"
        );
    }
    assert!(seen > report.cut);
    let mut s = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut s).unwrap();
    assert_eq!(s, "done\n");
}

#[test]
fn epoll_server_replays_its_clients_without_them() {
    use std::io::{Read, Write};
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "epollserver") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let j = d.path().join("journal");
    let out_path = d.path().join("record.out");
    let mut rec = understudy()
        .arg("record")
        .arg("--journal")
        .arg(&j)
        .arg("--")
        .arg(&p)
        .arg(&port)
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .contains("listening")
    {
        assert!(Instant::now() < deadline, "server never listened");
        std::thread::sleep(Duration::from_millis(5));
    }
    for client in 0..2 {
        let mut s = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        for q in 0..3 {
            s.write_all(format!("client {client} question {q}\n").as_bytes())
                .unwrap();
            let mut b = [0u8; 128];
            let n = s.read(&mut b).unwrap();
            assert!(n > 0);
        }
    }
    assert!(rec.wait().unwrap().success());
    let recorded = std::fs::read_to_string(&out_path).unwrap();
    assert!(recorded.contains("served 2 clients"), "{recorded}");
    let rep = run("replay", &j, &[p.to_str().unwrap(), &port]);
    assert!(rep.status.success());
    assert_eq!(recorded, String::from_utf8_lossy(&rep.stdout));
}

/// `understudy replay --list` of a journal.
fn list(j: &Path) -> String {
    let out = understudy()
        .args(["replay", "--list", "--journal"])
        .arg(j)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay --list failed");
    String::from_utf8(out.stdout).unwrap()
}

/// Header lines of `replay --list` (not the calls listed under a time batch).
fn message_lines(l: &str) -> Vec<&str> {
    l.lines().filter(|s| s.contains(" thread ")).collect()
}

#[test]
fn time_calls_replay_from_time_batches() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timebatch") else {
        return;
    };
    let out = record_replay(d.path(), &[p.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out);
    for what in ["thread 0: ", "thread 1: ", "main: "] {
        assert!(s.contains(what), "{what} missing in {s}");
    }
    let l = list(&d.path().join("journal"));
    let msgs = message_lines(&l);
    let batches = msgs.iter().filter(|m| m.contains("time batch of")).count();
    // 2 x (200 x 3 + 100) + 200 time calls; full batches and short ones cut by the locks.
    assert!(
        l.contains(&format!(
            "time batch of {} calls",
            intercept::msg::BATCH_CAP
        )),
        "{l}"
    );
    let time_calls = l
        .lines()
        .filter(|s| {
            !s.contains(" thread ") && (s.contains("gettimeofday") || s.contains("clock_gettime"))
        })
        .count();
    assert_eq!(time_calls, 2 * (200 * 3 + 100) + 200, "{l}");
    // Each worker's 200 rounds: lock, gettimeofday, unlock (emits a batch of 1), two more
    // time calls (a batch of 2 at the next lock); then 100 calls in full batches, as main's 200.
    assert!(
        batches < 2 * (2 * 200 + 10) + 15,
        "{batches} batches for {time_calls} calls"
    );
    // What a thread did inside the lock (a gettimeofday, or the write of its result) is in the
    // log before another thread's next acquisition: the release emits the batch.
    let mut holder: Option<(String, u64, bool)> = None; // (thread, call number, next call seen)
    for m in &msgs {
        let f: Vec<&str> = m.split_whitespace().collect();
        let (thread, tseq) = (f[6].to_string(), f[7][1..].parse::<u64>().unwrap());
        let text = f[8..].join(" ");
        if let Some((h, t, seen)) = &mut holder {
            if *h == thread {
                // A batch covering call t + 1, or the call itself.
                let last = if text.starts_with("time batch of ") {
                    let to = text.rsplit('#').next().unwrap().trim_end_matches(')');
                    to.parse::<u64>().unwrap()
                } else {
                    tseq
                };
                *seen |= tseq <= *t + 1 && *t < last;
            }
        }
        if text.starts_with("pthread_mutex_lock") {
            if let Some((h, t, seen)) = &holder {
                assert!(
                    *h == thread || *seen,
                    "thread {h}'s call #{} (inside the lock taken at #{t}) is not in the log before thread {thread} takes the lock: {m}",
                    t + 1
                );
            }
            holder = Some((thread, tseq, false));
        }
    }
}

#[test]
fn fork_and_exec_after_buffered_time_calls_replay_identically() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timebatch") else {
        return;
    };
    let p = p.to_str().unwrap();
    let f = d.path().join("fork");
    std::fs::create_dir(&f).unwrap();
    let out = record_replay(&f, &[p, "fork"]);
    let s = String::from_utf8_lossy(&out);
    assert!(s.contains("child: ") && s.contains("status 0"), "{s}");
    let e = d.path().join("exec");
    std::fs::create_dir(&e).unwrap();
    let out = record_replay(&e, &[p, "exec"]);
    assert!(String::from_utf8_lossy(&out).contains("exec'd with "));
    // The first image's last 82 % BATCH_CAP time results were still buffered at execl: the
    // exec hook emitted them as a batch right before the new image's first message.
    let l = list(&e.join("journal"));
    let msgs = message_lines(&l);
    let second = msgs
        .iter()
        .rposition(|m| m.contains("process start"))
        .unwrap();
    assert!(second > 0, "{l}");
    assert!(
        msgs[second - 1].contains(&format!(
            "time batch of {} calls (#{} to #83)",
            82 % intercept::msg::BATCH_CAP,
            84 - 82 % intercept::msg::BATCH_CAP
        )),
        "{l}"
    );
}

#[test]
fn quiesce_with_buffered_time_results_keeps_every_threads_calls_in_order() {
    use intercept::msg::{self, Kind};
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timebatch") else {
        return;
    };
    let script = d.path().join("loop.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec {} loop 300\n", p.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ring, mut child, _rm) = start_on_ring(d.path(), &script, false);
    let mut all: Vec<(u64, Vec<u8>)> = vec![];
    let drain = |ring: &shmring::RingConsumer, all: &mut Vec<(u64, Vec<u8>)>| {
        ring.poll(usize::MAX, |s, b| all.push((s, b.to_vec())))
            .unwrap();
    };
    let t0 = Instant::now();
    while all.iter().filter(|(_, b)| b[0] == msg::BATCH_MAGIC).count() < 20 {
        ring.wait(Duration::from_millis(5));
        drain(&ring, &mut all);
        assert!(t0.elapsed() < Duration::from_secs(60), "no time batches");
    }
    let report = ring.quiesce(Duration::from_secs(20)).unwrap();
    drain(&ring, &mut all);
    std::thread::sleep(Duration::from_millis(50));
    drain(&ring, &mut all);
    // Nothing beyond the cut while quiesced.
    assert_eq!(all.last().unwrap().0, report.cut, "{report:?}");
    ring.resume();
    while child.try_wait().unwrap().is_none() {
        ring.wait(Duration::from_millis(5));
        drain(&ring, &mut all);
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "program did not finish"
        );
    }
    drain(&ring, &mut all);
    assert!(all.last().unwrap().0 > report.cut);
    // Every thread's calls, batches expanded, are numbered 1, 2, 3... in ring order, across
    // the cut: the batches a thread held at the quiesce came first after the resume.
    let mut next: std::collections::HashMap<u64, u64> = Default::default();
    let mut time_calls = 0;
    for (seq, b) in &all {
        let (h, data) = msg::decode(b).unwrap();
        let calls = if h.kind == Kind::TimeBatch { h.a0 } else { 1 };
        if h.kind == Kind::TimeBatch {
            time_calls += calls;
            assert_eq!(msg::batch_entries(&h, data).count() as u64, calls);
        }
        let n = next.entry(h.vtid).or_insert(1);
        assert_eq!(
            h.tseq, *n,
            "ring seq {seq}: thread {:x} call numbers jump: {h}",
            h.vtid
        );
        *n += calls;
    }
    assert!(time_calls >= 300 * 40, "{time_calls} time calls in batches");
    let mut s = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut s).unwrap();
    assert!(s.starts_with("loop: "), "{s}");
}

#[test]
fn departures_from_a_time_batch_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let Some(orig) = compile(d.path(), "timebatch") else {
        return;
    };
    let prog = d.path().join("prog");
    std::fs::copy(&orig, &prog).unwrap();
    let j = d.path().join("journal");
    let args = [prog.to_str().unwrap(), "loop", "2"];
    assert!(run("record", &j, &args).status.success());
    assert!(run("replay", &j, &args).status.success());
    let src = root().join("tests/intercept/timebatch.c");
    for (variant, expected, actual) in [
        (
            "9",
            "expected: clock_gettime(clock 0) = 0",
            "actual:   clock_gettime: clock_gettime(clock 7)",
        ),
        ("-1", "expected: gettimeofday(..) = 0", "actual:   poll"),
        ("1", "expected: poll(..)", "actual:   gettimeofday"),
    ] {
        let st = Command::new("cc")
            .args(["-O1", "-pthread", &format!("-DVARIANT={variant}"), "-o"])
            .arg(&prog)
            .arg(&src)
            .status()
            .unwrap();
        assert!(st.success());
        let rep = run("replay", &j, &args);
        assert_eq!(
            rep.status.code(),
            Some(DIVERGENCE_EXIT),
            "variant {variant}"
        );
        let err = String::from_utf8_lossy(&rep.stderr);
        assert!(
            err.contains(expected) && err.contains(actual) && err.contains("call #"),
            "variant {variant}: {err}"
        );
    }
}

/// Signals arriving during a burst of time calls (the recorder's fast path, which checks for
/// them only after the real call) are delivered at a time call's boundary and replayed there.
#[test]
fn signals_during_a_burst_of_time_calls_replay_at_the_same_calls() {
    let d = tempfile::tempdir().unwrap();
    let Some(p) = compile(d.path(), "timesig") else {
        return;
    };
    let out = record_replay(d.path(), &[p.to_str().unwrap()]);
    let s = String::from_utf8_lossy(&out);
    assert!(s.contains(" signals 5 "), "{s}");
    let l = list(&d.path().join("journal"));
    let signals = message_lines(&l)
        .iter()
        .filter(|m| m.contains("signal"))
        .count();
    assert!(signals >= 5, "{l}");
}
