//! File descriptors: classify each fd, share open file descriptions across fds and processes
//! (`kcmp(KCMP_FILE)`), record pipe contents without consuming them.

use std::collections::BTreeMap;
use std::path::Path;

use image::{Fd, FileKind, Hex, OpenFile, PipeData};

use crate::evfd::Epolls;
use crate::shmem::ShmemTable;
use crate::sockets::Sockets;
use crate::{CheckpointError, PidCtx, Result};

const O_CLOEXEC: u32 = 0o2000000;
const O_LARGEFILE: u32 = 0o100000;

/// Character devices that are reopened by path.
fn simple_device(path: &str) -> bool {
    matches!(
        path,
        "/dev/null" | "/dev/zero" | "/dev/full" | "/dev/random" | "/dev/urandom" | "/dev/tty"
    ) || path.starts_with("/dev/pts/")
}

struct Known {
    id: u32,
    pid: i32,
    fd: i32,
    key: (u64, u64),
}

/// Open file descriptions of the whole tree.
#[derive(Default)]
pub struct FileTable {
    pub files: Vec<OpenFile>,
    known: Vec<Known>,
    pipes: BTreeMap<u64, u32>,
    /// For each pipe id, one (pid, fd) of its read end if any.
    pipe_readers: BTreeMap<u32, (i32, i32)>,
    pipe_any: BTreeMap<u32, (i32, i32)>,
    fifo_paths: BTreeMap<u32, String>,
    pub epolls: Epolls,
    pub sockets: Sockets,
}

impl FileTable {
    /// Records every fd of `pid`.
    /// Adds every fd of `pid` except `skip` (the engine's own dirty tracker).
    pub fn add_process(
        &mut self,
        pid: i32,
        shm: &mut ShmemTable,
        dir: &Path,
        skip: Option<i32>,
    ) -> Result<Vec<Fd>> {
        let mut out = Vec::new();
        for fd in sys::proc::fds(pid).pid(pid)? {
            if Some(fd) == skip {
                continue;
            }
            out.push(self.add_fd(pid, fd, shm, dir)?);
        }
        Ok(out)
    }

    fn add_fd(&mut self, pid: i32, fd: i32, shm: &mut ShmemTable, dir: &Path) -> Result<Fd> {
        let unsupported = |what: &str, why: &str| CheckpointError::Unsupported {
            pid,
            what: format!("fd {fd} ({what})"),
            why: why.to_string(),
        };
        let link = sys::proc::read_link(&format!("/proc/{pid}/fd/{fd}")).pid(pid)?;
        let info = sys::fdinfo::read_info(pid, fd).map_err(|e| CheckpointError::Tree {
            pid,
            why: e.to_string(),
        })?;
        let pos = u64::try_from(info.pos).unwrap_or(0);
        let cloexec = info.flags & O_CLOEXEC != 0;
        let flags = info.flags & !(O_CLOEXEC | O_LARGEFILE);
        if link.ends_with(" (deleted)") && !link.starts_with("/memfd:") {
            return Err(unsupported(&link, "the file was deleted"));
        }
        let st = sys::proc::stat_path(&format!("/proc/{pid}/fd/{fd}")).pid(pid)?;
        let key = (st.st_dev, st.st_ino);
        // Same open file description as an fd seen before?
        for k in self.known.iter().filter(|k| k.key == key) {
            if sys::pid::same_file(k.pid, k.fd, pid, fd).pid(pid)? {
                self.epolls.also_held(k.id, pid, fd);
                return Ok(Fd {
                    fd,
                    cloexec,
                    file: k.id,
                });
            }
        }
        let fmt = st.st_mode & libc::S_IFMT;
        let next_id = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        let kind = if link.starts_with("socket:") {
            self.sockets.kind(pid, fd, &link, st.st_ino, next_id)?
        } else if link.starts_with("anon_inode:") {
            self.epolls.kind(pid, fd, &link, next_id)?
        } else if link.starts_with("pipe:") || fmt == libc::S_IFIFO {
            let next = u32::try_from(self.pipes.len()).unwrap_or(u32::MAX);
            let pipe = *self.pipes.entry(st.st_ino).or_insert(next);
            let write_end = flags & 3 == 1;
            if flags & 3 != 1 {
                self.pipe_readers.entry(pipe).or_insert((pid, fd));
            }
            if link.starts_with('/') {
                self.fifo_paths.entry(pipe).or_insert(link.clone());
            }
            self.pipe_any.entry(pipe).or_insert((pid, fd));
            let fifo_path = if link.starts_with('/') {
                Some(link.clone())
            } else {
                None
            };
            if flags & 3 == 2 && fifo_path.is_none() {
                return Err(unsupported(&link, "a pipe opened read-write is not a pipe"));
            }
            FileKind::Pipe {
                pipe,
                write_end,
                fifo_path,
            }
        } else if fmt == libc::S_IFREG || fmt == libc::S_IFDIR {
            if !link.starts_with('/') {
                return Err(unsupported(&link, "not reachable by a path"));
            }
            if link.starts_with("/memfd:") {
                let name = link
                    .trim_start_matches('/')
                    .trim_end_matches(" (deleted)")
                    .to_string();
                let id = shm.object(dir, pid, key, &format!("/proc/{pid}/fd/{fd}"), &name)?;
                FileKind::Memfd { shmem: id, pos }
            } else {
                FileKind::Path {
                    path: link.clone(),
                    pos,
                    size: u64::try_from(st.st_size).unwrap_or(0),
                }
            }
        } else if fmt == libc::S_IFCHR {
            if !simple_device(&link) {
                return Err(unsupported(&link, "only /dev/null, /dev/zero, /dev/full, /dev/[u]random and terminals are supported"));
            }
            FileKind::Device {
                path: link.clone(),
                rdev: st.st_rdev,
            }
        } else {
            return Err(unsupported(&link, "unsupported file type"));
        };
        let id = u32::try_from(self.files.len()).unwrap_or(u32::MAX);
        self.files.push(OpenFile { id, flags, kind });
        self.known.push(Known { id, pid, fd, key });
        Ok(Fd {
            fd,
            cloexec,
            file: id,
        })
    }

    /// Reads the queued bytes of every pipe through one of its read ends in the tree.
    pub fn pipe_data(&self) -> Result<Vec<PipeData>> {
        let mut out = Vec::new();
        for (&pipe, &(pid, fd)) in &self.pipe_any {
            if !self.pipe_readers.contains_key(&pipe) {
                if let Some(path) = self.fifo_paths.get(&pipe) {
                    // A FIFO whose readers are all outside the tree: peek through a
                    // non-blocking read end of our own.
                    let local = sys::files::open(path, 0o4000).pid(pid)?;
                    let capacity = sys::pipe::capacity(&local).pid(pid)?;
                    let data = sys::pipe::peek(&local).pid(pid)?;
                    out.push(PipeData {
                        pipe,
                        capacity,
                        data: Hex(data),
                    });
                    continue;
                }
            }
            let Some(&(rpid, rfd)) = self.pipe_readers.get(&pipe) else {
                // Only write ends in the tree: either every read end is closed (the pipe is
                // "widowed": writes fail with EPIPE, its bytes can never be read) -- restored
                // as a pipe whose read end the restorer closes, with its capacity -- or a
                // process outside the tree holds one.
                let pidfd = sys::pid::pidfd_open(pid).pid(pid)?;
                let local = sys::pid::pidfd_getfd(&pidfd, fd).pid(pid)?;
                if !sys::pipe::has_readers(&local).pid(pid)? {
                    out.push(PipeData {
                        pipe,
                        capacity: sys::pipe::capacity(&local).pid(pid)?,
                        data: Hex(Vec::new()),
                    });
                    continue;
                }
                return Err(CheckpointError::Unsupported {
                    pid,
                    what: format!("fd {fd} (pipe)"),
                    why: "the read end of this pipe is held by a process outside the checkpointed tree".into(),
                });
            };
            let pidfd = sys::pid::pidfd_open(rpid).pid(rpid)?;
            let local = sys::pid::pidfd_getfd(&pidfd, rfd).pid(rpid)?;
            let capacity = sys::pipe::capacity(&local).pid(rpid)?;
            let data = sys::pipe::peek(&local).pid(rpid)?;
            out.push(PipeData {
                pipe,
                capacity,
                data: Hex(data),
            });
        }
        Ok(out)
    }
}
