//! Event descriptors: created, parsed from fdinfo, re-created from the parse, parsed again.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use sys::evfd;
use sys::fdinfo::{self, FdInfoExtra};

fn own() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

fn owned(r: i32) -> OwnedFd {
    assert!(r >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(r) }
}

fn info(fd: &OwnedFd) -> fdinfo::FdInfo {
    fdinfo::read_fd(own(), fd.as_raw_fd()).unwrap().info
}

#[test]
fn eventfd_round_trip_with_64_bit_counter() {
    // SAFETY: eventfd takes integers only.
    let e = owned(unsafe { libc::eventfd(0, libc::EFD_SEMAPHORE | libc::EFD_NONBLOCK) });
    let v = 5_000_000_000u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array.
    let rc = unsafe { libc::write(e.as_raw_fd(), v.as_ptr().cast(), 8) };
    assert_eq!(rc, 8);
    let i = info(&e);
    let FdInfoExtra::EventFd(ei) = i.extra else {
        panic!()
    };
    assert_eq!(ei.count, 5_000_000_000);
    let r = evfd::restore_eventfd(&ei, i.flags).unwrap();
    let j = info(&r);
    let FdInfoExtra::EventFd(ej) = j.extra else {
        panic!()
    };
    assert_eq!((ej.count, ej.semaphore), (ei.count, true));
    assert_eq!(
        j.flags & u32::try_from(libc::O_NONBLOCK).unwrap(),
        i.flags & u32::try_from(libc::O_NONBLOCK).unwrap()
    );
    let mut b = [0u8; 8];
    // SAFETY: reads 8 bytes into a live array.
    let rc = unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    assert_eq!(rc, 8);
    assert_eq!(u64::from_ne_bytes(b), 1, "semaphore mode reads 1");
}

#[test]
fn timerfds_round_trip() {
    // relative monotonic, 100 s remaining, 1.5 s interval
    // SAFETY: timerfd_create takes integers only.
    let t = owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) });
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
    let i = info(&t);
    let FdInfoExtra::TimerFd(ti) = i.extra else {
        panic!()
    };
    let (r, lost) = evfd::restore_timerfd(&ti, i.flags).unwrap();
    assert_eq!(lost.ticks_lost, 0);
    let FdInfoExtra::TimerFd(tr) = info(&r).extra else {
        panic!()
    };
    assert_eq!(
        (tr.clockid, tr.settime_flags, tr.it_interval),
        (ti.clockid, 0, ti.it_interval)
    );
    assert!(
        ti.it_value.sec.abs_diff(tr.it_value.sec) <= 5, // slack for a loaded machine
        "{ti:?} vs {tr:?}"
    );

    // absolute realtime with cancel-on-set, 1000 s ahead
    // SAFETY: as above.
    let t2 = owned(unsafe { libc::timerfd_create(libc::CLOCK_REALTIME, 0) });
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
    let flags = libc::TFD_TIMER_ABSTIME | 2; // TFD_TIMER_CANCEL_ON_SET
                                             // SAFETY: valid itimerspec, null old value.
    let rc = unsafe { libc::timerfd_settime(t2.as_raw_fd(), flags, &its, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
    let i = info(&t2);
    let FdInfoExtra::TimerFd(ti) = i.extra else {
        panic!()
    };
    assert_eq!(ti.settime_flags, 3);
    let (r2, _) = evfd::restore_timerfd(&ti, i.flags).unwrap();
    let FdInfoExtra::TimerFd(tr) = info(&r2).extra else {
        panic!()
    };
    assert_eq!((tr.clockid, tr.settime_flags), (libc::CLOCK_REALTIME, 3));
    assert!(
        ti.it_value.sec.abs_diff(tr.it_value.sec) <= 5, // slack for a loaded machine
        "{ti:?} vs {tr:?}"
    );

    // pending expirations
    // SAFETY: as above.
    let t3 = owned(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK) });
    let its = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 3600,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        },
    };
    // SAFETY: valid itimerspec, null old value.
    let rc = unsafe { libc::timerfd_settime(t3.as_raw_fd(), 0, &its, std::ptr::null_mut()) };
    assert_eq!(rc, 0);
    // Wait for the expiration itself (readable), not for a time that a slow machine may need
    // more of; the next one is an hour away, so exactly one is pending.
    let mut p = libc::pollfd {
        fd: t3.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid pollfd.
    let ready = unsafe { libc::poll(&mut p, 1, 60_000) };
    assert_eq!(ready, 1, "timerfd never expired");
    let i = info(&t3);
    let FdInfoExtra::TimerFd(ti) = i.extra else {
        panic!()
    };
    assert_eq!(ti.ticks, 1);
    let (r3, lost) = evfd::restore_timerfd(&ti, i.flags).unwrap();
    let FdInfoExtra::TimerFd(tr) = info(&r3).extra else {
        panic!()
    };
    if lost.ticks_lost == 0 {
        assert_eq!(
            tr.ticks, 1,
            "TFD_IOC_SET_TICKS carried the pending expiration"
        );
    } else {
        eprintln!(
            "note: this kernel has no TFD_IOC_SET_TICKS: {} pending expiration(s) reported lost",
            lost.ticks_lost
        );
    }
}

#[test]
fn signalfd_round_trip() {
    let mask: u64 =
        (1 << (libc::SIGUSR1 - 1)) | (1 << (libc::SIGHUP - 1)) | (1 << (libc::SIGRTMIN() - 1));
    let s = evfd::restore_signalfd(mask, u32::try_from(libc::O_NONBLOCK).unwrap()).unwrap();
    let i = info(&s);
    assert_eq!(i.extra, FdInfoExtra::SignalFd { sigmask: mask });
    assert_ne!(i.flags & u32::try_from(libc::O_NONBLOCK).unwrap(), 0);
}

#[test]
fn epoll_round_trip_with_remapped_descriptors() {
    // SAFETY: eventfd/epoll_create1 take integers only.
    let e = owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) });
    // SAFETY: as above.
    let ep = owned(unsafe { libc::epoll_create1(0) });
    let et = u32::try_from(libc::EPOLLET).unwrap_or(1 << 31);
    let mut ev = libc::epoll_event {
        events: u32::try_from(libc::EPOLLIN).unwrap() | et,
        u64: 0xfeed_0000_0001,
    };
    let (epfd, fd) = (ep.as_raw_fd(), e.as_raw_fd());
    // SAFETY: valid fds and event.
    let rc = unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    assert_eq!(rc, 0);
    let FdInfoExtra::Epoll(entries) = info(&ep).extra else {
        panic!()
    };
    // the restored eventfd has another number: map it
    let FdInfoExtra::EventFd(ei) = info(&e).extra else {
        panic!()
    };
    let e2 = evfd::restore_eventfd(&ei, 0).unwrap();
    let (old, new) = (e.as_raw_fd(), e2.as_raw_fd());
    let ep2 = evfd::restore_epoll(&entries, |tfd| (tfd == old).then_some(new)).unwrap();
    let FdInfoExtra::Epoll(again) = info(&ep2).extra else {
        panic!()
    };
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].tfd, again[0].events, again[0].data),
        (new, entries[0].events, entries[0].data)
    );
    // it works: the restored eventfd becomes readable and the data comes back
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live array.
    assert_eq!(unsafe { libc::write(new, one.as_ptr().cast(), 8) }, 8);
    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: `out` has room for 4 events.
    let n = unsafe { libc::epoll_wait(ep2.as_raw_fd(), out.as_mut_ptr(), 4, 1000) };
    assert_eq!(n, 1);
    let data = out[0].u64;
    assert_eq!(data, 0xfeed_0000_0001);
    // an unknown descriptor is a typed error
    let e = evfd::restore_epoll(&entries, |_| None).unwrap_err();
    assert!(e.to_string().contains("no restored descriptor"), "{e}");
}

#[test]
fn inotify_round_trip_and_gaps_refused() {
    let base = std::env::temp_dir().join(format!("evfd-inotify-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let add = |fd: &OwnedFd, p: &std::path::Path, mask: u32| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), mask) }
    };
    // SAFETY: inotify_init1 takes integers only.
    let i = owned(unsafe { libc::inotify_init1(libc::IN_NONBLOCK) });
    assert_eq!(add(&i, &a, libc::IN_CREATE), 1);
    assert_eq!(add(&i, &b, libc::IN_DELETE | libc::IN_CREATE), 2);
    use std::os::fd::AsFd;
    assert_eq!(evfd::queued_bytes(i.as_fd()).unwrap(), 0);
    let d = info(&i);
    let FdInfoExtra::Inotify(w) = d.extra else {
        panic!()
    };
    let r = match evfd::restore_inotify(&w, d.flags, |x| x.resolve_path()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skipped: watched paths not resolvable here: {e}");
            return;
        }
    };
    let FdInfoExtra::Inotify(w2) = info(&r).extra else {
        panic!()
    };
    let key =
        |v: &[fdinfo::InotifyWatch]| v.iter().map(|x| (x.wd, x.mask, x.ino)).collect::<Vec<_>>();
    assert_eq!(key(&w2), key(&w));
    // events reach the restored instance with the original watch numbers
    std::fs::write(b.join("f"), b"x").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(evfd::queued_bytes(r.as_fd()).unwrap() > 0);
    let mut buf = [0u8; 256];
    // SAFETY: reads into a live buffer of its length.
    let n = unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(n >= 16);
    assert_eq!(
        i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]),
        2,
        "event for watch 2"
    );

    // a gap (watch 1 removed) cannot be reproduced
    // SAFETY: removes watch 1 of our instance.
    assert_eq!(unsafe { libc::inotify_rm_watch(i.as_raw_fd(), 1) }, 0);
    let FdInfoExtra::Inotify(w3) = info(&i).extra else {
        panic!()
    };
    let e = evfd::restore_inotify(&w3, 0, |x| x.resolve_path()).unwrap_err();
    assert!(e.to_string().contains("cannot be reproduced"), "{e}");
    std::fs::remove_dir_all(&base).unwrap();
}
