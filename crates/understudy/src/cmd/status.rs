//! `understudy status [NAME] [--json]`: ask every agent under the state dir (through its
//! control socket) what it replicates.
//!
//! `--json` prints one object: `{"apps": [AppStatus...]}` (see `docs/agents.md`).

use std::process::ExitCode;

use agent::status::AppStatus;
use anyhow::Context;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this application.
    pub name: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    let agents = rt.block_on(agent::control::query_all(&cli.state_dir));
    let mut apps: Vec<AppStatus> = agents
        .into_iter()
        .flat_map(|a| a.apps)
        .filter(|a| args.name.as_ref().is_none_or(|n| &a.name == n))
        .collect();
    apps.sort_by(|a, b| (&a.name, &a.role).cmp(&(&b.name, &b.role)));
    if args.json {
        println!("{}", serde_json::json!({ "apps": apps }));
    } else if apps.is_empty() {
        println!(
            "no application known to the agents under {}",
            cli.state_dir.display()
        );
    } else {
        println!(
            "{:<16} {:<8} {:<6} {:>10} {:<22} {:<15} {:>10} {:>10} {:>9} {:>12}",
            "APP",
            "ROLE",
            "MODE",
            "JOURNALED",
            "PEER",
            "STATE",
            "SENT",
            "ACKED",
            "LAG",
            "LAG_BYTES"
        );
        for a in &apps {
            if a.peers.is_empty() {
                println!(
                    "{:<16} {:<8} {:<6} {:>10}",
                    a.name, a.role, a.mode, a.last_seq_journaled
                );
            }
            for p in &a.peers {
                println!(
                    "{:<16} {:<8} {:<6} {:>10} {:<22} {:<15} {:>10} {:>10} {:>9} {:>12}",
                    a.name,
                    a.role,
                    a.mode,
                    a.last_seq_journaled,
                    p.addr,
                    p.state,
                    p.last_seq_sent,
                    p.last_seq_acked,
                    p.lag_messages,
                    p.lag_bytes
                );
                if let Some(e) = &p.error {
                    println!("  {}: {e}", p.addr);
                }
            }
        }
    }
    if let Some(n) = &args.name {
        if apps.is_empty() {
            anyhow::bail!(
                "no agent under {} knows application {n}",
                cli.state_dir.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
