//! PAGEMAP_SCAN + userfaultfd write-protect dirty tracking, in-process and cross-process.

mod common;

use common::{Map, PAGE};
use sys::dirty::{DirtyTracker, Selection, TrackOptions};
use sys::pagemap::{count_pages, Categories, Pagemap, ScanFlags, ScanRequest};
use sys::uffd::{OpenFlags, RegisterMode, Userfaultfd};

fn skip_unless_supported() -> bool {
    if let Err(e) = sys::dirty::supported() {
        eprintln!("skipped: kernel lacks uffd write-protect async: {e}");
        return true;
    }
    if let Err(e) = Pagemap::open_self().and_then(|p| p.present(0, 4096)) {
        eprintln!("skipped: PAGEMAP_SCAN unavailable: {e}");
        return true;
    }
    false
}

fn own_pid() -> i32 {
    i32::try_from(std::process::id()).unwrap()
}

/// Scans every other page written with several batch sizes, including ones that end exactly at
/// the kernel's 512-region internal chunks, and checks no region is lost or reported twice
/// (the `walk_end` quirk of kernel-facts q1).
#[test]
fn pagemap_scan_walk_end_quirk_handled() {
    if skip_unless_supported() {
        return;
    }
    let len = 64 << 20;
    let m = Map::new(len);
    m.fill(1);
    let uffd = Userfaultfd::open(OpenFlags { nonblock: true }, sys::dirty::FEATURES).unwrap();
    uffd.register(m.addr(), len as u64, RegisterMode::WP)
        .unwrap();
    uffd.writeprotect(m.addr(), len as u64, true).unwrap();
    let pages = len / PAGE;
    for i in (0..pages).step_by(2) {
        m.poke(i, 2);
    }
    let want = (pages / 2) as u64;
    for batch in [1usize, 100, 511, 512, 513, 1000, 4096, 8192, 100_000] {
        let pm = Pagemap::open_self().unwrap().with_batch(batch);
        let w = pm.written(m.addr(), m.end()).unwrap();
        assert_eq!(count_pages(&w), want, "batch {batch}");
        assert_eq!(w.len() as u64, want, "batch {batch}: regions");
        for (k, r) in w.iter().enumerate() {
            assert_eq!(
                r.start,
                m.addr() + (2 * k * PAGE) as u64,
                "batch {batch} region {k}"
            );
            assert_eq!(r.len(), PAGE as u64);
        }
    }
    // get + re-protect with a small batch, then nothing is left
    let pm = Pagemap::open_self().unwrap().with_batch(700);
    let mut out = Vec::new();
    let n = pm.take_written(m.addr(), m.end(), &mut out).unwrap();
    assert_eq!(n, want);
    // A page the kernel is migrating at that instant (compaction) is a migration entry:
    // reported SWAPPED instead of PRESENT. Both hold data; only neither would mean "dropped".
    for r in &out {
        assert!(
            r.categories.contains(Categories::WRITTEN)
                && (r.categories.contains(Categories::PRESENT)
                    || r.categories.contains(Categories::SWAPPED)),
            "region {:#x}-{:#x} reported with categories {:?}",
            r.start,
            r.end,
            r.categories
        );
    }
    assert_eq!(count_pages(&pm.written(m.addr(), m.end()).unwrap()), 0);
    // pages holding data (present, or a migration entry): all
    let mut with_data = Vec::new();
    pm.scan(
        &ScanRequest {
            start: m.addr(),
            end: m.end(),
            flags: ScanFlags::default(),
            mask: Categories::default(),
            inverted: Categories::default(),
            anyof: Categories::PRESENT | Categories::SWAPPED,
            return_mask: Categories::PRESENT | Categories::SWAPPED,
        },
        &mut with_data,
    )
    .unwrap();
    assert_eq!(count_pages(&with_data), pages as u64);
}

#[test]
fn check_wpasync_refuses_unregistered_range() {
    if skip_unless_supported() {
        return;
    }
    let m = Map::new(16 * PAGE);
    m.fill(1);
    let pm = Pagemap::open_self().unwrap();
    let mut out = Vec::new();
    let e = pm.take_written(m.addr(), m.end(), &mut out).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("not registered for async write-protection"),
        "{msg}"
    );
}

#[test]
fn in_process_tracker_reports_exact_pages() {
    if skip_unless_supported() {
        return;
    }
    let len = 64 << 20;
    let m = Map::new(len);
    m.fill(1);
    let uffd = Userfaultfd::open(OpenFlags { nonblock: true }, sys::uffd::Features(0));
    drop(uffd);
    // an unconfigured uffd (as pulled from a target)
    // SAFETY: userfaultfd syscall, result checked; ownership passed to OwnedFd.
    let raw = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(raw >= 0);
    // SAFETY: fresh fd owned by nobody else.
    let fd = unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(i32::try_from(raw).unwrap())
    };
    let mut t =
        DirtyTracker::with_uffd(own_pid(), fd, Selection::Ranges(vec![(m.addr(), m.end())]))
            .unwrap();
    assert_eq!(t.tracked(), &[(m.addr(), m.end())]);
    let pages = len / PAGE;
    let written: Vec<usize> = (0..pages).step_by(100).collect(); // 1%
    for &i in &written {
        m.poke(i, 7);
    }
    let r = t.collect().unwrap();
    assert_eq!(r.written_pages, written.len() as u64);
    assert!(r.whole.is_empty() && r.skipped.is_empty());
    let starts: Vec<u64> = r
        .written
        .iter()
        .map(|x| (x.start - m.addr()) / PAGE as u64)
        .collect();
    assert_eq!(
        starts,
        written.iter().map(|&i| i as u64).collect::<Vec<_>>()
    );
    eprintln!(
        "1% of 64 MiB: {} pages in {:?}",
        r.written_pages, r.scan_time
    );
    // nothing new
    assert_eq!(t.collect().unwrap().written_pages, 0);
    // a dropped page is reported written but not present (it reads as zero now)
    m.dontneed(5, 1);
    let r = t.collect().unwrap();
    assert_eq!(r.written.len(), 1);
    assert_eq!(r.written[0].start, m.addr() + 5 * PAGE as u64);
    assert!(!r.written[0].categories.contains(Categories::PRESENT));
    assert_eq!(m.peek(5), 0);
}

/// A forked child writes 1% of 64 MiB; the tracker was armed by injecting userfaultfd() into
/// it with a test-local ptrace injector; the injected fd is gone from the child's table.
#[cfg(target_arch = "x86_64")]
#[test]
fn cross_process_tracker_via_injection() {
    if !common::is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    if skip_unless_supported() {
        return;
    }
    let len = 64 << 20;
    let m = Map::new(len);
    let (cmd_r, cmd_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    let (base, pages) = (m.ptr as usize, len / PAGE);
    let child = common::fork_child(|| {
        // child: own copy of the mapping; fill it, then obey commands
        // SAFETY: the mapping was inherited at the same address and is writable.
        unsafe { std::ptr::write_bytes(base as *mut u8, 1, len) };
        common::write_byte(ack_w, b'r');
        while let Some(c) = common::read_byte(cmd_r) {
            if c == b'w' {
                let mut i = 0;
                while i < pages {
                    // SAFETY: in bounds of the child's writable copy of the mapping.
                    unsafe { std::ptr::write_volatile((base + i * PAGE) as *mut u8, 9) };
                    i += 100;
                }
            }
            common::write_byte(ack_w, b'k');
        }
    });
    let _guard = common::ChildGuard(child);
    assert_eq!(common::read_byte(ack_r), Some(b'r'));
    let mut inj = common::inject::Injector::attach(child).unwrap();
    let mut injected = |nr: i64, a: [u64; 6]| inj.syscall(nr, a);
    let tracker = DirtyTracker::arm(child, &mut injected, &TrackOptions::default());
    inj.detach();
    let mut t = match tracker {
        Ok(t) => t,
        Err(e) => {
            panic!("arm failed: {e}");
        }
    };
    assert!(
        t.tracked()
            .iter()
            .any(|&(s, e)| s <= m.addr() && e >= m.end()),
        "{:?}",
        t.tracked()
    );
    // the injected fd was closed in the child: no userfaultfd left in its table
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{child}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(!fds.iter().any(|l| l.contains("userfaultfd")), "{fds:?}");

    common::write_byte(cmd_w, b'w');
    assert_eq!(common::read_byte(ack_r), Some(b'k'));
    let r = t.collect().unwrap();
    let inside: Vec<_> = r
        .written
        .iter()
        .filter(|x| x.start >= m.addr() && x.end <= m.end())
        .collect();
    let n_inside: u64 = inside.iter().map(|x| x.len() / PAGE as u64).sum();
    let want = pages.div_ceil(100) as u64;
    eprintln!(
        "cross-process: {} pages written in the 64 MiB map (want {want}), {} elsewhere, {} KiB scanned in {:?}; skipped {:?}",
        n_inside,
        r.written_pages - n_inside,
        r.scanned_bytes / 1024,
        r.scan_time,
        r.skipped
    );
    assert_eq!(n_inside, want);
    for x in &inside {
        assert_eq!((x.start - m.addr()) % (100 * PAGE as u64), 0);
    }
    // nothing written in between: the map reports nothing (the child's stack may)
    common::write_byte(cmd_w, b'n');
    assert_eq!(common::read_byte(ack_r), Some(b'k'));
    let r = t.collect().unwrap();
    assert!(r
        .written
        .iter()
        .all(|x| x.end <= m.addr() || x.start >= m.end()));
    // page contents seen through /proc/PID/mem match
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{child}/mem")).unwrap();
    let mut b = [0u8; 1];
    mem.read_exact_at(&mut b, m.addr() + 100 * PAGE as u64)
        .unwrap();
    assert_eq!(b[0], 9);
    mem.read_exact_at(&mut b, m.addr() + 101 * PAGE as u64)
        .unwrap();
    assert_eq!(b[0], 1);
    // SAFETY: closing our ends of the pipes.
    unsafe {
        libc::close(cmd_w);
        libc::close(cmd_r);
        libc::close(ack_w);
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(ack_r) };
}

/// The same through the engine's own ptrace helpers and remote-syscall guard
/// (`DirtyTracker::arm_remote`), with the fd left in the target and re-attached later.
#[cfg(target_arch = "x86_64")]
#[test]
fn arm_remote_and_reattach_with_engine_guard() {
    if !common::is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    if skip_unless_supported() {
        return;
    }
    let len = 16 << 20;
    let m = Map::new(len);
    let (cmd_r, cmd_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    let (base, pages) = (m.ptr as usize, len / PAGE);
    let child = common::fork_child(|| {
        // SAFETY: the inherited mapping is writable.
        unsafe { std::ptr::write_bytes(base as *mut u8, 1, len) };
        common::write_byte(ack_w, b'r');
        while let Some(c) = common::read_byte(cmd_r) {
            if c == b'w' {
                for i in [0usize, 7, pages - 1] {
                    // SAFETY: in bounds of the child's writable mapping.
                    unsafe { std::ptr::write_volatile((base + i * PAGE) as *mut u8, 5) };
                }
            }
            common::write_byte(ack_w, b'k');
        }
    });
    let _guard = common::ChildGuard(child);
    assert_eq!(common::read_byte(ack_r), Some(b'r'));
    let maps = sys::proc::maps(child).unwrap();
    let vdso = maps.iter().find(|e| e.path == "[vdso]").expect("vdso");
    let insn = sys::remote::find_syscall_insn(child, vdso.start, vdso.end).unwrap();
    sys::ptrace::seize(child, 0).unwrap();
    sys::ptrace::interrupt(child).unwrap();
    sys::ptrace::wait_stop(child).unwrap();
    let opts = TrackOptions {
        leave_fd_in_target: true,
        ..TrackOptions::default()
    };
    let armed = {
        let mut rs = sys::RemoteSyscalls::new(child, insn).unwrap();
        let t = DirtyTracker::arm_remote(child, &mut rs, &opts);
        rs.finish().unwrap();
        t
    };
    sys::ptrace::detach(child, 0).unwrap();
    let t = armed.unwrap();
    let remote_fd = t.remote_fd().expect("fd left in target");
    let tracked = t.tracked().to_vec();
    drop(t); // another invocation re-attaches later: tracking continues meanwhile

    common::write_byte(cmd_w, b'w');
    assert_eq!(common::read_byte(ack_r), Some(b'k'));
    let mut t2 = DirtyTracker::reattach(child, remote_fd, tracked, Selection::default()).unwrap();
    let r = t2.collect().unwrap();
    let inside: Vec<u64> = r
        .written
        .iter()
        .filter(|x| x.start >= m.addr() && x.end <= m.end())
        .map(|x| (x.start - m.addr()) / PAGE as u64)
        .collect();
    assert_eq!(inside, vec![0, 7, pages as u64 - 1]);
    // a wrong fd is refused clearly
    let e = DirtyTracker::reattach(child, 0, vec![], Selection::default()).unwrap_err();
    assert!(e.to_string().contains("not a userfaultfd"), "{e}");
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(cmd_w);
        libc::close(cmd_r);
        libc::close(ack_w);
    }
    // SAFETY: closing our read end.
    unsafe { libc::close(ack_r) };
}

/// A mapping created after arming is reported whole once, then tracked page by page.
#[cfg(target_arch = "x86_64")]
#[test]
fn new_mapping_reported_whole_then_tracked() {
    if !common::is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    if skip_unless_supported() {
        return;
    }
    // one shared page to learn the child's new mapping address
    // SAFETY: anonymous shared mapping of one page; checked below.
    let shared = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(shared, libc::MAP_FAILED);
    let shared_addr = shared as usize;
    let (cmd_r, cmd_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    const NEW_LEN: usize = 64 * PAGE;
    let child = common::fork_child(move || {
        let mut newmap = 0usize;
        while let Some(c) = common::read_byte(cmd_r) {
            match c {
                b'm' => {
                    // SAFETY: raw anonymous mapping in the child; address published via the
                    // shared page; all pages written once.
                    unsafe {
                        let p = libc::mmap(
                            std::ptr::null_mut(),
                            NEW_LEN,
                            libc::PROT_READ | libc::PROT_WRITE,
                            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                            -1,
                            0,
                        );
                        std::ptr::write_bytes(p.cast::<u8>(), 3, NEW_LEN);
                        newmap = p as usize;
                        std::ptr::write_volatile(shared_addr as *mut usize, newmap);
                    }
                }
                b'w' => {
                    // SAFETY: in bounds of the child's new mapping.
                    unsafe { std::ptr::write_volatile((newmap + 5 * PAGE) as *mut u8, 9) };
                }
                _ => {}
            }
            common::write_byte(ack_w, b'k');
        }
    });
    let _guard = common::ChildGuard(child);
    let mut inj = common::inject::Injector::attach(child).unwrap();
    let mut f = |nr: i64, a: [u64; 6]| inj.syscall(nr, a);
    let t = DirtyTracker::arm(child, &mut f, &TrackOptions::default());
    inj.detach();
    let mut t = t.unwrap();
    common::write_byte(cmd_w, b'm');
    assert_eq!(common::read_byte(ack_r), Some(b'k'));
    // SAFETY: the child wrote the address into the shared page before acknowledging.
    let newmap = unsafe { std::ptr::read_volatile(shared as *const usize) } as u64;
    let r = t.collect().unwrap();
    assert!(
        r.whole
            .iter()
            .any(|&(s, e)| s <= newmap && e >= newmap + NEW_LEN as u64),
        "new mapping {newmap:#x} not in whole {:x?}",
        r.whole
    );
    assert!(t
        .tracked()
        .iter()
        .any(|&(s, e)| s <= newmap && e >= newmap + NEW_LEN as u64));
    common::write_byte(cmd_w, b'w');
    assert_eq!(common::read_byte(ack_r), Some(b'k'));
    let r = t.collect().unwrap();
    let inside: Vec<u64> = r
        .written
        .iter()
        .filter(|x| x.start >= newmap && x.end <= newmap + NEW_LEN as u64)
        .map(|x| (x.start - newmap) / PAGE as u64)
        .collect();
    assert_eq!(inside, vec![5]);
    assert!(
        !r.whole.iter().any(|&(s, e)| s <= newmap && e > newmap),
        "{:x?}",
        r.whole
    );
    // SAFETY: closing our pipe ends and unmapping the shared page.
    unsafe {
        libc::close(cmd_w);
        libc::close(cmd_r);
        libc::close(ack_w);
        libc::close(ack_r);
        libc::munmap(shared, PAGE);
    }
}

/// An incremental chain: a full copy, then 5 rounds in which the child writes 1% of its pages
/// at random (anywhere inside each page) and drops a few; applying each round's reported pages
/// to the copy reproduces the child's memory page for page at every link.
#[cfg(target_arch = "x86_64")]
#[test]
fn incremental_chain_reproduces_memory_page_for_page() {
    if !common::is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    if skip_unless_supported() {
        return;
    }
    let len = 64 << 20;
    let m = Map::new(len);
    let (cmd_r, cmd_w) = common::pipe();
    let (ack_r, ack_w) = common::pipe();
    let (base, pages) = (m.ptr as usize, len / PAGE);
    let child = common::fork_child(move || {
        // SAFETY: the inherited mapping is writable.
        unsafe { std::ptr::write_bytes(base as *mut u8, 0x11, len) };
        common::write_byte(ack_w, b'r');
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        while let Some(round) = common::read_byte(cmd_r) {
            for _ in 0..pages / 100 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let page = usize::try_from(x >> 33).unwrap_or(0) % pages;
                let off = usize::try_from((x >> 13) & 0xfff).unwrap_or(0);
                // SAFETY: in bounds of the child's writable mapping.
                unsafe { std::ptr::write_volatile((base + page * PAGE + off) as *mut u8, round) };
            }
            for _ in 0..3 {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let page = usize::try_from(x >> 33).unwrap_or(0) % pages;
                // SAFETY: drops one page of the child's private anonymous mapping.
                unsafe {
                    libc::madvise(
                        (base + page * PAGE) as *mut libc::c_void,
                        PAGE,
                        libc::MADV_DONTNEED,
                    )
                };
            }
            common::write_byte(ack_w, b'k');
        }
    });
    let _guard = common::ChildGuard(child);
    assert_eq!(common::read_byte(ack_r), Some(b'r'));
    let mut inj = common::inject::Injector::attach(child).unwrap();
    let mut f = |nr: i64, a: [u64; 6]| inj.syscall(nr, a);
    let t = DirtyTracker::arm(child, &mut f, &TrackOptions::default());
    inj.detach();
    let mut t = t.unwrap();
    use std::os::unix::fs::FileExt;
    let mem = std::fs::File::open(format!("/proc/{child}/mem")).unwrap();
    // link 0: full copy (taken after arming, while the child is idle)
    let mut image = vec![0u8; len];
    mem.read_exact_at(&mut image, m.addr()).unwrap();
    let mut actual = vec![0u8; len];
    for round in 1..=5u8 {
        common::write_byte(cmd_w, round);
        assert_eq!(common::read_byte(ack_r), Some(b'k'));
        let r = t.collect().unwrap();
        let mut applied = 0u64;
        for reg in r
            .written
            .iter()
            .filter(|x| x.end > m.addr() && x.start < m.end())
        {
            let (s, e) = (reg.start.max(m.addr()), reg.end.min(m.end()));
            let off = usize::try_from(s - m.addr()).unwrap();
            let n = usize::try_from(e - s).unwrap();
            // present, or a migration entry at that instant (SWAPPED): data; neither: dropped
            if reg.categories.contains(Categories::PRESENT)
                || reg.categories.contains(Categories::SWAPPED)
            {
                mem.read_exact_at(&mut image[off..off + n], s).unwrap();
            } else {
                image[off..off + n].fill(0); // dropped: reads as zero
            }
            applied += (e - s) / PAGE as u64;
        }
        assert!(
            r.whole.iter().all(|&(s, e)| e <= m.addr() || s >= m.end()),
            "map reported whole"
        );
        mem.read_exact_at(&mut actual, m.addr()).unwrap();
        let bad = (0..pages)
            .filter(|&p| image[p * PAGE..(p + 1) * PAGE] != actual[p * PAGE..(p + 1) * PAGE])
            .count();
        assert_eq!(
            bad, 0,
            "round {round}: {bad} page(s) differ after applying {applied} reported pages"
        );
        assert!(
            applied <= (pages / 100 + 3) as u64,
            "round {round}: {applied} pages reported"
        );
    }
    // SAFETY: closing our pipe ends.
    unsafe {
        libc::close(cmd_w);
        libc::close(cmd_r);
        libc::close(ack_w);
        libc::close(ack_r);
    }
}
