//! TCP_REPAIR dump and restore of both ends of a loopback connection with data in flight in
//! both directions, inside a private network namespace.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::time::{Duration, Instant};

use sys::tcp_repair::{self, Repair, TcpConnState, TcpRepairError};

fn pat(i: u64, which: u64) -> u8 {
    u8::try_from((i * 7 + which * 13) % 251).unwrap()
}

fn setbuf(fd: i32, opt: i32, v: i32) {
    // SAFETY: passes a valid int of the right size.
    let r = unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&v as *const i32).cast(), 4) };
    assert_eq!(r, 0);
}

/// A client socket with a small receive buffer, connected to `addr`.
fn small_client(addr: SocketAddr) -> TcpStream {
    // SAFETY: socket() without memory arguments; result checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0);
    setbuf(fd, libc::SO_RCVBUF, 65536);
    // SAFETY: fresh fd owned by nobody else.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let SocketAddr::V4(a) = addr else {
        panic!("v4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap(),
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect with a valid sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_in>()).unwrap(),
        )
    };
    assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
    s
}

fn tcp_state(fd: i32) -> u8 {
    let mut b = [0u8; 104];
    let mut l: libc::socklen_t = 104;
    // SAFETY: TCP_INFO writes at most `l` bytes into `b`.
    unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            b.as_mut_ptr().cast(),
            &mut l,
        )
    };
    b[0]
}

fn in_private_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if !common::is_root() {
        eprintln!("skipped: {name} needs root (TCP_REPAIR, network namespace)");
        return;
    }
    std::thread::spawn(move || {
        if let Err(e) = sys::netns::enter_new_netns() {
            eprintln!("skipped: {e}");
            return;
        }
        f();
    })
    .join()
    .unwrap();
}

#[test]
fn repair_refuses_listening_socket() {
    in_private_netns("repair_refuses_listening_socket", || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        match Repair::enter(l.as_fd()) {
            Err(TcpRepairError::State {
                state: 10,
                name: "LISTEN",
                ..
            }) => {}
            other => panic!("unexpected: {other:?}"),
        };
    });
}

#[test]
fn established_connection_survives_dump_close_restore() {
    in_private_netns("established_connection_survives_dump_close_restore", || {
        let ls = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = small_client(ls.local_addr().unwrap());
        let (mut s, _) = ls.accept().unwrap();
        setbuf(s.as_raw_fd(), libc::SO_SNDBUF, 65536);
        // client -> server: 100000 bytes the server does not read
        let c2s: Vec<u8> = (0..100_000u64).map(|i| pat(i, 0)).collect();
        c.write_all(&c2s).unwrap();
        // server -> client until the client's window and the server's buffer are full
        s.set_nonblocking(true).unwrap();
        let mut s2c = 0u64;
        while s2c < (8 << 20) {
            let b: Vec<u8> = (s2c..s2c + 16384).map(|i| pat(i, 1)).collect();
            match s.write(&b) {
                Ok(n) => s2c += n as u64,
                Err(_) => break,
            }
        }
        // Loopback delivery and acknowledgements may be deferred to ksoftirqd on a loaded
        // machine: wait until every client byte sits acknowledged in the server's receive
        // queue, and every server byte is in exactly one place (the client's receive queue or
        // the server's send queue: none delivered but not yet acknowledged).
        let (cfd, sfd) = (c.as_raw_fd(), s.as_raw_fd());
        common::wait_until("the streams in flight have settled", || {
            common::sock_inq(sfd) == 100_000
                && common::sock_outq(cfd) == 0
                && u64::try_from(common::sock_inq(cfd) + common::sock_outq(sfd)).unwrap() == s2c
        });

        // dump the client through its own fd, the server through a pidfd_getfd'ed duplicate
        let cr = Repair::enter(c.as_fd()).unwrap();
        let ci = cr.dump().unwrap();
        cr.keep();
        let pid = i32::try_from(std::process::id()).unwrap();
        let pulled = sys::fdpull::pull_fd(pid, s.as_raw_fd()).unwrap();
        let si = tcp_repair::dump_and_freeze(pulled.as_fd()).unwrap();
        eprintln!(
            "client: recvq {} B, sendq {} B | server: recvq {} B, sendq {} B (unsent {}), mss {} wscale {}/{} ts {} sack {}",
            ci.recv_queue.len(),
            ci.send_queue.len(),
            si.recv_queue.len(),
            si.send_queue.len(),
            si.unsent,
            si.mss,
            si.snd_wscale,
            si.rcv_wscale,
            si.timestamps,
            si.sack
        );
        // the queues hold exactly the stream bytes in flight
        assert_eq!(si.recv_queue, c2s);
        assert_eq!(
            ci.recv_queue.len() + si.send_queue.len(),
            usize::try_from(s2c).unwrap()
        );
        assert!(ci
            .recv_queue
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pat(i as u64, 1)));
        let base = ci.recv_queue.len() as u64;
        assert!(si
            .send_queue
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pat(base + i as u64, 1)));
        assert_eq!(ci.local, si.peer);
        assert_eq!(ci.peer, si.local);
        // the state survives serialization
        let j = serde_json::to_string(&si).unwrap();
        let si: TcpConnState = serde_json::from_str(&j).unwrap();

        // close everything: in repair mode nothing is sent to the peer
        drop(pulled);
        drop(c);
        drop(s);
        drop(ls);

        let c2 = tcp_repair::restore_in_repair(&ci).unwrap();
        let s2 = tcp_repair::restore_in_repair(&si).unwrap();
        tcp_repair::finish_restore(c2.as_fd(), &ci).unwrap();
        tcp_repair::finish_restore(s2.as_fd(), &si).unwrap();
        assert_eq!(tcp_state(c2.as_raw_fd()), 1);
        let mut c2 = TcpStream::from(c2);
        let mut s2 = TcpStream::from(s2);

        // both streams continue byte-exact
        c2.write_all(b"PING").unwrap();
        s2.set_nonblocking(true).unwrap();
        let more: Vec<u8> = (s2c..s2c + 50_000).map(|i| pat(i, 1)).collect();
        let extra = s2.write(&more).unwrap_or(0) as u64;
        let want_c = s2c + extra;
        c2.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        s2.set_nonblocking(false).unwrap();
        s2.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let (mut got_c, mut got_s) = (0u64, 0u64);
        let mut buf = vec![0u8; 1 << 17];
        let deadline = Instant::now() + common::PATIENCE;
        while (got_c < want_c || got_s < 100_004) && Instant::now() < deadline {
            if let Ok(n) = c2.read(&mut buf) {
                for (k, &b) in buf[..n].iter().enumerate() {
                    assert_eq!(
                        b,
                        pat(got_c + k as u64, 1),
                        "client stream byte {}",
                        got_c + k as u64
                    );
                }
                got_c += n as u64;
            }
            if let Ok(n) = s2.read(&mut buf) {
                for (k, &b) in buf[..n].iter().enumerate() {
                    let pos = got_s + k as u64;
                    let want = if pos < 100_000 {
                        pat(pos, 0)
                    } else {
                        b"PING"[usize::try_from(pos - 100_000).unwrap()]
                    };
                    assert_eq!(b, want, "server stream byte {pos}");
                }
                got_s += n as u64;
            }
        }
        assert_eq!(got_c, want_c, "client received");
        assert_eq!(got_s, 100_004, "server received");
    });
}

/// Which restores succeed next to live sockets bound to the same port (a restored listener,
/// or connections already live again).
#[test]
fn restore_next_to_live_sockets_on_same_port() {
    in_private_netns("restore_next_to_live_sockets_on_same_port", || {
        let ls = TcpListener::bind("127.0.0.1:0").unwrap(); // std sets SO_REUSEADDR
        let addr = ls.local_addr().unwrap();
        let mut pairs = Vec::new();
        for _ in 0..3 {
            let c = TcpStream::connect(addr).unwrap();
            let (s, _) = ls.accept().unwrap();
            pairs.push((c, s));
        }
        let mut states = Vec::new();
        let mut clients = Vec::new();
        for (c, s) in pairs {
            states.push(tcp_repair::dump_and_freeze(s.as_fd()).unwrap());
            drop(s);
            clients.push(c);
        }
        // one at a time, each made live before the next is created, listener alive
        let mut servers = Vec::new();
        for (i, st) in states.iter().enumerate() {
            match tcp_repair::restore(st) {
                Ok(fd) => servers.push(TcpStream::from(fd)),
                Err(e) => panic!(
                    "restore {i} next to the live listener and {} live connections: {e}",
                    servers.len()
                ),
            }
        }
        for (c, s) in clients.iter_mut().zip(&mut servers) {
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.set_read_timeout(Some(common::PATIENCE)).unwrap();
            s.read_exact(&mut b).unwrap();
        }
    });
}

/// IPv6 loopback: queued bytes both ways survive dump, silent close and restore.
#[test]
fn ipv6_connection_survives() {
    in_private_netns("ipv6_connection_survives", || {
        let ls = match TcpListener::bind("[::1]:0") {
            Ok(l) => l,
            Err(e) => {
                eprintln!("skipped: no IPv6 loopback here: {e}");
                return;
            }
        };
        let mut c = TcpStream::connect(ls.local_addr().unwrap()).unwrap();
        let (mut s, _) = ls.accept().unwrap();
        c.write_all(b"client->server before").unwrap();
        s.write_all(b"server->client before").unwrap();
        let (cfd, sfd) = (c.as_raw_fd(), s.as_raw_fd());
        common::wait_until(
            "both 21-byte messages arrived and were acknowledged",
            || {
                common::sock_inq(cfd) == 21
                    && common::sock_inq(sfd) == 21
                    && common::sock_outq(cfd) == 0
                    && common::sock_outq(sfd) == 0
            },
        );
        let ci = tcp_repair::dump_and_freeze(c.as_fd()).unwrap();
        let si = tcp_repair::dump_and_freeze(s.as_fd()).unwrap();
        assert!(ci.local.is_ipv6() && si.local.is_ipv6());
        assert_eq!(ci.recv_queue, b"server->client before");
        assert_eq!(si.recv_queue, b"client->server before");
        drop((c, s, ls));
        // both ends exist (in repair mode) before either talks: leaving repair mode sends a
        // window probe, and a peer that does not exist yet would answer it with a RST
        let c2 = tcp_repair::restore_in_repair(&ci).unwrap();
        let s2 = tcp_repair::restore_in_repair(&si).unwrap();
        tcp_repair::finish_restore(c2.as_fd(), &ci).unwrap();
        tcp_repair::finish_restore(s2.as_fd(), &si).unwrap();
        let (mut c2, mut s2) = (TcpStream::from(c2), TcpStream::from(s2));
        c2.set_read_timeout(Some(common::PATIENCE)).unwrap();
        s2.set_read_timeout(Some(common::PATIENCE)).unwrap();
        let mut b = [0u8; 21];
        c2.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"server->client before");
        s2.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"client->server before");
        c2.write_all(b"after").unwrap();
        let mut a = [0u8; 5];
        s2.read_exact(&mut a).unwrap();
        assert_eq!(&a, b"after");
    });
}

/// The server end lives in another process: pulled with pidfd_getfd, dumped, the process killed
/// (the socket closes silently, still in repair mode), re-created here; the client never notices.
#[test]
fn socket_pulled_from_another_process() {
    in_private_netns("socket_pulled_from_another_process", || {
        let ls = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(ls.local_addr().unwrap()).unwrap();
        let (s, _) = ls.accept().unwrap();
        c.write_all(b"queued for the server").unwrap();
        let sfd = s.as_raw_fd();
        let (hold_r, hold_w) = common::pipe();
        let child = common::fork_child(move || {
            common::read_byte(hold_r);
        });
        let guard = common::ChildGuard(child);
        let cfd = c.as_raw_fd();
        common::wait_until("the client's message arrived and was acknowledged", || {
            common::sock_inq(sfd) == 21 && common::sock_outq(cfd) == 0
        });
        drop(s); // only the child holds the server socket now
        let pulled = sys::fdpull::pull_fd(child, sfd).unwrap();
        let st = tcp_repair::dump_and_freeze(pulled.as_fd()).unwrap();
        assert_eq!(st.recv_queue, b"queued for the server");
        drop(guard); // kill the owner
        drop(pulled); // last reference: closed in repair mode, nothing sent to the client
        let mut s2 = TcpStream::from(tcp_repair::restore(&st).unwrap());
        s2.set_read_timeout(Some(common::PATIENCE)).unwrap();
        let mut b = [0u8; 21];
        s2.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"queued for the server");
        s2.write_all(b"pong").unwrap();
        c.set_read_timeout(Some(common::PATIENCE)).unwrap();
        let mut p = [0u8; 4];
        c.read_exact(&mut p).unwrap();
        assert_eq!(&p, b"pong");
        // SAFETY: closing pipe ends we own.
        unsafe {
            libc::close(hold_r);
            libc::close(hold_w);
        }
    });
}
