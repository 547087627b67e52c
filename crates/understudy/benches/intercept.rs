//! Interceptor benchmark (`cargo bench -p understudy --bench intercept`): the time added per
//! intercepted call in record mode, and the throughput of a real server (redis, from Debian:
//! `scripts/setup.sh --bench`) native against recorded. Native and recorded runs alternate in
//! the same invocation; medians are printed as the rows of docs/PERFORMANCE.md.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn parse_calls(out: &[u8]) -> Vec<(String, f64)> {
    String::from_utf8_lossy(out)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn record_cmd(journal: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_understudy"));
    c.arg("record").arg("--journal").arg(journal).arg("--");
    c
}

fn calls(dir: &Path, rounds: usize) {
    let prog = dir.join("bench_calls");
    let ok = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&prog)
        .arg(root().join("tests/intercept/bench_calls.c"))
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("skipped call benchmark: needs cc");
        return;
    }
    let names = ["clock_gettime", "write_devnull", "socket_read"];
    let modes = ["native", "record", "record, no seccomp"];
    let mut v: Vec<Vec<Vec<f64>>> = vec![vec![vec![]; names.len()]; modes.len()];
    for r in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let j = dir.join(format!("j-calls-{r}-{m}"));
            let out = match *mode {
                "native" => Command::new(&prog).output().unwrap(),
                _ => {
                    let mut c = record_cmd(&j);
                    if m == 2 {
                        c.env("UNDERSTUDY_SECCOMP", "0");
                    }
                    c.arg(&prog).output().unwrap()
                }
            };
            let _ = std::fs::remove_dir_all(&j);
            for (k, val) in parse_calls(&out.stdout) {
                if let Some(i) = names.iter().position(|n| *n == k) {
                    v[m][i].push(val);
                }
            }
        }
    }
    // Added time per round (record minus the native run just before it): the load of a shared
    // machine drifts between rounds, a paired difference cancels most of that drift.
    let paired = |m: usize, i: usize| {
        let mut d: Vec<f64> = v[m][i].iter().zip(&v[0][i]).map(|(r, n)| r - n).collect();
        if d.is_empty() {
            f64::NAN
        } else {
            median(&mut d)
        }
    };
    let added: Vec<[f64; 2]> = (0..names.len())
        .map(|i| [paired(1, i), paired(2, i)])
        .collect();
    println!("\nper-call CPU time, ns (median of {rounds} runs, each the median of 7 loops); limit: added < 100 ns for calls that do not block");
    println!("| call | native | record | added (medians) | **added (median of per-round differences)** | record, seccomp off | added, seccomp off (per-round) | verdict |");
    println!("|---|---|---|---|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let nat = median(&mut v[0][i]);
        let rec = median(&mut v[1][i]);
        let ns = median(&mut v[2][i]);
        let [pa, pns] = added[i];
        println!(
            "| {n} | {nat:.1} | {rec:.1} | {:.1} | **{pa:.1}** | {ns:.1} | {pns:.1} | {} |",
            rec - nat,
            if pa < 100.0 { "within" } else { "MISSED" }
        );
    }
}

fn which(p: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {p}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn wait_port(port: u16) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// One `redis-benchmark` run pinned to CPU 1 (`-P pipeline`): requests/s per test.
fn redis_bench(port: u16, n: u32, pipeline: u32) -> Vec<(String, f64)> {
    let out = Command::new("taskset")
        .args(["-c", "1", "redis-benchmark"])
        .args(["-p", &port.to_string(), "-t", "set,get", "-c", "50"])
        .args(["-P", &pipeline.to_string()])
        .args(["-n", &n.to_string(), "--csv"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
            Some((f.first()?.to_string(), f.get(1)?.parse().ok()?))
        })
        .collect()
}

/// utime + stime of a process, in seconds (clock ticks of 10 ms).
fn cpu_secs(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// The redis-server process: the child itself, or the recorded child of `understudy record`.
fn redis_pid(child: &Child, recorded: bool) -> u32 {
    if !recorded {
        return child.id();
    }
    let p = format!("/proc/{0}/task/{0}/children", child.id());
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn stop_redis(port: u16, mut child: Child) {
    let _ = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "shutdown", "nosave"])
        .output();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Per-round figures of one configuration (native or recorded).
#[derive(Default)]
struct Sample {
    /// requests/s per test (SET, GET)
    rps: Vec<Vec<f64>>,
    /// server CPU per request, µs
    cpu: Vec<f64>,
    /// collector CPU per request, µs (recorded only)
    collector: Vec<f64>,
}

/// Where the collector (`understudy record`) runs while recording. The server is always on
/// CPU 0 and the load generator always on CPU 1, natively and recorded.
#[derive(Clone, Copy, PartialEq)]
enum Placement {
    /// As deployed: the collector on the primary host beside the server (CPU 0), the load
    /// generator alone on CPU 1 (the clients' machines).
    Primary,
    /// The collector on the load generator's CPU 1 (the placement of the earlier sessions):
    /// its CPU is taken from the load generator.
    WithLoad,
}

impl Placement {
    fn cpu(self) -> &'static str {
        match self {
            Placement::Primary => "0",
            Placement::WithLoad => "1",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Placement::Primary => "recorded, collector on CPU 0 (with the server)",
            Placement::WithLoad => "recorded, collector on CPU 1 (with redis-benchmark)",
        }
    }
}

fn server(dir: &Path, rounds: usize) {
    if !which("redis-server") || !which("redis-benchmark") || !which("taskset") {
        println!("\nskipped server benchmark: needs redis-server, redis-benchmark (scripts/setup.sh --bench) and taskset");
        return;
    }
    // Without pipelining (one request per round trip, the configuration), and with 16
    // requests per round trip (per-request costs of the server dominate).
    for (pipeline, n) in [(1u32, 100_000u32), (16, 400_000)] {
        server_variant(dir, rounds, pipeline, n);
    }
}

fn server_variant(dir: &Path, rounds: usize, pipeline: u32, n: u32) {
    let tests = ["SET", "GET"];
    // Index 0 = native; then one per placement of the collector.
    let modes: [Option<Placement>; 3] = [None, Some(Placement::Primary), Some(Placement::WithLoad)];
    let mut s: [Sample; 3] = Default::default();
    for x in &mut s {
        x.rps = vec![vec![]; tests.len()];
    }
    // Paired per-round change of requests/s (recorded against the native run of its round).
    let mut paired = vec![vec![vec![]; tests.len()]; modes.len()];
    for r in 0..rounds {
        let mut native_rps = [0.0; 2];
        for (m, place) in modes.iter().enumerate() {
            let port = 17_000
                + u16::try_from(r * modes.len() + m).unwrap()
                + u16::try_from(pipeline).unwrap() * 100;
            let args = [
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--logfile",
                "/dev/null",
            ]
            .map(String::from);
            let j = dir.join(format!("j-redis-{pipeline}-{r}-{m}"));
            // The server on CPU 0, the load generator on CPU 1; the collector where `place` says.
            let child = if let Some(p) = place {
                Command::new("taskset")
                    .args(["-c", p.cpu()])
                    .arg(env!("CARGO_BIN_EXE_understudy"))
                    .arg("record")
                    .arg("--journal")
                    .arg(&j)
                    .args(["--", "taskset", "-c", "0", "redis-server"])
                    .args(&args)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            } else {
                Command::new("taskset")
                    .args(["-c", "0", "redis-server"])
                    .args(&args)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            };
            assert!(wait_port(port), "redis did not start");
            let rec = place.is_some();
            let rp = redis_pid(&child, rec);
            let (c0, k0) = (cpu_secs(rp), cpu_secs(child.id()));
            for (k, val) in redis_bench(port, n, pipeline) {
                if let Some(i) = tests.iter().position(|t| *t == k) {
                    s[m].rps[i].push(val);
                    if rec {
                        paired[m][i].push((val - native_rps[i]) / native_rps[i] * 100.0);
                    } else {
                        native_rps[i] = val;
                    }
                }
            }
            let per_req = 1e6 / f64::from(n * 2);
            s[m].cpu.push((cpu_secs(rp) - c0) * per_req);
            if rec {
                s[m].collector.push((cpu_secs(child.id()) - k0) * per_req);
            }
            stop_redis(port, child);
            let _ = std::fs::remove_dir_all(&j);
        }
    }
    println!(
        "\nredis-server 7.0 (CPU 0) under redis-benchmark -c 50 -P {pipeline} -n {n} (CPU 1) on loopback, \
         requests/s, median of {rounds} rounds (native and both placements in each round); \
         limit: recorded at most 10% lower than native (same pinning of server and load generator)"
    );
    println!("| test | variant | requests/s | change of medians | median of per-round changes | verdict |");
    println!("|---|---|---|---|---|---|");
    for (i, t) in tests.iter().enumerate() {
        let nat = median(&mut s[0].rps[i]);
        println!("| {t} | native | {nat:.0} | | | limit |");
        for (m, place) in modes.iter().enumerate().skip(1) {
            let p = place.expect("recorded mode");
            let rec = median(&mut s[m].rps[i]);
            let pc = median(&mut paired[m][i]);
            println!(
                "| {t} | {} | {rec:.0} | {:+.1}% | {pc:+.1}% | {} |",
                p.label(),
                (rec - nat) / nat * 100.0,
                if pc > -10.0 { "within" } else { "MISSED" }
            );
        }
    }
    let cn = median(&mut s[0].cpu);
    println!("\nCPU per request, µs, -P {pipeline} (server process utime+stime; collector = `understudy record` draining into the journal)");
    println!("| variant | server | added | collector |");
    println!("|---|---|---|---|");
    println!("| native | {cn:.2} | | |");
    for (m, place) in modes.iter().enumerate().skip(1) {
        let p = place.expect("recorded mode");
        let cr = median(&mut s[m].cpu);
        let cc = median(&mut s[m].collector);
        println!(
            "| {} | {cr:.2} | {:+.1}% | {cc:.2} |",
            p.label(),
            (cr - cn) / cn * 100.0
        );
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run only when benching.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "--release", "-p", "intercept-preload"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(st.success(), "building the interceptor failed");
    let dir = tempfile::tempdir().unwrap();
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // The server comparison swings more between rounds: at least 9 of them.
    let server_rounds: usize = std::env::var("BENCH_SERVER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(rounds.max(9));
    // BENCH_ONLY=calls or BENCH_ONLY=server runs one part.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only != "server" {
        calls(dir.path(), rounds);
    }
    if only != "calls" {
        server(dir.path(), server_rounds);
    }
}
