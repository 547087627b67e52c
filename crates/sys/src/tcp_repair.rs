//! Checkpoint and restore of established TCP connections with `TCP_REPAIR`
//! (kernel-facts `t06_tcprepair.c`).
//!
//! Dump ([`Repair::enter`] + [`Repair::dump`]): put the socket in repair mode (it stops sending;
//! closing it now sends neither FIN nor RST), read the addresses, the sequence numbers
//! (`TCP_QUEUE_SEQ` of the receive queue = `rcv_nxt`, of the send queue = `write_seq`), the
//! queued bytes (receive queue with `MSG_PEEK`; send queue with `TCP_REPAIR_QUEUE` + `MSG_PEEK`,
//! split into the part already sent but unacknowledged and the part never sent,
//! `SIOCOUTQNSD`), the window (`TCP_REPAIR_WINDOW`), the negotiated options (MSS, window
//! scales, SACK, timestamps from `TCP_INFO`; `TCP_TIMESTAMP`) and a few socket options.
//!
//! Restore ([`restore`], or [`restore_in_repair`] then [`finish_restore`] to re-create many
//! sockets before any of them talks): create a socket in repair mode, set both sequence numbers,
//! bind and connect to the recorded addresses (no SYN is sent; repair mode forces address
//! reuse), set the options and timestamp, refill the receive queue and the sent part of the
//! send queue, set the window, leave repair mode, and send the never-sent part normally.
//!
//! The fd may be local or pulled from a target with [`crate::fdpull`] (a pulled fd shares the
//! socket: entering repair mode through it freezes the target's connection).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use serde::{Deserialize, Serialize};

const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MAXSEG: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERMITTED: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u8 = 1;
const TCPI_OPT_SACK: u8 = 2;
const TCPI_OPT_WSCALE: u8 = 4;
const SIOCINQ: libc::Ioctl = 0x541B;
const SIOCOUTQ: libc::Ioctl = 0x5411;
const SIOCOUTQNSD: libc::Ioctl = 0x894B;
const TCP_ESTABLISHED: u8 = 1;
/// Largest queue this module accepts (a bound on what a corrupt image can make us allocate).
pub const MAX_QUEUE: usize = 64 << 20;

/// Why a TCP repair step failed.
#[derive(Debug, thiserror::Error)]
pub enum TcpRepairError {
    /// A socket call failed.
    #[error("tcp socket fd {fd}: {op}: {source}")]
    Sys {
        /// the socket
        fd: i32,
        /// what was done
        op: &'static str,
        /// the OS error
        source: std::io::Error,
    },
    /// Only established connections can be dumped this way.
    #[error(
        "tcp socket fd {fd}: state {state} ({name}) cannot be checkpointed, only ESTABLISHED (1)"
    )]
    State {
        /// the socket
        fd: i32,
        /// `tcpi_state`
        state: u8,
        /// its name
        name: &'static str,
    },
    /// Peeking a queue returned a different length than the queue size.
    #[error("tcp socket fd {fd}: {queue} queue: peeked {got} bytes of {want}")]
    ShortPeek {
        /// the socket
        fd: i32,
        /// which queue
        queue: &'static str,
        /// bytes read
        got: usize,
        /// queue size
        want: usize,
    },
    /// The state is inconsistent (corrupt image).
    #[error("tcp connection {local} -> {peer}: invalid state: {why}")]
    Invalid {
        /// local address
        local: SocketAddr,
        /// peer address
        peer: SocketAddr,
        /// what is wrong
        why: String,
    },
}

/// `struct tcp_repair_window`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RepairWindow {
    /// `snd_wl1`
    pub snd_wl1: u32,
    /// `snd_wnd`
    pub snd_wnd: u32,
    /// `max_window`
    pub max_window: u32,
    /// `rcv_wnd`
    pub rcv_wnd: u32,
    /// `rcv_wup`
    pub rcv_wup: u32,
}

/// Socket options carried with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TcpSockOpts {
    /// `TCP_NODELAY`
    pub nodelay: bool,
    /// `SO_KEEPALIVE`
    pub keepalive: bool,
    /// `TCP_KEEPIDLE` (seconds)
    pub keepidle: i32,
    /// `TCP_KEEPINTVL` (seconds)
    pub keepintvl: i32,
    /// `TCP_KEEPCNT`
    pub keepcnt: i32,
}

/// Everything needed to re-create one end of an established TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpConnState {
    /// local address (`getsockname`)
    pub local: SocketAddr,
    /// peer address (`getpeername`)
    pub peer: SocketAddr,
    /// `write_seq`: sequence number after the last byte queued for sending
    pub send_seq: u32,
    /// `rcv_nxt`: sequence number after the last byte received
    pub recv_seq: u32,
    /// bytes in the send queue (sent-unacknowledged first, then never sent)
    pub send_queue: Vec<u8>,
    /// how many bytes at the end of `send_queue` were never sent
    pub unsent: u32,
    /// bytes received but not yet read by the application
    pub recv_queue: Vec<u8>,
    /// `TCP_REPAIR_WINDOW` (None if the kernel refused it)
    pub window: Option<RepairWindow>,
    /// negotiated MSS (`TCP_MAXSEG`)
    pub mss: u32,
    /// window scaling negotiated
    pub wscale_ok: bool,
    /// our send window scale
    pub snd_wscale: u8,
    /// our receive window scale
    pub rcv_wscale: u8,
    /// SACK negotiated
    pub sack: bool,
    /// timestamps negotiated
    pub timestamps: bool,
    /// current timestamp clock (`TCP_TIMESTAMP`)
    pub timestamp: u32,
    /// socket options
    pub opts: TcpSockOpts,
}

fn sys_err(fd: i32, op: &'static str) -> TcpRepairError {
    TcpRepairError::Sys {
        fd,
        op,
        source: std::io::Error::last_os_error(),
    }
}

fn setopt<T>(
    fd: i32,
    level: i32,
    opt: i32,
    val: &T,
    op: &'static str,
) -> Result<(), TcpRepairError> {
    let len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `val` points to a live `T` of `len` bytes; the kernel only reads it.
    let r = unsafe { libc::setsockopt(fd, level, opt, (val as *const T).cast(), len) };
    if r < 0 {
        return Err(sys_err(fd, op));
    }
    Ok(())
}

fn setopt_i32(
    fd: i32,
    level: i32,
    opt: i32,
    val: i32,
    op: &'static str,
) -> Result<(), TcpRepairError> {
    setopt(fd, level, opt, &val, op)
}

fn getopt<T: Copy>(
    fd: i32,
    level: i32,
    opt: i32,
    init: T,
    op: &'static str,
) -> Result<T, TcpRepairError> {
    let mut v = init;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<T>()).unwrap_or(0);
    // SAFETY: `v` is a live `T` of `len` bytes that the kernel may write (at most `len` bytes);
    // every `T` used here is plain old data valid for any bit pattern.
    let r = unsafe { libc::getsockopt(fd, level, opt, (&mut v as *mut T).cast(), &mut len) };
    if r < 0 {
        return Err(sys_err(fd, op));
    }
    Ok(v)
}

fn ioctl_int(fd: i32, req: libc::Ioctl, op: &'static str) -> Result<usize, TcpRepairError> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ/SIOCOUTQ/SIOCOUTQNSD write one int to the valid pointer.
    let r = unsafe { libc::ioctl(fd, req, &mut v as *mut libc::c_int) };
    if r < 0 {
        return Err(sys_err(fd, op));
    }
    Ok(usize::try_from(v).unwrap_or(0))
}

/// The kernel's name of TCP state `s` (`include/net/tcp_states.h`).
pub fn state_name(s: u8) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "unknown",
    }
}

/// Converts a socket address to a `sockaddr_storage` and its length.
pub(crate) fn to_sockaddr(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::sa_family_t::try_from(libc::AF_INET6).unwrap_or(10),
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut ss as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, libc::socklen_t::try_from(len).unwrap_or(0))
}

/// Converts a `sockaddr_storage` filled by the kernel to a socket address (inet families only).
pub(crate) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is large enough
            // and aligned for it.
            let at: *const libc::sockaddr_in = (ss as *const libc::sockaddr_storage).cast();
            // SAFETY: `at` points into `ss` (see above).
            let sin = unsafe { std::ptr::read(at) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; storage is large enough
            // and aligned for it.
            let at: *const libc::sockaddr_in6 = (ss as *const libc::sockaddr_storage).cast();
            // SAFETY: `at` points into `ss` (see above).
            let s6 = unsafe { std::ptr::read(at) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(s6.sin6_addr.s6_addr),
                u16::from_be(s6.sin6_port),
                u32::from_be(s6.sin6_flowinfo),
                s6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn sock_name(fd: i32, peer: bool) -> Result<SocketAddr, TcpRepairError> {
    // SAFETY: zeroed sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len =
        libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_storage>()).unwrap_or(0);
    let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: the kernel writes at most `len` bytes of address into `ss`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    let op = if peer { "getpeername" } else { "getsockname" };
    if r < 0 {
        return Err(sys_err(fd, op));
    }
    from_sockaddr(&ss).ok_or(TcpRepairError::Sys {
        fd,
        op,
        source: std::io::Error::other("not an inet address"),
    })
}

/// `TCP_INFO` fields used here: (state, options, snd_wscale, rcv_wscale).
fn tcp_info(fd: i32) -> Result<(u8, u8, u8, u8), TcpRepairError> {
    let b: [u8; 104] = getopt(
        fd,
        libc::IPPROTO_TCP,
        libc::TCP_INFO,
        [0u8; 104],
        "getsockopt TCP_INFO",
    )?;
    // struct tcp_info: u8 state, ca_state, retransmits, probes, backoff, options,
    // then one byte holding snd_wscale:4 (low bits) and rcv_wscale:4.
    Ok((b[0], b[5], b[6] & 0x0f, b[6] >> 4))
}

/// A socket in repair mode. Dropping it leaves repair mode (the connection continues);
/// [`Repair::keep`] leaves the socket in repair mode so that closing it is silent.
#[derive(Debug)]
pub struct Repair<'a> {
    fd: BorrowedFd<'a>,
    active: bool,
}

impl<'a> Repair<'a> {
    /// Checks the socket is an established TCP connection and puts it in repair mode.
    pub fn enter(fd: BorrowedFd<'a>) -> Result<Self, TcpRepairError> {
        let raw = fd.as_raw_fd();
        let (state, ..) = tcp_info(raw)?;
        if state != TCP_ESTABLISHED {
            return Err(TcpRepairError::State {
                fd: raw,
                state,
                name: state_name(state),
            });
        }
        setopt_i32(
            raw,
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            1,
            "setsockopt TCP_REPAIR on (needs CAP_NET_ADMIN)",
        )?;
        Ok(Self { fd, active: true })
    }

    fn peek(&self, queue: i32, len: usize, name: &'static str) -> Result<Vec<u8>, TcpRepairError> {
        let raw = self.fd.as_raw_fd();
        setopt_i32(
            raw,
            libc::IPPROTO_TCP,
            TCP_REPAIR_QUEUE,
            queue,
            "setsockopt TCP_REPAIR_QUEUE",
        )?;
        let mut buf = vec![0u8; len];
        let mut got = 0usize;
        if len > 0 {
            // SAFETY: receives at most `len` bytes into `buf`, which holds `len` bytes.
            let n = unsafe {
                libc::recv(
                    raw,
                    buf.as_mut_ptr().cast(),
                    len,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                return Err(sys_err(raw, "recv MSG_PEEK"));
            }
            got = usize::try_from(n).unwrap_or(0);
        }
        if got != len {
            return Err(TcpRepairError::ShortPeek {
                fd: raw,
                queue: name,
                got,
                want: len,
            });
        }
        Ok(buf)
    }

    /// Reads the connection's state (the socket stays in repair mode).
    pub fn dump(&self) -> Result<TcpConnState, TcpRepairError> {
        let raw = self.fd.as_raw_fd();
        let local = sock_name(raw, false)?;
        let peer = sock_name(raw, true)?;
        let inq = ioctl_int(raw, SIOCINQ, "ioctl SIOCINQ")?;
        let outq = ioctl_int(raw, SIOCOUTQ, "ioctl SIOCOUTQ")?;
        let unsent = ioctl_int(raw, SIOCOUTQNSD, "ioctl SIOCOUTQNSD")?;
        let recv_queue = self.peek(TCP_RECV_QUEUE, inq, "receive")?;
        let recv_seq: u32 = getopt(
            raw,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            0u32,
            "getsockopt TCP_QUEUE_SEQ (recv)",
        )?;
        let send_queue = self.peek(TCP_SEND_QUEUE, outq, "send")?;
        let send_seq: u32 = getopt(
            raw,
            libc::IPPROTO_TCP,
            TCP_QUEUE_SEQ,
            0u32,
            "getsockopt TCP_QUEUE_SEQ (send)",
        )?;
        setopt_i32(
            raw,
            libc::IPPROTO_TCP,
            TCP_REPAIR_QUEUE,
            TCP_NO_QUEUE,
            "setsockopt TCP_REPAIR_QUEUE",
        )?;
        let window = getopt(
            raw,
            libc::IPPROTO_TCP,
            TCP_REPAIR_WINDOW,
            RepairWindow::default(),
            "TCP_REPAIR_WINDOW",
        )
        .ok();
        let timestamp: u32 = getopt(
            raw,
            libc::IPPROTO_TCP,
            TCP_TIMESTAMP,
            0u32,
            "getsockopt TCP_TIMESTAMP",
        )?;
        let mss: i32 = getopt(
            raw,
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            0i32,
            "getsockopt TCP_MAXSEG",
        )?;
        let (_, options, snd_wscale, rcv_wscale) = tcp_info(raw)?;
        let geti = |level, opt, op| getopt(raw, level, opt, 0i32, op);
        let opts = TcpSockOpts {
            nodelay: geti(
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                "getsockopt TCP_NODELAY",
            )? != 0,
            keepalive: geti(
                libc::SOL_SOCKET,
                libc::SO_KEEPALIVE,
                "getsockopt SO_KEEPALIVE",
            )? != 0,
            keepidle: geti(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPIDLE,
                "getsockopt TCP_KEEPIDLE",
            )?,
            keepintvl: geti(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPINTVL,
                "getsockopt TCP_KEEPINTVL",
            )?,
            keepcnt: geti(
                libc::IPPROTO_TCP,
                libc::TCP_KEEPCNT,
                "getsockopt TCP_KEEPCNT",
            )?,
        };
        Ok(TcpConnState {
            local,
            peer,
            send_seq,
            recv_seq,
            send_queue,
            unsent: u32::try_from(unsent.min(outq)).unwrap_or(0),
            recv_queue,
            window,
            mss: u32::try_from(mss).unwrap_or(0),
            wscale_ok: options & TCPI_OPT_WSCALE != 0,
            snd_wscale,
            rcv_wscale,
            sack: options & TCPI_OPT_SACK != 0,
            timestamps: options & TCPI_OPT_TIMESTAMPS != 0,
            timestamp,
            opts,
        })
    }

    /// Leaves the socket in repair mode: closing it (here and in every process sharing it)
    /// then sends nothing to the peer. Use after a successful dump when the original process
    /// is killed.
    pub fn keep(mut self) {
        self.active = false;
    }

    /// Leaves repair mode: the connection continues as before (dump failed, or
    /// `--leave-running`).
    pub fn leave(mut self) -> Result<(), TcpRepairError> {
        self.active = false;
        setopt_i32(
            self.fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            0,
            "setsockopt TCP_REPAIR off",
        )
    }
}

impl Drop for Repair<'_> {
    fn drop(&mut self) {
        if self.active {
            let _ = setopt_i32(
                self.fd.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_REPAIR,
                0,
                "setsockopt TCP_REPAIR off",
            );
        }
    }
}

/// Dumps `fd` and leaves it in repair mode (so closing it is silent). On error the socket is
/// back in normal mode.
pub fn dump_and_freeze(fd: BorrowedFd<'_>) -> Result<TcpConnState, TcpRepairError> {
    let r = Repair::enter(fd)?;
    let s = r.dump()?;
    r.keep();
    Ok(s)
}

impl TcpConnState {
    fn invalid(&self, why: impl Into<String>) -> TcpRepairError {
        TcpRepairError::Invalid {
            local: self.local,
            peer: self.peer,
            why: why.into(),
        }
    }

    /// Checks internal consistency (for states read from an image).
    pub fn validate(&self) -> Result<(), TcpRepairError> {
        if self.send_queue.len() > MAX_QUEUE || self.recv_queue.len() > MAX_QUEUE {
            return Err(self.invalid("queue larger than 64 MiB"));
        }
        if usize::try_from(self.unsent).unwrap_or(usize::MAX) > self.send_queue.len() {
            return Err(self.invalid("unsent part longer than the send queue"));
        }
        if self.local.is_ipv4() != self.peer.is_ipv4() {
            return Err(self.invalid("local and peer address families differ"));
        }
        if self.mss == 0 {
            return Err(self.invalid("mss is 0"));
        }
        Ok(())
    }

    fn sent_part(&self) -> &[u8] {
        let unsent = usize::try_from(self.unsent).unwrap_or(0);
        &self.send_queue[..self.send_queue.len() - unsent]
    }

    fn unsent_part(&self) -> &[u8] {
        let unsent = usize::try_from(self.unsent).unwrap_or(0);
        &self.send_queue[self.send_queue.len() - unsent..]
    }
}

fn queue_len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn send_all(fd: i32, mut data: &[u8], op: &'static str) -> Result<(), TcpRepairError> {
    while !data.is_empty() {
        let chunk = data.len().min(64 * 1024);
        // SAFETY: sends `chunk` bytes from `data`, which holds at least that many.
        let n = unsafe { libc::send(fd, data.as_ptr().cast(), chunk, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(TcpRepairError::Sys { fd, op, source: e });
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n == 0 {
            return Err(TcpRepairError::Sys {
                fd,
                op,
                source: std::io::Error::other("sent 0 bytes"),
            });
        }
        data = &data[n..];
    }
    Ok(())
}

/// Re-creates the socket in repair mode: sequence numbers, addresses (bind + connect without a
/// handshake), options, queues, window. Call [`finish_restore`] to make it live.
pub fn restore_in_repair(st: &TcpConnState) -> Result<OwnedFd, TcpRepairError> {
    st.validate()?;
    let family = if st.local.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket() has no memory arguments; the result is checked.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if raw < 0 {
        return Err(sys_err(-1, "socket"));
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tcp = libc::IPPROTO_TCP;
    // SO_REUSEADDR first: entering repair mode then upgrades reuse to "force" (the kernel's
    // SK_FORCE_REUSE), which lets the bind share the port with live sockets (a listener, other
    // connections); setting SO_REUSEADDR after repair-on would downgrade it again.
    setopt_i32(
        raw,
        libc::SOL_SOCKET,
        libc::SO_REUSEADDR,
        1,
        "setsockopt SO_REUSEADDR",
    )?;
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR,
        1,
        "setsockopt TCP_REPAIR on (needs CAP_NET_ADMIN)",
    )?;
    let inq = queue_len_u32(st.recv_queue.len());
    let outq = queue_len_u32(st.send_queue.len());
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "setsockopt TCP_REPAIR_QUEUE recv",
    )?;
    setopt(
        raw,
        tcp,
        TCP_QUEUE_SEQ,
        &st.recv_seq.wrapping_sub(inq),
        "setsockopt TCP_QUEUE_SEQ recv",
    )?;
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "setsockopt TCP_REPAIR_QUEUE send",
    )?;
    setopt(
        raw,
        tcp,
        TCP_QUEUE_SEQ,
        &st.send_seq.wrapping_sub(outq),
        "setsockopt TCP_QUEUE_SEQ send",
    )?;
    if st.local.is_ipv6() {
        // a v6 socket bound to a v4-mapped address must allow v4
        let _ = setopt_i32(
            raw,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            0,
            "setsockopt IPV6_V6ONLY",
        );
    }
    let (la, ll) = to_sockaddr(&st.local);
    // SAFETY: `la` holds a valid sockaddr of length `ll`.
    if unsafe { libc::bind(raw, (&la as *const libc::sockaddr_storage).cast(), ll) } < 0 {
        return Err(sys_err(raw, "bind to the recorded local address"));
    }
    let (pa, pl) = to_sockaddr(&st.peer);
    // SAFETY: `pa` holds a valid sockaddr of length `pl`; in repair mode connect sends no SYN.
    if unsafe { libc::connect(raw, (&pa as *const libc::sockaddr_storage).cast(), pl) } < 0 {
        return Err(sys_err(raw, "connect (repair mode) to the recorded peer"));
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Opt {
        code: u32,
        val: u32,
    }
    let mut o = Vec::with_capacity(4);
    o.push(Opt {
        code: TCPOPT_MAXSEG,
        val: st.mss,
    });
    if st.wscale_ok {
        o.push(Opt {
            code: TCPOPT_WINDOW,
            val: u32::from(st.snd_wscale) | (u32::from(st.rcv_wscale) << 16),
        });
    }
    if st.sack {
        o.push(Opt {
            code: TCPOPT_SACK_PERMITTED,
            val: 0,
        });
    }
    if st.timestamps {
        o.push(Opt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    let olen = libc::socklen_t::try_from(o.len() * std::mem::size_of::<Opt>()).unwrap_or(0);
    // SAFETY: `o` holds `o.len()` repr(C) `struct tcp_repair_opt` entries, `olen` bytes.
    if unsafe { libc::setsockopt(raw, tcp, TCP_REPAIR_OPTIONS, o.as_ptr().cast(), olen) } < 0 {
        return Err(sys_err(raw, "setsockopt TCP_REPAIR_OPTIONS"));
    }
    if st.timestamps {
        setopt(
            raw,
            tcp,
            TCP_TIMESTAMP,
            &st.timestamp,
            "setsockopt TCP_TIMESTAMP",
        )?;
    }
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR_QUEUE,
        TCP_RECV_QUEUE,
        "setsockopt TCP_REPAIR_QUEUE recv",
    )?;
    send_all(raw, &st.recv_queue, "refill receive queue")?;
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR_QUEUE,
        TCP_SEND_QUEUE,
        "setsockopt TCP_REPAIR_QUEUE send",
    )?;
    send_all(
        raw,
        st.sent_part(),
        "refill send queue (sent, unacknowledged part)",
    )?;
    if let Some(w) = &st.window {
        setopt(
            raw,
            tcp,
            TCP_REPAIR_WINDOW,
            w,
            "setsockopt TCP_REPAIR_WINDOW",
        )?;
    }
    setopt_i32(
        raw,
        tcp,
        TCP_REPAIR_QUEUE,
        TCP_NO_QUEUE,
        "setsockopt TCP_REPAIR_QUEUE none",
    )?;
    let b = |v: bool| i32::from(v);
    setopt_i32(
        raw,
        tcp,
        libc::TCP_NODELAY,
        b(st.opts.nodelay),
        "setsockopt TCP_NODELAY",
    )?;
    setopt_i32(
        raw,
        libc::SOL_SOCKET,
        libc::SO_KEEPALIVE,
        b(st.opts.keepalive),
        "setsockopt SO_KEEPALIVE",
    )?;
    for (opt, v, op) in [
        (
            libc::TCP_KEEPIDLE,
            st.opts.keepidle,
            "setsockopt TCP_KEEPIDLE",
        ),
        (
            libc::TCP_KEEPINTVL,
            st.opts.keepintvl,
            "setsockopt TCP_KEEPINTVL",
        ),
        (libc::TCP_KEEPCNT, st.opts.keepcnt, "setsockopt TCP_KEEPCNT"),
    ] {
        if v > 0 {
            setopt_i32(raw, tcp, opt, v, op)?;
        }
    }
    Ok(fd)
}

/// Leaves repair mode on a socket made by [`restore_in_repair`] and queues the part of the
/// send queue that had never been sent.
pub fn finish_restore(fd: BorrowedFd<'_>, st: &TcpConnState) -> Result<(), TcpRepairError> {
    let raw = fd.as_raw_fd();
    setopt_i32(
        raw,
        libc::IPPROTO_TCP,
        TCP_REPAIR,
        0,
        "setsockopt TCP_REPAIR off",
    )?;
    send_all(raw, st.unsent_part(), "queue never-sent data")
}

/// [`restore_in_repair`] then [`finish_restore`].
pub fn restore(st: &TcpConnState) -> Result<OwnedFd, TcpRepairError> {
    use std::os::fd::AsFd;
    let fd = restore_in_repair(st)?;
    finish_restore(fd.as_fd(), st)?;
    Ok(fd)
}

/// Whether `addr` is a loopback address (useful to decide whether a connection's peer is on
/// this host).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_roundtrip() {
        for a in [
            "127.0.0.1:5555",
            "[::1]:80",
            "[fe80::1%2]:443",
            "10.0.0.7:0",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            let (ss, _) = to_sockaddr(&a);
            assert_eq!(from_sockaddr(&ss), Some(a));
        }
    }

    #[test]
    fn validate_rejects_bad_states() {
        let mut s = TcpConnState {
            local: "127.0.0.1:1".parse().unwrap(),
            peer: "127.0.0.1:2".parse().unwrap(),
            send_seq: 1,
            recv_seq: 2,
            send_queue: vec![1, 2, 3],
            unsent: 3,
            recv_queue: vec![],
            window: None,
            mss: 1460,
            wscale_ok: true,
            snd_wscale: 7,
            rcv_wscale: 7,
            sack: true,
            timestamps: true,
            timestamp: 9,
            opts: TcpSockOpts::default(),
        };
        s.validate().unwrap();
        assert_eq!(s.sent_part(), &[] as &[u8]);
        assert_eq!(s.unsent_part(), &[1, 2, 3]);
        s.unsent = 4;
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unsent part longer"));
        s.unsent = 0;
        s.peer = "[::1]:2".parse().unwrap();
        assert!(s.validate().is_err());
    }
}
