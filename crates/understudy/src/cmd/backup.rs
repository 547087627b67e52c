//! `understudy backup`.

use std::process::ExitCode;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_cli: &Cli, _args: &Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`understudy backup` is not implemented yet")
}
