//! A tree holding something the engine cannot dump (a socket, an io_uring instance): checkpoint
//! exits non-zero naming the process, the fd and the reason, and the tree keeps running
//! untouched.

mod common;

use common::*;

fn refused(arg: Option<&str>, reason: &str) {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let prog = build("unsupported", &[]);
    let w = match arg {
        None => start(&prog),
        Some(a) => start_with_arg(&prog, a),
    };
    let fd: i32 = std::fs::read_to_string(w.dir.path().join("fd"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if fd < 0 {
        eprintln!("skipped: the kernel refused to create the resource");
        return;
    }
    let img = w.dir.path().join("img");
    let o = checkpoint(w.pid, &img, false);
    assert!(!o.status.success(), "checkpoint should have failed");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("pid {} fd {fd}", w.pid)), "{err}");
    assert!(err.contains(reason), "{err}");
    assert!(!img.join("tree.img").exists());
    let v = verdict(&w);
    assert!(v.starts_with("PASS"), "{v}");
}

#[test]
fn socket_is_refused_and_the_tree_keeps_running() {
    refused(None, "socket");
}

#[test]
fn io_uring_is_refused_and_the_tree_keeps_running() {
    refused(Some("uring"), "io_uring instances cannot be checkpointed");
}

#[test]
fn tcp_socket_in_close_wait_is_refused_naming_its_state() {
    refused(Some("closewait"), "in state CLOSE_WAIT (8)");
}
