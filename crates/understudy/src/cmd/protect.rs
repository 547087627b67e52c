//! `understudy protect NAME --add HOST:PORT`: make the primary agent of a running application
//! stream to one more backup (through its control socket `STATE_DIR/agents/primary-NAME.sock`).
//! The new backup starts from its own watermark, i.e. from the first record the primary's
//! journal still holds when it has nothing yet.

use std::process::ExitCode;

use anyhow::Context;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The application (started with `understudy run --backup ...`).
    pub name: String,
    /// The backup agent to add.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    pub add: Vec<String>,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let sock =
        agent::control::socket_dir(&cli.state_dir).join(format!("primary-{}.sock", args.name));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    for addr in &args.add {
        let answer = rt
            .block_on(agent::control::request(
                &sock,
                &format!("add-backup {addr}"),
            ))
            .with_context(|| {
                format!(
                    "no primary agent for {} under {} (is it running with --backup?)",
                    args.name,
                    cli.state_dir.display()
                )
            })?;
        if let Some(e) = answer.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("{}: cannot add backup {addr}: {e}", args.name);
        }
        println!("{}: streaming to {addr}", args.name);
    }
    Ok(ExitCode::SUCCESS)
}
