//! POSIX timers of a process from `/proc/PID/timers` (id, signal, sigevent value, notification,
//! clock). Their remaining time and interval need `timer_gettime` injected into the process (the
//! engine's remote-syscall guard), and restore re-creates them with `timer_create` in id order
//! (ids are allocated lowest-free; fill gaps with timers deleted afterwards) and `timer_settime`.

use serde::{Deserialize, Serialize};

/// Why `/proc/PID/timers` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TimersError {
    /// Reading failed.
    #[error("pid {pid}: reading /proc/{pid}/timers: {source}")]
    Read {
        /// process
        pid: i32,
        /// the OS error
        source: std::io::Error,
    },
    /// A line did not parse.
    #[error("pid {pid}: /proc/{pid}/timers line {line:?}: {why}")]
    Parse {
        /// process
        pid: i32,
        /// the line
        line: String,
        /// what is wrong
        why: &'static str,
    },
}

/// How a timer notifies (`sigev_notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Notify {
    /// `SIGEV_NONE`
    None,
    /// `SIGEV_SIGNAL` to the process
    Signal,
    /// `SIGEV_THREAD_ID` to thread `tid`
    Thread {
        /// the thread
        tid: i32,
    },
}

/// One POSIX timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// timer id (`timer_t` value)
    pub id: i32,
    /// signal number
    pub signo: i32,
    /// `sigev_value` (as a pointer-sized integer)
    pub value: u64,
    /// notification
    pub notify: Notify,
    /// clock id
    pub clock: i32,
}

/// Parses the text of `/proc/PID/timers` (`pid` only names it in errors); sorted by id.
pub fn parse_timers(text: &str, pid: i32) -> Result<Vec<PosixTimer>, TimersError> {
    let perr = |line: &str, why| TimersError::Parse {
        pid,
        line: line.to_string(),
        why,
    };
    let mut out = Vec::new();
    let mut cur: Option<PosixTimer> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "ID" => {
                if let Some(t) = cur.take() {
                    out.push(t);
                }
                let id = v.parse().map_err(|_| perr(line, "bad id"))?;
                cur = Some(PosixTimer {
                    id,
                    signo: 0,
                    value: 0,
                    notify: Notify::None,
                    clock: 0,
                });
            }
            "signal" => {
                let t = cur.as_mut().ok_or_else(|| perr(line, "signal before ID"))?;
                let (s, val) = v
                    .split_once('/')
                    .ok_or_else(|| perr(line, "expected SIG/VALUE"))?;
                t.signo = s.parse().map_err(|_| perr(line, "bad signal"))?;
                t.value = u64::from_str_radix(val, 16).map_err(|_| perr(line, "bad value"))?;
            }
            "notify" => {
                let t = cur.as_mut().ok_or_else(|| perr(line, "notify before ID"))?;
                let (how, who) = v
                    .split_once('/')
                    .ok_or_else(|| perr(line, "expected HOW/WHO"))?;
                t.notify = match (how, who.split_once('.')) {
                    ("none", _) => Notify::None,
                    ("signal", Some(("tid", n))) => Notify::Thread {
                        tid: n.parse().map_err(|_| perr(line, "bad tid"))?,
                    },
                    ("signal", _) => Notify::Signal,
                    // "thread" is SIGEV_THREAD as glibc implements it (a helper thread): the
                    // kernel sees a signal to a tid
                    (_, Some(("tid", n))) => Notify::Thread {
                        tid: n.parse().map_err(|_| perr(line, "bad tid"))?,
                    },
                    _ => return Err(perr(line, "unknown notify")),
                };
            }
            "ClockID" => {
                let t = cur
                    .as_mut()
                    .ok_or_else(|| perr(line, "ClockID before ID"))?;
                t.clock = v.parse().map_err(|_| perr(line, "bad clock"))?;
            }
            _ => {}
        }
    }
    if let Some(t) = cur {
        out.push(t);
    }
    out.sort_by_key(|t| t.id);
    Ok(out)
}

/// Reads `/proc/PID/timers`.
pub fn timers(pid: i32) -> Result<Vec<PosixTimer>, TimersError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers"))
        .map_err(|source| TimersError::Read { pid, source })?;
    parse_timers(&text, pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_recorded_sample() {
        // recorded on this kernel (timers created by a C probe)
        let t = "ID: 2\nsignal: 0/0000000000000000\nnotify: none/pid.27388\nClockID: 7\n\
                 ID: 1\nsignal: 34/0000000000000000\nnotify: signal/tid.27388\nClockID: 0\n\
                 ID: 0\nsignal: 10/0000000000001234\nnotify: signal/pid.27388\nClockID: 1\n";
        let v = parse_timers(t, 1).unwrap();
        assert_eq!(
            v,
            vec![
                PosixTimer {
                    id: 0,
                    signo: 10,
                    value: 0x1234,
                    notify: Notify::Signal,
                    clock: 1
                },
                PosixTimer {
                    id: 1,
                    signo: 34,
                    value: 0,
                    notify: Notify::Thread { tid: 27388 },
                    clock: 0
                },
                PosixTimer {
                    id: 2,
                    signo: 0,
                    value: 0,
                    notify: Notify::None,
                    clock: 7
                },
            ]
        );
        assert!(parse_timers("signal: 1/0\n", 1).is_err());
    }
}
