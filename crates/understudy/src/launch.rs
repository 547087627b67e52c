//! Supervised launch of an application in its own PID namespace.
//!
//! `spawn` unshares a new PID namespace for its children and starts `understudy` itself again
//! (`run --init`) as PID 1 of that namespace: the *init*. The init starts PROGRAM (PID 2),
//! forwards termination signals to it, reaps every orphan of the namespace, and exits with
//! PROGRAM's status (128+N when PROGRAM was killed by signal N) once PROGRAM is gone; the kernel
//! then kills whatever is left in the namespace. The init holds nothing but its standard fds and
//! waits in `sigwait` (no signalfd, no epoll), so the checkpoint engine can dump it with the
//! application.
//!
//! The application's files live in `STATE_DIR/apps/NAME/`: `app.json` (an [`AppRecord`], written
//! atomically) and, for detached applications, `output.log`.
//!
//! Later issues add replication to `understudy run`; they extend [`LaunchSpec`] (e.g. extra
//! environment for the interceptors) and drive [`Launched`] without touching this mechanism.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{setsid, Pid};
use serde::{Deserialize, Serialize};

/// File name of the application record inside `STATE_DIR/apps/NAME/`.
pub const APP_JSON: &str = "app.json";
/// File name of a detached application's output inside `STATE_DIR/apps/NAME/`.
pub const OUTPUT_LOG: &str = "output.log";

/// What to launch.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Application name: the directory under `STATE_DIR/apps/`.
    pub name: String,
    pub state_dir: PathBuf,
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Detached: own session, stdin from /dev/null, stdout and stderr appended to `output.log`;
    /// `spawn` returns at once and the application outlives the caller.
    pub detach: bool,
    /// Extra environment for PROGRAM (e.g. `UNDERSTUDY_RING` once interceptors exist).
    pub env: Vec<(OsString, OsString)>,
}

/// What `STATE_DIR/apps/NAME/app.json` holds (format version 1; readers ignore unknown fields,
/// a new field never changes the meaning of an old one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AppRecord {
    pub version: u32,
    pub name: String,
    /// PID, in the caller's namespace, of the application's init (PID 1 of its namespace).
    pub root_pid: i32,
    /// True: the application has its own PID namespace (PROGRAM is PID 2 inside it).
    pub pidns: bool,
    /// Where the output goes: `output.log` when detached, else the terminal or file that the
    /// caller's stdout was (as `/proc/self/fd/1` names it).
    pub output: String,
    pub detached: bool,
    pub argv: Vec<String>,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// `running` or `exited`.
    pub state: String,
    /// PROGRAM's exit status (128+N for signal N) once `state` is `exited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Current version of [`AppRecord`].
pub const APP_RECORD_VERSION: u32 = 1;
/// app.json is small; anything larger is not ours.
const APP_JSON_MAX: u64 = 1 << 20;

/// Errors of the launch module.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("application name {0:?} is not usable (letters, digits, '.', '-', '_'; not starting with '.')")]
    BadName(String),
    #[error("application {name} is already running (init pid {pid})")]
    AlreadyRunning { name: String, pid: i32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot create a pid namespace: {0}")]
    Unshare(nix::Error),
    #[error("cannot start the init {exe}: {source}")]
    Spawn { exe: PathBuf, source: io::Error },
    #[error("{path}: {what}")]
    BadRecord { path: PathBuf, what: String },
    #[error("signal handling: {0}")]
    Signals(nix::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LaunchError + '_ {
    move |source| LaunchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A launched application.
#[derive(Debug)]
pub struct Launched {
    pub name: String,
    /// The init's PID in the caller's namespace.
    pub root_pid: i32,
    pub record: AppRecord,
    child: Child,
}

/// `STATE_DIR/apps/NAME`.
pub fn app_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("apps").join(name)
}

/// Checks an application name (it becomes a directory name).
pub fn check_name(name: &str) -> Result<(), LaunchError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(LaunchError::BadName(name.to_string()))
    }
}

impl AppRecord {
    /// Reads `STATE_DIR/apps/NAME/app.json`.
    pub fn load(state_dir: &Path, name: &str) -> Result<AppRecord, LaunchError> {
        check_name(name)?;
        let path = app_dir(state_dir, name).join(APP_JSON);
        let meta = fs::metadata(&path).map_err(io_err(&path))?;
        if meta.len() > APP_JSON_MAX {
            return Err(LaunchError::BadRecord {
                path,
                what: format!("{} bytes, more than the {APP_JSON_MAX} allowed", meta.len()),
            });
        }
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let rec: AppRecord = serde_json::from_str(&text).map_err(|e| LaunchError::BadRecord {
            path: path.clone(),
            what: e.to_string(),
        })?;
        if rec.version > APP_RECORD_VERSION {
            return Err(LaunchError::BadRecord {
                path,
                what: format!(
                    "format version {} is newer than {APP_RECORD_VERSION}",
                    rec.version
                ),
            });
        }
        Ok(rec)
    }

    /// Writes it atomically (temporary file, then rename) into `dir`.
    pub fn store(&self, dir: &Path) -> Result<(), LaunchError> {
        let path = dir.join(APP_JSON);
        let tmp = dir.join(format!(".{APP_JSON}.{}.tmp", std::process::id()));
        let mut text = serde_json::to_string_pretty(self).map_err(|e| LaunchError::BadRecord {
            path: path.clone(),
            what: e.to_string(),
        })?;
        text.push('\n');
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// True while the recorded init is alive (not a zombie) and is still an understudy init.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.root_pid)) else {
            return false;
        };
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next());
        if matches!(state, Some('Z' | 'X') | None) {
            return false;
        }
        // The pid may have been reused since: it must still be this application's init.
        let cmdline = fs::read(format!("/proc/{}/cmdline", self.root_pid)).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        args.contains(&b"--init".as_slice()) && args.contains(&self.name.as_bytes())
    }
}

/// The signals the init and the attached supervisor handle synchronously.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Signals from a terminal reach the whole foreground process group (PROGRAM included), so an
/// attached supervisor does not forward them again.
fn is_terminal_signal(sig: Signal) -> bool {
    matches!(sig, Signal::SIGINT | Signal::SIGQUIT)
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Marks every fd above stderr close-on-exec, so the application gets only stdin, stdout and
/// stderr: descriptors leaked to us by whoever started `understudy run` (a make jobserver pipe,
/// say) would otherwise be part of the application and tie it to processes outside its tree.
fn close_stray_fds_on_exec() {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // The fd of the read_dir above is gone by now (EBADF), which is fine.
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Starts the application: a new PID namespace, the init as its PID 1, PROGRAM as PID 2.
/// Writes `app.json` before returning.
pub fn spawn(spec: &LaunchSpec) -> Result<Launched, LaunchError> {
    check_name(&spec.name)?;
    let dir = app_dir(&spec.state_dir, &spec.name);
    if let Ok(old) = AppRecord::load(&spec.state_dir, &spec.name) {
        if old.state == "running" && old.is_alive() {
            return Err(LaunchError::AlreadyRunning {
                name: spec.name.clone(),
                pid: old.root_pid,
            });
        }
    }
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;

    let mut cmd = Command::new(&exe);
    cmd.arg("--state-dir")
        .arg(&spec.state_dir)
        .arg("run")
        .arg("--name")
        .arg(&spec.name);
    if spec.detach {
        cmd.arg("--detach");
    }
    cmd.arg("--init")
        .arg("--")
        .arg(&spec.program)
        .args(&spec.args);
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let output = if spec.detach {
        let log = dir.join(OUTPUT_LOG);
        let open = || fs::OpenOptions::new().create(true).append(true).open(&log);
        let out = open().map_err(io_err(&log))?;
        let err = open().map_err(io_err(&log))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        log.to_string_lossy().into_owned()
    } else {
        fs::read_link("/proc/self/fd/1")
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "stdout".to_string())
    };

    close_stray_fds_on_exec();
    // Only children created after this call enter the new namespace; the first becomes PID 1.
    unshare(CloneFlags::CLONE_NEWPID).map_err(LaunchError::Unshare)?;
    let child = cmd.spawn().map_err(|source| LaunchError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    let root_pid = i32::try_from(child.id()).expect("pid fits in i32");
    // A spawned child inherits the signal mask, so block only after spawning. An exit that
    // happens before this is caught by `wait`'s first `try_wait`.
    if !spec.detach {
        handled_signals()
            .thread_block()
            .map_err(LaunchError::Signals)?;
    }

    let mut argv = vec![spec.program.to_string_lossy().into_owned()];
    argv.extend(spec.args.iter().map(|a| a.to_string_lossy().into_owned()));
    let record = AppRecord {
        version: APP_RECORD_VERSION,
        name: spec.name.clone(),
        root_pid,
        pidns: true,
        output,
        detached: spec.detach,
        argv,
        started_at: now_secs(),
        state: "running".to_string(),
        exit_code: None,
    };
    record.store(&dir)?;
    Ok(Launched {
        name: spec.name.clone(),
        root_pid,
        record,
        child,
    })
}

impl Launched {
    /// Supervises an attached application until its init exits: forwards termination signals
    /// to the init (not terminal ones, which the terminal already delivered to PROGRAM) and
    /// returns PROGRAM's exit code (128+N for a signal; 137 when the init itself was killed,
    /// e.g. by a checkpoint).
    pub fn wait(mut self) -> Result<i32, LaunchError> {
        let set = handled_signals();
        loop {
            if let Some(st) = self.child.try_wait().map_err(io_err(Path::new("init")))? {
                // The init records PROGRAM's exit itself. An init killed by a signal was most
                // likely checkpointed (`understudy checkpoint NAME` kills the tree after the
                // dump) and may be restored under the same pid: its record stays as it is.
                if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&st) {
                    eprintln!(
                        "understudy: the init of {} (pid {}) was killed by signal {sig}; if it was \
                         checkpointed, `understudy restore` brings it back",
                        self.name, self.root_pid
                    );
                }
                return Ok(exit_code_of(st));
            }
            let sig = set.wait().map_err(LaunchError::Signals)?;
            if sig != Signal::SIGCHLD && !is_terminal_signal(sig) {
                let _ = kill(Pid::from_raw(self.root_pid), sig);
            }
        }
    }
}

fn exit_code_of(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Reaps every exited child; returns PROGRAM's exit code if PROGRAM was among them.
fn reap_all(main_pid: Pid) -> Option<i32> {
    let mut main_code = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == main_pid => main_code = Some(c),
            Ok(WaitStatus::Signaled(pid, s, _)) if pid == main_pid => {
                main_code = Some(128 + s as i32);
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return main_code,
            Ok(_) => {}
        }
    }
}

/// The init: PID 1 of the application's namespace. Starts PROGRAM, forwards signals to it,
/// reaps orphans, records PROGRAM's exit in app.json and returns its exit code.
pub fn init_main(
    state_dir: &Path,
    name: &str,
    detach: bool,
    program: &OsString,
    args: &[OsString],
) -> Result<i32, LaunchError> {
    if detach {
        // Own session: the caller's terminal hanging up does not reach the application.
        let _ = setsid();
    }
    // PROGRAM inherits our signal mask: start it with nothing blocked, block afterwards.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(LaunchError::Signals)?;
    let child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|source| LaunchError::Spawn {
            exe: PathBuf::from(program),
            source,
        })?;
    let main_pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
    // std's Child is not used to wait: the reaping loop below collects every child.
    drop(child);
    let set = handled_signals();
    set.thread_block().map_err(LaunchError::Signals)?;
    // A SIGCHLD that came before the block is lost, so reap once before the first wait.
    let mut sig = Signal::SIGCHLD;
    let code = loop {
        if sig != Signal::SIGCHLD {
            if detach || !is_terminal_signal(sig) {
                let _ = kill(main_pid, sig);
            }
        } else if let Some(c) = reap_all(main_pid) {
            break c;
        }
        sig = set.wait().map_err(LaunchError::Signals)?;
    };
    // Best effort: the record is informative once the application is gone.
    if let Ok(mut rec) = AppRecord::load(state_dir, name) {
        rec.state = "exited".to_string();
        rec.exit_code = Some(code);
        let _ = rec.store(&app_dir(state_dir, name));
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("understudy-launch-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(app_dir(&p, "app")).expect("mkdir");
        p
    }

    fn record() -> AppRecord {
        AppRecord {
            version: APP_RECORD_VERSION,
            name: "app".into(),
            root_pid: 4242,
            pidns: true,
            output: "/x/output.log".into(),
            detached: true,
            argv: vec!["prog".into(), "a b".into()],
            started_at: 1,
            state: "running".into(),
            exit_code: None,
        }
    }

    #[test]
    fn app_record_round_trips() {
        let st = scratch("rt");
        let rec = record();
        rec.store(&app_dir(&st, "app")).expect("store");
        assert_eq!(AppRecord::load(&st, "app").expect("load"), rec);
        let mut done = rec.clone();
        done.state = "exited".into();
        done.exit_code = Some(3);
        done.store(&app_dir(&st, "app")).expect("store");
        assert_eq!(AppRecord::load(&st, "app").expect("load"), done);
        let _ = fs::remove_dir_all(&st);
    }

    #[test]
    fn app_record_refuses_newer_versions_oversize_and_garbage() {
        let st = scratch("bad");
        let path = app_dir(&st, "app").join(APP_JSON);
        let mut v = serde_json::to_value(record()).expect("json");
        v["version"] = (APP_RECORD_VERSION + 1).into();
        v["future_field"] = "ignored".into();
        fs::write(&path, v.to_string()).expect("write");
        let e = AppRecord::load(&st, "app")
            .expect_err("newer version")
            .to_string();
        assert!(e.contains("newer") && e.contains("app.json"), "{e}");
        fs::write(&path, "{not json").expect("write");
        let e = AppRecord::load(&st, "app")
            .expect_err("garbage")
            .to_string();
        assert!(e.contains("app.json"), "{e}");
        fs::write(&path, vec![b' '; 2 << 20]).expect("write");
        let e = AppRecord::load(&st, "app")
            .expect_err("oversize")
            .to_string();
        assert!(e.contains("allowed"), "{e}");
        // Unknown fields are ignored by this version.
        let mut v = serde_json::to_value(record()).expect("json");
        v["future_field"] = "ignored".into();
        fs::write(&path, v.to_string()).expect("write");
        assert_eq!(AppRecord::load(&st, "app").expect("load"), record());
        let _ = fs::remove_dir_all(&st);
    }

    #[test]
    fn names_are_checked() {
        for ok in ["app", "a.b-c_d", "X1"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
