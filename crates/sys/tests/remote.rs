//! The remote-syscall guard on a real tracee: results come back, registers and memory are put
//! back, and fork events are reported.

use std::process::{Child, Command};

use sys::ptrace;
use sys::remote::nr;
use sys::RemoteSyscalls;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

struct Tracee(Child);

impl Drop for Tracee {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stopped_sleep() -> (Tracee, i32, u64) {
    let child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("spawn sleep");
    let pid = i32::try_from(child.id()).unwrap();
    let t = Tracee(child);
    // Seize it only once it runs `sleep`: before its exec it is a copy of this test process
    // (possibly a vfork child sharing our memory), and a slow machine may take any time to get
    // there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() != "sleep\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "child {pid} did not exec sleep within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    ptrace::seize(pid, 0).unwrap();
    ptrace::interrupt(pid).unwrap();
    ptrace::wait_stop(pid).unwrap();
    let maps = sys::proc::maps(pid).unwrap();
    let v = maps.iter().find(|m| m.path == "[vdso]").unwrap();
    let insn = sys::remote::find_syscall_insn(pid, v.start, v.end).unwrap();
    (t, pid, insn)
}

#[test]
fn injected_syscalls_return_results_and_put_the_thread_back() {
    if !is_root() {
        eprintln!("skipped: needs root (ptrace of a child is fine, but CI runs this as root)");
        return;
    }
    let (_t, pid, insn) = stopped_sleep();
    let before = ptrace::get_regs(pid).unwrap();
    let maps_before = sys::proc::maps(pid).unwrap();
    {
        let mut rs = RemoteSyscalls::new(pid, insn).unwrap();
        assert_eq!(
            rs.syscall("getpid", nr::GETPID, [0; 6]).unwrap(),
            u64::try_from(pid).unwrap()
        );
        let scratch = rs.map_scratch(None, 4096).unwrap();
        rs.put(8, b"hello").unwrap();
        let mut back = [0u8; 5];
        rs.get(8, &mut back).unwrap();
        assert_eq!(&back, b"hello");
        assert!(!scratch.is_null());
        // A failing call is an error naming the thread and the call.
        let e = rs
            .syscall("close(-1)", nr::CLOSE, [u64::MAX, 0, 0, 0, 0, 0])
            .unwrap_err();
        assert!(e.to_string().contains("remote close(-1)"), "{e}");
        assert_eq!(e.errno(), Some(libc::EBADF));
    }
    assert_eq!(ptrace::get_regs(pid).unwrap(), before, "registers put back");
    assert_eq!(
        sys::proc::maps(pid).unwrap(),
        maps_before,
        "scratch page unmapped"
    );
    ptrace::detach(pid, 0).unwrap();
}

#[test]
fn xstate_sigmask_and_rseq_are_readable() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (_t, pid, _) = stopped_sleep();
    let x = ptrace::get_xstate(pid).unwrap();
    assert!(x.len() >= 512);
    ptrace::set_xstate(pid, &x).unwrap();
    let m = ptrace::get_sigmask(pid).unwrap();
    ptrace::set_sigmask(pid, m | 1 << 9).unwrap();
    assert_eq!(ptrace::get_sigmask(pid).unwrap(), m | 1 << 9);
    ptrace::set_sigmask(pid, m).unwrap();
    // glibc registers rseq; either way the call must work.
    let _ = ptrace::get_rseq(pid).unwrap();
    ptrace::detach(pid, 0).unwrap();
}

#[test]
fn pipe_peek_does_not_consume() {
    let (r, w) = sys::pipe::pipe().unwrap();
    sys::pipe::fill(&w, b"queued bytes", 0).unwrap();
    assert_eq!(sys::pipe::peek(&r).unwrap(), b"queued bytes");
    assert_eq!(sys::pipe::peek(&r).unwrap(), b"queued bytes");
    let (r2, _w2) = sys::pipe::filled(b"abc", 65536).unwrap();
    assert_eq!(sys::pipe::peek(&r2).unwrap(), b"abc");
}
