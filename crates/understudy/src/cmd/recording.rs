//! What `record` and `replay` share: the recording's layout in the journal, finding the
//! interceptor library, checking the program can be intercepted.
//!
//! A recording is a journal (crate `journal`) whose stream 0 holds two JSON records, `start`
//! (first record) and `end` (last record), and whose stream 1 holds one `intercept::msg` message
//! per finished intercepted call, in the order the ring delivered them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Stream of the recording's own metadata.
pub const STREAM_META: u32 = 0;
/// Stream of the interceptor's messages.
pub const STREAM_MSG: u32 = 1;
/// Value of `format` in the start record.
pub const FORMAT: &str = "understudy-recording";
/// Version of the recording layout (meta records + streams); the message format has its own.
pub const RECORDING_VERSION: u32 = 1;
/// Exit status of `understudy replay` when the program departs from the journal.
pub const DIVERGENCE_EXIT: u8 = 86;

#[derive(Debug, Serialize, Deserialize)]
pub struct StartMeta {
    pub format: String,
    pub version: u32,
    pub msg_version: u8,
    /// The program as given on the command line, and its resolved path.
    pub program: String,
    pub program_path: PathBuf,
    pub args: Vec<String>,
    /// Size and digest of the executable at record time.
    pub exe_len: u64,
    pub exe_digest: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct EndMeta {
    pub format: String,
    /// Exit code of the program, or None if a signal ended it.
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Messages recorded (stream 1).
    pub messages: u64,
}

/// Resolve PROGRAM like execvp does.
pub fn resolve_program(p: &str) -> anyhow::Result<PathBuf> {
    if p.contains('/') {
        let pb = PathBuf::from(p);
        if !pb.is_file() {
            bail!("program {p} does not exist");
        }
        return Ok(pb);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let c = d.join(p);
        if c.is_file() {
            return Ok(c);
        }
    }
    bail!("program {p} not found in PATH")
}

/// Refuse programs the preloaded library cannot enter (static binaries, non-ELF scripts are
/// fine: their interpreter is dynamic and is checked by the kernel's exec).
pub fn check_dynamic(path: &Path) -> anyhow::Result<()> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" {
        if b.starts_with(b"#!") {
            return Ok(());
        }
        bail!("{}: not an ELF executable or a script", path.display());
    }
    if b[4] != 2 || b[5] != 1 {
        bail!(
            "{}: only 64-bit little-endian ELF is supported",
            path.display()
        );
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let phoff = usize::try_from(u64_at(32))?;
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            break;
        }
        if u32_at(o) == 3 {
            return Ok(()); // PT_INTERP: dynamically linked
        }
    }
    bail!(
        "{}: statically linked; the interceptor is an LD_PRELOAD library and cannot enter a static binary, so it can be neither recorded nor replayed",
        path.display()
    )
}

/// The preloaded library: `UNDERSTUDY_INTERCEPT_LIB`, else next to this executable.
pub fn find_lib() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the understudy executable")?;
    let dir = exe.parent().context("executable has no directory")?;
    intercept::launch::find_lib(dir).with_context(|| {
        format!(
            "{} not found next to {} and UNDERSTUDY_INTERCEPT_LIB not set to an existing file (build it with `cargo build -p intercept-preload`)",
            intercept::launch::LIB_NAME,
            exe.display()
        )
    })
}

/// Size and a digest of the executable (identifies the program build).
pub fn exe_identity(path: &Path) -> anyhow::Result<(u64, String)> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((b.len() as u64, format!("{:016x}", intercept::digest(&b))))
}

/// `LD_PRELOAD` value with our library first.
pub fn preload_value(lib: &Path) -> std::ffi::OsString {
    intercept::launch::preload_value(lib)
}

/// Exit status of a finished child as understudy's own status.
pub fn exit_status(st: std::process::ExitStatus) -> (Option<i32>, Option<i32>, u8) {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => (Some(c), None, u8::try_from(c & 0xff).unwrap_or(1)),
        (None, Some(s)) => (None, Some(s), u8::try_from((128 + s) & 0xff).unwrap_or(1)),
        _ => (None, None, 1),
    }
}

/// Paths of the shared-memory files of one record or replay run.
pub fn shm_path(what: &str) -> PathBuf {
    PathBuf::from(format!("/dev/shm/understudy-{}-{what}", std::process::id()))
}
