//! The replication side of `understudy run --backup HOST:PORT...`: the primary agent.
//!
//! It creates the application's shared-memory ring (path in `UNDERSTUDY_RING`; with
//! `UNDERSTUDY_MODE=record`, `UNDERSTUDY_SYNC=0|1` and `LD_PRELOAD` as `understudy record` sets
//! them for the interceptor), launches PROGRAM through [`crate::launch`], drains
//! the ring into the local journal (`STATE_DIR/apps/NAME/journal`) and streams it to every
//! backup ([`agent::Primary`]). In sync mode it moves the ring's `ack_seq` only as far as at
//! least one backup has journaled; in async mode as far as the local journal holds.
//! When PROGRAM exits, the ring is drained, backups get up to `--drain-timeout` to catch up,
//! and `run` exits with PROGRAM's status.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::{JournalStore, Mode, Primary, PrimaryConfig};
use anyhow::Context;
use shmring::RingConsumer;

use super::agentopts::{self, JournalArgs, KeyArgs};
use crate::launch::{self, LaunchSpec};
use crate::Cli;

/// Ring data area: 16 MiB.
const RING_CAPACITY: usize = 16 << 20;

#[derive(Debug, Clone, clap::Args)]
pub struct ReplicationArgs {
    /// Stream the application's replication messages to this backup agent (repeatable).
    #[arg(long = "backup", value_name = "HOST:PORT")]
    pub backups: Vec<String>,
    /// `async`: outputs leave at once, backups may lag; `sync`: an output leaves only once a
    /// backup has journaled every message before it.
    #[arg(long, default_value = "async")]
    pub mode: Mode,
    /// After PROGRAM exits, wait this many seconds for backups to catch up.
    #[arg(long, default_value_t = 10)]
    pub drain_timeout: u64,
    /// Do not preload the interceptor (PROGRAM writes replication records to the ring itself,
    /// like the `understudy-loadgen` test workload).
    #[arg(long)]
    pub no_intercept: bool,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
}

/// `understudy run` with backups: supervise PROGRAM and replicate its messages.
pub fn run(
    cli: &Cli,
    rep: &ReplicationArgs,
    name: &str,
    program: &OsString,
    args: &[OsString],
) -> anyhow::Result<ExitCode> {
    let key = rep.key.load()?;
    agentopts::prepare_state_dir(&cli.state_dir)?;
    let ring_path = PathBuf::from(format!(
        "/dev/shm/understudy-{name}-{}.ring",
        std::process::id()
    ));
    let ring = RingConsumer::create(&ring_path, RING_CAPACITY)
        .with_context(|| format!("cannot create the ring {}", ring_path.display()))?;
    // The interceptor's environment (as `understudy record` sets it): preloaded when the
    // library is found, otherwise PROGRAM runs without it (only messages written to the ring by
    // the program itself are replicated, e.g. the test workload).
    let procs_path = PathBuf::from(format!(
        "/dev/shm/understudy-{name}-{}.procs",
        std::process::id()
    ));
    let mut env: Vec<(OsString, OsString)> = vec![
        ("UNDERSTUDY_RING".into(), ring_path.clone().into_os_string()),
        (
            "UNDERSTUDY_PROCS".into(),
            procs_path.clone().into_os_string(),
        ),
        ("UNDERSTUDY_MODE".into(), "record".into()),
        (
            "UNDERSTUDY_SYNC".into(),
            if rep.mode == Mode::Sync { "1" } else { "0" }.into(),
        ),
    ];
    if !rep.no_intercept {
        match super::recording::find_lib() {
            Ok(lib) => env.push(("LD_PRELOAD".into(), super::recording::preload_value(&lib))),
            Err(e) => eprintln!("understudy: {name}: running without the interceptor: {e:#}"),
        }
    }
    let spec = LaunchSpec {
        name: name.to_owned(),
        state_dir: cli.state_dir.clone(),
        program: program.clone(),
        args: args.to_vec(),
        detach: false,
        env,
    };
    // `launch::spawn` unshares a PID namespace for its children, after which this thread can
    // no longer create threads: start the runtime and the collector first. Block the signals
    // the supervisor waits for before any thread exists, so that every thread inherits the
    // mask and they reach the supervisor's `sigwait` (std resets the mask in the child).
    supervised_signals()
        .thread_block()
        .context("cannot block the supervised signals")?;
    let rt = agentopts::runtime()?;
    let mut cfg = PrimaryConfig::new(
        name,
        rep.backups.clone(),
        key,
        cli.state_dir.clone(),
        JournalStore::factory(rep.journal.journal_options()),
    );
    cfg.mode = rep.mode;
    cfg.control_socket = true;
    cfg.metrics = rep.journal.metrics.clone();
    let primary = match rt.block_on(Primary::start(cfg)) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            let _ = std::fs::remove_file(&ring_path);
            return Err(e).context("cannot start the primary agent");
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (ring_tx, ring_rx) = std::sync::mpsc::channel::<RingConsumer>();
    let collector = {
        let (p, stop) = (primary.clone(), stop.clone());
        let sync = rep.mode == Mode::Sync;
        std::thread::Builder::new()
            .name("understudy-collect".into())
            .spawn(move || {
                let ring = ring_rx.recv().map_err(|_| anyhow::anyhow!("no ring"))?;
                agent::collector::collect(&ring, &p, &stop, sync).map_err(anyhow::Error::from)
            })
            .context("cannot start the collector thread")?
    };
    let _ = ring_tx.send(ring);
    let launched = match launch::spawn(&spec) {
        Ok(l) => l,
        Err(e) => {
            stop.store(true, Ordering::SeqCst);
            let _ = collector.join();
            let _ = std::fs::remove_file(&ring_path);
            return Err(e).with_context(|| format!("cannot launch application {name}"));
        }
    };
    let code = launched
        .wait()
        .with_context(|| format!("supervising {name}"));
    stop.store(true, Ordering::SeqCst);
    let collected = collector
        .join()
        .map_err(|_| anyhow::anyhow!("collector thread panicked"))?;
    let _ = std::fs::remove_file(&ring_path);
    let _ = std::fs::remove_file(&procs_path);
    let drained = rt.block_on(primary.wait_all_acked(Duration::from_secs(rep.drain_timeout)));
    if let Err(e) = &drained {
        eprintln!("understudy: {name}: not every backup caught up: {e}");
    }
    let primary = Arc::try_unwrap(primary).map_err(|_| anyhow::anyhow!("primary still shared"))?;
    rt.block_on(primary.stop());
    collected.context("collecting the application's messages")?;
    let code = code?;
    Ok(ExitCode::from(
        u8::try_from(code.clamp(0, 255)).unwrap_or(1),
    ))
}

/// The signals `launch::Launched::wait` handles (kept in step with `launch`).
fn supervised_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
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
