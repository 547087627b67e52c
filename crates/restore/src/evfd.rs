//! Event descriptors and unix socket pairs: re-created in the restorer (like every other open
//! file description) and inherited by the stubs; epoll registrations are made inside the
//! process that holds them, once its fds are installed, so the kernel keys them by the
//! original fd numbers (`EPOLL_CTL_MOD`/`DEL` by the application keep working).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

use image::{FileKind, OpenFile, Process, Tree};
use sys::remote::RemoteSyscalls;

use crate::{PidCtx, RestoreError, Result};

const NR_EPOLL_CTL: u64 = 233;
const EPOLL_CTL_ADD: u64 = 1;

fn invalid(pid: i32, why: String) -> RestoreError {
    RestoreError::Invalid { pid, why }
}

/// Structure checks of the version-2 records (before anything is created): every epoll
/// registration names an epoll fd and an open fd of its process, every unix pair has exactly
/// its two ends, every TCP connection state is consistent.
pub fn check(tree: &Tree) -> std::result::Result<(), String> {
    let kind = |file: u32| tree.files.get(usize::try_from(file).unwrap_or(usize::MAX));
    for p in &tree.processes {
        for r in &p.epoll_regs {
            let ep = p.fds.iter().find(|f| f.fd == r.epfd);
            if !ep.is_some_and(|f| matches!(kind(f.file).map(|o| &o.kind), Some(FileKind::Epoll))) {
                return Err(format!(
                    "pid {}: epoll registration on fd {} which is not an epoll instance",
                    p.pid, r.epfd
                ));
            }
            if !p.fds.iter().any(|f| f.fd == r.tfd) {
                return Err(format!(
                    "pid {}: epoll fd {} registers fd {} which is not open",
                    p.pid, r.epfd, r.tfd
                ));
            }
        }
    }
    let mut ends: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for f in &tree.files {
        match &f.kind {
            FileKind::UnixPair { pair, end, .. } => ends.entry(*pair).or_default().push(*end),
            FileKind::TcpEstablished { state } => {
                state
                    .validate()
                    .map_err(|e| format!("file {}: {e}", f.id))?;
            }
            _ => {}
        }
    }
    for (pair, mut e) in ends {
        e.sort_unstable();
        if e != [0, 1] {
            return Err(format!(
                "unix socket pair {pair} has ends {e:?}, expected [0, 1]"
            ));
        }
    }
    Ok(())
}

/// The other ends of unix pairs created for an earlier file record, by pair id.
#[derive(Default)]
pub struct PairEnds {
    waiting: BTreeMap<u32, OwnedFd>,
    /// Established TCP connections still in repair mode (the restorer's copies).
    pub tcp: Vec<(OwnedFd, sys::tcp_repair::TcpConnState)>,
    /// Time spent re-creating them in repair mode.
    pub tcp_time: std::time::Duration,
    /// The copies in `tcp` are kept at or above this fd number, out of the range the files
    /// are placed in (`dup_to` there would replace them).
    pub keep_floor: i32,
}

/// Takes every restored TCP connection out of repair mode (queues the never-sent data):
/// called once every process is rebuilt, just before they resume.
pub fn finish_tcp(pending: &[(OwnedFd, sys::tcp_repair::TcpConnState)], root: i32) -> Result<()> {
    for (fd, st) in pending {
        sys::tcp_repair::finish_restore(fd.as_fd(), st).map_err(|e| {
            invalid(
                root,
                format!("TCP connection {} -> {}: {e}", st.local, st.peer),
            )
        })?;
    }
    Ok(())
}

/// Creates the restorer's copy of an event descriptor or unix socket file; `None` for any
/// other kind. `root` names the process in errors.
pub fn create(
    f: &OpenFile,
    tree: &Tree,
    pairs: &mut PairEnds,
    root: i32,
) -> Result<Option<OwnedFd>> {
    let ev = |e: sys::evfd::EvfdError| invalid(root, format!("file {}: {e}", f.id));
    Ok(Some(match &f.kind {
        FileKind::EventFd { count, semaphore } => sys::evfd::restore_eventfd(
            &sys::fdinfo::EventFdInfo {
                count: *count,
                semaphore: *semaphore,
                id: None,
            },
            f.flags,
        )
        .map_err(ev)?,
        FileKind::TimerFd {
            clockid,
            value_ns,
            interval_ns,
            settime_flags,
            ticks,
        } => {
            let ts = |n: u64| sys::fdinfo::Timespec {
                sec: n / 1_000_000_000,
                nsec: n % 1_000_000_000,
            };
            let info = sys::fdinfo::TimerFdInfo {
                clockid: *clockid,
                ticks: *ticks,
                settime_flags: *settime_flags,
                it_value: ts(*value_ns),
                it_interval: ts(*interval_ns),
            };
            let (fd, r) = sys::evfd::restore_timerfd(&info, f.flags).map_err(ev)?;
            if r.ticks_lost > 0 {
                tracing::warn!(
                    "file {}: {} pending timerfd expirations could not be restored",
                    f.id,
                    r.ticks_lost
                );
            }
            fd
        }
        FileKind::SignalFd { sigmask } => {
            sys::evfd::restore_signalfd(*sigmask, f.flags).map_err(ev)?
        }
        FileKind::Epoll => sys::evfd::restore_epoll(&[], |_| None).map_err(ev)?,
        FileKind::UnixPair {
            pair,
            end,
            sock_type,
            ..
        } => {
            if let Some(fd) = pairs.waiting.remove(pair) {
                sys::files::set_status_flags(&fd, f.flags).pid(root)?;
                return Ok(Some(fd));
            }
            // Created non-blocking so that a queue that no longer fits fails instead of
            // hanging the restore; each end gets its recorded flags afterwards.
            let (a, b) = sys::unixpair::socketpair(*sock_type, true).pid(root)?;
            let other = tree.files.iter().find(|o| {
                o.id != f.id && matches!(&o.kind, FileKind::UnixPair { pair: p, .. } if p == pair)
            });
            let Some(other) = other else {
                return Err(invalid(
                    root,
                    format!("unix socket pair {pair}: only one end in the image"),
                ));
            };
            let (mine, theirs) = if *end == 0 { (a, b) } else { (b, a) };
            // Each end's receive queue is refilled by sending from the other end.
            for (rec, from) in [(f, &theirs), (other, &mine)] {
                if let FileKind::UnixPair { queue, .. } = &rec.kind {
                    let dump = sys::sockqueue::QueueDump {
                        sock_type: *sock_type,
                        messages: queue
                            .iter()
                            .map(|m| sys::sockqueue::QueuedMessage {
                                data: m.0.clone(),
                                from: None,
                            })
                            .collect(),
                    };
                    sys::sockqueue::refill_via_peer(from.as_fd(), &dump).map_err(|e| {
                        invalid(
                            root,
                            format!("unix socket pair {pair}: refilling file {}: {e}", rec.id),
                        )
                    })?;
                }
            }
            sys::files::set_status_flags(&mine, f.flags).pid(root)?;
            pairs.waiting.insert(*pair, theirs);
            mine
        }
        FileKind::UnixListen {
            sock_type,
            name,
            backlog,
            mode,
        } => {
            let fd = sys::unixpair::listen(*sock_type, name, *backlog, *mode).pid(root)?;
            sys::files::set_status_flags(&fd, f.flags).pid(root)?;
            fd
        }
        FileKind::TcpListen { state } => {
            let fd = sys::inetsock::restore_listener(state)
                .map_err(|e| invalid(root, format!("file {} ({}): {e}", f.id, state.addr)))?;
            sys::files::set_status_flags(&fd, f.flags).pid(root)?;
            fd
        }
        FileKind::Udp { state } => {
            let fd = sys::inetsock::restore_udp(state)
                .map_err(|e| invalid(root, format!("file {} ({}): {e}", f.id, state.local)))?;
            sys::files::set_status_flags(&fd, f.flags).pid(root)?;
            fd
        }
        FileKind::TcpEstablished { state } => {
            let t = std::time::Instant::now();
            let fd = sys::tcp_repair::restore_in_repair(state).map_err(|e| {
                invalid(
                    root,
                    format!("TCP connection {} -> {}: {e}", state.local, state.peer),
                )
            })?;
            sys::files::set_status_flags(&fd, f.flags).pid(root)?;
            let keep = sys::files::dup_above(&fd, pairs.keep_floor)
                .map_err(|e| invalid(root, format!("TCP connection {}: dup: {e}", state.local)))?;
            pairs.tcp.push((keep, state.clone()));
            pairs.tcp_time += t.elapsed();
            fd
        }
        _ => return Ok(None),
    }))
}

/// Makes the epoll registrations of `p` inside it (its fds are installed), passing the
/// `struct epoll_event` (packed, 12 bytes on x86_64) at scratch offset `offset`.
pub fn register_epolls(rs: &mut RemoteSyscalls, p: &Process, pid: i32, offset: u64) -> Result<()> {
    for r in &p.epoll_regs {
        let mut ev = Vec::with_capacity(12);
        ev.extend_from_slice(&r.events.to_ne_bytes());
        ev.extend_from_slice(&r.data.to_ne_bytes());
        let addr = rs.put(offset, &ev).pid(pid)?;
        let epfd = u64::try_from(r.epfd).unwrap_or(u64::MAX);
        let tfd = u64::try_from(r.tfd).unwrap_or(u64::MAX);
        rs.syscall(
            &format!("epoll_ctl(fd {}, ADD, fd {})", r.epfd, r.tfd),
            NR_EPOLL_CTL,
            [epfd, EPOLL_CTL_ADD, tfd, addr, 0, 0],
        )
        .map(|_| ())
        .pid(pid)?;
    }
    Ok(())
}
