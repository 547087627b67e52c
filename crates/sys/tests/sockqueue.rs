//! Unix socket receive queues: peeked without consuming, refilled with boundaries kept,
//! descriptors in flight refused without leaking.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use sys::sockqueue::{self, SockQueueError};

fn pair(ty: i32) -> (OwnedFd, OwnedFd) {
    let mut sv = [0i32; 2];
    // SAFETY: socketpair writes two fds into the array.
    let r = unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr()) };
    assert_eq!(r, 0);
    // SAFETY: fresh fds owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) }
}

fn send(fd: &OwnedFd, b: &[u8]) {
    // SAFETY: sends from a live slice.
    let n = unsafe { libc::send(fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
    assert_eq!(usize::try_from(n).unwrap(), b.len());
}

fn recv(fd: &OwnedFd) -> Option<Vec<u8>> {
    let mut b = vec![0u8; 1 << 20];
    // SAFETY: receives into a live buffer of its length.
    let n = unsafe {
        libc::recv(
            fd.as_raw_fd(),
            b.as_mut_ptr().cast(),
            b.len(),
            libc::MSG_DONTWAIT,
        )
    };
    (n >= 0).then(|| {
        b.truncate(usize::try_from(n).unwrap());
        b
    })
}

#[test]
fn peek_and_refill_keep_queues_and_boundaries() {
    let big = vec![7u8; 100_000];
    for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
        let (a, b) = pair(ty);
        let msgs: Vec<&[u8]> = if ty == libc::SOCK_STREAM {
            vec![b"one", b"three!", &big[..]]
        } else {
            vec![b"one", b"three!", &big[..50_000]]
        };
        for m in &msgs {
            send(&a, m);
        }
        send(&b, b"reply");
        let d = sockqueue::peek_queue(b.as_fd()).unwrap();
        let back = sockqueue::peek_queue(a.as_fd()).unwrap();
        assert_eq!(back.messages.len(), 1);
        assert_eq!(back.messages[0].data, b"reply");
        if ty == libc::SOCK_STREAM {
            assert_eq!(d.messages.len(), 1);
            assert_eq!(d.messages[0].data, msgs.concat());
        } else {
            let got: Vec<&[u8]> = d.messages.iter().map(|m| &m.data[..]).collect();
            let lens: Vec<usize> = got.iter().map(|m| m.len()).collect();
            assert!(
                got == msgs,
                "type {ty}: boundaries differ: lengths {lens:?}"
            );
        }
        // the queue is untouched and peeking again gives the same
        assert!(
            sockqueue::peek_queue(b.as_fd()).unwrap() == d,
            "second peek differs"
        );
        // refill a fresh pair and read it back with the same boundaries
        let (a2, b2) = pair(ty);
        sockqueue::refill_via_peer(a2.as_fd(), &d).unwrap();
        for m in &d.messages {
            if ty == libc::SOCK_STREAM {
                let mut got = Vec::new();
                while got.len() < m.data.len() {
                    got.extend(recv(&b2).unwrap());
                }
                assert!(got == m.data, "stream bytes differ");
            } else {
                assert!(
                    recv(&b2).unwrap() == m.data,
                    "type {ty}: refilled message differs"
                );
            }
        }
        // and the original still delivers the first message to its reader
        assert_eq!(&recv(&b).unwrap()[..3], b"one");
    }
}

#[test]
fn non_empty_datagram_queue_is_walked_whole() {
    for ty in [libc::SOCK_DGRAM, libc::SOCK_SEQPACKET] {
        let (a, b) = pair(ty);
        let msgs: Vec<Vec<u8>> = (1..=20u8).map(|i| vec![i; usize::from(i) * 100]).collect();
        for m in &msgs {
            send(&a, m);
        }
        let d = sockqueue::peek_queue(b.as_fd()).unwrap();
        let got: Vec<Vec<u8>> = d.messages.iter().map(|m| m.data.clone()).collect();
        assert!(got == msgs, "type {ty}: messages differ");
        assert_eq!(d.bytes(), msgs.iter().map(Vec::len).sum::<usize>());
    }
}

/// Descriptors of this process open on /dev/null (other tests of this binary run in parallel
/// and open other files).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|p| p.as_os_str() == "/dev/null")
        .count()
}

#[test]
fn fds_in_flight_are_refused_without_leaking() {
    let (a, b) = pair(libc::SOCK_DGRAM);
    send(&a, b"before");
    // send one descriptor with SCM_RIGHTS
    let passed = std::fs::File::open("/dev/null").unwrap();
    let mut data = *b"with-fd";
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut ctrl = [0u64; 8];
    // SAFETY: msghdr/cmsghdr built with the libc CMSG helpers inside the 64-byte, 8-aligned
    // control buffer; all pointers are to live locals.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = ctrl.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(4) as usize;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), passed.as_raw_fd());
        assert_eq!(libc::sendmsg(a.as_raw_fd(), &msg, 0), 7);
    }
    let before = open_fds();
    match sockqueue::peek_queue(b.as_fd()) {
        Err(SockQueueError::FdsInFlight { count: 1, .. }) => {}
        other => panic!("unexpected: {other:?}"),
    }
    assert_eq!(open_fds(), before, "peeked descriptors were closed");
    // the queue is intact for the real reader
    assert_eq!(recv(&b).unwrap(), b"before");
    assert_eq!(recv(&b).unwrap(), b"with-fd");
}

#[test]
fn zero_length_datagram_is_refused_not_skipped() {
    let (a, b) = pair(libc::SOCK_DGRAM);
    send(&a, b"x");
    send(&a, b"");
    send(&a, b"y");
    match sockqueue::peek_queue(b.as_fd()) {
        Err(SockQueueError::ZeroLengthDatagram { index: 1, .. }) => {}
        other => panic!("unexpected: {other:?}"),
    }
    // untouched
    assert_eq!(recv(&b).unwrap(), b"x");
    assert_eq!(recv(&b).unwrap(), b"");
    assert_eq!(recv(&b).unwrap(), b"y");
}

#[test]
fn datagram_sender_addresses_are_recorded() {
    use std::os::unix::net::UnixDatagram;
    let dir = std::env::temp_dir().join(format!("sockqueue-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let rx = UnixDatagram::bind(dir.join("rx")).unwrap();
    let tx1 = UnixDatagram::bind(dir.join("tx1")).unwrap();
    let tx2 = UnixDatagram::unbound().unwrap();
    tx1.send_to(b"from-1", dir.join("rx")).unwrap();
    tx2.send_to(b"anonymous", dir.join("rx")).unwrap();
    let d = sockqueue::peek_queue(rx.as_fd()).unwrap();
    assert_eq!(d.messages.len(), 2);
    assert_eq!(
        d.messages[0].from.as_deref(),
        Some(dir.join("tx1").to_str().unwrap())
    );
    assert_eq!(d.messages[1].from, None);
    assert_eq!(d.messages[1].data, b"anonymous");
    std::fs::remove_dir_all(&dir).unwrap();
}
