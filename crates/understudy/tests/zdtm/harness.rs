//! The zdtm-style harness: compiles a workload from `tests/zdtm/`, starts it, waits until it says
//! it is ready, drives `understudy checkpoint` / `understudy restore` through the CLI, triggers the
//! workload's own check and reads its verdict.
//!
//! Every process a run starts carries the run's private directory in its argv, so the harness
//! can find (and, on any failure, kill) exactly its own processes, including restored ones,
//! without guessing from PIDs that may have been reused. Every wait is bounded.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub const UNDERSTUDY: &str = env!("CARGO_BIN_EXE_understudy");
const SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/zdtm");
const BUILD_DIR: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/zdtm");

pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const RESULT_TIMEOUT: Duration = Duration::from_secs(60);
pub const CLI_TIMEOUT: Duration = Duration::from_secs(90);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// True when the tests can run; prints why not otherwise (they then return early: a skip).
pub fn can_run(what: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped {what}: needs root (ptrace, PID control)");
        return false;
    }
    if Command::new("cc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("skipped {what}: needs a C compiler `cc` (scripts/setup.sh installs gcc)");
        return false;
    }
    true
}

/// Compiles `tests/zdtm/NAME.c` once per test process.
pub fn build(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = built.get(name) {
        return p.clone();
    }
    fs::create_dir_all(BUILD_DIR).expect("create build dir");
    let src = Path::new(SOURCES).join(format!("{name}.c"));
    // One binary per test process: parallel `cargo test` processes never overwrite each other.
    let out = Path::new(BUILD_DIR).join(format!("{name}-{}", std::process::id()));
    let res = Command::new("cc")
        .args(["-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-o"])
        .arg(&out)
        .arg(&src)
        .arg("-lm")
        .output()
        .expect("run cc");
    assert!(
        res.status.success(),
        "cc {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&res.stderr)
    );
    built.insert(name.to_string(), out.clone());
    out
}

/// Output of a bounded CLI run.
#[derive(Debug)]
pub struct CliRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    pub fn describe(&self) -> String {
        format!(
            "{}\nstdout:\n{}\nstderr:\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `understudy ARGS` with a deadline, its output going to files in `scratch`.
pub fn understudy(scratch: &Path, args: &[&str]) -> CliRun {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = scratch.join(format!("cli-{n}.out"));
    let err_path = scratch.join(format!("cli-{n}.err"));
    let start = Instant::now();
    let mut child = Command::new(UNDERSTUDY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("cli stdout file"))
        .stderr(fs::File::create(&err_path).expect("cli stderr file"))
        .spawn()
        .expect("spawn understudy");
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait understudy") {
            break st;
        }
        if start.elapsed() > CLI_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`understudy {}` did not finish within {CLI_TIMEOUT:?}",
                args.join(" ")
            );
        }
        sleep(Duration::from_millis(5));
    };
    CliRun {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// What one process of the tree looked like before the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSnapshot {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub tids: BTreeSet<i32>,
}

/// A started workload. Dropping it kills every process of the run that is still alive.
#[derive(Debug)]
pub struct Workload {
    pub name: String,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub root: i32,
    keep_dir: bool,
}

/// Why a workload could not be started.
#[derive(Debug)]
pub enum StartError {
    /// The launcher exited with this status before forking (e.g. 3: feature unavailable);
    /// the second field is what it printed.
    Launcher(i32, #[allow(dead_code)] String),
}

impl Workload {
    pub fn start(name: &str) -> Result<Workload, StartError> {
        Workload::start_with(name, &[])
    }

    /// Like [`Workload::start`], with extra arguments after DIR.
    pub fn start_with(name: &str, args: &[&str]) -> Result<Workload, StartError> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bin = build(name);
        let dir = std::env::temp_dir().join(format!(
            "understudy-zdtm-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create run dir");
        let bin = per_run_binary(&bin, &dir, name);
        let out = Command::new(&bin)
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .expect("start workload");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let _ = fs::remove_dir_all(&dir);
            return Err(StartError::Launcher(
                out.status.code().unwrap_or(-1),
                stdout,
            ));
        }
        let root: i32 = stdout.trim().parse().expect("launcher prints the root pid");
        let w = Workload {
            name: name.to_string(),
            bin,
            dir,
            root,
            keep_dir: false,
        };
        w.wait_ready();
        Ok(w)
    }

    /// Starts the workload under `understudy run --detach --name NAME` (its own PID namespace;
    /// the tree's root is the application's init). The state dir is inside the run dir.
    pub fn start_under_run(name: &str, app: &str) -> Workload {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let bin = build(name);
        let dir = std::env::temp_dir().join(format!(
            "understudy-zdtm-run-{name}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create run dir");
        let bin = per_run_binary(&bin, &dir, name);
        let out = Command::new(UNDERSTUDY)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["run", "--detach", "--name", app, "--"])
            .arg(&bin)
            .arg(&dir)
            .env("ZDTM_FOREGROUND", "1")
            .stdin(Stdio::null())
            .output()
            .expect("understudy run");
        assert!(out.status.success(), "understudy run failed: {out:?}");
        let root: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("init pid");
        let w = Workload {
            name: name.to_string(),
            bin,
            dir,
            root,
            keep_dir: false,
        };
        w.wait_ready();
        w
    }

    /// The state dir used by [`Workload::start_under_run`].
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The workload's own log (its stderr), for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.file("log")).unwrap_or_default()
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        while !self.file("ready").exists() {
            if let Ok(r) = fs::read_to_string(self.file("result")) {
                panic!(
                    "{}: finished before it was ready: {r}\nlog:\n{}",
                    self.name,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "{}: not ready within {READY_TIMEOUT:?}\nlog:\n{}",
                self.name,
                self.log()
            );
            sleep(Duration::from_millis(5));
        }
    }

    /// Every live process of this run (its argv holds the run directory), with threads.
    pub fn snapshot(&self) -> Vec<ProcSnapshot> {
        let mut out: Vec<ProcSnapshot> = own_pids(&self.dir, &self.bin)
            .into_iter()
            .filter_map(proc_snapshot)
            .collect();
        out.sort_by_key(|p| p.pid);
        out
    }

    /// Asks the workload to verify itself and returns its verdict line.
    pub fn check(&self) -> String {
        fs::write(self.file("check"), b"check\n").expect("write trigger");
        let start = Instant::now();
        loop {
            if let Ok(r) = fs::read_to_string(self.file("result")) {
                return r.trim().to_string();
            }
            assert!(
                start.elapsed() < RESULT_TIMEOUT,
                "{}: no result within {RESULT_TIMEOUT:?}\nlog:\n{}",
                self.name,
                self.log()
            );
            sleep(Duration::from_millis(5));
        }
    }

    /// Checks and requires PASS, then requires every process of the run to exit by itself.
    pub fn expect_pass(&mut self) {
        let verdict = self.check();
        if verdict != "PASS" {
            self.keep_dir = true;
            panic!(
                "{}: {verdict}\nrun dir kept: {}\nlog:\n{}",
                self.name,
                self.dir.display(),
                self.log()
            );
        }
        let start = Instant::now();
        loop {
            let left = own_pids(&self.dir, &self.bin);
            if left.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < EXIT_TIMEOUT,
                "{}: processes {left:?} still running {EXIT_TIMEOUT:?} after PASS",
                self.name
            );
            sleep(Duration::from_millis(10));
        }
    }

    /// A fresh image directory inside the run directory.
    pub fn image_dir(&self, tag: &str) -> PathBuf {
        let p = self.dir.join(format!("image-{tag}"));
        fs::create_dir_all(&p).expect("create image dir");
        p
    }

    /// Keeps the run directory for inspection after a failure.
    pub fn keep(&mut self) {
        self.keep_dir = true;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill_run(&self.dir, &self.bin);
        if std::thread::panicking() || self.keep_dir {
            eprintln!(
                "{}: run dir kept for inspection: {}",
                self.name,
                self.dir.display()
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Kills every live process of the run and waits (bounded) until none is left running.
pub fn kill_run(dir: &Path, bin: &Path) {
    let start = Instant::now();
    loop {
        let pids = own_pids(dir, bin);
        if pids.is_empty() || start.elapsed() > EXIT_TIMEOUT {
            if !pids.is_empty() {
                eprintln!(
                    "warning: processes {pids:?} of {} survived SIGKILL",
                    dir.display()
                );
            }
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        sleep(Duration::from_millis(10));
    }
}

/// Live (non-zombie) processes whose argv names the run directory, or whose executable is the
/// run's workload binary and whose argv is unreadable (e.g. half-restored).
/// The workload's binary under a path of this run only (a hard link, or a copy on another
/// filesystem). [`own_pids`] recognises a process whose command line is already gone (an
/// exiting one) by its executable; the build is shared by every test of the same workload in
/// this test process, so its path matched another test's exiting process (seen once in CI:
/// `sparse_memory_makes_a_small_image` found a dying `sparse_mem` of `sparse_mem::*` in its
/// restored tree).
fn per_run_binary(built: &Path, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(format!("{name}.bin"));
    if fs::hard_link(built, &p).is_err() {
        fs::copy(built, &p).expect("copy the workload binary into the run dir");
    }
    p
}

pub fn own_pids(dir: &Path, bin: &Path) -> Vec<i32> {
    let marker = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if proc_state(pid).is_none_or(|s| s == 'Z' || s == 'X') {
            continue;
        }
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&marker)
            || (cmdline.is_empty()
                && fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == bin));
        if ours {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// The state letter of /proc/PID/stat, or None when the process is gone.
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.chars().next()
}

fn proc_snapshot(pid: i32) -> Option<ProcSnapshot> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
    let num = |i: usize| rest.get(i).and_then(|s| s.parse::<i32>().ok());
    let tids = fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    Some(ProcSnapshot {
        pid,
        ppid: num(1)?,
        pgid: num(2)?,
        sid: num(3)?,
        tids,
    })
}

/// True when /proc has no entry at all for this pid or tid (not even a zombie).
pub fn pid_free(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Checkpoints the workload's tree (killing it) and checks that every PID and TID is free.
pub fn checkpoint(w: &mut Workload, image: &Path) -> Vec<ProcSnapshot> {
    let before = w.snapshot();
    assert!(
        !before.is_empty(),
        "{}: no process found before checkpoint",
        w.name
    );
    let root = w.root.to_string();
    let run = understudy(
        &w.dir,
        &["checkpoint", "--pid", &root, "--image", path_str(image)],
    );
    if !run.status.success() {
        w.keep();
        panic!(
            "{}: checkpoint failed: {}\nlog:\n{}",
            w.name,
            run.describe(),
            w.log()
        );
    }
    let taken: Vec<i32> = before
        .iter()
        .flat_map(|p| std::iter::once(p.pid).chain(p.tids.iter().copied()))
        .filter(|&id| !pid_free(id))
        .collect();
    if !taken.is_empty() {
        w.keep();
        panic!(
            "{}: `checkpoint` returned but pids/tids {taken:?} are still taken ({})",
            w.name,
            taken
                .iter()
                .map(|p| format!("{p}:{:?}", proc_state(*p)))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // The image must be readable by `inspect --json` (one JSON object naming every process).
    let inspect = understudy(&w.dir, &["inspect", path_str(image), "--json"]);
    assert!(
        inspect.status.success(),
        "{}: inspect failed: {}",
        w.name,
        inspect.describe()
    );
    let json: serde_json::Value = serde_json::from_str(&inspect.stdout)
        .unwrap_or_else(|e| panic!("{}: inspect --json is not one JSON object: {e}", w.name));
    assert!(
        json.is_object(),
        "{}: inspect --json printed {json}",
        w.name
    );
    for p in &before {
        assert!(
            inspect.stdout.contains(&p.pid.to_string()),
            "{}: inspect --json does not mention pid {}",
            w.name,
            p.pid
        );
    }
    before
}

/// Restores and checks the root pid and that every process comes back with the same pid, tids,
/// parent, process group and session.
pub fn restore(w: &mut Workload, image: &Path, before: &[ProcSnapshot]) {
    let run = understudy(&w.dir, &["restore", "--image", path_str(image)]);
    if !run.status.success() {
        w.keep();
        panic!(
            "{}: restore failed: {}\nlog:\n{}",
            w.name,
            run.describe(),
            w.log()
        );
    }
    let printed = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    assert_eq!(
        printed.parse::<i32>().ok(),
        Some(w.root),
        "{}: restore must print the root pid {}, printed {printed:?}",
        w.name,
        w.root
    );
    let after = w.snapshot();
    let strip = |v: &[ProcSnapshot]| {
        // The root's parent is whoever restored it; everything else must match exactly.
        v.iter()
            .map(|p| {
                let mut p = p.clone();
                if p.pid == w.root {
                    p.ppid = 0;
                }
                p
            })
            .collect::<Vec<_>>()
    };
    if strip(before) != strip(&after) {
        w.keep();
        panic!(
            "{}: restored tree differs\nbefore: {before:#?}\nafter: {after:#?}\nlog:\n{}",
            w.name,
            w.log()
        );
    }
}

/// The tree as its own PID namespace sees it (the last `NSpid`/`NSpgid`/`NSsid` of each
/// process and thread), sorted: what a restore into a new namespace must keep.
pub fn ns_snapshot(w: &Workload) -> Vec<ProcSnapshot> {
    let last = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse::<i32>().ok())
    };
    let mut out: Vec<ProcSnapshot> = own_pids(&w.dir, &w.bin)
        .into_iter()
        .filter_map(|pid| {
            let st = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let tids = fs::read_dir(format!("/proc/{pid}/task"))
                .ok()?
                .flatten()
                .filter_map(|e| {
                    let t = e.file_name().to_str()?.to_string();
                    let ts = fs::read_to_string(format!("/proc/{pid}/task/{t}/status")).ok()?;
                    last(&ts, "NSpid:")
                })
                .collect();
            let ppid = fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let rest: Vec<String> = s[s.rfind(')')? + 2..]
                        .split(' ')
                        .map(str::to_string)
                        .collect();
                    rest.get(1)?.parse::<i32>().ok()
                })?;
            // the parent's pid inside the namespace (0 for the init, whose parent is outside)
            let ns_ppid = fs::read_to_string(format!("/proc/{ppid}/status"))
                .ok()
                .and_then(|ps| {
                    let own = st.lines().find(|l| l.starts_with("NSpid:"))?;
                    let par = ps.lines().find(|l| l.starts_with("NSpid:"))?;
                    (own.split_whitespace().count() == par.split_whitespace().count())
                        .then(|| last(&ps, "NSpid:"))
                        .flatten()
                })
                .unwrap_or(0);
            Some(ProcSnapshot {
                pid: last(&st, "NSpid:")?,
                ppid: ns_ppid,
                pgid: last(&st, "NSpgid:")?,
                sid: last(&st, "NSsid:")?,
                tids,
            })
        })
        .collect();
    out.sort_by_key(|p| p.pid);
    out
}

/// Restores a tree that is its own PID namespace: the pids inside must be the same (the outer
/// ones are whatever the host gives); `w.root` becomes the restored init's outer pid.
pub fn restore_pidns(w: &mut Workload, image: &Path, before_ns: &[ProcSnapshot]) {
    let run = understudy(&w.dir, &["restore", "--image", path_str(image)]);
    if !run.status.success() {
        w.keep();
        panic!(
            "{}: restore failed: {}\nlog:\n{}",
            w.name,
            run.describe(),
            w.log()
        );
    }
    let printed = run
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .parse::<i32>()
        .unwrap_or_else(|_| panic!("{}: restore printed no root pid", w.name));
    w.root = printed;
    let after = ns_snapshot(w);
    if before_ns != after.as_slice() {
        w.keep();
        panic!(
            "{}: restored tree differs inside its namespace\nbefore: {before_ns:#?}\nafter: {after:#?}\nlog:\n{}",
            w.name,
            w.log()
        );
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Checkpoints with `--leave-running` and checks the tree runs on untouched: same processes and
/// threads, none stopped or traced.
pub fn checkpoint_leave_running(w: &mut Workload, image: &Path) -> Vec<ProcSnapshot> {
    let before = w.snapshot();
    let root = w.root.to_string();
    let run = understudy(
        &w.dir,
        &[
            "checkpoint",
            "--pid",
            &root,
            "--image",
            path_str(image),
            "--leave-running",
        ],
    );
    if !run.status.success() {
        w.keep();
        panic!(
            "{}: checkpoint --leave-running failed: {}",
            w.name,
            run.describe()
        );
    }
    assert_eq!(
        w.snapshot(),
        before,
        "{}: tree changed by checkpoint --leave-running",
        w.name
    );
    for p in &before {
        for tid in &p.tids {
            let state = proc_state(*tid);
            assert!(
                matches!(state, Some('S' | 'R' | 'D')),
                "{}: tid {tid} left in state {state:?} by checkpoint --leave-running",
                w.name
            );
        }
        let status = fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
        assert!(
            status.contains("TracerPid:\t0\n"),
            "{}: pid {} still traced",
            w.name,
            p.pid
        );
    }
    before
}

/// Kills the run's processes and waits (bounded) until every pid and tid of `tree` is free.
pub fn kill_and_wait_free(w: &Workload, tree: &[ProcSnapshot]) {
    kill_run(&w.dir, &w.bin);
    let start = Instant::now();
    let ids: Vec<i32> = tree
        .iter()
        .flat_map(|p| std::iter::once(p.pid).chain(p.tids.iter().copied()))
        .collect();
    while !ids.iter().all(|&id| pid_free(id)) {
        assert!(
            start.elapsed() < EXIT_TIMEOUT,
            "{}: pids of the killed tree still taken after {EXIT_TIMEOUT:?}",
            w.name
        );
        sleep(Duration::from_millis(20));
    }
}
