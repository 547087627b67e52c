//! The authenticated, versioned, framed wire protocol between understudy agents.
//!
//! A connection goes through three layers (see `docs/wire-protocol.md`):
//! 1. a cleartext *preamble* that carries the protocol version (current and previous accepted,
//!    anything else refused with a message naming both),
//! 2. a Noise `NNpsk0` handshake keyed by the cluster key ([`key::ClusterKey`]); nothing is
//!    read from the peer as a frame before it has proven it holds the key,
//! 3. encrypted *frames* ([`frame::Frame`]): length-prefixed, size-capped (CRC32C-checksummed
//!    in version 3; from version 4 on the AEAD tag alone authenticates them).
//!
//! The crate is transport only: it never interprets record payloads.

#![forbid(unsafe_code)]

pub mod frame;
pub mod key;
pub mod secure;

pub use frame::{BufferPool, DataBatch, Frame, FrameError, RecordsIter, RefuseCode};
pub use key::{ClusterKey, KeyError};
pub use secure::{accept, connect, SecureReader, SecureWriter, TransportError};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;
/// The previous protocol version, still accepted from peers.
pub const PREVIOUS_PROTOCOL_VERSION: u16 = 3;

/// Whether a peer speaking `version` is accepted.
pub fn version_accepted(version: u16) -> bool {
    (PREVIOUS_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}
