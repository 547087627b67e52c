//! Reading a unix socket's receive queue without consuming it, and refilling it at restore.
//!
//! `SO_PEEK_OFF` (set to 0 for the dump, then put back) makes each `MSG_PEEK` continue where the
//! previous one stopped, so the queue is walked message by message (datagram and seqpacket keep
//! their boundaries; a stream queue is one byte string). Datagrams are peeked into a 4 MiB
//! buffer; a larger one is refused (`MSG_TRUNC` seen), never split. Checked on this kernel for stream, datagram and
//! seqpacket socketpairs.
//!
//! A zero-length datagram does not advance the peek offset, so nothing queued behind it can be
//! seen: such a queue is refused ([`SockQueueError::ZeroLengthDatagram`]), never shortened.
//!
//! Descriptors in flight (`SCM_RIGHTS`) cannot be dumped honestly by peeking (peeking installs
//! copies in the dumper, the originals stay queued): they are closed at once and reported as
//! [`SockQueueError::FdsInFlight`]. Sender addresses of datagrams are recorded
//! ([`QueuedMessage::from`]); refilling through the peer cannot reproduce a sender other than the
//! peer.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Largest queue this module reads (a bound against corrupt sizes).
pub const MAX_QUEUE: usize = 64 << 20;
/// Largest single datagram read (larger ones are refused, never split).
pub const MAX_DATAGRAM: usize = 4 << 20;

/// Why a queue could not be dumped or refilled.
#[derive(Debug, thiserror::Error)]
pub enum SockQueueError {
    /// A socket call failed.
    #[error("unix socket fd {fd}: {op}: {source}")]
    Sys {
        /// socket
        fd: i32,
        /// what was done
        op: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// File descriptors are queued in the socket.
    #[error("unix socket fd {fd}: {count} file descriptor(s) in flight (SCM_RIGHTS) in its queue cannot be checkpointed")]
    FdsInFlight {
        /// socket
        fd: i32,
        /// descriptors seen
        count: usize,
    },
    /// A zero-length datagram is queued: peeking cannot get past it.
    #[error("unix socket fd {fd}: zero-length datagram at position {index} of its queue: the messages behind it cannot be read without consuming them")]
    ZeroLengthDatagram {
        /// socket
        fd: i32,
        /// its position in the queue
        index: usize,
    },
    /// The queue is larger than [`MAX_QUEUE`].
    #[error("unix socket fd {fd}: queue of {bytes} bytes exceeds the {MAX_QUEUE}-byte limit")]
    TooLarge {
        /// socket
        fd: i32,
        /// size seen
        bytes: usize,
    },
}

/// One queued message (for a stream socket: the whole queue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// the bytes
    pub data: Vec<u8>,
    /// sender address of a datagram (raw `sun_path` bytes; `@…` for abstract), if it had one
    pub from: Option<String>,
}

/// A dumped receive queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDump {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`
    pub sock_type: i32,
    /// messages in queue order
    pub messages: Vec<QueuedMessage>,
}

impl QueueDump {
    /// Total queued bytes.
    pub fn bytes(&self) -> usize {
        self.messages.iter().map(|m| m.data.len()).sum()
    }
}

fn err(fd: i32, op: &'static str) -> SockQueueError {
    SockQueueError::Sys {
        fd,
        op,
        source: std::io::Error::last_os_error(),
    }
}

fn get_int(fd: i32, level: i32, opt: i32, op: &'static str) -> Result<i32, SockQueueError> {
    let mut v: i32 = 0;
    let mut l = libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `l` bytes into the int.
    if unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut l) } < 0 {
        return Err(err(fd, op));
    }
    Ok(v)
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32, op: &'static str) -> Result<(), SockQueueError> {
    let l = libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap_or(4);
    // SAFETY: passes a live int of `l` bytes.
    if unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), l) } < 0 {
        return Err(err(fd, op));
    }
    Ok(())
}

/// What one peek returned.
struct Peeked {
    len: usize,
    from: Option<String>,
    fds: usize,
    truncated: bool,
}

/// One peek, or None at the end of the queue.
fn peek_one(fd: i32, buf: &mut [u8]) -> Result<Option<Peeked>, SockQueueError> {
    // SAFETY: sockaddr_un is plain old data; zeroed is valid.
    let mut from: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut ctrl = [0u64; 64]; // 512 bytes, 8-aligned for cmsghdr
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain old data; zeroed is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut from as *mut libc::sockaddr_un).cast();
    msg.msg_namelen =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_un>()).unwrap_or(0);
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = ctrl.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&ctrl);
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    // SAFETY: `msg` points to live buffers (`buf` via `iov`, `from`, `ctrl`) of the sizes given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(SockQueueError::Sys {
            fd,
            op: "recvmsg MSG_PEEK",
            source: e,
        });
    }
    // close any descriptors a peek installed in our table
    let mut fds = 0usize;
    // SAFETY: walking the control buffer the kernel filled, with the libc CMSG helpers, bounded
    // by msg_controllen; SCM_RIGHTS payloads are arrays of ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let hdr = libc::CMSG_LEN(0) as usize;
                let n = ((*c).cmsg_len - hdr) / std::mem::size_of::<i32>();
                let p = libc::CMSG_DATA(c).cast::<i32>();
                for k in 0..n {
                    libc::close(std::ptr::read_unaligned(p.add(k)));
                }
                fds += n;
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let name_len = usize::try_from(msg.msg_namelen).unwrap_or(0);
    let path_off = std::mem::size_of::<libc::sa_family_t>();
    let sender = (name_len > path_off).then(|| {
        let raw: Vec<u8> = from.sun_path[..(name_len - path_off).min(from.sun_path.len())]
            .iter()
            .map(|&c| c.to_ne_bytes()[0])
            .collect();
        if raw.first() == Some(&0) {
            format!("@{}", String::from_utf8_lossy(&raw[1..]))
        } else {
            let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        }
    });
    Ok(Some(Peeked {
        len: usize::try_from(n).unwrap_or(0),
        from: sender,
        fds,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
    }))
}

/// Reads the receive queue of unix socket `fd` without consuming it.
pub fn peek_queue(fd: BorrowedFd<'_>) -> Result<QueueDump, SockQueueError> {
    let raw = fd.as_raw_fd();
    let sock_type = get_int(raw, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt SO_TYPE")?;
    let saved = get_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_PEEK_OFF,
        "getsockopt SO_PEEK_OFF",
    )?;
    set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_PEEK_OFF,
        0,
        "setsockopt SO_PEEK_OFF",
    )?;
    let r = walk(raw, sock_type);
    let back = set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_PEEK_OFF,
        saved,
        "restore SO_PEEK_OFF",
    );
    let messages = r?;
    back?;
    Ok(QueueDump {
        sock_type,
        messages,
    })
}

fn walk(fd: i32, sock_type: i32) -> Result<Vec<QueuedMessage>, SockQueueError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let mut fds = 0usize;
    let stream = sock_type == libc::SOCK_STREAM;
    // one buffer large enough for any datagram a default-configured sender can queue (its
    // SO_SNDBUF bounds a datagram); a larger one is reported, never split
    let mut buf = vec![0u8; if stream { 64 * 1024 } else { MAX_DATAGRAM }];
    let mut data = Vec::new();
    while let Some(p) = peek_one(fd, &mut buf)? {
        fds += p.fds;
        if stream {
            if p.len == 0 {
                break;
            }
            data.extend_from_slice(&buf[..p.len]);
            total = data.len();
        } else {
            if p.truncated {
                return Err(SockQueueError::TooLarge { fd, bytes: p.len });
            }
            total += p.len;
            out.push(QueuedMessage {
                data: buf[..p.len].to_vec(),
                from: p.from,
            });
            if p.len == 0 {
                // a zero-length datagram does not advance the peek offset: nothing behind it can
                // be seen, so refuse rather than dump a shortened queue
                return Err(SockQueueError::ZeroLengthDatagram {
                    fd,
                    index: out.len() - 1,
                });
            }
        }
        if total > MAX_QUEUE {
            return Err(SockQueueError::TooLarge { fd, bytes: total });
        }
    }
    if fds > 0 {
        return Err(SockQueueError::FdsInFlight { fd, count: fds });
    }
    if stream && !data.is_empty() {
        out.push(QueuedMessage { data, from: None });
    }
    Ok(out)
}

/// Refills a restored socket's receive queue by sending `dump`'s messages from its connected
/// peer `peer` (message boundaries kept for datagram and seqpacket sockets).
pub fn refill_via_peer(peer: BorrowedFd<'_>, dump: &QueueDump) -> Result<(), SockQueueError> {
    let raw = peer.as_raw_fd();
    for m in &dump.messages {
        let mut off = 0;
        loop {
            let rest = &m.data[off..];
            // SAFETY: sends `rest.len()` bytes from a live slice.
            let n =
                unsafe { libc::send(raw, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(raw, "send (refill)"));
            }
            off += usize::try_from(n).unwrap_or(0);
            if off >= m.data.len() || dump.sock_type != libc::SOCK_STREAM {
                break;
            }
        }
    }
    Ok(())
}
