//! Lazy restore with userfaultfd MISSING: faults served by a thread (as in kernel-facts t10),
//! background push, MADV_DONTNEED during restore, a fork during restore, and a failing source.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Map, PAGE};
use sys::uffd::{OpenFlags, Userfaultfd};
use sys::uffd_lazy::{LazyError, LazyOptions, LazyServer, MemSource, PageSource, LAZY_FEATURES};

const LEN: usize = 64 << 20;

/// The tests of this file run one at a time: a fork by one test while another test's server
/// has stopped reading its userfaultfd deadlocks (the fork waits for that context's fork event,
/// and the half-created child holds a copy of the descriptor, so dropping the server does not
/// release the context). In real use the server runs in the restorer process and keeps reading.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
const NPAGES: usize = LEN / PAGE;

/// The "image": page i holds i in its first 8 bytes and a fill byte; every 10th page is zero.
fn image() -> Vec<u8> {
    let mut v = vec![0u8; LEN];
    for i in 0..NPAGES {
        if i % 10 == 3 {
            continue;
        }
        let p = &mut v[i * PAGE..(i + 1) * PAGE];
        p.fill(u8::try_from(i % 251).unwrap() + 1);
        p[..8].copy_from_slice(&(i as u64).to_ne_bytes());
    }
    v
}

fn word(m: &Map, i: usize) -> u64 {
    // SAFETY: in bounds of the readable mapping; the read may fault and be served by uffd.
    unsafe { std::ptr::read_volatile(m.ptr.add(i * PAGE).cast::<u64>()) }
}

fn want_word(i: usize) -> u64 {
    if i % 10 == 3 {
        0
    } else {
        i as u64
    }
}

fn uffd() -> Option<Userfaultfd> {
    match Userfaultfd::open(OpenFlags { nonblock: true }, LAZY_FEATURES) {
        Ok(u) => Some(u),
        Err(e) => {
            eprintln!("skipped: userfaultfd with fork/remap/remove/unmap events unavailable: {e}");
            None
        }
    }
}

#[test]
fn faults_served_by_thread_random_order() {
    let _serial = serial();
    let Some(u) = uffd() else { return };
    let img = image();
    let m = Map::new(LEN);
    let mut server = LazyServer::new(
        u,
        MemSource {
            base: m.addr(),
            data: &img,
        },
        LazyOptions {
            prefetch_pages: 16,
            push_pages: 0,
        },
    );
    server.register(m.addr(), LEN as u64, m.addr()).unwrap();
    let stop = AtomicBool::new(false);
    let stats = std::thread::scope(|s| {
        let h = s.spawn(|| server.run(&stop));
        let t0 = Instant::now();
        let mut j = 0usize;
        for _ in 0..NPAGES {
            j = (j + 104_729) % NPAGES;
            assert_eq!(word(&m, j), want_word(j), "page {j}");
        }
        let el = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let st = h.join().unwrap().unwrap();
        eprintln!(
            "random touch of {NPAGES} pages: {:.2} us/page; {st:?}",
            el.as_secs_f64() * 1e6 / NPAGES as f64
        );
        st
    });
    assert!(stats.faults > 0);
    // (>=: a fork by another test in this process is followed too and adds the child's pages)
    assert!(
        stats.fault_pages + stats.zero_pages >= NPAGES as u64,
        "{stats:?}"
    );
    // full content check (is_complete() may still wait for a child forked by another test)
    // SAFETY: the mapping is fully populated and readable.
    let all = unsafe { std::slice::from_raw_parts(m.ptr, LEN) };
    assert!(all == &img[..]);
}

#[test]
fn background_push_completes_and_first_touch_is_served() {
    let _serial = serial();
    let Some(u) = uffd() else { return };
    let img = image();
    let m = Map::new(LEN);
    let mut server = LazyServer::new(
        u,
        MemSource {
            base: m.addr(),
            data: &img,
        },
        LazyOptions {
            prefetch_pages: 16,
            push_pages: 512,
        },
    );
    server.register(m.addr(), LEN as u64, m.addr()).unwrap();
    let stop = AtomicBool::new(false);
    let stats = std::thread::scope(|s| {
        let h = s.spawn(|| server.run(&stop));
        let t0 = Instant::now();
        assert_eq!(word(&m, NPAGES - 1), want_word(NPAGES - 1));
        eprintln!("first touch served in {:?}", t0.elapsed());
        let st = h.join().unwrap().unwrap(); // returns once every page is in place
        eprintln!("push complete after {:?}: {st:?}", t0.elapsed());
        st
    });
    assert!(stats.pushed_pages > 0);
    // SAFETY: the mapping is fully populated and readable.
    let all = unsafe { std::slice::from_raw_parts(m.ptr, LEN) };
    assert!(all == &img[..]);
}

#[test]
fn dontneed_during_restore_reads_zero_not_image() {
    let _serial = serial();
    let Some(u) = uffd() else { return };
    let img = image();
    let m = Map::new(LEN);
    let mut server = LazyServer::new(
        u,
        MemSource {
            base: m.addr(),
            data: &img,
        },
        LazyOptions {
            prefetch_pages: 4,
            push_pages: 0,
        },
    );
    server.register(m.addr(), LEN as u64, m.addr()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| server.run(&stop));
        assert_eq!(word(&m, 200), 200); // filled (with 201..203 prefetched)
        m.dontneed(200, 1); // a filled page dropped by the application
        m.dontneed(500, 8); // pending pages dropped before ever being touched
        assert_eq!(word(&m, 200), 0);
        assert_eq!(word(&m, 504), 0);
        assert_eq!(word(&m, 201), 201); // untouched by the madvise
        assert_eq!(word(&m, 508), 508);
        stop.store(true, Ordering::Relaxed);
        let st = h.join().unwrap().unwrap();
        assert!(st.layout_events >= 2, "{st:?}");
    });
}

#[test]
fn fork_during_restore_child_is_served_too() {
    let _serial = serial();
    if !common::is_root() {
        eprintln!("skipped: fork of the test process (needs root for the uffd event path)");
        return;
    }
    let Some(u) = uffd() else { return };
    let img = image();
    let m = Map::new(LEN);
    let mut server = LazyServer::new(
        u,
        MemSource {
            base: m.addr(),
            data: &img,
        },
        LazyOptions {
            prefetch_pages: 16,
            push_pages: 0,
        },
    );
    server.register(m.addr(), LEN as u64, m.addr()).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| server.run(&stop));
        assert_eq!(word(&m, 7), 7);
        let (base, pages) = (m.ptr as usize, NPAGES);
        let child = common::fork_child(|| {
            // the child reads pages never touched by the parent: served through its own uffd
            let mut ok = true;
            let mut i = 1000;
            while i < pages {
                // SAFETY: in bounds of the inherited mapping.
                let w = unsafe { std::ptr::read_volatile((base + i * PAGE) as *const u64) };
                ok &= w == want_word(i);
                i += 997;
            }
            // SAFETY: exit status reports the check.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        });
        let mut st = 0;
        // SAFETY: reaps our child; `st` is a valid out pointer.
        let r = unsafe { libc::waitpid(child, &mut st, 0) };
        assert_eq!(r, child);
        assert!(
            libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
            "child saw wrong memory: status {st:#x}"
        );
        stop.store(true, Ordering::Relaxed);
        let stats = h.join().unwrap().unwrap();
        assert!(stats.forks >= 1, "{stats:?}");
    });
}

struct Failing;
impl PageSource for Failing {
    fn read_pages(&mut self, _addr: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "image host went away",
        ))
    }
}

/// The source disappears: the server reports it and the faulting process stays blocked (never
/// runs on wrong memory) until it is killed.
#[test]
fn failing_source_leaves_target_blocked() {
    let _serial = serial();
    if !common::is_root() {
        eprintln!("skipped: needs root (pidfd_getfd from a child)");
        return;
    }
    if uffd().is_none() {
        return;
    }
    let m = Map::new(16 * PAGE);
    let (fd_r, fd_w) = common::pipe();
    let (go_r, go_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    let base = m.ptr as usize;
    let child = common::fork_child(|| {
        // SAFETY: raw userfaultfd syscall in the child; the number is reported to the parent.
        let u = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        common::write_byte(fd_w, u8::try_from(u).unwrap_or(255));
        common::read_byte(go_r);
        // SAFETY: in bounds of the inherited mapping; blocks in the fault.
        let w = unsafe { std::ptr::read_volatile((base + 3 * PAGE) as *const u8) };
        common::write_byte(ack_w, w);
    });
    let remote = common::read_byte(fd_r).unwrap();
    assert_ne!(remote, 255);
    let fd = sys::fdpull::pull_fd(child, i32::from(remote)).unwrap();
    let u = Userfaultfd::from_unconfigured(fd, LAZY_FEATURES).unwrap();
    let mut server = LazyServer::new(
        u,
        Failing,
        LazyOptions {
            prefetch_pages: 4,
            push_pages: 0,
        },
    );
    server
        .register(m.addr(), 16 * PAGE as u64, m.addr())
        .unwrap();
    common::write_byte(go_w, b'g');
    let deadline = Instant::now() + common::PATIENCE;
    let err = loop {
        match server.step(Duration::from_millis(50)) {
            Err(e) => break e,
            Ok(_) if Instant::now() > deadline => panic!("no fault seen"),
            Ok(_) => {}
        }
    };
    assert!(matches!(err, LazyError::Source { .. }), "{err}");
    assert!(err.to_string().contains("kill the restored tree"), "{err}");
    std::thread::sleep(Duration::from_millis(100));
    // the child is still blocked in its fault: nothing acknowledged
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap()
        .trim()
        .chars()
        .next()
        .unwrap();
    assert!(state == 'S' || state == 'D', "child state {state}");
    // SAFETY: make the ack pipe non-blocking and check it is empty.
    let n = unsafe {
        libc::fcntl(ack_r, libc::F_SETFL, libc::O_NONBLOCK);
        let mut b = 0u8;
        libc::read(ack_r, (&mut b as *mut u8).cast(), 1)
    };
    assert!(n < 0, "the child ran past its fault");
    // kill first, then drop the server (closing the uffd would let it run on zero pages)
    common::kill_and_reap(child);
    drop(server);
    for fd in [fd_r, fd_w, go_r, go_w, ack_r, ack_w] {
        // SAFETY: closing pipe ends we own.
        unsafe { libc::close(fd) };
    }
}

/// Cross-process, as a restorer would run it: the userfaultfd belongs to the child (created
/// there, pulled with pidfd_getfd), the server runs here and fills the child's pages.
#[test]
fn child_faults_served_from_another_process() {
    let _serial = serial();
    if !common::is_root() {
        eprintln!("skipped: needs root (pidfd_getfd from a child)");
        return;
    }
    if uffd().is_none() {
        return;
    }
    let len = 16 << 20;
    let pages = len / PAGE;
    let img: Vec<u8> = (0..len)
        .map(|i| u8::try_from((i / PAGE) % 251).unwrap())
        .collect();
    let m = Map::new(len);
    let (fd_r, fd_w) = common::pipe();
    let (go_r, go_w) = common::pipe();
    let base = m.ptr as usize;
    let child = common::fork_child(move || {
        // SAFETY: raw userfaultfd syscall in the child; the number is reported to the parent.
        let u = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        common::write_byte(fd_w, u8::try_from(u).unwrap_or(255));
        common::read_byte(go_r);
        let mut ok = true;
        for p in (0..pages).rev() {
            // SAFETY: in bounds of the inherited mapping; faults are served by the parent.
            let b = unsafe { std::ptr::read_volatile((base + p * PAGE + 17) as *const u8) };
            ok &= usize::from(b) == p % 251;
        }
        // SAFETY: exit status reports the check.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    });
    let remote = common::read_byte(fd_r).unwrap();
    let fd = sys::fdpull::pull_fd(child, i32::from(remote)).unwrap();
    let u = Userfaultfd::from_unconfigured(fd, LAZY_FEATURES).unwrap();
    let mut server = LazyServer::new(
        u,
        MemSource {
            base: m.addr(),
            data: &img,
        },
        LazyOptions {
            prefetch_pages: 8,
            push_pages: 0,
        },
    );
    server.register(m.addr(), len as u64, m.addr()).unwrap();
    common::write_byte(go_w, b'g');
    let deadline = Instant::now() + common::PATIENCE;
    let mut status = 0;
    loop {
        server.step(Duration::from_millis(10)).unwrap();
        // SAFETY: non-blocking reap of our child; `status` is a valid out pointer.
        let r = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if r == child {
            break;
        }
        assert!(Instant::now() < deadline, "child did not finish");
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child saw wrong memory: {status:#x}"
    );
    let st = server.stats();
    assert!(st.faults > 0 && st.fault_pages >= pages as u64, "{st:?}");
    for fd in [fd_r, fd_w, go_r, go_w] {
        // SAFETY: closing pipe ends we own.
        unsafe { libc::close(fd) };
    }
}
