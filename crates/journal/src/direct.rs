//! Appending to the active segment with `O_DIRECT` ([`JournalOptions::direct_io`]): whole
//! file-system blocks written from the journal's write buffer straight to the device, without
//! the page cache's copy, delayed allocation and writeback.
//!
//! The write buffer then holds, from `pad` on, the data of the segment from the block-aligned
//! offset `off`: first `head` bytes already in the file (the start of its partial last block),
//! then the bytes not yet written. A write completes that partial block through the ordinary
//! descriptor (the page cache), sends the following whole blocks with `O_DIRECT` and appends
//! the partial last block through the page cache again. So the file ends at a frame's end and
//! never holds a byte past the last record (its format and every reader are unchanged), and no
//! block is written both ways (an `O_DIRECT` write over a cached dirty page makes the kernel
//! write it back and wait first). The partial last block stays in the buffer as the next head.
//!
//! The buffer is a plain `Vec<u8>`; `buf[pad..]` is kept at an address aligned to
//! [`ALIGN`] (the kernel refuses `O_DIRECT` from memory not aligned to the device's DMA
//! alignment) by moving its contents when the allocation moved (rare: it only grows).
//!
//! [`JournalOptions::direct_io`]: crate::JournalOptions::direct_io

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Block size of every `O_DIRECT` write: file offsets and lengths are multiples of it (ext4's
/// block; a multiple of every logical block size in use).
pub(crate) const BLOCK: usize = 4096;
/// Alignment of the buffer's data in memory (≥ any device's DMA alignment).
pub(crate) const ALIGN: usize = 4096;

/// `O_DIRECT` state of the active segment.
#[derive(Debug)]
pub(crate) struct Direct {
    /// The active segment, opened write-only with `O_DIRECT`.
    pub file: File,
    /// `buf[..pad]` is not data; `buf[pad]` is at an [`ALIGN`]-aligned address.
    pub pad: usize,
    /// Segment offset of `buf[pad]`, a multiple of [`BLOCK`].
    pub off: u64,
    /// `buf[pad..pad + head]` is already in the file.
    pub head: usize,
}

impl Direct {
    /// Open `path` (the active segment, `len` bytes long) for `O_DIRECT` writes, and load the
    /// start of its partial last block into `buf` (cleared first). Errors are the `open`'s or
    /// the read's: `EINVAL` from `open` means the file system refuses `O_DIRECT`.
    pub fn open(path: &Path, len: u64, buf: &mut Vec<u8>) -> std::io::Result<Direct> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)?;
        let block = BLOCK as u64;
        let off = len / block * block;
        let head = usize::try_from(len - off).unwrap_or(0);
        let mut d = Direct {
            file,
            pad: 0,
            off,
            head,
        };
        buf.clear();
        buf.resize(head, 0);
        if head > 0 {
            File::open(path)?.read_exact_at(&mut buf[..], off)?;
        }
        d.realign(buf);
        Ok(d)
    }

    /// Bytes of `buf` that are not waiting to be written (padding and head).
    #[inline]
    pub fn skip(&self) -> usize {
        self.pad + self.head
    }

    /// Move `buf[pad..]` so that it starts at an [`ALIGN`]-aligned address (after the vector
    /// reallocated). Never touches the data's bytes, only where they sit.
    pub fn realign(&mut self, buf: &mut Vec<u8>) {
        if buf.capacity() < self.pad + 2 * ALIGN {
            buf.reserve(self.pad + 2 * ALIGN - buf.len());
        }
        loop {
            let to_next = buf[self.pad..].as_ptr().align_offset(ALIGN);
            if to_next == 0 {
                return;
            }
            // The aligned position closest below ALIGN: pad' ≡ pad + to_next (mod ALIGN).
            let want = (self.pad + to_next) % ALIGN;
            if want > self.pad {
                let n = want - self.pad;
                buf.splice(self.pad..self.pad, std::iter::repeat_n(0u8, n));
            } else {
                buf.drain(want..self.pad);
            }
            // A splice may have reallocated: look again.
            self.pad = want;
        }
    }

    /// Shrink an oversized buffer (after one huge record) back to `cap`, keeping its data.
    pub fn shrink(&mut self, buf: &mut Vec<u8>, cap: usize) {
        let mut fresh = Vec::with_capacity(cap.max(buf.len() - self.pad) + 2 * ALIGN);
        fresh.extend_from_slice(&buf[self.pad..]);
        *buf = fresh;
        self.pad = 0;
        self.realign(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `realign` keeps the data and puts `buf[pad..]` on an aligned address, whatever the
    /// allocation, and again after the vector reallocated.
    #[test]
    fn realign_keeps_data_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let mut buf = Vec::new();
        let mut d = match Direct::open(&path, 5000, &mut buf) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("skipped: O_DIRECT refused on the temp dir: {e}");
                return;
            }
        };
        assert_eq!((d.off, d.head), (4096, 904));
        assert_eq!(&buf[d.pad..], &[7u8; 904][..]);
        assert_eq!(buf[d.pad..].as_ptr().align_offset(ALIGN), 0);
        for round in 0..6u8 {
            let cap = buf.capacity();
            buf.extend(std::iter::repeat_n(round, cap)); // forces a reallocation
            d.realign(&mut buf);
            assert_eq!(buf[d.pad..].as_ptr().align_offset(ALIGN), 0);
            assert_eq!(&buf[d.pad..d.pad + 904], &[7u8; 904][..]);
            assert!(buf[d.pad + 904..].iter().all(|&b| b <= round));
            assert!(d.pad < ALIGN);
        }
        d.shrink(&mut buf, 1 << 16);
        assert_eq!(buf[d.pad..].as_ptr().align_offset(ALIGN), 0);
        assert_eq!(&buf[d.pad..d.pad + 904], &[7u8; 904][..]);
    }
}
