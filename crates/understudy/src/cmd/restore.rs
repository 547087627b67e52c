//! `understudy restore --image DIR`: recreate the tree, print its root pid, leave it running.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image directory written by `understudy checkpoint`.
    #[arg(long)]
    pub image: PathBuf,
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let bar = crate::cmd::progress::bar("restoring");
    let progress: Option<restore::ProgressFn> = bar.clone().map(|b| {
        let f: restore::ProgressFn = Arc::new(move |done, total| {
            b.set_length(total);
            b.set_position(done)
        });
        f
    });
    let opts = restore::RestoreOptions {
        image_dir: args.image.clone(),
        progress,
    };
    let report = restore::restore(&opts)
        .with_context(|| format!("restore of {} failed", args.image.display()))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!("{}", report.root_pid);
    tracing::info!(
        "restored {} process(es), {} thread(s), {} bytes: verify {:?}, restore {:?}",
        report.processes,
        report.threads,
        report.pages_bytes,
        report.verify,
        report.restore
    );
    Ok(ExitCode::SUCCESS)
}
