//! `understudy restore --image DIR [--name NAME] [--lazy]`: recreate the tree, print its root pid,
//! leave it running. A tree in its own PID namespace gets new outer pids (only the pids inside the
//! namespace are kept), so the application's `app.json` is updated with the new root pid. With
//! `--lazy` the tree starts before its private anonymous memory is in place; the command stays in
//! the foreground serving pages and exits once every page is in place.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image directory written by `understudy checkpoint`.
    #[arg(long)]
    pub image: PathBuf,
    /// Application (`understudy run --name NAME`) whose `app.json` gets the restored root pid;
    /// default: the application whose `STATE_DIR/apps/NAME/` holds the image, if any.
    #[arg(long)]
    pub name: Option<String>,
    /// Post-copy: start the tree first, then serve its memory on first touch (userfaultfd)
    /// and push the rest in the background; returns once every page is in place.
    #[arg(long)]
    pub lazy: bool,
    /// With --lazy: pages filled per fault (the faulting one and the following missing ones).
    #[arg(long, default_value_t = 16, requires = "lazy")]
    pub prefetch_pages: usize,
    /// With --lazy: pages per background push (0 = serve faults only: the command then returns
    /// only once the tree has touched every page).
    #[arg(long, default_value_t = 512, requires = "lazy")]
    pub push_pages: usize,
}

/// The application whose directory under `STATE_DIR/apps/` holds `image`, if any.
fn owning_app(state_dir: &Path, image: &Path) -> Option<String> {
    let apps = state_dir.join("apps").canonicalize().ok()?;
    let image = image.canonicalize().ok()?;
    let rest = image.strip_prefix(&apps).ok()?;
    let name = rest.components().next()?.as_os_str().to_str()?.to_string();
    crate::launch::app_dir(state_dir, &name)
        .join("app.json")
        .is_file()
        .then_some(name)
}

/// Points `app.json` of `name` at the restored root pid.
fn update_app(state_dir: &Path, name: &str, root_pid: i32) -> anyhow::Result<()> {
    let mut rec = crate::launch::AppRecord::load(state_dir, name)
        .with_context(|| format!("application {name}: its app.json cannot be updated"))?;
    if rec.root_pid != root_pid || rec.state != "running" {
        rec.root_pid = root_pid;
        rec.state = "running".into();
        rec.exit_code = None;
        rec.store(&crate::launch::app_dir(state_dir, name))
            .with_context(|| format!("application {name}: writing app.json"))?;
    }
    Ok(())
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    if args.lazy {
        return run_lazy(cli, args);
    }
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
    let app = args
        .name
        .clone()
        .or_else(|| owning_app(&cli.state_dir, &args.image));
    println!("{}", report.root_pid);
    if let Some(name) = app {
        update_app(&cli.state_dir, &name, report.root_pid).with_context(|| {
            format!(
                "the tree was restored and runs as pid {}, but its application record is stale",
                report.root_pid
            )
        })?;
    }
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

fn run_lazy(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let opts = restore::RestoreOptions {
        image_dir: args.image.clone(),
        progress: None,
    };
    let lazy = restore::LazyOptions {
        prefetch_pages: args.prefetch_pages.max(1),
        push_pages: args.push_pages,
        hold_push: false,
    };
    let lr = restore::restore_lazy(&opts, lazy)
        .with_context(|| format!("lazy restore of {} failed", args.image.display()))?;
    let root = lr.report().root_pid;
    println!("{root}");
    let app = args
        .name
        .clone()
        .or_else(|| owning_app(&cli.state_dir, &args.image));
    if let Some(name) = app {
        if let Err(e) = update_app(&cli.state_dir, &name, root) {
            tracing::warn!(
                "the tree runs as pid {root}, but its application record is stale: {e:#}"
            );
        }
    }
    tracing::info!(
        "lazy restore: {} process(es) running after {:?} (load and check {:?})",
        lr.report().processes,
        lr.report().restore,
        lr.report().verify
    );
    let bar = crate::cmd::progress::bar("lazy restore: memory in place");
    let page: u64 = 4096;
    let summary = lr
        .wait(|p| {
            if let Some(b) = &bar {
                b.set_length(p.total_pages * page);
                b.set_position(p.total_pages.saturating_sub(p.pending_pages) * page);
            }
        })
        .with_context(|| {
            format!(
                "lazy restore of {} failed; the restored tree (root pid {root}) was killed",
                args.image.display()
            )
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let p = summary.progress;
    eprintln!(
        "lazy restore of pid {root}: every page in place after {:.3} s: {} pages served on {} faults, {} pushed in the background ({} pages in all)",
        summary.serve_time.as_secs_f64(),
        p.fault_pages,
        p.faults,
        p.pushed_pages,
        p.total_pages
    );
    Ok(ExitCode::SUCCESS)
}
