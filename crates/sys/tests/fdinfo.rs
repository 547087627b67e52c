//! Creates every kind of descriptor in-process and reads it back through /proc and sock_diag.

use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use sys::fdinfo::{self, AnonKind, FdInfoExtra, FdKind};
use sys::sockdiag::SockDiag;

fn own() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

fn owned(r: i32, what: &str) -> OwnedFd {
    assert!(r >= 0, "{what}: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd just returned by the kernel, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r) }
}

fn sock_ino(fd: i32) -> u64 {
    match fdinfo::read_fd(own(), fd).unwrap().kind {
        FdKind::Socket(i) => i,
        k => panic!("fd {fd} is {k:?}"),
    }
}

#[test]
fn eventfd_and_epoll() {
    // SAFETY: eventfd/epoll_create1 take no pointers; results checked by `owned`.
    let efd = owned(
        unsafe { libc::eventfd(26, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK) },
        "eventfd",
    );
    // SAFETY: as above.
    let ep = owned(
        unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) },
        "epoll_create1",
    );
    let (r, w) = {
        let mut p = [0i32; 2];
        // SAFETY: pipe2 writes two fds into the array.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        (owned(p[0], "pipe"), owned(p[1], "pipe"))
    };
    let et = u32::try_from(libc::EPOLLET).unwrap_or(1 << 31);
    for (fd, events, data) in [
        (
            efd.as_raw_fd(),
            u32::try_from(libc::EPOLLIN).unwrap() | et,
            0x12_3456_7890u64,
        ),
        (w.as_raw_fd(), u32::try_from(libc::EPOLLOUT).unwrap(), 7),
    ] {
        let mut ev = libc::epoll_event { events, u64: data };
        // SAFETY: registers a valid fd with a valid epoll_event.
        let rc = unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        assert_eq!(rc, 0);
    }
    let e = fdinfo::read_fd(own(), efd.as_raw_fd()).unwrap();
    assert_eq!(e.kind, FdKind::Anon(AnonKind::EventFd));
    let FdInfoExtra::EventFd(i) = e.info.extra else {
        panic!("{e:?}")
    };
    assert_eq!((i.count, i.semaphore), (26, true));
    assert_ne!(e.info.flags & u32::try_from(libc::O_NONBLOCK).unwrap(), 0);

    let d = fdinfo::read_fd(own(), ep.as_raw_fd()).unwrap();
    assert_eq!(d.kind, FdKind::Anon(AnonKind::Epoll));
    let FdInfoExtra::Epoll(mut entries) = d.info.extra else {
        panic!("{d:?}")
    };
    entries.sort_by_key(|x| x.tfd);
    let mut want = vec![
        (
            efd.as_raw_fd(),
            u32::try_from(libc::EPOLLIN).unwrap() | et,
            0x12_3456_7890u64,
        ),
        (w.as_raw_fd(), u32::try_from(libc::EPOLLOUT).unwrap(), 7),
    ];
    want.sort();
    let got: Vec<_> = entries
        .iter()
        .map(|x| {
            (
                x.tfd,
                x.events & !(libc::EPOLLERR as u32 | libc::EPOLLHUP as u32),
                x.data,
            )
        })
        .collect();
    assert_eq!(got, want);
    // pipe ends share one inode
    let (FdKind::Pipe(a), FdKind::Pipe(b)) = (
        fdinfo::read_fd(own(), r.as_raw_fd()).unwrap().kind,
        fdinfo::read_fd(own(), w.as_raw_fd()).unwrap().kind,
    ) else {
        panic!()
    };
    assert_eq!(a, b);
}

#[test]
fn timerfds_and_signalfd() {
    // SAFETY: timerfd_create takes no pointers.
    let t = owned(
        unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) },
        "timerfd",
    );
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 1,
            tv_nsec: 500_000_000,
        },
        it_value: libc::timespec {
            tv_sec: 100,
            tv_nsec: 0,
        },
    };
    // SAFETY: valid itimerspec, null old value.
    let rc = unsafe { libc::timerfd_settime(t.as_raw_fd(), 0, &its, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
    let d = fdinfo::read_fd(own(), t.as_raw_fd()).unwrap();
    assert_eq!(d.kind, FdKind::Anon(AnonKind::TimerFd));
    let FdInfoExtra::TimerFd(ti) = d.info.extra else {
        panic!("{d:?}")
    };
    assert_eq!(
        (ti.clockid, ti.settime_flags, ti.ticks),
        (libc::CLOCK_MONOTONIC, 0, 0)
    );
    assert!(ti.it_value.sec >= 90 && ti.it_value.sec <= 100, "{ti:?}");
    assert_eq!((ti.it_interval.sec, ti.it_interval.nsec), (1, 500_000_000));

    // an absolute realtime timer: fdinfo shows the remaining time, flags say ABSTIME
    // SAFETY: as above.
    let t2 = owned(
        unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, libc::TFD_CLOEXEC) },
        "timerfd",
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: libc::time_t::try_from(now + 1000).unwrap(),
            tv_nsec: 0,
        },
    };
    // SAFETY: valid itimerspec, null old value.
    let rc = unsafe {
        libc::timerfd_settime(
            t2.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &its,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);
    let FdInfoExtra::TimerFd(ti) = fdinfo::read_fd(own(), t2.as_raw_fd()).unwrap().info.extra
    else {
        panic!()
    };
    assert_eq!((ti.clockid, ti.settime_flags), (libc::CLOCK_REALTIME, 1));
    assert!(ti.it_value.sec > 980 && ti.it_value.sec <= 1000, "{ti:?}");

    // SAFETY: sigset manipulation on a local, zero-initialised set.
    let mask = unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut m);
        libc::sigaddset(&mut m, libc::SIGUSR1);
        libc::sigaddset(&mut m, libc::SIGTERM);
        m
    };
    // SAFETY: valid sigset pointer.
    let s = owned(
        unsafe { libc::signalfd(-1, &mask, libc::SFD_CLOEXEC) },
        "signalfd",
    );
    let d = fdinfo::read_fd(own(), s.as_raw_fd()).unwrap();
    assert_eq!(d.kind, FdKind::Anon(AnonKind::SignalFd));
    let FdInfoExtra::SignalFd { sigmask } = d.info.extra else {
        panic!("{d:?}")
    };
    assert_eq!(
        fdinfo::signals_in_mask(sigmask),
        vec![libc::SIGUSR1, libc::SIGTERM]
    );
}

#[test]
fn inotify_watch_and_path() {
    let dir = std::env::temp_dir().join(format!("fdinfo-inotify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: inotify_init1 takes no pointers.
    let i = owned(
        unsafe { libc::inotify_init1(libc::IN_CLOEXEC) },
        "inotify_init1",
    );
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated path.
    let wd = unsafe {
        libc::inotify_add_watch(i.as_raw_fd(), c.as_ptr(), libc::IN_CREATE | libc::IN_DELETE)
    };
    assert!(wd > 0);
    let d = fdinfo::read_fd(own(), i.as_raw_fd()).unwrap();
    assert_eq!(d.kind, FdKind::Anon(AnonKind::Inotify));
    let FdInfoExtra::Inotify(w) = d.info.extra else {
        panic!("{d:?}")
    };
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].wd, wd);
    assert_eq!(
        w[0].mask & (libc::IN_CREATE | libc::IN_DELETE),
        libc::IN_CREATE | libc::IN_DELETE
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(w[0].ino, std::fs::metadata(&dir).unwrap().ino());
    match w[0].resolve_path() {
        Ok(p) => assert_eq!(p, dir.canonicalize().unwrap()),
        Err(e) => eprintln!("note: inotify path not resolvable here: {e}"),
    }
    drop(i);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn memfd_pidfd_links() {
    let name = std::ffi::CString::new("probe-memfd").unwrap();
    // SAFETY: valid NUL-terminated name.
    let m = owned(
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) },
        "memfd_create",
    );
    assert_eq!(
        fdinfo::read_fd(own(), m.as_raw_fd()).unwrap().kind,
        FdKind::Memfd {
            name: "probe-memfd".into()
        }
    );
    // SAFETY: pidfd_open takes a pid and flags.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, own(), 0) };
    let p = owned(i32::try_from(r).unwrap(), "pidfd_open");
    let d = fdinfo::read_fd(own(), p.as_raw_fd()).unwrap();
    assert_eq!(d.kind, FdKind::Anon(AnonKind::Pidfd));
    let FdInfoExtra::Pidfd { pid, .. } = d.info.extra else {
        panic!("{d:?}")
    };
    assert_eq!(pid, own());
    // list_fds sees them
    let all = fdinfo::list_fds(own()).unwrap();
    assert!(all.iter().any(|x| x.fd == m.as_raw_fd()));
}

fn diag() -> Option<SockDiag> {
    match SockDiag::open() {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("skipped: sock_diag unavailable: {e}");
            None
        }
    }
}

#[test]
fn unix_sockets_via_sock_diag() {
    let Some(mut d) = diag() else { return };
    let (a, b) = UnixStream::pair().unwrap();
    use std::io::Write;
    (&a).write_all(b"hello").unwrap();
    let (ia, ib) = (sock_ino(a.as_raw_fd()), sock_ino(b.as_raw_fd()));
    let dir = std::env::temp_dir().join(format!("sockdiag-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("l.sock");
    let l = UnixListener::bind(&path).unwrap();
    let pending = UnixStream::connect(&path).unwrap();
    let il = sock_ino(l.as_raw_fd());
    let ip = sock_ino(pending.as_raw_fd());
    // seqpacket and datagram pairs
    let mut sp = [0i32; 2];
    // SAFETY: socketpair writes two fds into the array.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            sp.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    let (s0, _s1) = (owned(sp[0], "seqpacket"), owned(sp[1], "seqpacket"));
    let (g0, _g1) = std::os::unix::net::UnixDatagram::pair().unwrap();

    let all = d.unix_sockets().unwrap();
    let find = |ino: u64| {
        all.iter()
            .find(|s| s.ino == ino)
            .unwrap_or_else(|| panic!("ino {ino} not reported"))
    };
    let (sa, sb) = (find(ia), find(ib));
    assert_eq!((sa.peer, sb.peer), (ib, ia));
    assert_eq!((sa.sock_type, sa.state), (1, 1));
    assert_eq!(sb.rqueue, 5, "bytes queued at the receiving end");
    let sl = find(il);
    assert_eq!(sl.state, 10);
    assert_eq!(sl.name.as_deref(), Some(path.to_str().unwrap()));
    assert!(sl.vfs.is_some());
    assert_eq!(sl.rqueue, 1, "one connection waiting");
    assert_eq!(sl.icons.len(), 1);
    // ICONS lists the *connecting* sockets waiting in the accept queue; their peer (the
    // not-yet-accepted server end, which has no inode yet) reads as 0
    assert_eq!(u64::from(sl.icons[0]), ip);
    assert_eq!(find(ip).peer, 0);
    assert_eq!(find(sock_ino(s0.as_raw_fd())).sock_type, 5);
    assert_eq!(find(sock_ino(g0.as_raw_fd())).sock_type, 2);
    drop(l);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn inet_sockets_via_sock_diag() {
    let Some(mut d) = diag() else { return };
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    let u2 = UdpSocket::bind("127.0.0.1:0").unwrap();
    u2.connect(u.local_addr().unwrap()).unwrap();
    let all = d.all_inet().unwrap();
    let find = |fd: i32| {
        let ino = sock_ino(fd);
        all.iter()
            .find(|x| x.ino == ino)
            .unwrap_or_else(|| panic!("socket ino {ino} not reported"))
            .clone()
    };
    let li = find(l.as_raw_fd());
    assert_eq!(
        (li.protocol, li.state, li.local),
        (6, 10, l.local_addr().unwrap())
    );
    let ci = find(c.as_raw_fd());
    assert_eq!(
        (ci.state, ci.local, ci.remote),
        (1, c.local_addr().unwrap(), l.local_addr().unwrap())
    );
    let si = find(s.as_raw_fd());
    assert_eq!(
        (si.local, si.remote),
        (l.local_addr().unwrap(), c.local_addr().unwrap())
    );
    let ui = find(u.as_raw_fd());
    assert_eq!(
        (ui.protocol, ui.state, ui.local),
        (17, 7, u.local_addr().unwrap())
    );
    let u2i = find(u2.as_raw_fd());
    assert_eq!((u2i.state, u2i.remote), (1, u.local_addr().unwrap()));
}

#[test]
fn sock_diag_in_another_netns() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (network namespace)");
        return;
    }
    if diag().is_none() {
        return;
    }
    // a child in a fresh netns with one listener; we look at it from outside
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let h = std::thread::spawn(move || {
        sys::netns::enter_new_netns().unwrap();
        let l = TcpListener::bind("127.0.0.1:4242").unwrap();
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        tx.send((tid, sock_ino(l.as_raw_fd()))).unwrap();
        done_rx.recv().unwrap();
    });
    let (tid, ino) = rx.recv().unwrap();
    let mut d = SockDiag::open_in_netns_of(tid).unwrap();
    let v = d.inet_sockets(libc::AF_INET, libc::IPPROTO_TCP).unwrap();
    assert!(
        v.iter().any(|x| x.ino == ino && x.local.port() == 4242),
        "{v:?}"
    );
    // and our own namespace does not show it
    let mine = SockDiag::open()
        .unwrap()
        .inet_sockets(libc::AF_INET, libc::IPPROTO_TCP)
        .unwrap();
    assert!(!mine.iter().any(|x| x.ino == ino));
    done_tx.send(()).unwrap();
    h.join().unwrap();
}
