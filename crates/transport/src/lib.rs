//! The authenticated, versioned, framed wire protocol between agents.
