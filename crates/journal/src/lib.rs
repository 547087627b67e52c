//! The durable, segmented, append-only journal of replication messages.
