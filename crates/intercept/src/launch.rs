//! How to start a program under the interceptor (used by `understudy record`/`replay` and by the
//! agent's `understudy run`): where the library is, and the environment it reads.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// File name of the preloaded library (`cargo build` puts it next to the `understudy` binary).
pub const LIB_NAME: &str = "libunderstudy_intercept.so";

/// The preloaded library: `UNDERSTUDY_INTERCEPT_LIB` if set, else `LIB_NAME` in `exe_dir` or its
/// parent (integration tests run from `target/<profile>/deps`). `None` when not found.
pub fn find_lib(exe_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UNDERSTUDY_INTERCEPT_LIB") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    [exe_dir.join(LIB_NAME), exe_dir.join("..").join(LIB_NAME)]
        .into_iter()
        .find(|c| c.is_file())
        .and_then(|c| c.canonicalize().ok())
}

/// `LD_PRELOAD` value with the library first (keeping whatever was preloaded already).
pub fn preload_value(lib: &Path) -> OsString {
    let mut v = lib.as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_PRELOAD") {
        if !old.is_empty() {
            v.push(":");
            v.push(old);
        }
    }
    v
}

/// Environment for a program recorded into the ring at `ring` (the process table `procs` is
/// created by the first process if absent; remove both when the application is gone).
pub fn record_env(
    lib: &Path,
    ring: &Path,
    procs: &Path,
    sync: bool,
) -> Vec<(&'static str, OsString)> {
    vec![
        ("LD_PRELOAD", preload_value(lib)),
        ("UNDERSTUDY_MODE", "record".into()),
        ("UNDERSTUDY_RING", ring.as_os_str().to_owned()),
        ("UNDERSTUDY_PROCS", procs.as_os_str().to_owned()),
        ("UNDERSTUDY_SYNC", if sync { "1" } else { "0" }.into()),
    ]
}
