//! `understudy demo`: runs a real multi-process workload through understudy's mechanisms and
//! prints what it measured.
//!
//! The workload (`demo/counter.c`, compiled with `cc` at run time) is a parent and three workers
//! that count in shared memory and stream every count to the parent through pipes; the parent
//! checks each stream arrives gapless and publishes its totals. The demo is a list of [`Step`]s
//! run in order over one [`Stage`]; later issues append steps (migration to another simulated
//! host, failover) without changing the earlier ones.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::launch;
use crate::Cli;

/// The demo application's name under `understudy run`.
const APP: &str = "demo-counter";

const COUNTER_C: &str = include_str!("../../demo/counter.c");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long to let the workload run between steps, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    pub settle_ms: u64,
    /// Keep the work directory (workload, images) instead of removing it.
    #[arg(long)]
    pub keep: bool,
    /// Let each worker count in its own memory instead of in one page of MAP_SHARED memory
    /// shared by the four processes.
    #[arg(long)]
    pub private_memory: bool,
    /// Start the workload as a plain process tree instead of with `understudy run` (its own PID
    /// namespace, checkpointed as an application).
    #[arg(long)]
    pub plain: bool,
}

/// What the workload publishes in its `progress` file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Progress {
    pids: Vec<i32>,
    total: u64,
    workers: Vec<u64>,
    anomalies: u64,
}

impl Progress {
    fn read(dir: &Path) -> anyhow::Result<Progress> {
        let text = fs::read_to_string(dir.join("progress")).context("workload progress")?;
        let mut p = Progress {
            pids: vec![],
            total: 0,
            workers: vec![],
            anomalies: 0,
        };
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let key = it.next().unwrap_or("");
            let nums: Vec<&str> = it.collect();
            match key {
                "pids" => p.pids = nums.iter().filter_map(|s| s.parse().ok()).collect(),
                "total" => p.total = nums.first().and_then(|s| s.parse().ok()).unwrap_or(0),
                "workers" => p.workers = nums.iter().filter_map(|s| s.parse().ok()).collect(),
                "anomalies" => p.anomalies = nums.first().and_then(|s| s.parse().ok()).unwrap_or(0),
                _ => {}
            }
        }
        ensure!(
            p.pids.len() == 4 && p.workers.len() == 3,
            "malformed progress file: {text}"
        );
        Ok(p)
    }

    fn show(&self) -> String {
        format!(
            "pids {:?} (as the workload sees them), total {} (workers {:?}), lost or repeated messages: {}",
            self.pids, self.total, self.workers, self.anomalies
        )
    }
}

/// Everything the steps share.
struct Stage {
    dir: PathBuf,
    shared_memory: bool,
    /// The workload runs under `understudy run` in its own PID namespace; `root` is its init.
    pidns: bool,
    /// Pids (in our namespace) of the tree's processes at the last checkpoint.
    host_pids: Vec<i32>,
    settle: Duration,
    root: i32,
    last: Option<Progress>,
    image_seq: u32,
    /// (what, value) pairs for the closing summary.
    measured: Vec<(String, String)>,
}

impl Stage {
    fn wait_progress(&mut self, newer_than: u64) -> anyhow::Result<Progress> {
        let start = Instant::now();
        loop {
            if let Ok(p) = Progress::read(&self.dir) {
                if p.total > newer_than {
                    return Ok(p);
                }
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("the workload made no progress for 20 s");
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Waits (20 s at most) until every worker counted past `last`, and returns the progress
    /// then, or the newest seen at the deadline (the caller's checks say what did not move):
    /// the total moving says only that one worker did, and a loaded machine may schedule the
    /// others later.
    fn wait_every_worker(&mut self, last: &Progress) -> anyhow::Result<Progress> {
        let start = Instant::now();
        let mut newest = None;
        loop {
            if let Ok(p) = Progress::read(&self.dir) {
                let all = p.total > last.total
                    && p.workers.len() == last.workers.len()
                    && p.workers.iter().zip(&last.workers).all(|(b, a)| b > a);
                if all {
                    return Ok(p);
                }
                newest = Some(p);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return newest.context("the workload's progress file was unreadable for 20 s");
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn next_image(&mut self) -> PathBuf {
        self.image_seq += 1;
        self.dir.join(format!("image-{}", self.image_seq))
    }

    fn note(&mut self, line: String) {
        println!("    {line}");
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // Killing a namespace's init kills the namespace; a plain tree is found by its argv.
        if self.root > 0 {
            let _ = kill(Pid::from_raw(self.root), Signal::SIGKILL);
        }
        for pid in tree_host_pids(&self.dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Live processes whose argv names the demo's work directory (the workload and its init), by
/// their pids in our namespace.
fn tree_host_pids(dir: &Path) -> Vec<i32> {
    let marker = dir.to_string_lossy().into_owned();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&marker))
        })
        .collect()
}

/// One step of the demo.
struct Step {
    title: &'static str,
    run: fn(&mut Stage) -> anyhow::Result<()>,
}

fn steps() -> Vec<Step> {
    vec![
        Step {
            title: "start a workload: a parent and 3 workers counting in shared memory, streaming every count through pipes",
            run: start,
        },
        Step { title: "checkpoint it (the tree is dumped, then killed)", run: checkpoint_kill },
        Step { title: "restore it from the image", run: restore_it },
        Step { title: "check it continued where it was", run: check_continued },
        Step { title: "checkpoint the restored tree again", run: checkpoint_kill },
        Step { title: "restore it again", run: restore_it },
        Step { title: "check it continued again", run: check_continued },
        Step { title: "migrate between simulated hosts (network namespaces us-demo-a -> us-demo-b)", run: migrate },
    ]
}

fn du(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        du(&p)
                    } else {
                        p.metadata().map(|m| m.len()).unwrap_or(0)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[allow(clippy::cast_precision_loss)] // sizes far below 2^52
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn start(st: &mut Stage) -> anyhow::Result<()> {
    let src = st.dir.join("counter.c");
    let bin = st.dir.join("counter");
    fs::write(&src, COUNTER_C).context("write the workload source")?;
    let cc = Command::new("cc")
        .args(["-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .context("run cc (the demo compiles its workload; scripts/setup.sh installs gcc)")?;
    ensure!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let mut workload = vec![bin.into_os_string(), st.dir.clone().into_os_string()];
    if st.shared_memory {
        workload.push("--shared".into());
    }
    if st.pidns {
        // Exactly what a user would type: `understudy run --detach --name demo-counter -- ...`.
        workload.push("--foreground".into());
        let state = st.dir.join("state");
        let exe = std::env::current_exe().context("locate understudy itself")?;
        let out = Command::new(exe)
            .arg("--state-dir")
            .arg(&state)
            .args(["run", "--detach", "--name", APP, "--"])
            .args(&workload)
            .output()
            .context("understudy run")?;
        ensure!(out.status.success(), "understudy run failed: {out:?}");
        let app = launch::AppRecord::load(&state, APP)?;
        st.root = app.root_pid;
        st.note(format!(
            "`understudy run --detach --name {APP}`: init pid {} (pid 1 of the application's own PID namespace), app.json in {}",
            app.root_pid,
            launch::app_dir(&state, APP).display()
        ));
    } else {
        let out = Command::new(&workload[0])
            .args(&workload[1..])
            .output()
            .context("start the workload")?;
        ensure!(out.status.success(), "the workload did not start: {out:?}");
        st.root = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("workload pid")?;
    }
    sleep(st.settle);
    let p = st.wait_progress(0)?;
    st.note(format!("running: {}", p.show()));
    st.last = Some(p);
    Ok(())
}

fn checkpoint_kill(st: &mut Stage) -> anyhow::Result<()> {
    let image = st.next_image();
    st.wait_progress(0)?;
    let mut host_pids = tree_host_pids(&st.dir);
    host_pids.sort_unstable();
    let t0 = Instant::now();
    let rep = checkpoint::dump(&checkpoint::DumpOptions {
        root_pid: st.root,
        image_dir: image.clone(),
        leave_running: false,
        pidns: st.pidns,
        ..Default::default()
    })
    .with_context(|| format!("checkpoint of pid {}", st.root))?;
    let wall = t0.elapsed();
    // In its own PID namespace only the pids inside must be free for a restore, and they are
    // (a new namespace); the outer ones may wait for their reaper. A plain tree needs its pids.
    let taken: Vec<i32> = if st.pidns {
        tree_host_pids(&st.dir)
    } else {
        host_pids
            .iter()
            .copied()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect()
    };
    ensure!(
        taken.is_empty(),
        "pids {taken:?} still taken (or running) after the checkpoint"
    );
    let waited = if st.pidns {
        "collecting the killed tree (its outer pids are not waited for)"
    } else {
        "waiting for the killed pids to be reaped"
    };
    st.note(format!(
        "{} processes, {} threads; frozen {:.1} ms (memory copy {:.1} ms, {:.1} MiB of pages); \
         dump {:.1} ms + {:.1} ms {waited}",
        rep.processes,
        rep.threads,
        ms(rep.frozen),
        ms(rep.memory_copy),
        mib(rep.pages_bytes),
        ms(wall.saturating_sub(rep.reap_wait)),
        ms(rep.reap_wait)
    ));
    let image_mib = mib(du(&image));
    let free = if st.pidns {
        "every process of the tree is gone"
    } else {
        "they are free again"
    };
    st.note(format!(
        "image {}: {image_mib:.1} MiB; pids {host_pids:?}: {free}",
        image.display()
    ));
    let round = st.image_seq;
    st.measured.push((
        format!("#{round} freeze (tree stopped)"),
        format!("{:.1} ms", ms(rep.frozen)),
    ));
    st.measured.push((
        format!("#{round} dump"),
        format!(
            "{:.1} ms (+ {:.0} ms {})",
            ms(wall.saturating_sub(rep.reap_wait)),
            ms(rep.reap_wait),
            if st.pidns {
                "killing the tree"
            } else {
                "until the killed pids were reaped"
            }
        ),
    ));
    st.measured.push((
        format!("#{round} image size"),
        format!("{image_mib:.2} MiB"),
    ));
    st.last = Some(Progress::read(&st.dir)?);
    st.host_pids = host_pids;
    Ok(())
}

fn restore_it(st: &mut Stage) -> anyhow::Result<()> {
    let image = st.dir.join(format!("image-{}", st.image_seq));
    let t0 = Instant::now();
    let rep = restore::restore(&restore::RestoreOptions {
        image_dir: image,
        ..Default::default()
    })
    .context("restore")?;
    let wall = t0.elapsed();
    if st.pidns {
        // Its own PID namespace: the pids inside are kept (checked by `check_continued`, the
        // workload reports them), the init's outer pid is new.
        st.root = rep.root_pid;
    } else {
        ensure!(
            rep.root_pid == st.root,
            "restored root pid {} is not {}",
            rep.root_pid,
            st.root
        );
    }
    st.measured.push((
        format!("#{} restore (until the tree runs)", st.image_seq),
        format!("{:.1} ms", ms(wall)),
    ));
    let mut now = tree_host_pids(&st.dir);
    now.sort_unstable();
    let same = if st.pidns {
        ensure!(
            now.len() == st.host_pids.len(),
            "restored {} processes, dumped {}",
            now.len(),
            st.host_pids.len()
        );
        format!("outer pids {now:?} (the pids inside the namespace are the same)")
    } else {
        ensure!(
            now == st.host_pids,
            "restored pids {now:?}, dumped {:?}",
            st.host_pids
        );
        format!("same pids {now:?}")
    };
    st.note(format!(
        "restored root pid {} ({} processes, {} threads) in {:.1} ms (image verified in {:.1} ms): {same}",
        rep.root_pid,
        rep.processes,
        rep.threads,
        ms(wall),
        ms(rep.verify)
    ));
    Ok(())
}

fn check_continued(st: &mut Stage) -> anyhow::Result<()> {
    let last = st
        .last
        .clone()
        .context("no progress recorded before the checkpoint")?;
    sleep(st.settle);
    let now = st.wait_every_worker(&last)?;
    st.note(format!("now: {}", now.show()));
    ensure!(
        now.pids == last.pids,
        "pids changed: {:?} -> {:?}",
        last.pids,
        now.pids
    );
    ensure!(
        now.anomalies == 0,
        "{} messages were lost or repeated",
        now.anomalies
    );
    for (i, (a, b)) in last.workers.iter().zip(&now.workers).enumerate() {
        ensure!(b > a, "worker {i} did not continue: {a} -> {b}");
    }
    st.note(format!(
        "same pids, counters continued from {} to {} with no message lost or repeated",
        last.total, now.total
    ));
    st.last = Some(now);
    Ok(())
}

/// The two simulated hosts: network namespaces joined by a veth pair whose addresses exist only
/// inside them.
const HOSTS: [(&str, &str, &str); 2] = [
    ("us-demo-a", "us-demo-va", "10.233.0.1/24"),
    ("us-demo-b", "us-demo-vb", "10.233.0.2/24"),
];

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run `ip {}`", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The simulated hosts; dropping it removes them (the veth pair goes with its namespaces).
struct Hosts;

impl Hosts {
    /// Removes what an earlier, crashed run left behind.
    fn remove_stale() {
        for (ns, veth, _) in HOSTS {
            let _ = ip(&["netns", "del", ns]);
            let _ = ip(&["link", "del", veth]);
        }
    }

    /// `Err` with the reason when network namespaces cannot be created here at all.
    fn create() -> Result<Hosts, String> {
        Self::remove_stale();
        for (ns, _, _) in HOSTS {
            ip(&["netns", "add", ns]).map_err(|e| format!("{e:#}"))?;
        }
        Ok(Hosts)
    }

    fn connect(&self) -> anyhow::Result<()> {
        let [(ns_a, veth_a, _), (ns_b, veth_b, _)] = HOSTS;
        ip(&[
            "link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b, "netns",
            ns_b,
        ])?;
        for (ns, veth, addr) in HOSTS {
            ip(&["-n", ns, "addr", "add", addr, "dev", veth])?;
            ip(&["-n", ns, "link", "set", veth, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        Self::remove_stale();
    }
}

/// (device, inode) of a network namespace file (`/proc/PID/ns/net`, `/run/netns/NAME`).
fn netns_id(path: &str) -> anyhow::Result<(u64, u64)> {
    let m = fs::metadata(path).with_context(|| format!("stat {path}"))?;
    Ok((m.dev(), m.ino()))
}

fn netns_exec(ns: &str, exe: &Path, state: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(exe)
        .arg("--state-dir")
        .arg(state);
    c
}

fn migrate(st: &mut Stage) -> anyhow::Result<()> {
    let hosts = match Hosts::create() {
        Ok(h) => h,
        Err(why) => {
            st.note(format!("skipped: cannot create network namespaces: {why}"));
            return Ok(());
        }
    };
    hosts.connect()?;
    let [(ns_a, _, addr_a), (ns_b, _, addr_b)] = HOSTS;
    st.note(format!(
        "hosts: netns {ns_a} ({addr_a}) and {ns_b} ({addr_b}), joined by a veth pair"
    ));
    // The earlier workload is done; a fresh one starts on host A.
    if st.root > 0 {
        let _ = kill(Pid::from_raw(st.root), Signal::SIGKILL);
    }
    // Declared after `hosts`, so dropped first: kills the migrated workload before its host goes.
    let mut m = Stage {
        dir: st.dir.join("migration"),
        shared_memory: st.shared_memory,
        pidns: true,
        host_pids: Vec::new(),
        settle: st.settle,
        root: 0,
        last: None,
        image_seq: 0,
        measured: Vec::new(),
    };
    let state_a = m.dir.join("host-a");
    let state_b = m.dir.join("host-b");
    fs::create_dir_all(&m.dir).with_context(|| format!("create {}", m.dir.display()))?;
    let exe = std::env::current_exe().context("locate understudy itself")?;
    let mut run = netns_exec(ns_a, &exe, &state_a);
    run.args(["run", "--detach", "--name", APP, "--"])
        .arg(st.dir.join("counter"))
        .arg(&m.dir);
    if m.shared_memory {
        run.arg("--shared");
    }
    let out = run.arg("--foreground").output().context("understudy run")?;
    ensure!(
        out.status.success(),
        "understudy run on {ns_a} failed: {out:?}"
    );
    m.root = launch::AppRecord::load(&state_a, APP)?.root_pid;
    let net_a = netns_id(&format!("/run/netns/{ns_a}"))?;
    let net_b = netns_id(&format!("/run/netns/{ns_b}"))?;
    ensure!(
        netns_id(&format!("/proc/{}/ns/net", m.root))? == net_a,
        "the workload does not run in {ns_a}'s network namespace"
    );
    sleep(m.settle);
    let p = m.wait_progress(0)?;
    st.note(format!(
        "on {ns_a}: `ip netns exec {ns_a} understudy --state-dir {} run --detach --name {APP}`: init pid {}; {}",
        state_a.display(),
        m.root,
        p.show()
    ));

    let mut host_pids = tree_host_pids(&m.dir);
    host_pids.sort_unstable();
    let image_a = launch::app_dir(&state_a, APP).join("images/migrate");
    let image_b = launch::app_dir(&state_b, APP).join("images/migrate");
    let t0 = Instant::now();
    let rep = checkpoint::dump(&checkpoint::DumpOptions {
        root_pid: m.root,
        image_dir: image_a.clone(),
        leave_running: false,
        pidns: true,
        ..Default::default()
    })
    .with_context(|| format!("checkpoint of pid {} on {ns_a}", m.root))?;
    let dumped = t0.elapsed();
    // The freeze began `frozen` before the dump ended, and the dump ended before the reap wait.
    let freeze_start = dumped.saturating_sub(rep.reap_wait + rep.frozen);
    m.last = Some(Progress::read(&m.dir)?);
    fs::create_dir_all(launch::app_dir(&state_b, APP).join("images"))
        .context("create host B's image directory")?;
    fs::rename(&image_a, &image_b).context("move the image to host B's state dir")?;
    let moved = t0.elapsed();
    let size = du(&image_b);
    let out = netns_exec(ns_b, &exe, &state_b)
        .arg("restore")
        .arg("--image")
        .arg(&image_b)
        .output()
        .context("understudy restore")?;
    let running = t0.elapsed();
    ensure!(
        out.status.success(),
        "understudy restore on {ns_b} failed: {out:?}"
    );
    let root: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("restored root pid")?;
    // Own PID namespace: the pids inside are kept (the workload's own report, checked by
    // `check_continued`), the init's outer pid is whatever host B gave.
    m.root = root;
    let downtime = running.saturating_sub(freeze_start);
    st.note(format!(
        "checkpointed on {ns_a} ({} processes, frozen {:.1} ms, + {:.0} ms killing the tree), image moved to {} ({:.2} MiB), restored on {ns_b} by `ip netns exec {ns_b} understudy restore` in {:.1} ms",
        rep.processes,
        ms(rep.frozen),
        ms(rep.reap_wait),
        image_b.display(),
        mib(size),
        ms(running.saturating_sub(moved))
    ));
    let mut now = tree_host_pids(&m.dir);
    now.sort_unstable();
    ensure!(
        now.len() == host_pids.len(),
        "restored {} processes ({now:?}), dumped {} ({host_pids:?})",
        now.len(),
        host_pids.len()
    );
    for pid in &now {
        ensure!(
            netns_id(&format!("/proc/{pid}/ns/net"))? == net_b,
            "restored pid {pid} is not in {ns_b}'s network namespace"
        );
    }
    st.note(format!(
        "outer pids {now:?} on host B (the pids inside the namespace are the same); every process now lives in {ns_b}'s network namespace"
    ));
    st.note(format!(
        "downtime: {:.0} ms (freeze start to restored tree running; includes {:.0} ms killing the tree on host A)",
        ms(downtime),
        ms(rep.reap_wait),
    ));
    st.note(format!("image size: {:.2} MiB", mib(size)));
    check_continued(&mut m)?;
    st.measured.push((
        "migration downtime".to_owned(),
        format!(
            "{:.0} ms (of which {:.0} ms killing the tree on host A)",
            ms(downtime),
            ms(rep.reap_wait),
        ),
    ));
    st.measured.push((
        "migration image size".to_owned(),
        format!("{:.2} MiB", mib(size)),
    ));
    drop(m);
    drop(hosts);
    Ok(())
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo needs root (it checkpoints with ptrace and restores pids)");
    }
    let dir = std::env::temp_dir().join(format!("understudy-demo-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut st = Stage {
        dir: dir.clone(),
        shared_memory: !args.private_memory,
        pidns: !args.plain,
        host_pids: Vec::new(),
        settle: Duration::from_millis(args.settle_ms),
        root: 0,
        last: None,
        image_seq: 0,
        measured: Vec::new(),
    };
    let steps = steps();
    let mut result = Ok(());
    for (i, step) in steps.iter().enumerate() {
        println!("[{}/{}] {}", i + 1, steps.len(), step.title);
        if let Err(e) = (step.run)(&mut st) {
            result = Err(e.context(format!("step {}: {}", i + 1, step.title)));
            break;
        }
    }
    let measured = std::mem::take(&mut st.measured);
    // Kills the workload (whatever step it reached) before its directory goes.
    drop(st);
    if args.keep {
        println!("work directory kept: {}", dir.display());
    } else {
        let _ = fs::remove_dir_all(&dir);
    }
    result?;
    println!();
    println!("what was measured:");
    for (what, value) in measured {
        println!("  {what:<33} {value}");
    }
    Ok(ExitCode::SUCCESS)
}
