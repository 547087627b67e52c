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
        let t = Instant::now();
        assert!(c.wait(Duration::from_secs(5)));
        assert!(t.elapsed() < Duration::from_secs(4));
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
            assert!(t.elapsed() < Duration::from_secs(10));
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
