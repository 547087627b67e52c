//! Re-creating event descriptors from what [`crate::fdinfo`] parsed: eventfd (counter,
//! semaphore mode), timerfd (clock, remaining time, interval, absolute/cancel-on-set flags,
//! pending expirations where the kernel allows), signalfd (mask) and epoll (registrations, with
//! the registered descriptors mapped to the restorer's numbers).
//!
//! The descriptors are created in the calling process (the restorer) and then installed in the
//! restored process (the engine pulls them in with an injected `pidfd_getfd`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::fdinfo::{EpollEntry, EventFdInfo, TimerFdInfo};

/// Why a descriptor could not be re-created.
#[derive(Debug, thiserror::Error)]
pub enum EvfdError {
    /// A call failed.
    #[error("{what}: {source}")]
    Sys {
        /// what was done
        what: String,
        /// the OS error
        source: std::io::Error,
    },
    /// An epoll registration names a descriptor the resolver does not know.
    #[error("epoll registration of fd {tfd}: no restored descriptor for it")]
    Unresolved {
        /// the original fd number
        tfd: i32,
    },
}

fn sys(what: impl Into<String>) -> EvfdError {
    EvfdError::Sys {
        what: what.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn owned(r: i32, what: &str) -> Result<OwnedFd, EvfdError> {
    if r < 0 {
        return Err(sys(what));
    }
    // SAFETY: a fresh fd just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

fn nonblock(file_flags: u32) -> bool {
    file_flags & u32::try_from(libc::O_NONBLOCK).unwrap_or(0) != 0
}

/// Re-creates an eventfd with its counter (any 64-bit value: written after creation, since
/// `eventfd()` takes only 32 bits) and mode; `file_flags` is [`crate::fdinfo::FdInfo::flags`].
pub fn restore_eventfd(info: &EventFdInfo, file_flags: u32) -> Result<OwnedFd, EvfdError> {
    let mut fl = libc::EFD_CLOEXEC;
    if info.semaphore {
        fl |= libc::EFD_SEMAPHORE;
    }
    if nonblock(file_flags) {
        fl |= libc::EFD_NONBLOCK;
    }
    // SAFETY: eventfd takes integers only.
    let fd = owned(unsafe { libc::eventfd(0, fl) }, "eventfd")?;
    if info.count > 0 {
        let v = info.count.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live array.
        if unsafe { libc::write(fd.as_raw_fd(), v.as_ptr().cast(), 8) } != 8 {
            return Err(sys(format!("eventfd: setting counter {}", info.count)));
        }
    }
    Ok(fd)
}

/// What [`restore_timerfd`] could not carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerfdRestored {
    /// pending expirations that could not be re-injected (0 if none were pending or
    /// `TFD_IOC_SET_TICKS` worked)
    pub ticks_lost: u64,
}

const TFD_IOC_SET_TICKS: libc::Ioctl = crate::ioc::iow(0x54, 0, 8);

/// Re-creates a timerfd: same clock, armed with the remaining time (relative, or absolute
/// against the clock's current time when it was an absolute timer, keeping
/// `TFD_TIMER_CANCEL_ON_SET`), same interval; pending expirations via `TFD_IOC_SET_TICKS` when
/// the kernel has it.
pub fn restore_timerfd(
    info: &TimerFdInfo,
    file_flags: u32,
) -> Result<(OwnedFd, TimerfdRestored), EvfdError> {
    let mut fl = libc::TFD_CLOEXEC;
    if nonblock(file_flags) {
        fl |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create takes integers only.
    let fd = owned(
        unsafe { libc::timerfd_create(info.clockid, fl) },
        "timerfd_create",
    )?;
    let ts = |t: &crate::fdinfo::Timespec| libc::timespec {
        tv_sec: libc::time_t::try_from(t.sec).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::try_from(t.nsec).unwrap_or(0),
    };
    let mut value = ts(&info.it_value);
    let armed = info.it_value.sec != 0 || info.it_value.nsec != 0;
    let abs = info.settime_flags & 1 != 0;
    if armed && abs {
        // SAFETY: zeroed timespec is valid; clock_gettime writes into it.
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid out pointer.
        if unsafe { libc::clock_gettime(info.clockid, &mut now) } != 0 {
            return Err(sys("clock_gettime"));
        }
        let mut sec = now.tv_sec.saturating_add(value.tv_sec);
        let mut nsec = now.tv_nsec + value.tv_nsec;
        if nsec >= 1_000_000_000 {
            nsec -= 1_000_000_000;
            sec = sec.saturating_add(1);
        }
        value = libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
    }
    let its = libc::itimerspec {
        it_interval: ts(&info.it_interval),
        it_value: value,
    };
    let flags = if abs {
        i32::try_from(info.settime_flags & 3).unwrap_or(1)
    } else {
        0
    };
    if armed {
        // SAFETY: valid itimerspec; null old value.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &its, std::ptr::null_mut()) } != 0
        {
            return Err(sys("timerfd_settime"));
        }
    }
    let mut lost = 0;
    if info.ticks > 0 {
        let t = info.ticks;
        // SAFETY: TFD_IOC_SET_TICKS reads one u64 from the valid pointer.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &t as *const u64) } != 0 {
            lost = info.ticks;
        }
    }
    Ok((fd, TimerfdRestored { ticks_lost: lost }))
}

/// Re-creates a signalfd for `sigmask` (bit `sig-1`).
pub fn restore_signalfd(sigmask: u64, file_flags: u32) -> Result<OwnedFd, EvfdError> {
    // SAFETY: sigset manipulation on a local, zero-initialised set.
    let set = unsafe {
        let mut s: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut s);
        for sig in crate::fdinfo::signals_in_mask(sigmask) {
            libc::sigaddset(&mut s, sig);
        }
        s
    };
    let mut fl = libc::SFD_CLOEXEC;
    if nonblock(file_flags) {
        fl |= libc::SFD_NONBLOCK;
    }
    // SAFETY: valid sigset pointer.
    owned(unsafe { libc::signalfd(-1, &set, fl) }, "signalfd")
}

/// Re-creates an epoll instance and registers each entry's descriptor as `resolve(tfd)` (the
/// restorer's number for the restored target) with the recorded events and data.
pub fn restore_epoll(
    entries: &[EpollEntry],
    resolve: impl Fn(i32) -> Option<RawFd>,
) -> Result<OwnedFd, EvfdError> {
    // SAFETY: epoll_create1 takes integers only.
    let ep = owned(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    )?;
    for e in entries {
        let fd = resolve(e.tfd).ok_or(EvfdError::Unresolved { tfd: e.tfd })?;
        let mut ev = libc::epoll_event {
            events: e.events,
            u64: e.data,
        };
        // SAFETY: registers a descriptor we hold with a valid epoll_event.
        if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(sys(format!("epoll_ctl(ADD) of fd {} (was {})", fd, e.tfd)));
        }
    }
    Ok(ep)
}

/// Bytes of events queued in an inotify (or any) descriptor (`FIONREAD`): an inotify instance
/// with queued events cannot be checkpointed honestly (they would be lost).
pub fn queued_bytes(fd: std::os::fd::BorrowedFd<'_>) -> Result<usize, EvfdError> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the valid pointer.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) } != 0 {
        return Err(sys("ioctl(FIONREAD)"));
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Re-creates an inotify instance with `watches` (each path found with
/// [`crate::fdinfo::InotifyWatch::resolve_path`], or given by `path_of`), in watch-descriptor
/// order. The kernel numbers watches itself (1, 2, … for a fresh instance), so an original whose
/// numbers have gaps cannot be reproduced: that is a [`EvfdError::Sys`] naming both numbers.
pub fn restore_inotify(
    watches: &[crate::fdinfo::InotifyWatch],
    file_flags: u32,
    path_of: impl Fn(
        &crate::fdinfo::InotifyWatch,
    ) -> Result<std::path::PathBuf, crate::fdinfo::FdInfoError>,
) -> Result<OwnedFd, EvfdError> {
    let mut fl = libc::IN_CLOEXEC;
    if nonblock(file_flags) {
        fl |= libc::IN_NONBLOCK;
    }
    // SAFETY: inotify_init1 takes integers only.
    let fd = owned(unsafe { libc::inotify_init1(fl) }, "inotify_init1")?;
    let mut sorted: Vec<&crate::fdinfo::InotifyWatch> = watches.iter().collect();
    sorted.sort_by_key(|w| w.wd);
    for w in sorted {
        let path = path_of(w).map_err(|e| EvfdError::Sys {
            what: format!("inotify watch {}", w.wd),
            source: std::io::Error::other(e.to_string()),
        })?;
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            EvfdError::Sys {
                what: format!("inotify watch {}: path {}", w.wd, path.display()),
                source: std::io::Error::other("path contains a NUL byte"),
            }
        })?;
        // SAFETY: valid NUL-terminated path; mask is an integer.
        let wd = unsafe {
            libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), w.mask & !libc::IN_MASK_ADD)
        };
        if wd < 0 {
            return Err(sys(format!(
                "inotify_add_watch({}) for watch {}",
                path.display(),
                w.wd
            )));
        }
        if wd != w.wd {
            return Err(EvfdError::Sys {
                what: format!("inotify watch on {}", path.display()),
                source: std::io::Error::other(format!(
                    "the kernel numbered it {wd}, the application knows it as {}: watch numbers with gaps cannot be reproduced",
                    w.wd
                )),
            });
        }
    }
    Ok(fd)
}
