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
    println!("\nper-call CPU time, ns (median of {rounds} runs, each the median of 7 loops)");
    println!("| call | native | record | added | record, seccomp off | added |");
    println!("|---|---|---|---|---|---|");
    for (i, n) in names.iter().enumerate() {
        let nat = median(&mut v[0][i]);
        let rec = median(&mut v[1][i]);
        let ns = median(&mut v[2][i]);
        println!(
            "| {n} | {nat:.1} | {rec:.1} | {:.1} | {ns:.1} | {:.1} |",
            rec - nat,
            ns - nat
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

fn redis_bench(port: u16, n: u32) -> Vec<(String, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", "set,get", "-c", "50"])
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

fn server(dir: &Path, rounds: usize) {
    if !which("redis-server") || !which("redis-benchmark") {
        println!("\nskipped server benchmark: needs redis-server and redis-benchmark (scripts/setup.sh --bench)");
        return;
    }
    let n = 100_000;
    let tests = ["SET", "GET"];
    let mut v = vec![vec![vec![]; tests.len()]; 2];
    // CPU time per request (µs) of the server, native and recorded, and of the collector: on a
    // machine shared with other work this is steadier than requests per second.
    let mut cpu = vec![vec![]; 2];
    let mut collector = vec![];
    for r in 0..rounds {
        for (m, rec) in [false, true].into_iter().enumerate() {
            let port = 17_000 + u16::try_from(r * 2 + m).unwrap();
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
            let j = dir.join(format!("j-redis-{r}"));
            let child = if rec {
                record_cmd(&j)
                    .arg("redis-server")
                    .args(&args)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            } else {
                Command::new("redis-server")
                    .args(&args)
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            };
            assert!(wait_port(port), "redis did not start");
            let rp = redis_pid(&child, rec);
            let (c0, k0) = (cpu_secs(rp), cpu_secs(child.id()));
            for (k, val) in redis_bench(port, n) {
                if let Some(i) = tests.iter().position(|t| *t == k) {
                    v[m][i].push(val);
                }
            }
            let per_req = 1e6 / f64::from(n * 2);
            cpu[m].push((cpu_secs(rp) - c0) * per_req);
            if rec {
                collector.push((cpu_secs(child.id()) - k0) * per_req);
            }
            stop_redis(port, child);
            let _ = std::fs::remove_dir_all(&j);
        }
    }
    println!("\nredis-server 7.0 under redis-benchmark -c 50 -n {n} on loopback, requests/s (median of {rounds} rounds)");
    println!("| test | native | recorded | change |");
    println!("|---|---|---|---|");
    for (i, t) in tests.iter().enumerate() {
        let nat = median(&mut v[0][i]);
        let rec = median(&mut v[1][i]);
        println!(
            "| {t} | {nat:.0} | {rec:.0} | {:+.1}% |",
            (rec - nat) / nat * 100.0
        );
    }
    let cn = median(&mut cpu[0]);
    let cr = median(&mut cpu[1]);
    let cc = median(&mut collector);
    println!("\nCPU per request, µs (server process; collector = `understudy record` draining into the journal)");
    println!("| native server | recorded server | added | collector |");
    println!("|---|---|---|---|");
    println!(
        "| {cn:.2} | {cr:.2} | {:+.1}% | {cc:.2} |",
        (cr - cn) / cn * 100.0
    );
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
    calls(dir.path(), rounds);
    server(dir.path(), rounds);
}
