//! The LD_PRELOAD interceptor: records and replays every call through which the outside world reaches a process.
