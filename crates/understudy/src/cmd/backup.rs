//! `understudy backup --listen HOST:PORT`: the backup agent. Journals the streams of any number
//! of primaries under `STATE_DIR/apps/NAME/journal`, acknowledges durable seqs, serves
//! `understudy status` on `STATE_DIR/agents/backup.sock`. Runs until SIGINT or SIGTERM.

use std::process::ExitCode;

use agent::{BackupAgent, BackupConfig, JournalStore, Timing};
use anyhow::Context;

use super::agentopts::{self, JournalArgs, KeyArgs};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to accept primaries on.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: String,
    #[command(flatten)]
    pub key: KeyArgs,
    #[command(flatten)]
    pub journal: JournalArgs,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let key = args.key.load()?;
    agentopts::prepare_state_dir(&cli.state_dir)?;
    let rt = agentopts::runtime()?;
    rt.block_on(async {
        let cfg = BackupConfig {
            listen: args.listen.clone(),
            state_dir: cli.state_dir.clone(),
            key,
            open_store: JournalStore::factory(args.journal.journal_options()),
            timing: Timing::default(),
            control_socket: true,
            metrics: args.journal.metrics.clone(),
            hold_acks: None,
        };
        let agent = BackupAgent::start(cfg)
            .await
            .with_context(|| format!("cannot start the backup agent on {}", args.listen))?;
        eprintln!(
            "understudy: backup agent listening on {}",
            agent.local_addr()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        agent.stop().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
