//! The exported wrappers and the `core_*` functions that both the wrappers and the seccomp
//! SIGSYS handler use. `core_*` functions take and return syscall-convention values.

use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use intercept::msg::{Header, Kind};
use intercept::Digest;
use libc::{c_int, c_void, size_t, ssize_t};

use crate::rt::{
    self, diverge, enter, fd_forget, fd_kind, fd_set_kind, libc_ret, replay_done, replay_next, sys,
    sys3, FD_FILE, FD_OUTSIDE, FD_OWN, MODE, RECORD, REPLAY, TLS, VPID,
};

/// Resolve the next definition of a libc symbol once and cache it.
macro_rules! real {
    ($name:literal, $ty:ty) => {{
        static P: AtomicUsize = AtomicUsize::new(0);
        let mut p = P.load(Ordering::Relaxed);
        if p == 0 {
            p = resolve(concat!($name, "\0"));
            P.store(p, Ordering::Relaxed);
        }
        // SAFETY: p is the address of libc's function with this exact C signature.
        unsafe { std::mem::transmute::<usize, $ty>(p) }
    }};
}

/// The next definition of `name` (NUL-terminated) after this library, or exit with a message.
#[cold]
#[inline(never)]
fn resolve(name: &'static str) -> usize {
    // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds libc's definition.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    if p == 0 {
        let shown = name.trim_end_matches('\0');
        rt::say(&[b"understudy: cannot resolve ", shown.as_bytes(), b"\n"]);
        sys3(libc::SYS_exit_group, 127, 0, 0);
    }
    p
}

#[inline]
fn mode() -> u8 {
    MODE.load(Ordering::Relaxed)
}

/// Bytes at `p` (empty for null or non-positive lengths).
#[inline]
fn bytes<'a>(p: *const u8, n: i64) -> &'a [u8] {
    if p.is_null() || n <= 0 {
        return &[];
    }
    // SAFETY: the application handed us `p` valid for at least `n` bytes for this call (the
    // kernel just read or wrote them).
    unsafe { std::slice::from_raw_parts(p, n as usize) }
}

#[inline]
fn copy_out(dst: *mut u8, src: &[u8]) {
    if dst.is_null() || src.is_empty() {
        return;
    }
    // SAFETY: dst is the application's buffer for this call, checked by the caller to be at
    // least src.len() bytes (the recorded result never exceeds the requested size).
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
}

fn preview(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b.iter().take(48) {
        match c {
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    if b.len() > 48 {
        s.push_str("...");
    }
    s
}

// ------------------------------------------------------------------ reads

fn iov_slice<'a>(iov: *const libc::iovec, n: i64) -> &'a [libc::iovec] {
    if iov.is_null() || n <= 0 {
        return &[];
    }
    // SAFETY: the application's iovec array of n entries for this call.
    unsafe { std::slice::from_raw_parts(iov, n as usize) }
}

/// Scatter `data` over an iovec array.
fn scatter(iov: &[libc::iovec], mut data: &[u8]) {
    for v in iov {
        if data.is_empty() {
            break;
        }
        let n = v.iov_len.min(data.len());
        copy_out(v.iov_base.cast(), &data[..n]);
        data = &data[n..];
    }
}

fn iov_total(iov: &[libc::iovec]) -> usize {
    iov.iter().map(|v| v.iov_len).sum()
}

/// Replay a recorded input: check it fits, copy it with `put`, return the recorded result.
fn replay_input(kind: Kind, fd: i64, cap: usize, put: impl FnOnce(&[u8])) -> i64 {
    let rec = rt::replay_next_with(kind, Some(fd), || format!("room for {cap} bytes"));
    let r = rec.h.ret;
    if r > 0 {
        if r as usize > cap || rec.data.len() < r as usize {
            diverge(
                &rec,
                &format!("room for {cap} bytes, the journal recorded {r}"),
            );
        }
        put(&rec.data[..r as usize]);
    }
    replay_done(&rec);
    r
}

pub fn core_read(fd: i64, buf: *mut u8, len: usize) -> i64 {
    let real = || sys3(libc::SYS_read, fd, buf as i64, len as i64);
    let Some(g) = enter() else { return real() };
    if fd_kind(fd) == FD_FILE {
        drop(g);
        return real();
    }
    if mode() == RECORD {
        g.blocking();
        let r = sys3(
            libc::SYS_read,
            fd,
            buf as i64,
            len.min(intercept::msg::MAX_READ) as i64,
        );
        g.unblocked();
        g.emit1(Kind::Read, r, fd as u64, len as u64, 0, bytes(buf, r));
        r
    } else {
        replay_input(Kind::Read, fd, len, |d| copy_out(buf, d))
    }
}

pub fn core_readv(fd: i64, iov: *const libc::iovec, cnt: i64) -> i64 {
    let real = || sys3(libc::SYS_readv, fd, iov as i64, cnt);
    let Some(g) = enter() else { return real() };
    if fd_kind(fd) == FD_FILE {
        drop(g);
        return real();
    }
    let v = iov_slice(iov, cnt);
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        // Gather what was read, at most 16 iovecs as separate parts (no allocation).
        let mut parts: [&[u8]; 16] = [&[]; 16];
        let mut left = r.max(0) as usize;
        let mut k = 0;
        for e in v {
            if left == 0 || k == 16 {
                break;
            }
            let n = e.iov_len.min(left);
            parts[k] = bytes(e.iov_base.cast(), n as i64);
            left -= n;
            k += 1;
        }
        g.emit(
            Kind::Readv,
            r,
            fd as u64,
            iov_total(v) as u64,
            0,
            &parts[..k],
        );
        r
    } else {
        replay_input(Kind::Readv, fd, iov_total(v), |d| scatter(v, d))
    }
}

pub fn core_recvfrom(
    fd: i64,
    buf: *mut u8,
    len: usize,
    flags: i64,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> i64 {
    let real = || {
        sys(
            libc::SYS_recvfrom,
            fd,
            buf as i64,
            len as i64,
            flags,
            addr as i64,
            alen as i64,
        )
    };
    let Some(g) = enter() else { return real() };
    if mode() == RECORD {
        g.blocking();
        let r = sys(
            libc::SYS_recvfrom,
            fd,
            buf as i64,
            len.min(intercept::msg::MAX_READ) as i64,
            flags,
            addr as i64,
            alen as i64,
        );
        g.unblocked();
        let al = if alen.is_null() || addr.is_null() || r < 0 {
            0
        } else {
            // SAFETY: alen is the application's in/out length for this call.
            unsafe { *alen }
        };
        let ab = bytes(addr as *const u8, i64::from(al.min(128)));
        g.emit(
            Kind::Recvfrom,
            r,
            fd as u64,
            len as u64,
            u64::from(al),
            &[bytes(buf, r), ab],
        );
        r
    } else {
        let rec = replay_next(Kind::Recvfrom, Some(fd));
        let r = rec.h.ret;
        let n = r.max(0) as usize;
        if n > len || rec.data.len() < n {
            diverge(
                &rec,
                &format!("room for {len} bytes, the journal recorded {r}"),
            );
        }
        copy_out(buf, &rec.data[..n]);
        let al = rec.h.a2 as usize;
        if !addr.is_null() && !alen.is_null() {
            // SAFETY: alen is the application's in/out length for this call.
            let room = unsafe { *alen } as usize;
            let ab = &rec.data[n..];
            copy_out(addr.cast(), &ab[..ab.len().min(room)]);
            // SAFETY: as above.
            unsafe { *alen = al as libc::socklen_t };
        }
        replay_done(&rec);
        r
    }
}

pub fn core_recvmsg(fd: i64, m: *mut libc::msghdr, flags: i64) -> i64 {
    let mp = m as i64;
    let real = || sys3(libc::SYS_recvmsg, fd, mp, flags);
    let Some(g) = enter() else { return real() };
    if m.is_null() {
        drop(g);
        return real();
    }
    // SAFETY: the application's msghdr for this call.
    let mh = unsafe { &mut *m };
    let v = iov_slice(mh.msg_iov, mh.msg_iovlen as i64);
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        let mut parts: [&[u8]; 16] = [&[]; 16];
        let mut left = r.max(0) as usize;
        let mut k = 0;
        for e in v {
            if left == 0 || k == 16 {
                break;
            }
            let n = e.iov_len.min(left);
            parts[k] = bytes(e.iov_base.cast(), n as i64);
            left -= n;
            k += 1;
        }
        g.emit(
            Kind::Recvmsg,
            r,
            fd as u64,
            iov_total(v) as u64,
            mh.msg_flags as u64,
            &parts[..k],
        );
        r
    } else {
        let rec = replay_next(Kind::Recvmsg, Some(fd));
        let r = rec.h.ret;
        let n = r.max(0) as usize;
        if n > iov_total(v) || rec.data.len() < n {
            diverge(&rec, "receive buffer smaller than the recorded message");
        }
        scatter(v, &rec.data[..n]);
        mh.msg_flags = rec.h.a2 as c_int;
        mh.msg_controllen = 0;
        mh.msg_namelen = 0;
        replay_done(&rec);
        r
    }
}

// ------------------------------------------------------------------ writes

/// Shared logic of every output call. `perform` makes the real call; `dg` digests the first `n`
/// bytes the application asked to write.
fn output(
    kind: Kind,
    fd: i64,
    len: usize,
    perform: impl Fn() -> i64,
    dg: impl Fn(usize) -> u64,
    show: impl Fn() -> String,
) -> i64 {
    let Some(g) = enter() else { return perform() };
    let k = fd_kind(fd);
    if mode() == RECORD {
        g.blocking();
        if rt::sync_mode() && k != FD_FILE {
            // Output commit: nothing leaves before every message so far is durable.
            rt::wait_durable();
        }
        let r = perform();
        g.unblocked();
        g.emit1(kind, r, fd as u64, len as u64, dg(r.max(0) as usize), &[]);
        r
    } else {
        let rec = rt::replay_next_with(kind, Some(fd), || {
            format!("{len} bytes, digest {:016x}: \"{}\"", dg(len), show())
        });
        let rr = rec.h.ret;
        let want = rr.max(0) as usize;
        if rec.h.a1 != len as u64 || (want > 0 && dg(want) != rec.h.a2) {
            diverge(
                &rec,
                &format!(
                    "{}(fd {fd}, {len} bytes, digest {:016x}): \"{}\"",
                    kind.name(),
                    dg(want.min(len)),
                    show()
                ),
            );
        }
        let r = if (k == FD_FILE || k == FD_OWN) && rr >= 0 {
            let r = perform();
            if r != rr && r >= 0 {
                // A short write where the recording wrote more (or vice versa): report it.
                diverge(
                    &rec,
                    &format!("{}(fd {fd}) wrote {r} bytes now", kind.name()),
                );
            }
            r
        } else {
            rr
        };
        replay_done(&rec);
        r
    }
}

pub fn core_write(fd: i64, buf: *const u8, len: usize) -> i64 {
    if mode() != RECORD {
        return write_general(fd, buf, len);
    }
    // Record mode, written out (what `output` does): the closures `output` takes are stored to
    // the stack on entry for its replay branch, which the record path does not need.
    let real = || sys3(libc::SYS_write, fd, buf as i64, len as i64);
    let Some(g) = enter() else { return real() };
    let k = fd_kind(fd);
    g.blocking();
    if rt::sync_mode() && k != FD_FILE {
        // Output commit: nothing leaves before every message so far is durable.
        rt::wait_durable();
    }
    let r = real();
    g.unblocked();
    let d = intercept::digest(bytes(buf, (r.max(0) as usize).min(len) as i64));
    g.emit1(Kind::Write, r, fd as u64, len as u64, d, &[]);
    r
}

/// `write` outside record mode (replay, or interception off): through `output`.
#[inline(never)]
fn write_general(fd: i64, buf: *const u8, len: usize) -> i64 {
    output(
        Kind::Write,
        fd,
        len,
        || sys3(libc::SYS_write, fd, buf as i64, len as i64),
        |n| intercept::digest(bytes(buf, n.min(len) as i64)),
        || preview(bytes(buf, len as i64)),
    )
}

fn iov_digest(v: &[libc::iovec], n: usize) -> u64 {
    let mut d = Digest::new();
    let mut left = n;
    for e in v {
        if left == 0 {
            break;
        }
        let k = e.iov_len.min(left);
        d.update(bytes(e.iov_base.cast(), k as i64));
        left -= k;
    }
    d.finish()
}

pub fn core_writev(fd: i64, iov: *const libc::iovec, cnt: i64) -> i64 {
    let v = iov_slice(iov, cnt);
    output(
        Kind::Writev,
        fd,
        iov_total(v),
        || sys3(libc::SYS_writev, fd, iov as i64, cnt),
        |n| iov_digest(v, n),
        || {
            v.first().map_or(String::new(), |e| {
                preview(bytes(e.iov_base.cast(), e.iov_len as i64))
            })
        },
    )
}

pub fn core_sendto(
    fd: i64,
    buf: *const u8,
    len: usize,
    flags: i64,
    addr: *const libc::sockaddr,
    alen: i64,
) -> i64 {
    output(
        Kind::Sendto,
        fd,
        len,
        || {
            sys(
                libc::SYS_sendto,
                fd,
                buf as i64,
                len as i64,
                flags,
                addr as i64,
                alen,
            )
        },
        |n| intercept::digest(bytes(buf, n.min(len) as i64)),
        || preview(bytes(buf, len as i64)),
    )
}

pub fn core_sendmsg(fd: i64, m: *const libc::msghdr, flags: i64) -> i64 {
    if m.is_null() {
        return sys3(libc::SYS_sendmsg, fd, m as i64, flags);
    }
    // SAFETY: the application's msghdr for this call.
    let mh = unsafe { &*m };
    let v = iov_slice(mh.msg_iov, mh.msg_iovlen as i64);
    output(
        Kind::Sendmsg,
        fd,
        iov_total(v),
        || sys3(libc::SYS_sendmsg, fd, m as i64, flags),
        |n| iov_digest(v, n),
        String::new,
    )
}

// ------------------------------------------------------------------ readiness

/// Record/replay a call whose result is a buffer the kernel fills (`out`, `out_len` bytes) and a
/// return value. `real` makes the call.
fn filled(kind: Kind, a0: u64, out: *mut u8, out_len: usize, real: impl FnOnce() -> i64) -> i64 {
    let Some(g) = enter() else { return real() };
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        g.emit(
            kind,
            r,
            a0,
            out_len as u64,
            0,
            &[bytes(out, out_len as i64)],
        );
        r
    } else {
        let rec = replay_next(kind, None);
        if rec.h.a0 != a0 || rec.data.len() != out_len {
            diverge(
                &rec,
                &format!("{}({a0}, {out_len} bytes of state)", kind.name()),
            );
        }
        copy_out(out, rec.data);
        replay_done(&rec);
        rec.h.ret
    }
}

pub fn core_poll(fds: *mut libc::pollfd, nfds: u64, real: impl FnOnce() -> i64) -> i64 {
    let n = (nfds as usize).min(4096) * std::mem::size_of::<libc::pollfd>();
    filled(Kind::Poll, nfds, fds.cast(), n, real)
}

pub fn core_select(
    nfds: i64,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    real: impl FnOnce() -> i64,
) -> i64 {
    let Some(g) = enter() else { return real() };
    let sz = std::mem::size_of::<libc::fd_set>();
    let sets = [r, w, e];
    if mode() == RECORD {
        g.blocking();
        let ret = real();
        g.unblocked();
        let p: [&[u8]; 3] = sets.map(|s| bytes(s as *const u8, sz as i64));
        g.emit(Kind::Select, ret, nfds as u64, 0, 0, &p);
        ret
    } else {
        let rec = replay_next(Kind::Select, None);
        let mut d = rec.data;
        for s in sets {
            if !s.is_null() {
                if d.len() < sz || rec.h.a0 != nfds as u64 {
                    diverge(&rec, &format!("select(nfds {nfds}) with other sets"));
                }
                copy_out(s.cast(), &d[..sz]);
                d = &d[sz..];
            }
        }
        replay_done(&rec);
        rec.h.ret
    }
}

pub fn core_epoll(
    epfd: i64,
    events: *mut libc::epoll_event,
    max: i64,
    real: impl FnOnce() -> i64,
) -> i64 {
    let Some(g) = enter() else { return real() };
    let es = std::mem::size_of::<libc::epoll_event>();
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        g.emit1(
            Kind::EpollWait,
            r,
            epfd as u64,
            max as u64,
            0,
            bytes(events as *const u8, r.max(0) * es as i64),
        );
        r
    } else {
        let rec = replay_next(Kind::EpollWait, None);
        let r = rec.h.ret;
        if r > max || rec.data.len() != r.max(0) as usize * es {
            diverge(&rec, &format!("epoll_wait(epfd {epfd}, max {max})"));
        }
        copy_out(events.cast(), rec.data);
        replay_done(&rec);
        r
    }
}

// ------------------------------------------------------------------ connections

pub fn core_accept(
    fd: i64,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
    flags: i64,
) -> i64 {
    let real = || sys(libc::SYS_accept4, fd, addr as i64, alen as i64, flags, 0, 0);
    let Some(g) = enter() else { return real() };
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        fd_forget(r);
        let al = if alen.is_null() || addr.is_null() || r < 0 {
            0
        } else {
            // SAFETY: the application's in/out length.
            unsafe { *alen }
        };
        g.emit(
            Kind::Accept,
            r,
            fd as u64,
            flags as u64,
            u64::from(al),
            &[bytes(addr as *const u8, i64::from(al.min(128)))],
        );
        r
    } else {
        let rec = replay_next(Kind::Accept, Some(fd));
        let r = rec.h.ret;
        if r >= 0 {
            // The peer is gone: put a placeholder socket at the recorded number so the
            // program's fd numbering stays as recorded.
            if sys3(libc::SYS_fcntl, r, i64::from(libc::F_GETFD), 0) >= 0 {
                diverge(&rec, &format!("fd {r} is already open in replay"));
            }
            let mut sv = [0i32; 2];
            sys(
                libc::SYS_socketpair,
                i64::from(libc::AF_UNIX),
                i64::from(libc::SOCK_STREAM),
                0,
                sv.as_mut_ptr() as i64,
                0,
                0,
            );
            sys3(libc::SYS_dup2, i64::from(sv[0]), r, 0);
            for s in sv {
                if i64::from(s) != r {
                    sys3(libc::SYS_close, i64::from(s), 0, 0);
                }
            }
            fd_set_kind(r, FD_OUTSIDE);
            if !addr.is_null() && !alen.is_null() {
                // SAFETY: the application's in/out length.
                let room = unsafe { *alen } as usize;
                copy_out(addr.cast(), &rec.data[..rec.data.len().min(room)]);
                // SAFETY: as above.
                unsafe { *alen = rec.h.a2 as libc::socklen_t };
            }
        }
        replay_done(&rec);
        r
    }
}

pub fn core_connect(fd: i64, addr: *const libc::sockaddr, alen: i64) -> i64 {
    let real = || sys3(libc::SYS_connect, fd, addr as i64, alen);
    let Some(g) = enter() else { return real() };
    fd_forget(fd);
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        g.emit(Kind::Connect, r, fd as u64, 0, 0, &[]);
        r
    } else {
        let rec = replay_next(Kind::Connect, Some(fd));
        replay_done(&rec);
        fd_set_kind(fd, FD_OUTSIDE);
        rec.h.ret
    }
}

pub fn core_close(fd: i64) -> i64 {
    fd_forget(fd);
    sys3(libc::SYS_close, fd, 0, 0)
}

// ------------------------------------------------------------------ time and randomness

#[inline(always)]
fn timelike(kind: Kind, a0: u64, out: *mut u8, n: usize, real: impl FnOnce() -> i64) -> i64 {
    // A light entry: a call that only buffers its result does not touch the ring.
    let Some(mut g) = rt::enter_light() else {
        return real();
    };
    if mode() == RECORD {
        let r = real();
        if n == 16 && !out.is_null() && Header::compact_fits(kind, r, a0, 0, 0, 16) {
            let (lo, hi) = rt::read16(out);
            g.buffer_time(kind, a0, lo, hi);
        } else {
            let data = bytes(out, if r >= 0 { n as i64 } else { 0 });
            time_full(&mut g, kind, r, a0, data);
        }
        r
    } else {
        timelike_replay(&g, kind, a0, out, n, real)
    }
}

/// A recorded time call that does not fit a time batch (a failure, `time`, a NULL out
/// pointer): one full message, out of line so that the batching path's frame stays small.
#[cold]
#[inline(never)]
fn time_full(g: &mut rt::Guard, kind: Kind, r: i64, a0: u64, data: &[u8]) {
    g.activate();
    g.emit1(kind, r, a0, 0, 0, data);
}

/// Replay side of [`timelike`], out of line so that the record path's frame stays small. A
/// call that can have been recorded in a time batch (16 bytes out) takes the next entry of the
/// thread's batch; any other takes the thread's next message in order.
#[cold]
#[inline(never)]
fn timelike_replay(
    _g: &rt::Guard,
    kind: Kind,
    a0: u64,
    out: *mut u8,
    n: usize,
    real: impl FnOnce() -> i64,
) -> i64 {
    if n == 16 && kind != Kind::Time {
        match rt::replay_time(kind, a0) {
            rt::TimeReplay::Entry(d) => {
                copy_out(out, &d);
                return 0;
            }
            rt::TimeReplay::Beyond => return real(),
            rt::TimeReplay::Ordered => {}
        }
    }
    let rec = replay_next(kind, None);
    if rec.h.a0 != a0 {
        diverge(&rec, &format!("{}({a0})", kind.name()));
    }
    copy_out(out, &rec.data[..rec.data.len().min(n)]);
    replay_done(&rec);
    rec.h.ret
}

pub fn core_getrandom(buf: *mut u8, len: usize, flags: i64) -> i64 {
    let real = || sys3(libc::SYS_getrandom, buf as i64, len as i64, flags);
    let Some(g) = enter() else { return real() };
    if mode() == RECORD {
        g.blocking();
        let r = real();
        g.unblocked();
        g.emit(
            Kind::Getrandom,
            r,
            len as u64,
            flags as u64,
            0,
            &[bytes(buf, r)],
        );
        r
    } else {
        let rec = replay_next(Kind::Getrandom, None);
        let r = rec.h.ret;
        if r as usize > len || rec.h.a0 != len as u64 {
            diverge(&rec, &format!("getrandom({len} bytes)"));
        }
        copy_out(buf, &rec.data[..r.max(0) as usize]);
        replay_done(&rec);
        r
    }
}

type ClockFn = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> c_int;
type TodFn = unsafe extern "C" fn(*mut libc::timeval, *mut c_void) -> c_int;

// The functions the record fast path calls for a time result: the vDSO's own entry points
// when the process has a vDSO (libc's `clock_gettime` is a wrapper around it; its
// `gettimeofday` is already the vDSO's, chosen by an IFUNC), else libc's; `UNDERSTUDY_VDSO=0`
// keeps libc's. Each pointer starts as a stub that resolves it on first use, so the wrapper
// calls through it without a check. Any non-zero result (the vDSO's -errno, libc's -1) sends
// the call to the general path, which makes it again through libc.
static CLOCK_FAST: AtomicPtr<c_void> = AtomicPtr::new(clock_fast_first as *mut c_void);
static TOD_FAST: AtomicPtr<c_void> = AtomicPtr::new(tod_fast_first as *mut c_void);

/// `vdso` (the vDSO's symbol, NUL-terminated) if the process has a vDSO that defines it and
/// `UNDERSTUDY_VDSO` is not `0`, else libc's `libc_name`.
#[cold]
#[inline(never)]
fn resolve_fast(vdso: &'static str, libc_name: &'static str) -> *mut c_void {
    if rt::getenv("UNDERSTUDY_VDSO").as_deref() != Some("0") {
        // SAFETY: dlopen of the already-loaded vDSO by its soname (RTLD_NOLOAD: nothing is
        // loaded), dlsym with a NUL-terminated name, dlclose of the handle just taken.
        let p = unsafe {
            let h = libc::dlopen(
                c"linux-vdso.so.1".as_ptr(),
                libc::RTLD_NOLOAD | libc::RTLD_LAZY,
            );
            if h.is_null() {
                std::ptr::null_mut()
            } else {
                let p = libc::dlsym(h, vdso.as_ptr().cast());
                libc::dlclose(h);
                p
            }
        };
        if !p.is_null() {
            return p;
        }
    }
    resolve(libc_name) as *mut c_void
}

/// Resolve the fast path's time functions now (start-up of a recording process, where the
/// dynamic linker's lock and `malloc` are free), so that the stubs are only a fallback.
pub fn resolve_time_fast() {
    CLOCK_FAST.store(
        resolve_fast("__vdso_clock_gettime\0", "clock_gettime\0"),
        Ordering::Relaxed,
    );
    TOD_FAST.store(
        resolve_fast("__vdso_gettimeofday\0", "gettimeofday\0"),
        Ordering::Relaxed,
    );
}

extern "C" fn clock_fast_first(clk: libc::clockid_t, ts: *mut libc::timespec) -> c_int {
    let p = resolve_fast("__vdso_clock_gettime\0", "clock_gettime\0");
    CLOCK_FAST.store(p, Ordering::Relaxed);
    // SAFETY: p is the vDSO's or libc's clock_gettime (same C signature).
    unsafe { std::mem::transmute::<*mut c_void, ClockFn>(p)(clk, ts) }
}

extern "C" fn tod_fast_first(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    let p = resolve_fast("__vdso_gettimeofday\0", "gettimeofday\0");
    TOD_FAST.store(p, Ordering::Relaxed);
    // SAFETY: p is the vDSO's or libc's gettimeofday (same C signature).
    unsafe { std::mem::transmute::<*mut c_void, TodFn>(p)(tv, tz) }
}

#[no_mangle]
pub unsafe extern "C" fn clock_gettime(clk: libc::clockid_t, ts: *mut libc::timespec) -> c_int {
    if ts.is_null() {
        return clock_gettime_general(clk, ts);
    }
    // A clock id is an i32: it always fits a batch entry.
    let real = || {
        let f = CLOCK_FAST.load(Ordering::Relaxed);
        // SAFETY: the vDSO's or libc's clock_gettime (or the stub resolving it) with the
        // application's arguments.
        unsafe { std::mem::transmute::<*mut c_void, ClockFn>(f)(clk, ts) }
    };
    if rt::time_fast(Kind::ClockGettime, clk as u64, ts.cast(), real) {
        return 0;
    }
    clock_gettime_general(clk, ts)
}

/// libc's `clock_gettime`, in the syscall convention.
#[inline(always)]
fn clock_real(f: ClockFn, clk: libc::clockid_t, ts: *mut libc::timespec) -> i64 {
    // SAFETY: libc's clock_gettime with the application's arguments.
    let r = unsafe { f(clk, ts) };
    if r < 0 {
        -i64::from(rt::errno())
    } else {
        i64::from(r)
    }
}

/// Every `clock_gettime` but the record fast path (replay, a NULL pointer, a nested call, a
/// failure): out of line, so the exported wrapper's frame stays small.
#[inline(never)]
fn clock_gettime_general(clk: libc::clockid_t, ts: *mut libc::timespec) -> c_int {
    let f = real!("clock_gettime", ClockFn);
    let r = timelike(Kind::ClockGettime, clk as u64, ts.cast(), 16, || {
        clock_real(f, clk, ts)
    });
    libc_ret(r) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn gettimeofday(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    // A time zone asked for (obsolete, rare) takes the general path: the fast one keeps only
    // `tv` across the real call.
    if tv.is_null() {
        return gettimeofday_general(tv, tz);
    }
    if !tz.is_null() {
        return gettimeofday_tz(tv, tz);
    }
    let real = || {
        let f = TOD_FAST.load(Ordering::Relaxed);
        // SAFETY: the vDSO's or libc's gettimeofday (or the stub resolving it) with the
        // application's arguments (`tz` NULL, still in its register).
        unsafe { std::mem::transmute::<*mut c_void, TodFn>(f)(tv, tz) }
    };
    if rt::time_fast(Kind::Gettimeofday, 0, tv.cast(), real) {
        return 0;
    }
    gettimeofday_again(tv)
}

/// `gettimeofday` with a time zone: the general path (a function of its own, so that the
/// wrapper's two checks stay two branches).
#[cold]
#[inline(never)]
fn gettimeofday_tz(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    gettimeofday_general(tv, tz)
}

/// The fast path's real call failed: the general path makes it again (a separate function,
/// so that the wrapper does not keep `tz`, known NULL here, across the real call).
#[cold]
#[inline(never)]
fn gettimeofday_again(tv: *mut libc::timeval) -> c_int {
    gettimeofday_general(tv, std::ptr::null_mut())
}

/// Every `gettimeofday` but the record fast path (see [`clock_gettime_general`]).
#[inline(never)]
fn gettimeofday_general(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    let f = real!("gettimeofday", TodFn);
    let n = if tv.is_null() { 0 } else { 16 };
    let r = timelike(Kind::Gettimeofday, 0, tv.cast(), n, || tod_real(f, tv, tz));
    libc_ret(r) as c_int
}

/// libc's `gettimeofday`, in the syscall convention (its -1 becomes -errno, so the caller's
/// errno is the real one, not `libc_ret`'s reading of -1 as EPERM).
#[inline(always)]
fn tod_real(f: TodFn, tv: *mut libc::timeval, tz: *mut c_void) -> i64 {
    // SAFETY: libc's gettimeofday with the application's arguments.
    let r = unsafe { f(tv, tz) };
    if r < 0 {
        -i64::from(rt::errno())
    } else {
        i64::from(r)
    }
}

type TimeFn = unsafe extern "C" fn(*mut libc::time_t) -> libc::time_t;

#[no_mangle]
pub unsafe extern "C" fn time(t: *mut libc::time_t) -> libc::time_t {
    let f = real!("time", TimeFn);
    let r = timelike(Kind::Time, 0, std::ptr::null_mut(), 0, || {
        // SAFETY: libc's time without an out pointer.
        unsafe { f(std::ptr::null_mut()) }
    });
    if !t.is_null() {
        // SAFETY: the application's out pointer.
        unsafe { *t = r };
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut c_void, len: size_t, flags: libc::c_uint) -> ssize_t {
    libc_ret(core_getrandom(buf.cast(), len, i64::from(flags))) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn getentropy(buf: *mut c_void, len: size_t) -> c_int {
    if len > 256 {
        rt::set_errno(libc::EIO);
        return -1;
    }
    let r = core_getrandom(buf.cast(), len, 0);
    if r < 0 {
        libc_ret(r) as c_int
    } else {
        0
    }
}

// ------------------------------------------------------------------ exported I/O wrappers

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    libc_ret(core_read(i64::from(fd), buf.cast(), n)) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    libc_ret(core_readv(i64::from(fd), iov, i64::from(cnt))) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    libc_ret(core_recvfrom(
        i64::from(fd),
        buf.cast(),
        n,
        i64::from(flags),
        std::ptr::null_mut(),
        std::ptr::null_mut(),
    )) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> ssize_t {
    libc_ret(core_recvfrom(
        i64::from(fd),
        buf.cast(),
        n,
        i64::from(flags),
        addr,
        alen,
    )) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, m: *mut libc::msghdr, flags: c_int) -> ssize_t {
    libc_ret(core_recvmsg(i64::from(fd), m, i64::from(flags))) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    libc_ret(core_write(i64::from(fd), buf.cast(), n)) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> ssize_t {
    libc_ret(core_writev(i64::from(fd), iov, i64::from(cnt))) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    libc_ret(core_sendto(
        i64::from(fd),
        buf.cast(),
        n,
        i64::from(flags),
        std::ptr::null(),
        0,
    )) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const libc::sockaddr,
    alen: libc::socklen_t,
) -> ssize_t {
    libc_ret(core_sendto(
        i64::from(fd),
        buf.cast(),
        n,
        i64::from(flags),
        addr,
        i64::from(alen),
    )) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, m: *const libc::msghdr, flags: c_int) -> ssize_t {
    libc_ret(core_sendmsg(i64::from(fd), m, i64::from(flags))) as ssize_t
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    libc_ret(core_poll(fds, n, || {
        sys3(libc::SYS_poll, fds as i64, n as i64, i64::from(timeout))
    })) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tv: *mut libc::timeval,
) -> c_int {
    libc_ret(core_select(i64::from(nfds), r, w, e, || {
        sys(
            libc::SYS_select,
            i64::from(nfds),
            r as i64,
            w as i64,
            e as i64,
            tv as i64,
            0,
        )
    })) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    libc_ret(core_epoll(i64::from(epfd), ev, i64::from(max), || {
        sys(
            libc::SYS_epoll_wait,
            i64::from(epfd),
            ev as i64,
            i64::from(max),
            i64::from(timeout),
            0,
            0,
        )
    })) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn accept(
    fd: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
) -> c_int {
    libc_ret(core_accept(i64::from(fd), addr, alen, 0)) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut libc::sockaddr,
    alen: *mut libc::socklen_t,
    flags: c_int,
) -> c_int {
    libc_ret(core_accept(i64::from(fd), addr, alen, i64::from(flags))) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn connect(
    fd: c_int,
    addr: *const libc::sockaddr,
    alen: libc::socklen_t,
) -> c_int {
    libc_ret(core_connect(i64::from(fd), addr, i64::from(alen))) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    libc_ret(core_close(i64::from(fd))) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    fd_forget(i64::from(new));
    libc_ret(sys3(libc::SYS_dup2, i64::from(old), i64::from(new), 0)) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    fd_forget(i64::from(new));
    libc_ret(sys3(
        libc::SYS_dup3,
        i64::from(old),
        i64::from(new),
        i64::from(flags),
    )) as c_int
}

// ------------------------------------------------------------------ processes

/// Children of this process: recorded pid -> real pid (replay translates wait results).
static CHILDREN: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

fn remember_child(recorded: u32, real: u32) {
    for c in &CHILDREN {
        if c.compare_exchange(
            0,
            (u64::from(recorded) << 32) | u64::from(real),
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_ok()
        {
            return;
        }
    }
}

fn real_child(recorded: u32) -> Option<u32> {
    CHILDREN.iter().find_map(|c| {
        let v = c.load(Ordering::SeqCst);
        (v != 0 && (v >> 32) as u32 == recorded).then_some(v as u32)
    })
}

pub fn forget_children() {
    for c in &CHILDREN {
        c.store(0, Ordering::SeqCst);
    }
}

type ForkFn = unsafe extern "C" fn() -> libc::pid_t;

#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    let f = real!("fork", ForkFn);
    // SAFETY: libc's fork.
    let real_fork = || unsafe { f() };
    let Some(g) = enter() else { return real_fork() };
    let (my, n) = TLS.with(|t| {
        let n = t.children.get() + 1;
        t.children.set(n);
        (t.vtid.get(), n)
    });
    let child_vtid = intercept::vtid::child(my, n);
    let parent_vpid = VPID.load(Ordering::Relaxed);
    let procs = rt::PROCS.get();
    if mode() == RECORD {
        // Buffered time results go out before the fork: the child must not inherit them.
        g.flush_pending();
        let r = real_fork();
        if r == 0 {
            std::mem::forget(g);
            TLS.with(|t| t.depth.set(0));
            rt::after_fork_child(child_vtid, 0, parent_vpid, 0);
            // Wait until the parent has emitted its fork message, so that every message of
            // this child comes after it in the journal.
            if let Some(p) = procs {
                let me = rt::REAL_PID.load(Ordering::SeqCst);
                if let Some(o) = p.set(me, child_vtid) {
                    let mut waited = 0;
                    while p.ready(o).load(Ordering::SeqCst) == 0 && waited < 10_000 {
                        rt::futex_wait(p.ready(o), 0, 10);
                        waited += 10;
                    }
                    // Leave the flag clear for the next process that gets this pid.
                    p.ready(o).store(0, Ordering::SeqCst);
                }
            }
            return 0;
        }
        let e = rt::errno();
        let entry = if r > 0 {
            procs.and_then(|p| p.reset(r as u32, child_vtid))
        } else {
            None
        };
        g.emit(
            Kind::Fork,
            if r < 0 { -i64::from(e) } else { i64::from(r) },
            child_vtid,
            0,
            0,
            &[],
        );
        if let (Some(p), Some(o)) = (procs, entry) {
            p.ready(o).store(1, Ordering::SeqCst);
            rt::futex_wake(p.ready(o));
        }
        drop(g);
        rt::set_errno(e);
        r
    } else {
        let rec = replay_next(Kind::Fork, None);
        let rp = rec.h.ret;
        if rp < 0 {
            replay_done(&rec);
            return libc_ret(rp) as libc::pid_t;
        }
        let r = real_fork();
        if r == 0 {
            std::mem::forget(g);
            TLS.with(|t| t.depth.set(0));
            rt::after_fork_child(child_vtid, rp as u32, parent_vpid, rec.idx + 1);
            if let Some(p) = procs {
                p.reset(rt::REAL_PID.load(Ordering::SeqCst), child_vtid);
            }
            return 0;
        }
        if r < 0 {
            diverge(&rec, "fork failed during replay");
        }
        remember_child(rp as u32, r as u32);
        replay_done(&rec);
        rp as libc::pid_t
    }
}

#[no_mangle]
pub unsafe extern "C" fn vfork() -> libc::pid_t {
    // A vfork child shares our memory and stack: run a real fork instead, which the program
    // cannot tell apart except by speed.
    // SAFETY: our own fork wrapper.
    unsafe { fork() }
}

pub fn core_wait4(pid: i64, status: *mut c_int, options: i64, ru: *mut libc::rusage) -> i64 {
    let real =
        |p: i64, st: *mut c_int, o: i64| sys(libc::SYS_wait4, p, st as i64, o, ru as i64, 0, 0);
    let Some(g) = enter() else {
        return real(pid, status, options);
    };
    if mode() == RECORD {
        g.blocking();
        let mut st: c_int = 0;
        let r = real(pid, &mut st, options);
        g.unblocked();
        if !status.is_null() && r > 0 {
            // SAFETY: the application's status out pointer.
            unsafe { *status = st };
        }
        g.emit(
            Kind::Wait,
            r,
            u64::from(st as u32),
            pid as u64,
            options as u64,
            &[],
        );
        r
    } else {
        let rec = replay_next(Kind::Wait, None);
        let r = rec.h.ret;
        if rec.h.a1 != pid as u64 {
            diverge(&rec, &format!("wait for pid {pid}"));
        }
        if r > 0 {
            // Reap the real child that stands for the recorded one.
            let target = real_child(r as u32).map_or(-1, i64::from);
            let mut st: c_int = 0;
            sys(
                libc::SYS_wait4,
                target,
                std::ptr::addr_of_mut!(st) as i64,
                options & !i64::from(libc::WNOHANG),
                0,
                0,
                0,
            );
            if !status.is_null() {
                // SAFETY: the application's status out pointer.
                unsafe { *status = rec.h.a0 as u32 as c_int };
            }
        }
        if !ru.is_null() {
            // SAFETY: the application's rusage out pointer.
            unsafe { std::ptr::write_bytes(ru, 0, 1) };
        }
        replay_done(&rec);
        r
    }
}

#[no_mangle]
pub unsafe extern "C" fn waitpid(pid: libc::pid_t, st: *mut c_int, options: c_int) -> libc::pid_t {
    libc_ret(core_wait4(
        i64::from(pid),
        st,
        i64::from(options),
        std::ptr::null_mut(),
    )) as libc::pid_t
}

#[no_mangle]
pub unsafe extern "C" fn wait(st: *mut c_int) -> libc::pid_t {
    libc_ret(core_wait4(-1, st, 0, std::ptr::null_mut())) as libc::pid_t
}

#[no_mangle]
pub unsafe extern "C" fn wait4(
    pid: libc::pid_t,
    st: *mut c_int,
    options: c_int,
    ru: *mut libc::rusage,
) -> libc::pid_t {
    libc_ret(core_wait4(i64::from(pid), st, i64::from(options), ru)) as libc::pid_t
}

#[no_mangle]
pub extern "C" fn getpid() -> libc::pid_t {
    if mode() == rt::OFF {
        return sys3(libc::SYS_getpid, 0, 0, 0) as libc::pid_t;
    }
    VPID.load(Ordering::Relaxed) as libc::pid_t
}

#[no_mangle]
pub extern "C" fn getppid() -> libc::pid_t {
    if mode() == rt::OFF {
        return sys3(libc::SYS_getppid, 0, 0, 0) as libc::pid_t;
    }
    rt::VPPID.load(Ordering::Relaxed) as libc::pid_t
}

fn on_exit(status: c_int) {
    if let Some(g) = enter() {
        if mode() == RECORD {
            g.emit(Kind::Exit, 0, u64::from(status as u32), 0, 0, &[]);
        } else {
            let rec = replay_next(Kind::Exit, None);
            if rec.h.a0 != u64::from(status as u32) {
                diverge(&rec, &format!("exit({status})"));
            }
            replay_done(&rec);
        }
    }
}

type ExitFn = unsafe extern "C" fn(c_int) -> !;

#[no_mangle]
pub unsafe extern "C" fn exit(status: c_int) -> ! {
    on_exit(status);
    let f = real!("exit", ExitFn);
    // SAFETY: libc's exit.
    unsafe { f(status) }
}

#[no_mangle]
pub unsafe extern "C" fn _exit(status: c_int) -> ! {
    on_exit(status);
    let f = real!("_exit", ExitFn);
    // SAFETY: libc's _exit.
    unsafe { f(status) }
}

// ------------------------------------------------------------------ threads and locks

type StartFn = extern "C" fn(*mut c_void) -> *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut libc::pthread_t,
    *const libc::pthread_attr_t,
    StartFn,
    *mut c_void,
) -> c_int;

struct Start {
    f: StartFn,
    arg: *mut c_void,
    vtid: u64,
    /// Replay: feed index after the creation message (every message of the thread lies beyond).
    scan_from: u64,
    ready: AtomicU32,
}

// SAFETY: `arg` is the application's opaque argument, handed to the new thread exactly as
// pthread_create would; we never dereference it.
unsafe impl Send for Start {}
// SAFETY: as above; the only shared mutable state is the atomic `ready`.
unsafe impl Sync for Start {}

extern "C" fn thread_start(p: *mut c_void) -> *mut c_void {
    // SAFETY: p is the Arc<Start> leaked by pthread_create below, given to this thread only.
    let s = unsafe { Arc::from_raw(p as *const Start) };
    TLS.with(|t| {
        t.vtid.set(s.vtid);
        t.tseq.set(0);
        t.children.set(0);
        t.token.set(0);
        rt::new_thread_name(t, s.scan_from);
    });
    if mode() == RECORD {
        // Every message of this thread must follow its creation message in the journal.
        let mut waited = 0;
        while s.ready.load(Ordering::SeqCst) == 0 && waited < 10_000 {
            rt::futex_wait(&s.ready, 0, 10);
            waited += 10;
        }
    }
    let (f, arg) = (s.f, s.arg);
    drop(s);
    let ret = f(arg);
    // The thread ends: what it buffered goes out (a thread that never emitted has no
    // thread-specific destructor to do it).
    rt::flush_before_release();
    ret
}

type ExitThreadFn = unsafe extern "C" fn(*mut c_void) -> !;

#[no_mangle]
pub unsafe extern "C" fn pthread_exit(ret: *mut c_void) -> ! {
    rt::flush_before_release();
    let f = real!("pthread_exit", ExitThreadFn);
    // SAFETY: libc's pthread_exit with the application's argument.
    unsafe { f(ret) }
}

type UnlockFn = unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int;
type RwUnlockFn = unsafe extern "C" fn(*mut libc::pthread_rwlock_t) -> c_int;

/// A lock release: not recorded (the acquisitions are), but what the thread buffered goes out
/// first, so that a thread that takes the lock next and externalises what this one wrote
/// (a time value read inside the critical section) finds it in the log before its output.
#[no_mangle]
pub unsafe extern "C" fn pthread_mutex_unlock(m: *mut libc::pthread_mutex_t) -> c_int {
    rt::flush_before_release();
    let f = real!("pthread_mutex_unlock", UnlockFn);
    // SAFETY: libc's pthread_mutex_unlock with the application's argument.
    unsafe { f(m) }
}

/// See [`pthread_mutex_unlock`].
#[no_mangle]
pub unsafe extern "C" fn pthread_rwlock_unlock(l: *mut libc::pthread_rwlock_t) -> c_int {
    rt::flush_before_release();
    let f = real!("pthread_rwlock_unlock", RwUnlockFn);
    // SAFETY: libc's pthread_rwlock_unlock with the application's argument.
    unsafe { f(l) }
}

#[no_mangle]
pub unsafe extern "C" fn pthread_create(
    th: *mut libc::pthread_t,
    attr: *const libc::pthread_attr_t,
    f: StartFn,
    arg: *mut c_void,
) -> c_int {
    let real = real!("pthread_create", CreateFn);
    let Some(g) = enter() else {
        // SAFETY: libc's pthread_create with the application's arguments.
        return unsafe { real(th, attr, f, arg) };
    };
    let (my, n) = TLS.with(|t| {
        let n = t.children.get() + 1;
        t.children.set(n);
        (t.vtid.get(), n)
    });
    let vtid = intercept::vtid::child(my, n);
    let rec = (mode() == REPLAY).then(|| replay_next(Kind::ThreadCreate, None));
    let s = Arc::new(Start {
        f,
        arg,
        vtid,
        scan_from: rec.as_ref().map_or(0, |r| r.idx + 1),
        ready: AtomicU32::new(0),
    });
    let keep = Arc::clone(&s);
    // SAFETY: libc's pthread_create; the Arc is handed to the new thread (or reclaimed below).
    let r = unsafe { real(th, attr, thread_start, Arc::into_raw(s) as *mut c_void) };
    if r != 0 {
        // SAFETY: the thread was not created, so its reference is still ours to drop.
        drop(unsafe { Arc::from_raw(Arc::as_ptr(&keep)) });
    }
    match rec {
        None => {
            g.emit(Kind::ThreadCreate, i64::from(r), vtid, 0, 0, &[]);
            keep.ready.store(1, Ordering::SeqCst);
            rt::futex_wake(&keep.ready);
        }
        Some(rec) => {
            if rec.h.ret != i64::from(r) {
                diverge(&rec, &format!("pthread_create returned {r}"));
            }
            replay_done(&rec);
        }
    }
    drop(g);
    r
}

type MutexFn = unsafe extern "C" fn(*mut libc::pthread_mutex_t) -> c_int;

/// A lock acquisition: recorded in the order it happened, replayed in that order.
fn acquire(kind: Kind, lock: impl Fn() -> c_int) -> c_int {
    let Some(g) = enter() else { return lock() };
    if mode() == RECORD {
        g.blocking();
        let r = lock();
        g.unblocked();
        g.emit1(kind, i64::from(r), 0, 0, 0, &[]);
        r
    } else {
        let rec = replay_next(kind, None);
        if rec.h.a0 != 0 {
            diverge(
                &rec,
                &format!(
                    "{} (unconditional) where a try/timed variant was recorded",
                    kind.name()
                ),
            );
        }
        // The previous holder (earlier in the journal) has released it or is about to, without
        // needing a turn: unlocks are not ordered.
        let r = lock();
        if i64::from(r) != rec.h.ret {
            diverge(&rec, &format!("{} returned {r}", kind.name()));
        }
        replay_done(&rec);
        r
    }
}

#[no_mangle]
pub unsafe extern "C" fn pthread_mutex_lock(m: *mut libc::pthread_mutex_t) -> c_int {
    let f = real!("pthread_mutex_lock", MutexFn);
    // SAFETY: libc's function with the application's mutex.
    acquire(Kind::MutexLock, || unsafe { f(m) })
}

/// A conditional acquisition (trylock, timedlock): its recorded outcome decides at replay —
/// success takes the lock (blocking until its previous holder, earlier in the journal, lets
/// go), failure returns the recorded error without touching the lock.
fn conditional(kind: Kind, attempt: impl Fn() -> c_int, lock: impl Fn() -> c_int) -> c_int {
    let Some(g) = enter() else { return attempt() };
    if mode() == RECORD {
        g.blocking();
        let r = attempt();
        g.unblocked();
        g.emit1(kind, i64::from(r), 1, 0, 0, &[]);
        r
    } else {
        let rec = replay_next(kind, None);
        let r = if rec.h.ret == 0 {
            lock()
        } else {
            rec.h.ret as c_int
        };
        replay_done(&rec);
        r
    }
}

#[no_mangle]
pub unsafe extern "C" fn pthread_mutex_trylock(m: *mut libc::pthread_mutex_t) -> c_int {
    let f = real!("pthread_mutex_trylock", MutexFn);
    let real_lock = real!("pthread_mutex_lock", MutexFn);
    // SAFETY: libc's functions with the application's mutex.
    let attempt = || unsafe { f(m) };
    // SAFETY: libc's functions with the application's mutex.
    let lock = || unsafe { real_lock(m) };
    conditional(Kind::MutexTrylock, attempt, lock)
}

type MutexTFn = unsafe extern "C" fn(*mut libc::pthread_mutex_t, *const libc::timespec) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn pthread_mutex_timedlock(
    m: *mut libc::pthread_mutex_t,
    t: *const libc::timespec,
) -> c_int {
    let f = real!("pthread_mutex_timedlock", MutexTFn);
    let real_lock = real!("pthread_mutex_lock", MutexFn);
    // SAFETY: libc's function with the application's arguments.
    let attempt = || unsafe { f(m, t) };
    // SAFETY: libc's function with the application's mutex.
    let lock = || unsafe { real_lock(m) };
    conditional(Kind::MutexTrylock, attempt, lock)
}

#[no_mangle]
pub unsafe extern "C" fn pthread_rwlock_tryrdlock(l: *mut libc::pthread_rwlock_t) -> c_int {
    let f = real!("pthread_rwlock_tryrdlock", RwFn);
    let real_lock = real!("pthread_rwlock_rdlock", RwFn);
    // SAFETY: libc's function with the application's lock.
    let attempt = || unsafe { f(l) };
    // SAFETY: libc's function with the application's lock.
    let lock = || unsafe { real_lock(l) };
    conditional(Kind::RwlockRead, attempt, lock)
}

#[no_mangle]
pub unsafe extern "C" fn pthread_rwlock_trywrlock(l: *mut libc::pthread_rwlock_t) -> c_int {
    let f = real!("pthread_rwlock_trywrlock", RwFn);
    let real_lock = real!("pthread_rwlock_wrlock", RwFn);
    // SAFETY: libc's function with the application's lock.
    let attempt = || unsafe { f(l) };
    // SAFETY: libc's function with the application's lock.
    let lock = || unsafe { real_lock(l) };
    conditional(Kind::RwlockWrite, attempt, lock)
}

type RwFn = unsafe extern "C" fn(*mut libc::pthread_rwlock_t) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn pthread_rwlock_rdlock(l: *mut libc::pthread_rwlock_t) -> c_int {
    let f = real!("pthread_rwlock_rdlock", RwFn);
    // SAFETY: libc's function with the application's lock.
    acquire(Kind::RwlockRead, || unsafe { f(l) })
}

#[no_mangle]
pub unsafe extern "C" fn pthread_rwlock_wrlock(l: *mut libc::pthread_rwlock_t) -> c_int {
    let f = real!("pthread_rwlock_wrlock", RwFn);
    // SAFETY: libc's function with the application's lock.
    acquire(Kind::RwlockWrite, || unsafe { f(l) })
}

type CondFn = unsafe extern "C" fn(*mut libc::pthread_cond_t, *mut libc::pthread_mutex_t) -> c_int;
type CondTFn = unsafe extern "C" fn(
    *mut libc::pthread_cond_t,
    *mut libc::pthread_mutex_t,
    *const libc::timespec,
) -> c_int;

fn cond_wait(m: *mut libc::pthread_mutex_t, wait: impl Fn() -> c_int) -> c_int {
    let Some(g) = enter() else { return wait() };
    if mode() == RECORD {
        g.blocking();
        let r = wait();
        g.unblocked();
        g.emit(Kind::CondWait, i64::from(r), 0, 0, 0, &[]);
        r
    } else {
        // The wake-up is implied by the recorded order: release the mutex, wait for this
        // thread's turn, take the mutex back.
        let unlock = real!("pthread_mutex_unlock", MutexFn);
        let lock = real!("pthread_mutex_lock", MutexFn);
        // SAFETY: the application holds m, as pthread_cond_wait requires.
        unsafe { unlock(m) };
        let rec = replay_next(Kind::CondWait, None);
        // SAFETY: libc's lock with the application's mutex.
        unsafe { lock(m) };
        replay_done(&rec);
        rec.h.ret as c_int
    }
}

#[no_mangle]
pub unsafe extern "C" fn pthread_cond_wait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
) -> c_int {
    let f = real!("pthread_cond_wait", CondFn);
    // SAFETY: libc's function with the application's arguments.
    cond_wait(m, || unsafe { f(c, m) })
}

#[no_mangle]
pub unsafe extern "C" fn pthread_cond_timedwait(
    c: *mut libc::pthread_cond_t,
    m: *mut libc::pthread_mutex_t,
    t: *const libc::timespec,
) -> c_int {
    let f = real!("pthread_cond_timedwait", CondTFn);
    // SAFETY: libc's function with the application's arguments.
    cond_wait(m, || unsafe { f(c, m, t) })
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    tmo: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    libc_ret(core_poll(fds, n, || {
        sys(
            libc::SYS_ppoll,
            fds as i64,
            n as i64,
            tmo as i64,
            mask as i64,
            8,
            0,
        )
    })) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    ev: *mut libc::epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    libc_ret(core_epoll(i64::from(epfd), ev, i64::from(max), || {
        sys(
            libc::SYS_epoll_pwait,
            i64::from(epfd),
            ev as i64,
            i64::from(max),
            i64::from(timeout),
            mask as i64,
            8,
        )
    })) as c_int
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    tmo: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // pselect6's sixth argument: { const sigset_t *ss; size_t ss_len; }
    let data: [usize; 2] = [mask as usize, 8];
    let dp = if mask.is_null() {
        0
    } else {
        data.as_ptr() as i64
    };
    libc_ret(core_select(i64::from(nfds), r, w, e, || {
        // pselect6 may write the remaining time: pass a copy, as glibc does.
        let mut t = if tmo.is_null() {
            None
        } else {
            // SAFETY: the application's timeout for this call.
            Some(unsafe { *tmo })
        };
        let tp = t.as_mut().map_or(0, |t| t as *mut libc::timespec as i64);
        sys(
            libc::SYS_pselect6,
            i64::from(nfds),
            r as i64,
            w as i64,
            e as i64,
            tp,
            dp,
        )
    })) as c_int
}

/// In replay the program sees recorded pids: translate them back before signalling, so that
/// `kill(getpid(), ...)` or `kill(child, ...)` reach this run's processes and never a stranger
/// that happens to hold the recorded number.
#[no_mangle]
pub unsafe extern "C" fn kill(pid: libc::pid_t, sig: c_int) -> c_int {
    let mut target = i64::from(pid);
    if mode() == REPLAY && pid != 0 && pid != -1 {
        let abs = pid.unsigned_abs();
        let real = if abs == VPID.load(Ordering::Relaxed) {
            Some(rt::REAL_PID.load(Ordering::Relaxed))
        } else {
            real_child(abs)
        };
        if let Some(r) = real {
            target = if pid < 0 { -i64::from(r) } else { i64::from(r) };
        }
    }
    libc_ret(sys3(libc::SYS_kill, target, i64::from(sig), 0)) as c_int
}

// ------------------------------------------------------------------ exec

/// Before the process image is replaced: the calling thread's buffered time results go out
/// (they live in memory that `execve` discards). Nothing else changes: the new image names
/// itself through the process table.
fn before_exec() {
    rt::flush_before_release();
}

type ExecveFn = unsafe extern "C" fn(
    *const libc::c_char,
    *const *const libc::c_char,
    *const *const libc::c_char,
) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const libc::c_char, *const *const libc::c_char) -> c_int;
type FexecveFn =
    unsafe extern "C" fn(c_int, *const *const libc::c_char, *const *const libc::c_char) -> c_int;

#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> c_int {
    before_exec();
    let f = real!("execve", ExecveFn);
    // SAFETY: libc's execve with the application's arguments.
    unsafe { f(path, argv, envp) }
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> c_int {
    before_exec();
    let f = real!("execvpe", ExecveFn);
    // SAFETY: libc's execvpe with the application's arguments.
    unsafe { f(file, argv, envp) }
}

#[no_mangle]
pub unsafe extern "C" fn execv(
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> c_int {
    before_exec();
    let f = real!("execv", ExecvFn);
    // SAFETY: libc's execv with the application's arguments.
    unsafe { f(path, argv) }
}

#[no_mangle]
pub unsafe extern "C" fn execvp(
    file: *const libc::c_char,
    argv: *const *const libc::c_char,
) -> c_int {
    before_exec();
    let f = real!("execvp", ExecvFn);
    // SAFETY: libc's execvp with the application's arguments.
    unsafe { f(file, argv) }
}

#[no_mangle]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
) -> c_int {
    before_exec();
    let f = real!("fexecve", FexecveFn);
    // SAFETY: libc's fexecve with the application's arguments.
    unsafe { f(fd, argv, envp) }
}

/// `execl`, `execlp`, `execle` are variadic, which stable Rust cannot define: each is a naked
/// trampoline that saves the argument registers (and `al`, the vector-register count of a
/// variadic call), calls [`before_execl`] (flush; returns libc's function), restores them and
/// jumps to libc's function with the caller's stack untouched. Stack: 8 (mod 16) at entry,
/// seven pushes make it 0 (mod 16) for the call.
macro_rules! execl_trampoline {
    ($name:ident, $which:literal) => {
        #[unsafe(naked)]
        #[no_mangle]
        pub extern "C" fn $name() {
            std::arch::naked_asm!(
                "push rdi",
                "push rsi",
                "push rdx",
                "push rcx",
                "push r8",
                "push r9",
                "push rax",
                concat!("mov edi, ", $which),
                "call {f}",
                "mov r11, rax",
                "pop rax",
                "pop r9",
                "pop r8",
                "pop rcx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "jmp r11",
                f = sym before_execl,
            );
        }
    };
}

execl_trampoline!(execl, "0");
execl_trampoline!(execlp, "1");
execl_trampoline!(execle, "2");

/// Called by the `execl*` trampolines: flush, then libc's function to jump to.
extern "C" fn before_execl(which: u32) -> usize {
    before_exec();
    static P: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
    let names = ["execl\0", "execlp\0", "execle\0"];
    let i = (which as usize).min(2);
    let mut p = P[i].load(Ordering::Relaxed);
    if p == 0 {
        p = resolve(names[i]);
        P[i].store(p, Ordering::Relaxed);
    }
    p
}
