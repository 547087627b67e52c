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
