//! `understudy run` and `understudy logs`: a supervised launch in its own PID namespace.
#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const UNDERSTUDY: &str = env!("CARGO_BIN_EXE_understudy");

/// Bound of every wait on another process: generous because CI machines are slow and shared (a
/// wait that succeeds returns as soon as it can).
const PATIENCE: Duration = Duration::from_secs(60);

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root (creating a PID namespace)");
        return false;
    }
    true
}

struct StateDir(PathBuf);

impl StateDir {
    fn new(tag: &str) -> StateDir {
        let p = std::env::temp_dir().join(format!("understudy-run-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).expect("state dir");
        StateDir(p)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        // Kill whatever a failed test left running (the init takes its namespace with it).
        if let Ok(text) = fs::read_to_string(self.0.join("apps/app/app.json")) {
            if let Some(pid) = json_field(&text, "root_pid").and_then(|v| v.as_i64()) {
                let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmd).contains("--init") {
                    let pid = i32::try_from(pid).expect("pid");
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn json_field(text: &str, field: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(field).cloned()
}

/// Runs `understudy --state-dir DIR ARGS` with a deadline.
fn understudy(state: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(UNDERSTUDY)
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn understudy");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!(
                "`understudy {}` did not finish within {PATIENCE:?}",
                args.join(" ")
            );
        }
        sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn attached_run_gives_pid_namespace_and_exit_status() {
    if !can_run() {
        return;
    }
    let st = StateDir::new("attached");
    let out = understudy(
        &st.0,
        &[
            "run",
            "--name",
            "app",
            "--",
            "sh",
            "-c",
            "echo pid=$$ ppid=$PPID; exit 7",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    // PROGRAM is PID 2 of its namespace, its parent the init (PID 1).
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pid=2 ppid=1\n");
    let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
    assert_eq!(json_field(&rec, "name"), Some("app".into()));
    assert_eq!(json_field(&rec, "pidns"), Some(true.into()));
    assert!(json_field(&rec, "root_pid")
        .and_then(|v| v.as_i64())
        .is_some_and(|p| p > 1));
    assert!(json_field(&rec, "output").is_some_and(|v| v.is_string()));
    assert_eq!(json_field(&rec, "state"), Some("exited".into()));
    assert_eq!(json_field(&rec, "exit_code"), Some(7.into()));
}

#[test]
fn killed_program_reports_128_plus_signal() {
    if !can_run() {
        return;
    }
    let st = StateDir::new("signal");
    let out = understudy(
        &st.0,
        &[
            "run",
            "--name",
            "app",
            "--",
            "sh",
            "-c",
            "kill -TERM $$; sleep 5",
        ],
    );
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");
}

#[test]
fn init_reaps_orphans() {
    if !can_run() {
        return;
    }
    let st = StateDir::new("orphans");
    // Ten orphans (their parent subshell exits at once) exit while PROGRAM still runs: they
    // were reparented to the init, which must reap them.
    // PROGRAM then stays until the test tells it to stop, so the init's children can be
    // watched for as long as a slow machine needs to let the orphans exit.
    let (forked, stop) = (st.0.join("forked"), st.0.join("stop"));
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do (sleep 0.05 &) ; done; touch {}; \
         while [ ! -e {} ]; do sleep 0.05; done",
        forked.display(),
        stop.display()
    );
    let out = understudy(
        &st.0,
        &[
            "run", "--detach", "--name", "app", "--", "sh", "-c", &script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let init: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("init pid");
    let deadline = Instant::now() + PATIENCE;
    while !forked.exists() {
        assert!(
            Instant::now() < deadline,
            "PROGRAM never forked its orphans"
        );
        sleep(Duration::from_millis(20));
    }
    // The init's children: (pid, state). Once the orphans are gone only PROGRAM is left; an
    // orphan that exited and was not reaped stays a zombie child of the init forever.
    let children_of_init = || {
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(init) {
                v.push((e.file_name(), fields[0].to_owned()));
            }
        }
        v
    };
    loop {
        let children = children_of_init();
        assert!(!children.is_empty(), "PROGRAM is not a child of the init");
        if children.len() == 1 && children[0].1 != "Z" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the init left zombies (or orphans never exited): {children:?}"
        );
        sleep(Duration::from_millis(20));
    }
    fs::write(&stop, b"").expect("stop file");
}

#[test]
fn detached_run_writes_log_and_logs_prints_it() {
    if !can_run() {
        return;
    }
    let st = StateDir::new("detached");
    // The application runs until the test lets it finish: the second launch below must find
    // it running however slow the machine is.
    let go = st.0.join("go");
    let script = format!(
        "echo out-line; echo err-line >&2; while [ ! -e {} ]; do sleep 0.02; done; echo last",
        go.display()
    );
    let out = understudy(
        &st.0,
        &[
            "run", "--detach", "--name", "app", "--", "sh", "-c", &script,
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("prints the init pid");
    let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
    assert_eq!(json_field(&rec, "root_pid"), Some(pid.into()));
    assert_eq!(json_field(&rec, "detached"), Some(true.into()));
    let log = st.0.join("apps/app/output.log");
    assert_eq!(
        json_field(&rec, "output"),
        Some(log.to_string_lossy().into_owned().into())
    );
    // A second launch under the same name is refused while the first runs.
    let again = understudy(&st.0, &["run", "--detach", "--name", "app", "--", "true"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{again:?}"
    );
    fs::write(&go, b"").expect("go file");
    // `logs --follow` returns once the application has exited, with everything it wrote.
    let logs = understudy(&st.0, &["logs", "--follow", "app"]);
    assert!(logs.status.success(), "{logs:?}");
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "out-line\nerr-line\nlast\n"
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
        if json_field(&rec, "state") == Some("exited".into()) {
            assert_eq!(json_field(&rec, "exit_code"), Some(0.into()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app.json never says exited: {rec}"
        );
        sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_names_and_unknown_apps_are_refused() {
    let st = StateDir::new("names");
    let out = understudy(&st.0, &["run", "--name", "../escape", "--", "true"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not usable"),
        "{out:?}"
    );
    let out = understudy(&st.0, &["logs", "nothing-here"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing-here"),
        "{out:?}"
    );
}

/// An attached application checkpointed by name: the supervising `understudy run` exits 137
/// saying so, app.json keeps the application as running, and `understudy restore` brings it
/// back with the same init pid, counting on.
#[test]
fn attached_app_checkpointed_by_name_and_restored() {
    if !can_run() {
        return;
    }
    let st = StateDir::new("attached-ckpt");
    let count = st.0.join("count");
    // The count is replaced atomically (write, then rename): `echo $i > count` truncates the
    // file first, and a checkpoint that freezes the shell right there leaves it empty.
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > {0}.tmp; mv -f {0}.tmp {0}; sleep 0.02; done",
        count.display()
    );
    let mut sup = Command::new(UNDERSTUDY)
        .arg("--state-dir")
        .arg(&st.0)
        .args(["run", "--name", "app", "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: the application inherits it, and a pipe to the test would be a
        // resource outside the checkpointed tree.
        .stderr(fs::File::create(st.0.join("supervisor.err")).expect("stderr file"))
        .spawn()
        .expect("understudy run");
    let read_count = || {
        fs::read_to_string(&count)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let deadline = Instant::now() + PATIENCE;
    while read_count().unwrap_or(0) < 5 {
        assert!(Instant::now() < deadline, "the application never counted");
        sleep(Duration::from_millis(20));
    }
    // The init is the understudy binary itself, like the restorer's stubs: its exe link can
    // only be set while the stub's exe is not mapped (else EBUSY and a stale link).
    let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
    let root0 = json_field(&rec, "root_pid")
        .and_then(|v| v.as_i64())
        .expect("root_pid");
    let exe_before = fs::read_link(format!("/proc/{root0}/exe")).expect("exe link");
    let image = st.0.join("image");
    // The shell forks `mv` and `sleep` all the time: the checkpoint may find one of them
    // exited but not yet reaped; that zombie is part of the image (one attempt, no retry).
    let ck = understudy(
        &st.0,
        &[
            "checkpoint",
            "app",
            "--image",
            image.to_str().expect("utf-8"),
        ],
    );
    assert!(ck.status.success(), "checkpoint by name: {ck:?}");
    let deadline = Instant::now() + PATIENCE;
    while sup.try_wait().expect("try_wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "the supervisor did not exit after the checkpoint"
        );
        sleep(Duration::from_millis(20));
    }
    let status = sup.wait().expect("supervisor status");
    let err = fs::read_to_string(st.0.join("supervisor.err")).unwrap_or_default();
    assert_eq!(status.code(), Some(137), "{err}");
    assert!(err.contains("killed by signal 9"), "{err}");
    let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
    assert_eq!(json_field(&rec, "state"), Some("running".into()));
    let at_checkpoint = read_count().expect("count");
    let rs = understudy(
        &st.0,
        &[
            "restore",
            "--image",
            image.to_str().expect("utf-8"),
            "--name",
            "app",
        ],
    );
    assert!(rs.status.success(), "restore: {rs:?}");
    let printed: i64 = String::from_utf8_lossy(&rs.stdout)
        .trim()
        .parse()
        .expect("root pid");
    let exe_after = fs::read_link(format!("/proc/{printed}/exe")).expect("exe link");
    assert_eq!(exe_after, exe_before, "restored init's /proc/PID/exe");
    let rs_err = String::from_utf8_lossy(&rs.stderr);
    assert!(
        !rs_err.contains("exe"),
        "restore warned about the exe link: {rs_err}"
    );
    // Its own PID namespace: only the pids inside are kept, the init's outer pid is new and
    // app.json follows it (so `checkpoint app` works again).
    let rec = fs::read_to_string(st.0.join("apps/app/app.json")).expect("app.json");
    assert_eq!(
        Some(printed),
        json_field(&rec, "root_pid").and_then(|v| v.as_i64())
    );
    let deadline = Instant::now() + PATIENCE;
    while read_count().unwrap_or(0) < at_checkpoint + 5 {
        assert!(
            Instant::now() < deadline,
            "the restored application does not count on"
        );
        sleep(Duration::from_millis(20));
    }
    // StateDir's drop kills the restored init (and with it the namespace).
}
