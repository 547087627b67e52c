//! `understudy replay --journal DIR -- PROGRAM ARGS...`: run PROGRAM again from the start with
//! the interceptor preloaded in replay mode. Every intercepted call takes its turn in the
//! recorded order and gets the recorded result; outputs to peers outside are suppressed and
//! compared by digest; writes to regular files and to our own stdout/stderr are performed. A
//! departure stops the replay with a report and exit status 86.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{bail, Context};
use journal::{FsyncPolicy, Journal, JournalOptions};

use super::recording::{
    self, EndMeta, StartMeta, DIVERGENCE_EXIT, FORMAT, STREAM_META, STREAM_MSG,
};
use crate::Cli;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Journal directory written by `understudy record`.
    #[arg(long)]
    pub journal: PathBuf,
    /// Print the recorded messages (decoded) instead of replaying.
    #[arg(long)]
    pub list: bool,
    /// Print the journal's bytes by message kind (time batches, reads, epoll, writes...,
    /// framing) instead of replaying; with `--per N`, also divided by N (e.g. requests served).
    #[arg(long)]
    pub sizes: bool,
    /// Divisor of `--sizes`' per-unit column.
    #[arg(long, requires = "sizes")]
    pub per: Option<u64>,
    /// The program and its arguments (as recorded).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// A recording read back from its journal.
pub struct Recording {
    pub start: StartMeta,
    pub end: EndMeta,
    /// (journal seq, message) for every message.
    pub messages: Vec<(u64, Vec<u8>)>,
}

/// Read and validate a recording; every refusal names the journal and the reason.
pub fn load(dir: &Path) -> anyhow::Result<Recording> {
    if !dir.is_dir() {
        bail!("journal {} does not exist", dir.display());
    }
    let summary = journal::inspect::summarize(dir)
        .with_context(|| format!("reading journal {}", dir.display()))?;
    if summary.records == 0 {
        bail!("journal {} holds no recording", dir.display());
    }
    let opts = JournalOptions {
        fsync: FsyncPolicy::Never,
        ..JournalOptions::default()
    };
    let (mut j, rec) =
        Journal::open(dir, opts).with_context(|| format!("opening journal {}", dir.display()))?;
    if !rec.is_clean() {
        bail!(
            "journal {} was damaged or truncated (its tail had to be cut: {:?}); it cannot be replayed faithfully",
            dir.display(),
            rec.cut
        );
    }
    let first = j.first_seq();
    let mut start = None;
    let mut end = None;
    let mut messages = Vec::new();
    for r in j.read_from(first)? {
        let r = r.with_context(|| format!("reading journal {}", dir.display()))?;
        match r.stream {
            STREAM_META if start.is_none() => {
                let s: StartMeta = serde_json::from_slice(&r.payload).map_err(|_| {
                    anyhow::anyhow!("journal {} is not an understudy recording", dir.display())
                })?;
                if s.format != FORMAT {
                    bail!("journal {} is not an understudy recording", dir.display());
                }
                if s.version != recording::RECORDING_VERSION
                    || !(intercept::msg::MIN_VERSION..=intercept::msg::VERSION)
                        .contains(&s.msg_version)
                {
                    bail!(
                        "journal {}: recording version {} / message version {} (this build reads {} / {} to {})",
                        dir.display(),
                        s.version,
                        s.msg_version,
                        recording::RECORDING_VERSION,
                        intercept::msg::MIN_VERSION,
                        intercept::msg::VERSION
                    );
                }
                start = Some(s);
            }
            STREAM_META => {
                let e: EndMeta = serde_json::from_slice(&r.payload)
                    .with_context(|| format!("journal {}: bad end record", dir.display()))?;
                end = Some(e);
            }
            STREAM_MSG if start.is_some() && end.is_none() => {
                intercept::msg::decode(&r.payload).with_context(|| {
                    format!("journal {}: message at seq {}", dir.display(), r.seq)
                })?;
                messages.push((r.seq, r.payload));
            }
            s => bail!(
                "journal {}: unexpected record (stream {s}) at seq {}; not an understudy recording",
                dir.display(),
                r.seq
            ),
        }
    }
    let start = start
        .with_context(|| format!("journal {} is not an understudy recording", dir.display()))?;
    let end = end.with_context(|| {
        format!(
            "journal {} is truncated: the recording has no end record (was the recorder interrupted?)",
            dir.display()
        )
    })?;
    if end.messages != messages.len() as u64 {
        bail!(
            "journal {} is truncated: {} messages present, {} recorded",
            dir.display(),
            messages.len(),
            end.messages
        );
    }
    Ok(Recording {
        start,
        end,
        messages,
    })
}

fn own_out() -> String {
    let id = |fd: u32| {
        std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .map(|m| format!("{}:{}", m.dev(), m.ino()))
            .unwrap_or_else(|_| "0:0".into())
    };
    format!("{},{}", id(1), id(2))
}

pub fn run(_cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let rec = load(&args.journal)?;
    if args.sizes {
        return sizes(&args.journal, &rec, args.per);
    }
    if args.list {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        'list: for (seq, m) in &rec.messages {
            let (h, data) = intercept::msg::decode(m)?;
            let line = writeln!(
                out,
                "{seq:>8} pid {:>6} tid {:>6} thread {:016x} #{:<5} {h}",
                h.pid, h.tid, h.vtid, h.tseq
            );
            if line.is_err() {
                break; // reader went away (`| head`)
            }
            // The calls of a time batch, one a line under it.
            if h.kind == intercept::msg::Kind::TimeBatch {
                for (i, e) in intercept::msg::batch_entries(&h, data).enumerate() {
                    let c = h.batch_call(&e, i);
                    if writeln!(out, "{:>8} {:>47} #{:<5} {c}", "", "", c.tseq).is_err() {
                        break 'list;
                    }
                }
            }
        }
        let _ = out.flush();
        return Ok(ExitCode::SUCCESS);
    }
    let (prog, rest) = args.command.split_first().context("no PROGRAM given")?;
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if name(prog) != name(&rec.start.program) {
        bail!(
            "journal {} was recorded from program `{}`, not `{prog}`",
            args.journal.display(),
            rec.start.program
        );
    }
    if rest != rec.start.args.as_slice() {
        bail!(
            "journal {} was recorded with arguments {:?}, not {:?}",
            args.journal.display(),
            rec.start.args,
            rest
        );
    }
    let path = recording::resolve_program(prog)?;
    recording::check_dynamic(&path)?;
    let (len, dg) = recording::exe_identity(&path)?;
    if len != rec.start.exe_len || dg != rec.start.exe_digest {
        eprintln!(
            "understudy: note: {} changed since it was recorded; replay reports where it departs",
            path.display()
        );
    }
    let lib = recording::find_lib()?;
    let feed_path = recording::shm_path("feed");
    let procs_path = recording::shm_path("procs");
    let _cleanup = Cleanup(vec![feed_path.clone(), procs_path.clone()]);
    intercept::feed::write(&feed_path, &rec.messages)
        .with_context(|| format!("writing {}", feed_path.display()))?;
    let mut child = Command::new(prog)
        .args(rest)
        .env("LD_PRELOAD", recording::preload_value(&lib))
        .env("UNDERSTUDY_MODE", "replay")
        .env("UNDERSTUDY_FEED", &feed_path)
        .env("UNDERSTUDY_PROCS", &procs_path)
        .env("UNDERSTUDY_OWN_OUT", own_out())
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {prog}"))?;
    let pgid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if intercept::feed::state(&feed_path)?.report.is_some() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever is left of the process group goes too.
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let st = intercept::feed::state(&feed_path)?;
    if let Some(report) = st.report {
        eprint!("understudy: replay diverged\n{report}");
        return Ok(ExitCode::from(DIVERGENCE_EXIT));
    }
    // Time batches left at the end are passed over: they are read by their own thread without
    // the shared cursor (the results of a batch that was never emitted were never externalised
    // either; see docs/interceptor.md, "Time batches").
    let mut cursor = st.cursor;
    while cursor < st.n
        && rec.messages[usize::try_from(cursor)?].1.first() == Some(&intercept::msg::BATCH_MAGIC)
    {
        cursor += 1;
    }
    if cursor < st.n {
        let idx = usize::try_from(cursor)?;
        let (seq, m) = &rec.messages[idx];
        let (h, _) = intercept::msg::decode(m)?;
        eprintln!(
            "understudy: replay diverged\ndivergence at journal seq {seq}: the program ended, but the journal continues with process {} thread {:x} call #{}\n  expected: {h}\n  actual:   (no more calls)",
            h.pid, h.vtid, h.tseq
        );
        return Ok(ExitCode::from(DIVERGENCE_EXIT));
    }
    let (exit_code, signal, code) = recording::exit_status(status);
    if exit_code != rec.end.exit_code || signal != rec.end.signal {
        eprintln!(
            "understudy: replay diverged\nthe program ended with {:?}/signal {:?}; it was recorded ending with {:?}/signal {:?}",
            exit_code, signal, rec.end.exit_code, rec.end.signal
        );
        return Ok(ExitCode::from(DIVERGENCE_EXIT));
    }
    Ok(ExitCode::from(code))
}

struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `replay --sizes`: the recording's journal bytes split by message kind. A message's bytes are
/// its payload; what the journal adds around payloads (record and frame headers, checksums,
/// segment headers, the two meta records) is "framing": the segment files' size minus every
/// message payload.
pub fn sizes(dir: &Path, rec: &Recording, per: Option<u64>) -> anyhow::Result<ExitCode> {
    use std::collections::BTreeMap;
    let mut by: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    let mut payload = 0u64;
    for (seq, m) in &rec.messages {
        let (h, data) = intercept::msg::decode(m)
            .with_context(|| format!("journal {}: message at seq {seq}", dir.display()))?;
        let calls = if h.kind == intercept::msg::Kind::TimeBatch {
            // Every entry, in order (decode checked them; this walks the cursor replay uses).
            intercept::msg::batch_entries(&h, data).count() as u64
        } else {
            1
        };
        let name = format!(
            "{} v{}",
            h.kind.name(),
            m.get(1).copied().unwrap_or_default()
        );
        let e = by.entry(name).or_default();
        e.0 += 1;
        e.1 += calls;
        e.2 += m.len() as u64;
        payload += m.len() as u64;
    }
    let mut seg = 0u64;
    for d in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let d = d?;
        if d.file_name().to_string_lossy().ends_with(".seg") {
            seg += d.metadata()?.len();
        }
    }
    let unit = per.unwrap_or(0);
    let div = |b: u64| {
        if unit == 0 {
            String::new()
        } else {
            format!("{:>12.2}", b as f64 / unit as f64)
        }
    };
    println!(
        "{:<28} {:>10} {:>10} {:>14} {:>10}{}",
        "kind",
        "messages",
        "calls",
        "bytes",
        "bytes/call",
        if unit == 0 { "" } else { "    bytes/unit" }
    );
    for (k, (n, calls, b)) in &by {
        println!(
            "{k:<28} {n:>10} {calls:>10} {b:>14} {:>10.2}{}",
            *b as f64 / (*calls).max(1) as f64,
            div(*b)
        );
    }
    let framing = seg.saturating_sub(payload);
    println!(
        "{:<28} {:>10} {:>10} {framing:>14} {:>10}{}",
        "framing (segments - payloads)",
        "",
        "",
        "",
        div(framing)
    );
    println!(
        "{:<28} {:>10} {:>10} {seg:>14} {:>10}{}",
        "journal segment files",
        rec.messages.len(),
        "",
        "",
        div(seg)
    );
    Ok(ExitCode::SUCCESS)
}
