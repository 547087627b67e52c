//! POSIX timers (`timer_create`): re-created inside each restored process with their dumped
//! ids, then armed with their remaining time and interval, as the last step before the
//! registers are set and the tree resumes (so no time passes for them while other processes
//! are still being rebuilt).
//!
//! Ids: with `prctl(PR_TIMER_CREATE_RESTORE_IDS, ON)` (Linux 6.17+) `timer_create` takes the
//! wanted id from `*timerid`. Older kernels allocate ids themselves (lowest free before 6.13,
//! a per-process counter since): there timers are created in id order, lower ids the kernel
//! hands out are kept as fillers and deleted afterwards, and a timer the kernel gives a
//! higher id than wanted fails the restore with a message naming both ids. The environment
//! variable `UNDERSTUDY_NO_TIMER_RESTORE_IDS` forces that path (for tests).

use image::{PosixTimer, Process, Tree, VmaKind};
use sys::remote::nr;
use sys::timers::Notify;
use sys::RemoteSyscalls;

use crate::{PidCtx, RestoreError, Result};

const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const RESTORE_IDS_OFF: u64 = 0;
const RESTORE_IDS_ON: u64 = 1;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;
/// Most filler timers created to reach an id on kernels without `PR_TIMER_CREATE_RESTORE_IDS`.
const MAX_FILLERS: usize = 4096;
/// Scratch layout: the `struct sigevent` (64 bytes), the id, the `struct itimerspec`.
const SCR_SIGEV: u64 = 0;
const SCR_ID: u64 = 64;
const SCR_ITS: u64 = 128;

fn invalid(pid: i32, why: String) -> RestoreError {
    RestoreError::Invalid { pid, why }
}

/// Structure checks before anything is created: ids unique and non-negative, signals in
/// range, `SIGEV_THREAD_ID` targets threads of the process.
pub fn check(tree: &Tree) -> std::result::Result<(), String> {
    for p in &tree.processes {
        let mut ids: Vec<i32> = p.posix_timers.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!(
                "pid {}: posix timer id {} appears twice",
                p.pid, w[0]
            ));
        }
        for t in &p.posix_timers {
            if t.id < 0 {
                return Err(format!(
                    "pid {}: posix timer id {} is negative",
                    p.pid, t.id
                ));
            }
            if t.notify != Notify::None && !(1..=64).contains(&t.signo) {
                return Err(format!(
                    "pid {}: posix timer {} signals {} (not a signal number)",
                    p.pid, t.id, t.signo
                ));
            }
            if let Notify::Thread { tid } = t.notify {
                if !p.threads.iter().any(|th| th.ns_tid == tid) {
                    return Err(format!(
                        "pid {}: posix timer {} signals thread {tid}, which is not in the image",
                        p.pid, t.id
                    ));
                }
            }
        }
    }
    Ok(())
}

fn sigevent(t: &PosixTimer) -> [u8; 64] {
    let mut b = [0u8; 64];
    let (notify, tid) = match t.notify {
        Notify::None => (SIGEV_NONE, 0),
        Notify::Signal => (SIGEV_SIGNAL, 0),
        Notify::Thread { tid } => (SIGEV_THREAD_ID, tid),
    };
    b[0..8].copy_from_slice(&t.value.to_ne_bytes());
    b[8..12].copy_from_slice(&t.signo.to_ne_bytes());
    b[12..16].copy_from_slice(&notify.to_ne_bytes());
    b[16..20].copy_from_slice(&tid.to_ne_bytes());
    b
}

fn timespec(ns: u64) -> [u64; 2] {
    [ns / 1_000_000_000, ns % 1_000_000_000]
}

/// Re-creates and arms the timers of `p` (restored as `pid`, stopped, its vDSO at the recorded
/// address); does nothing for a process without timers.
pub fn restore(p: &Process, pid: i32) -> Result<()> {
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    let (vs, ve) = p
        .vmas
        .iter()
        .find_map(|v| match &v.kind {
            VmaKind::Vdso { name } if name == "[vdso]" => Some((v.start, v.end)),
            _ => None,
        })
        .ok_or_else(|| invalid(p.pid, "posix timers: the image has no [vdso]".into()))?;
    let insn = sys::remote::find_syscall_insn(pid, vs, ve).pid(pid)?;
    let mut rs = RemoteSyscalls::new(pid, insn).pid(pid)?;
    let scratch = rs.map_scratch(None, 4096).pid(pid)?.addr();
    // UNDERSTUDY_NO_TIMER_RESTORE_IDS: behave as on a kernel without the prctl (tests).
    let exact = std::env::var_os("UNDERSTUDY_NO_TIMER_RESTORE_IDS").is_none()
        && rs
            .syscall_raw(
                nr::PRCTL,
                [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_ON, 0, 0, 0, 0],
            )
            .pid(pid)?
            == 0;
    let mut timers = p.posix_timers.clone();
    timers.sort_by_key(|t| t.id);
    let mut fillers: Vec<u64> = Vec::new();
    for t in &timers {
        rs.put(SCR_SIGEV, &sigevent(t)).pid(pid)?;
        let clock = u64::from_ne_bytes(i64::from(t.clock).to_ne_bytes());
        loop {
            rs.put(SCR_ID, &t.id.to_ne_bytes()).pid(pid)?;
            let r = rs
                .syscall_raw(
                    nr::TIMER_CREATE,
                    [clock, scratch + SCR_SIGEV, scratch + SCR_ID, 0, 0, 0],
                )
                .pid(pid)?;
            if r < 0 {
                let why = if exact && r == -i64::from(libc::EBUSY) {
                    "the id is already in use".to_string()
                } else {
                    format!("timer_create failed: errno {}", -r)
                };
                return Err(invalid(
                    p.pid,
                    format!("posix timer {} (clock {}): {why}", t.id, t.clock),
                ));
            }
            let mut got = [0u8; 4];
            rs.get(SCR_ID, &mut got).pid(pid)?;
            let got = i32::from_ne_bytes(got);
            if got == t.id {
                break;
            }
            if exact || got > t.id || fillers.len() >= MAX_FILLERS {
                return Err(invalid(
                    p.pid,
                    format!(
                        "posix timer {}: the kernel gave id {got} (ids cannot be chosen without PR_TIMER_CREATE_RESTORE_IDS, Linux 6.17+)",
                        t.id
                    ),
                ));
            }
            fillers.push(u64::try_from(got).unwrap_or(0));
        }
    }
    if exact {
        rs.syscall(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS, OFF)",
            nr::PRCTL,
            [PR_TIMER_CREATE_RESTORE_IDS, RESTORE_IDS_OFF, 0, 0, 0, 0],
        )
        .pid(pid)?;
    }
    for id in fillers {
        rs.syscall(
            "timer_delete(filler)",
            nr::TIMER_DELETE,
            [id, 0, 0, 0, 0, 0],
        )
        .pid(pid)?;
    }
    for t in timers.iter().filter(|t| t.value_ns != 0) {
        let its: Vec<u8> = timespec(t.interval_ns)
            .into_iter()
            .chain(timespec(t.value_ns))
            .flat_map(u64::to_ne_bytes)
            .collect();
        rs.put(SCR_ITS, &its).pid(pid)?;
        rs.syscall(
            &format!("timer_settime({})", t.id),
            nr::TIMER_SETTIME,
            [
                u64::try_from(t.id).unwrap_or(0),
                0,
                scratch + SCR_ITS,
                0,
                0,
                0,
            ],
        )
        .pid(pid)?;
    }
    rs.finish().pid(pid)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigevent_layout_matches_the_kernel() {
        let t = PosixTimer {
            id: 1,
            clock: 1,
            signo: 36,
            value: 0x1122_3344_5566_7788,
            notify: Notify::Thread { tid: 4242 },
            value_ns: 0,
            interval_ns: 0,
            overrun: 0,
        };
        let b = sigevent(&t);
        assert_eq!(&b[0..8], &0x1122_3344_5566_7788u64.to_ne_bytes());
        assert_eq!(&b[8..12], &36i32.to_ne_bytes());
        assert_eq!(&b[12..16], &4i32.to_ne_bytes());
        assert_eq!(&b[16..20], &4242i32.to_ne_bytes());
        assert_eq!(timespec(1_500_000_000), [1, 500_000_000]);
    }
}
