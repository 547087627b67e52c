//! userfaultfd: creation, feature negotiation, registration, write-protection, and the page
//! filling ioctls used by lazy restore (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`, `UFFDIO_WAKE`).
//!
//! A [`Userfaultfd`] may be created here ([`Userfaultfd::open`]) or wrap a descriptor created
//! inside another process and pulled with `pidfd_getfd` ([`Userfaultfd::from_unconfigured`]);
//! in the latter case the registered ranges are addresses of *that* process's memory.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::ioc::{ior, iowr};

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;

/// userfaultfd features (`UFFD_FEATURE_*`), a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features(pub u64);

impl Features {
    /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`
    pub const PAGEFAULT_FLAG_WP: Self = Self(1 << 0);
    /// `UFFD_FEATURE_EVENT_FORK`
    pub const EVENT_FORK: Self = Self(1 << 1);
    /// `UFFD_FEATURE_EVENT_REMAP`
    pub const EVENT_REMAP: Self = Self(1 << 2);
    /// `UFFD_FEATURE_EVENT_REMOVE`
    pub const EVENT_REMOVE: Self = Self(1 << 3);
    /// `UFFD_FEATURE_MISSING_SHMEM`
    pub const MISSING_SHMEM: Self = Self(1 << 5);
    /// `UFFD_FEATURE_EVENT_UNMAP`
    pub const EVENT_UNMAP: Self = Self(1 << 6);
    /// `UFFD_FEATURE_SIGBUS`
    pub const SIGBUS: Self = Self(1 << 7);
    /// `UFFD_FEATURE_THREAD_ID`
    pub const THREAD_ID: Self = Self(1 << 8);
    /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`
    pub const WP_HUGETLBFS_SHMEM: Self = Self(1 << 12);
    /// `UFFD_FEATURE_WP_UNPOPULATED`: never-populated pages count as write-protected.
    pub const WP_UNPOPULATED: Self = Self(1 << 13);
    /// `UFFD_FEATURE_WP_ASYNC`: the kernel resolves write-protect faults itself (no message),
    /// leaving the page marked written for `PAGEMAP_SCAN`.
    pub const WP_ASYNC: Self = Self(1 << 15);
    /// `UFFD_FEATURE_MOVE`
    pub const MOVE: Self = Self(1 << 16);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Features {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// Registration modes (`UFFDIO_REGISTER_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterMode(pub u64);

impl RegisterMode {
    /// Faults on missing pages are reported (lazy restore).
    pub const MISSING: Self = Self(1);
    /// Writes to write-protected pages are tracked (dirty tracking).
    pub const WP: Self = Self(2);
}

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}
#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

const UFFDIO_REGISTER: libc::Ioctl = iowr(0xAA, 0x00, std::mem::size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: libc::Ioctl = ior(0xAA, 0x01, std::mem::size_of::<UffdioRange>());
const UFFDIO_WAKE: libc::Ioctl = ior(0xAA, 0x02, std::mem::size_of::<UffdioRange>());
const UFFDIO_COPY: libc::Ioctl = iowr(0xAA, 0x03, std::mem::size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: libc::Ioctl = iowr(0xAA, 0x04, std::mem::size_of::<UffdioZeropage>());
const UFFDIO_WRITEPROTECT: libc::Ioctl =
    iowr(0xAA, 0x06, std::mem::size_of::<UffdioWriteprotect>());
const UFFDIO_API: libc::Ioctl = iowr(0xAA, 0x3F, std::mem::size_of::<UffdioApi>());

const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
const UFFDIO_ZEROPAGE_MODE_DONTWAKE: u64 = 1;

const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFD_EVENT_FORK: u8 = 0x13;
const UFFD_EVENT_REMAP: u8 = 0x14;
const UFFD_EVENT_REMOVE: u8 = 0x15;
const UFFD_EVENT_UNMAP: u8 = 0x16;
/// `UFFD_PAGEFAULT_FLAG_WRITE`
pub const PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;
/// `UFFD_PAGEFAULT_FLAG_WP`
pub const PAGEFAULT_FLAG_WP: u64 = 1 << 1;

/// Why a userfaultfd operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UffdError {
    /// The `userfaultfd` syscall failed.
    #[error("userfaultfd(): {0}")]
    Create(std::io::Error),
    /// `UFFDIO_API` failed (called twice, or unknown features).
    #[error("UFFDIO_API with features {features:#x}: {source}")]
    Api {
        /// requested features
        features: u64,
        /// the OS error
        source: std::io::Error,
    },
    /// The kernel lacks a required feature.
    #[error("userfaultfd lacks features {missing:#x} (kernel offers {available:#x})")]
    MissingFeatures {
        /// bits requested but not offered
        missing: u64,
        /// what the kernel offers
        available: u64,
    },
    /// An ioctl on a range failed.
    #[error("{op} [{start:#x}, {end:#x}): {source}")]
    Range {
        /// the ioctl
        op: &'static str,
        /// range start
        start: u64,
        /// range end (exclusive)
        end: u64,
        /// the OS error
        source: std::io::Error,
    },
    /// Reading an event failed.
    #[error("reading userfaultfd event: {0}")]
    Read(std::io::Error),
}

/// An event read from a userfaultfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A fault at `address` (not page aligned; `flags` has `PAGEFAULT_FLAG_*`).
    PageFault {
        /// faulting address
        address: u64,
        /// `UFFD_PAGEFAULT_FLAG_*`
        flags: u64,
        /// faulting thread id if `THREAD_ID` was negotiated, else 0
        tid: u32,
    },
    /// The process forked (needs `EVENT_FORK`); `ufd` is the child's new userfaultfd number.
    Fork {
        /// fd number installed in the reader
        ufd: u32,
    },
    /// A registered range was moved by `mremap`.
    Remap {
        /// old start
        from: u64,
        /// new start
        to: u64,
        /// length
        len: u64,
    },
    /// `madvise(MADV_DONTNEED/REMOVE)` dropped `[start, end)`.
    Remove {
        /// start
        start: u64,
        /// end
        end: u64,
    },
    /// `munmap` removed `[start, end)`.
    Unmap {
        /// start
        start: u64,
        /// end
        end: u64,
    },
    /// An event this wrapper does not decode.
    Other(u8),
}

/// A userfaultfd descriptor on which `UFFDIO_API` has been done.
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: Features,
}

/// Flags for [`Userfaultfd::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpenFlags {
    /// `O_NONBLOCK` (reads return `None` when no event is pending).
    pub nonblock: bool,
}

fn create_raw(nonblock: bool) -> Result<OwnedFd, UffdError> {
    let mut flags = libc::O_CLOEXEC;
    if nonblock {
        flags |= libc::O_NONBLOCK;
    }
    // SAFETY: userfaultfd takes an int flags argument and returns a new fd or -1; no pointers.
    let r = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if r < 0 {
        return Err(UffdError::Create(std::io::Error::last_os_error()));
    }
    let raw = i32::try_from(r)
        .map_err(|_| UffdError::Create(std::io::Error::other("fd out of range")))?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

fn do_api(fd: BorrowedFd<'_>, want: Features) -> Result<Features, UffdError> {
    let mut api = UffdioApi {
        api: UFFD_API,
        features: want.0,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api`, which `UffdioApi` mirrors
    // (repr(C), three u64); the pointer is valid for the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api as *mut UffdioApi) };
    if r < 0 {
        return Err(UffdError::Api {
            features: want.0,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Features(api.features))
}

/// The features the running kernel offers (probes with a throw-away userfaultfd).
pub fn available_features() -> Result<Features, UffdError> {
    let fd = create_raw(false)?;
    do_api(fd.as_fd(), Features(0))
}

impl Userfaultfd {
    /// Creates a userfaultfd in this process (close-on-exec) and negotiates `features`.
    pub fn open(flags: OpenFlags, features: Features) -> Result<Self, UffdError> {
        let fd = create_raw(flags.nonblock)?;
        Self::from_unconfigured(fd, features)
    }

    /// Wraps a userfaultfd on which `UFFDIO_API` has not been done yet (for example one created
    /// in a target by an injected `userfaultfd()` and pulled with `pidfd_getfd`), and negotiates
    /// `features`. Fails with [`UffdError::MissingFeatures`] if the kernel lacks any of them.
    pub fn from_unconfigured(fd: OwnedFd, features: Features) -> Result<Self, UffdError> {
        let available = available_features()?;
        if !available.contains(features) {
            return Err(UffdError::MissingFeatures {
                missing: features.0 & !available.0,
                available: available.0,
            });
        }
        do_api(fd.as_fd(), features)?;
        Ok(Self { fd, features })
    }

    /// Wraps a userfaultfd on which `UFFDIO_API` was already done with `features` (for example
    /// by an earlier tracker of the same context, re-pulled from the target).
    pub fn from_configured(fd: OwnedFd, features: Features) -> Self {
        Self { fd, features }
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    fn range_ioctl<T>(
        &self,
        op: &'static str,
        nr: libc::Ioctl,
        arg: &mut T,
        start: u64,
        len: u64,
    ) -> Result<(), UffdError> {
        // SAFETY: every caller passes the ioctl number whose argument struct is `T` (mirrored
        // repr(C) kernel struct); the pointer is valid and exclusively borrowed for the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), nr, arg as *mut T) };
        if r < 0 {
            return Err(UffdError::Range {
                op,
                start,
                end: start.saturating_add(len),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Registers `[start, start+len)` (page aligned) with `mode`; returns the ioctl bit set the
    /// kernel allows on the range.
    pub fn register(&self, start: u64, len: u64, mode: RegisterMode) -> Result<u64, UffdError> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: mode.0,
            ioctls: 0,
        };
        self.range_ioctl("UFFDIO_REGISTER", UFFDIO_REGISTER, &mut reg, start, len)?;
        Ok(reg.ioctls)
    }

    /// Unregisters `[start, start+len)`.
    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRange { start, len };
        self.range_ioctl("UFFDIO_UNREGISTER", UFFDIO_UNREGISTER, &mut r, start, len)
    }

    /// Sets (`on`) or clears write-protection on `[start, start+len)`, which must be registered
    /// with [`RegisterMode::WP`].
    pub fn writeprotect(&self, start: u64, len: u64, on: bool) -> Result<(), UffdError> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange { start, len },
            mode: if on { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        self.range_ioctl(
            "UFFDIO_WRITEPROTECT",
            UFFDIO_WRITEPROTECT,
            &mut wp,
            start,
            len,
        )
    }

    /// Atomically fills the missing pages at `dst` (in the registered process) with `src`
    /// (length a multiple of the page size). Pages already present yield `EEXIST`; on a partial
    /// copy, returns the bytes copied so far in the error-free case. With `wake`, threads
    /// waiting on the range are woken.
    pub fn copy(&self, dst: u64, src: &[u8], wake: bool) -> Result<u64, UffdError> {
        let len = src.len() as u64;
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len,
            mode: if wake { 0 } else { UFFDIO_COPY_MODE_DONTWAKE },
            copy: 0,
        };
        match self.range_ioctl("UFFDIO_COPY", UFFDIO_COPY, &mut c, dst, len) {
            Ok(()) => Ok(len),
            Err(e) => {
                // a partial copy reports how far it got
                if c.copy > 0 {
                    Ok(u64::try_from(c.copy).unwrap_or(0))
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Maps the zero page on the missing pages of `[start, start+len)`.
    pub fn zeropage(&self, start: u64, len: u64, wake: bool) -> Result<(), UffdError> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start, len },
            mode: if wake {
                0
            } else {
                UFFDIO_ZEROPAGE_MODE_DONTWAKE
            },
            zeropage: 0,
        };
        self.range_ioctl("UFFDIO_ZEROPAGE", UFFDIO_ZEROPAGE, &mut z, start, len)
    }

    /// Wakes threads waiting on faults in `[start, start+len)`.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut r = UffdioRange { start, len };
        self.range_ioctl("UFFDIO_WAKE", UFFDIO_WAKE, &mut r, start, len)
    }

    /// Reads one event. Returns `Ok(None)` if the descriptor is non-blocking and nothing is
    /// pending.
    pub fn read_event(&self) -> Result<Option<Event>, UffdError> {
        let mut msg = [0u8; 32];
        loop {
            // SAFETY: reads at most 32 bytes (one `struct uffd_msg`) into a 32-byte buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), msg.as_mut_ptr().cast(), msg.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => continue,
                    std::io::ErrorKind::WouldBlock => return Ok(None),
                    _ => return Err(UffdError::Read(e)),
                }
            }
            if n != 32 {
                return Err(UffdError::Read(std::io::Error::other(format!(
                    "short read of {n} bytes"
                ))));
            }
            return Ok(Some(decode_msg(&msg)));
        }
    }
}

fn u64_at(b: &[u8; 32], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(a)
}

fn decode_msg(b: &[u8; 32]) -> Event {
    // struct uffd_msg { u8 event; u8 r1; u16 r2; u32 r3; union arg (24 bytes) at offset 8 }
    match b[0] {
        UFFD_EVENT_PAGEFAULT => {
            let mut t = [0u8; 4];
            t.copy_from_slice(&b[24..28]);
            Event::PageFault {
                flags: u64_at(b, 8),
                address: u64_at(b, 16),
                tid: u32::from_ne_bytes(t),
            }
        }
        UFFD_EVENT_FORK => {
            let mut t = [0u8; 4];
            t.copy_from_slice(&b[8..12]);
            Event::Fork {
                ufd: u32::from_ne_bytes(t),
            }
        }
        UFFD_EVENT_REMAP => Event::Remap {
            from: u64_at(b, 8),
            to: u64_at(b, 16),
            len: u64_at(b, 24),
        },
        UFFD_EVENT_REMOVE => Event::Remove {
            start: u64_at(b, 8),
            end: u64_at(b, 16),
        },
        UFFD_EVENT_UNMAP => Event::Unmap {
            start: u64_at(b, 8),
            end: u64_at(b, 16),
        },
        other => Event::Other(other),
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(r).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_pagefault() {
        let mut b = [0u8; 32];
        b[0] = UFFD_EVENT_PAGEFAULT;
        b[8..16].copy_from_slice(&PAGEFAULT_FLAG_WRITE.to_ne_bytes());
        b[16..24].copy_from_slice(&0x7000_1234u64.to_ne_bytes());
        b[24..28].copy_from_slice(&42u32.to_ne_bytes());
        assert_eq!(
            decode_msg(&b),
            Event::PageFault {
                address: 0x7000_1234,
                flags: PAGEFAULT_FLAG_WRITE,
                tid: 42
            }
        );
    }

    #[test]
    fn open_and_api_once() {
        let uffd = match Userfaultfd::open(OpenFlags { nonblock: true }, Features(0)) {
            Ok(u) => u,
            Err(e) => {
                eprintln!("skipped: userfaultfd unavailable: {e}");
                return;
            }
        };
        // a second UFFDIO_API on the same fd is refused
        assert!(matches!(
            do_api(uffd.as_fd(), Features(0)),
            Err(UffdError::Api { .. })
        ));
        assert_eq!(uffd.read_event().unwrap(), None);
    }
}
