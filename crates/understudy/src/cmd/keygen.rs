//! `understudy keygen`: write a new cluster key (mode 0600).

use std::path::PathBuf;
use std::process::ExitCode;

use transport::ClusterKey;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the key.
    #[arg(long, env = "UNDERSTUDY_KEY", default_value = super::agentopts::DEFAULT_KEY)]
    pub key: PathBuf,
    /// Replace an existing key (every agent must then get the new one).
    #[arg(long)]
    pub force: bool,
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    ClusterKey::create(&args.key, args.force)?;
    println!("{}", args.key.display());
    eprintln!(
        "understudy: wrote cluster key {} (mode 0600); copy it to every host",
        args.key.display()
    );
    Ok(ExitCode::SUCCESS)
}
