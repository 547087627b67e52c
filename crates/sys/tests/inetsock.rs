//! Listening TCP sockets and UDP sockets dumped and re-created in a private network namespace.

mod common;

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use sys::inetsock::{self, InetSockError};
use sys::sockdiag::SockDiag;

fn in_private_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if !common::is_root() {
        eprintln!("skipped: {name} needs root (network namespace)");
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

fn ino(fd: i32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/thread-self/fd/{fd}"))
        .unwrap()
        .ino()
}

fn listen_with_backlog(addr: &str, backlog: i32) -> TcpListener {
    let l = TcpListener::bind(addr).unwrap(); // std: SO_REUSEADDR, listen(128)
                                              // SAFETY: listen again on our listening socket changes its backlog.
    assert_eq!(unsafe { libc::listen(l.as_raw_fd(), backlog) }, 0);
    l
}

#[test]
fn listener_rebound_with_its_backlog_and_options() {
    in_private_netns("listener_rebound_with_its_backlog_and_options", || {
        let l = listen_with_backlog("127.0.0.1:0", 77);
        let addr = l.local_addr().unwrap();
        let mut d = SockDiag::open().unwrap();
        let me = ino(l.as_raw_fd());
        let diag = d
            .inet_sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .into_iter()
            .find(|s| s.ino == me)
            .unwrap();
        assert_eq!(
            diag.wqueue, 77,
            "sock_diag reports the backlog of a listener"
        );
        let st = inetsock::dump_listener(l.as_fd(), diag.wqueue, diag.rqueue, false).unwrap();
        assert_eq!(st.addr, addr);
        assert!(st.opts.reuseaddr);
        drop(l);
        let l2 = TcpListener::from(inetsock::restore_listener(&st).unwrap());
        assert_eq!(l2.local_addr().unwrap(), addr);
        let me2 = ino(l2.as_raw_fd());
        let diag2 = d
            .inet_sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .into_iter()
            .find(|s| s.ino == me2)
            .unwrap();
        assert_eq!((diag2.state, diag2.wqueue), (10, 77));
        let _c = TcpStream::connect(addr).unwrap();
        l2.set_nonblocking(false).unwrap();
        let (_s, _) = l2.accept().unwrap();
    });
}

#[test]
fn listener_with_waiting_connection_is_refused() {
    in_private_netns("listener_with_waiting_connection_is_refused", || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // The handshake's last ACK may reach the listener later than connect() returns (loopback
        // delivery deferred to ksoftirqd on a loaded machine): wait until the connection is
        // waiting in the accept queue.
        common::wait_readable(l.as_raw_fd(), "listener with a connecting client");
        let me = ino(l.as_raw_fd());
        let diag = SockDiag::open()
            .unwrap()
            .inet_sockets(libc::AF_INET, libc::IPPROTO_TCP)
            .unwrap()
            .into_iter()
            .find(|s| s.ino == me)
            .unwrap();
        assert_eq!(diag.rqueue, 1);
        match inetsock::dump_listener(l.as_fd(), diag.wqueue, diag.rqueue, false) {
            Err(InetSockError::PendingConnections { count: 1, .. }) => {}
            other => panic!("unexpected: {other:?}"),
        }
        assert!(inetsock::dump_listener(l.as_fd(), diag.wqueue, diag.rqueue, true).is_ok());
        // not a listener
        let e = inetsock::dump_listener(_c.as_fd(), 0, 0, false).unwrap_err();
        assert!(e.to_string().contains("not a listening socket"), "{e}");
    });
}

#[test]
fn udp_bound_and_connected_recreated() {
    in_private_netns("udp_bound_and_connected_recreated", || {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        let sa = inetsock::dump_udp(a.as_fd()).unwrap();
        let sb = inetsock::dump_udp(b.as_fd()).unwrap();
        assert_eq!(sa.peer, None);
        assert_eq!(sb.peer, Some(a.local_addr().unwrap()));
        let (aa, bb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        drop((a, b));
        let a2 = UdpSocket::from(inetsock::restore_udp(&sa).unwrap());
        let b2 = UdpSocket::from(inetsock::restore_udp(&sb).unwrap());
        assert_eq!(
            (a2.local_addr().unwrap(), b2.local_addr().unwrap()),
            (aa, bb)
        );
        assert_eq!(b2.peer_addr().unwrap(), aa);
        b2.send(b"hello").unwrap();
        a2.set_read_timeout(Some(common::PATIENCE)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = a2.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..n], from), (&b"hello"[..], bb));
        // a TCP socket is not a UDP one
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(inetsock::dump_udp(l.as_fd()).is_err());
    });
}
