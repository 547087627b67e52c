//! The serde model of `tree.img`.

use serde::{Deserialize, Serialize};
pub use sys::ptrace::{RseqConfig, UserRegs};

/// Version of the image format. Readers accept exactly the versions listed in
/// [`SUPPORTED_VERSIONS`]; a change that old readers cannot skip bumps it.
pub const FORMAT_VERSION: u32 = 2;
/// Version 2 added event descriptor and socket file kinds (a version-1 image is a valid
/// version-2 image without them).
///
/// Version of an incremental image (one with a `parent`): its runs may be `in_parent`, which
/// version-1 and version-2 readers cannot restore, so such images say 3 and older readers
/// refuse them. Full images write [`FORMAT_VERSION`].
pub const INCREMENTAL_FORMAT_VERSION: u32 = 3;
/// Version of an image that records zombies ([`Tree::zombies`] not empty), full or
/// incremental: older readers would drop them silently, so such images say 4 and older readers
/// refuse them. Images without zombies keep writing 2 or 3.
pub const ZOMBIES_FORMAT_VERSION: u32 = 4;
/// Version of an image in which some process's pages are split over part files
/// ([`PagesRef::parts`]), full or incremental, with or without zombies: older readers would
/// read only the first part and refuse it with a length mismatch at best, so such images say
/// 5. Images without parts keep writing 2, 3 or 4.
pub const PARTS_FORMAT_VERSION: u32 = 5;
pub const SUPPORTED_VERSIONS: &[u32] = &[1, 2, 3, 4, 5];
/// Most part files one process's pages may be split over.
pub const MAX_PAGES_PARTS: usize = 16;
/// Longest chain of incremental images a reader follows.
pub const MAX_CHAIN: usize = 64;

/// The whole dumped tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    pub format_version: u32,
    /// `understudy` version that wrote the image.
    pub tool_version: String,
    /// Seconds since the epoch when the dump finished.
    pub created_unix: u64,
    /// Pid of the root in the dumper's namespace.
    pub root_pid: i32,
    /// The tree lives in its own PID namespace whose init is `root_pid` (pids inside are the
    /// `ns_pid` of each process).
    pub pidns: bool,
    /// Image this one is incremental against (relative or absolute path), if any.
    pub parent: Option<String>,
    /// CRC32C of the parent's whole `tree.img` file (set with `parent`): a parent replaced or
    /// rewritten since is refused.
    #[serde(default)]
    pub parent_digest: Option<u32>,
    /// Pre-copy round: the memory was copied while the tree ran, so pages may be newer than
    /// the rest of the state. Valid only as the parent of a later image (whose dump re-copies
    /// every page written since this image's cut); restore refuses it as the newest link.
    #[serde(default)]
    pub live_memory: bool,
    /// Processes, parents before children.
    pub processes: Vec<Process>,
    /// Open file descriptions, referenced by [`Fd::file`]; shared ones appear once.
    pub files: Vec<OpenFile>,
    /// Shared memory objects (MAP_SHARED anonymous, memfd), referenced by [`VmaKind::Shmem`].
    pub shmem: Vec<ShmemObject>,
    /// Bytes queued in the pipes of the tree.
    #[serde(default)]
    pub pipes: Vec<PipeData>,
    /// Processes of the tree that had exited but were not yet reaped by their parent
    /// (version 4; absent when there are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zombies: Vec<Zombie>,
}

impl Tree {
    /// Whether some process's pages are split over part files.
    pub fn has_parts(&self) -> bool {
        self.processes.iter().any(|p| !p.pages.parts.is_empty())
    }

    /// The format version an image with this content is written with: 5 with part files,
    /// else 4 with zombies, else 3
    /// with a parent, else 2.
    pub fn version_for_content(&self) -> u32 {
        if self.has_parts() {
            PARTS_FORMAT_VERSION
        } else if !self.zombies.is_empty() {
            ZOMBIES_FORMAT_VERSION
        } else if self.parent.is_some() {
            INCREMENTAL_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        }
    }
}

/// A process that has exited and waits to be reaped by its parent: it has no memory, threads
/// or files, only its ids and how it ended. Restored as a child of its parent that ends the
/// same way, so the parent's later `wait` returns the same status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zombie {
    /// Pid in the dumper's namespace.
    pub pid: i32,
    /// Pid inside the tree's namespace (same as `pid` without one).
    pub ns_pid: i32,
    /// Parent pid (dumper's namespace): a live process of the tree.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    /// Signal its parent gets when it ends (`SIGCHLD` for a fork).
    pub exit_signal: i32,
    /// How it ended.
    pub end: ExitHow,
}

/// How a process ended, as `wait` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum ExitHow {
    /// `_exit(code)`.
    Exited { code: i32 },
    /// Killed by `signal`; `core_dumped` as the status said (not reproduced by a restore).
    Killed { signal: i32, core_dumped: bool },
}

impl ExitHow {
    /// Decodes a raw wait status (`/proc/PID/stat` field 52 of a zombie); None for a status
    /// that is not a termination (stopped, continued).
    pub fn from_wait_status(st: i32) -> Option<ExitHow> {
        let sig = st & 0x7f;
        if sig == 0 {
            Some(ExitHow::Exited {
                code: (st >> 8) & 0xff,
            })
        } else if sig != 0x7f {
            Some(ExitHow::Killed {
                signal: sig,
                core_dumped: st & 0x80 != 0,
            })
        } else {
            None
        }
    }

    /// The raw wait status.
    pub fn wait_status(self) -> i32 {
        match self {
            ExitHow::Exited { code } => (code & 0xff) << 8,
            ExitHow::Killed {
                signal,
                core_dumped,
            } => (signal & 0x7f) | if core_dumped { 0x80 } else { 0 },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    /// Pid in the dumper's namespace.
    pub pid: i32,
    /// Pid inside the tree's namespace (same as `pid` without one).
    pub ns_pid: i32,
    /// Parent pid (dumper's namespace); 0 for the root.
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub exe: String,
    pub threads: Vec<Thread>,
    pub mm: MmInfo,
    pub vmas: Vec<Vma>,
    /// The pages file of this process.
    pub pages: PagesRef,
    /// Signal handlers for signals 1..=64 (index 0 is signal 1).
    pub sigactions: Vec<SigAction>,
    /// Signals pending for the whole process (raw `siginfo_t`, hex).
    pub shared_pending: Vec<Hex>,
    pub fds: Vec<Fd>,
    pub cwd: String,
    pub root: String,
    pub umask: u32,
    /// 16 rlimits (soft, hard), `u64::MAX` is unlimited.
    pub rlimits: Vec<(u64, u64)>,
    pub creds: Creds,
    /// ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF as (interval, value) in microseconds.
    pub itimers: Vec<(u64, u64)>,
    pub exit_signal: i32,
    /// Seccomp filters of the process (every thread has the same), oldest first, raw
    /// `struct sock_filter` arrays (hex).
    #[serde(default)]
    pub seccomp_filters: Vec<Hex>,
    /// `PR_SET_NO_NEW_PRIVS`.
    #[serde(default)]
    pub no_new_privs: bool,
    /// epoll registrations made in this process once its fds are installed (the fd numbers
    /// of `epfd` and `tfd` are this process's).
    #[serde(default)]
    pub epoll_regs: Vec<EpollReg>,
    /// Dirty-page tracking left armed in the process (`--leave-running`), for a later
    /// incremental dump with this image as its parent.
    #[serde(default)]
    pub dirty: Option<DirtyTracking>,
    /// POSIX timers (`timer_create`), by id; re-created with the same ids and armed just
    /// before the tree resumes. Absent in images written before timers were supported.
    #[serde(default)]
    pub posix_timers: Vec<PosixTimer>,
}

/// One POSIX timer of a process (`timer_create`), as `/proc/PID/timers` and an injected
/// `timer_gettime` showed it at the cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixTimer {
    /// The timer id (`timer_t` value the process holds).
    pub id: i32,
    /// Clock id as passed to `timer_create` (CPU-time clocks encode a pid in negative ids).
    pub clock: i32,
    /// Signal sent on expiry (0 with `SIGEV_NONE`).
    pub signo: i32,
    /// `sigev_value` (pointer-sized).
    pub value: u64,
    /// How the timer notifies; a `Thread` tid is the thread id inside the process's own PID
    /// namespace (what the process passed as `sigev_notify_thread_id`).
    pub notify: sys::timers::Notify,
    /// Time left until the next expiry in nanoseconds (0 = disarmed), re-armed relative.
    pub value_ns: u64,
    /// Interval in nanoseconds (0 = one-shot).
    pub interval_ns: u64,
    /// `timer_getoverrun` at the cut (informational: the kernel offers no way to set it).
    #[serde(default)]
    pub overrun: i32,
}

/// One registration of an epoll instance: `epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, {events, data})`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpollReg {
    pub epfd: i32,
    pub tfd: i32,
    /// `EPOLL*` bits as the kernel holds them (incl. `EPOLLET`, `EPOLLONESHOT`, ...).
    pub events: u32,
    pub data: u64,
}

/// A userfaultfd (write-protect, async) left open in the dumped process by the dumper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyTracking {
    /// Its fd number in the process (left out of `fds`).
    pub uffd_fd: i32,
    /// Address ranges tracked since this dump's cut: a page inside them not reported written
    /// by the next dump is unchanged since this image.
    pub tracked: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub tid: i32,
    pub ns_tid: i32,
    pub regs: UserRegs,
    /// XSAVE area as `PTRACE_GETREGSET NT_X86_XSTATE` returned it.
    pub xstate: Hex,
    pub sigmask: u64,
    pub rseq: Option<RseqConfig>,
    /// (ss_sp, ss_flags, ss_size)
    pub sigaltstack: (u64, i32, u64),
    /// Signals pending for this thread (raw `siginfo_t`, hex).
    pub pending: Vec<Hex>,
    /// `clear_child_tid` (`set_tid_address`): where the kernel clears the tid and wakes
    /// joiners when the thread exits.
    #[serde(default)]
    pub clear_child_tid: u64,
    /// The thread's name (`PR_SET_NAME`, `/proc/PID/task/TID/comm`).
    #[serde(default)]
    pub comm: String,
}

/// Bytes stored as a hex string in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hex(pub Vec<u8>);

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map(Hex).map_err(serde::de::Error::custom)
    }
}

/// The mm fields restored with `PR_SET_MM_MAP`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmInfo {
    pub start_code: u64,
    pub end_code: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub brk: u64,
    pub start_stack: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub auxv: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `PROT_*` bits.
    pub prot: u32,
    pub kind: VmaKind,
    /// Runs of dumped pages, ascending and disjoint.
    pub pages: Vec<PageRun>,
    /// `madvise` state restored with the mapping, as `VmFlags` names: `hg` (MADV_HUGEPAGE),
    /// `nh` (MADV_NOHUGEPAGE), `dc` (MADV_DONTFORK), `wf` (MADV_WIPEONFORK), `dd`
    /// (MADV_DONTDUMP).
    #[serde(default)]
    pub madvise: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum VmaKind {
    /// Private anonymous memory (incl. `[heap]`).
    Anon { name: String },
    /// The main thread's stack (`MAP_GROWSDOWN`).
    Stack,
    /// The `[vvar]`/`[vvar_vclock]`/`[vdso]` block; not dumped, placed at its address.
    Vdso { name: String },
    /// A private mapping of a file; only privately modified pages are dumped.
    FilePrivate { path: String, offset: u64 },
    /// A shared mapping of a file on a filesystem; nothing dumped (the file holds the data).
    FileShared { path: String, offset: u64 },
    /// A shared memory object (`MAP_SHARED|MAP_ANONYMOUS` or memfd) of [`Tree::shmem`].
    Shmem { id: u32, offset: u64 },
}

/// Contiguous dumped pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    pub vaddr: u64,
    pub npages: u64,
    /// Byte offset in the data part of the pages file.
    pub offset: u64,
    /// The data is in the parent image (incremental dump), not in this one.
    #[serde(default)]
    pub in_parent: bool,
}

/// Reference to a pages/shmem file with what its header must say.
///
/// With `parts` (version 5, process pages only) the data is split over several part files,
/// each a complete pages file of its own: `file`, `len` and `crc32c` then describe the whole
/// data (the concatenation of the parts, in order; `file` is the first part's name) and
/// every part but the last holds a multiple of [`crate::PAGES_CHUNK`] bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagesRef {
    pub file: String,
    pub len: u64,
    pub crc32c: u32,
    /// The part files, in data order (version 5; absent for a single file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<PagesPart>,
}

/// One part file of a split pages file (see [`PagesRef::parts`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PagesPart {
    pub file: String,
    pub len: u64,
    pub crc32c: u32,
}

impl PagesRef {
    /// The files holding the data, in order, each as a single-file reference with its data
    /// offset: the ref itself when it has no parts.
    pub fn pieces(&self) -> Vec<(u64, PagesRef)> {
        if self.parts.is_empty() {
            let mut one = self.clone();
            one.parts.clear();
            return vec![(0, one)];
        }
        let mut at = 0u64;
        self.parts
            .iter()
            .map(|p| {
                let o = at;
                at = at.saturating_add(p.len);
                (
                    o,
                    PagesRef {
                        file: p.file.clone(),
                        len: p.len,
                        crc32c: p.crc32c,
                        parts: Vec::new(),
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmemObject {
    pub id: u32,
    /// `memfd:NAME` or `shared-anon`.
    pub name: String,
    pub size: u64,
    pub data: PagesRef,
    /// Pages present in the object, as runs of its offset space (vaddr = offset).
    pub pages: Vec<PageRun>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigAction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
}

/// A file descriptor of a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    pub cloexec: bool,
    /// Index into [`Tree::files`].
    pub file: u32,
}

/// An open file description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    pub id: u32,
    /// `O_*` status flags (access mode, `O_APPEND`, `O_NONBLOCK`, ...), without `O_CLOEXEC`.
    pub flags: u32,
    pub kind: FileKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FileKind {
    /// A regular file or a directory, reopened by path; `pos` is the file offset.
    Path { path: String, pos: u64, size: u64 },
    /// A character device (`/dev/null`, `/dev/zero`, `/dev/urandom`, a tty), reopened by path.
    Device { path: String, rdev: u64 },
    /// A memfd (its content is the shared memory object `shmem` of [`Tree::shmem`]).
    Memfd { shmem: u32, pos: u64 },
    /// One end of a pipe or FIFO; `pipe` identifies the pipe (both ends share it).
    Pipe {
        pipe: u32,
        write_end: bool,
        fifo_path: Option<String>,
    },
    /// An eventfd with its counter.
    EventFd { count: u64, semaphore: bool },
    /// A timerfd: remaining time and interval in nanoseconds (0 = disarmed), `settime_flags`
    /// (`TFD_TIMER_ABSTIME` = 1, `TFD_TIMER_CANCEL_ON_SET` = 2), expirations not yet read.
    TimerFd {
        clockid: i32,
        value_ns: u64,
        interval_ns: u64,
        settime_flags: u32,
        ticks: u64,
    },
    /// A signalfd and its mask (bit `sig - 1`).
    SignalFd { sigmask: u64 },
    /// An epoll instance; its registrations are [`Process::epoll_regs`] of one process.
    Epoll,
    /// One end of a connected pair of unix sockets inside the tree (`socketpair`, or two
    /// unnamed sockets connected to each other); `end` is 0 or 1 and both ends share `pair`.
    /// `queue` is this end's receive queue (one message for a stream socket).
    UnixPair {
        pair: u32,
        end: u8,
        /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5).
        sock_type: i32,
        queue: Vec<Hex>,
    },
    /// A listening unix socket bound to `name` (a path, or `@name` in the abstract namespace);
    /// `mode` is the permission bits of the socket file (path names).
    UnixListen {
        sock_type: i32,
        name: String,
        backlog: u32,
        mode: Option<u32>,
    },
    /// A listening TCP socket (address, backlog, reuse options).
    TcpListen { state: sys::inetsock::ListenState },
    /// A UDP socket, bound and possibly connected (queued datagrams are not carried).
    Udp { state: sys::inetsock::UdpState },
    /// An established TCP connection as `TCP_REPAIR` read it (sequence numbers, queues,
    /// window, options), restored without the peer noticing.
    TcpEstablished {
        state: sys::tcp_repair::TcpConnState,
    },
}

/// Pipes of the tree with the bytes queued in them at dump time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeData {
    pub pipe: u32,
    /// Pipe buffer size (`F_GETPIPE_SZ`).
    pub capacity: u64,
    pub data: Hex,
}
