//! `understudy logs NAME`: print a detached application's output log
//! (`STATE_DIR/apps/NAME/output.log`), optionally following it while the application runs.

use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::launch::{self, AppRecord};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Application name, as given to `understudy run --name`.
    pub name: String,
    /// Keep printing new output until the application exits.
    #[arg(short, long)]
    pub follow: bool,
}

pub fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let rec = AppRecord::load(&cli.state_dir, &args.name).with_context(|| {
        format!(
            "no application {} known in {}",
            args.name,
            cli.state_dir.display()
        )
    })?;
    if !rec.detached {
        anyhow::bail!(
            "{}: its output went to {} (it was not started with --detach), no log is kept",
            args.name,
            rec.output
        );
    }
    let path = launch::app_dir(&cli.state_dir, &args.name).join(launch::OUTPUT_LOG);
    let mut file =
        std::fs::File::open(&path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // Whether the application runs is looked at before reading to the end: what it wrote
        // before it exited is then in the file and is printed. (Looked at after, output
        // written between the last read and the exit was lost.)
        let running = args.follow && rec.is_alive();
        loop {
            let n = file
                .read(&mut buf)
                .with_context(|| format!("{}: read", path.display()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])?;
        }
        out.flush()?;
        if !running {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        // The log may have been truncated by someone; start over then.
        let pos = file.stream_position()?;
        if std::fs::metadata(&path)
            .map(|m| m.len() < pos)
            .unwrap_or(false)
        {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}
