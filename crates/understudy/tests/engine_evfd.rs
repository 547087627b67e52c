//! End to end: event descriptors and unix socket pairs.
//! - `evloop`: eventfd, timerfd and signalfd in one epoll loop (and a child writing to the
//!   shared eventfd), checkpointed while running, restored twice, checking itself;
//! - `unixpair`: a request/response pair of processes over unix stream, seqpacket and datagram
//!   socketpairs with messages in flight in both directions at the checkpoint.

mod common;

use common::*;

#[test]
fn eventfd_timerfd_signalfd_in_one_epoll_loop_survive() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("evloop", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn unix_socketpair_request_response_with_messages_in_flight_survives() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("unixpair", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn unix_and_tcp_listeners_and_udp_sockets_are_rebound() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("listeners", &[]);
    let w = start(&prog);
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

/// An echo server outside the tree: echoes everything until EOF; returns the bytes echoed, or
/// the error that ended the connection (a reset would mean the checkpoint was noticed).
fn echo_server() -> (u16, std::thread::JoinHandle<Result<usize, String>>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .map_err(|e| e.to_string())?;
        let mut total = 0;
        let mut b = [0u8; 4096];
        loop {
            let n = s
                .read(&mut b)
                .map_err(|e| format!("after {total} bytes: {e}"))?;
            if n == 0 {
                return Ok(total);
            }
            s.write_all(&b[..n])
                .map_err(|e| format!("after {total} bytes: {e}"))?;
            total += n;
        }
    });
    (port, h)
}

#[test]
fn established_tcp_connections_inside_and_to_outside_the_tree_survive() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tcpconn", &[]);
    let (port, echo) = echo_server();
    let w = start_with_arg(&prog, &port.to_string());
    cycle(&w, 2);
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
    drop(w);
    let echoed = echo.join().expect("echo thread");
    assert_eq!(echoed, Ok(53 * 16), "the outside peer's view of the stream");
}

#[test]
fn leave_running_takes_tcp_connections_out_of_repair_mode() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tcpconn", &[]);
    let (port, echo) = echo_server();
    let w = start_with_arg(&prog, &port.to_string());
    let img = w.dir.path().join("img");
    ok(&checkpoint(w.pid, &img, true), "checkpoint --leave-running");
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
    drop(w);
    let echoed = echo.join().expect("echo thread");
    assert_eq!(echoed, Ok(53 * 16), "the outside peer's view of the stream");
}

#[test]
fn refused_dump_takes_tcp_connections_out_of_repair_mode() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("tcpconn", &[]);
    let (port, echo) = echo_server();
    let w = start_with_arg(&prog, &format!("{port} netlink"));
    let img = w.dir.path().join("img");
    let o = checkpoint(w.pid, &img, false);
    assert!(
        !o.status.success(),
        "checkpoint of a netlink socket holder succeeded"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("pid {} fd", w.pid)) && err.contains("netlink"),
        "{err}"
    );
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
    drop(w);
    let echoed = echo.join().expect("echo thread");
    assert_eq!(echoed, Ok(53 * 16), "the outside peer's view of the stream");
}
