//! Replication between agent processes: `understudy backup` and `understudy run --backup`
//! with the `understudy-loadgen` workload (multi-process, multi-threaded, writing the ring as
//! the interceptors do). Every wait is bounded; every process is killed on drop.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

const UNDERSTUDY: &str = env!("CARGO_BIN_EXE_understudy");
const LOADGEN: &str = env!("CARGO_BIN_EXE_understudy-loadgen");

/// Bound of every wait on another process: generous because CI machines are slow and shared (a
/// wait that succeeds returns as soon as it can).
const PATIENCE: Duration = Duration::from_secs(60);

fn is_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        eprintln!("skipped: needs root (understudy run creates a PID namespace)");
        false
    }
}

/// Build the interceptor library next to the understudy binary (once per test process), as
/// `tests/intercept.rs` does, so that `cargo test -p understudy` works on its own.
fn lib_ready() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "intercept-preload"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .status();
        matches!(st, Ok(s) if s.success())
    })
}

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("understudy-repl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
struct Proc(Child);
impl Proc {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
    /// Wait for exit up to `limit`; returns the exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st.code();
            }
            sleep(Duration::from_millis(20));
        }
        None
    }
    /// What it wrote to stderr: everything once it exited; after a failed wait (it, or a
    /// process it started, may still hold the pipe) whatever came within 5 s, not a hang.
    fn stderr(&mut self) -> String {
        let Some(mut e) = self.0.stderr.take() else {
            return String::new();
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = e.read_to_end(&mut s);
            let _ = tx.send(String::from_utf8_lossy(&s).into_owned());
        });
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| "(stderr still open after 5 s)".into())
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(prefix: &[&str], state: &Path, args: &[&str]) -> Proc {
    let (exe, pre) = match prefix.split_first() {
        Some((e, rest)) => (*e, rest.to_vec()),
        None => (UNDERSTUDY, vec![]),
    };
    let mut c = Command::new(exe);
    c.args(pre);
    if !prefix.is_empty() {
        c.arg(UNDERSTUDY);
    }
    c.arg("--state-dir")
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c.stderr(Stdio::piped());
    Proc(c.spawn().expect("spawn understudy"))
}

fn backup(prefix: &[&str], state: &Path, key: &Path, listen: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "backup",
        "--listen",
        listen,
        "--key",
        key.to_str().unwrap(),
        "--fsync",
        "never",
    ];
    args.extend_from_slice(extra);
    let p = spawn(prefix, state, &args);
    // Ready once the control socket answers.
    let sock = state.join("agents/backup.sock");
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return p;
        }
        sleep(Duration::from_millis(20));
    }
    panic!("backup agent did not come up on {listen}");
}

fn summary(state: &Path, app: &str) -> journal::inspect::Summary {
    journal::inspect::summarize(state.join("apps").join(app).join("journal"))
        .expect("summarize journal")
}

fn primary(prefix: &[&str], state: &Path, key: &Path, backup: &str, load: &[&str]) -> Proc {
    let mut args = vec![
        "run",
        "--name",
        "w",
        "--backup",
        backup,
        "--key",
        key.to_str().unwrap(),
        "--fsync",
        "never",
        "--drain-timeout",
        "60",
        "--no-intercept",
        "--",
        LOADGEN,
    ];
    args.extend_from_slice(load);
    spawn(prefix, state, &args)
}

#[test]
fn backup_sigkilled_three_times_ends_identical_and_gapless() {
    if !is_root() {
        return;
    }
    let (pd, bd, kd) = (Dir::new("kill-p"), Dir::new("kill-b"), Dir::new("kill-k"));
    let key = kd.0.join("cluster.key");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut b = backup(&[], &bd.0, &key, &addr, &[]);
    // 2 processes × 2 threads × 6000 records, paced to last a few seconds, and held before
    // the last records until the three kills are done (however slow the machine).
    let release = pd.0.join("release");
    let mut p = primary(
        &[],
        &pd.0,
        &key,
        &addr,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--messages",
            "6000",
            "--pause-us",
            "40000",
            "--hold",
            release.to_str().unwrap(),
        ],
    );
    for round in 0..3 {
        sleep(Duration::from_millis(500));
        assert!(
            p.0.try_wait().unwrap().is_none(),
            "workload ended before kill {round}"
        );
        b.kill();
        sleep(Duration::from_millis(200));
        b = backup(&[], &bd.0, &key, &addr, &[]);
    }
    std::fs::write(&release, b"").unwrap();
    let code = p.wait(2 * PATIENCE);
    let err = p.stderr();
    assert_eq!(code, Some(0), "primary: {err}");
    b.kill();
    let (sp, sb) = (summary(&pd.0, "w"), summary(&bd.0, "w"));
    assert_eq!(sp.records, 24_000, "{err}");
    assert_eq!((sp.gaps, sb.gaps), (0, 0));
    assert_eq!((sb.first_seq, sb.last_seq), (Some(1), Some(24_000)));
    assert_eq!(sp.digest, sb.digest);
}

fn metrics(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn garbage_on_the_port_is_refused_and_the_agent_keeps_serving() {
    if !is_root() {
        return;
    }
    let (pd, bd, kd) = (Dir::new("junk-p"), Dir::new("junk-b"), Dir::new("junk-k"));
    let key = kd.0.join("cluster.key");
    let addr = format!("127.0.0.1:{}", free_port());
    let maddr = format!("127.0.0.1:{}", free_port());
    let mut b = backup(&[], &bd.0, &key, &addr, &["--metrics", &maddr]);
    // An idle connection left open must not block anyone.
    let _idle = TcpStream::connect(&addr).unwrap();
    let junk: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\n\r\n",
        &[0xff; 4096],
        b"USTD\x09\x00\x00\x00", // unsupported protocol version 9
        b"USTD\x04\x00\x00\x00\x00\x20garbage-instead-of-noise", // right version, garbage handshake
        b"US",                   // truncated preamble
    ];
    for j in junk {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(j);
        let _ = s.shutdown(std::net::Shutdown::Write);
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        if j.starts_with(b"USTD\x09") {
            let text = String::from_utf8_lossy(&reply);
            assert!(
                text.contains("version 9")
                    && text.contains(&format!("version {}", transport::PROTOCOL_VERSION)),
                "{text}"
            );
        }
    }
    let mut p = primary(
        &[],
        &pd.0,
        &key,
        &addr,
        &["--procs", "1", "--threads", "2", "--messages", "500"],
    );
    assert_eq!(p.wait(PATIENCE), Some(0), "{}", p.stderr());
    let m = metrics(&maddr);
    let refused: u64 = m
        .lines()
        .find(|l| l.starts_with("understudy_refused_connections_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 4, "{m}");
    assert!(
        m.contains("understudy_messages_total{role=\"backup\"} 1000"),
        "{m}"
    );
    b.kill();
    let log = b.stderr();
    assert!(log.contains("refused connection"), "{log}");
    assert_eq!(summary(&pd.0, "w").digest, summary(&bd.0, "w").digest);
}

#[test]
fn status_reports_both_roles_as_json() {
    if !is_root() {
        return;
    }
    let (pd, bd, kd) = (Dir::new("st-p"), Dir::new("st-b"), Dir::new("st-k"));
    let key = kd.0.join("cluster.key");
    let addr = format!("127.0.0.1:{}", free_port());
    let _b = backup(&[], &bd.0, &key, &addr, &[]);
    // Held before its last record until the status was seen, so the primary is there to ask.
    let release = pd.0.join("release");
    let mut p = primary(
        &[],
        &pd.0,
        &key,
        &addr,
        &[
            "--messages",
            "3000",
            "--pause-us",
            "20000",
            "--hold",
            release.to_str().unwrap(),
        ],
    );
    // While the workload runs, the primary's control socket answers.
    let start = Instant::now();
    let mut seen = None;
    while start.elapsed() < PATIENCE && seen.is_none() {
        let out = Command::new(UNDERSTUDY)
            .arg("--state-dir")
            .arg(&pd.0)
            .args(["status", "w", "--json"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v["apps"][0]["peers"][0]["state"] == "streaming" {
                seen = Some(v);
            }
        }
        sleep(Duration::from_millis(50));
    }
    std::fs::write(&release, b"").unwrap();
    let v = seen.expect("primary status never showed a streaming backup");
    let a = &v["apps"][0];
    assert_eq!(a["role"], "primary");
    assert_eq!(a["mode"], "async");
    for f in [
        "last_seq_sent",
        "last_seq_acked",
        "lag_messages",
        "lag_bytes",
    ] {
        assert!(a["peers"][0][f].is_u64(), "{f} in {v}");
    }
    assert_eq!(p.wait(PATIENCE), Some(0), "{}", p.stderr());
    let out = Command::new(UNDERSTUDY)
        .arg("--state-dir")
        .arg(&bd.0)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["apps"][0]["role"], "backup");
    assert_eq!(v["apps"][0]["last_seq_journaled"], 3000);
    // The control socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bd.0.join("agents/backup.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Two network namespaces joined by a veth pair; deleted on drop.
struct NetPair {
    a: String,
    b: String,
}
impl NetPair {
    fn create() -> Option<NetPair> {
        let tag = std::process::id() % 100_000;
        let n = NetPair {
            a: format!("usa{tag}"),
            b: format!("usb{tag}"),
        };
        let ip = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let (va, vb) = (format!("va{tag}"), format!("vb{tag}"));
        // Leftovers of an earlier run that was killed (same pid reused): remove them first.
        for ns in [&n.a, &n.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &va])
            .stderr(Stdio::null())
            .status();
        let ok = ip(&["netns", "add", &n.a])
            && ip(&["netns", "add", &n.b])
            && ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb])
            && ip(&["link", "set", &va, "netns", &n.a])
            && ip(&["link", "set", &vb, "netns", &n.b])
            && ip(&["-n", &n.a, "addr", "add", "10.231.0.1/24", "dev", &va])
            && ip(&["-n", &n.b, "addr", "add", "10.231.0.2/24", "dev", &vb])
            && ip(&["-n", &n.a, "link", "set", &va, "up"])
            && ip(&["-n", &n.b, "link", "set", &vb, "up"])
            && ip(&["-n", &n.a, "link", "set", "lo", "up"])
            && ip(&["-n", &n.b, "link", "set", "lo", "up"]);
        if ok {
            Some(n)
        } else {
            eprintln!("skipped: cannot create network namespaces and a veth pair");
            None
        }
    }
}
impl Drop for NetPair {
    fn drop(&mut self) {
        for n in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
fn two_hosts_in_network_namespaces_over_veth() {
    if !is_root() {
        return;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: needs iproute2 (`ip`)");
        return;
    }
    let Some(net) = NetPair::create() else { return };
    let (pd, bd, kd) = (Dir::new("ns-p"), Dir::new("ns-b"), Dir::new("ns-k"));
    let key = kd.0.join("cluster.key");
    let addr = "10.231.0.2:7411";
    let in_b = ["ip", "netns", "exec", net.b.as_str()];
    let in_a = ["ip", "netns", "exec", net.a.as_str()];
    let mut b = backup(&in_b, &bd.0, &key, addr, &[]);
    // Held before its last records until the backup was killed and restarted.
    let release = pd.0.join("release");
    let mut p = primary(
        &in_a,
        &pd.0,
        &key,
        addr,
        &[
            "--procs",
            "2",
            "--threads",
            "2",
            "--messages",
            "3000",
            "--pause-us",
            "20000",
            "--hold",
            release.to_str().unwrap(),
        ],
    );
    sleep(Duration::from_millis(400));
    b.kill();
    b = backup(&in_b, &bd.0, &key, addr, &[]);
    std::fs::write(&release, b"").unwrap();
    assert_eq!(p.wait(2 * PATIENCE), Some(0), "{}", p.stderr());
    b.kill();
    let (sp, sb) = (summary(&pd.0, "w"), summary(&bd.0, "w"));
    assert_eq!(sp.records, 12_000);
    assert_eq!((sp.gaps, sb.gaps), (0, 0));
    assert_eq!(sp.digest, sb.digest);
}

#[test]
fn protect_adds_a_second_backup_to_a_running_application() {
    if !is_root() {
        return;
    }
    let (pd, b1d, b2d, kd) = (
        Dir::new("prot-p"),
        Dir::new("prot-b1"),
        Dir::new("prot-b2"),
        Dir::new("prot-k"),
    );
    let key = kd.0.join("cluster.key");
    let (a1, a2) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut b1 = backup(&[], &b1d.0, &key, &a1, &[]);
    let mut b2 = backup(&[], &b2d.0, &key, &a2, &[]);
    // Held before its last record until the second backup was added: the application is
    // still running when `protect` asks, however slow the machine.
    let release = pd.0.join("release");
    let mut p = primary(
        &[],
        &pd.0,
        &key,
        &a1,
        &[
            "--threads",
            "2",
            "--messages",
            "2000",
            "--pause-us",
            "20000",
            "--hold",
            release.to_str().unwrap(),
        ],
    );
    // Ready once its control socket accepts a connection (the file alone exists from bind).
    let sock = pd.0.join("agents/primary-w.sock");
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            start.elapsed() < PATIENCE,
            "the primary's control socket never answered"
        );
        sleep(Duration::from_millis(20));
    }
    let out = Command::new(UNDERSTUDY)
        .arg("--state-dir")
        .arg(&pd.0)
        .args(["protect", "w", "--add", &a2])
        .output()
        .unwrap();
    std::fs::write(&release, b"").unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(p.wait(PATIENCE), Some(0), "{}", p.stderr());
    b1.kill();
    b2.kill();
    let (sp, s1, s2) = (
        summary(&pd.0, "w"),
        summary(&b1d.0, "w"),
        summary(&b2d.0, "w"),
    );
    assert_eq!(sp.records, 4000);
    assert_eq!((s1.gaps, s2.gaps), (0, 0));
    assert_eq!(sp.digest, s1.digest);
    assert_eq!(sp.digest, s2.digest);
}

/// Heartbeats and timeouts: a backup that stops answering (SIGSTOP, so its TCP connection stays
/// open) is dropped by the primary after the peer timeout; once it runs again the primary
/// reconnects and resumes, and both journals end identical.
#[test]
fn silent_backup_is_dropped_by_timeout_and_resumed() {
    if !is_root() {
        return;
    }
    let (pd, bd, kd) = (Dir::new("stop-p"), Dir::new("stop-b"), Dir::new("stop-k"));
    let key = kd.0.join("cluster.key");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut b = backup(&[], &bd.0, &key, &addr, &[]);
    // Held before its last record until the backup runs again: the primary is still streaming
    // when the backup stops, however slow the machine.
    let release = pd.0.join("release");
    let mut p = primary(
        &[],
        &pd.0,
        &key,
        &addr,
        &[
            "--threads",
            "2",
            "--messages",
            "4000",
            "--pause-us",
            "50000",
            "--hold",
            release.to_str().unwrap(),
        ],
    );
    sleep(Duration::from_millis(500));
    let bpid = nix::unistd::Pid::from_raw(i32::try_from(b.0.id()).unwrap());
    nix::sys::signal::kill(bpid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The primary notices the silence (3 s timeout) and says so in its status: "peer silent"
    // for the dropped session, then (while the backup stays stopped) the failed handshakes of
    // its reconnection attempts. A slow poll may see only the latter: both are accepted here,
    // and the log below must show the drop for silence.
    let start = Instant::now();
    let mut seen = String::new();
    while start.elapsed() < PATIENCE {
        let out = Command::new(UNDERSTUDY)
            .arg("--state-dir")
            .arg(&pd.0)
            .args(["status", "w", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let err = v["apps"][0]["peers"][0]["error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if err.contains("silent") || err.contains("handshake timed out") {
            seen = err;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(bpid, nix::sys::signal::Signal::SIGCONT).unwrap();
    std::fs::write(&release, b"").unwrap();
    assert!(!seen.is_empty(), "primary never reported the silent backup");
    assert_eq!(p.wait(PATIENCE), Some(0), "{}", p.stderr());
    let log = p.stderr();
    assert!(
        log.contains("peer silent for"),
        "the primary did not drop the backup for silence (status said {seen:?}): {log}"
    );
    b.kill();
    let (sp, sb) = (summary(&pd.0, "w"), summary(&bd.0, "w"));
    assert_eq!(sp.records, 8000);
    assert_eq!((sp.gaps, sb.gaps), (0, 0));
    assert_eq!(sp.digest, sb.digest);
}

/// Sync mode with the real interceptor: with no backup reachable, an output must not leave the
/// application. The interceptor runs in the application's PID namespace, where the consumer's
/// pid means nothing: it must see the consumer alive through the ring file's lock.
#[test]
fn sync_mode_holds_outputs_of_an_intercepted_program_without_a_backup() {
    if !is_root() {
        return;
    }
    assert!(lib_ready(), "cargo build -p intercept-preload failed");
    let (pd, kd) = (Dir::new("sync-p"), Dir::new("sync-k"));
    let key = kd.0.join("cluster.key");
    let dead = format!("127.0.0.1:{}", free_port());
    // PROGRAM's stdout is a pipe to this test: an output that leaves the application.
    let mut child = Command::new(UNDERSTUDY)
        .arg("--state-dir")
        .arg(&pd.0)
        .args([
            "run",
            "--name",
            "w",
            "--mode",
            "sync",
            "--backup",
            &dead,
            "--key",
            key.to_str().unwrap(),
            "--fsync",
            "never",
            "--drain-timeout",
            "1",
            "--",
            "sh",
            "-c",
            "echo released",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let n = stdout.read(&mut b).unwrap_or(0);
        let _ = tx.send(String::from_utf8_lossy(&b[..n]).into_owned());
    });
    let released = rx.recv_timeout(Duration::from_secs(2)).unwrap_or_default();
    let pid = child.id();
    let _ = child.kill();
    let _ = child.wait();
    for ext in ["ring", "procs"] {
        let _ = std::fs::remove_file(format!("/dev/shm/understudy-w-{pid}.{ext}"));
    }
    assert_eq!(
        released, "",
        "an output left the application without a backup's acknowledgement"
    );
}
