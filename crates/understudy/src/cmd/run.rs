//! `understudy run`: start PROGRAM under supervision in its own PID namespace (see
//! [`crate::launch`]). Attached, it waits and exits with PROGRAM's status; detached, it prints the
//! application's init pid and returns at once, output going to `STATE_DIR/apps/NAME/output.log`.

use std::ffi::OsString;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::launch::{self, LaunchSpec};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Application name (default: PROGRAM's file name); its files go to STATE_DIR/apps/NAME/.
    #[arg(long)]
    pub name: Option<String>,
    /// Return at once; PROGRAM's output goes to STATE_DIR/apps/NAME/output.log.
    #[arg(long)]
    pub detach: bool,
    /// Internal: act as the application's init (PID 1 of its namespace).
    #[arg(long, hide = true)]
    pub init: bool,
    /// Replication: `--backup HOST:PORT`..., `--mode`, `--key`, `--fsync`, `--metrics`.
    #[command(flatten)]
    pub replication: super::run_replicated::ReplicationArgs,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    pub command: Vec<OsString>,
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code.clamp(0, 255)).unwrap_or(1))
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let (program, rest) = args.command.split_first().context("PROGRAM is missing")?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => Path::new(program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .context("PROGRAM has no file name to name the application after; use --name")?,
    };
    if args.init {
        let code = launch::init_main(&cli.state_dir, &name, args.detach, program, rest)?;
        return Ok(exit_code(code));
    }
    if !args.replication.backups.is_empty() {
        anyhow::ensure!(!args.detach, "--detach with --backup is not supported yet");
        return super::run_replicated::run(cli, &args.replication, &name, program, rest);
    }
    let spec = LaunchSpec {
        name: name.clone(),
        state_dir: cli.state_dir.clone(),
        program: program.clone(),
        args: rest.to_vec(),
        detach: args.detach,
        env: Vec::new(),
    };
    let launched =
        launch::spawn(&spec).with_context(|| format!("cannot launch application {name}"))?;
    if args.detach {
        println!("{}", launched.root_pid);
        eprintln!(
            "understudy: {name} running (init pid {}), output in {}",
            launched.root_pid, launched.record.output
        );
        return Ok(ExitCode::SUCCESS);
    }
    let code = launched
        .wait()
        .with_context(|| format!("supervising {name}"))?;
    Ok(exit_code(code))
}
