//! End to end, at scale: TCP servers whose clients are outside the tree (this test process, on
//! loopback) and must not notice the checkpoint (no reset, no EOF, streams byte-exact).
//! - an epoll-driven echo server with 50 clients, each with a patterned stream in flight;
//! - a pre-forking server whose 3 workers share the listening socket: connections made before
//!   the checkpoint continue, and new ones are accepted and served by the restored workers.
//!
//! The checkpoint takes a network lock (docs/network-lock.md): segments of the tree's
//! connections are dropped from the freeze until the restore, so a client that keeps sending
//! through the checkpoint only retransmits (`echo_client_sending_through_the_checkpoint_is_not_reset`).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Byte `k` of client `i`'s stream.
fn pattern(i: usize, k: usize) -> u8 {
    #[allow(clippy::cast_possible_truncation)] // reduced modulo 256 first
    let b = ((i * 31 + k * 7 + k / 253) % 256) as u8;
    b
}

/// One client of an echo server: what it sent and what came back so far.
struct Client {
    i: usize,
    s: TcpStream,
    sent: usize,
    got: usize,
}

impl Client {
    fn connect(i: usize, port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the server");
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        s.set_write_timeout(Some(PATIENCE)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            i,
            s,
            sent: 0,
            got: 0,
        }
    }

    fn send(&mut self, n: usize) {
        let b: Vec<u8> = (self.sent..self.sent + n)
            .map(|k| pattern(self.i, k))
            .collect();
        self.s
            .write_all(&b)
            .unwrap_or_else(|e| panic!("client {}: write after {} bytes: {e}", self.i, self.sent));
        self.sent += n;
    }

    /// Reads until `upto` bytes of the echo came back, checking each against the pattern.
    fn expect(&mut self, upto: usize) {
        let mut b = vec![0u8; 16384];
        let t = Instant::now();
        while self.got < upto {
            assert!(
                t.elapsed() < PATIENCE,
                "client {}: echo stalled at {} of {upto}",
                self.i,
                self.got
            );
            let want = (upto - self.got).min(b.len());
            let n = self.s.read(&mut b[..want]).unwrap_or_else(|e| {
                panic!("client {}: read after {} bytes: {e}", self.i, self.got)
            });
            assert!(n > 0, "client {}: EOF after {} bytes", self.i, self.got);
            for (j, &x) in b[..n].iter().enumerate() {
                let k = self.got + j;
                assert_eq!(x, pattern(self.i, k), "client {}: byte {k} differs", self.i);
            }
            self.got += n;
        }
    }
}

fn read_file(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Lets delayed acknowledgements go out while the server still exists (0.3 s), then checkpoints
/// (killing) and restores it as `name`.
fn quiet_checkpoint_restore(w: &Workload, name: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let img = w.dir.path().join(name);
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    assert!(
        !Path::new(&format!("/proc/{}", w.pid)).exists(),
        "pid {} still taken after checkpoint returned",
        w.pid
    );
    let o = restore(&img);
    ok(&o, "restore");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        w.pid.to_string(),
        "restore prints the root pid"
    );
}

#[test]
fn epoll_echo_server_with_50_outside_clients_continues_byte_exact() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("echoserv", &[]);
    let w = start(&prog);
    let port: u16 = read_file(w.dir.path(), "port").trim().parse().unwrap();
    let mut clients: Vec<Client> = (0..50).map(|i| Client::connect(i, port)).collect();
    // Before: 12 KiB each, 8 KiB of the echo read; the rest stays in flight.
    for c in &mut clients {
        c.send(12 * 1024);
    }
    for c in &mut clients {
        c.expect(8 * 1024);
    }
    quiet_checkpoint_restore(&w, "img0");
    for round in 0..3 {
        for c in &mut clients {
            c.send(4096 + round * 1000 + c.i);
        }
        for c in &mut clients {
            let upto = c.sent;
            c.expect(upto);
        }
    }
    // The listener was re-bound: a new client is served too.
    let mut fresh = Client::connect(50, port);
    fresh.send(1000);
    fresh.expect(1000);
    for c in &clients {
        assert!(c.got > 12 * 1024, "client {} did not go on", c.i);
    }
}

/// Reads the 12-byte greeting "W<pid>\n" of a pre-forked worker.
fn greeting(c: &mut Client) -> i32 {
    let mut g = [0u8; 12];
    c.s.read_exact(&mut g)
        .unwrap_or_else(|e| panic!("client {}: greeting: {e}", c.i));
    let t = String::from_utf8_lossy(&g);
    assert!(t.starts_with('W') && t.ends_with('\n'), "greeting {t:?}");
    t[1..11].parse().expect("greeting pid")
}

#[test]
fn preforked_workers_sharing_a_listener_accept_and_serve_after_restore() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("echoserv", &[]);
    let w = start_with_arg(&prog, "3");
    let port: u16 = read_file(w.dir.path(), "port").trim().parse().unwrap();
    let workers: Vec<i32> = read_file(w.dir.path(), "workers")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 3);
    let mut old: Vec<Client> = (0..9).map(|i| Client::connect(i, port)).collect();
    let mut before = Vec::new();
    for c in &mut old {
        let pid = greeting(c);
        assert!(workers.contains(&pid), "greeted by {pid}, not a worker");
        before.push(pid);
        c.send(6000);
        c.expect(4000);
    }
    quiet_checkpoint_restore(&w, "img0");
    for &pid in &workers {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "worker {pid} not restored"
        );
    }
    for c in &mut old {
        c.send(3000 + c.i);
        let upto = c.sent;
        c.expect(upto);
    }
    let mut after = Vec::new();
    for i in 100..112 {
        let mut c = Client::connect(i, port);
        let pid = greeting(&mut c);
        assert!(workers.contains(&pid), "greeted by {pid}, not a worker");
        after.push(pid);
        c.send(2000);
        c.expect(2000);
    }
    eprintln!("served before: {before:?}; after: {after:?}");
}

/// What a client that does not stay silent sees: it keeps sending every 5 ms for 2 s while the
/// server is checkpointed and restored. The network lock drops its segments between the freeze
/// and the restore (it retransmits); the lock is in place after the checkpoint and gone after
/// the restore.
#[test]
fn echo_client_sending_through_the_checkpoint_is_not_reset() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if nft(&["--version"]).is_none() {
        eprintln!("skipped: needs nft (Debian package nftables) for the network lock");
        return;
    }
    let prog = build("echoserv", &[]);
    let w = start(&prog);
    let port: u16 = read_file(w.dir.path(), "port").trim().parse().unwrap();
    let mut c = Client::connect(0, port);
    c.send(1000);
    c.expect(1000);
    let h = std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            c.send(100);
            std::thread::sleep(Duration::from_millis(5));
        }
        let upto = c.sent;
        c.expect(upto);
    });
    std::thread::sleep(Duration::from_millis(300));
    let img = w.dir.path().join("img0");
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    let record = read_file(&img, "netlock");
    let table = record
        .lines()
        .find_map(|l| l.strip_prefix("table "))
        .expect("the lock record names its table")
        .to_string();
    assert!(
        nft(&["list", "table", "inet", &table]).is_some(),
        "lock {table} in place after the checkpoint"
    );
    let o = restore(&img);
    ok(&o, "restore");
    assert!(
        nft(&["list", "table", "inet", &table]).is_none(),
        "lock {table} released by the restore"
    );
    h.join().expect("the client's stream went on");
}

/// Runs nft; its stdout when it succeeded.
fn nft(args: &[&str]) -> Option<String> {
    let o = std::process::Command::new("nft").args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// On a host without nft, a checkpoint that would kill a server with outside clients is
/// refused (the tree runs on and keeps serving); with --leave-running it goes ahead.
#[test]
fn checkpoint_without_nft_is_refused_unless_the_tree_runs_on() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("echoserv", &[]);
    let w = start(&prog);
    let port: u16 = read_file(w.dir.path(), "port").trim().parse().unwrap();
    let mut c = Client::connect(0, port);
    c.send(1000);
    c.expect(1000);
    let run = |img: &Path, leave: bool| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.env("UNDERSTUDY_NFT", "/nonexistent/nft")
            .arg("checkpoint")
            .arg("--pid")
            .arg(w.pid.to_string())
            .arg("--image")
            .arg(img);
        if leave {
            cmd.arg("--leave-running");
        }
        cmd.output().expect("run understudy checkpoint")
    };
    let img = w.dir.path().join("img-refused");
    let o = run(&img, false);
    assert!(!o.status.success(), "checkpoint without nft should fail");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("pid {}", w.pid)), "{err}");
    assert!(err.contains("needs nft"), "{err}");
    assert!(!img.join("tree.img").exists());
    c.send(500);
    c.expect(1500);
    let img = w.dir.path().join("img-running");
    ok(&run(&img, true), "checkpoint --leave-running without nft");
    c.send(500);
    c.expect(2000);
}

/// A damaged lock record is refused before anything is restored, and the lock stays; with the
/// record put back the restore succeeds, releases the lock, and the client's stream goes on.
#[test]
fn restore_refuses_a_damaged_lock_record_and_keeps_the_lock() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if nft(&["--version"]).is_none() {
        eprintln!("skipped: needs nft (Debian package nftables) for the network lock");
        return;
    }
    let prog = build("echoserv", &[]);
    let w = start(&prog);
    let port: u16 = read_file(w.dir.path(), "port").trim().parse().unwrap();
    let mut c = Client::connect(0, port);
    c.send(1000);
    c.expect(1000);
    std::thread::sleep(Duration::from_millis(300));
    let img = w.dir.path().join("img0");
    ok(&checkpoint(w.pid, &img, false), "checkpoint");
    let record = read_file(&img, "netlock");
    let table = record
        .lines()
        .find_map(|l| l.strip_prefix("table "))
        .expect("the lock record names its table")
        .to_string();
    std::fs::write(
        img.join("netlock"),
        record.replace("connections 1", "connections 7"),
    )
    .unwrap();
    let o = restore(&img);
    assert!(!o.status.success(), "restore with a damaged lock record");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("netlock") && err.contains("checksum"), "{err}");
    assert!(
        nft(&["list", "table", "inet", &table]).is_some(),
        "lock {table} kept after the refused restore"
    );
    std::fs::write(img.join("netlock"), &record).unwrap();
    ok(&restore(&img), "restore");
    assert!(
        nft(&["list", "table", "inet", &table]).is_none(),
        "lock {table} released by the restore"
    );
    c.send(1000);
    c.expect(2000);
}
