//! `understudy`: the one binary users run. Each subcommand lives in its own module under `cmd/`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod cmd;
mod launch;

/// Live migration and hot-standby replication for unmodified Linux applications.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about, long_about = None)]
pub struct Cli {
    /// Where agents keep their control socket and each application's files
    /// (`apps/NAME/journal`, `apps/NAME/images`).
    #[arg(
        long,
        global = true,
        env = "UNDERSTUDY_STATE_DIR",
        default_value = "/var/lib/understudy"
    )]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run PROGRAM under understudy's supervision (own PID namespace, interceptors, replication).
    Run(cmd::run::Args),
    /// Run a backup agent that journals replication streams from primaries.
    Backup(cmd::backup::Args),
    /// Dump a running process tree to an image directory.
    Checkpoint(cmd::checkpoint::Args),
    /// Restore a process tree from an image directory and leave it running.
    Restore(cmd::restore::Args),
    /// Run PROGRAM to completion, recording everything the outside world gives it.
    Record(cmd::record::Args),
    /// Run PROGRAM again, feeding it what was recorded; report any divergence.
    Replay(cmd::replay::Args),
    /// Move a running application to another host.
    Migrate(cmd::migrate::Args),
    /// Show the state of the applications an agent knows.
    Status(cmd::status::Args),
    /// Show an application's output log.
    Logs(cmd::logs::Args),
    /// Print what an image or a journal holds.
    Inspect(cmd::inspect::Args),
    /// Create the cluster key that agents authenticate each other with.
    Keygen(cmd::keygen::Args),
    /// Add a backup to a running application.
    Protect(cmd::protect::Args),
    /// Run a real multi-process workload through checkpoint, migration and failover, and print
    /// what was measured.
    Demo(cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cmd::dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("understudy: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
