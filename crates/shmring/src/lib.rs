//! Shared-memory ring between the interceptor in each application process and its collector
//! (`understudy record` or the primary agent).
//!
//! One ring per application: a file in `/dev/shm` (or any path on a shared-memory file system,
//! or a memfd reached through `/proc/self/fd/N`) mapped `MAP_SHARED` by every process of the
//! application. Many producers (every thread of every process) append variable-length records;
//! one consumer drains them in order. Each record carries a gapless, monotonic `ring_seq`
//! starting at 1.
//!
//! What the ring promises:
//! - **No syscall on the producer fast path.** A producer reserves space with one compare-and-swap
//!   on the `head` word, copies its payload and publishes it with one atomic exchange. It makes a
//!   syscall only to wake a sleeping consumer, when the ring is full, when it waits for an
//!   acknowledgement (sync mode) or when it parks for a quiesce.
//! - **Order.** Records are consumed in `ring_seq` order, which is the order in which producers
//!   reserved them; a consumer never sees a record before it is completely written.
//! - **Acknowledgement.** The consumer publishes `ack_seq` ("every record with `ring_seq <=
//!   ack_seq` is durable where it must be"); a producer can block until its record is covered.
//! - **Quiesce.** The consumer can ask every registered thread to park at its next interceptor
//!   boundary and learns the cut (the `ring_seq` of the last record before it).
//!
//! The header is `repr(C)`, holds no pointers and is versioned: see `docs/shmring.md`.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub mod framing;
mod futex;

pub use framing::{RecordHeader, RECORD_HEADER_LEN};

/// Magic at the start of every ring file.
pub const MAGIC: [u8; 8] = *b"USHMRING";
/// Layout version; a producer refuses a ring whose version differs from its own.
pub const VERSION: u32 = 1;
/// Number of thread slots (threads of all processes that may be registered at once).
pub const MAX_THREADS: usize = 1024;
/// Smallest data area accepted.
pub const MIN_CAPACITY: usize = 4096;
/// Largest data area accepted (positions are tracked modulo 2^32).
pub const MAX_CAPACITY: usize = 1 << 30;
/// Offset of the thread table from the start of the file.
pub const THREADS_OFFSET: usize = 4096;
const _: () = assert!(
    MAX_THREADS.is_power_of_two(),
    "slot_fast masks the thread index"
);
/// A long [`RingConsumer::poll_take`] gives consumed bytes back to the producers every
/// `capacity / GIVE_BACK_PART` bytes (and always at its end).
pub const GIVE_BACK_PART: usize = 16;
/// Offset of the data area from the start of the file.
pub const DATA_OFFSET: usize = THREADS_OFFSET + MAX_THREADS * std::mem::size_of::<ThreadSlot>();

/// Errors of the ring. Messages say what, where and why.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("ring {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("ring {path}: bad magic, not an understudy ring")]
    BadMagic { path: PathBuf },
    #[error("ring {path}: layout version {found}, this build understands {expected}")]
    BadVersion {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("ring {path}: {what}")]
    BadLayout { path: PathBuf, what: String },
    #[error("capacity {0} must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}")]
    BadCapacity(usize),
    #[error("record of {len} bytes exceeds the ring's limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("ring corrupt at byte {pos}: {what}")]
    Corrupt { pos: u64, what: String },
    #[error("consumer (pid {pid}) is gone")]
    ConsumerGone { pid: u32 },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("thread table full ({MAX_THREADS} threads registered)")]
    ThreadTableFull,
    #[error(
        "quiesce timed out after {timeout:?}: threads still inside the interceptor: {active:?}"
    )]
    QuiesceTimeout {
        timeout: Duration,
        active: Vec<ThreadId>,
    },
}

pub type Result<T, E = RingError> = std::result::Result<T, E>;

/// A cache line of its own, so that producers and consumer do not false-share.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct Line<T>(pub T);

/// Fields that never change after creation.
#[repr(C)]
#[derive(Debug)]
pub struct Fixed {
    pub magic: [u8; 8],
    pub version: u32,
    /// Offset of the data area (= [`DATA_OFFSET`]).
    pub data_offset: u32,
    /// Bytes in the data area, a power of two.
    pub capacity: u64,
    pub max_threads: u32,
    /// Pid of the consumer in its own PID namespace (diagnostics; a liveness check only for
    /// anonymous rings, and only from the consumer's PID namespace: see [`FLAG_CONSUMER_LOCK`]).
    pub consumer_pid: u32,
    /// [`FLAG_STRONG_FENCES`]: the consumer cannot issue `membarrier`, so producers must use
    /// SeqCst read-modify-writes on their fast path. [`FLAG_CONSUMER_LOCK`]: the consumer holds
    /// an exclusive `flock` on the ring file for its lifetime.
    pub flags: u32,
}

/// See [`Fixed::flags`].
pub const FLAG_STRONG_FENCES: u32 = 1;
/// See [`Fixed::flags`]: the consumer holds `LOCK_EX` (`flock`) on the ring file, through an
/// `O_CLOEXEC` descriptor, for as long as it lives. A producer tests liveness with a
/// non-blocking `LOCK_SH` on a descriptor it opens itself: `EWOULDBLOCK` means alive. This works
/// across PID namespaces, where the consumer's pid means nothing.
pub const FLAG_CONSUMER_LOCK: u32 = 2;

/// Producers' reservation word: `(next ring_seq mod 2^32) << 32 | (next byte position mod 2^32)`.
#[repr(C)]
#[derive(Debug)]
pub struct Head {
    pub word: AtomicU64,
}

/// Consumer's position and the futex producers sleep on when the ring is full.
#[repr(C)]
#[derive(Debug)]
pub struct Tail {
    /// Byte position (not reduced modulo capacity) of the next record to consume.
    pub pos: AtomicU64,
    /// `ring_seq` of the next record to consume.
    pub seq: AtomicU64,
    pub space_futex: AtomicU32,
    pub space_waiters: AtomicU32,
}

/// Wake-up of the consumer.
#[repr(C)]
#[derive(Debug)]
pub struct Wake {
    pub data_futex: AtomicU32,
    /// Non-zero while the consumer sleeps (or is about to) in [`RingConsumer::wait`].
    pub consumer_sleeping: AtomicU32,
}

/// Output commit (sync mode).
#[repr(C)]
#[derive(Debug)]
pub struct Ack {
    /// Every record with `ring_seq <= ack_seq` is durable where it must be.
    pub ack_seq: AtomicU64,
    pub ack_futex: AtomicU32,
    pub ack_waiters: AtomicU32,
}

/// Quiesce request and answer.
#[repr(C)]
#[derive(Debug)]
pub struct Quiesce {
    /// Futex word. Odd: a quiesce is active, threads park at their next boundary. Even: run.
    pub gen: AtomicU32,
    /// Non-zero once the consumer has determined the cut of the active quiesce.
    pub answered: AtomicU32,
    /// The cut: `ring_seq` of the last record emitted before the quiesce.
    pub cut: AtomicU64,
}

/// The ring header at offset 0 of the file. `repr(C)`, no pointers.
#[repr(C)]
#[derive(Debug)]
pub struct RingHeader {
    pub fixed: Line<Fixed>,
    pub head: Line<Head>,
    pub tail: Line<Tail>,
    pub wake: Line<Wake>,
    pub ack: Line<Ack>,
    pub quiesce: Line<Quiesce>,
}

/// State of a registered thread, as seen by quiesce.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    /// Slot unused.
    Free = 0,
    /// Running application code, outside any intercepted call: holds no unemitted message.
    Outside = 1,
    /// Inside the interceptor (between boundaries): may be about to emit a message.
    Active = 2,
    /// Inside a possibly blocking real call; will pass a boundary before it emits anything.
    Blocked = 3,
    /// Parked at a boundary by a quiesce.
    Parked = 4,
}

impl ThreadState {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Outside,
            2 => Self::Active,
            3 => Self::Blocked,
            4 => Self::Parked,
            _ => Self::Free,
        }
    }
}

/// One slot of the thread table (a cache line each, so the fast path does not false-share).
#[repr(C, align(64))]
#[derive(Debug)]
pub struct ThreadSlot {
    pub pid: AtomicU32,
    pub tid: AtomicU32,
    pub state: AtomicU32,
}

/// A thread of the application: process id and thread id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadId {
    pub pid: u32,
    pub tid: u32,
}

/// What a quiesce found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuiesceReport {
    /// `ring_seq` of the last record emitted before the cut (0 if none).
    pub cut: u64,
    /// Threads parked at a boundary.
    pub parked: Vec<ThreadId>,
    /// Threads blocked in a real call; they park before emitting anything.
    pub blocked: Vec<ThreadId>,
    /// Threads running application code; they park when they next reach the interceptor.
    pub outside: Vec<ThreadId>,
}

/// The shared mapping: header, thread table, data area.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory accessed only through atomics (header, thread table,
// record words) or through byte copies whose exclusivity is guaranteed by the ring protocol.
unsafe impl Send for Mapping {}
// SAFETY: as above; every concurrent access goes through atomics.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: base/len are exactly what mmap returned; nothing borrows the mapping after drop
        // because every borrow is tied to `&self` of the owning consumer/producer.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len);
        }
    }
}

impl Mapping {
    fn map_fd(fd: i32, len: usize, path: &Path) -> Result<Self> {
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                // Populate now: a first-touch fault on the fast path costs microseconds.
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io_err(path, "mmap"));
        }
        Ok(Self {
            base: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    fn anonymous(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous shared mapping (inherited across fork).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io_err(Path::new("<anonymous>"), "mmap"));
        }
        Ok(Self {
            base: NonNull::new(p.cast()).expect("mmap returned null"),
            len,
        })
    }

    #[inline]
    fn header(&self) -> &RingHeader {
        // SAFETY: the mapping is at least DATA_OFFSET bytes, page aligned, and RingHeader is
        // made of atomics and plain integers valid for any bit pattern (zeroed or initialised).
        unsafe { &*self.base.as_ptr().cast::<RingHeader>() }
    }

    #[inline]
    fn slot(&self, i: usize) -> &ThreadSlot {
        assert!(i < MAX_THREADS);
        // SAFETY: the thread table lies within the mapping at THREADS_OFFSET, slots are 64-byte
        // aligned (page-aligned base) and made of atomics valid for any bit pattern.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(THREADS_OFFSET + i * std::mem::size_of::<ThreadSlot>())
                .cast::<ThreadSlot>()
        }
    }

    #[inline]
    fn data(&self) -> *mut u8 {
        // SAFETY: DATA_OFFSET < len (checked at creation/open).
        unsafe { self.base.as_ptr().add(DATA_OFFSET) }
    }

    /// The atomic first word of the record at data offset `off` (8-byte aligned, in bounds).
    #[inline]
    fn word(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.len - DATA_OFFSET);
        // SAFETY: off is 8-aligned and within the data area (callers reduce modulo capacity);
        // an AtomicU32 is valid for any bit pattern.
        unsafe { &*self.data().add(off).cast::<AtomicU32>() }
    }
}

fn io_err(path: &Path, op: &'static str) -> RingError {
    RingError::Io {
        path: path.to_path_buf(),
        op,
        source: std::io::Error::last_os_error(),
    }
}

fn check_capacity(capacity: usize) -> Result<()> {
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(RingError::BadCapacity(capacity));
    }
    Ok(())
}

fn init_header(m: &Mapping, capacity: usize, extra_flags: u32) {
    let h = m.header();
    // SAFETY: the mapping was just created (zero-filled) and nobody else has it yet, so writing
    // the non-atomic fixed fields cannot race.
    unsafe {
        let fixed = std::ptr::addr_of!(h.fixed.0).cast_mut();
        (*fixed).magic = MAGIC;
        (*fixed).version = VERSION;
        (*fixed).data_offset = u32::try_from(DATA_OFFSET).expect("data offset fits u32");
        (*fixed).capacity = capacity as u64;
        (*fixed).max_threads = u32::try_from(MAX_THREADS).expect("fits");
        (*fixed).consumer_pid = std::process::id();
        (*fixed).flags = extra_flags
            | if futex::membarrier_supported() {
                0
            } else {
                FLAG_STRONG_FENCES
            };
    }
    h.head.0.word.store(1u64 << 32, Ordering::Release);
    h.tail.0.seq.store(1, Ordering::Release);
}

/// Reduce a 64-bit position to an offset in the data area.
#[inline]
fn off_of(pos: u64, capacity: usize) -> usize {
    // capacity <= 2^30, so the masked value fits usize.
    usize::try_from(pos & (capacity as u64 - 1)).expect("masked offset fits usize")
}

fn pid_alive(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(p, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Identity (device, inode) of the PID namespace of the calling process, if /proc tells it.
fn own_pidns() -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated static path and a valid out pointer.
    let r = unsafe { libc::stat(c"/proc/self/ns/pid".as_ptr(), &mut st) };
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// Identity (device, inode) of the file open as `fd`.
fn file_id(fd: i32) -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat with a valid out pointer; a bad fd only yields an error.
    let r = unsafe { libc::fstat(fd, &mut st) };
    (r == 0).then_some((st.st_dev, st.st_ino))
}

/// How a producer tells whether the consumer is still there.
#[derive(Debug)]
enum Liveness {
    /// The consumer holds `LOCK_EX` on the ring file (`FLAG_CONSUMER_LOCK`): probe it through a
    /// fresh descriptor of `path`, which must still name the file we mapped (`dev`, `ino`).
    Lock { path: CString, dev: u64, ino: u64 },
    /// No lock to probe (anonymous rings, or rings of a consumer without the flag): the pid
    /// check, trusted only when the producer is in `pidns` (the consumer's PID namespace).
    /// Elsewhere the consumer is assumed alive: a wrong "gone" would release sync-mode outputs
    /// without their acknowledgement, a wrong "alive" only makes a wait last (`wait_ack` still
    /// times out). `None` (namespace unknown: no /proc, or a ring made by a consumer that
    /// predates [`FLAG_CONSUMER_LOCK`]): the plain pid check.
    Pid { pidns: Option<(u64, u64)> },
}

/// Whether a consumer holds its lock on the file `path` (identified by `dev`/`ino`).
fn lock_held(path: &CStr, dev: u64, ino: u64) -> bool {
    // SAFETY: open with a NUL-terminated path; the descriptor is owned right below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        // Removed: only the consumer removes its ring, when it ends (or a new consumer replaces
        // it). Anything else (e.g. the application dropped the rights to open it): we cannot
        // tell, so assume alive.
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT);
    }
    // SAFETY: fd was just opened by us and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let Some(id) = file_id(fd.as_raw_fd()) else {
        return true;
    };
    if id != (dev, ino) {
        // The path names another ring now: ours has lost its consumer.
        return false;
    }
    // SAFETY: flock on our own open descriptor; a shared lock, released at once below.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        // SAFETY: as above (closing would release it too; be explicit).
        unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    // EWOULDBLOCK: the consumer's exclusive lock. Any other error: cannot tell, assume alive.
    true
}

fn thread_alive(t: ThreadId) -> bool {
    let (Ok(p), Ok(tid)) = (i32::try_from(t.pid), i32::try_from(t.tid)) else {
        return false;
    };
    // SAFETY: tgkill with signal 0 only checks for existence.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, p, tid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The collector's end of the ring.
pub struct RingConsumer {
    map: Mapping,
    path: Option<PathBuf>,
    capacity: usize,
    /// Local copies of the tail (the consumer is the only writer; `RingConsumer` is not `Sync`).
    pos: std::cell::Cell<u64>,
    seq: std::cell::Cell<u64>,
    /// File rings: the `O_CLOEXEC` descriptor (its own open file description, not the mapped
    /// one) through which the consumer holds `LOCK_EX` on the ring file for its lifetime
    /// ([`FLAG_CONSUMER_LOCK`]); closing it (drop, exit, crash) is what producers observe as
    /// "consumer gone". A child forked without exec keeps it until it exits or execs.
    _lock: Option<OwnedFd>,
}

impl std::fmt::Debug for RingConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingConsumer")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("next_seq", &self.seq.get())
            .finish()
    }
}

impl RingConsumer {
    /// Create (or replace) the ring file at `path` with a data area of `capacity` bytes (a power
    /// of two between [`MIN_CAPACITY`] and [`MAX_CAPACITY`]).
    pub fn create(path: &Path, capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| RingError::BadLayout {
            path: path.to_path_buf(),
            what: "path contains a NUL byte".into(),
        })?;
        // Remove a stale ring first so producers still mapping it keep their own copy.
        // SAFETY: plain unlink of a C string path.
        unsafe { libc::unlink(c.as_ptr()) };
        // SAFETY: open with a valid C string; the fd is closed below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io_err(path, "create"));
        }
        // SAFETY: fd was just opened by us and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The liveness lock, on an open file description of its own: a `flock` lives as long as
        // its open file description, and a mapping holds the description it was made from, so
        // locking the mapped one would let every child forked with the mapping keep the lock.
        // SAFETY: open with a valid C string; the descriptor is owned right below.
        let lfd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if lfd < 0 {
            return Err(io_err(path, "open (lock)"));
        }
        // SAFETY: lfd was just opened by us and is owned by nobody else.
        let lock = unsafe { OwnedFd::from_raw_fd(lfd) };
        if file_id(fd.as_raw_fd()) != file_id(lock.as_raw_fd()) {
            return Err(RingError::BadLayout {
                path: path.to_path_buf(),
                what: "replaced while being created".into(),
            });
        }
        // Blocking: on a file this new, only a producer's momentary probe can stand in the way.
        // SAFETY: flock on our own open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(path, "flock"));
        }
        let len = DATA_OFFSET + capacity;
        // SAFETY: fd is ours; ftruncate sizes the new file.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), i64::try_from(len).expect("fits")) } != 0 {
            return Err(io_err(path, "ftruncate"));
        }
        let map = Mapping::map_fd(fd.as_raw_fd(), len, path)?;
        init_header(&map, capacity, FLAG_CONSUMER_LOCK);
        Ok(Self {
            map,
            path: Some(path.to_path_buf()),
            capacity,
            pos: std::cell::Cell::new(0),
            seq: std::cell::Cell::new(1),
            _lock: Some(lock),
        })
    }

    /// A ring in anonymous shared memory: shared with children forked afterwards (tests, and
    /// single-process tools). Producers come from [`RingConsumer::producer`].
    pub fn anonymous(capacity: usize) -> Result<Self> {
        check_capacity(capacity)?;
        let map = Mapping::anonymous(DATA_OFFSET + capacity)?;
        init_header(&map, capacity, 0);
        Ok(Self {
            map,
            path: None,
            capacity,
            pos: std::cell::Cell::new(0),
            seq: std::cell::Cell::new(1),
            _lock: None,
        })
    }

    /// A producer over the same mapping (for in-process producers and forked children).
    ///
    /// Its liveness check is the consumer's pid, trusted only from the consumer's PID namespace
    /// (recorded here, in the consumer's process): a child forked into another PID namespace
    /// always sees the consumer as alive (its waits for an ack still time out). The lock of a
    /// file ring is not used here because forked children inherit the consumer's descriptor,
    /// and with it the lock.
    pub fn producer(&self) -> RingProducer<'_> {
        RingProducer {
            base: self.map.base.as_ptr() as usize,
            map: MapRef::Borrowed(&self.map),
            capacity: self.capacity,
            tail_pos: AtomicU64::new(0),
            tail_seq: AtomicU64::new(1),
            strong: self.map.header().fixed.0.flags & FLAG_STRONG_FENCES != 0,
            fast_limit: fast_limit(
                self.capacity,
                self.map.header().fixed.0.flags & FLAG_STRONG_FENCES != 0,
            ),
            liveness: Liveness::Pid { pidns: own_pidns() },
        }
    }

    /// Path of the ring file, if it has one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `ring_seq` of the next record [`poll`](Self::poll) will deliver.
    pub fn next_seq(&self) -> u64 {
        self.seq.get()
    }

    /// Data area size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a committed record waits at the tail.
    pub fn has_data(&self) -> bool {
        let w = self
            .map
            .word(off_of(self.pos.get(), self.capacity))
            .load(Ordering::SeqCst);
        w & framing::COMMITTED != 0
    }

    /// Deliver up to `max` committed records in `ring_seq` order without blocking; returns how
    /// many were delivered. The slice is valid only during the callback.
    pub fn poll(&self, max: usize, mut f: impl FnMut(u64, &[u8])) -> Result<usize> {
        self.poll_take(max, |seq, payload| {
            f(seq, payload);
            true
        })
    }

    /// [`poll`](Self::poll) where the callback decides, record by record, whether it takes the
    /// record: on `false` the poll stops and that record stays in the ring, to be delivered
    /// again by the next poll (a collector whose journal refuses a record must not lose it).
    ///
    /// The consumed bytes are given back to the producers in bulk: zeroed in at most two
    /// `memset`s per contiguous run and published with one tail update, at the end of the poll
    /// and every `capacity / GIVE_BACK_PART` bytes within a long one (see [`GIVE_BACK_PART`]),
    /// so that a producer waiting for space never waits for more than that part.
    pub fn poll_take(&self, max: usize, mut f: impl FnMut(u64, &[u8]) -> bool) -> Result<usize> {
        let mut n = 0;
        let cap = self.capacity;
        let data = self.map.data();
        let (mut pos, mut seq) = (self.pos.get(), self.seq.get());
        // Consumed but not yet given back to the producers: [given, pos) (positions).
        let mut given = pos;
        let step = (cap / GIVE_BACK_PART) as u64;
        let res = loop {
            if n >= max {
                break Ok(());
            }
            let off = off_of(pos, cap);
            let w = self.map.word(off).load(Ordering::Acquire);
            if w & framing::COMMITTED == 0 {
                break Ok(());
            }
            let total = (w & framing::LEN_MASK) as usize;
            if total < 8 || !total.is_multiple_of(8) || off + total > cap {
                break Err(RingError::Corrupt {
                    pos,
                    what: format!("record length {total} at offset {off}"),
                });
            }
            if w & framing::PAD == 0 {
                // SAFETY: [off, off+total) lies in the data area and belongs to the consumer
                // until the tail moves past it; the producer finished writing it before its
                // Release store of the committed word, which we loaded with Acquire.
                let bytes = unsafe { std::slice::from_raw_parts(data.add(off), total) };
                let rh = match RecordHeader::decode(bytes) {
                    Ok(rh) => rh,
                    Err(what) => break Err(RingError::Corrupt { pos, what }),
                };
                if rh.seq != seq {
                    break Err(RingError::Corrupt {
                        pos,
                        what: format!("ring_seq {} where {seq} was expected", rh.seq),
                    });
                }
                if !f(
                    rh.seq,
                    &bytes[RECORD_HEADER_LEN..RECORD_HEADER_LEN + rh.len as usize],
                ) {
                    break Ok(());
                }
                seq += 1;
                n += 1;
            }
            pos += total as u64;
            if pos - given >= step {
                self.give_back(given, pos, seq);
                given = pos;
            }
        };
        if pos != given {
            self.give_back(given, pos, seq);
        }
        res.map(|()| n)
    }

    /// Zero the consumed bytes `[from, to)` (positions) and publish `to` as the tail, then wake
    /// producers waiting for space. The bytes are zeroed so that a later record starting
    /// anywhere inside them reads as "not committed" until it is written.
    #[inline(never)]
    fn give_back(&self, from: u64, to: u64, seq: u64) {
        let cap = self.capacity;
        let data = self.map.data();
        let a = off_of(from, cap);
        let len = usize::try_from(to - from).unwrap_or(cap).min(cap);
        let first = len.min(cap - a);
        // SAFETY: [a, a+first) and [0, len-first) lie in the data area (first <= cap - a,
        // len <= cap) and hold records the consumer has consumed and not given back yet:
        // no producer may write there until the tail below moves past them.
        unsafe {
            std::ptr::write_bytes(data.add(a), 0, first);
            std::ptr::write_bytes(data, 0, len - first);
        }
        self.pos.set(to);
        self.seq.set(seq);
        let t = &self.map.header().tail.0;
        t.seq.store(seq, Ordering::Release);
        // SeqCst: orders the tail before the load of `space_waiters` below (the producer
        // announces itself, then re-reads the tail: a Dekker pair). Once per give-back, not per
        // record.
        t.pos.store(to, Ordering::SeqCst);
        if t.space_waiters.load(Ordering::SeqCst) > 0 {
            t.space_futex.fetch_add(1, Ordering::SeqCst);
            futex::wake(&t.space_futex, i32::MAX);
        }
    }

    /// Sleep until a record is committed or `timeout` passes; returns whether data is ready.
    pub fn wait(&self, timeout: Duration) -> bool {
        if self.has_data() {
            return true;
        }
        let wk = &self.map.header().wake.0;
        let v = wk.data_futex.load(Ordering::SeqCst);
        wk.consumer_sleeping.store(1, Ordering::SeqCst);
        self.heavy_fence();
        if !self.has_data() {
            futex::wait(&wk.data_futex, v, Some(timeout));
        }
        wk.consumer_sleeping.store(0, Ordering::SeqCst);
        self.has_data()
    }

    /// Publish that every record with `ring_seq <= seq` is durable; wakes waiting producers.
    pub fn set_ack(&self, seq: u64) {
        let a = &self.map.header().ack.0;
        a.ack_seq.fetch_max(seq, Ordering::SeqCst);
        a.ack_futex.fetch_add(1, Ordering::SeqCst);
        if a.ack_waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&a.ack_futex, i32::MAX);
        }
    }

    /// Current `ack_seq`.
    pub fn ack_seq(&self) -> u64 {
        self.map.header().ack.0.ack_seq.load(Ordering::SeqCst)
    }

    /// Registered threads and their states.
    pub fn threads(&self) -> Vec<(ThreadId, ThreadState)> {
        (0..MAX_THREADS)
            .filter_map(|i| {
                let s = self.map.slot(i);
                let tid = s.tid.load(Ordering::SeqCst);
                (tid != 0).then(|| {
                    (
                        ThreadId {
                            pid: s.pid.load(Ordering::SeqCst),
                            tid,
                        },
                        ThreadState::from_u32(s.state.load(Ordering::SeqCst)),
                    )
                })
            })
            .collect()
    }

    /// Ask every registered thread to park at its next boundary and wait (up to `timeout`) until
    /// no thread is between boundaries. Records already committed stay in the ring and are
    /// delivered by `poll` as usual; `cut` is the `ring_seq` of the last of them. The threads stay
    /// parked until [`resume`](Self::resume). On timeout the quiesce is withdrawn.
    pub fn quiesce(&self, timeout: Duration) -> Result<QuiesceReport> {
        let h = self.map.header();
        let q = &h.quiesce.0;
        if q.gen.load(Ordering::SeqCst) & 1 == 0 {
            q.answered.store(0, Ordering::SeqCst);
            q.gen.fetch_add(1, Ordering::SeqCst);
        }
        let start = Instant::now();
        let mut fenced = false;
        // Slots of threads that are gone (exited without unregistering, or lost in an execve)
        // are freed first, so they neither clutter the report nor fill the table.
        for i in 0..MAX_THREADS {
            let s = self.map.slot(i);
            let tid = s.tid.load(Ordering::SeqCst);
            if tid != 0
                && !thread_alive(ThreadId {
                    pid: s.pid.load(Ordering::SeqCst),
                    tid,
                })
            {
                s.state.store(0, Ordering::SeqCst);
                let _ = s
                    .tid
                    .compare_exchange(tid, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
        loop {
            let mut report = QuiesceReport {
                cut: 0,
                parked: vec![],
                blocked: vec![],
                outside: vec![],
            };
            let mut active = vec![];
            for i in 0..MAX_THREADS {
                let s = self.map.slot(i);
                let tid = s.tid.load(Ordering::SeqCst);
                if tid == 0 {
                    continue;
                }
                let t = ThreadId {
                    pid: s.pid.load(Ordering::SeqCst),
                    tid,
                };
                match ThreadState::from_u32(s.state.load(Ordering::SeqCst)) {
                    ThreadState::Parked => report.parked.push(t),
                    ThreadState::Blocked => report.blocked.push(t),
                    ThreadState::Outside => report.outside.push(t),
                    ThreadState::Active => {
                        if thread_alive(t) {
                            active.push(t);
                        } else {
                            // The thread died inside the interceptor: free its slot.
                            s.state.store(0, Ordering::SeqCst);
                            s.tid.store(0, Ordering::SeqCst);
                        }
                    }
                    ThreadState::Free => {}
                }
            }
            if active.is_empty() && !fenced {
                // Producers store their state without a StoreLoad fence: make every running
                // thread pass one, then look again.
                self.heavy_fence();
                fenced = true;
                continue;
            }
            if active.is_empty() {
                // No thread is between boundaries, so every reserved record is committed and
                // none will be reserved until resume: the head is the cut.
                let w = h.head.0.word.load(Ordering::SeqCst);
                report.cut = full_seq(h, low32(w >> 32)) - 1;
                q.cut.store(report.cut, Ordering::SeqCst);
                q.answered.store(1, Ordering::SeqCst);
                return Ok(report);
            }
            if start.elapsed() >= timeout {
                self.resume();
                return Err(RingError::QuiesceTimeout { timeout, active });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// The consumer's half of the asymmetric Dekker handshake (see `docs/shmring.md`).
    fn heavy_fence(&self) {
        if self.map.header().fixed.0.flags & FLAG_STRONG_FENCES == 0 && !futex::membarrier_global()
        {
            // membarrier stopped working (seccomp?): nothing better than a pause, and the
            // consumer's timed waits bound the cost of a missed wake-up.
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// End an active quiesce and wake the parked threads.
    pub fn resume(&self) {
        let q = &self.map.header().quiesce.0;
        if q.gen.load(Ordering::SeqCst) & 1 == 1 {
            q.answered.store(0, Ordering::SeqCst);
            q.gen.fetch_add(1, Ordering::SeqCst);
            futex::wake(&q.gen, i32::MAX);
        }
    }
}

#[inline(always)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A length or offset within the data area as `u32`: the capacity is at most 2^30 (checked at
/// creation), so every record length, pad and offset fits; the push path runs this several
/// times per record, where a checked conversion with its panic branch cost measurable
/// instructions.
#[allow(clippy::cast_possible_truncation)]
#[inline(always)]
fn small_u32(x: usize) -> u32 {
    debug_assert!(x <= 1 << 30, "ring length {x} exceeds the data area bound");
    x as u32
}

/// The low 32 bits of `x`: positions and sequence numbers in the head word are kept modulo 2^32.
#[allow(clippy::cast_possible_truncation)]
#[inline]
fn low32(x: u64) -> u32 {
    x as u32
}

/// Reconstruct a full 64-bit `ring_seq` from its low 32 bits: the record is not consumed yet, so
/// it lies within 2^32 of the consumer's `tail.seq`.
#[inline]
fn full_seq(h: &RingHeader, low: u32) -> u64 {
    let t = h.tail.0.seq.load(Ordering::SeqCst);
    t + u64::from(low.wrapping_sub(low32(t)))
}

enum MapRef<'a> {
    Owned(Mapping),
    Borrowed(&'a Mapping),
}

impl MapRef<'_> {
    #[inline]
    fn get(&self) -> &Mapping {
        match self {
            MapRef::Owned(m) => m,
            MapRef::Borrowed(m) => m,
        }
    }
}

/// A producer's end of the ring. Cheap to share between threads (`&RingProducer` is `Sync`).
pub struct RingProducer<'a> {
    map: MapRef<'a>,
    /// Address of the mapping (`map`'s base, which never moves while `map` lives): the fast
    /// paths reach the header, the thread table and the data area from it without going
    /// through `MapRef`.
    base: usize,
    capacity: usize,
    /// Process-local, possibly stale copies of the consumer's tail (position, ring_seq). Stale
    /// values are lower bounds, which is all the fast path needs; reading the consumer's cache
    /// line on every push would cost a cross-core miss.
    tail_pos: AtomicU64,
    tail_seq: AtomicU64,
    /// Use SeqCst read-modify-writes on the fast path ([`FLAG_STRONG_FENCES`]).
    strong: bool,
    /// Payloads of at least this many bytes leave the inlined fast path: `max_payload() + 1`,
    /// or 0 with strong fences (one comparison instead of a flag test and a division).
    fast_limit: usize,
    liveness: Liveness,
}

/// [`RingProducer`]'s `fast_limit`.
fn fast_limit(capacity: usize, strong: bool) -> usize {
    if strong {
        0
    } else {
        capacity / 4 - RECORD_HEADER_LEN + 1
    }
}

impl std::fmt::Debug for RingProducer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingProducer")
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl RingProducer<'static> {
    /// Map an existing ring file (validating magic, version and size).
    pub fn open(path: &Path) -> Result<Self> {
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| RingError::BadLayout {
            path: path.to_path_buf(),
            what: "path contains a NUL byte".into(),
        })?;
        // SAFETY: open with a valid C string; fd closed below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io_err(path, "open"));
        }
        let res = Self::from_fd(fd, path);
        // SAFETY: our own fd; the mapping (if any) keeps the file alive.
        unsafe { libc::close(fd) };
        res
    }

    fn from_fd(fd: i32, path: &Path) -> Result<Self> {
        // SAFETY: fstat into a zeroed stat buffer.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open, st is a valid out pointer.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(io_err(path, "fstat"));
        }
        let size = usize::try_from(st.st_size).unwrap_or(0);
        if size < DATA_OFFSET + MIN_CAPACITY {
            return Err(RingError::BadLayout {
                path: path.to_path_buf(),
                what: format!("file of {size} bytes is too small"),
            });
        }
        let map = Mapping::map_fd(fd, size, path)?;
        let fx = &map.header().fixed.0;
        if fx.magic != MAGIC {
            return Err(RingError::BadMagic {
                path: path.to_path_buf(),
            });
        }
        if fx.version != VERSION {
            return Err(RingError::BadVersion {
                path: path.to_path_buf(),
                found: fx.version,
                expected: VERSION,
            });
        }
        let capacity = usize::try_from(fx.capacity).unwrap_or(0);
        if check_capacity(capacity).is_err()
            || fx.data_offset as usize != DATA_OFFSET
            || DATA_OFFSET + capacity != size
        {
            return Err(RingError::BadLayout {
                path: path.to_path_buf(),
                what: format!(
                    "capacity {} / data offset {} do not match file size {size}",
                    fx.capacity, fx.data_offset
                ),
            });
        }
        let strong = fx.flags & FLAG_STRONG_FENCES != 0;
        let liveness = if fx.flags & FLAG_CONSUMER_LOCK != 0 {
            Liveness::Lock {
                path: CString::new(path.as_os_str().as_bytes()).map_err(|_| {
                    RingError::BadLayout {
                        path: path.to_path_buf(),
                        what: "path contains a NUL byte".into(),
                    }
                })?,
                dev: st.st_dev,
                ino: st.st_ino,
            }
        } else {
            Liveness::Pid { pidns: None }
        };
        let h = map.header();
        let (tp, ts) = (
            h.tail.0.pos.load(Ordering::SeqCst),
            h.tail.0.seq.load(Ordering::SeqCst),
        );
        Ok(Self {
            base: map.base.as_ptr() as usize,
            map: MapRef::Owned(map),
            capacity,
            tail_pos: AtomicU64::new(tp),
            tail_seq: AtomicU64::new(ts),
            strong,
            fast_limit: fast_limit(capacity, strong),
            liveness,
        })
    }
}

impl RingProducer<'_> {
    /// Largest payload a single record may carry.
    pub fn max_payload(&self) -> usize {
        self.capacity / 4 - RECORD_HEADER_LEN
    }

    /// Append one record; returns its `ring_seq`. Blocks (futex) only while the ring is full.
    pub fn push(&self, payload: &[u8]) -> Result<u64> {
        self.push_with(payload.len(), |buf| buf.copy_from_slice(payload))
    }

    /// Append one record of `len` bytes written in place by `fill` (no intermediate buffer).
    /// `fill` must not push to this ring (it runs while the record is reserved).
    pub fn push_with(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Result<u64> {
        self.push_as(None, len, fill)
    }

    /// [`push_with`](Self::push_with) by a registered thread (state `Active`): while it waits
    /// for space in a full ring it counts as `Blocked` (it has reserved nothing yet), and it
    /// parks there if a quiesce comes — otherwise a quiesce would wait for a thread that waits
    /// for the consumer.
    #[inline(always)]
    pub fn push_as(
        &self,
        thread: Option<ThreadToken>,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64> {
        // Fast path, inlined into the caller: the record fits before the end of the data area
        // and within the cached (lower-bound) tail, and the reservation succeeds at the first
        // try. Anything else (wrap, full or stale cached tail, contention, strong fences, too
        // large) goes to the general loop below, which decides the same way from scratch.
        let cap = self.capacity;
        let total = framing::total_len(len);
        let h = self.hdr();
        let w = h.head.0.word.load(Ordering::Acquire);
        let pos = low32(w);
        let off = pos as usize & (cap - 1);
        let tail = low32(self.tail_pos.load(Ordering::Acquire));
        if len >= self.fast_limit
            || off + total > cap
            || pos.wrapping_sub(tail) as usize + total > cap
        {
            return self.push_slow(thread, len, fill);
        }
        let seq_lo = low32(w >> 32);
        let new = (u64::from(seq_lo.wrapping_add(1)) << 32)
            | u64::from(pos.wrapping_add(small_u32(total)));
        if h.head
            .0
            .word
            .compare_exchange(w, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return self.push_slow(thread, len, fill);
        }
        // As in `push_slow`: the record lies within 2^32 of any past value of the tail seq.
        let t = self.tail_seq.load(Ordering::Acquire);
        let seq = t + u64::from(seq_lo.wrapping_sub(low32(t)));
        let data = (self.base + DATA_OFFSET) as *mut u8;
        // SAFETY: [off, off+total) lies in the data area (checked above: off + total <= cap)
        // and was reserved by our compare-and-swap: the consumer has zeroed it and no other
        // producer can reserve it until the consumer moves past it.
        let rec = unsafe { std::slice::from_raw_parts_mut(data.add(off), total) };
        rec[4..8].copy_from_slice(&small_u32(len).to_le_bytes());
        rec[8..16].copy_from_slice(&seq.to_le_bytes());
        fill(&mut rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
        // SAFETY: `off` is 8-aligned (positions advance by multiples of 8) and in the data
        // area; the word is an AtomicU32 valid for any bit pattern.
        let word = unsafe { &*data.add(off).cast::<AtomicU32>() };
        // Plain Release store (not strong mode): the consumer's membarrier orders it before
        // our load of `consumer_sleeping` (see `push_slow`).
        word.store(framing::COMMITTED | small_u32(total), Ordering::Release);
        std::sync::atomic::compiler_fence(Ordering::SeqCst);
        if h.wake.0.consumer_sleeping.load(Ordering::Relaxed) != 0 {
            self.wake_consumer();
        }
        let next = off + total;
        for k in 0..3 {
            prefetch_write(data.wrapping_add((next + 64 * k) & (cap - 1)));
        }
        Ok(seq)
    }

    #[cold]
    fn wake_consumer(&self) {
        let wk = &self.hdr().wake.0;
        wk.data_futex.fetch_add(1, Ordering::SeqCst);
        futex::wake(&wk.data_futex, 1);
    }

    /// The ring header, through the cached base address.
    #[inline(always)]
    fn hdr(&self) -> &RingHeader {
        // SAFETY: `base` is the address of the mapping `map` holds (at least DATA_OFFSET
        // bytes, page aligned); RingHeader is valid for any bit pattern.
        unsafe { &*(self.base as *const RingHeader) }
    }

    /// Thread slot `t`, through the cached base address (index reduced modulo the table size,
    /// so a forged token cannot reach outside it).
    #[inline(always)]
    fn slot_fast(&self, t: ThreadToken) -> &ThreadSlot {
        let i = t.index as usize & (MAX_THREADS - 1);
        // SAFETY: i < MAX_THREADS (power of two), so the slot lies in the thread table inside
        // the mapping; slots are 64-byte aligned and made of atomics.
        unsafe {
            &*((self.base + THREADS_OFFSET + i * std::mem::size_of::<ThreadSlot>())
                as *const ThreadSlot)
        }
    }

    /// The general reservation loop of [`push_as`](Self::push_as) (wrap, full ring, contention).
    #[cold]
    #[inline(never)]
    fn push_slow(
        &self,
        thread: Option<ThreadToken>,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<u64> {
        let m = self.map.get();
        let h = m.header();
        let cap = self.capacity;
        if len > self.max_payload() {
            return Err(RingError::TooLarge {
                len,
                max: self.max_payload(),
            });
        }
        let total = framing::total_len(len);
        let (seq_lo, off, pad) = loop {
            let w = h.head.0.word.load(Ordering::Acquire);
            let seq_lo = low32(w >> 32);
            let pos = low32(w);
            let off = off_of(u64::from(pos), cap);
            let pad = if off + total > cap { cap - off } else { 0 };
            let need = small_u32(pad + total);
            let mut tail = low32(self.tail_pos.load(Ordering::Acquire));
            if pos.wrapping_sub(tail) as usize + need as usize > cap {
                // Refresh the cached tail from the header (Acquire: the consumer zeroed the
                // bytes it gave back before publishing the tail).
                let tp = h.tail.0.pos.load(Ordering::Acquire);
                let ts = h.tail.0.seq.load(Ordering::Acquire);
                self.tail_seq.store(ts, Ordering::Release);
                self.tail_pos.store(tp, Ordering::Release);
                tail = low32(tp);
                if pos.wrapping_sub(tail) as usize > cap {
                    // The tail is ahead of the head we read: our head is stale (others
                    // reserved and the consumer consumed since). Not full: read the head again.
                    continue;
                }
                if pos.wrapping_sub(tail) as usize + need as usize > cap {
                    if let Some(t) = thread {
                        self.blocking(t);
                    }
                    let waited = self.wait_space(tail);
                    if let Some(t) = thread {
                        self.enter(t);
                    }
                    waited?;
                    continue;
                }
            }
            let new = (u64::from(seq_lo.wrapping_add(1)) << 32) | u64::from(pos.wrapping_add(need));
            if h.head
                .0
                .word
                .compare_exchange_weak(w, new, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                break (seq_lo, off, pad);
            }
        };
        // The record is not consumed yet, so it lies within 2^32 of any past value of the
        // consumer's tail seq (the cached one is refreshed at least once per lap).
        let t = self.tail_seq.load(Ordering::Acquire);
        let seq = t + u64::from(seq_lo.wrapping_sub(low32(t)));
        let (roff, wrapped) = if pad > 0 { (0, true) } else { (off, false) };
        // SAFETY: [roff, roff+total) was reserved by our CAS: the consumer has zeroed it and no
        // other producer can reserve it until the consumer moves past it.
        let rec = unsafe { std::slice::from_raw_parts_mut(m.data().add(roff), total) };
        RecordHeader {
            seq,
            len: small_u32(len),
        }
        .encode_tail(rec);
        fill(&mut rec[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
        let word = framing::COMMITTED | small_u32(total);
        let pw = framing::COMMITTED | framing::PAD | small_u32(pad);
        let wk = &h.wake.0;
        // Publish; the pad (if any) after the record, so the consumer, which stops at the pad
        // until it is committed, then finds the record complete.
        if self.strong {
            m.word(roff).swap(word, Ordering::SeqCst);
            if wrapped {
                m.word(off).swap(pw, Ordering::SeqCst);
            }
        } else {
            // Plain Release stores: the consumer issues membarrier before it sleeps, which
            // orders these stores before our load of `consumer_sleeping` below.
            m.word(roff).store(word, Ordering::Release);
            if wrapped {
                m.word(off).store(pw, Ordering::Release);
            }
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        if wk.consumer_sleeping.load(Ordering::Relaxed) != 0 {
            wk.data_futex.fetch_add(1, Ordering::SeqCst);
            futex::wake(&wk.data_futex, 1);
        }
        // The next records will most likely go right after this one, into lines the consumer
        // zeroed (and so owns) one lap ago: ask for them now, with write intent, so the
        // ownership transfer overlaps with the application's work instead of stalling the next
        // reservation's compare-and-swap.
        let next = (roff + total) & (cap - 1);
        for k in 0..3 {
            prefetch_write(m.data().wrapping_add((next + 64 * k) & (cap - 1)));
        }
        Ok(seq)
    }

    #[cold]
    fn wait_space(&self, tail_seen: u32) -> Result<()> {
        let h = self.map.get().header();
        let t = &h.tail.0;
        t.space_waiters.fetch_add(1, Ordering::SeqCst);
        let v = t.space_futex.load(Ordering::SeqCst);
        // Re-check after announcing ourselves: the consumer may have moved already.
        if low32(t.pos.load(Ordering::SeqCst)) == tail_seen {
            futex::wait(&t.space_futex, v, Some(Duration::from_millis(50)));
        }
        t.space_waiters.fetch_sub(1, Ordering::SeqCst);
        if !self.consumer_alive() {
            return Err(RingError::ConsumerGone {
                pid: h.fixed.0.consumer_pid,
            });
        }
        Ok(())
    }

    /// Whether the consumer is still there (cold path: a few syscalls). See [`Liveness`].
    fn consumer_alive(&self) -> bool {
        match &self.liveness {
            Liveness::Lock { path, dev, ino } => lock_held(path, *dev, *ino),
            Liveness::Pid { pidns: Some(ns) } if own_pidns() != Some(*ns) => true,
            Liveness::Pid { .. } => pid_alive(self.map.get().header().fixed.0.consumer_pid),
        }
    }

    /// Block until `ack_seq >= seq` (sync-mode output commit) or `timeout` passes.
    pub fn wait_ack(&self, seq: u64, timeout: Duration) -> Result<()> {
        let h = self.map.get().header();
        let a = &h.ack.0;
        if a.ack_seq.load(Ordering::Acquire) >= seq {
            return Ok(());
        }
        let start = Instant::now();
        // Our records may sit unnoticed if the consumer went to sleep in the window the fast
        // path leaves open: make sure it is awake before we wait for it.
        std::sync::atomic::fence(Ordering::SeqCst);
        let wk = &h.wake.0;
        if wk.consumer_sleeping.load(Ordering::SeqCst) != 0 {
            wk.data_futex.fetch_add(1, Ordering::SeqCst);
            futex::wake(&wk.data_futex, 1);
        }
        a.ack_waiters.fetch_add(1, Ordering::SeqCst);
        let res = loop {
            let v = a.ack_futex.load(Ordering::SeqCst);
            if a.ack_seq.load(Ordering::SeqCst) >= seq {
                break Ok(());
            }
            let el = start.elapsed();
            if el >= timeout {
                break Err(RingError::Timeout(timeout));
            }
            if !self.consumer_alive() {
                break Err(RingError::ConsumerGone {
                    pid: h.fixed.0.consumer_pid,
                });
            }
            futex::wait(
                &a.ack_futex,
                v,
                Some((timeout - el).min(Duration::from_millis(100))),
            );
        };
        a.ack_waiters.fetch_sub(1, Ordering::SeqCst);
        res
    }

    /// Current `ack_seq`.
    pub fn ack_seq(&self) -> u64 {
        self.map
            .get()
            .header()
            .ack
            .0
            .ack_seq
            .load(Ordering::Acquire)
    }

    /// `ring_seq` of the last record reserved so far by any producer (0 if none): what a
    /// sync-mode output must wait for before it leaves the application.
    pub fn last_seq(&self) -> u64 {
        let h = self.map.get().header();
        let w = h.head.0.word.load(Ordering::SeqCst);
        full_seq(h, low32(w >> 32)) - 1
    }

    /// Take a slot in the thread table for thread `tid` of process `pid` (state `Outside`).
    pub fn register_thread(&self, pid: u32, tid: u32) -> Result<ThreadToken> {
        let m = self.map.get();
        // Start at a hash of the tid so concurrent registrations rarely collide.
        let start = tid as usize % MAX_THREADS;
        for k in 0..MAX_THREADS {
            let i = (start + k) % MAX_THREADS;
            let s = m.slot(i);
            let cur = s.tid.load(Ordering::Relaxed);
            let reusable = cur == 0
                || (cur == tid && s.pid.load(Ordering::Relaxed) == pid)
                || (k > 64
                    && !thread_alive(ThreadId {
                        pid: s.pid.load(Ordering::Relaxed),
                        tid: cur,
                    }));
            if reusable
                && s.tid
                    .compare_exchange(cur, tid, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                s.pid.store(pid, Ordering::SeqCst);
                s.state.store(ThreadState::Outside as u32, Ordering::SeqCst);
                return Ok(ThreadToken {
                    index: u32::try_from(i).expect("fits"),
                });
            }
        }
        Err(RingError::ThreadTableFull)
    }

    /// Give the slot back (thread exit).
    pub fn unregister_thread(&self, t: ThreadToken) {
        let s = self.map.get().slot(t.index as usize);
        s.state.store(0, Ordering::SeqCst);
        s.tid.store(0, Ordering::SeqCst);
    }

    /// Boundary: the thread enters the interceptor (from `Outside`) or returns from a real call
    /// (from `Blocked`). Parks first if a quiesce is active.
    #[inline]
    pub fn enter(&self, t: ThreadToken) {
        self.enter_at(self.slot_ref(t));
    }

    /// A registered thread's slot, resolved once (for a caller that passes several boundaries
    /// in one call: [`enter_at`](Self::enter_at), [`blocking_at`](Self::blocking_at),
    /// [`leave_at`](Self::leave_at) do what `enter`, `blocking`, `leave` do).
    #[inline(always)]
    pub fn slot_ref(&self, t: ThreadToken) -> SlotRef<'_> {
        SlotRef(self.slot_fast(t))
    }

    /// [`enter`](Self::enter) through a resolved slot.
    #[inline]
    pub fn enter_at(&self, s: SlotRef<'_>) {
        let s = s.0;
        let q = &self.hdr().quiesce.0;
        self.set_active(s);
        if q.gen.load(Ordering::Relaxed) & 1 == 1 {
            self.park(s, q);
        }
    }

    /// State `Active`, ordered before the following load of the quiesce word: by a SeqCst swap,
    /// or (normally) by the consumer's membarrier in `quiesce`.
    #[inline]
    fn set_active(&self, s: &ThreadSlot) {
        if self.strong {
            s.state.swap(ThreadState::Active as u32, Ordering::SeqCst);
        } else {
            s.state.store(ThreadState::Active as u32, Ordering::Relaxed);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
    }

    #[cold]
    fn park(&self, s: &ThreadSlot, q: &Quiesce) {
        loop {
            let g = q.gen.load(Ordering::SeqCst);
            if g & 1 == 0 {
                s.state.swap(ThreadState::Active as u32, Ordering::SeqCst);
                if q.gen.load(Ordering::SeqCst) & 1 == 0 {
                    return;
                }
                continue;
            }
            s.state.store(ThreadState::Parked as u32, Ordering::SeqCst);
            futex::wait(&q.gen, g, Some(Duration::from_millis(200)));
        }
    }

    /// The thread is about to make a real call that may block; quiesce need not wait for it.
    #[inline]
    pub fn blocking(&self, t: ThreadToken) {
        self.blocking_at(self.slot_ref(t));
    }

    /// [`blocking`](Self::blocking) through a resolved slot.
    #[inline]
    pub fn blocking_at(&self, s: SlotRef<'_>) {
        s.0.state
            .store(ThreadState::Blocked as u32, Ordering::Release);
    }

    /// Boundary: the thread leaves the interceptor (its message, if any, is committed).
    #[inline]
    pub fn leave(&self, t: ThreadToken) {
        self.leave_at(self.slot_ref(t));
    }

    /// [`leave`](Self::leave) through a resolved slot.
    #[inline]
    pub fn leave_at(&self, s: SlotRef<'_>) {
        s.0.state
            .store(ThreadState::Outside as u32, Ordering::Release);
    }

    /// The cut of the active quiesce once the consumer has determined it.
    pub fn quiesce_cut(&self) -> Option<u64> {
        let q = &self.map.get().header().quiesce.0;
        (q.gen.load(Ordering::SeqCst) & 1 == 1 && q.answered.load(Ordering::SeqCst) != 0)
            .then(|| q.cut.load(Ordering::SeqCst))
    }
}

/// A registered thread's slot, resolved by [`RingProducer::slot_ref`].
#[derive(Debug, Clone, Copy)]
pub struct SlotRef<'a>(&'a ThreadSlot);

/// A registered thread's slot in the thread table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadToken {
    pub index: u32,
}

#[cfg(test)]
mod tests;
