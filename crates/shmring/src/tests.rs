//! Ring tests: threads, forked processes, wrap-around, ack, quiesce, framing properties.
// Test data is generated with deliberate truncating casts (byte patterns, small counters).
#![allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use super::*;
use framing::total_len;
use proptest::prelude::*;
use std::sync::atomic::AtomicBool;

fn payload(producer: u32, i: u32) -> Vec<u8> {
    // Variable length (0..=67 bytes) so records wrap at every alignment.
    let len = (i.wrapping_mul(7) ^ producer) % 68;
    let mut v = Vec::with_capacity(len as usize + 8);
    v.extend_from_slice(&producer.to_le_bytes());
    v.extend_from_slice(&i.to_le_bytes());
    v.extend((0..len).map(|k| (k as u8) ^ (i as u8)));
    v
}

fn check(buf: &[u8], last: &mut std::collections::HashMap<u32, u32>) {
    let p = u32::from_le_bytes(buf[0..4].try_into().unwrap());
    let i = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    assert_eq!(buf, payload(p, i).as_slice(), "payload intact");
    let prev = last.insert(p, i);
    assert_eq!(prev.map_or(0, |x| x + 1), i, "per-producer order kept");
}

#[test]
fn single_thread_roundtrip_and_wrap() {
    let c = RingConsumer::anonymous(4096).unwrap();
    let p = c.producer();
    let mut last = Default::default();
    let mut expect_seq = 1;
    for round in 0..200u32 {
        for i in 0..5 {
            let s = p.push(&payload(0, round * 5 + i)).unwrap();
            assert_eq!(s, u64::from(round * 5 + i) + 1);
        }
        let n = c
            .poll(100, |seq, b| {
                assert_eq!(seq, expect_seq);
                expect_seq += 1;
                check(b, &mut last);
            })
            .unwrap();
        assert_eq!(n, 5);
    }
    assert!(!c.has_data());
}

/// One poll whose records run past the end of the data area (pad, then offset 0) gives every
/// byte back: each lap fills the ring to the last record that fits (a simulation of the
/// reservation rule: a record that does not fit before the end pads to it), one poll drains it,
/// and every record reads as written.
#[test]
fn poll_gives_back_runs_across_the_wrap() {
    // A producer on a full ring waits without a time limit: if the consumer ever stopped giving
    // space back, the body would hang instead of failing. Run it on a thread with a deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        poll_gives_back_runs_across_the_wrap_body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("no progress in 60 s: a push waits on a ring the consumer did not give back")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test body panicked (its message is above)")
        }
    }
}

fn poll_gives_back_runs_across_the_wrap_body() {
    const CAP: usize = 4096;
    let c = RingConsumer::anonymous(CAP).unwrap();
    let p = c.producer();
    let fill = |i: usize, len: usize| -> Vec<u8> {
        (0..len)
            .map(|k| u8::try_from((k + i) % 251).unwrap())
            .collect()
    };
    let (mut head, mut tail) = (0usize, 0usize);
    let mut i = 0usize;
    for lap in 0..40usize {
        let first = i;
        loop {
            let len = 1 + (i * 37 + lap) % 200;
            let total = total_len(len);
            let off = head % CAP;
            let pad = if off + total > CAP { CAP - off } else { 0 };
            if head + pad + total - tail > CAP {
                break; // would wait for space
            }
            p.push(&fill(i, len)).unwrap();
            head += pad + total;
            i += 1;
        }
        assert!(i - first > 10, "lap {lap}: the ring was given back");
        let mut expect = u64::try_from(first).unwrap() + 1;
        let n = c
            .poll(usize::MAX, |seq, b| {
                assert_eq!(seq, expect);
                assert_eq!(b, &fill(usize::try_from(seq).unwrap() - 1, b.len())[..]);
                expect += 1;
            })
            .unwrap();
        assert_eq!(n, i - first);
        tail = head;
    }
    assert!(!c.has_data());
}

#[test]
fn too_large_refused() {
    let c = RingConsumer::anonymous(4096).unwrap();
    let p = c.producer();
    assert!(matches!(
        p.push(&vec![0; 4096]),
        Err(RingError::TooLarge { .. })
    ));
    assert_eq!(p.push(&vec![1; p.max_payload()]).unwrap(), 1);
}

/// `poll_take`: a declined record stays in the ring and comes first in the next poll; what was
/// taken is given back (the tail moved past it).
#[test]
fn poll_take_leaves_a_declined_record_in_the_ring() {
    let c = RingConsumer::anonymous(4096).unwrap();
    let p = c.producer();
    for i in 0..10u32 {
        p.push(&payload(0, i)).unwrap();
    }
    let mut last = Default::default();
    let n = c
        .poll_take(100, |seq, b| {
            if seq == 4 {
                return false;
            }
            check(b, &mut last);
            true
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(c.next_seq(), 4);
    assert_eq!(c.map.header().tail.0.seq.load(Ordering::SeqCst), 4);
    let mut next = 4;
    let n = c
        .poll(100, |seq, b| {
            assert_eq!(seq, next);
            next += 1;
            check(b, &mut last);
        })
        .unwrap();
    assert_eq!(n, 7);
    assert!(!c.has_data());
}

/// One long poll gives consumed space back while it runs (every `capacity / GIVE_BACK_PART`
/// bytes), so a producer waiting on a full ring goes on during it: the poll below delivers far
/// more records than the ring holds, because its callback waits, at record k, for the producer
/// to have pushed record k + 50 (the ring holds 64 of these records). Without the give-back
/// inside the poll, that wait never ends.
#[test]
fn long_poll_gives_space_back_while_it_runs() {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        long_poll_gives_space_back_body();
        let _ = tx.send(());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("no progress in 60 s: the poll did not give space back while it ran")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the test body panicked (its message is above)")
        }
    }
}

fn long_poll_gives_space_back_body() {
    const CAP: usize = 4096;
    const N: u64 = 1000;
    let c = RingConsumer::anonymous(CAP).unwrap();
    let p = c.producer();
    let rec = [9u8; 48];
    assert_eq!(total_len(rec.len()), 64);
    let pushed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let (p, pushed) = (&p, &pushed);
        s.spawn(move || {
            for _ in 0..N {
                let seq = p.push(&rec).unwrap();
                pushed.store(seq, Ordering::SeqCst);
            }
        });
        let mut got = 0u64;
        while got < N {
            got += c
                .poll_take(usize::MAX, |seq, b| {
                    assert_eq!(b, &rec[..]);
                    let want = (seq + 50).min(N);
                    while pushed.load(Ordering::SeqCst) < want {
                        std::thread::yield_now();
                    }
                    true
                })
                .unwrap() as u64;
        }
        assert_eq!(got, N);
    });
}

#[test]
fn threads_concurrent_drain() {
    let c = RingConsumer::anonymous(8192).unwrap();
    let threads = 4u32;
    let per = 20_000u32;
    let prod = c.producer();
    let mut got = 0u64;
    let mut last = std::collections::HashMap::new();
    let mut next = 1u64;
    std::thread::scope(|s| {
        let prod = &prod;
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..per {
                    prod.push(&payload(t, i)).unwrap();
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while got < u64::from(threads * per) {
            assert!(Instant::now() < deadline);
            got += c
                .poll(64, |seq, b| {
                    assert_eq!(seq, next);
                    next += 1;
                    check(b, &mut last);
                })
                .unwrap() as u64;
            c.wait(Duration::from_millis(1));
        }
    });
    assert_eq!(got, u64::from(threads * per));
}

#[test]
fn forked_processes_and_file_ring() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring");
    let c = RingConsumer::create(&path, 16384).unwrap();
    let procs = 3u32;
    let per = 5_000u32;
    let mut pids = vec![];
    for t in 0..procs {
        // SAFETY: the child only opens the ring, pushes and _exits; no locks are held here.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = std::panic::catch_unwind(|| {
                let p = RingProducer::open(&path).unwrap();
                for i in 0..per {
                    p.push(&payload(t, i)).unwrap();
                }
            })
            .map_or(1, |()| 0);
            // SAFETY: leave the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        pids.push(pid);
    }
    let mut last = Default::default();
    let mut got = 0u64;
    let mut next = 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got < u64::from(procs * per) {
        assert!(Instant::now() < deadline, "timed out, got {got}");
        c.wait(Duration::from_millis(50));
        got += c
            .poll(1000, |seq, b| {
                assert_eq!(seq, next);
                next += 1;
                check(b, &mut last);
            })
            .unwrap() as u64;
    }
    for pid in pids {
        let mut st = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
        assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
    }
}

#[test]
fn open_refuses_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk");
    std::fs::write(&path, vec![7u8; DATA_OFFSET + 8192]).unwrap();
    assert!(matches!(
        RingProducer::open(&path),
        Err(RingError::BadMagic { .. })
    ));
    std::fs::write(&path, b"short").unwrap();
    assert!(matches!(
        RingProducer::open(&path),
        Err(RingError::BadLayout { .. })
    ));
    assert!(RingProducer::open(&dir.path().join("none")).is_err());
    assert!(matches!(
        RingConsumer::anonymous(1000),
        Err(RingError::BadCapacity(1000))
    ));
}

#[test]
fn ack_wakes_waiter_across_fork() {
    let c = RingConsumer::anonymous(4096).unwrap();
    let p = c.producer();
    let seq = p.push(b"out").unwrap();
    assert!(matches!(
        p.wait_ack(seq, Duration::from_millis(20)),
        Err(RingError::Timeout(_))
    ));
    // SAFETY: the child only waits on the shared mapping and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let ok = p.wait_ack(seq, Duration::from_secs(10)).is_ok();
        // SAFETY: leave the child immediately.
        unsafe { libc::_exit(i32::from(!ok)) };
    }
    std::thread::sleep(Duration::from_millis(30));
    c.set_ack(seq);
    let mut st = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    assert!(libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0);
    assert_eq!(p.ack_seq(), seq);
}

#[test]
fn consumer_wait_is_woken() {
    let c = RingConsumer::anonymous(4096).unwrap();
    assert!(!c.wait(Duration::from_millis(5)));
    let p = c.producer();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(30));
            p.push(b"x").unwrap();
        });
        // Woken by the push, not ended by its timeout: the timeout is far beyond any delay
        // of the pushing thread under load, and a wait that timed out returns only after it.
        let t = Instant::now();
        assert!(c.wait(Duration::from_secs(120)));
        assert!(t.elapsed() < Duration::from_secs(110));
    });
    assert_eq!(c.poll(10, |_, b| assert_eq!(b, b"x")).unwrap(), 1);
}

#[test]
fn quiesce_parks_threads_and_reports_cut() {
    let c = RingConsumer::anonymous(65536).unwrap();
    let stop = AtomicBool::new(false);
    let prod = c.producer();
    let report = std::thread::scope(|s| {
        let prod = &prod;
        let stop = &stop;
        for k in 0..3u32 {
            s.spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() } as u32;
                let tok = prod.register_thread(std::process::id(), tid).unwrap();
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    prod.enter(tok);
                    if k == 2 {
                        prod.blocking(tok);
                        std::thread::sleep(Duration::from_millis(1));
                        prod.enter(tok);
                    }
                    let p = payload(k, i);
                    prod.push_as(Some(tok), p.len(), |b| b.copy_from_slice(&p))
                        .unwrap();
                    prod.leave(tok);
                    i += 1;
                }
                prod.unregister_thread(tok);
            });
        }
        // Drain while waiting for producers to start.
        let mut drained = 0;
        while drained < 300 || c.threads().len() < 3 {
            drained += c.poll(usize::MAX, |_, _| {}).unwrap();
        }
        let r = c.quiesce(Duration::from_secs(10)).unwrap();
        // While quiesced nothing new is committed beyond the cut.
        let mut max = 0;
        c.poll(usize::MAX, |seq, _| max = seq).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        c.poll(usize::MAX, |seq, _| max = seq).unwrap();
        assert_eq!(
            max.max(r.cut),
            r.cut,
            "no record after the cut while quiesced"
        );
        assert_eq!(c.next_seq(), r.cut + 1);
        assert_eq!(prod.quiesce_cut(), Some(r.cut));
        stop.store(true, Ordering::SeqCst);
        c.resume();
        // Drain until the producers exit.
        let t = Instant::now();
        while c.threads().iter().any(|(_, st)| *st != ThreadState::Free) {
            c.poll(usize::MAX, |_, _| {}).unwrap();
            assert!(t.elapsed() < Duration::from_secs(60));
        }
        r
    });
    assert_eq!(
        report.parked.len() + report.blocked.len() + report.outside.len(),
        3,
        "{report:?}"
    );
    assert!(report.cut >= 300);
}

proptest! {
    #[test]
    fn framing_roundtrip(len in 0usize..5000, seq in any::<u64>()) {
        let total = total_len(len);
        prop_assert!(total.is_multiple_of(8) && total >= RECORD_HEADER_LEN + len && total < RECORD_HEADER_LEN + len + 8);
        let mut rec = vec![0u8; total];
        let h = RecordHeader { seq, len: len as u32 };
        h.encode_tail(&mut rec);
        prop_assert_eq!(RecordHeader::decode(&rec).unwrap(), h);
        // A record whose word length disagrees with its payload length is refused.
        prop_assert!(RecordHeader::decode(&rec[..total.saturating_sub(8).max(1)]).is_err());
    }

    #[test]
    fn ring_sequence_of_sizes(sizes in proptest::collection::vec(0usize..900, 1..200), batch in 1usize..20) {
        let c = RingConsumer::anonymous(65536).unwrap();
        let p = c.producer();
        let mut out: Vec<Vec<u8>> = vec![];
        let mut next = 1u64;
        for chunk in sizes.chunks(batch) {
            for (k, &n) in chunk.iter().enumerate() {
                let v: Vec<u8> = (0..n).map(|i| (i + k) as u8).collect();
                p.push(&v).unwrap();
                out.push(v);
            }
            c.poll(usize::MAX, |seq, b| {
                assert_eq!(seq, next);
                assert_eq!(b, out[(seq - 1) as usize].as_slice());
                next += 1;
            }).unwrap();
        }
        prop_assert_eq!(next as usize, sizes.len() + 1);
    }
}

/// Wait for our own child and return its exit code (or 128 + signal).
fn wait_child(pid: libc::pid_t) -> i32 {
    let mut st = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut st, 0) };
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        128 + libc::WTERMSIG(st)
    }
}

/// Exit code of a liveness probe: 0 timeout (consumer alive), 1 `ConsumerGone`, 2 other.
fn ack_probe(p: &RingProducer<'_>, seq: u64, timeout: Duration) -> i32 {
    match p.wait_ack(seq, timeout) {
        Err(RingError::Timeout(_)) => 0,
        Err(RingError::ConsumerGone { .. }) => 1,
        _ => 2,
    }
}

#[test]
fn consumer_gone_is_seen_through_the_ring_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring");
    // In a child of its own, so that no child forked meanwhile by another test inherits the
    // consumer's descriptor (and with it the lock). Same process for both ends: the pid check
    // would say "alive", only the lock can tell.
    // SAFETY: the child only uses the ring and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(|| {
            let c = RingConsumer::create(&path, 4096).unwrap();
            let p = RingProducer::open(&path).unwrap();
            let seq = p.push(b"out").unwrap();
            if ack_probe(&p, seq, Duration::from_millis(20)) != 0 {
                return 10;
            }
            drop(c);
            if ack_probe(&p, seq, Duration::from_secs(5)) != 1 {
                return 11;
            }
            // A full ring: the producer waiting for space learns it too.
            for _ in 0..1000 {
                match p.push(&[7u8; 200]) {
                    Ok(_) => {}
                    Err(RingError::ConsumerGone { .. }) => return 0,
                    Err(_) => return 12,
                }
            }
            13
        })
        .unwrap_or(1);
        // SAFETY: leave the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    assert_eq!(wait_child(pid), 0);
}

#[test]
fn consumer_alive_from_another_pid_namespace() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (creates a PID namespace)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ring");
    let c = RingConsumer::create(&path, 4096).unwrap();
    let lock_fd = c._lock.as_ref().unwrap().as_raw_fd();
    let mut fds = [0i32; 2];
    // SAFETY: pipe fills a two-int array.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only unshares, forks, waits and _exits (grandchild: ring and pipe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: closing inherited descriptors in the child: the consumer's lock stays held by
        // the parent's open file description; the grandchild must not hold it through a copy.
        unsafe {
            libc::close(lock_fd);
            libc::close(fds[0]);
        }
        // SAFETY: unshare affects only this (single-threaded) child's future children.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            // SAFETY: leave the child.
            unsafe { libc::_exit(77) };
        }
        // SAFETY: as above; the grandchild is pid 1 of the new namespace.
        let g = unsafe { libc::fork() };
        if g == 0 {
            let code = std::panic::catch_unwind(|| {
                // SAFETY: getpid has no preconditions.
                if unsafe { libc::getpid() } != 1 {
                    return 20;
                }
                let p = RingProducer::open(&path).unwrap();
                let seq = p.push(b"out").unwrap();
                // The consumer's pid does not exist here: the old check said "gone".
                if ack_probe(&p, seq, Duration::from_millis(300)) != 0 {
                    return 21;
                }
                // Tell the parent, which then drops the consumer.
                // SAFETY: writing one byte from a valid buffer to our pipe end.
                unsafe { libc::write(fds[1], [1u8].as_ptr().cast(), 1) };
                if ack_probe(&p, seq, Duration::from_secs(20)) != 1 {
                    return 22;
                }
                0
            })
            .unwrap_or(23);
            // SAFETY: leave the grandchild.
            unsafe { libc::_exit(code) };
        }
        let code = if g < 0 { 24 } else { wait_child(g) };
        // SAFETY: leave the child.
        unsafe { libc::_exit(code) };
    }
    // SAFETY: closing our copy of the write end, so a dead child yields EOF below.
    unsafe { libc::close(fds[1]) };
    let mut b = [0u8; 1];
    // SAFETY: reading into a valid one-byte buffer from our pipe end.
    let n = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
    drop(c);
    // SAFETY: our own descriptor.
    unsafe { libc::close(fds[0]) };
    let code = wait_child(pid);
    if code == 77 {
        eprintln!("skipped: cannot unshare a PID namespace");
        return;
    }
    assert_eq!(
        n, 1,
        "the producer did not report the consumer alive (code {code})"
    );
    assert_eq!(code, 0);
}
