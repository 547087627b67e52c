//! Socket identification through `NETLINK_SOCK_DIAG`: unix sockets (type, state, bound name,
//! peer inode, queue lengths, pending connections of listeners, shutdown state) and inet
//! sockets (TCP/UDP over IPv4/IPv6: state, addresses, queue lengths, inode, uid).
//!
//! Chosen over `/proc/net/{unix,tcp,udp}` because it is exact and complete here: `/proc/net/unix`
//! has no peer inode (needed to pair socketpair ends and connected sockets), and the text tables
//! truncate nothing but need per-family parsing. sock_diag answers for the network namespace the
//! netlink socket was *created* in: [`SockDiag::open_in_netns_of`] creates it inside a target's
//! namespace.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const UDIAG_SHOW_NAME: u32 = 0x01;
const UDIAG_SHOW_VFS: u32 = 0x02;
const UDIAG_SHOW_PEER: u32 = 0x04;
const UDIAG_SHOW_ICONS: u32 = 0x08;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UDIAG_SHOW_UID: u32 = 0x40;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;
const UNIX_DIAG_UID: u16 = 7;
/// Largest reply accepted per recv (bounded reads).
const RECV_BUF: usize = 256 * 1024;

/// Why a sock_diag query failed.
#[derive(Debug, thiserror::Error)]
pub enum SockDiagError {
    /// Creating or using the netlink socket failed.
    #[error("sock_diag: {op}: {source}")]
    Sys {
        /// what was done
        op: String,
        /// the OS error
        source: std::io::Error,
    },
    /// The kernel answered with an error (e.g. `ENOENT`: the diag module for this family is
    /// missing).
    #[error("sock_diag {what}: kernel returned {source}")]
    Kernel {
        /// the query
        what: &'static str,
        /// decoded errno
        source: std::io::Error,
    },
    /// A reply did not parse.
    #[error("sock_diag {what}: malformed reply: {why}")]
    Malformed {
        /// the query
        what: &'static str,
        /// what is wrong
        why: &'static str,
    },
}

/// A unix socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnixSock {
    /// socket inode (`socket:[INO]` in /proc/PID/fd)
    pub ino: u64,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5)
    pub sock_type: u8,
    /// `TCP_*`-numbered state: 1 established/connected, 7 unconnected, 10 listening
    pub state: u8,
    /// bound name: a path, or `@name` for the abstract namespace; None if unbound
    pub name: Option<String>,
    /// the bound file's (inode, device), if bound to a path
    pub vfs: Option<(u32, u32)>,
    /// inode of the peer socket (0 if none)
    pub peer: u64,
    /// bytes queued for reading (listeners: connections waiting to be accepted)
    pub rqueue: u32,
    /// bytes queued for sending (listeners: backlog limit)
    pub wqueue: u32,
    /// inodes of connections waiting in a listener's accept queue
    pub icons: Vec<u32>,
    /// shutdown state (`SHUT_RD`+1 bits: 1 read, 2 write)
    pub shutdown: u8,
    /// owner uid
    pub uid: Option<u32>,
}

/// An inet (TCP/UDP) socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InetSock {
    /// `IPPROTO_TCP` or `IPPROTO_UDP`
    pub protocol: u8,
    /// `TCP_*` state (UDP: 7 unconnected, 1 connected)
    pub state: u8,
    /// local address
    pub local: SocketAddr,
    /// remote address (unspecified:0 if none)
    pub remote: SocketAddr,
    /// bound interface index
    pub ifindex: u32,
    /// receive queue (TCP listen: accept backlog)
    pub rqueue: u32,
    /// send queue (TCP listen: backlog limit)
    pub wqueue: u32,
    /// owner uid
    pub uid: u32,
    /// socket inode (0 for TIME_WAIT/request sockets)
    pub ino: u64,
}

/// A sock_diag netlink socket.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

fn sys(op: impl Into<String>) -> SockDiagError {
    SockDiagError::Sys {
        op: op.into(),
        source: std::io::Error::last_os_error(),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_ne_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Iterates `struct rtattr` (u16 len, u16 type, payload, 4-aligned) over `b`.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut v = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16_at(b, 0));
        let ty = u16_at(b, 2);
        if len < 4 || len > b.len() {
            break;
        }
        v.push((ty, &b[4..len]));
        let adv = (len + 3) & !3;
        if adv >= b.len() {
            break;
        }
        b = &b[adv..];
    }
    v
}

impl SockDiag {
    /// Opens a sock_diag socket in the caller's network namespace.
    pub fn open() -> Result<Self, SockDiagError> {
        // SAFETY: socket() has no memory arguments; the result is checked.
        let r = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if r < 0 {
            return Err(sys("socket(AF_NETLINK, NETLINK_SOCK_DIAG)"));
        }
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(r) };
        Ok(Self { fd, seq: 0 })
    }

    /// Opens a sock_diag socket inside the network namespace of `pid` (a helper thread joins
    /// the namespace, creates the socket and exits; the socket keeps answering for that
    /// namespace).
    pub fn open_in_netns_of(pid: i32) -> Result<Self, SockDiagError> {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|source| {
            SockDiagError::Sys {
                op: format!("open /proc/{pid}/ns/net"),
                source,
            }
        })?;
        std::thread::spawn(move || {
            // SAFETY: setns with a namespace fd we own; affects only this helper thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(sys(format!(
                    "setns into the network namespace of pid {pid}"
                )));
            }
            Self::open()
        })
        .join()
        .map_err(|_| SockDiagError::Sys {
            op: "netns helper thread".into(),
            source: std::io::Error::other("panicked"),
        })?
    }

    fn query(&mut self, what: &'static str, req: &[u8]) -> Result<Vec<Vec<u8>>, SockDiagError> {
        self.seq = self.seq.wrapping_add(1);
        let total = u32::try_from(16 + req.len()).unwrap_or(0);
        let mut msg = Vec::with_capacity(16 + req.len());
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(req);
        // SAFETY: sends `msg.len()` bytes from `msg` on our netlink socket (to the kernel, since
        // an unconnected netlink socket's default destination is pid 0).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(sys(format!("send {what} request")));
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: receives at most `buf.len()` bytes into `buf`.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(sys(format!("recv {what} reply")));
            }
            let n = usize::try_from(n).unwrap_or(0);
            if n == 0 {
                return Err(SockDiagError::Malformed {
                    what,
                    why: "empty reply",
                });
            }
            let mut b = &buf[..n];
            while b.len() >= 16 {
                let len = usize::try_from(u32_at(b, 0)).unwrap_or(0);
                let ty = u16_at(b, 4);
                if len < 16 || len > b.len() {
                    return Err(SockDiagError::Malformed {
                        what,
                        why: "bad nlmsg length",
                    });
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let err = if len >= 20 {
                            i32::from_ne_bytes([b[16], b[17], b[18], b[19]])
                        } else {
                            -libc::EIO
                        };
                        return Err(SockDiagError::Kernel {
                            what,
                            source: std::io::Error::from_raw_os_error(-err),
                        });
                    }
                    _ => out.push(b[16..len].to_vec()),
                }
                let adv = (len + 3) & !3;
                if adv >= b.len() {
                    break;
                }
                b = &b[adv..];
            }
        }
    }

    /// Every unix socket of the namespace.
    pub fn unix_sockets(&mut self) -> Result<Vec<UnixSock>, SockDiagError> {
        const WHAT: &str = "unix";
        // struct unix_diag_req { u8 family, protocol; u16 pad; u32 states, ino, show; u32 cookie[2]; }
        let mut req = Vec::with_capacity(24);
        req.push(u8::try_from(libc::AF_UNIX).unwrap_or(1));
        req.extend_from_slice(&[0, 0, 0]);
        req.extend_from_slice(&u32::MAX.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        let show = UDIAG_SHOW_NAME
            | UDIAG_SHOW_VFS
            | UDIAG_SHOW_PEER
            | UDIAG_SHOW_ICONS
            | UDIAG_SHOW_RQLEN
            | UDIAG_SHOW_UID;
        req.extend_from_slice(&show.to_ne_bytes());
        req.extend_from_slice(&[0xff; 8]);
        let mut v = Vec::new();
        for m in self.query(WHAT, &req)? {
            // struct unix_diag_msg { u8 family, type, state, pad; u32 ino; u32 cookie[2]; }
            if m.len() < 16 {
                return Err(SockDiagError::Malformed {
                    what: WHAT,
                    why: "short unix_diag_msg",
                });
            }
            let mut s = UnixSock {
                ino: u64::from(u32_at(&m, 4)),
                sock_type: m[1],
                state: m[2],
                name: None,
                vfs: None,
                peer: 0,
                rqueue: 0,
                wqueue: 0,
                icons: Vec::new(),
                shutdown: 0,
                uid: None,
            };
            for (ty, p) in attrs(&m[16..]) {
                match ty {
                    UNIX_DIAG_NAME => {
                        s.name = Some(if p.first() == Some(&0) {
                            format!("@{}", String::from_utf8_lossy(&p[1..]))
                        } else {
                            let end = p.iter().position(|&c| c == 0).unwrap_or(p.len());
                            String::from_utf8_lossy(&p[..end]).into_owned()
                        });
                    }
                    UNIX_DIAG_VFS if p.len() >= 8 => s.vfs = Some((u32_at(p, 0), u32_at(p, 4))),
                    UNIX_DIAG_PEER if p.len() >= 4 => s.peer = u64::from(u32_at(p, 0)),
                    UNIX_DIAG_ICONS => s.icons = p.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
                    UNIX_DIAG_RQLEN if p.len() >= 8 => {
                        (s.rqueue, s.wqueue) = (u32_at(p, 0), u32_at(p, 4))
                    }
                    UNIX_DIAG_SHUTDOWN if !p.is_empty() => s.shutdown = p[0],
                    UNIX_DIAG_UID if p.len() >= 4 => s.uid = Some(u32_at(p, 0)),
                    _ => {}
                }
            }
            v.push(s);
        }
        Ok(v)
    }

    /// Every inet socket of `family` (`AF_INET`/`AF_INET6`) and `protocol`
    /// (`IPPROTO_TCP`/`IPPROTO_UDP`) in the namespace, in every state.
    pub fn inet_sockets(
        &mut self,
        family: i32,
        protocol: i32,
    ) -> Result<Vec<InetSock>, SockDiagError> {
        const WHAT: &str = "inet";
        let fam = u8::try_from(family).map_err(|_| SockDiagError::Malformed {
            what: WHAT,
            why: "family",
        })?;
        let proto = u8::try_from(protocol).map_err(|_| SockDiagError::Malformed {
            what: WHAT,
            why: "protocol",
        })?;
        // struct inet_diag_req_v2 { u8 family, protocol, ext, pad; u32 states; inet_diag_sockid id (48) }
        let mut req = vec![fam, proto, 0, 0];
        req.extend_from_slice(&u32::MAX.to_ne_bytes());
        req.extend_from_slice(&[0u8; 48]);
        let mut v = Vec::new();
        for m in self.query(WHAT, &req)? {
            // struct inet_diag_msg { u8 family, state, timer, retrans; sockid (48); u32 expires,
            // rqueue, wqueue, uid, inode; }
            if m.len() < 72 {
                return Err(SockDiagError::Malformed {
                    what: WHAT,
                    why: "short inet_diag_msg",
                });
            }
            let sport = u16::from_be_bytes([m[4], m[5]]);
            let dport = u16::from_be_bytes([m[6], m[7]]);
            let addr = |o: usize| -> IpAddr {
                if i32::from(m[0]) == libc::AF_INET {
                    IpAddr::V4(Ipv4Addr::new(m[o], m[o + 1], m[o + 2], m[o + 3]))
                } else {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&m[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
            };
            v.push(InetSock {
                protocol: proto,
                state: m[1],
                local: SocketAddr::new(addr(8), sport),
                remote: SocketAddr::new(addr(24), dport),
                ifindex: u32_at(&m, 40),
                rqueue: u32_at(&m, 56),
                wqueue: u32_at(&m, 60),
                uid: u32_at(&m, 64),
                ino: u64::from(u32_at(&m, 68)),
            });
        }
        Ok(v)
    }

    /// Every TCP and UDP socket over IPv4 and IPv6.
    pub fn all_inet(&mut self) -> Result<Vec<InetSock>, SockDiagError> {
        let mut v = Vec::new();
        for fam in [libc::AF_INET, libc::AF_INET6] {
            for proto in [libc::IPPROTO_TCP, libc::IPPROTO_UDP] {
                v.extend(self.inet_sockets(fam, proto)?);
            }
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_walk_is_bounded() {
        // one NAME attr "ab\0" (len 7 -> padded 8), then a truncated header
        let b = [7u8, 0, 0, 0, b'a', b'b', 0, 0, 9, 0];
        let a = attrs(&b);
        assert_eq!(a, vec![(0u16, &b"ab\0"[..])]);
        assert!(attrs(&[2, 0, 0, 0]).is_empty());
        assert!(attrs(&[200, 0, 0, 0, 1]).is_empty());
    }
}
