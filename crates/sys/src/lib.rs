//! Every raw kernel interface understudy touches: ptrace and register sets, remote syscalls,
//! `process_vm_readv/writev`, `/proc/PID/mem`, pidfds, `clone3` with `set_tid`, `/proc` parsing,
//! `PAGEMAP_SCAN` (present pages), and the building blocks later issues add (userfaultfd,
//! `TCP_REPAIR`).
//!
//! Everything above this crate is safe Rust: addresses in another process are [`RemotePtr`]s,
//! tracees are put back as they were by guards ([`RemoteSyscalls`]), and every failure is a typed
//! [`Error`] naming the operation, the process and the reason.

pub mod files;
pub mod mem;
pub mod memscan;
pub mod pid;
pub mod pipe;
pub mod proc;
pub mod ptrace;
pub mod remote;
pub mod uffd_fill;

// Issue 3 building blocks (branch ckptnet), see docs/issue3-building-blocks.md
pub mod dirty;
pub mod evfd;
pub mod fdinfo;
pub mod fdpull;
pub mod inetsock;
mod ioc;
pub mod netlock;
pub mod netns;
pub mod pagemap;
pub mod seccomp;
pub mod sockdiag;
pub mod sockqueue;
pub mod tcp_repair;
pub mod timers;
pub mod uffd;
pub mod uffd_lazy;
pub mod unixpair;
pub mod watchdog;

pub use remote::{RemotePtr, RemoteSyscalls};

/// An error from a raw kernel interface: what was attempted, on what, and the kernel's answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {err}")]
    Os { what: String, err: std::io::Error },
    /// The kernel answered something this crate cannot make sense of.
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
}

impl Error {
    /// The errno of a failed system call, if this error is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { err, .. } => err.raw_os_error(),
            Error::Invalid { .. } => None,
        }
    }

    pub(crate) fn last(what: impl Into<String>) -> Self {
        Error::Os {
            what: what.into(),
            err: std::io::Error::last_os_error(),
        }
    }

    pub(crate) fn from_errno(what: impl Into<String>, errno: i32) -> Self {
        Error::Os {
            what: what.into(),
            err: std::io::Error::from_raw_os_error(errno),
        }
    }

    pub(crate) fn io(what: impl Into<String>, err: std::io::Error) -> Self {
        Error::Os {
            what: what.into(),
            err,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            why: why.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Page size of x86_64 Linux; the engine is x86_64-only (registers, syscall instruction).
pub const PAGE_SIZE: u64 = 4096;

/// Reinterprets a register value as the signed result of a system call.
#[allow(clippy::cast_possible_wrap)] // registers hold two's-complement values
pub fn reg_to_i64(v: u64) -> i64 {
    v as i64
}

/// Reinterprets a signed value (a syscall argument such as `-1`) as a register value.
#[allow(clippy::cast_sign_loss)] // registers hold two's-complement values
pub fn i64_to_reg(v: i64) -> u64 {
    v as u64
}
