//! Dumping an address space: classify every mapping, find the pages that hold data
//! (`PAGEMAP_SCAN`), copy them with large `process_vm_readv` batches (or `/proc/PID/mem` for
//! unreadable mappings) straight into the process's pages file.

use std::path::Path;
use std::time::Instant;

use image::{PageRun, PagesRef, PagesWriter, Vma, VmaKind};
use sys::mem::{ProcMem, RemoteRange};
use sys::proc::MapEntry;
use sys::PAGE_SIZE;

use crate::{CheckpointError, PidCtx, ProgressFn, Result};

/// Copy buffer size: large batches amortise the per-call cost of `process_vm_readv`.
const BATCH: usize = 8 << 20;

/// Classifies one mapping, or refuses it with a reason.
pub fn classify(pid: i32, m: &MapEntry) -> Result<Option<VmaKind>> {
    let what = || format!("mapping {:#x}-{:#x} {}", m.start, m.end, m.path);
    let unsupported = |why: &str| CheckpointError::Unsupported {
        pid,
        what: what(),
        why: why.to_string(),
    };
    let p = m.path.as_str();
    Ok(Some(match p {
        "[vsyscall]" => return Ok(None),
        "[vvar]" | "[vvar_vclock]" | "[vdso]" => VmaKind::Vdso {
            name: p.to_string(),
        },
        "[stack]" => VmaKind::Stack,
        _ if m.shared
            && (p.starts_with("/dev/zero")
                || p.starts_with("/memfd:")
                || p.starts_with("/SYSV")) =>
        {
            return Err(unsupported(
                "shared anonymous memory and memfd mappings are not supported yet",
            ))
        }
        "" | "[heap]" => {
            if m.shared {
                return Err(unsupported("unnamed shared mapping"));
            }
            VmaKind::Anon {
                name: p.to_string(),
            }
        }
        _ if p.starts_with("[anon:") || p.starts_with("[anon_shmem:") => {
            if m.shared {
                return Err(unsupported("named shared anonymous mapping"));
            }
            VmaKind::Anon {
                name: p.to_string(),
            }
        }
        _ if p.ends_with(" (deleted)") => return Err(unsupported("the mapped file was deleted")),
        _ if p.starts_with('/') => {
            let st = sys::proc::stat_path(p).pid(pid)?;
            let fmt = st.st_mode & libc::S_IFMT;
            if fmt != libc::S_IFREG {
                return Err(unsupported(
                    "only regular files can be mapped (devices are not supported)",
                ));
            }
            if st.st_ino != m.inode {
                return Err(unsupported(
                    "the file at this path was replaced since it was mapped",
                ));
            }
            if m.shared {
                VmaKind::FileShared {
                    path: p.to_string(),
                    offset: m.offset,
                }
            } else {
                VmaKind::FilePrivate {
                    path: p.to_string(),
                    offset: m.offset,
                }
            }
        }
        _ => return Err(unsupported("unknown kind of mapping")),
    }))
}

/// Copies the data pages of every mapping into `dir/pages-PID.img`; fills each `Vma::pages`.
pub struct MemoryDumper<'a> {
    pub pid: i32,
    pub dir: &'a Path,
    pub progress: Option<&'a ProgressFn>,
    pub done_before: u64,
    pub total_hint: u64,
}

struct Batch {
    buf: Vec<u8>,
    used: usize,
    ranges: Vec<RemoteRange>,
}

impl MemoryDumper<'_> {
    pub fn dump(&self, vmas: &mut [Vma]) -> Result<(PagesRef, u64, std::time::Duration)> {
        let pid = self.pid;
        let t0 = Instant::now();
        let name = format!("pages-{pid}.img");
        let mut w = PagesWriter::create(self.dir, &name)?;
        let mut scanner = sys::memscan::PageScanner::open(pid).pid(pid)?;
        let mut procmem: Option<ProcMem> = None;
        let mut batch = Batch {
            buf: vec![0u8; BATCH],
            used: 0,
            ranges: Vec::new(),
        };
        let mut copied: u64 = 0;
        for v in vmas.iter_mut() {
            let anon_only = match &v.kind {
                VmaKind::Anon { .. } | VmaKind::Stack => false,
                VmaKind::FilePrivate { .. } => true,
                VmaKind::Vdso { .. } | VmaKind::FileShared { .. } | VmaKind::Shmem { .. } => {
                    continue
                }
            };
            let readable = v.prot & 1 != 0;
            let runs = scanner.data_ranges(v.start, v.end, anon_only).pid(pid)?;
            for (s, e) in runs {
                if !readable {
                    self.flush(&mut batch, &mut w, &mut copied)?;
                    let pm = match &procmem {
                        Some(p) => p,
                        None => procmem.insert(ProcMem::open(pid, false).pid(pid)?),
                    };
                    let mut data = vec![0u8; usize::try_from(e - s).unwrap_or(0)];
                    pm.read_exact_at(&mut data, s).pid(pid)?;
                    v.pages.push(PageRun {
                        vaddr: s,
                        npages: (e - s) / PAGE_SIZE,
                        offset: w.len(),
                        in_parent: false,
                    });
                    w.write(&data)?;
                    copied += e - s;
                    continue;
                }
                let mut a = s;
                while a < e {
                    let room = (BATCH - batch.used) as u64;
                    if room == 0 {
                        self.flush(&mut batch, &mut w, &mut copied)?;
                        continue;
                    }
                    let len = (e - a).min(room);
                    let offset = w.len() + batch.used as u64;
                    match v.pages.last_mut() {
                        Some(last)
                            if last.vaddr + last.npages * PAGE_SIZE == a
                                && last.offset + last.npages * PAGE_SIZE == offset =>
                        {
                            last.npages += len / PAGE_SIZE
                        }
                        _ => v.pages.push(PageRun {
                            vaddr: a,
                            npages: len / PAGE_SIZE,
                            offset,
                            in_parent: false,
                        }),
                    }
                    batch.ranges.push(RemoteRange { addr: a, len });
                    batch.used += usize::try_from(len).unwrap_or(0);
                    a += len;
                }
            }
        }
        self.flush(&mut batch, &mut w, &mut copied)?;
        let r = w.finish()?;
        Ok((r, copied, t0.elapsed()))
    }

    fn flush(&self, b: &mut Batch, w: &mut PagesWriter, copied: &mut u64) -> Result<()> {
        if b.used == 0 {
            return Ok(());
        }
        let data = &mut b.buf[..b.used];
        sys::mem::read_vectored(self.pid, data, &b.ranges).pid(self.pid)?;
        w.write(data)?;
        *copied += b.used as u64;
        b.used = 0;
        b.ranges.clear();
        if let Some(p) = self.progress {
            p(self.done_before + *copied, self.total_hint);
        }
        Ok(())
    }
}
