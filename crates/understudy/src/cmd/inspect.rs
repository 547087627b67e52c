//! `understudy inspect PATH [--json]`: what an image (or a journal) holds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use image::{FileKind, VmaKind};

use crate::Cli;

/// `println!`/`print!` that end the command quietly when stdout is closed early
/// (`understudy inspect DIR | head`) instead of panicking on EPIPE, and report other write errors.
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        crate::cmd::inspect::stdout_result(writeln!(std::io::stdout().lock(), $($t)*))?;
    }};
}
macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        crate::cmd::inspect::stdout_result(write!(std::io::stdout().lock(), $($t)*))?;
    }};
}

/// A closed stdout (the reader went away) ends the process with success; other errors are
/// returned, saying where.
pub(crate) fn stdout_result(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => other.context("writing to standard output"),
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// An image directory (holds tree.img) or a journal directory.
    pub path: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also read every pages file and check its CRC32C.
    #[arg(long)]
    pub verify: bool,
    /// A journal written by `understudy record`: also decode every interceptor message (each
    /// checked, time batches of every version entry by entry) and print their bytes by kind.
    #[arg(long)]
    pub messages: bool,
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    if args.path.join(image::TREE_FILE).exists() {
        return inspect_image(&args.path, args);
    }
    inspect_journal(&args.path, args)
}

/// A journal directory (it holds `*.seg` segment files): counts, sequence range, gaps, streams
/// and the digest that primary and backup compare. Read-only: nothing is repaired.
fn inspect_journal(path: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    if !journal::inspect::is_journal_dir(path) {
        anyhow::bail!(
            "{}: neither a checkpoint image (no {}) nor a journal (no segment files)",
            path.display(),
            image::TREE_FILE
        );
    }
    let s = journal::inspect::summarize(path)
        .with_context(|| format!("inspecting journal {}", path.display()))?;
    if args.json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        print!("{s}");
    }
    if args.messages {
        let rec = super::replay::load(path)?;
        super::replay::sizes(path, &rec, None)?;
    }
    // A torn tail is normal after a crash (open cuts it); damage elsewhere is not.
    Ok(if s.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

fn inspect_image(dir: &Path, args: &Args) -> anyhow::Result<ExitCode> {
    let tree = image::read_tree(dir).context("reading the image")?;
    if args.verify {
        for p in &tree.processes {
            image::read_pages(dir, &p.pages)?;
        }
    }
    // Incremental images: every link of the chain, newest first, checked.
    let chain = image::read_chain(dir).context("reading the chain of parent images")?;
    let links: Vec<serde_json::Value> = chain
        .iter()
        .map(|(d, t)| {
            let (stored, in_parent) = link_bytes(t);
            serde_json::json!({
                "dir": d.display().to_string(),
                "format_version": t.format_version,
                "parent": t.parent,
                "stored_bytes": stored,
                "in_parent_bytes": in_parent,
                "tracking_armed": t.processes.iter().any(|p| p.dirty.is_some()),
            })
        })
        .collect();
    if args.verify {
        for (d, t) in chain.iter().skip(1) {
            for p in &t.processes {
                image::read_pages(d, &p.pages)?;
            }
        }
    }
    if args.json {
        let mut v = serde_json::to_value(&tree)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("kind".into(), "image".into());
            o.insert("verified".into(), args.verify.into());
            o.insert("chain".into(), links.into());
        }
        println!("{}", serde_json::to_string(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "image {} (format {}, written by understudy {}), root pid {}{}",
        dir.display(),
        tree.format_version,
        tree.tool_version,
        tree.root_pid,
        if tree.pidns {
            " (own pid namespace)"
        } else {
            ""
        }
    );
    match sys::netlock::LockRecord::read(dir) {
        Ok(Some(l)) => println!(
            "network lock: nftables table {} (netns inode {}), {} connection(s), {} listener(s), held until restore",
            l.table, l.netns, l.connections, l.listeners
        ),
        Ok(None) => {}
        Err(e) => println!("network lock record: unreadable: {e}"),
    }
    if chain.len() > 1 || tree.processes.iter().any(|p| p.dirty.is_some()) {
        println!("chain of {} image(s), newest first:", chain.len());
        for (i, (d, t)) in chain.iter().enumerate() {
            let (stored, in_parent) = link_bytes(t);
            println!(
                "  [{i}] {} (format {}): {:.1} MiB stored, {:.1} MiB in parent{}{}",
                d.display(),
                t.format_version,
                mib(stored),
                mib(in_parent),
                t.parent
                    .as_ref()
                    .map_or_else(|| ", full image".to_string(), |p| format!(", parent {p}")),
                if t.processes.iter().any(|p| p.dirty.is_some()) {
                    ", dirty tracking armed"
                } else {
                    ""
                }
            );
        }
    }
    for z in &tree.zombies {
        let end = match z.end {
            image::ExitHow::Exited { code } => format!("exited with code {code}"),
            image::ExitHow::Killed {
                signal,
                core_dumped,
            } => format!(
                "killed by signal {signal}{}",
                if core_dumped { " (core dumped)" } else { "" }
            ),
        };
        println!(
            "zombie {} ({}) ppid {} pgid {} sid {} — {end}, not yet reaped",
            z.pid, z.comm, z.ppid, z.pgid, z.sid
        );
    }
    for p in &tree.processes {
        println!(
            "process {} ({}) ppid {} pgid {} sid {} exe {} cwd {} — {} thread(s), {:.1} MiB in {}",
            p.pid,
            p.comm,
            p.ppid,
            p.pgid,
            p.sid,
            p.exe,
            p.cwd,
            p.threads.len(),
            mib(p.pages.len),
            pages_files(&p.pages)
        );
        for t in &p.threads {
            println!(
                "  thread {} rip {:#x} rsp {:#x} sigmask {:#x}{}",
                t.tid,
                t.regs.rip,
                t.regs.rsp,
                t.sigmask,
                if t.pending.is_empty() {
                    String::new()
                } else {
                    format!(" pending {}", t.pending.len())
                }
            );
        }
        for t in &p.posix_timers {
            let notify = match t.notify {
                sys::timers::Notify::None => "no signal".to_string(),
                sys::timers::Notify::Signal => format!("signal {} to the process", t.signo),
                sys::timers::Notify::Thread { tid } => {
                    format!("signal {} to thread {tid}", t.signo)
                }
            };
            println!(
                "  posix timer {} clock {}: {}, every {} ns, {notify}, value {:#x}",
                t.id,
                t.clock,
                if t.value_ns == 0 {
                    "disarmed".to_string()
                } else {
                    format!("next in {} ns", t.value_ns)
                },
                t.interval_ns,
                t.value
            );
        }
        for v in &p.vmas {
            let prot = format!(
                "{}{}{}",
                if v.prot & 1 != 0 { 'r' } else { '-' },
                if v.prot & 2 != 0 { 'w' } else { '-' },
                if v.prot & 4 != 0 { 'x' } else { '-' }
            );
            let dumped: u64 = v
                .pages
                .iter()
                .filter(|r| !r.in_parent)
                .map(|r| r.npages * sys_page())
                .sum();
            let parent: u64 = v
                .pages
                .iter()
                .filter(|r| r.in_parent)
                .map(|r| r.npages * sys_page())
                .sum();
            let kind = match &v.kind {
                VmaKind::Anon { name } => format!("anon {name}"),
                VmaKind::Stack => "stack".into(),
                VmaKind::Vdso { name } => name.clone(),
                VmaKind::FilePrivate { path, offset } => format!("private {path} +{offset:#x}"),
                VmaKind::FileShared { path, offset } => format!("shared {path} +{offset:#x}"),
                VmaKind::Shmem { id, offset } => format!("shmem #{id} +{offset:#x}"),
            };
            println!(
                "  {:#014x}-{:#014x} {prot} {:>10} KiB, {:>10} KiB dumped{}  {kind}",
                v.start,
                v.end,
                (v.end - v.start) >> 10,
                dumped >> 10,
                if parent > 0 {
                    format!(", {:>10} KiB in parent", parent >> 10)
                } else {
                    String::new()
                }
            );
        }
        for f in &p.fds {
            let of = &tree.files[usize::try_from(f.file).unwrap_or(0)];
            let what = match &of.kind {
                FileKind::Path { path, pos, .. } => format!("{path} pos {pos}"),
                FileKind::Device { path, .. } => path.clone(),
                FileKind::Memfd { shmem, pos } => format!("memfd (shmem #{shmem}) pos {pos}"),
                FileKind::Pipe {
                    pipe, write_end, ..
                } => format!(
                    "pipe #{pipe} {}",
                    if *write_end { "write end" } else { "read end" }
                ),
                FileKind::EventFd { count, semaphore } => {
                    format!(
                        "eventfd count {count}{}",
                        if *semaphore { " (semaphore)" } else { "" }
                    )
                }
                FileKind::TimerFd {
                    clockid,
                    value_ns,
                    interval_ns,
                    ..
                } => format!("timerfd clock {clockid} in {value_ns} ns every {interval_ns} ns"),
                FileKind::SignalFd { sigmask } => format!("signalfd mask {sigmask:#x}"),
                FileKind::Epoll => {
                    let regs = p.epoll_regs.iter().filter(|r| r.epfd == f.fd);
                    let tfds: Vec<String> = regs
                        .map(|r| format!("{} ({:#x})", r.tfd, r.events))
                        .collect();
                    format!("epoll watching [{}]", tfds.join(", "))
                }
                FileKind::UnixPair {
                    pair,
                    end,
                    sock_type,
                    queue,
                } => format!(
                    "unix pair #{pair} end {end} type {sock_type}, {} queued message(s), {} bytes",
                    queue.len(),
                    queue.iter().map(|m| m.0.len()).sum::<usize>()
                ),
                FileKind::UnixListen {
                    sock_type,
                    name,
                    backlog,
                    ..
                } => format!("unix listener type {sock_type} on {name} backlog {backlog}"),
                FileKind::TcpListen { state } => {
                    format!("tcp listener on {} backlog {}", state.addr, state.backlog)
                }
                FileKind::TcpEstablished { state } => format!(
                    "tcp {} -> {}, {} bytes to send, {} received",
                    state.local,
                    state.peer,
                    state.send_queue.len(),
                    state.recv_queue.len()
                ),
                FileKind::Udp { state } => match &state.peer {
                    Some(p) => format!("udp {} connected to {p}", state.local),
                    None => format!("udp {}", state.local),
                },
            };
            println!(
                "  fd {:>3}{} flags {:#o} file #{}: {what}",
                f.fd,
                if f.cloexec { " (cloexec)" } else { "" },
                of.flags,
                of.id
            );
        }
    }
    for o in &tree.shmem {
        let dumped: u64 = o.pages.iter().map(|r| r.npages * sys_page()).sum();
        println!(
            "shmem #{} {}: {} KiB, {} KiB dumped in {}",
            o.id,
            o.name,
            o.size >> 10,
            dumped >> 10,
            o.data.file
        );
    }
    for d in &tree.pipes {
        println!(
            "pipe #{}: {} byte(s) queued, capacity {}",
            d.pipe,
            d.data.0.len(),
            d.capacity
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Bytes of page data stored in this image and left in its parent.
fn link_bytes(t: &image::Tree) -> (u64, u64) {
    let mut stored = 0;
    let mut parent = 0;
    for r in t
        .processes
        .iter()
        .flat_map(|p| p.vmas.iter())
        .flat_map(|v| v.pages.iter())
    {
        if r.in_parent {
            parent += r.npages * sys_page();
        } else {
            stored += r.npages * sys_page();
        }
    }
    (stored, parent)
}

fn sys_page() -> u64 {
    4096
}

/// The file(s) a process's pages are in: `pages-PID.img`, or with part files (image version
/// 5) `pages-PID.img + pages-PID.1.img (2 parts: 32.0 + 32.0 MiB)`.
fn pages_files(r: &image::PagesRef) -> String {
    if r.parts.is_empty() {
        return r.file.clone();
    }
    let names: Vec<&str> = r.parts.iter().map(|p| p.file.as_str()).collect();
    let sizes: Vec<String> = r
        .parts
        .iter()
        .map(|p| format!("{:.1}", mib(p.len)))
        .collect();
    format!(
        "{} ({} parts: {} MiB)",
        names.join(" + "),
        r.parts.len(),
        sizes.join(" + ")
    )
}
