//! Network lock: an nftables table that drops (never rejects) the packets reaching the TCP
//! connections and listening ports of a process tree while it is checkpointed, so that peers
//! outside the tree just retransmit instead of being answered with a reset by a host on which
//! the connection's socket does not exist (between the kill and the restore).
//!
//! One table per checkpoint, `inet understudy_lock_...`, in the network namespace of the tree:
//! - set `conn4`/`conn6`: `peer addr . peer port . local addr . local port` of every established
//!   connection; every incoming packet of such a connection is dropped;
//! - set `listen4`/`listen6` (bound address and port) and `listenport` (port of a wildcard
//!   listener): incoming connection requests (SYN without ACK) are dropped; packets of other
//!   connections that share the port are left alone.
//!
//! Only the input hook is filtered: a socket in repair mode sends nothing, and the restored one
//! only starts sending (a window probe) once it leaves repair mode, just before the unlock.
//!
//! Manual unlock: `nft delete table inet NAME` (`nft list tables` shows them), run in the tree's
//! network namespace.
//!
//! The lock is recorded in the image directory as [`RECORD_FILE`] (see [`LockRecord`]) so that
//! the restore knows which table to remove.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// File in an image directory that names the network lock left by the checkpoint.
pub const RECORD_FILE: &str = "netlock";
const MAGIC: &str = "understudy-netlock";
/// Format version of [`RECORD_FILE`]; a reader refuses other versions.
pub const RECORD_VERSION: u32 = 1;
/// Largest record read (it holds a few short lines).
const MAX_RECORD: u64 = 4096;
/// Prefix of every table name.
pub const TABLE_PREFIX: &str = "understudy_lock_";

/// Why the lock could not be taken, released or recorded.
#[derive(Debug, thiserror::Error)]
pub enum NetLockError {
    /// `nft` is not installed.
    #[error("network lock {table}: the nft program is not installed (looked in PATH, /usr/sbin, /sbin; Debian package nftables)")]
    NoNft { table: String },
    /// `nft` could not be started, or the network namespace not entered.
    #[error("network lock {table}: {what}: {source}")]
    Run {
        table: String,
        what: String,
        source: std::io::Error,
    },
    /// `nft` refused the command.
    #[error("network lock {table}: nft {action} failed ({status}): {stderr}")]
    Nft {
        table: String,
        action: &'static str,
        status: String,
        stderr: String,
    },
    /// The record file is unreadable or invalid.
    #[error("network lock record {path}: {why}")]
    Record { path: PathBuf, why: String },
}

/// What a lock covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockSet {
    /// Established connections: (local address, peer address) as the tree's socket sees them.
    pub connections: Vec<(SocketAddr, SocketAddr)>,
    /// Bound addresses of listening sockets.
    pub listeners: Vec<SocketAddr>,
}

impl LockSet {
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty() && self.listeners.is_empty()
    }
}

/// The name of the lock table of a checkpoint: `understudy_lock_<tag>` with every character
/// that nft does not take in a name replaced by `_`.
pub fn table_name(tag: &str) -> String {
    let clean: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(200)
        .collect();
    format!("{TABLE_PREFIX}{clean}")
}

/// An IPv4-mapped IPv6 address as the IPv4 address its packets carry.
fn canon(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn elements(out: &mut String, elems: &[String]) {
    if !elems.is_empty() {
        out.push_str(" elements = { ");
        out.push_str(&elems.join(", "));
        out.push_str(" };");
    }
}

/// The nft script that creates the table `table` dropping what `set` covers.
pub fn ruleset(table: &str, set: &LockSet) -> String {
    let (mut c4, mut c6) = (Vec::new(), Vec::new());
    for (local, peer) in &set.connections {
        match (canon(peer.ip()), canon(local.ip())) {
            (IpAddr::V4(p), IpAddr::V4(l)) => {
                c4.push(format!("{p} . {} . {l} . {}", peer.port(), local.port()));
            }
            (p, l) => c6.push(format!("{p} . {} . {l} . {}", peer.port(), local.port())),
        }
    }
    let (mut l4, mut l6, mut lp) = (Vec::new(), Vec::new(), Vec::new());
    for a in &set.listeners {
        let ip = canon(a.ip());
        if ip.is_unspecified() {
            lp.push(a.port().to_string());
        } else if ip.is_ipv4() {
            l4.push(format!("{ip} . {}", a.port()));
        } else {
            l6.push(format!("{ip} . {}", a.port()));
        }
    }
    c4.sort();
    c4.dedup();
    c6.sort();
    c6.dedup();
    lp.sort();
    lp.dedup();
    let mut s = format!("table inet {table} {{\n");
    let sets: [(&str, &str, &Vec<String>); 5] = [
        (
            "conn4",
            "ipv4_addr . inet_service . ipv4_addr . inet_service",
            &c4,
        ),
        (
            "conn6",
            "ipv6_addr . inet_service . ipv6_addr . inet_service",
            &c6,
        ),
        ("listen4", "ipv4_addr . inet_service", &l4),
        ("listen6", "ipv6_addr . inet_service", &l6),
        ("listenport", "inet_service", &lp),
    ];
    for (name, ty, el) in sets {
        s.push_str(&format!("  set {name} {{ type {ty};"));
        elements(&mut s, el);
        s.push_str(" }\n");
    }
    s.push_str("  chain input {\n    type filter hook input priority -300; policy accept;\n");
    s.push_str("    ip saddr . tcp sport . ip daddr . tcp dport @conn4 drop\n");
    s.push_str("    ip6 saddr . tcp sport . ip6 daddr . tcp dport @conn6 drop\n");
    s.push_str("    tcp flags & (syn | ack) == syn ip daddr . tcp dport @listen4 drop\n");
    s.push_str("    tcp flags & (syn | ack) == syn ip6 daddr . tcp dport @listen6 drop\n");
    s.push_str("    tcp flags & (syn | ack) == syn tcp dport @listenport drop\n");
    s.push_str("  }\n}\n");
    s
}

/// Where `nft` is, if installed. `UNDERSTUDY_NFT`, when set, is the only place looked at
/// (tests use it to simulate a host without nft).
pub fn find_nft() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("UNDERSTUDY_NFT") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("nft"))
        .find(|p| p.is_file())
}

/// The inode of a network namespace (the calling thread's, or that of `pid`).
pub fn netns_inode(pid: Option<i32>) -> std::io::Result<u64> {
    let p = pid.map_or_else(
        || "/proc/thread-self/ns/net".to_string(),
        |p| format!("/proc/{p}/ns/net"),
    );
    Ok(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p)?))
}

/// The namespace file of `netns_pid` when given and different from ours.
fn ns_of_pid(table: &str, netns_pid: Option<i32>) -> Result<Option<PathBuf>, NetLockError> {
    let Some(pid) = netns_pid else {
        return Ok(None);
    };
    let run_err = |what: String| {
        let table = table.to_string();
        move |source| NetLockError::Run {
            table,
            what,
            source,
        }
    };
    let theirs = netns_inode(Some(pid)).map_err(run_err(format!("reading /proc/{pid}/ns/net")))?;
    let ours = netns_inode(None).map_err(run_err("reading /proc/thread-self/ns/net".into()))?;
    Ok((theirs != ours).then(|| PathBuf::from(format!("/proc/{pid}/ns/net"))))
}

/// A file naming the network namespace with inode `inode` on this host, if one is found
/// (`/run/netns/*`, then `/proc/PID/ns/net` of every process).
pub fn find_netns(inode: u64) -> Option<PathBuf> {
    let ino = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
    };
    let named = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let procs = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path().join("ns/net"));
    named.chain(procs).find(|p| ino(p) == Some(inode))
}

/// Runs `nft` with `args` (and `script` on stdin), in the network namespace of file
/// `other_ns` when given (from a helper thread that joins it: the child inherits the namespace
/// of the thread that starts it).
fn run_nft(
    table: &str,
    action: &'static str,
    args: &[&str],
    script: Option<&str>,
    other_ns: Option<PathBuf>,
) -> Result<std::result::Result<(), String>, NetLockError> {
    let nft = find_nft().ok_or_else(|| NetLockError::NoNft {
        table: table.to_string(),
    })?;
    let args: Vec<String> = args.iter().map(|a| (*a).to_string()).collect();
    let script = script.map(str::to_string);
    let tbl = table.to_string();
    let join = other_ns.is_some();
    let job = move || -> Result<std::process::Output, NetLockError> {
        let run_err = |what: String| {
            let table = tbl.clone();
            move |source| NetLockError::Run {
                table,
                what,
                source,
            }
        };
        if let Some(path) = &other_ns {
            let ns = std::fs::File::open(path)
                .map_err(run_err(format!("opening {}", path.display())))?;
            // SAFETY: setns with a namespace fd we own; it affects only this helper thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(run_err(format!(
                    "joining the network namespace {}",
                    path.display()
                ))(std::io::Error::last_os_error()));
            }
        }
        let mut child = Command::new(&nft)
            .args(&args)
            .stdin(if script.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(run_err(format!("starting {}", nft.display())))?;
        if let (Some(s), Some(mut stdin)) = (&script, child.stdin.take()) {
            stdin
                .write_all(s.as_bytes())
                .map_err(run_err("writing the ruleset to nft".into()))?;
        }
        child
            .wait_with_output()
            .map_err(run_err("waiting for nft".into()))
    };
    let out = if join {
        std::thread::spawn(job)
            .join()
            .map_err(|_| NetLockError::Run {
                table: table.to_string(),
                what: "netns helper thread".into(),
                source: std::io::Error::other("panicked"),
            })??
    } else {
        job()?
    };
    if out.status.success() {
        return Ok(Ok(()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if stderr.contains("No such file or directory") {
        return Ok(Err(stderr));
    }
    Err(NetLockError::Nft {
        table: table.to_string(),
        action,
        status: out.status.to_string(),
        stderr,
    })
}

/// Takes the lock: creates table `table` in the network namespace of `netns_pid` (ours when
/// `None`). A stale table of the same name (left by a failed restore of the same root pid into
/// the same image directory) is merged into: its elements stay dropped until the unlock
/// removes the whole table. (Replacing it first, `delete table` in the same script, makes nft
/// load the ruleset cache: 10-20 ms more in the freeze.)
pub fn lock(table: &str, set: &LockSet, netns_pid: Option<i32>) -> Result<(), NetLockError> {
    let script = ruleset(table, set);
    let ns = ns_of_pid(table, netns_pid)?;
    match run_nft(table, "add table", &["-f", "-"], Some(&script), ns)? {
        Ok(()) => Ok(()),
        Err(stderr) => Err(NetLockError::Nft {
            table: table.to_string(),
            action: "add table",
            status: "refused".into(),
            stderr,
        }),
    }
}

/// Releases the lock; `Ok(false)` when there was no such table.
pub fn unlock(table: &str, netns_pid: Option<i32>) -> Result<bool, NetLockError> {
    let ns = ns_of_pid(table, netns_pid)?;
    Ok(run_nft(
        table,
        "delete table",
        &["delete", "table", "inet", table],
        None,
        ns,
    )?
    .is_ok())
}

/// Releases the lock in the network namespace named by file `ns` (see [`find_netns`]);
/// `Ok(false)` when there was no such table.
pub fn unlock_in(table: &str, ns: &Path) -> Result<bool, NetLockError> {
    Ok(run_nft(
        table,
        "delete table",
        &["delete", "table", "inet", table],
        None,
        Some(ns.to_path_buf()),
    )?
    .is_ok())
}

/// Whether table `table` exists (in our network namespace, or that of `netns_pid`).
pub fn is_locked(table: &str, netns_pid: Option<i32>) -> Result<bool, NetLockError> {
    let ns = ns_of_pid(table, netns_pid)?;
    Ok(run_nft(
        table,
        "list table",
        &["list", "table", "inet", table],
        None,
        ns,
    )?
    .is_ok())
}

/// The record of a lock left in place by a checkpoint, file [`RECORD_FILE`] of the image:
/// text lines `understudy-netlock 1`, `table NAME`, `netns INODE`, `connections N`,
/// `listeners N`, then `crc32c XXXXXXXX` (CRC32C of every byte before that line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockRecord {
    pub table: String,
    /// Inode of the network namespace the table is in.
    pub netns: u64,
    pub connections: u32,
    pub listeners: u32,
}

impl LockRecord {
    pub fn encode(&self) -> String {
        let body = format!(
            "{MAGIC} {RECORD_VERSION}\ntable {}\nnetns {}\nconnections {}\nlisteners {}\n",
            self.table, self.netns, self.connections, self.listeners
        );
        let crc = crc32c::crc32c(body.as_bytes());
        format!("{body}crc32c {crc:08x}\n")
    }

    pub fn decode(text: &str) -> Result<Self, String> {
        let at = text.rfind("crc32c ").ok_or("no crc32c line (truncated?)")?;
        let (body, tail) = text.split_at(at);
        let want = u32::from_str_radix(tail.trim_start_matches("crc32c ").trim(), 16)
            .map_err(|e| format!("bad crc32c line: {e}"))?;
        let got = crc32c::crc32c(body.as_bytes());
        if got != want {
            return Err(format!(
                "checksum mismatch (recorded {want:08x}, computed {got:08x})"
            ));
        }
        let mut lines = body.lines();
        let head = lines.next().unwrap_or_default();
        let version = head
            .strip_prefix(MAGIC)
            .map(str::trim)
            .ok_or_else(|| format!("not a network lock record (first line {head:?})"))?;
        if version != RECORD_VERSION.to_string() {
            return Err(format!(
                "format version {version} (this build reads {RECORD_VERSION})"
            ));
        }
        let mut field = |key: &str| -> Result<String, String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(key))
                .and_then(|v| v.strip_prefix(' '))
                .map(str::to_string)
                .ok_or_else(|| format!("missing line {key:?}"))
        };
        let table = field("table")?;
        if !table.starts_with(TABLE_PREFIX)
            || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!("table name {table:?} is not one of understudy's"));
        }
        let num = |v: String, key: &str| v.parse::<u64>().map_err(|e| format!("{key} {v:?}: {e}"));
        let netns = num(field("netns")?, "netns")?;
        let connections = u32::try_from(num(field("connections")?, "connections")?)
            .map_err(|e| format!("connections: {e}"))?;
        let listeners = u32::try_from(num(field("listeners")?, "listeners")?)
            .map_err(|e| format!("listeners: {e}"))?;
        Ok(LockRecord {
            table,
            netns,
            connections,
            listeners,
        })
    }

    /// Writes the record into image directory `dir` (fsynced).
    pub fn write(&self, dir: &Path) -> Result<(), NetLockError> {
        let path = dir.join(RECORD_FILE);
        let err = |e: std::io::Error| NetLockError::Record {
            path: path.clone(),
            why: format!("cannot write: {e}"),
        };
        let mut f = std::fs::File::create(&path).map_err(err)?;
        f.write_all(self.encode().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)
    }

    /// Reads the record of image directory `dir`; `None` when the checkpoint left no lock.
    pub fn read(dir: &Path) -> Result<Option<Self>, NetLockError> {
        let path = dir.join(RECORD_FILE);
        let rec = |why: String| NetLockError::Record {
            path: path.clone(),
            why,
        };
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(rec(format!("cannot open: {e}"))),
        };
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, MAX_RECORD + 1), &mut text)
            .map_err(|e| rec(format!("cannot read: {e}")))?;
        if text.len() as u64 > MAX_RECORD {
            return Err(rec(format!("larger than {MAX_RECORD} bytes")));
        }
        LockRecord::decode(&text).map(Some).map_err(rec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let r = LockRecord {
            table: table_name("4242_0123abcd"),
            netns: 4_026_531_840,
            connections: 1000,
            listeners: 1,
        };
        let t = r.encode();
        assert_eq!(LockRecord::decode(&t).unwrap(), r);
        let bad = t.replace("connections 1000", "connections 1001");
        assert!(LockRecord::decode(&bad).unwrap_err().contains("checksum"));
        let v2 = t.replace("understudy-netlock 1", "understudy-netlock 2");
        assert!(LockRecord::decode(&v2).is_err());
        assert!(LockRecord::decode("understudy-netlock 1\n").is_err());
    }

    #[test]
    fn ruleset_matches_incoming_packets_of_each_connection_and_syns_of_listeners() {
        let set = LockSet {
            connections: vec![
                (
                    "127.0.0.1:5000".parse().unwrap(),
                    "127.0.0.1:40000".parse().unwrap(),
                ),
                (
                    "[::ffff:10.0.0.1]:80".parse().unwrap(),
                    "[::ffff:10.0.0.2]:3333".parse().unwrap(),
                ),
                (
                    "[::1]:7000".parse().unwrap(),
                    "[::1]:41000".parse().unwrap(),
                ),
            ],
            listeners: vec![
                "0.0.0.0:5000".parse().unwrap(),
                "127.0.0.2:6000".parse().unwrap(),
            ],
        };
        let s = ruleset("understudy_lock_t", &set);
        assert!(s.contains("127.0.0.1 . 40000 . 127.0.0.1 . 5000"), "{s}");
        assert!(s.contains("10.0.0.2 . 3333 . 10.0.0.1 . 80"), "{s}");
        assert!(s.contains("::1 . 41000 . ::1 . 7000"), "{s}");
        assert!(s.contains("set listenport { type inet_service; elements = { 5000 }; }"));
        assert!(s.contains("127.0.0.2 . 6000"));
        assert!(s.contains("policy accept"));
        assert!(!s.contains("reject"));
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        assert_eq!(table_name("12/a-b"), "understudy_lock_12_a_b");
    }
}
