//! What an agent reports to `understudy status` (one JSON object, see `docs/agents.md`).

use serde::{Deserialize, Serialize};

/// The status of every application an agent serves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentStatus {
    /// `primary` or `backup`.
    pub role: String,
    pub pid: u32,
    /// The listening address (backup) or empty (primary).
    pub listen: String,
    pub apps: Vec<AppStatus>,
}

/// One application as seen by one agent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    /// `primary` or `backup`.
    pub role: String,
    /// `async` or `sync` (primary; the backup reports what the primary announced).
    pub mode: String,
    /// Last seq in this agent's own journal.
    pub last_seq_journaled: u64,
    /// Last seq durable in this agent's own journal.
    pub durable_seq: u64,
    /// First seq this agent's journal still holds.
    pub first_seq: u64,
    pub peers: Vec<PeerStatus>,
}

/// One replication peer of an application.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    /// `HOST:PORT` of the backup (on a primary) or the primary's address (on a backup).
    pub addr: String,
    /// `connecting`, `streaming`, `disconnected`, `too-far-behind`, `refused`.
    pub state: String,
    /// Last seq sent to (primary) or received from (backup) this peer.
    pub last_seq_sent: u64,
    /// Last seq this peer acknowledged as durable (primary) or we acknowledged (backup).
    pub last_seq_acked: u64,
    /// Messages not yet acknowledged by this peer.
    pub lag_messages: u64,
    /// Payload bytes not yet acknowledged by this peer (estimated from the average record
    /// size when the lag reaches past the primary's in-memory window).
    pub lag_bytes: u64,
    pub reconnects: u64,
    /// The last error on this peer's connection, if any.
    pub error: Option<String>,
}
