//! Subcommands. Each module owns its `Args` and its `run` function.

use std::process::ExitCode;

use crate::{Cli, Command};

pub mod agentopts;
pub mod backup;
pub mod checkpoint;
pub mod demo;
pub mod inspect;
pub mod keygen;
pub mod logs;
pub mod migrate;
pub mod progress;
pub mod protect;
pub mod record;
pub mod recording;
pub mod replay;
pub mod restore;
pub mod run;
pub mod run_replicated;
pub mod status;

pub fn dispatch(cli: &Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Run(a) => run::run(cli, a),
        Command::Backup(a) => backup::run(cli, a),
        Command::Checkpoint(a) => checkpoint::run(cli, a),
        Command::Restore(a) => restore::run(cli, a),
        Command::Record(a) => record::run(cli, a),
        Command::Replay(a) => replay::run(cli, a),
        Command::Migrate(a) => migrate::run(cli, a),
        Command::Status(a) => status::run(cli, a),
        Command::Logs(a) => logs::run(cli, a),
        Command::Inspect(a) => inspect::run(cli, a),
        Command::Keygen(a) => keygen::run(cli, a),
        Command::Protect(a) => protect::run(cli, a),
        Command::Demo(a) => demo::run(cli, a),
    }
}
