//! `understudy checkpoint (NAME | --pid PID) --image DIR [--leave-running] [--parent DIR]
//! [--reuse-from OLD_DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Application started with `understudy run --name NAME` (its root pid is read from
    /// STATE_DIR/apps/NAME/app.json).
    #[arg(conflicts_with = "pid", required_unless_present = "pid")]
    pub name: Option<String>,
    /// Root of the process tree to dump.
    #[arg(long)]
    pub pid: Option<i32>,
    /// Image directory to write (created; must not already hold an image).
    #[arg(long)]
    pub image: PathBuf,
    /// Keep the tree running after the dump (default: kill it once the image is complete).
    #[arg(long)]
    pub leave_running: bool,
    /// Parent image for an incremental dump.
    #[arg(long)]
    pub parent: Option<PathBuf>,
    /// Recycle an older image (periodic checkpoints): its pages files are moved into the new
    /// image and overwritten in place, which is cheaper than new page cache. OLD_DIR is
    /// consumed (it stops being an image even if this dump fails); same filesystem as --image.
    #[arg(long, value_name = "OLD_DIR", conflicts_with = "parent")]
    pub reuse_from: Option<PathBuf>,
}

/// The fields of `app.json` (written by `understudy run`) that checkpoint needs.
#[derive(Debug, serde::Deserialize)]
struct AppJson {
    root_pid: i32,
    #[serde(default)]
    pidns: bool,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let (root_pid, pidns) = match (&args.name, args.pid) {
        (_, Some(pid)) => (pid, false),
        (Some(name), None) => {
            let path = cli.state_dir.join("apps").join(name).join("app.json");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("application {name}: reading {}", path.display()))?;
            let app: AppJson = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a valid app.json", path.display()))?;
            (app.root_pid, app.pidns)
        }
        (None, None) => anyhow::bail!("give an application NAME or --pid PID"),
    };
    let bar = crate::cmd::progress::bar("dumping");
    let progress: Option<checkpoint::ProgressFn> = bar.clone().map(|b| {
        let f: checkpoint::ProgressFn = Arc::new(move |done, _total| b.set_position(done));
        f
    });
    let opts = checkpoint::DumpOptions {
        root_pid,
        image_dir: args.image.clone(),
        leave_running: args.leave_running,
        parent: args.parent.clone(),
        pidns,
        progress,
        live_memory: false,
        reuse_from: args.reuse_from.clone(),
    };
    let report = match checkpoint::dump(&opts) {
        Ok(r) => r,
        Err(e) => {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let what = if e.tree_left_running() {
                format!("checkpoint of pid {root_pid} failed; the tree was left running")
            } else {
                format!("checkpoint of pid {root_pid} failed after the dump")
            };
            return Err(anyhow::Error::new(e).context(what));
        }
    };
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "checkpointed {} process(es){}, {} thread(s), {:.1} MiB of memory into {}: frozen {:.1} ms (memory copy {:.1} ms){}",
        report.processes,
        if report.zombies > 0 {
            format!(" and {} zombie(s)", report.zombies)
        } else {
            String::new()
        },
        report.threads,
        report.pages_bytes as f64 / (1u64 << 20) as f64,
        args.image.display(),
        report.frozen.as_secs_f64() * 1e3,
        report.memory_copy.as_secs_f64() * 1e3,
        if args.leave_running {
            String::from(", left running")
        } else if pidns {
            format!(
                ", killed ({:.1} ms; own PID namespace: its outer pids are not waited for)",
                report.reap_wait.as_secs_f64() * 1e3
            )
        } else {
            format!(
                ", killed (pids free after {:.1} ms)",
                report.reap_wait.as_secs_f64() * 1e3
            )
        }
    );
    if args.parent.is_some() {
        eprintln!(
            "incremental: {} of {} process(es) tracked, {} page(s) written since the parent, {:.1} MiB left in the parent, dirty scan {:.2} ms",
            report.incremental_processes,
            report.processes,
            report.written_pages,
            report.in_parent_bytes as f64 / (1u64 << 20) as f64,
            report.dirty_scan.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
