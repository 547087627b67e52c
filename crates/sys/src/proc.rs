//! Parsers for `/proc/PID/*`: maps, status, stat, tasks, children, fd (fdinfo: `crate::fdinfo`), limits,
//! auxv. Every read is bounded.

use std::io::Read;

use crate::{Error, Result};

/// Largest `/proc` text file read whole (maps of very large processes fit).
const PROC_READ_CAP: u64 = 64 << 20;

/// Reads a `/proc` file into a string, at most [`PROC_READ_CAP`] bytes.
pub fn read_to_string(path: &str) -> Result<String> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(format!("open {path}"), e))?;
    let mut s = String::new();
    f.take(PROC_READ_CAP)
        .read_to_string(&mut s)
        .map_err(|e| Error::io(format!("read {path}"), e))?;
    Ok(s)
}

/// Reads a `/proc` file as bytes, at most [`PROC_READ_CAP`] bytes.
pub fn read_bytes(path: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(format!("open {path}"), e))?;
    let mut v = Vec::new();
    f.take(PROC_READ_CAP)
        .read_to_end(&mut v)
        .map_err(|e| Error::io(format!("read {path}"), e))?;
    Ok(v)
}

/// `readlink` of a `/proc` link.
pub fn read_link(path: &str) -> Result<String> {
    std::fs::read_link(path)
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| Error::io(format!("readlink {path}"), e))
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, ...); empty for anonymous memory.
    pub path: String,
}

impl MapEntry {
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
    /// `PROT_*` bits.
    pub fn prot(&self) -> u32 {
        u32::from(self.read) | (u32::from(self.write) << 1) | (u32::from(self.exec) << 2)
    }
}

fn hex(s: &str, what: &str) -> Result<u64> {
    u64::from_str_radix(s, 16).map_err(|_| Error::invalid(what, format!("bad hex {s:?}")))
}

/// Parses the text of a maps file.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let bad = || Error::invalid("maps line", line.to_string());
        let mut it = line.splitn(6, ' ');
        let range = it.next().ok_or_else(bad)?;
        let perms = it.next().ok_or_else(bad)?.as_bytes();
        let offset = hex(it.next().ok_or_else(bad)?, "maps offset")?;
        let dev = it.next().ok_or_else(bad)?;
        let inode: u64 = it.next().ok_or_else(bad)?.parse().map_err(|_| bad())?;
        let path = it.next().unwrap_or("").trim_start().to_string();
        let (s, e) = range.split_once('-').ok_or_else(bad)?;
        let (ma, mi) = dev.split_once(':').ok_or_else(bad)?;
        if perms.len() < 4 {
            return Err(bad());
        }
        out.push(MapEntry {
            start: hex(s, "maps start")?,
            end: hex(e, "maps end")?,
            read: perms[0] == b'r',
            write: perms[1] == b'w',
            exec: perms[2] == b'x',
            shared: perms[3] == b's',
            offset,
            dev_major: u32::try_from(hex(ma, "maps dev")?).map_err(|_| bad())?,
            dev_minor: u32::try_from(hex(mi, "maps dev")?).map_err(|_| bad())?,
            inode,
            path,
        });
    }
    Ok(out)
}

/// `/proc/PID/maps`.
pub fn maps(pid: i32) -> Result<Vec<MapEntry>> {
    parse_maps(&read_to_string(&format!("/proc/{pid}/maps"))?)
}

/// The `VmFlags` of every mapping (`/proc/PID/smaps`), by start address.
pub fn vm_flags(pid: i32) -> Result<std::collections::BTreeMap<u64, Vec<String>>> {
    Ok(smaps_vmas(pid)?
        .into_iter()
        .map(|(m, flags)| (m.start, flags))
        .collect())
}

/// Every mapping of `/proc/PID/smaps` with its `VmFlags`, in address order: the header line
/// parsed as a `maps` line (so it compares equal to [`maps`] while the mapping is unchanged).
pub fn smaps_vmas(pid: i32) -> Result<Vec<(MapEntry, Vec<String>)>> {
    parse_smaps(&read_to_string(&format!("/proc/{pid}/smaps"))?)
}

/// Parses the text of a smaps file (see [`smaps_vmas`]).
pub fn parse_smaps(text: &str) -> Result<Vec<(MapEntry, Vec<String>)>> {
    let mut out: Vec<(MapEntry, Vec<String>)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.1 = rest.split_whitespace().map(str::to_string).collect();
            }
            continue;
        }
        // A mapping header: "start-end perms ...", the first field holds a '-' between hex.
        let first = line.split(' ').next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_hexdigit())
                && b.bytes().all(|c| c.is_ascii_hexdigit())
            {
                let mut m = parse_maps(line)?;
                if let Some(e) = m.pop() {
                    out.push((e, Vec::new()));
                }
            }
        }
    }
    Ok(out)
}

/// Thread ids of a process (`/proc/PID/task`), sorted, the main thread first if alive.
pub fn tasks(pid: i32) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/task");
    let rd = std::fs::read_dir(&path).map_err(|e| Error::io(format!("list {path}"), e))?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

/// Children of every thread of a process.
pub fn children(pid: i32) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for tid in tasks(pid)? {
        let p = format!("/proc/{pid}/task/{tid}/children");
        let s = match read_to_string(&p) {
            Ok(s) => s,
            Err(_) => continue, // the thread exited meanwhile
        };
        out.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The fields of `/proc/PID/status` the engine uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    pub name: String,
    pub state: char,
    pub tgid: i32,
    pub ppid: i32,
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: u32,
    /// Pid in each namespace, outermost first.
    pub nspid: Vec<i32>,
    pub nspgid: Vec<i32>,
    pub nssid: Vec<i32>,
    pub sig_pending_shared: u64,
    pub sig_pending: u64,
    pub sig_blocked: u64,
    pub sig_ignored: u64,
    pub sig_caught: u64,
    pub threads: u32,
    /// `Seccomp:` 0 none, 1 strict, 2 filter.
    pub seccomp: u32,
    pub no_new_privs: bool,
}

/// Parses the text of a status file.
pub fn parse_status(text: &str) -> Result<Status> {
    let mut st = Status::default();
    let ids = |v: &str| -> Vec<i64> {
        v.split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    let four = |v: &str| -> [u32; 4] {
        let x: Vec<u32> = v
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        [
            x.first().copied().unwrap_or(0),
            x.get(1).copied().unwrap_or(0),
            x.get(2).copied().unwrap_or(0),
            x.get(3).copied().unwrap_or(0),
        ]
    };
    let hexv = |v: &str| u64::from_str_radix(v.trim(), 16).unwrap_or(0);
    let to_i32 = |v: Vec<i64>| {
        v.into_iter()
            .filter_map(|x| i32::try_from(x).ok())
            .collect::<Vec<i32>>()
    };
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        match k {
            "Name" => st.name = v.to_string(),
            "State" => st.state = v.chars().next().unwrap_or('?'),
            "Tgid" => st.tgid = v.parse().unwrap_or(0),
            "PPid" => st.ppid = v.parse().unwrap_or(0),
            "Uid" => st.uid = four(v),
            "Gid" => st.gid = four(v),
            "Groups" => {
                st.groups = v
                    .split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            }
            "Umask" => st.umask = u32::from_str_radix(v, 8).unwrap_or(0o22),
            "NSpid" => st.nspid = to_i32(ids(v)),
            "NSpgid" => st.nspgid = to_i32(ids(v)),
            "NSsid" => st.nssid = to_i32(ids(v)),
            "ShdPnd" => st.sig_pending_shared = hexv(v),
            "SigPnd" => st.sig_pending = hexv(v),
            "SigBlk" => st.sig_blocked = hexv(v),
            "SigIgn" => st.sig_ignored = hexv(v),
            "SigCgt" => st.sig_caught = hexv(v),
            "Threads" => st.threads = v.parse().unwrap_or(0),
            "Seccomp" => st.seccomp = v.parse().unwrap_or(0),
            "NoNewPrivs" => st.no_new_privs = v == "1",
            _ => {}
        }
    }
    if st.tgid == 0 {
        return Err(Error::invalid("status", "no Tgid line"));
    }
    Ok(st)
}

/// `/proc/PID/status` (or `/proc/PID/task/TID/status` with `tid`).
pub fn status(pid: i32) -> Result<Status> {
    parse_status(&read_to_string(&format!("/proc/{pid}/status"))?)
}

/// The fields of `/proc/PID/stat` the engine uses (memory layout of the mm, pgid, sid).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_signal: i32,
    /// Field 52: the wait status of an exited task (a zombie), as `wait` would return it;
    /// 0 while it runs (and when the reader may not see it).
    pub exit_code: i32,
}

/// Parses the text of a stat file.
pub fn parse_stat(text: &str) -> Result<Stat> {
    let close = text
        .rfind(')')
        .ok_or_else(|| Error::invalid("stat", "no ')'"))?;
    let f: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // f[0] is field 3 (state).
    let g = |n: usize| -> u64 {
        f.get(n - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let gi = |n: usize| -> i32 {
        f.get(n - 3)
            .and_then(|x| x.parse::<i32>().ok())
            .unwrap_or(0)
    };
    if f.len() < 50 {
        return Err(Error::invalid(
            "stat",
            format!("only {} fields", f.len() + 2),
        ));
    }
    Ok(Stat {
        state: f[0].chars().next().unwrap_or('?'),
        ppid: gi(4),
        pgrp: gi(5),
        session: gi(6),
        start_code: g(26),
        end_code: g(27),
        start_stack: g(28),
        exit_signal: gi(38),
        start_data: g(45),
        end_data: g(46),
        start_brk: g(47),
        arg_start: g(48),
        arg_end: g(49),
        env_start: g(50),
        env_end: g(51),
        exit_code: gi(52),
    })
}

pub fn stat(pid: i32) -> Result<Stat> {
    parse_stat(&read_to_string(&format!("/proc/{pid}/stat"))?)
}

/// Open file descriptors of a process, sorted.
pub fn fds(pid: i32) -> Result<Vec<i32>> {
    let path = format!("/proc/{pid}/fd");
    let rd = std::fs::read_dir(&path).map_err(|e| Error::io(format!("list {path}"), e))?;
    let mut v: Vec<i32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    v.sort_unstable();
    Ok(v)
}

/// One resource limit: (soft, hard), `u64::MAX` for unlimited.
pub type Rlimit = (u64, u64);

/// Reads all 16 rlimits with `prlimit` (works for processes of the same user; falls back to
/// `/proc/PID/limits`, which root can always read).
pub fn rlimits(pid: i32) -> Result<Vec<Rlimit>> {
    let mut out = Vec::with_capacity(16);
    for res in 0..16u32 {
        let mut old = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `old` is a valid out-pointer; the new limit pointer is null (read only).
        let r = unsafe {
            libc::prlimit64(
                pid,
                res as libc::__rlimit_resource_t,
                std::ptr::null(),
                &mut old,
            )
        };
        if r != 0 {
            return limits_from_proc(pid);
        }
        out.push((old.rlim_cur, old.rlim_max));
    }
    Ok(out)
}

fn limits_from_proc(pid: i32) -> Result<Vec<Rlimit>> {
    let text = read_to_string(&format!("/proc/{pid}/limits"))?;
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        // "Max cpu time              unlimited            unlimited            seconds"
        if line.len() < 26 {
            continue;
        }
        let rest: Vec<&str> = line[26..].split_whitespace().collect();
        let p = |s: Option<&&str>| match s {
            Some(&"unlimited") | None => u64::MAX,
            Some(x) => x.parse().unwrap_or(u64::MAX),
        };
        out.push((p(rest.first()), p(rest.get(1))));
    }
    if out.len() != 16 {
        return Err(Error::invalid(
            format!("/proc/{pid}/limits"),
            format!("{} limits", out.len()),
        ));
    }
    Ok(out)
}

/// `/proc/PID/auxv` as native words.
pub fn auxv(pid: i32) -> Result<Vec<u64>> {
    let b = read_bytes(&format!("/proc/{pid}/auxv"))?;
    Ok(b.chunks_exact(8)
        .map(|c| u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

/// `stat(2)` of a path (following links).
pub fn stat_path(path: &str) -> Result<libc::stat> {
    let c = std::ffi::CString::new(path).map_err(|_| Error::invalid(path, "contains NUL"))?;
    // SAFETY: zeroed stat is a valid value for a plain C struct of integers.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: c is NUL-terminated; st is a valid out-pointer.
    let r = unsafe { libc::stat(c.as_ptr(), &mut st) };
    if r != 0 {
        return Err(Error::last(format!("stat {path}")));
    }
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let t = "7f00-8000 r-xp 00001000 fd:01 1234                       /usr/lib/x.so\n\
                 8000-9000 rw-s 00000000 00:01 1387                       /dev/zero (deleted)\n\
                 9000-a000 ---p 00000000 00:00 0 \n";
        let m = parse_maps(t).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].path, "/usr/lib/x.so");
        assert_eq!(m[0].offset, 0x1000);
        assert!(m[0].exec && !m[0].write);
        assert_eq!(m[1].path, "/dev/zero (deleted)");
        assert!(m[1].shared);
        assert_eq!(m[2].path, "");
        assert_eq!(m[2].prot(), 0);
    }

    #[test]
    fn parses_smaps_headers_and_flags() {
        let t = "7f00-8000 r-xp 00001000 fd:01 1234                       /usr/lib/x.so\n\
                 Size:                  4 kB\n\
                 VmFlags: rd ex mr mw me dc \n\
                 9000-a000 rw-p 00000000 00:00 0 \n\
                 Rss:                   0 kB\n\
                 VmFlags: rd wr mr mw me ac wf\n";
        let v = parse_smaps(t).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0, parse_maps(t.lines().next().unwrap()).unwrap()[0]);
        assert_eq!(v[0].1.last().map(String::as_str), Some("dc"));
        assert_eq!((v[1].0.start, v[1].0.end), (0x9000, 0xa000));
        assert!(v[1].1.iter().any(|f| f == "wf"));
        // The running process: one entry per maps line, same order.
        let me = i32::try_from(std::process::id()).unwrap();
        let s = smaps_vmas(me).unwrap();
        assert!(s.iter().all(|(_, f)| !f.is_empty()), "{s:?}");
        assert!(s.iter().any(|(m, _)| m.path == "[stack]"));
    }

    #[test]
    fn parses_own_status_and_stat() {
        let me = i32::try_from(std::process::id()).unwrap();
        let s = status(me).unwrap();
        assert_eq!(s.tgid, me);
        assert_eq!(s.nspid.last().copied(), Some(me));
        let st = stat(me).unwrap();
        assert!(st.start_code > 0 && st.start_brk > 0);
        assert_eq!(rlimits(me).unwrap().len(), 16);
    }
}
