//! Shared memory objects (`MAP_SHARED|MAP_ANONYMOUS` and memfds): each object is dumped once,
//! however many processes map it or hold it open, into `shmem-ID.img`.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;

use image::{PageRun, PagesWriter, ShmemObject};
use sys::PAGE_SIZE;

use crate::{CheckpointError, PidCtx, Result};

#[derive(Default)]
pub struct ShmemTable {
    by_key: BTreeMap<(u64, u64), u32>,
    pub objects: Vec<ShmemObject>,
}

/// Whether a mapping path names a shared memory object.
pub fn is_shmem_path(p: &str) -> bool {
    p.starts_with("/dev/zero") || p.starts_with("/memfd:")
}

impl ShmemTable {
    /// The object id for `(dev, ino)`, dumping it from `open_path` (a `/proc/PID/map_files` or
    /// `/proc/PID/fd` entry) the first time it is seen.
    pub fn object(
        &mut self,
        dir: &Path,
        pid: i32,
        key: (u64, u64),
        open_path: &str,
        name: &str,
    ) -> Result<u32> {
        if let Some(&id) = self.by_key.get(&key) {
            return Ok(id);
        }
        let id = u32::try_from(self.objects.len()).unwrap_or(u32::MAX);
        let file = std::fs::File::open(open_path).map_err(|e| CheckpointError::Unsupported {
            pid,
            what: format!("shared memory {name}"),
            why: format!("cannot open {open_path}: {e}"),
        })?;
        let size = file
            .metadata()
            .map_err(|e| CheckpointError::Tree {
                pid,
                why: format!("stat {open_path}: {e}"),
            })?
            .len();
        let fd = std::os::fd::OwnedFd::from(file);
        let ranges = sys::files::data_ranges(&fd, size).pid(pid)?;
        let file = std::fs::File::from(fd);
        let mut w = PagesWriter::create(dir, &format!("shmem-{id}.img"))?;
        let mut pages = Vec::new();
        let mut buf = vec![0u8; 4 << 20];
        for (s, e) in ranges {
            pages.push(PageRun {
                vaddr: s,
                npages: (e - s).div_ceil(PAGE_SIZE),
                offset: w.len(),
                in_parent: false,
            });
            let mut at = s;
            let end = s + (e - s).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            while at < end {
                let n = usize::try_from((end - at).min(buf.len() as u64)).unwrap_or(0);
                buf[..n].fill(0);
                let mut got = 0;
                while got < n {
                    let r = file
                        .read_at(&mut buf[got..n], at + got as u64)
                        .map_err(|e| CheckpointError::Tree {
                            pid,
                            why: format!("read {open_path}: {e}"),
                        })?;
                    if r == 0 {
                        break; // past EOF inside the last page: zeros
                    }
                    got += r;
                }
                w.write(&buf[..n])?;
                at += n as u64;
            }
        }
        let data = w.finish()?;
        self.objects.push(ShmemObject {
            id,
            name: name.to_string(),
            size,
            data,
            pages,
        });
        self.by_key.insert(key, id);
        Ok(id)
    }
}
