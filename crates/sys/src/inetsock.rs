//! Listening TCP sockets and UDP sockets: their state (bound and peer addresses, backlog, reuse
//! options) and their re-creation at restore. Established TCP connections are
//! [`crate::tcp_repair`]'s job.
//!
//! A listener's accept queue (connections the kernel completed but the application has not
//! accepted yet) cannot be carried: they are refused with [`InetSockError::PendingConnections`]
//! unless the caller accepts losing them (the peers see a reset when the old socket closes).
//! A UDP socket's queued datagrams are not carried either (UDP may drop them; report the count).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::tcp_repair::{from_sockaddr, to_sockaddr};

/// Why a listener or UDP socket could not be dumped or re-created.
#[derive(Debug, thiserror::Error)]
pub enum InetSockError {
    /// A socket call failed.
    #[error("socket fd {fd}: {op}: {source}")]
    Sys {
        /// the socket
        fd: i32,
        /// what was done
        op: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// Connections are waiting in the accept queue.
    #[error("listening socket fd {fd} on {addr}: {count} connection(s) waiting to be accepted cannot be checkpointed")]
    PendingConnections {
        /// the socket
        fd: i32,
        /// its address
        addr: SocketAddr,
        /// how many
        count: u32,
    },
    /// The socket is not of the expected kind.
    #[error("socket fd {fd}: {why}")]
    Kind {
        /// the socket
        fd: i32,
        /// what it is instead
        why: String,
    },
}

fn err(fd: i32, op: &'static str) -> InetSockError {
    InetSockError::Sys {
        fd,
        op,
        source: std::io::Error::last_os_error(),
    }
}

fn get_int(fd: i32, level: i32, opt: i32, op: &'static str) -> Result<i32, InetSockError> {
    let mut v: i32 = 0;
    let mut l = libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap_or(4);
    // SAFETY: the kernel writes at most `l` bytes into the int.
    if unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut i32).cast(), &mut l) } < 0 {
        return Err(err(fd, op));
    }
    Ok(v)
}

fn set_int(fd: i32, level: i32, opt: i32, v: i32, op: &'static str) -> Result<(), InetSockError> {
    let l = libc::socklen_t::try_from(std::mem::size_of::<i32>()).unwrap_or(4);
    // SAFETY: passes a live int of `l` bytes.
    if unsafe { libc::setsockopt(fd, level, opt, (&v as *const i32).cast(), l) } < 0 {
        return Err(err(fd, op));
    }
    Ok(())
}

fn name(fd: i32, peer: bool) -> Result<Option<SocketAddr>, InetSockError> {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or(0);
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if peer && e.raw_os_error() == Some(libc::ENOTCONN) {
            return Ok(None);
        }
        return Err(InetSockError::Sys {
            fd,
            op: if peer { "getpeername" } else { "getsockname" },
            source: e,
        });
    }
    Ok(from_sockaddr(&ss))
}

/// Options common to both kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ReuseOpts {
    /// `SO_REUSEADDR`
    pub reuseaddr: bool,
    /// `SO_REUSEPORT`
    pub reuseport: bool,
    /// `IPV6_V6ONLY` (IPv6 sockets)
    pub v6only: bool,
}

fn reuse_opts(fd: i32, v6: bool) -> Result<ReuseOpts, InetSockError> {
    Ok(ReuseOpts {
        reuseaddr: get_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            "getsockopt SO_REUSEADDR",
        )? != 0,
        reuseport: get_int(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            "getsockopt SO_REUSEPORT",
        )? != 0,
        v6only: v6
            && get_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                "getsockopt IPV6_V6ONLY",
            )? != 0,
    })
}

fn new_socket(addr: &SocketAddr, ty: i32, opts: &ReuseOpts) -> Result<OwnedFd, InetSockError> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() has no memory arguments; the result is checked.
    let raw = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(err(-1, "socket"));
    }
    // SAFETY: a fresh fd owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        i32::from(opts.reuseaddr),
        "setsockopt SO_REUSEADDR",
    )?;
    set_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_REUSEPORT,
        i32::from(opts.reuseport),
        "setsockopt SO_REUSEPORT",
    )?;
    if addr.is_ipv6() {
        set_int(
            raw,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            i32::from(opts.v6only),
            "setsockopt IPV6_V6ONLY",
        )?;
    }
    let (sa, sl) = to_sockaddr(addr);
    // SAFETY: `sa` holds a valid sockaddr of length `sl`.
    if unsafe { libc::bind(raw, (&sa as *const libc::sockaddr_storage).cast(), sl) } < 0 {
        return Err(err(raw, "bind to the recorded address"));
    }
    Ok(fd)
}

/// A listening TCP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenState {
    /// bound address
    pub addr: SocketAddr,
    /// backlog given to `listen` (from sock_diag: the listener's `wqueue`)
    pub backlog: u32,
    /// reuse options
    pub opts: ReuseOpts,
}

/// Reads a listening socket's state. `backlog` and `pending` come from sock_diag
/// ([`crate::sockdiag::InetSock::wqueue`] / `rqueue` of the same inode); `pending > 0` is refused
/// unless `allow_pending` (those connections are then lost).
pub fn dump_listener(
    fd: BorrowedFd<'_>,
    backlog: u32,
    pending: u32,
    allow_pending: bool,
) -> Result<ListenState, InetSockError> {
    let raw = fd.as_raw_fd();
    if get_int(
        raw,
        libc::SOL_SOCKET,
        libc::SO_ACCEPTCONN,
        "getsockopt SO_ACCEPTCONN",
    )? == 0
    {
        return Err(InetSockError::Kind {
            fd: raw,
            why: "not a listening socket".into(),
        });
    }
    let addr = name(raw, false)?.ok_or_else(|| InetSockError::Kind {
        fd: raw,
        why: "not an inet socket".into(),
    })?;
    if pending > 0 && !allow_pending {
        return Err(InetSockError::PendingConnections {
            fd: raw,
            addr,
            count: pending,
        });
    }
    Ok(ListenState {
        addr,
        backlog,
        opts: reuse_opts(raw, addr.is_ipv6())?,
    })
}

/// Re-creates a listener: same options, bound to the same address, listening with the same
/// backlog.
pub fn restore_listener(st: &ListenState) -> Result<OwnedFd, InetSockError> {
    let fd = new_socket(&st.addr, libc::SOCK_STREAM, &st.opts)?;
    let backlog = i32::try_from(st.backlog).unwrap_or(i32::MAX);
    // SAFETY: listen on our bound socket; no memory arguments.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(err(fd.as_raw_fd(), "listen"));
    }
    Ok(fd)
}

/// A UDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpState {
    /// bound address (port 0 if never bound)
    pub local: SocketAddr,
    /// connected peer, if any
    pub peer: Option<SocketAddr>,
    /// reuse options
    pub opts: ReuseOpts,
}

/// Reads a UDP socket's state.
pub fn dump_udp(fd: BorrowedFd<'_>) -> Result<UdpState, InetSockError> {
    let raw = fd.as_raw_fd();
    if get_int(raw, libc::SOL_SOCKET, libc::SO_TYPE, "getsockopt SO_TYPE")? != libc::SOCK_DGRAM {
        return Err(InetSockError::Kind {
            fd: raw,
            why: "not a datagram socket".into(),
        });
    }
    let local = name(raw, false)?.ok_or_else(|| InetSockError::Kind {
        fd: raw,
        why: "not an inet socket".into(),
    })?;
    Ok(UdpState {
        local,
        peer: name(raw, true)?,
        opts: reuse_opts(raw, local.is_ipv6())?,
    })
}

/// Re-creates a UDP socket: bound to the same address (if it was bound) and connected to the same
/// peer (if it was connected).
pub fn restore_udp(st: &UdpState) -> Result<OwnedFd, InetSockError> {
    let fd = new_socket(&st.local, libc::SOCK_DGRAM, &st.opts)?;
    if let Some(p) = &st.peer {
        let (pa, pl) = to_sockaddr(p);
        // SAFETY: `pa` holds a valid sockaddr of length `pl`.
        if unsafe {
            libc::connect(
                fd.as_raw_fd(),
                (&pa as *const libc::sockaddr_storage).cast(),
                pl,
            )
        } < 0
        {
            return Err(err(fd.as_raw_fd(), "connect to the recorded peer"));
        }
    }
    Ok(fd)
}
