//! `libunderstudy_intercept.so`: the library `understudy record`/`replay` (and the agent) preload
//! into every process of an application.
//!
//! - **Record** (`UNDERSTUDY_MODE=record`, `UNDERSTUDY_RING=path`): every finished intercepted
//!   call becomes one message (`intercept::msg`) in the shared-memory ring.
//! - **Replay** (`UNDERSTUDY_MODE=replay`, `UNDERSTUDY_FEED=path`): every intercepted call waits
//!   for its turn in the recorded global order, returns the recorded result and data, and reports
//!   a departure.
//!
//! The hooks are `dlsym(RTLD_NEXT)`-style wrappers exported from this library; the system calls
//! they make go through a private syscall gate, so that the seccomp filter installed here can
//! trap the same system calls when glibc issues them internally (`fwrite`→`write`) or a program
//! uses raw `syscall()`. See `docs/interceptor.md`.
//!
//! Nothing on the fast path allocates or takes a lock. Casts between signed and unsigned register
//! values are everywhere in a C-ABI shim (the syscall convention returns `-errno` in a `long`),
//! hence the module-level cast allowances below.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::missing_safety_doc
)]

mod hooks;
mod rt;
mod seccomp;
mod signals;
