//! Filling another process's fresh anonymous memory with `UFFDIO_COPY` through a userfaultfd
//! created inside it (injected `userfaultfd()`, taken with `pidfd_getfd`): the kernel allocates
//! each page and copies into it, without first zeroing it as a page fault would.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::{Error, Result};

const UFFD_API: u64 = 0xAA;
const fn iowr(nr: u64, size: u64) -> u64 {
    (3 << 30) | (size << 16) | (0xAA << 8) | nr
}
const UFFDIO_API: u64 = iowr(0x3F, 24);
const UFFDIO_REGISTER: u64 = iowr(0x00, 32);
const UFFDIO_UNREGISTER: u64 = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x01;
const UFFDIO_COPY: u64 = iowr(0x03, 40);
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// A userfaultfd of another process's address space, held by the restorer.
#[derive(Debug)]
pub struct RemoteUffd {
    fd: OwnedFd,
}

fn ioctl(fd: &OwnedFd, req: u64, arg: *mut libc::c_void) -> std::io::Result<()> {
    // SAFETY: `arg` points to a live, correctly sized uffdio_* struct owned by the caller for
    // the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as libc::c_ulong, arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl RemoteUffd {
    /// Takes a userfaultfd (already created in the target) and negotiates the API.
    pub fn new(fd: OwnedFd) -> Result<Self> {
        let mut api = [UFFD_API, 0u64, 0u64];
        ioctl(&fd, UFFDIO_API, api.as_mut_ptr().cast()).map_err(|e| Error::io("UFFDIO_API", e))?;
        Ok(RemoteUffd { fd })
    }

    /// Registers `[start, start+len)` for missing-page handling.
    pub fn register(&self, start: u64, len: u64) -> Result<()> {
        let mut reg = [start, len, UFFDIO_REGISTER_MODE_MISSING, 0u64];
        ioctl(&self.fd, UFFDIO_REGISTER, reg.as_mut_ptr().cast())
            .map_err(|e| Error::io(format!("UFFDIO_REGISTER {start:#x}+{len:#x}"), e))
    }

    pub fn unregister(&self, start: u64, len: u64) -> Result<()> {
        let mut range = [start, len];
        ioctl(&self.fd, UFFDIO_UNREGISTER, range.as_mut_ptr().cast())
            .map_err(|e| Error::io(format!("UFFDIO_UNREGISTER {start:#x}+{len:#x}"), e))
    }

    /// Copies `src` to `dst` in the target (page-aligned, pages not present yet).
    pub fn copy(&self, dst: u64, src: &[u8]) -> Result<()> {
        let mut done = 0u64;
        let len = src.len() as u64;
        while done < len {
            // struct uffdio_copy { dst, src, len, mode, copy }
            let mut c = [
                dst + done,
                src.as_ptr() as u64 + done,
                len - done,
                0u64,
                0u64,
            ];
            let r = ioctl(&self.fd, UFFDIO_COPY, c.as_mut_ptr().cast());
            let copied = crate::reg_to_i64(c[4]);
            match r {
                Ok(()) => done += u64::try_from(copied).unwrap_or(0),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && copied > 0 => {
                    done += u64::try_from(copied).unwrap_or(0)
                }
                Err(e) => return Err(Error::io(format!("UFFDIO_COPY to {:#x}", dst + done), e)),
            }
        }
        Ok(())
    }
}
