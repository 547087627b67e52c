//! `understudy record --journal DIR -- PROGRAM ARGS...`: run PROGRAM to completion with the
//! interceptor preloaded in record mode, drain the shared-memory ring into a journal, and exit
//! with PROGRAM's status.

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use journal::{FsyncPolicy, Journal, JournalOptions};
use shmring::RingConsumer;

use super::recording::{self, EndMeta, StartMeta, FORMAT, STREAM_META, STREAM_MSG};
use crate::Cli;

/// Ring data area (16 MiB, small enough to stay in cache; the largest message is 4 MiB).
const RING_CAPACITY: usize = 16 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Journal directory to create (must not hold a journal already).
    #[arg(long)]
    pub journal: PathBuf,
    /// Sync mode: every output to the outside waits until the journal holds (fsynced) every
    /// message before it — the output commit rule.
    #[arg(long)]
    pub sync: bool,
    /// Append the journal through the page cache instead of with O_DIRECT (the default where
    /// the file system accepts it).
    #[arg(long)]
    pub buffered: bool,
    /// The program and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let (prog, rest) = args.command.split_first().context("no PROGRAM given")?;
    let path = recording::resolve_program(prog)?;
    recording::check_dynamic(&path)?;
    let lib = recording::find_lib()?;
    if args.journal.exists()
        && std::fs::read_dir(&args.journal)
            .with_context(|| format!("reading {}", args.journal.display()))?
            .next()
            .is_some()
    {
        bail!(
            "journal directory {} is not empty; record into a new directory",
            args.journal.display()
        );
    }
    let opts = JournalOptions {
        fsync: if args.sync {
            FsyncPolicy::Always
        } else {
            FsyncPolicy::Interval(Duration::from_millis(200))
        },
        // O_DIRECT appends: about half the collector's CPU per journal byte (no page-cache
        // copy, delayed allocation or writeback on the recorded program's CPU); records reach
        // the file in whole blocks and at each fsync (docs/journal-format.md).
        direct_io: !args.buffered,
        ..JournalOptions::default()
    };
    let (mut j, _) = Journal::open(&args.journal, opts)
        .with_context(|| format!("creating journal {}", args.journal.display()))?;
    if let Some(why) = j.direct_io_refused() {
        tracing::info!("{why}");
    }
    let (exe_len, exe_digest) = recording::exe_identity(&path)?;
    let start = StartMeta {
        format: FORMAT.into(),
        version: recording::RECORDING_VERSION,
        msg_version: intercept::msg::VERSION,
        program: prog.clone(),
        program_path: path.clone(),
        args: rest.to_vec(),
        exe_len,
        exe_digest,
    };
    j.append_next(STREAM_META, &serde_json::to_vec(&start)?)?;

    let ring_path = recording::shm_path("ring");
    let procs_path = recording::shm_path("procs");
    let ring = RingConsumer::create(&ring_path, RING_CAPACITY)?;
    let _cleanup = Cleanup(vec![ring_path.clone(), procs_path.clone()]);
    let mut child = Command::new(prog)
        .args(rest)
        .envs(intercept::launch::record_env(
            &lib,
            &ring_path,
            &procs_path,
            args.sync,
        ))
        .spawn()
        .with_context(|| format!("starting {prog}"))?;

    let mut col = agent::collector::JournalCollector::new();
    // Drain until the ring holds less than one full run (sleeping after every run of
    // DRAIN_MAX would cap the collector at DRAIN_MAX records per poll interval, and producers
    // would wait on a full ring), then one group commit for all of it, which acknowledges
    // what is durable.
    let mut drain = |ring: &RingConsumer, j: &mut Journal| -> anyhow::Result<usize> {
        let mut got = 0;
        loop {
            let n = col.drain(ring, j, STREAM_MSG, DRAIN_MAX)?;
            got += n;
            if n < DRAIN_MAX {
                break;
            }
        }
        col.commit(ring, j)?;
        Ok(got)
    };
    // While messages flow, poll without announcing sleep, so producers never pay for a futex
    // wake; after 20 ms of silence, sleep on the ring's futex. In sync mode every poll interval
    // adds to an output's wait, so poll every 200 µs; otherwise every RECORD_POLL.
    let interval = if args.sync {
        Duration::from_micros(200)
    } else {
        RECORD_POLL
    };
    let mut last_data = Instant::now();
    // While messages flow the program is alive: look for its exit (a `wait4`) at most every
    // 20 ms then, instead of at every wake-up (1.6% of the collector's CPU under redis).
    let mut last_wait = Instant::now();
    let status = loop {
        if last_data.elapsed() < Duration::from_millis(20) {
            std::thread::sleep(interval);
        } else {
            ring.wait(Duration::from_millis(20));
        }
        let now = Instant::now();
        let got = drain(&ring, &mut j)?;
        if got > 0 {
            last_data = now;
        }
        if got == 0 || now.duration_since(last_wait) >= Duration::from_millis(20) {
            last_wait = now;
            if let Some(st) = child.try_wait()? {
                break st;
            }
        }
    };
    // Descendants may still be finishing: drain until the ring stays quiet.
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_millis(100) {
        if ring.wait(Duration::from_millis(20)) && drain(&ring, &mut j)? > 0 {
            quiet = Instant::now();
        }
    }
    let (exit_code, signal, code) = recording::exit_status(status);
    let end = EndMeta {
        format: FORMAT.into(),
        exit_code,
        signal,
        messages: col.messages,
    };
    j.append_next(STREAM_META, &serde_json::to_vec(&end)?)?;
    j.sync()?;
    Ok(ExitCode::from(code))
}

/// Most records the collector drains from the ring into one journal append.
const DRAIN_MAX: usize = 4096;

/// How often `record` polls the ring while messages flow, without `--sync`. Since the journal
/// is appended with `O_DIRECT` (a wake-up writes nothing until 1 MiB is buffered), 5 ms cost
/// the collector ≈ 9% less CPU per redis request than 2 ms with no rise of the server's own
/// CPU (two A/B runs; 10 ms gave mixed results, and with page-cache appends it raised the
/// server's CPU: docs/PERFORMANCE.md, sessions 4 `collect5` and 5 `collect6`). The agent's
/// collector keeps [`agent::collector::ASYNC_POLL`].
const RECORD_POLL: Duration = Duration::from_millis(5);

/// Removes the run's shared-memory files.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}
