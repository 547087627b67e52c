//! What a process's descriptors are: `/proc/PID/fd/N` link kinds and `/proc/PID/fdinfo/N`
//! contents for event descriptors (epoll, eventfd, timerfd, signalfd, inotify, userfaultfd,
//! pidfd) and sockets.
//!
//! Formats (Linux 6.18, checked by the tests): common `pos` (decimal), `flags` (octal),
//! `mnt_id`, `ino` (decimal); then per kind:
//! - epoll: one line per target `tfd: %8d events: %8x data: %16llx pos:%lli ino:%lx sdev:%x`;
//! - eventfd: `eventfd-count: %16llx` (hex!), `eventfd-id: %d`, `eventfd-semaphore: %d`;
//! - timerfd: `clockid: %d`, `ticks: %llu`, `settime flags: 0%o`, `it_value: (%llu, %llu)`
//!   (the *remaining* time, also for `TFD_TIMER_ABSTIME` timers), `it_interval: (%llu, %llu)`;
//! - signalfd: `sigmask: %016llx` (bit `sig-1`);
//! - inotify: one line per watch `inotify wd:%x ino:%lx sdev:%x mask:%x ignored_mask:%x
//!   fhandle-bytes:%x fhandle-type:%x f_handle:%hex`;
//! - userfaultfd: `pending`, `total`, `API: %llx:%llx:%llx`; pidfd: `Pid`, `NSpid`;
//! - sockets: `scm_fds` (unix: descriptors in flight in the queue).
//!
//! All anonymous-inode descriptors share one inode number (`ino` is the same for every
//! eventfd, epoll, …): identify shared open file descriptions with `kcmp(KCMP_FILE)`, not `ino`.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

/// Why reading or parsing a descriptor failed.
#[derive(Debug, thiserror::Error)]
pub enum FdInfoError {
    /// A `/proc` file could not be read.
    #[error("pid {pid} fd {fd}: reading {what}: {source}")]
    Read {
        /// process
        pid: i32,
        /// descriptor (-1: the directory)
        fd: i32,
        /// which file
        what: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// A line did not parse.
    #[error("pid {pid} fd {fd}: fdinfo line {line:?}: {why}")]
    Parse {
        /// process
        pid: i32,
        /// descriptor
        fd: i32,
        /// the line
        line: String,
        /// what is wrong
        why: &'static str,
    },
    /// An inotify watch's file could not be found again.
    #[error("inotify watch wd {wd} (sdev {sdev:#x} ino {ino:#x}): {why}")]
    InotifyPath {
        /// watch descriptor
        wd: i32,
        /// device
        sdev: u64,
        /// inode
        ino: u64,
        /// why
        why: String,
    },
}

/// The kind of an anonymous-inode descriptor (`anon_inode:[NAME]` / `anon_inode:NAME`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AnonKind {
    /// `[eventpoll]`
    Epoll,
    /// `[eventfd]`
    EventFd,
    /// `[timerfd]`
    TimerFd,
    /// `[signalfd]`
    SignalFd,
    /// `inotify`
    Inotify,
    /// `[fanotify]`
    Fanotify,
    /// `[userfaultfd]`
    Userfaultfd,
    /// `[pidfd]`
    Pidfd,
    /// `[io_uring]`
    IoUring,
    /// `[perf_event]`
    PerfEvent,
    /// `bpf-map`, `bpf-prog`, …
    Bpf(String),
    /// anything else
    Other(String),
}

/// What `/proc/PID/fd/N` points to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdKind {
    /// A path (file, directory, device); `deleted` if the link ends with ` (deleted)`.
    Path {
        /// path without the ` (deleted)` suffix
        path: PathBuf,
        /// unlinked
        deleted: bool,
    },
    /// A memfd (`/memfd:NAME (deleted)`).
    Memfd {
        /// the name given to memfd_create
        name: String,
    },
    /// `pipe:[INO]`
    Pipe(u64),
    /// `socket:[INO]` (look it up with [`crate::sockdiag`])
    Socket(u64),
    /// `anon_inode:…`
    Anon(AnonKind),
    /// A namespace (`net:[INO]`, `mnt:[INO]`, …).
    Namespace {
        /// `net`, `mnt`, `pid`, …
        ns: String,
        /// namespace inode
        ino: u64,
    },
    /// Anything else (kept verbatim).
    Other(String),
}

fn bracket_ino(s: &str, prefix: &str) -> Option<u64> {
    s.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Classifies a `/proc/PID/fd/N` link target.
pub fn classify_link(link: &str) -> FdKind {
    if let Some(i) = bracket_ino(link, "pipe:") {
        return FdKind::Pipe(i);
    }
    if let Some(i) = bracket_ino(link, "socket:") {
        return FdKind::Socket(i);
    }
    if let Some(a) = link.strip_prefix("anon_inode:") {
        let name = a.trim_start_matches('[').trim_end_matches(']');
        let k = match name {
            "eventpoll" => AnonKind::Epoll,
            "eventfd" => AnonKind::EventFd,
            "timerfd" => AnonKind::TimerFd,
            "signalfd" => AnonKind::SignalFd,
            "inotify" => AnonKind::Inotify,
            "fanotify" => AnonKind::Fanotify,
            "userfaultfd" => AnonKind::Userfaultfd,
            "pidfd" => AnonKind::Pidfd,
            "io_uring" => AnonKind::IoUring,
            "perf_event" => AnonKind::PerfEvent,
            n if n.starts_with("bpf") => AnonKind::Bpf(n.to_string()),
            n => AnonKind::Other(n.to_string()),
        };
        return FdKind::Anon(k);
    }
    if let Some(rest) = link.strip_prefix("/memfd:") {
        let name = rest.strip_suffix(" (deleted)").unwrap_or(rest);
        return FdKind::Memfd {
            name: name.to_string(),
        };
    }
    if link.starts_with('/') {
        let (p, deleted) = match link.strip_suffix(" (deleted)") {
            Some(p) => (p, true),
            None => (link, false),
        };
        return FdKind::Path {
            path: PathBuf::from(p),
            deleted,
        };
    }
    if let Some((ns, rest)) = link.split_once(':') {
        if let Some(ino) = rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.parse().ok())
        {
            if [
                "net",
                "mnt",
                "pid",
                "uts",
                "ipc",
                "user",
                "cgroup",
                "time",
                "pid_for_children",
                "time_for_children",
            ]
            .contains(&ns)
            {
                return FdKind::Namespace {
                    ns: ns.to_string(),
                    ino,
                };
            }
        }
    }
    FdKind::Other(link.to_string())
}

/// One registration of an epoll instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollEntry {
    /// the registered fd number (in the owner's table at registration time)
    pub tfd: i32,
    /// `EPOLL*` event mask (including `EPOLLET`, `EPOLLONESHOT`, `EPOLLEXCLUSIVE`, `EPOLLWAKEUP`)
    pub events: u32,
    /// the user data
    pub data: u64,
    /// file position of the target
    pub pos: i64,
    /// inode of the target file
    pub ino: u64,
    /// device of the target file
    pub sdev: u64,
}

/// An eventfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFdInfo {
    /// current counter
    pub count: u64,
    /// `EFD_SEMAPHORE`
    pub semaphore: bool,
    /// kernel id (diagnostics only)
    pub id: Option<u64>,
}

/// A `(seconds, nanoseconds)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timespec {
    /// seconds
    pub sec: u64,
    /// nanoseconds
    pub nsec: u64,
}

/// A timerfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimerFdInfo {
    /// `CLOCK_*`
    pub clockid: i32,
    /// expirations not yet read
    pub ticks: u64,
    /// `TFD_TIMER_ABSTIME` (1) | `TFD_TIMER_CANCEL_ON_SET` (2)
    pub settime_flags: u32,
    /// remaining time to the next expiry (relative even for absolute timers; 0 = disarmed)
    pub it_value: Timespec,
    /// period
    pub it_interval: Timespec,
}

/// One inotify watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InotifyWatch {
    /// watch descriptor
    pub wd: i32,
    /// inode watched
    pub ino: u64,
    /// device (kernel encoding: major << 20 | minor)
    pub sdev: u64,
    /// `IN_*` mask
    pub mask: u32,
    /// ignored mask
    pub ignored_mask: u32,
    /// file handle type (for `open_by_handle_at`)
    pub fhandle_type: i32,
    /// file handle bytes
    pub fhandle: Vec<u8>,
}

/// Kind-specific fdinfo contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FdInfoExtra {
    /// nothing beyond the common fields
    None,
    /// epoll registrations
    Epoll(Vec<EpollEntry>),
    /// eventfd
    EventFd(EventFdInfo),
    /// timerfd
    TimerFd(TimerFdInfo),
    /// signalfd mask (bit `sig-1`)
    SignalFd {
        /// the mask
        sigmask: u64,
    },
    /// inotify watches
    Inotify(Vec<InotifyWatch>),
    /// userfaultfd
    Userfaultfd {
        /// faults pending
        pending: u64,
        /// faults seen
        total: u64,
        /// negotiated features (0 if API not done)
        features: u64,
    },
    /// pidfd
    Pidfd {
        /// pid in the reader's namespace (-1: exited)
        pid: i32,
        /// pid in each nested namespace
        nspid: Vec<i32>,
    },
    /// a socket
    Socket {
        /// descriptors in flight (SCM_RIGHTS) in its queue
        scm_fds: Option<u64>,
    },
}

/// A parsed `/proc/PID/fdinfo/N`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdInfo {
    /// file position
    pub pos: i64,
    /// open flags (`O_*`, as in `fcntl(F_GETFL)` plus `O_CLOEXEC`)
    pub flags: u32,
    /// mount id
    pub mnt_id: u64,
    /// inode
    pub ino: u64,
    /// kind-specific contents
    pub extra: FdInfoExtra,
}

/// A descriptor: what it points to and its fdinfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdDesc {
    /// the fd number
    pub fd: i32,
    /// the link target
    pub kind: FdKind,
    /// fdinfo
    pub info: FdInfo,
}

struct P<'a> {
    pid: i32,
    fd: i32,
    line: &'a str,
}

impl P<'_> {
    fn err(&self, why: &'static str) -> FdInfoError {
        FdInfoError::Parse {
            pid: self.pid,
            fd: self.fd,
            line: self.line.to_string(),
            why,
        }
    }
}

fn hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.trim(), 16).ok()
}

fn dec<T: std::str::FromStr>(s: &str) -> Option<T> {
    s.trim().parse().ok()
}

/// `key:value key:value …` fields of an epoll/inotify line (values may be space-padded, as in
/// `tfd:        5 events:       19`).
fn fields(s: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let toks: Vec<&str> = s.split_ascii_whitespace().collect();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i];
        if let Some((k, v)) = t.split_once(':') {
            if v.is_empty() && i + 1 < toks.len() {
                out.push((k, toks[i + 1]));
                i += 2;
                continue;
            }
            out.push((k, v));
        }
        i += 1;
    }
    out
}

fn get<'a>(f: &[(&'a str, &'a str)], k: &str) -> Option<&'a str> {
    f.iter().find(|(a, _)| *a == k).map(|(_, v)| *v)
}

fn timespec(s: &str) -> Option<Timespec> {
    let s = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (a, b) = s.split_once(',')?;
    Some(Timespec {
        sec: dec(a)?,
        nsec: dec(b)?,
    })
}

/// Parses the text of `/proc/PID/fdinfo/N` (`pid`, `fd` only name it in errors).
pub fn parse_fdinfo(text: &str, pid: i32, fd: i32) -> Result<FdInfo, FdInfoError> {
    let mut info = FdInfo {
        pos: 0,
        flags: 0,
        mnt_id: 0,
        ino: 0,
        extra: FdInfoExtra::None,
    };
    let mut epoll = Vec::new();
    let mut inotify = Vec::new();
    let (mut efd_count, mut efd_sem, mut efd_id) = (None, false, None);
    let (mut clockid, mut ticks, mut tflags, mut itv, mut iti) = (None, 0u64, 0u32, None, None);
    let (mut uffd_pending, mut uffd_total, mut uffd_api) = (None, 0u64, 0u64);
    let (mut pidfd_pid, mut nspid) = (None, Vec::new());
    let mut sigmask = None;
    let mut scm_fds = None;
    for line in text.lines() {
        let p = P { pid, fd, line };
        if line.starts_with("tfd:") {
            let f = fields(line);
            epoll.push(EpollEntry {
                tfd: get(&f, "tfd")
                    .and_then(dec)
                    .ok_or_else(|| p.err("bad tfd"))?,
                events: get(&f, "events")
                    .and_then(hex)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| p.err("bad events"))?,
                data: get(&f, "data")
                    .and_then(hex)
                    .ok_or_else(|| p.err("bad data"))?,
                pos: get(&f, "pos").and_then(dec).unwrap_or(0),
                ino: get(&f, "ino").and_then(hex).unwrap_or(0),
                sdev: get(&f, "sdev").and_then(hex).unwrap_or(0),
            });
            continue;
        }
        if let Some(rest) = line.strip_prefix("inotify ") {
            let f = fields(rest);
            let h = |k| get(&f, k).and_then(hex);
            let handle = get(&f, "f_handle").unwrap_or("");
            let fhandle = (0..handle.len() / 2)
                .map(|i| u8::from_str_radix(&handle[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| p.err("bad f_handle"))?;
            inotify.push(InotifyWatch {
                wd: h("wd")
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| p.err("bad wd"))?,
                ino: h("ino").ok_or_else(|| p.err("bad ino"))?,
                sdev: h("sdev").ok_or_else(|| p.err("bad sdev"))?,
                mask: h("mask")
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| p.err("bad mask"))?,
                ignored_mask: h("ignored_mask")
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                fhandle_type: h("fhandle-type")
                    .and_then(|v| i32::try_from(v).ok())
                    .unwrap_or(0),
                fhandle,
            });
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "pos" => info.pos = dec(v).ok_or_else(|| p.err("bad pos"))?,
            "flags" => {
                info.flags = u32::from_str_radix(v, 8).map_err(|_| p.err("bad flags (octal)"))?
            }
            "mnt_id" => info.mnt_id = dec(v).ok_or_else(|| p.err("bad mnt_id"))?,
            "ino" => info.ino = dec(v).ok_or_else(|| p.err("bad ino"))?,
            "eventfd-count" => {
                efd_count = Some(hex(v).ok_or_else(|| p.err("bad eventfd-count (hex)"))?)
            }
            "eventfd-semaphore" => efd_sem = v == "1",
            "eventfd-id" => efd_id = dec(v),
            "clockid" => clockid = Some(dec(v).ok_or_else(|| p.err("bad clockid"))?),
            "ticks" => ticks = dec(v).ok_or_else(|| p.err("bad ticks"))?,
            "settime flags" => {
                tflags = u32::from_str_radix(v, 8).map_err(|_| p.err("bad settime flags"))?
            }
            "it_value" => itv = Some(timespec(v).ok_or_else(|| p.err("bad it_value"))?),
            "it_interval" => iti = Some(timespec(v).ok_or_else(|| p.err("bad it_interval"))?),
            "sigmask" => sigmask = Some(hex(v).ok_or_else(|| p.err("bad sigmask"))?),
            "pending" => uffd_pending = dec(v),
            "total" => uffd_total = dec(v).unwrap_or(0),
            "API" => uffd_api = v.split(':').nth(1).and_then(hex).unwrap_or(0),
            "Pid" => pidfd_pid = dec(v),
            "NSpid" => nspid = v.split_ascii_whitespace().filter_map(dec).collect(),
            "scm_fds" => scm_fds = dec(v),
            _ => {}
        }
    }
    info.extra = if !epoll.is_empty() {
        FdInfoExtra::Epoll(epoll)
    } else if !inotify.is_empty() {
        FdInfoExtra::Inotify(inotify)
    } else if let Some(count) = efd_count {
        FdInfoExtra::EventFd(EventFdInfo {
            count,
            semaphore: efd_sem,
            id: efd_id,
        })
    } else if let Some(clockid) = clockid {
        FdInfoExtra::TimerFd(TimerFdInfo {
            clockid,
            ticks,
            settime_flags: tflags,
            it_value: itv.unwrap_or_default(),
            it_interval: iti.unwrap_or_default(),
        })
    } else if let Some(sigmask) = sigmask {
        FdInfoExtra::SignalFd { sigmask }
    } else if let Some(pending) = uffd_pending {
        FdInfoExtra::Userfaultfd {
            pending,
            total: uffd_total,
            features: uffd_api,
        }
    } else if let Some(pid) = pidfd_pid {
        FdInfoExtra::Pidfd { pid, nspid }
    } else if scm_fds.is_some() {
        FdInfoExtra::Socket { scm_fds }
    } else {
        FdInfoExtra::None
    };
    Ok(info)
}

/// Reads and parses one descriptor of `pid`. An epoll instance with no registration or an
/// inotify instance without watches parses as [`FdInfoExtra::None`]; use `kind` to tell.
pub fn read_fd(pid: i32, fd: i32) -> Result<FdDesc, FdInfoError> {
    let link =
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).map_err(|source| FdInfoError::Read {
            pid,
            fd,
            what: "fd link",
            source,
        })?;
    Ok(FdDesc {
        fd,
        kind: classify_link(&link.to_string_lossy()),
        info: read_info(pid, fd)?,
    })
}

/// Reads and parses `/proc/PID/fdinfo/FD` alone (position, flags, mount, inode and the
/// kind-specific lines).
pub fn read_info(pid: i32, fd: i32) -> Result<FdInfo, FdInfoError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).map_err(|source| {
        FdInfoError::Read {
            pid,
            fd,
            what: "fdinfo",
            source,
        }
    })?;
    parse_fdinfo(&text, pid, fd)
}

/// Every descriptor of `pid`, sorted by number. Descriptors closed while listing are skipped.
pub fn list_fds(pid: i32) -> Result<Vec<FdDesc>, FdInfoError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|source| FdInfoError::Read {
        pid,
        fd: -1,
        what: "fd directory",
        source,
    })?;
    let mut fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    let mut out = Vec::with_capacity(fds.len());
    for fd in fds {
        match read_fd(pid, fd) {
            Ok(d) => out.push(d),
            Err(FdInfoError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Signals (1-based numbers) in a signalfd mask.
pub fn signals_in_mask(mask: u64) -> Vec<i32> {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| b + 1)
        .collect()
}

impl InotifyWatch {
    /// `(major, minor)` of `sdev` (kernel encoding `major << 20 | minor`).
    pub fn dev(&self) -> (u64, u64) {
        (self.sdev >> 20, self.sdev & 0xfffff)
    }

    fn err(&self, why: impl Into<String>) -> FdInfoError {
        FdInfoError::InotifyPath {
            wd: self.wd,
            sdev: self.sdev,
            ino: self.ino,
            why: why.into(),
        }
    }

    /// Finds the watched file's current path: opens a mount of the watched device (from
    /// `/proc/self/mountinfo`), reopens the file by its handle (`open_by_handle_at`, needs
    /// `CAP_DAC_READ_SEARCH`), and reads the path back. Fails clearly when the device is not
    /// mounted here, the filesystem does not support handles, or the file is gone.
    pub fn resolve_path(&self) -> Result<PathBuf, FdInfoError> {
        let (maj, min) = self.dev();
        let want = format!("{maj}:{min}");
        let mi = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| self.err(format!("mountinfo: {e}")))?;
        let mount = mi
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_ascii_whitespace().collect();
                (f.len() > 4 && f[2] == want).then(|| f[4].to_string())
            })
            .next()
            .ok_or_else(|| {
                self.err(format!(
                    "device {want} is not mounted in this mount namespace"
                ))
            })?;
        let mfile = std::fs::File::open(&mount)
            .map_err(|e| self.err(format!("open mount {mount}: {e}")))?;
        let n = self.fhandle.len();
        // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }, 4-aligned
        let mut buf = vec![0u32; 2 + n.div_ceil(4)];
        buf[0] = u32::try_from(n).map_err(|_| self.err("handle too long"))?;
        buf[1] = u32::from_ne_bytes(self.fhandle_type.to_ne_bytes());
        let bytes: Vec<u8> = buf[..2]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .chain(self.fhandle.iter().copied())
            .collect();
        let mut aligned = vec![0u32; bytes.len().div_ceil(4)];
        for (i, ch) in bytes.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w[..ch.len()].copy_from_slice(ch);
            aligned[i] = u32::from_ne_bytes(w);
        }
        // SAFETY: `aligned` holds a complete `struct file_handle` (header + `n` handle bytes)
        // that the kernel only reads; the mount fd is valid for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mfile.as_raw_fd(),
                aligned.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if r < 0 {
            return Err(self.err(format!(
                "open_by_handle_at on {mount}: {}",
                std::io::Error::last_os_error()
            )));
        }
        let raw = i32::try_from(r).map_err(|_| self.err("fd out of range"))?;
        // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| self.err(format!("reading the reopened path: {e}")))?;
        if p.to_string_lossy().ends_with(" (deleted)") {
            return Err(self.err("the watched file was deleted"));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_links() {
        assert_eq!(classify_link("socket:[108126]"), FdKind::Socket(108_126));
        assert_eq!(classify_link("pipe:[7]"), FdKind::Pipe(7));
        assert_eq!(
            classify_link("anon_inode:[eventpoll]"),
            FdKind::Anon(AnonKind::Epoll)
        );
        assert_eq!(
            classify_link("anon_inode:inotify"),
            FdKind::Anon(AnonKind::Inotify)
        );
        assert_eq!(
            classify_link("anon_inode:bpf-map"),
            FdKind::Anon(AnonKind::Bpf("bpf-map".into()))
        );
        assert_eq!(
            classify_link("/memfd:probe (deleted)"),
            FdKind::Memfd {
                name: "probe".into()
            }
        );
        assert_eq!(
            classify_link("/tmp/x (deleted)"),
            FdKind::Path {
                path: "/tmp/x".into(),
                deleted: true
            }
        );
        assert_eq!(
            classify_link("net:[4026531840]"),
            FdKind::Namespace {
                ns: "net".into(),
                ino: 4_026_531_840
            }
        );
        assert_eq!(classify_link("weird"), FdKind::Other("weird".into()));
    }

    #[test]
    fn parse_recorded_samples() {
        // recorded on this kernel (see the module docs)
        let e = parse_fdinfo(
            "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t12\ntfd:        3 events: 80000019 data:       1234567890  pos:0 ino:c sdev:10\n",
            1,
            4,
        )
        .unwrap();
        assert_eq!(
            e.extra,
            FdInfoExtra::Epoll(vec![EpollEntry {
                tfd: 3,
                events: 0x8000_0019,
                data: 0x12_3456_7890,
                pos: 0,
                ino: 0xc,
                sdev: 0x10
            }])
        );
        let f = parse_fdinfo("pos:\t0\nflags:\t04002\nmnt_id:\t17\nino:\t12\neventfd-count:               1a\neventfd-id: 3\neventfd-semaphore: 1\n", 1, 3).unwrap();
        assert_eq!(f.flags, 0o4002);
        assert_eq!(
            f.extra,
            FdInfoExtra::EventFd(EventFdInfo {
                count: 26,
                semaphore: true,
                id: Some(3)
            })
        );
        let t = parse_fdinfo("pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t12\nclockid: 1\nticks: 0\nsettime flags: 01\nit_value: (99, 971141973)\nit_interval: (1, 500)\n", 1, 5).unwrap();
        assert_eq!(
            t.extra,
            FdInfoExtra::TimerFd(TimerFdInfo {
                clockid: 1,
                ticks: 0,
                settime_flags: 1,
                it_value: Timespec {
                    sec: 99,
                    nsec: 971_141_973
                },
                it_interval: Timespec { sec: 1, nsec: 500 }
            })
        );
        let s = parse_fdinfo(
            "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t12\nsigmask:\t0000000000004200\n",
            1,
            7,
        )
        .unwrap();
        assert_eq!(s.extra, FdInfoExtra::SignalFd { sigmask: 0x4200 });
        assert_eq!(signals_in_mask(0x4200), vec![10, 15]);
        let i = parse_fdinfo("pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t12\ninotify wd:1 ino:3c4a7 sdev:fe00000 mask:300 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000\n", 1, 8).unwrap();
        let FdInfoExtra::Inotify(w) = i.extra else {
            panic!()
        };
        assert_eq!(
            (w[0].wd, w[0].ino, w[0].mask, w[0].dev()),
            (1, 0x3c4a7, 0x300, (0xfe, 0))
        );
        assert_eq!(w[0].fhandle, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
        let u = parse_fdinfo("pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t108128\npending:\t0\ntotal:\t0\nAPI:\taa:0:80000000000001ff\n", 1, 14).unwrap();
        assert_eq!(
            u.extra,
            FdInfoExtra::Userfaultfd {
                pending: 0,
                total: 0,
                features: 0
            }
        );
        let p = parse_fdinfo(
            "pos:\t0\nflags:\t02000002\nmnt_id:\t4\nino:\t27246\nPid:\t27245\nNSpid:\t27245\t1\n",
            1,
            15,
        )
        .unwrap();
        assert_eq!(
            p.extra,
            FdInfoExtra::Pidfd {
                pid: 27245,
                nspid: vec![27245, 1]
            }
        );
        assert!(parse_fdinfo("pos:\tx\n", 1, 1)
            .unwrap_err()
            .to_string()
            .contains("bad pos"));
    }
}
