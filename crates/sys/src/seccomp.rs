//! Seccomp filters and `no_new_privs` of a process: read with `PTRACE_SECCOMP_GET_FILTER` /
//! `PTRACE_SECCOMP_GET_METADATA` (the tracee must be ptrace-stopped; needs `CAP_SYS_ADMIN`) and
//! `/proc/PID/status`, and re-installed in order.
//!
//! Filter index 0 is the *oldest* one on this kernel (the kernel walks `filter_off` steps back
//! from the first-installed end; the man page's "most recently installed" is wrong — found by
//! the test); [`filters`] returns them oldest first, the order in which [`install`] (or the same
//! calls injected into a restored thread) must put them back. Filters installed with `SECCOMP_FILTER_FLAG_TSYNC` apply to every thread; the others
//! only to the thread that installed them and its later children: read them per thread.

use serde::{Deserialize, Serialize};

const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
/// Largest filter accepted (the kernel's BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

/// Why reading or installing a filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A call failed.
    #[error("tid {tid}: {op}: {source}")]
    Sys {
        /// thread (0: the caller)
        tid: i32,
        /// what was done
        op: String,
        /// the OS error
        source: std::io::Error,
    },
    /// `/proc/PID/status` lacks the seccomp lines or they do not parse.
    #[error("pid {pid}: /proc/{pid}/status: {why}")]
    Status {
        /// process
        pid: i32,
        /// what is wrong
        why: String,
    },
    /// A filter is empty or longer than [`MAX_INSNS`].
    #[error("seccomp filter of {len} instructions is invalid (1..={MAX_INSNS})")]
    Invalid {
        /// its length
        len: usize,
    },
}

/// One classic-BPF instruction (`struct sock_filter`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Insn {
    /// opcode
    pub code: u16,
    /// jump if true
    pub jt: u8,
    /// jump if false
    pub jf: u8,
    /// operand
    pub k: u32,
}

/// One installed filter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// the program
    pub insns: Vec<Insn>,
    /// `SECCOMP_FILTER_FLAG_*` it was installed with (as far as the kernel reports: LOG)
    pub flags: u64,
}

impl Filter {
    /// The program as raw `struct sock_filter` bytes (what `SECCOMP_SET_MODE_FILTER` reads).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.insns
            .iter()
            .flat_map(|i| {
                let mut b = [0u8; 8];
                b[0..2].copy_from_slice(&i.code.to_ne_bytes());
                b[2] = i.jt;
                b[3] = i.jf;
                b[4..8].copy_from_slice(&i.k.to_ne_bytes());
                b
            })
            .collect()
    }
}

/// Seccomp state from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// 0 disabled, 1 strict, 2 filter
    pub mode: u8,
    /// number of filters attached
    pub filters: u32,
    /// `no_new_privs`
    pub no_new_privs: bool,
}

/// Reads the seccomp lines of `/proc/PID/status` (or of `/proc/PID/task/TID/status` when `pid`
/// is a thread id).
pub fn status(pid: i32) -> Result<Status, SeccompError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| {
        SeccompError::Status {
            pid,
            why: e.to_string(),
        }
    })?;
    parse_status(&text).map_err(|why| SeccompError::Status { pid, why })
}

fn parse_status(text: &str) -> Result<Status, String> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .ok_or_else(|| format!("no {k} line"))
    };
    Ok(Status {
        mode: get("Seccomp:")?
            .parse()
            .map_err(|_| "bad Seccomp".to_string())?,
        filters: get("Seccomp_filters:")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        no_new_privs: get("NoNewPrivs:")? == "1",
    })
}

fn sys_err(tid: i32, op: impl Into<String>) -> SeccompError {
    SeccompError::Sys {
        tid,
        op: op.into(),
        source: std::io::Error::last_os_error(),
    }
}

/// Reads every filter of ptrace-stopped thread `tid`, oldest first.
pub fn filters(tid: i32) -> Result<Vec<Filter>, SeccompError> {
    let mut out = Vec::new();
    for index in 0u64.. {
        // SAFETY: with a null data pointer PTRACE_SECCOMP_GET_FILTER only returns the length.
        let n = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // ENOENT: no filter at this index (end of the list, or no seccomp at all)
            if e.raw_os_error() == Some(libc::ENOENT) {
                break;
            }
            return Err(SeccompError::Sys {
                tid,
                op: format!("PTRACE_SECCOMP_GET_FILTER index {index}"),
                source: e,
            });
        }
        let len = usize::try_from(n).unwrap_or(0);
        if len == 0 || len > MAX_INSNS {
            return Err(SeccompError::Invalid { len });
        }
        let mut insns = vec![Insn::default(); len];
        // SAFETY: the kernel writes `len` sock_filter entries (8 bytes each, mirrored by the
        // repr(C) `Insn`) into `insns`, which holds exactly `len`.
        let r = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_FILTER,
                tid,
                index as *mut libc::c_void,
                insns.as_mut_ptr().cast::<libc::c_void>(),
            )
        };
        if r < 0 {
            return Err(sys_err(
                tid,
                format!("PTRACE_SECCOMP_GET_FILTER index {index} (read)"),
            ));
        }
        let mut meta = [index, 0u64]; // struct seccomp_metadata { filter_off, flags }
                                      // SAFETY: addr is the size of the 16-byte struct, data points to it.
        let r = unsafe {
            libc::ptrace(
                PTRACE_SECCOMP_GET_METADATA,
                tid,
                std::mem::size_of_val(&meta) as *mut libc::c_void,
                meta.as_mut_ptr().cast::<libc::c_void>(),
            )
        };
        let flags = if r < 0 { 0 } else { meta[1] };
        out.push(Filter { insns, flags });
    }
    Ok(out)
}

/// Installs `filters` (oldest first) into the calling thread, setting `no_new_privs` first if
/// asked (required unless the caller has `CAP_SYS_ADMIN`). This is what a restored thread must
/// run (by injection) before it resumes; here it serves restorer helpers and tests.
pub fn install(filters: &[Filter], no_new_privs: bool) -> Result<(), SeccompError> {
    if no_new_privs {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(sys_err(0, "prctl(PR_SET_NO_NEW_PRIVS)"));
        }
    }
    for f in filters {
        if f.insns.is_empty() || f.insns.len() > MAX_INSNS {
            return Err(SeccompError::Invalid { len: f.insns.len() });
        }
        let prog = libc::sock_fprog {
            len: u16::try_from(f.insns.len())
                .map_err(|_| SeccompError::Invalid { len: f.insns.len() })?,
            filter: f.insns.as_ptr().cast_mut().cast::<libc::sock_filter>(),
        };
        // SAFETY: `prog` points to `len` valid sock_filter entries that outlive the call; the
        // kernel copies the program.
        let r = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                f.flags,
                &prog as *const libc::sock_fprog,
            )
        };
        if r != 0 {
            return Err(sys_err(0, "seccomp(SECCOMP_SET_MODE_FILTER)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_status_lines() {
        let s =
            parse_status("Name:\tx\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n").unwrap();
        assert_eq!(
            s,
            Status {
                mode: 2,
                filters: 3,
                no_new_privs: true
            }
        );
        assert!(parse_status("Name:\tx\n").unwrap_err().contains("Seccomp:"));
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let f = Filter {
            insns: vec![Insn {
                code: 6,
                jt: 1,
                jf: 2,
                k: 0x7fff_0000,
            }],
            flags: 0,
        };
        assert_eq!(f.to_bytes(), [6, 0, 1, 2, 0, 0, 0xff, 0x7f]);
    }
}
