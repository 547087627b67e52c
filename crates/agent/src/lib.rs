//! Per-host agent logic: the primary role ([`primary::Primary`]: journal an application's
//! messages and stream them to backups) and the backup role ([`backup::BackupAgent`]: journal
//! streams from primaries and acknowledge them), their control socket and metrics.
//!
//! Both roles are tokio tasks; journal I/O runs in `block_in_place` on the multi-threaded
//! runtime. The wire protocol is crate `transport`.

#![forbid(unsafe_code)]

use std::time::Duration;

pub mod backup;
pub mod collector;
pub mod control;
pub mod journal_store;
pub mod metrics;
pub mod primary;
pub mod status;
pub mod store;

pub use backup::{BackupAgent, BackupConfig};
pub use journal_store::JournalStore;
pub use primary::{Primary, PrimaryConfig};
pub use store::{MemStore, OpenStore, Store, StoreError};

use transport::{RefuseCode, TransportError};

/// Replication consistency mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Outputs leave at once; backups may lag.
    Async,
    /// An output leaves only once a backup holds every message before it.
    Sync,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
        })
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "async" => Ok(Mode::Async),
            "sync" => Ok(Mode::Sync),
            o => Err(format!("mode {o:?} is neither async nor sync")),
        }
    }
}

/// Timers of the replication protocol.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Send a heartbeat after this long without sending anything.
    pub heartbeat: Duration,
    /// Drop a peer from which nothing arrived for this long.
    pub peer_timeout: Duration,
    /// Connect + preamble + Noise handshake must finish within this.
    pub handshake: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Async mode: how long a backup may hold more than the inflight cap without acking.
    pub stall: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(3),
            handshake: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(1),
            stall: Duration::from_secs(5),
        }
    }
}

/// Agent errors; messages say what, where and why.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("journal: {0}")]
    Store(String),
    #[error("refused the stream ({code:?}): {message}")]
    Refused { code: RefuseCode, message: String },
    #[error("peer refused the stream ({code:?}): {message}")]
    PeerRefused { code: RefuseCode, message: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("peer silent for {0:?}, dropped")]
    PeerTimeout(Duration),
    #[error("backup too slow: {unacked_bytes} bytes unacknowledged and no ack for {stalled:?}; dropped, will resume from its watermark")]
    Slow {
        unacked_bytes: u64,
        stalled: Duration,
    },
    #[error(
        "timed out after {timeout:?} waiting for seq {seq} to be acknowledged (acked: {acked})"
    )]
    AckTimeout {
        seq: u64,
        acked: u64,
        timeout: Duration,
    },
    #[error("a newer connection for this application took over")]
    Displaced,
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Config(String),
    #[error("ring: {0}")]
    Ring(String),
    #[error("agent stopped")]
    Stopped,
}

/// Check an application name: it becomes a directory name.
pub fn valid_app_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "application name {name:?} is not 1-128 characters of [A-Za-z0-9._-]"
        ))
    }
}

/// Run blocking journal work without stalling the runtime's other tasks.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub(crate) fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
