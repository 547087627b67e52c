//! Shared (cross-process) futex wait and wake on a 32-bit word of the mapping.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleep while `*word == expected`, at most `timeout`. Spurious returns are allowed.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(d.subsec_nanos()),
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: FUTEX_WAIT (shared, not PRIVATE: the word may be mapped by other processes) on a
    // valid, aligned 32-bit word; the timeout pointer is null or points to a live timespec.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            tsp,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wake up to `n` waiters of `word`.
pub(crate) fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: FUTEX_WAKE on a valid, aligned 32-bit word; no memory is written.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL)`: every running thread of every process passes a full
/// memory barrier before this returns. Lets the producers' fast path use plain stores where a
/// Dekker handshake with the (rarely sleeping, rarely quiescing) consumer needs StoreLoad order.
pub(crate) fn membarrier_global() -> bool {
    // SAFETY: membarrier takes no pointers.
    unsafe {
        libc::syscall(libc::SYS_membarrier, 1 /* CMD_GLOBAL */, 0, 0) == 0
    }
}

/// Whether `MEMBARRIER_CMD_GLOBAL` is available.
pub(crate) fn membarrier_supported() -> bool {
    // SAFETY: MEMBARRIER_CMD_QUERY takes no pointers.
    let mask = unsafe {
        libc::syscall(libc::SYS_membarrier, 0 /* CMD_QUERY */, 0, 0)
    };
    mask > 0 && mask & 1 != 0
}
