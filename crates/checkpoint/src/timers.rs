//! POSIX timers (`timer_create`) of a frozen process: the list comes from `/proc/PID/timers`,
//! the remaining time, interval and overrun count from `timer_gettime` / `timer_getoverrun`
//! injected into the process (timer ids are per process, only the owner can query them).

use image::PosixTimer;
use sys::remote::nr;
use sys::timers::Notify;
use sys::RemoteSyscalls;

use crate::{CheckpointError, PidCtx, Result};

/// `CLOCK_THREAD_CPUTIME_ID`: a timer on it measures the CPU time of the thread that created
/// it, which `/proc/PID/timers` does not name.
const CLOCK_THREAD_CPUTIME_ID: i32 = 3;

/// Whether `clock` is the CPU-time clock of "the calling thread": `CLOCK_THREAD_CPUTIME_ID`
/// itself, or its encoded form glibc passes (`MAKE_THREAD_CPUCLOCK(0, ...)`: pid field 0,
/// per-thread bit set, i.e. `(clock >> 3) == -1` and bit 2 set). Encoded clocks naming a pid
/// or tid stay valid: restore keeps every pid and tid.
fn is_creator_thread_clock(clock: i32) -> bool {
    clock == CLOCK_THREAD_CPUTIME_ID || (clock < 0 && clock >> 3 == -1 && clock & 4 != 0)
}

/// Lists the timers of `pid` (empty when it has none). `ns_tid` maps a thread id of the
/// dumper's namespace to the process's own namespace (for `SIGEV_THREAD_ID` targets).
pub(crate) fn list(pid: i32, ns_tid: impl Fn(i32) -> Option<i32>) -> Result<Vec<PosixTimer>> {
    let found = match sys::timers::timers(pid) {
        Ok(t) => t,
        Err(e) => {
            // Without CONFIG_CHECKPOINT_RESTORE the file is missing: nothing can be known.
            tracing::warn!("pid {pid}: cannot list posix timers: {e}");
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::with_capacity(found.len());
    for t in found {
        if is_creator_thread_clock(t.clock) {
            return Err(CheckpointError::Unsupported {
                pid,
                what: format!("posix timer {}", t.id),
                why: "a timer on CLOCK_THREAD_CPUTIME_ID is bound to the thread that created it, which the kernel does not report".into(),
            });
        }
        let notify = match t.notify {
            Notify::Thread { tid } => Notify::Thread {
                tid: ns_tid(tid).ok_or_else(|| CheckpointError::Unsupported {
                    pid,
                    what: format!("posix timer {}", t.id),
                    why: format!("it signals thread {tid}, which is not a thread of the process"),
                })?,
            },
            n => n,
        };
        out.push(PosixTimer {
            id: t.id,
            clock: t.clock,
            signo: t.signo,
            value: t.value,
            notify,
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        });
    }
    Ok(out)
}

/// Fills in remaining time, interval and overrun of each timer with calls injected through
/// `rs` (its scratch area at `scratch`, at least 32 bytes free at offset `at`).
pub(crate) fn read_times(
    rs: &mut RemoteSyscalls,
    pid: i32,
    scratch: u64,
    at: u64,
    timers: &mut [PosixTimer],
) -> Result<()> {
    for t in timers {
        let id = u64::try_from(t.id).map_err(|_| CheckpointError::Tree {
            pid,
            why: format!("posix timer id {} is negative", t.id),
        })?;
        rs.syscall(
            &format!("timer_gettime({})", t.id),
            nr::TIMER_GETTIME,
            [id, scratch + at, 0, 0, 0, 0],
        )
        .pid(pid)?;
        let mut b = [0u8; 32];
        rs.get(at, &mut b).pid(pid)?;
        let ts = |o: usize| {
            let w = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
            w(o).saturating_mul(1_000_000_000).saturating_add(w(o + 8))
        };
        // struct itimerspec { it_interval, it_value }
        t.interval_ns = ts(0);
        t.value_ns = ts(16);
        let ov = rs
            .syscall(
                &format!("timer_getoverrun({})", t.id),
                nr::TIMER_GETOVERRUN,
                [id, 0, 0, 0, 0, 0],
            )
            .pid(pid)?;
        t.overrun = i32::try_from(ov).unwrap_or(i32::MAX);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creator_thread_clocks_are_recognised() {
        // recorded on this kernel: glibc's CLOCK_THREAD_CPUTIME_ID, CLOCK_PROCESS_CPUTIME_ID,
        // clock_getcpuclockid(5282)
        assert!(is_creator_thread_clock(-2));
        assert!(is_creator_thread_clock(3));
        assert!(!is_creator_thread_clock(-6));
        assert!(!is_creator_thread_clock(-42262));
        assert!(!is_creator_thread_clock(0));
        assert!(!is_creator_thread_clock(1));
    }
}
