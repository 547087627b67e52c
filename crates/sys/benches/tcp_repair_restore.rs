//! Benchmark: dump and re-create N established loopback TCP connections (both ends, 2N
//! sockets) with TCP_REPAIR, each with bytes queued in both directions; every restored
//! connection is then checked (queued bytes arrive, a ping round-trips).
//!
//! `cargo bench -p sys --bench tcp_repair_restore -- [N=1000] [RUNS=7]` (root; each run in a
//! fresh network namespace).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use sys::tcp_repair::{self, Repair, TcpConnState};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Run {
    connect_ms: f64,
    dump_ms: f64,
    restore_ms: f64,
    restore_server_side_ms: f64,
}

fn one_run(n: usize) -> Run {
    sys::netns::enter_new_netns().expect("private network namespace");
    let ls = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = ls.local_addr().unwrap();
    let mut pairs: Vec<(TcpStream, TcpStream)> = Vec::with_capacity(n);
    let t0 = Instant::now();
    for _ in 0..n {
        let mut c = TcpStream::connect(addr).unwrap();
        let (mut s, _) = ls.accept().unwrap();
        c.write_all(&[b'c'; 100]).unwrap();
        s.write_all(&[b's'; 200]).unwrap();
        pairs.push((c, s));
    }
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(ls);
    std::thread::sleep(Duration::from_millis(50));

    // dump both ends of every connection, leaving them in repair mode
    let t0 = Instant::now();
    let mut states: Vec<(TcpConnState, TcpConnState)> = Vec::with_capacity(n);
    for (c, s) in &pairs {
        let rc = Repair::enter(c.as_fd()).unwrap();
        let cs = rc.dump().unwrap();
        rc.keep();
        let rs = Repair::enter(s.as_fd()).unwrap();
        let ss = rs.dump().unwrap();
        rs.keep();
        states.push((cs, ss));
    }
    let dump_ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(pairs); // silent close (repair mode)

    // re-create: all sockets in repair mode first, then make them live
    let t0 = Instant::now();
    let mut fds: Vec<(OwnedFd, OwnedFd)> = Vec::with_capacity(n);
    for (cs, ss) in &states {
        fds.push((
            tcp_repair::restore_in_repair(cs).unwrap(),
            tcp_repair::restore_in_repair(ss).unwrap(),
        ));
    }
    for ((c, s), (cs, ss)) in fds.iter().zip(&states) {
        tcp_repair::finish_restore(c.as_fd(), cs).unwrap();
        tcp_repair::finish_restore(s.as_fd(), ss).unwrap();
    }
    let restore_ms = t0.elapsed().as_secs_f64() * 1e3;

    // every connection continues: queued bytes arrive, then a ping round-trips
    let mut ok = 0usize;
    let mut streams: Vec<(TcpStream, TcpStream)> = fds
        .into_iter()
        .map(|(c, s)| (TcpStream::from(c), TcpStream::from(s)))
        .collect();
    for (c, s) in &mut streams {
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = [0u8; 200];
        c.read_exact(&mut b).unwrap();
        assert!(b.iter().all(|&x| x == b's'));
        let mut b = [0u8; 100];
        s.read_exact(&mut b).unwrap();
        assert!(b.iter().all(|&x| x == b'c'));
        c.write_all(b"ping").unwrap();
        let mut p = [0u8; 4];
        s.read_exact(&mut p).unwrap();
        s.write_all(&p).unwrap();
        c.read_exact(&mut p).unwrap();
        assert_eq!(&p, b"ping");
        ok += 1;
    }
    assert_eq!(ok, n);

    // server side only (what a migrated server with external clients re-creates): dump the
    // server ends again, close them silently, re-create them while the clients stay
    let mut server_states = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for (c, s) in streams {
        let r = Repair::enter(s.as_fd()).unwrap();
        server_states.push(r.dump().unwrap());
        r.keep();
        drop(s);
        clients.push(c);
    }
    let t0 = Instant::now();
    let servers: Vec<OwnedFd> = server_states
        .iter()
        .map(|st| tcp_repair::restore(st).unwrap())
        .collect();
    let restore_server_side_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut servers: Vec<TcpStream> = servers.into_iter().map(TcpStream::from).collect();
    for (c, s) in clients.iter_mut().zip(&mut servers) {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.write_all(b"pong").unwrap();
        let mut p = [0u8; 4];
        s.read_exact(&mut p).unwrap();
        assert_eq!(&p, b"pong");
    }
    Run {
        connect_ms,
        dump_ms,
        restore_ms,
        restore_server_side_ms,
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(7);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: tcp_repair_restore needs root (TCP_REPAIR, network namespaces)");
        return;
    }
    let (mut d, mut r, mut rs, mut cn) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // each run in its own thread, moved into its own network namespace
        let run = std::thread::spawn(move || one_run(n))
            .join()
            .expect("run failed");
        println!(
            "run {i}: baseline connect+accept+write of {n} fresh connections {:.2} ms | dump {} sockets {:.2} ms | re-create {} sockets (both ends) {:.2} ms | re-create {} server ends {:.2} ms",
            run.connect_ms,
            2 * n,
            run.dump_ms,
            2 * n,
            run.restore_ms,
            n,
            run.restore_server_side_ms
        );
        cn.push(run.connect_ms);
        d.push(run.dump_ms);
        r.push(run.restore_ms);
        rs.push(run.restore_server_side_ms);
    }
    let (md, mr, mrs, mc) = (
        median(&mut d),
        median(&mut r),
        median(&mut rs),
        median(&mut cn),
    );
    println!(
        "median of {runs}: {n} connections: dump both ends {md:.2} ms; re-create both ends {mr:.2} ms ({:.1} us/socket); re-create server ends only {mrs:.2} ms; target < 100 ms; baseline: open {n} fresh connections {mc:.2} ms",
        mr * 1e3 / (2 * n) as f64
    );
}
