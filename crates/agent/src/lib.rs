//! Per-host agent logic: primary and backup roles, state machines, triggers.
