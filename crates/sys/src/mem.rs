//! Copying memory out of and into another process: `process_vm_readv/writev` for readable
//! (writable) pages, `/proc/PID/mem` for everything else (PROT_NONE, read-only targets).

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::{Error, Result};

/// A range in the remote address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteRange {
    pub addr: u64,
    pub len: u64,
}

/// A remote address as the pointer type iovecs carry (never dereferenced locally).
#[allow(clippy::cast_possible_truncation)] // x86_64 only: u64 and usize have the same width
fn remote_addr(a: u64) -> *mut libc::c_void {
    a as usize as *mut libc::c_void
}

/// A 64-bit length as usize (x86_64 only).
#[allow(clippy::cast_possible_truncation)] // x86_64 only: u64 and usize have the same width
fn word(v: u64) -> usize {
    v as usize
}

/// Most iovecs one `process_vm_*` call takes (`IOV_MAX`).
pub const IOV_MAX: usize = 1024;

fn to_usize(v: u64, what: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| Error::invalid(what, "length does not fit usize"))
}

fn vm_io(pid: i32, local: &mut [u8], remote: &[RemoteRange], write: bool) -> Result<()> {
    let total: u64 = remote.iter().map(|r| r.len).sum();
    if total != local.len() as u64 {
        return Err(Error::invalid(
            format!("process_vm io with pid {pid}"),
            format!(
                "local buffer {} bytes, remote ranges {total} bytes",
                local.len()
            ),
        ));
    }
    let mut done: usize = 0; // bytes completed overall
    let mut idx = 0; // first remote range not fully done
    let mut skip: u64 = 0; // bytes of remote[idx] already done
    while idx < remote.len() {
        let mut riov: Vec<libc::iovec> = Vec::with_capacity(IOV_MAX.min(remote.len() - idx));
        let mut want: usize = 0;
        for (k, r) in remote[idx..].iter().take(IOV_MAX).enumerate() {
            let off = if k == 0 { skip } else { 0 };
            let len = to_usize(r.len - off, "remote range")?;
            riov.push(libc::iovec {
                iov_base: remote_addr(r.addr + off),
                iov_len: len,
            });
            want += len;
        }
        let rest = &mut local[done..done + want];
        let liov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: want,
        };
        let n_iov = libc::c_ulong::try_from(riov.len()).unwrap_or(1);
        let n = if write {
            // SAFETY: liov describes `rest`, a live local buffer of `want` bytes; riov only
            // names remote addresses, which the kernel checks.
            unsafe { libc::process_vm_writev(pid, &liov, 1, riov.as_ptr(), n_iov, 0) }
        } else {
            // SAFETY: as above; the kernel writes at most `want` bytes into `rest`.
            unsafe { libc::process_vm_readv(pid, &liov, 1, riov.as_ptr(), n_iov, 0) }
        };
        if n < 0 {
            let at = remote[idx].addr + skip;
            return Err(Error::last(format!(
                "process_vm_{}v pid {pid} at {at:#x}",
                if write { "write" } else { "read" }
            )));
        }
        let mut n = u64::try_from(n).unwrap_or(0);
        if n == 0 {
            let at = remote[idx].addr + skip;
            return Err(Error::invalid(
                format!("process_vm io pid {pid} at {at:#x}"),
                "no progress",
            ));
        }
        done += to_usize(n, "count")?;
        while n > 0 && idx < remote.len() {
            let left = remote[idx].len - skip;
            if n >= left {
                n -= left;
                idx += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
    }
    Ok(())
}

/// Reads the remote ranges, in order, into `local` (whose length must be their sum).
pub fn read_vectored(pid: i32, local: &mut [u8], remote: &[RemoteRange]) -> Result<()> {
    vm_io(pid, local, remote, false)
}

/// Writes `local` into the remote ranges, in order. `local` is not modified; the kernel only
/// reads it (the `&mut` of the shared helper is never used to write).
pub fn write_vectored(pid: i32, local: &[u8], remote: &[RemoteRange]) -> Result<()> {
    let total: u64 = remote.iter().map(|r| r.len).sum();
    if total != local.len() as u64 {
        return Err(Error::invalid(
            format!("process_vm_writev pid {pid}"),
            "length mismatch",
        ));
    }
    let mut done: usize = 0;
    for chunk in remote.chunks(IOV_MAX) {
        let riov: Vec<libc::iovec> = chunk
            .iter()
            .map(|r| libc::iovec {
                iov_base: remote_addr(r.addr),
                iov_len: word(r.len),
            })
            .collect();
        let want: usize = riov.iter().map(|v| v.iov_len).sum();
        let mut off = 0usize;
        // Retry partial writes by falling back to range-at-a-time from the point reached.
        let part = &local[done..done + want];
        let liov = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: want,
        };
        let n_iov = libc::c_ulong::try_from(riov.len()).unwrap_or(1);
        // SAFETY: liov describes `part`, a live local buffer the kernel only reads.
        let n = unsafe { libc::process_vm_writev(pid, &liov, 1, riov.as_ptr(), n_iov, 0) };
        if n < 0 {
            return Err(Error::last(format!(
                "process_vm_writev pid {pid} at {:#x}",
                chunk[0].addr
            )));
        }
        let n = usize::try_from(n).unwrap_or(0);
        if n < want {
            // Partial: finish range by range.
            for r in chunk {
                let l = word(r.len);
                if off + l <= n {
                    off += l;
                    continue;
                }
                let skip = n.saturating_sub(off);
                write_exact(pid, &part[off + skip..off + l], r.addr + skip as u64)?;
                off += l;
            }
        }
        done += want;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `addr`.
pub fn read_exact(pid: i32, buf: &mut [u8], addr: u64) -> Result<()> {
    let len = buf.len() as u64;
    read_vectored(pid, buf, &[RemoteRange { addr, len }])
}

/// Writes exactly `buf` at `addr` (the target pages must be writable).
pub fn write_exact(pid: i32, buf: &[u8], addr: u64) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let part = &buf[done..];
        let liov = libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        };
        let riov = libc::iovec {
            iov_base: remote_addr(addr + done as u64),
            iov_len: part.len(),
        };
        // SAFETY: liov describes `part`, a live local buffer the kernel only reads.
        let n = unsafe { libc::process_vm_writev(pid, &liov, 1, &riov, 1, 0) };
        if n <= 0 {
            return Err(Error::last(format!(
                "process_vm_writev pid {pid} at {:#x}",
                addr + done as u64
            )));
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

/// `/proc/PID/mem`: reads and writes that ignore page protections (FOLL_FORCE).
#[derive(Debug)]
pub struct ProcMem {
    pid: i32,
    file: File,
}

impl ProcMem {
    pub fn open(pid: i32, write: bool) -> Result<Self> {
        let path = format!("/proc/{pid}/mem");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&path)
            .map_err(|e| Error::io(format!("open {path}"), e))?;
        Ok(ProcMem { pid, file })
    }

    pub fn read_exact_at(&self, buf: &mut [u8], addr: u64) -> Result<()> {
        self.file.read_exact_at(buf, addr).map_err(|e| {
            Error::io(
                format!(
                    "read /proc/{}/mem at {addr:#x} ({} bytes)",
                    self.pid,
                    buf.len()
                ),
                e,
            )
        })
    }

    pub fn write_all_at(&self, buf: &[u8], addr: u64) -> Result<()> {
        self.file.write_all_at(buf, addr).map_err(|e| {
            Error::io(
                format!(
                    "write /proc/{}/mem at {addr:#x} ({} bytes)",
                    self.pid,
                    buf.len()
                ),
                e,
            )
        })
    }
}

/// A read-only, private memory mapping of a whole file (page data of an image).
#[derive(Debug)]
pub struct MappedFile {
    ptr: *mut libc::c_void,
    len: usize,
}

impl MappedFile {
    /// Maps `len` bytes of `file` from `offset` (page-aligned), read-only.
    pub fn map(file: &File, offset: u64, len: u64) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let len =
            usize::try_from(len).map_err(|_| Error::invalid("mmap image file", "too large"))?;
        if len == 0 {
            return Ok(MappedFile {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| Error::invalid("mmap image file", "offset too large"))?;
        // SAFETY: a fresh private read-only mapping chosen by the kernel; it does not alias any
        // Rust object. The image file is not modified while mapped (documented limit: a
        // concurrent truncation would fault).
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last(format!("mmap of {len} bytes of an image file")));
        }
        Ok(MappedFile { ptr: p, len })
    }

    /// Maps several files back to back into one read-only region: `parts` are `(file,
    /// offset, len)` with page-aligned offsets and every `len` but the last a multiple of the
    /// page size, so the region reads as the concatenation of the parts (a pages file split
    /// into part files reads as one).
    pub fn map_parts(parts: &[(&File, u64, u64)]) -> Result<Self> {
        use std::os::fd::AsRawFd;
        if let [(f, off, len)] = parts {
            return Self::map(f, *off, *len);
        }
        let page = crate::PAGE_SIZE;
        let mut total = 0u64;
        for (i, &(_, off, len)) in parts.iter().enumerate() {
            if !off.is_multiple_of(page) || (i + 1 < parts.len() && !len.is_multiple_of(page)) {
                return Err(Error::invalid(
                    "mmap image parts",
                    "a part is not page-aligned",
                ));
            }
            total = total
                .checked_add(len)
                .ok_or_else(|| Error::invalid("mmap image parts", "too large"))?;
        }
        let total =
            usize::try_from(total).map_err(|_| Error::invalid("mmap image parts", "too large"))?;
        if total == 0 {
            return Ok(MappedFile {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh anonymous PROT_NONE reservation chosen by the kernel; it aliases no
        // Rust object. The parts are mapped over it below with MAP_FIXED, inside it only.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Error::last(format!(
                "mmap reservation of {total} bytes for image parts"
            )));
        }
        let whole = MappedFile {
            ptr: base,
            len: total,
        };
        let mut at = 0usize;
        for &(file, off, len) in parts {
            let n = usize::try_from(len)
                .map_err(|_| Error::invalid("mmap image parts", "too large"))?;
            if n == 0 {
                continue;
            }
            let o = libc::off_t::try_from(off)
                .map_err(|_| Error::invalid("mmap image parts", "offset too large"))?;
            // SAFETY: `at + n <= total`: the target lies inside the reservation `whole` owns
            // (no Rust object lives there); MAP_FIXED replaces only that reserved range.
            let p = unsafe {
                libc::mmap(
                    base.cast::<u8>().add(at).cast(),
                    n,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_FIXED,
                    file.as_raw_fd(),
                    o,
                )
            };
            if p == libc::MAP_FAILED {
                // `whole` unmaps the whole region on drop.
                return Err(Error::last(format!(
                    "mmap of {n} bytes of an image part file"
                )));
            }
            at += n;
        }
        Ok(whole)
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: ptr/len describe a live read-only mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

// SAFETY: the mapping is read-only and never changed after creation; sharing `&[u8]` views of
// it across threads is as safe as sharing any immutable byte slice.
unsafe impl Sync for MappedFile {}
// SAFETY: the mapping belongs to the process, not to a thread; moving the owner is fine.
unsafe impl Send for MappedFile {}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping the mapping created in `map`, which no slice outlives (slices
            // borrow self).
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// A writable shared mapping of part of a file: page data copied into it with
/// `process_vm_readv` lands straight in the file's page cache (one copy instead of a copy
/// into a buffer and a second one by `pwrite`).
///
/// Worth it when the file's pages already exist (a recycled pages file): a mapping of new
/// tmpfs pages costs a zeroing per page fault, more than `pwrite` (measured, see
/// docs/PERFORMANCE.md).
#[derive(Debug)]
pub struct SharedFileMap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl SharedFileMap {
    /// Maps `len` bytes of `file` (opened read-write) from `offset` (page-aligned), shared and
    /// writable. The caller keeps the file at least `offset + len` long while it is mapped.
    pub fn map(file: &File, offset: u64, len: u64) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len)
            .map_err(|_| Error::invalid("shared mmap of a pages file", "too large"))?;
        if len == 0 {
            return Ok(SharedFileMap {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        let off = libc::off_t::try_from(offset)
            .map_err(|_| Error::invalid("shared mmap of a pages file", "offset too large"))?;
        // SAFETY: a fresh shared mapping placed by the kernel; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::last(format!(
                "shared mmap of {len} bytes of a pages file at offset {offset}"
            )));
        }
        Ok(SharedFileMap { ptr: p, len })
    }

    /// The whole mapping as one byte slice (split it with `split_at_mut` to hand disjoint
    /// parts to several threads).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: ptr/len describe a live read-write mapping owned by self, and the `&mut self`
        // borrow makes this the only Rust view of it. The file behind it is the dumper's own
        // new pages file, which no other process writes while it is mapped.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.cast::<u8>(), self.len) }
    }
}

/// Faults in the pages of `buf` (part of a [`SharedFileMap`]) ahead of a copy into it:
/// `MADV_POPULATE_WRITE` when `write` (filesystems that track dirty pages, such as ext4,
/// otherwise take one write fault per page), `MADV_POPULATE_READ` otherwise (tmpfs maps an
/// existing page writable on a read fault). Best effort: an error only means the copy will
/// fault the pages in itself.
pub fn populate(buf: &mut [u8], write: bool) -> Result<()> {
    const MADV_POPULATE_READ: libc::c_int = 22;
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    let page = 4096usize;
    let start = buf.as_mut_ptr() as usize;
    let aligned = start & !(page - 1);
    let len = buf.len() + (start - aligned);
    if buf.is_empty() {
        return Ok(());
    }
    let advice = if write {
        MADV_POPULATE_WRITE
    } else {
        MADV_POPULATE_READ
    };
    // SAFETY: madvise on the page-aligned span of a live mapping that `buf` borrows mutably;
    // populating neither moves nor changes the bytes.
    let r = unsafe { libc::madvise(aligned as *mut libc::c_void, len, advice) };
    if r != 0 {
        return Err(Error::last(format!(
            "madvise(MADV_POPULATE_{}) of {len} bytes",
            if write { "WRITE" } else { "READ" }
        )));
    }
    Ok(())
}

// SAFETY: the mapping belongs to the process, not to a thread; moving the owner is fine.
unsafe impl Send for SharedFileMap {}

impl Drop for SharedFileMap {
    fn drop(&mut self) {
        if self.len != 0 {
            // SAFETY: unmapping the mapping created in `map`; slices borrow self, so none
            // outlives it.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn parts_map_back_to_back() {
        let dir = std::env::temp_dir().join(format!("sys-map-parts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for (i, n) in [(1u8, 8192usize), (2, 4096), (3, 100)] {
            let p = dir.join(format!("p{i}"));
            let mut f = File::create(&p).unwrap();
            f.write_all(&vec![0xEE; 4096]).unwrap(); // a header to skip
            f.write_all(&vec![i; n]).unwrap();
            drop(f);
            files.push((File::open(&p).unwrap(), n as u64));
        }
        let parts: Vec<(&File, u64, u64)> = files.iter().map(|(f, n)| (f, 4096, *n)).collect();
        let m = MappedFile::map_parts(&parts).unwrap();
        let s = m.as_slice();
        assert_eq!(s.len(), 8192 + 4096 + 100);
        assert!(s[..8192].iter().all(|&b| b == 1));
        assert!(s[8192..12288].iter().all(|&b| b == 2));
        assert!(s[12288..].iter().all(|&b| b == 3));
        // a part that is not a whole number of pages, other than the last, is refused
        let bad: Vec<(&File, u64, u64)> = vec![(&files[2].0, 4096, 100), (&files[0].0, 4096, 8192)];
        assert!(MappedFile::map_parts(&bad).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
