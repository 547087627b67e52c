//! Options shared by the agent subcommands (`backup`, `run --backup`, `keygen`): the cluster
//! key, the journal fsync policy, the metrics address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use journal::{FsyncPolicy, JournalOptions};
use transport::ClusterKey;

/// Default cluster key file.
pub const DEFAULT_KEY: &str = "/etc/understudy/cluster.key";

#[derive(Debug, Clone, clap::Args)]
pub struct KeyArgs {
    /// Cluster key file shared by every agent (created with mode 0600 when absent).
    #[arg(long, env = "UNDERSTUDY_KEY", default_value = DEFAULT_KEY)]
    pub key: PathBuf,
}

impl KeyArgs {
    /// Load the key, creating it on first use.
    pub fn load(&self) -> anyhow::Result<ClusterKey> {
        let (k, created) = ClusterKey::load_or_create(&self.key)?;
        if created {
            eprintln!(
                "understudy: created cluster key {} (copy it to every host of the cluster)",
                self.key.display()
            );
        }
        Ok(k)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct JournalArgs {
    /// Journal fsync policy: `always` (every commit), `never`, `every=N` (records) or
    /// `interval=MS`.
    #[arg(long, default_value = "always", value_parser = parse_fsync)]
    pub fsync: FsyncPolicy,
    /// Serve Prometheus metrics on HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
}

impl JournalArgs {
    pub fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            fsync: self.fsync,
            ..JournalOptions::default()
        }
    }
}

fn parse_fsync(s: &str) -> Result<FsyncPolicy, String> {
    match s {
        "always" => Ok(FsyncPolicy::Always),
        "never" => Ok(FsyncPolicy::Never),
        _ => {
            if let Some(n) = s.strip_prefix("every=") {
                n.parse()
                    .map(FsyncPolicy::EveryN)
                    .map_err(|e| format!("{s}: {e}"))
            } else if let Some(ms) = s.strip_prefix("interval=") {
                ms.parse()
                    .map(|m| FsyncPolicy::Interval(Duration::from_millis(m)))
                    .map_err(|e| format!("{s}: {e}"))
            } else {
                Err(format!(
                    "fsync policy {s:?} is not always, never, every=N or interval=MS"
                ))
            }
        }
    }
}

/// A multi-threaded tokio runtime for an agent (journal I/O runs in `block_in_place`).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("understudy-agent")
        .build()
        .context("cannot start the agent runtime")
}

/// Make sure the state dir exists and is private.
pub fn prepare_state_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create state dir {}", dir.display()))
}
