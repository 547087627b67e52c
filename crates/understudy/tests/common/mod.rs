//! Shared harness of the engine end-to-end tests: build a C workload, start it detached (so
//! init reaps it), checkpoint it with the real CLI, restore it, and let it check itself.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_understudy");

/// Bound of every wait on another process: generous because CI machines are slow and shared (a
/// wait that succeeds returns as soon as it can).
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Why the test cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !Path::new("/proc/self/status").exists() {
        return Some("needs /proc".into());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid0 = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !uid0 {
        return Some("needs root (ptrace of other processes, clone3 with set_tid)".into());
    }
    if Command::new("gcc").arg("--version").output().is_err() {
        return Some("needs gcc to build the workload programs".into());
    }
    None
}

/// A workload running in its own directory.
pub struct Workload {
    pub dir: tempfile::TempDir,
    pub pid: i32,
}

impl Drop for Workload {
    fn drop(&mut self) {
        // Whatever happened, leave nothing behind.
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .output();
        let _ = Command::new("pkill")
            .args(["-9", "-s", &self.pid.to_string()])
            .output();
    }
}

pub fn build(name: &str, extra: &[&str]) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workloads")
        .join(format!("{name}.c"));
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out =
        std::env::temp_dir().join(format!("understudy-test-{name}-{}-{n}", std::process::id()));
    let st = Command::new("gcc")
        .args(["-O1", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .args(extra)
        .status()
        .expect("run gcc");
    assert!(st.success(), "gcc failed for {}", src.display());
    out
}

/// Starts `prog DIR` detached (new session, stdio on /dev/null) and waits for DIR/pid.
pub fn start(prog: &Path) -> Workload {
    start_with_arg(prog, "")
}

/// Starts `prog DIR ARG` like [`start`].
pub fn start_with_arg(prog: &Path, arg: &str) -> Workload {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = format!(
        "setsid {} {} {arg} </dev/null >/dev/null 2>&1 &",
        prog.display(),
        dir.path().display()
    );
    let st = Command::new("sh").args(["-c", &cmd]).status().expect("sh");
    assert!(st.success());
    let pidf = dir.path().join("pid");
    let t = Instant::now();
    while !pidf.exists() {
        assert!(t.elapsed() < PATIENCE, "workload did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Workload { dir, pid }
}

pub fn checkpoint(pid: i32, image: &Path, leave_running: bool) -> std::process::Output {
    let mut c = Command::new(BIN);
    c.arg("checkpoint")
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--image")
        .arg(image);
    if leave_running {
        c.arg("--leave-running");
    }
    c.output().expect("run understudy checkpoint")
}

pub fn restore(image: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("restore")
        .arg("--image")
        .arg(image)
        .output()
        .expect("run understudy restore")
}

pub fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Checkpoints (killing), restores, checks the pid, `rounds` times.
pub fn cycle(w: &Workload, rounds: usize) {
    for round in 0..rounds {
        let img = w.dir.path().join(format!("img{round}"));
        let o = checkpoint(w.pid, &img, false);
        ok(&o, "checkpoint");
        assert!(
            !Path::new(&format!("/proc/{}", w.pid)).exists(),
            "pid {} still taken after checkpoint returned",
            w.pid
        );
        let o = restore(&img);
        ok(&o, "restore");
        let printed: i32 = String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse()
            .expect("restore prints the root pid");
        assert_eq!(printed, w.pid);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Tells the workload to verify itself and returns its verdict.
pub fn verdict(w: &Workload) -> String {
    std::fs::write(w.dir.path().join("go"), b"go").unwrap();
    let res = w.dir.path().join("result");
    let t = Instant::now();
    while !res.exists() {
        if t.elapsed() > PATIENCE {
            return format!("FAIL: no result within {PATIENCE:?} (workload hung or died)");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::read_to_string(res).unwrap()
}

/// Starts `prog DIR` as PID 1 of a new PID namespace (`unshare --pid --fork`) and returns it
/// with its pid in the caller's namespace.
pub fn start_in_pidns(prog: &Path) -> Workload {
    let dir = tempfile::tempdir().expect("tempdir");
    let cmd = format!(
        "setsid unshare --pid --fork {} {} </dev/null >/dev/null 2>&1 &",
        prog.display(),
        dir.path().display()
    );
    let st = Command::new("sh").args(["-c", &cmd]).status().expect("sh");
    assert!(st.success());
    let t = Instant::now();
    while !dir.path().join("pid").exists() {
        assert!(t.elapsed() < PATIENCE, "workload did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let want = dir.path().to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let init = status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.split_whitespace().last() == Some("1"));
        if init
            && String::from_utf8_lossy(&cmdline).contains(&want)
            && !String::from_utf8_lossy(&cmdline).starts_with("unshare")
        {
            return Workload { dir, pid };
        }
    }
    panic!("cannot find the namespace's init");
}
