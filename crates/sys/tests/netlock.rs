//! The network lock in a private network namespace: packets of a locked connection are dropped
//! (the peer retransmits, nothing is reset) and flow again once the lock is released.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use sys::netlock::{self, LockSet};

fn in_private_netns(name: &str, f: impl FnOnce() + Send + 'static) {
    if !common::is_root() {
        eprintln!("skipped: {name} needs root (network namespace)");
        return;
    }
    if netlock::find_nft().is_none() {
        eprintln!("skipped: {name} needs nft (Debian package nftables)");
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
fn locked_connection_drops_segments_without_reset_and_flows_after_unlock() {
    in_private_netns("netlock", || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let table = netlock::table_name("test_conn");
        let set = LockSet {
            connections: vec![(s.local_addr().unwrap(), s.peer_addr().unwrap())],
            listeners: vec![l.local_addr().unwrap()],
        };
        netlock::lock(&table, &set, None).unwrap();
        assert!(netlock::is_locked(&table, None).unwrap());
        // Locking again merges into the table.
        netlock::lock(&table, &set, None).unwrap();
        let mut cw = &c;
        cw.write_all(b"hello").unwrap();
        // The segment is dropped: nothing arrives while locked (the lock is never released
        // by itself, so any wait shows it; a short one keeps the test fast).
        s.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut b = [0u8; 16];
        let e = s.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        // A connection request to the listener is dropped too (no refusal).
        let probe = std::net::TcpStream::connect_timeout(
            &l.local_addr().unwrap(),
            Duration::from_millis(300),
        );
        assert_eq!(probe.unwrap_err().kind(), ErrorKind::TimedOut);
        assert!(netlock::unlock(&table, None).unwrap());
        assert!(
            !netlock::unlock(&table, None).unwrap(),
            "second unlock finds nothing"
        );
        assert!(!netlock::is_locked(&table, None).unwrap());
        // The client's retransmission gets through.
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(common::PATIENCE)).unwrap();
        s.read_exact(&mut b[..5]).unwrap();
        assert_eq!(&b[..5], b"hello");
        s.write_all(b"back").unwrap();
        let mut cr = &c;
        cr.set_read_timeout(Some(common::PATIENCE)).unwrap();
        cr.read_exact(&mut b[..4]).unwrap();
        assert_eq!(&b[..4], b"back");
    });
}

#[test]
fn lock_record_is_written_and_read_back() {
    let dir = std::env::temp_dir().join(format!("netlock-rec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(netlock::LockRecord::read(&dir).unwrap(), None);
    let r = netlock::LockRecord {
        table: netlock::table_name("1_2"),
        netns: 7,
        connections: 3,
        listeners: 1,
    };
    r.write(&dir).unwrap();
    assert_eq!(netlock::LockRecord::read(&dir).unwrap(), Some(r));
    std::fs::write(dir.join(netlock::RECORD_FILE), "junk").unwrap();
    let e = netlock::LockRecord::read(&dir).unwrap_err().to_string();
    assert!(e.contains("netlock") && e.contains("crc32c"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn locked_ipv6_connection_drops_segments_and_flows_after_unlock() {
    in_private_netns("netlock ipv6", || {
        let Ok(l) = TcpListener::bind("[::1]:0") else {
            eprintln!("skipped: no IPv6 loopback in the private network namespace");
            return;
        };
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let table = netlock::table_name("test_v6");
        let set = LockSet {
            connections: vec![(s.local_addr().unwrap(), s.peer_addr().unwrap())],
            listeners: vec![],
        };
        netlock::lock(&table, &set, None).unwrap();
        let mut cw = &c;
        cw.write_all(b"six").unwrap();
        s.set_nonblocking(true).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut b = [0u8; 8];
        let e = s.read(&mut b).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WouldBlock, "{e}");
        assert!(netlock::unlock(&table, None).unwrap());
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(common::PATIENCE)).unwrap();
        s.read_exact(&mut b[..3]).unwrap();
        assert_eq!(&b[..3], b"six");
    });
}

/// A lock taken in another process's network namespace is found again by the namespace's
/// inode (as a restore into another namespace does) and released there.
#[test]
fn lock_in_another_namespace_is_found_by_inode_and_released_there() {
    if !common::is_root() || netlock::find_nft().is_none() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    // Killed and reaped on drop, also when an assertion fails; it sleeps far longer than the
    // test can take on a slow machine.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let Ok(child) = std::process::Command::new("unshare")
        .args(["-n", "sleep", "600"])
        .spawn()
    else {
        eprintln!("skipped: needs unshare (util-linux)");
        return;
    };
    let child = Child(child);
    let pid = i32::try_from(child.0.id()).unwrap();
    // unshare execs sleep once the namespace exists.
    let ours = netlock::netns_inode(None).unwrap();
    let mut theirs = ours;
    common::wait_until("the child has its own network namespace", || {
        theirs = netlock::netns_inode(Some(pid)).unwrap();
        theirs != ours
    });
    let table = netlock::table_name("test_other_ns");
    let set = LockSet {
        connections: vec![],
        listeners: vec!["127.0.0.1:5555".parse().unwrap()],
    };
    netlock::lock(&table, &set, Some(pid)).unwrap();
    assert!(netlock::is_locked(&table, Some(pid)).unwrap());
    assert!(!netlock::is_locked(&table, None).unwrap(), "not in ours");
    let ns = netlock::find_netns(theirs).expect("namespace found by inode");
    assert!(netlock::unlock_in(&table, &ns).unwrap());
    assert!(!netlock::is_locked(&table, Some(pid)).unwrap());
    drop(child);
}
