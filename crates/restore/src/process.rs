//! Loading an image and rebuilding every process of it.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use image::{FileKind, Process, Tree, VmaKind};
use sys::mem::{MappedFile, RemoteRange};
use sys::ptrace::{self, UserRegs};
use sys::remote::nr;
use sys::{i64_to_reg, reg_to_i64, RemoteSyscalls, PAGE_SIZE};

use crate::stubs::Stubs;
use crate::{PidCtx, RestoreError, RestoreOptions, RestoreReport, Result};

const TASK_SIZE: u64 = 0x7fff_ffff_f000;
const SCRATCH_LEN: u64 = 64 << 10;
const SCR_GEN: u64 = 0;
const SCR_TID: u64 = 128;
const SCR_PATH: u64 = 256;
const SCR_MM: u64 = 8192;
const SCR_AUXV: u64 = 8192 + 256;
const SCR_FILTER: u64 = 16384;

const CLONE_VM: u64 = 0x100;
const CLONE_FS: u64 = 0x200;
const CLONE_FILES: u64 = 0x400;
const CLONE_SIGHAND: u64 = 0x800;
const CLONE_THREAD: u64 = 0x10000;
const CLONE_SYSVSEM: u64 = 0x40000;
const CLONE_NEWPID: u64 = 0x2000_0000;

fn u(v: i32) -> u64 {
    i64_to_reg(i64::from(v))
}

/// A verified image, with every pages file mapped.
pub struct Loaded {
    pub dir: PathBuf,
    pub tree: Tree,
    pub pages: Vec<MappedFile>,
    /// Data of each shared memory object, by index in `tree.shmem`.
    pub shmem: Vec<MappedFile>,
    /// Incremental image: its parent, grandparent, ... (pages files mapped).
    pub ancestors: Vec<Ancestor>,
    /// Per process of `tree`: where its `in_parent` runs are found in `ancestors`.
    pub from_parents: Vec<Vec<Piece>>,
}

/// One parent image of the chain.
pub struct Ancestor {
    pub dir: PathBuf,
    pub tree: Tree,
    /// Pages file of each process of `tree`.
    pub pages: Vec<MappedFile>,
}

/// Pages of a restored process whose data is in an ancestor's pages file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Index in `Loaded::ancestors`.
    pub level: usize,
    /// Index of the process in that ancestor's tree.
    pub proc: usize,
    pub addr: u64,
    pub len: u64,
    /// Byte offset in that process's page data.
    pub offset: u64,
}

/// Checks the page runs of `p` against its mappings and pages file.
fn check_runs(
    p: &Process,
    allow_in_parent: bool,
    bad: &dyn Fn(String) -> RestoreError,
) -> Result<()> {
    let mut expect = 0u64;
    for v in &p.vmas {
        let mut prev_end = v.start;
        for r in &v.pages {
            let end = r.vaddr + r.npages * PAGE_SIZE;
            let fits = r.vaddr >= prev_end && end <= v.end && r.npages > 0;
            let stored_ok = r.in_parent && allow_in_parent || !r.in_parent && r.offset == expect;
            if !fits || !stored_ok {
                return Err(bad(format!(
                    "pid {}: page run at {:#x} does not fit its mapping or file{}",
                    p.pid,
                    r.vaddr,
                    if r.in_parent && !allow_in_parent {
                        " (in parent, but the image has no parent)"
                    } else {
                        ""
                    }
                )));
            }
            prev_end = end;
            if !r.in_parent {
                expect += r.npages * PAGE_SIZE;
            }
        }
    }
    if expect != p.pages.len {
        return Err(bad(format!(
            "pid {}: page runs cover {expect} bytes, pages file has {}",
            p.pid, p.pages.len
        )));
    }
    Ok(())
}

/// Finds `[s, e)` of process `pid` in `ancestors[level..]`.
fn resolve(
    ancestors: &[Ancestor],
    level: usize,
    pid: i32,
    s: u64,
    e: u64,
    out: &mut Vec<Piece>,
) -> Result<()> {
    let missing = || {
        let (dir, _) = ancestors
            .get(level)
            .map_or((PathBuf::new(), ()), |a| (a.dir.clone(), ()));
        RestoreError::Image(image::ImageError::Parent {
            file: dir.join(image::TREE_FILE),
            parent: dir.clone(),
            why: format!(
                "holds no data for pid {pid} pages {s:#x}-{e:#x} that its child says are in it"
            ),
        })
    };
    let a = ancestors.get(level).ok_or_else(missing)?;
    let pi = a
        .tree
        .processes
        .iter()
        .position(|q| q.pid == pid)
        .ok_or_else(missing)?;
    let mut covered = 0u64;
    for r in a.tree.processes[pi]
        .vmas
        .iter()
        .flat_map(|v| v.pages.iter())
    {
        let rs = r.vaddr;
        let re = r.vaddr + r.npages * PAGE_SIZE;
        let (cs, ce) = (rs.max(s), re.min(e));
        if cs >= ce {
            continue;
        }
        covered += ce - cs;
        if r.in_parent {
            resolve(ancestors, level + 1, pid, cs, ce, out)?;
        } else {
            let offset = r.offset + (cs - rs);
            match out.last_mut() {
                Some(l)
                    if l.level == level
                        && l.proc == pi
                        && l.addr + l.len == cs
                        && l.offset + l.len == offset =>
                {
                    l.len += ce - cs
                }
                _ => out.push(Piece {
                    level,
                    proc: pi,
                    addr: cs,
                    len: ce - cs,
                    offset,
                }),
            }
        }
    }
    if covered != e - s {
        return Err(missing());
    }
    Ok(())
}

impl Loaded {
    pub fn load(dir: &Path) -> Result<Loaded> {
        let mut chain = image::read_chain(dir)?.into_iter();
        let tree = match chain.next() {
            Some((_, t)) => t,
            None => image::read_tree(dir)?,
        };
        let tf = dir.join(image::TREE_FILE);
        let bad = |why: String| {
            RestoreError::Image(image::ImageError::Corrupt {
                file: tf.clone(),
                what: why,
            })
        };
        if tree.processes.is_empty() {
            return Err(bad("no processes".into()));
        }
        if tree.live_memory {
            return Err(bad(
                "a pre-copy round (memory copied while the tree ran) cannot be restored by itself; restore the final image of the pre-copy, which names this one as its parent"
                    .into(),
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, p) in tree.processes.iter().enumerate() {
            if i > 0 && !seen.contains_key(&p.ppid) {
                return Err(bad(format!(
                    "pid {} comes before its parent {}",
                    p.pid, p.ppid
                )));
            }
            seen.insert(p.pid, i);
            if p.threads.first().map(|t| t.tid) != Some(p.pid) {
                return Err(bad(format!(
                    "pid {}: first thread is not the main thread",
                    p.pid
                )));
            }
            if p.sigactions.len() != 64 || p.rlimits.len() != 16 || p.itimers.len() != 3 {
                return Err(bad(format!(
                    "pid {}: signal, limit or timer tables have the wrong size",
                    p.pid
                )));
            }
            for f in &p.fds {
                if usize::try_from(f.file).map_or(true, |i| i >= tree.files.len()) {
                    return Err(bad(format!(
                        "pid {} fd {}: no such open file {}",
                        p.pid, f.fd, f.file
                    )));
                }
            }
            check_runs(p, tree.parent.is_some(), &bad)?;
        }
        let mut ancestors = Vec::new();
        for (adir, atree) in chain {
            let atf = adir.join(image::TREE_FILE);
            let abad = |why: String| {
                RestoreError::Image(image::ImageError::Corrupt {
                    file: atf.clone(),
                    what: why,
                })
            };
            let mut pages = Vec::with_capacity(atree.processes.len());
            for p in &atree.processes {
                check_runs(p, atree.parent.is_some(), &abad)?;
                pages.push(map_pages(&adir, &p.pages, p.pid)?);
            }
            ancestors.push(Ancestor {
                dir: adir,
                tree: atree,
                pages,
            });
        }
        let mut from_parents = Vec::with_capacity(tree.processes.len());
        for p in &tree.processes {
            let mut pieces = Vec::new();
            for r in p
                .vmas
                .iter()
                .flat_map(|v| v.pages.iter())
                .filter(|r| r.in_parent)
            {
                resolve(
                    &ancestors,
                    0,
                    p.pid,
                    r.vaddr,
                    r.vaddr + r.npages * PAGE_SIZE,
                    &mut pieces,
                )?;
            }
            from_parents.push(pieces);
        }
        crate::evfd::check(&tree).map_err(bad)?;
        crate::timers::check(&tree).map_err(bad)?;
        let mut pages = Vec::with_capacity(tree.processes.len());
        for p in &tree.processes {
            // (the chunk table, version 4, must be intact too: a damaged file is refused)
            for (_, r, f) in image::open_pages_parts(dir, &p.pages)? {
                image::read_chunk_table(dir, &r, &f)?;
            }
            pages.push(map_pages(dir, &p.pages, p.pid)?);
        }
        let mut shmem = Vec::with_capacity(tree.shmem.len());
        for (i, o) in tree.shmem.iter().enumerate() {
            if usize::try_from(o.id).ok() != Some(i) {
                return Err(bad(format!("shared memory object {i} has id {}", o.id)));
            }
            let f = image::open_pages(dir, &o.data)?;
            shmem
                .push(MappedFile::map(&f, image::PAGES_HEADER_LEN, o.data.len).pid(tree.root_pid)?);
        }
        Ok(Loaded {
            dir: dir.to_path_buf(),
            tree,
            pages,
            shmem,
            ancestors,
            from_parents,
        })
    }

    /// Checks the CRC32C of every pages file (runs while the stubs are being built; the
    /// restored tree only starts running after it succeeded).
    pub fn verify(&self) -> Result<()> {
        for (p, m) in self.tree.processes.iter().zip(&self.pages) {
            image::check_pages_data(&self.dir, &p.pages, m.as_slice())?;
        }
        for (o, m) in self.tree.shmem.iter().zip(&self.shmem) {
            image::check_pages_data(&self.dir, &o.data, m.as_slice())?;
        }
        for a in &self.ancestors {
            for (p, m) in a.tree.processes.iter().zip(&a.pages) {
                image::check_pages_data(&a.dir, &p.pages, m.as_slice())?;
            }
        }
        Ok(())
    }
}

/// Maps a process's page data (every part file back to back, see `image::PagesRef::parts`)
/// after checking each file's header.
fn map_pages(dir: &Path, r: &image::PagesRef, pid: i32) -> Result<MappedFile> {
    let files = image::open_pages_parts(dir, r)?;
    let parts: Vec<(&std::fs::File, u64, u64)> = files
        .iter()
        .map(|(_, p, f)| (f, image::PAGES_HEADER_LEN, p.len))
        .collect();
    MappedFile::map_parts(&parts).pid(pid)
}

/// The restorer's copies of every open file description, placed at `base + id` so every stub
/// (forked from the restorer) inherits them at known numbers.
struct PreparedFiles {
    base: i32,
    shm_base: i32,
    _fds: Vec<OwnedFd>,
    /// Sockets and connections that need a last step before the tree resumes.
    extra: crate::evfd::PairEnds,
}

fn prepare_files(l: &Loaded) -> Result<PreparedFiles> {
    let tree = &l.tree;
    let root = tree.processes[0].pid;
    let max_fd = tree
        .processes
        .iter()
        .flat_map(|p| p.fds.iter().map(|f| f.fd))
        .max()
        .unwrap_or(0);
    // Above every fd the restorer itself holds, too: a caller of the library with many open
    // fds (a benchmark holding the peers of the tree's connections) must not have them
    // replaced by `dup_to`. And above every fd held while the files are placed (the other end
    // of a pipe or unix pair until its record comes: at most one per file, taking the lowest
    // free numbers), which `dup_to` would otherwise replace silently.
    let own_max = std::fs::read_dir("/proc/self/fd")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let n = i32::try_from(tree.files.len()).unwrap_or(i32::MAX);
    let base = (max_fd + 1)
        .max(256)
        .max(own_max.saturating_add(n).saturating_add(64));
    let shm_base = base + n;
    let ns = i32::try_from(tree.shmem.len()).unwrap_or(i32::MAX);
    // Above the shared memory objects: the copies of TCP connections kept until they leave
    // repair mode.
    let keep_floor = shm_base + ns + 1;
    let tcp = tree
        .files
        .iter()
        .filter(|f| matches!(f.kind, FileKind::TcpEstablished { .. }))
        .count();
    let tcp = i32::try_from(tcp).unwrap_or(i32::MAX);
    sys::files::ensure_nofile(u64::try_from(keep_floor + tcp + 1).unwrap_or(u64::MAX)).pid(root)?;
    // Shared memory objects first: memfds filled with their pages, at shm_base + id.
    let mut shm_fds = Vec::with_capacity(tree.shmem.len());
    for (o, data) in tree.shmem.iter().zip(&l.shmem) {
        let name = o
            .name
            .strip_prefix("memfd:")
            .unwrap_or("understudy-shared-anon");
        let f = std::fs::File::from(sys::files::memfd(name).pid(root)?);
        let io = |e: std::io::Error| RestoreError::Invalid {
            pid: root,
            why: format!("filling shared memory {}: {e}", o.name),
        };
        f.set_len(o.size).map_err(io)?;
        let d = data.as_slice();
        for r in &o.pages {
            let len = (r.npages * PAGE_SIZE).min(o.size.saturating_sub(r.vaddr));
            let from = usize::try_from(r.offset).unwrap_or(usize::MAX);
            let to = from.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            let chunk = d.get(from..to).ok_or_else(|| RestoreError::Invalid {
                pid: root,
                why: format!("shared memory {}: page run outside its data", o.name),
            })?;
            std::os::unix::fs::FileExt::write_all_at(&f, chunk, r.vaddr).map_err(io)?;
        }
        let id = i32::try_from(o.id).unwrap_or(i32::MAX);
        shm_fds.push(sys::files::dup_to(&OwnedFd::from(f), shm_base + id).pid(root)?);
    }
    let mut pipes: BTreeMap<u32, (Option<OwnedFd>, Option<OwnedFd>)> = BTreeMap::new();
    let mut fifo_keepers: BTreeMap<u32, OwnedFd> = BTreeMap::new();
    let mut out = Vec::with_capacity(tree.files.len());
    let mut pair_ends = crate::evfd::PairEnds::default();
    pair_ends.keep_floor = keep_floor;
    for f in &tree.files {
        if let Some(fd) = crate::evfd::create(f, tree, &mut pair_ends, root)? {
            let id = i32::try_from(f.id).unwrap_or(i32::MAX);
            out.push(sys::files::dup_to(&fd, base + id).pid(root)?);
            continue;
        }
        let fd = match &f.kind {
            FileKind::Path { path, pos, .. } => {
                let fd = sys::files::open(path, f.flags).pid(root)?;
                if *pos != 0 {
                    sys::files::seek(&fd, *pos).pid(root)?;
                }
                fd
            }
            FileKind::Device { path, .. } => sys::files::open(path, f.flags).pid(root)?,
            FileKind::Memfd { shmem, pos } => {
                // A new open file description of the same memfd (own offset and flags).
                let fd_no = shm_base + i32::try_from(*shmem).unwrap_or(0);
                let fd = sys::files::open(&format!("/proc/self/fd/{fd_no}"), f.flags).pid(root)?;
                if *pos != 0 {
                    sys::files::seek(&fd, *pos).pid(root)?;
                }
                fd
            }
            FileKind::Pipe {
                pipe,
                write_end,
                fifo_path,
            } => {
                if let Some(path) = fifo_path {
                    // A FIFO: a keeper opened read-write holds the pipe (and its queued bytes)
                    // while every end is opened by path, without blocking.
                    if !fifo_keepers.contains_key(pipe) {
                        let keeper = sys::files::open(path, 0o2 | 0o4000).pid(root)?;
                        let pd = tree.pipes.iter().find(|d| d.pipe == *pipe);
                        if let Some(d) = pd {
                            sys::pipe::fill(&keeper, &d.data.0, d.capacity).pid(root)?;
                        }
                        fifo_keepers.insert(*pipe, keeper);
                    }
                    let fd = sys::files::open(path, f.flags | 0o4000).pid(root)?;
                    sys::files::set_status_flags(&fd, f.flags).pid(root)?;
                    let id = i32::try_from(f.id).unwrap_or(i32::MAX);
                    out.push(sys::files::dup_to(&fd, base + id).pid(root)?);
                    continue;
                }
                let e = match pipes.get_mut(pipe) {
                    Some(e) => e,
                    None => {
                        let pd = tree.pipes.iter().find(|d| d.pipe == *pipe);
                        let data = pd.map_or(&[][..], |d| &d.data.0[..]);
                        let cap = pd.map_or(0, |d| d.capacity);
                        let (r, w) = sys::pipe::filled(data, cap).pid(root)?;
                        pipes.entry(*pipe).or_insert((Some(r), Some(w)))
                    }
                };
                let end = if *write_end { e.1.take() } else { e.0.take() };
                let fd = match end {
                    Some(fd) => fd,
                    None => {
                        // Two open file descriptions of one end (a FIFO opened twice): not
                        // representable with an anonymous pipe.
                        return Err(RestoreError::Invalid {
                            pid: root,
                            why: format!("pipe {pipe}: end opened twice"),
                        });
                    }
                };
                sys::files::set_status_flags(&fd, f.flags).pid(root)?;
                fd
            }
            other => {
                return Err(RestoreError::Invalid {
                    pid: root,
                    why: format!("file {}: kind {other:?} not handled", f.id),
                })
            }
        };
        let id = i32::try_from(f.id).unwrap_or(i32::MAX);
        out.push(sys::files::dup_to(&fd, base + id).pid(root)?);
    }
    out.extend(shm_fds);
    out.extend(fifo_keepers.into_values());
    Ok(PreparedFiles {
        base,
        shm_base,
        _fds: out,
        extra: pair_ends,
    })
}

struct Placed {
    /// Outer pid.
    pid: i32,
}

fn seize_stub(pid: i32) -> Result<()> {
    use sys::ptrace::options::*;
    ptrace::seize(pid, TRACEFORK | TRACECLONE | EXITKILL | SUSPEND_SECCOMP).pid(pid)?;
    ptrace::interrupt(pid).pid(pid)?;
    ptrace::wait_stop(pid).pid(pid)?;
    Ok(())
}

fn vdso_insn(pid: i32) -> Result<u64> {
    let maps = sys::proc::maps(pid).pid(pid)?;
    let v = maps
        .iter()
        .find(|m| m.path == "[vdso]")
        .ok_or_else(|| RestoreError::Invalid {
            pid,
            why: "stub has no [vdso]".into(),
        })?;
    sys::remote::find_syscall_insn(pid, v.start, v.end).pid(pid)
}

/// The outer id of the process or thread a `clone3` injected through `rs` just created: the
/// image's `outer` for a tree in the caller's namespace (asked for with `set_tid`), the one the
/// kernel reported in the fork/clone event for a tree in its own PID namespace.
fn new_outer_id(rs: &mut RemoteSyscalls, outer: i32, pidns: bool) -> Result<i32> {
    let events = rs.take_events();
    if !pidns {
        return Ok(outer);
    }
    events
        .iter()
        .find(|e| {
            matches!(
                e.event,
                ptrace::event::FORK | ptrace::event::VFORK | ptrace::event::CLONE
            )
        })
        .and_then(|e| i32::try_from(e.msg).ok())
        .ok_or_else(|| RestoreError::Invalid {
            pid: outer,
            why: "clone3 reported no fork/clone event with the new pid".into(),
        })
}

/// `set_tid` for `clone3`: the image's pid in the caller's namespace, or only the pid inside
/// the tree's own PID namespace (the outer one is left to the kernel).
fn set_tid_bytes(p_ns: i32, p_outer: i32, pidns: bool) -> (Vec<u8>, u64) {
    let ids: Vec<i32> = if pidns { vec![p_ns] } else { vec![p_outer] };
    (
        ids.iter().flat_map(|v| v.to_ne_bytes()).collect(),
        ids.len() as u64,
    )
}

/// Creates a child of the (stopped, seized) stub `parent` by an injected `clone3` with the
/// child's pid, `ids` = (pid in the dumper's namespace, pid inside the tree's namespace, session,
/// exit signal); waits for it to stop under our trace and makes it a session leader when it
/// leads its session. Returns its outer pid.
fn clone_in_parent(
    parent: i32,
    insn: u64,
    ids: (i32, i32, i32, i32),
    pidns: bool,
    stubs: &mut Stubs,
) -> Result<i32> {
    let (pid, ns_pid, sid, exit_signal) = ids;
    let mut rs = RemoteSyscalls::new(parent, insn).pid(parent)?;
    let scratch = rs.map_scratch(None, 4096).pid(parent)?.addr();
    let (tids, n) = set_tid_bytes(ns_pid, pid, pidns);
    rs.put(SCR_TID, &tids).pid(parent)?;
    let args = sys::pid::clone_args_bytes(0, u(exit_signal), scratch + SCR_TID, n);
    rs.put(SCR_GEN, &args).pid(parent)?;
    let r = rs
        .syscall_raw(nr::CLONE3, [scratch, sys::pid::CLONE_ARGS_SIZE, 0, 0, 0, 0])
        .pid(parent)?;
    if r == -i64::from(libc::EEXIST) {
        return Err(RestoreError::PidTaken { pid });
    }
    if r < 0 {
        return Err(RestoreError::Invalid {
            pid,
            why: format!("clone3 in parent {parent} failed: errno {}", -r),
        });
    }
    let cpid = new_outer_id(&mut rs, pid, pidns)?;
    rs.finish().pid(parent)?;
    stubs.add_process(cpid);
    ptrace::wait_stop(cpid).pid(pid)?;
    if sid == ns_pid {
        let mut cs = RemoteSyscalls::new(cpid, insn).pid(pid)?;
        cs.syscall("setsid", nr::SETSID, [0; 6]).pid(pid)?;
        cs.finish().pid(pid)?;
    }
    Ok(cpid)
}

/// Ends the zombie stub `at` (seized, stopped) the way `z` ended: `exit_group(code)`, or its
/// signal with the default action, unblocked, and no core dump (the core flag of the original
/// status cannot be reproduced). Returns once /proc shows it as a zombie.
fn end_zombie(z: &image::Zombie, at: i32, insn: u64) -> Result<()> {
    const PR_SET_NAME: u64 = 15;
    const PR_SET_DUMPABLE: u64 = 4;
    let pid = z.pid;
    let mut rs = RemoteSyscalls::new(at, insn).pid(pid)?;
    let scratch = rs.map_scratch(None, 4096).pid(pid)?.addr();
    // Its name as `ps` showed it (the stub has the restorer's).
    let mut name: Vec<u8> = z.comm.bytes().take(15).collect();
    name.push(0);
    rs.put(SCR_PATH, &name).pid(pid)?;
    rs.syscall(
        "prctl(PR_SET_NAME)",
        nr::PRCTL,
        [PR_SET_NAME, scratch + SCR_PATH, 0, 0, 0, 0],
    )
    .pid(pid)?;
    match z.end {
        image::ExitHow::Exited { code } => {
            // Resumed at a `syscall` instruction with exit_group's number: it exits at once.
            let mut regs = *rs.saved_regs();
            regs.rip = insn;
            regs.rax = nr::EXIT_GROUP;
            regs.orig_rax = i64_to_reg(-1);
            regs.rdi = u(code);
            rs.set_saved_regs(regs);
            rs.finish().pid(pid)?;
            ptrace::detach(at, 0).pid(pid)?;
        }
        image::ExitHow::Killed { signal, .. } => {
            rs.syscall(
                "prctl(PR_SET_DUMPABLE)",
                nr::PRCTL,
                [PR_SET_DUMPABLE, 0, 0, 0, 0, 0],
            )
            .pid(pid)?;
            if signal != libc::SIGKILL {
                // SIG_DFL: an all-zero kernel `struct sigaction`.
                rs.put(SCR_GEN, &[0u8; 32]).pid(pid)?;
                rs.syscall(
                    "rt_sigaction(SIG_DFL)",
                    nr::RT_SIGACTION,
                    [u(signal), scratch + SCR_GEN, 0, 8, 0, 0],
                )
                .pid(pid)?;
            }
            // The stub was cloned inside an injected call: its own registers point into the
            // middle of the vDSO. It waits in pause() instead, then gets the signal.
            let mut regs = *rs.saved_regs();
            regs.rip = insn;
            regs.rax = nr::PAUSE;
            regs.orig_rax = i64_to_reg(-1);
            rs.set_saved_regs(regs);
            rs.finish().pid(pid)?;
            ptrace::set_sigmask(at, 0).pid(pid)?;
            if signal == libc::SIGKILL {
                // (SIGKILL would end the trace stop itself; detach first)
                ptrace::detach(at, 0).pid(pid)?;
                sys::pid::kill(at, signal).pid(pid)?;
            } else {
                // Queued while it is stopped, acted on as soon as it resumes.
                sys::pid::kill(at, signal).pid(pid)?;
                ptrace::detach(at, 0).pid(pid)?;
            }
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match sys::proc::stat(at) {
            Ok(st) if st.state == 'Z' => return Ok(()),
            Ok(_) => {}
            Err(_) => {
                return Err(RestoreError::Invalid {
                    pid,
                    why:
                        "the re-created zombie was reaped at once (does its parent ignore SIGCHLD?)"
                            .into(),
                })
            }
        }
        if std::time::Instant::now() >= deadline {
            return Err(RestoreError::Invalid {
                pid,
                why: format!(
                    "the re-created zombie did not end within 60 s ({:?})",
                    z.end
                ),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Each re-created zombie sent its parent its exit signal (`SIGCHLD`) when it ended just now;
/// the original parent was told when the child really ended, before the checkpoint. Take that
/// signal back out of the parent's pending set (every signal is still blocked in it), unless
/// the image has the same signal pending for that parent: a standard signal is pending at most
/// once, so then the one the image had is what remains.
fn take_back_exit_signals(tree: &image::Tree, placed: &[Placed]) -> Result<()> {
    let mut done: Vec<(i32, i32)> = Vec::new();
    for z in &tree.zombies {
        let sig = z.exit_signal;
        if !(1..=31).contains(&sig) || done.contains(&(z.ppid, sig)) {
            continue;
        }
        done.push((z.ppid, sig));
        let Some((p, at)) = tree
            .processes
            .iter()
            .zip(placed)
            .find(|(q, _)| q.pid == z.ppid)
        else {
            continue;
        };
        let signo = |si: &image::Hex| i32::from_ne_bytes(si.0[..4].try_into().unwrap_or([0; 4]));
        let in_image = p.shared_pending.iter().any(|si| signo(si) == sig)
            || p.threads
                .iter()
                .any(|t| t.pending.iter().any(|si| signo(si) == sig));
        if in_image {
            continue;
        }
        let pid = at.pid;
        // The stub's code is gone (the parent holds its own memory now): a `syscall`
        // instruction of its vDSO, at the recorded address, runs the call.
        let Some((vs, ve)) = p.vmas.iter().find_map(|v| match &v.kind {
            image::VmaKind::Vdso { name } if name == "[vdso]" => Some((v.start, v.end)),
            _ => None,
        }) else {
            tracing::warn!("pid {pid}: no [vdso] in the image: its extra signal {sig} stays");
            continue;
        };
        let insn = sys::remote::find_syscall_insn(pid, vs, ve).pid(pid)?;
        let mut rs = RemoteSyscalls::new(pid, insn).pid(pid)?;
        let scratch = rs.map_scratch(None, 4096).pid(pid)?.addr();
        // A zero timeout (struct timespec {0, 0}) and the one-signal set after it.
        let mut args = [0u8; 24];
        args[16..].copy_from_slice(&(1u64 << (sig - 1)).to_ne_bytes());
        rs.put(SCR_GEN, &args).pid(pid)?;
        let got = rs.syscall(
            "rt_sigtimedwait",
            nr::RT_SIGTIMEDWAIT,
            [scratch + SCR_GEN + 16, 0, scratch + SCR_GEN, 8, 0, 0],
        );
        rs.finish().pid(pid)?;
        if let Err(e) = got {
            // Nothing was pending (e.g. a parent that ignores the signal): nothing to take back.
            tracing::debug!("pid {pid}: no signal {sig} to take back after its zombies ended: {e}");
        }
    }
    Ok(())
}

pub fn restore_tree(
    l: &Loaded,
    opts: &RestoreOptions,
    verified: impl FnOnce() -> Result<()>,
) -> Result<RestoreReport> {
    restore_tree_with(l, opts, verified, None, &mut |_| Ok(()))
}

/// [`restore_tree`], with the private anonymous memory handed to `lazy` (lazy restore) and
/// `before_run` called with the restored pids just before the tree resumes.
pub(crate) fn restore_tree_with(
    l: &Loaded,
    opts: &RestoreOptions,
    verified: impl FnOnce() -> Result<()>,
    mut lazy: Option<&mut crate::lazy::Collector>,
    before_run: &mut dyn FnMut(&[i32]) -> Result<()>,
) -> Result<RestoreReport> {
    let tree = &l.tree;
    // A tree in its own PID namespace (`understudy run`) keeps only the pids inside it: they
    // are free in the new namespace, and its outer pids are whatever this host hands out
    // (learned from the fork/clone events), so nothing waits for the old ones to be reaped.
    // Below, `placed[i].pid` and the tids `rebuild` returns are the outer ids actually used.
    if !tree.pidns {
        for p in &tree.processes {
            for t in &p.threads {
                if sys::pid::pid_exists(t.tid) {
                    return Err(RestoreError::PidTaken { pid: t.tid });
                }
            }
        }
        for z in &tree.zombies {
            if sys::pid::pid_exists(z.pid) {
                return Err(RestoreError::PidTaken { pid: z.pid });
            }
        }
    }
    let t0 = std::time::Instant::now();
    let files = prepare_files(l)?;
    let mut stubs = Stubs::default();
    let root = &tree.processes[0];
    let (flags, ids): (u64, Vec<i32>) = if tree.pidns {
        (CLONE_NEWPID, vec![root.ns_pid])
    } else {
        (0, vec![root.pid])
    };
    tracing::debug!("restore: files prepared at {:?}", t0.elapsed());
    let rpid = sys::pid::spawn_stub(&ids, flags).pid(root.pid)?;
    stubs.add_process(rpid);
    seize_stub(rpid)?;
    let insn = vdso_insn(rpid)?;
    let mut placed = vec![Placed { pid: rpid }];
    if root.sid == root.ns_pid {
        let mut rs = RemoteSyscalls::new(rpid, insn).pid(rpid)?;
        rs.syscall("setsid", nr::SETSID, [0; 6]).pid(rpid)?;
        rs.finish().pid(rpid)?;
    }
    let parent_of = |pid: i32, ppid: i32, placed: &[Placed]| {
        tree.processes
            .iter()
            .zip(placed)
            .find(|(q, _)| q.pid == ppid)
            .map(|(_, at)| at.pid)
            .ok_or_else(|| RestoreError::Invalid {
                pid,
                why: format!("parent {ppid} is not restored before it"),
            })
    };
    // Children, by a clone3 injected into their (still stub) parent.
    for p in &tree.processes[1..] {
        let parent = parent_of(p.pid, p.ppid, &placed)?;
        let ids = (p.pid, p.ns_pid, p.sid, p.exit_signal);
        let cpid = clone_in_parent(parent, insn, ids, tree.pidns, &mut stubs)?;
        placed.push(Placed { pid: cpid });
    }
    // Zombies: stubs too for now (they end last, once every process is rebuilt).
    let mut zombies = Vec::with_capacity(tree.zombies.len());
    for z in &tree.zombies {
        let parent = parent_of(z.pid, z.ppid, &placed)?;
        let ids = (z.pid, z.ns_pid, z.sid, z.exit_signal);
        zombies.push(clone_in_parent(parent, insn, ids, tree.pidns, &mut stubs)?);
    }
    // Process groups, now that every leader exists: leaders first (a zombie may lead a
    // group that live processes belong to), then members.
    // A group led from outside the tree (0 when outside the tree's PID namespace) cannot be
    // joined: such processes keep the group they inherited from the restored root.
    let outside_pgid = root.pgid;
    let in_tree = |g: i32| {
        tree.processes.iter().any(|q| q.ns_pid == g) || tree.zombies.iter().any(|z| z.ns_pid == g)
    };
    let all: Vec<(i32, i32, i32, i32, i32)> = tree
        .processes
        .iter()
        .map(|p| (p.pid, p.ns_pid, p.pgid, p.sid))
        .chain(
            tree.zombies
                .iter()
                .map(|z| (z.pid, z.ns_pid, z.pgid, z.sid)),
        )
        .zip(
            placed
                .iter()
                .map(|at| at.pid)
                .chain(zombies.iter().copied()),
        )
        .map(|((pid, ns_pid, pgid, sid), at)| (pid, ns_pid, pgid, sid, at))
        .collect();
    for leaders in [true, false] {
        for &(pid, ns_pid, pgid, sid, at) in &all {
            if sid == ns_pid
                || pgid == 0
                || (pgid == outside_pgid && !in_tree(pgid))
                || (pgid == ns_pid) != leaders
            {
                continue;
            }
            let target = if pgid == ns_pid { 0 } else { u(pgid) };
            let mut rs = RemoteSyscalls::new(at, insn).pid(pid)?;
            if let Err(e) = rs.syscall("setpgid", nr::SETPGID, [0, target, 0, 0, 0, 0]) {
                tracing::warn!("pid {pid}: process group {pgid} not restored: {e}");
            }
            rs.finish().pid(pid)?;
        }
    }
    let total: u64 = tree.processes.iter().map(|p| p.pages.len).sum::<u64>()
        + l.from_parents.iter().flatten().map(|x| x.len).sum::<u64>();
    let mut done = 0u64;
    let mut finals: Vec<(i32, &image::Thread)> = Vec::new();
    for (i, p) in tree.processes.iter().enumerate() {
        let pid = placed[i].pid;
        tracing::debug!(
            "restore: pid {} rebuild starts at {:?}",
            p.pid,
            t0.elapsed()
        );
        let tids = rebuild(
            p,
            pid,
            tree.pidns,
            &l.pages[i],
            (&l.from_parents[i], &l.ancestors),
            files.base,
            files.shm_base,
            &mut stubs,
            opts,
            &mut done,
            total,
            lazy.as_deref_mut(),
        )?;
        for (t, tid) in p.threads.iter().zip(tids) {
            finals.push((tid, t));
        }
    }
    // Nothing has run yet: a corrupt image still kills every stub here.
    tracing::debug!("restore: rebuilt at {:?}", t0.elapsed());
    verified()?;
    let t_tcp = std::time::Instant::now();
    crate::evfd::finish_tcp(&files.extra.tcp, rpid)?;
    let tcp_restore = files.extra.tcp_time + t_tcp.elapsed();
    let tcp_connections = files.extra.tcp.len();
    for (i, p) in tree.processes.iter().enumerate() {
        crate::timers::restore(p, placed[i].pid)?;
    }
    // The zombies end now, the way they ended before, while their parents are still stopped
    // (so none reaps one before we saw it become a zombie).
    for (z, &at) in tree.zombies.iter().zip(&zombies) {
        end_zombie(z, at, insn)?;
    }
    take_back_exit_signals(tree, &placed)?;
    let live: Vec<i32> = stubs
        .pids
        .iter()
        .copied()
        .filter(|p| !zombies.contains(p))
        .collect();
    before_run(&live)?;
    // Registers last, then let everything run.
    for (tid, t) in &finals {
        let mut regs = t.regs;
        restart_syscall(&mut regs);
        ptrace::set_xstate(*tid, &t.xstate.0).pid(*tid)?;
        ptrace::set_regs(*tid, &regs).pid(*tid)?;
        ptrace::set_sigmask(*tid, t.sigmask).pid(*tid)?;
    }
    for (tid, _) in finals.iter().rev() {
        ptrace::detach(*tid, 0).pid(*tid)?;
    }
    let threads = finals.len();
    stubs.commit();
    drop(files);
    Ok(RestoreReport {
        root_pid: rpid,
        processes: tree.processes.len(),
        zombies: tree.zombies.len(),
        threads,
        pages_bytes: total,
        tcp_connections,
        tcp_restore,
        ..Default::default()
    })
}

/// A thread stopped inside an interrupted system call must re-issue it: rewind to the
/// `syscall` instruction and put the call number back (what the kernel does for
/// `-ERESTARTSYS` and friends). `-ERESTART_RESTARTBLOCK` (sleeps) re-issues the original call
/// too: its restart block died with the old process; a relative sleep starts over.
fn restart_syscall(regs: &mut UserRegs) {
    let orig = reg_to_i64(regs.orig_rax);
    if orig >= 0 {
        let rax = reg_to_i64(regs.rax);
        if matches!(rax, -512 | -513 | -514 | -516) {
            regs.rax = regs.orig_rax;
            regs.rip -= 2;
        }
    }
    regs.orig_rax = i64_to_reg(-1);
}

fn vdso_parts_img(p: &Process) -> Vec<(String, u64, u64)> {
    p.vmas
        .iter()
        .filter_map(|v| match &v.kind {
            VmaKind::Vdso { name } => Some((name.clone(), v.start, v.end)),
            _ => None,
        })
        .collect()
}

fn find_gap(p: &Process, len: u64) -> u64 {
    let mut cand = 0x10_0000u64;
    let mut spans: Vec<(u64, u64)> = p.vmas.iter().map(|v| (v.start, v.end)).collect();
    spans.sort_unstable();
    for (s, e) in spans {
        if cand + len <= s {
            return cand;
        }
        cand = cand.max(e);
    }
    cand
}

#[allow(clippy::too_many_arguments)]
fn rebuild(
    p: &Process,
    pid: i32,
    pidns: bool,
    pages: &MappedFile,
    parents: (&[Piece], &[Ancestor]),
    files_base: i32,
    shm_base: i32,
    stubs: &mut Stubs,
    opts: &RestoreOptions,
    done: &mut u64,
    total: u64,
    lazy: Option<&mut crate::lazy::Collector>,
) -> Result<Vec<i32>> {
    ptrace::set_sigmask(pid, u64::MAX).pid(pid)?;
    let stub_maps = sys::proc::maps(pid).pid(pid)?;
    let stub_parts: Vec<(String, u64, u64)> = stub_maps
        .iter()
        .filter(|m| matches!(m.path.as_str(), "[vvar]" | "[vvar_vclock]" | "[vdso]"))
        .map(|m| (m.path.clone(), m.start, m.end))
        .collect();
    let img_parts = vdso_parts_img(p);
    let shape = |v: &[(String, u64, u64)]| -> Vec<(String, u64, u64)> {
        let b = v.first().map_or(0, |x| x.1);
        v.iter()
            .map(|(n, s, e)| (n.clone(), s - b, e - b))
            .collect()
    };
    if img_parts.is_empty() || shape(&stub_parts) != shape(&img_parts) {
        return Err(RestoreError::Invalid {
            pid: p.pid,
            why: format!("the vDSO layout differs from this kernel's ({img_parts:?} vs {stub_parts:?}): image from another kernel"),
        });
    }
    let stub_vdso = stub_parts
        .iter()
        .find(|x| x.0 == "[vdso]")
        .map_or(0, |x| x.1);
    let insn0 = sys::remote::find_syscall_insn(pid, stub_vdso, stub_vdso + PAGE_SIZE).pid(pid)?;
    let mut rs = RemoteSyscalls::new(pid, insn0).pid(pid)?;
    if let Some(r) = ptrace::get_rseq(pid).pid(pid)? {
        rs.syscall(
            "rseq(unregister)",
            nr::RSEQ,
            [r.ptr, u64::from(r.size), 1, u64::from(r.signature), 0, 0],
        )
        .pid(pid)?;
    }
    let (bs, be) = (stub_parts[0].1, stub_parts[stub_parts.len() - 1].2);
    if bs > 0 {
        rs.syscall("munmap", nr::MUNMAP, [0, bs, 0, 0, 0, 0])
            .pid(pid)?;
    }
    rs.syscall("munmap", nr::MUNMAP, [be, TASK_SIZE - be, 0, 0, 0, 0])
        .pid(pid)?;
    let (is, ie) = (img_parts[0].1, img_parts[img_parts.len() - 1].2);
    if is != bs {
        let mremap = |rs: &mut RemoteSyscalls, from: u64, to: u64| -> Result<()> {
            for (_, s, e) in &stub_parts {
                let len = e - s;
                let src = s - bs + from;
                let dst = s - bs + to;
                rs.syscall("mremap(vdso)", nr::MREMAP, [src, len, len, 3, dst, 0])
                    .pid(pid)?;
            }
            Ok(())
        };
        if is < be && bs < ie {
            let mut tmp = 0x1000_0000_0000u64;
            while p
                .vmas
                .iter()
                .any(|v| v.start < tmp + (be - bs) && tmp < v.end)
            {
                tmp += 0x1000_0000;
            }
            mremap(&mut rs, bs, tmp)?;
            mremap(&mut rs, tmp, is)?;
        } else {
            mremap(&mut rs, bs, is)?;
        }
        rs.set_syscall_insn(insn0 - bs + is);
    }
    let insn = rs.syscall_insn();
    let scratch_at = find_gap(p, SCRATCH_LEN);
    let scratch = rs
        .map_scratch(Some(scratch_at), SCRATCH_LEN)
        .pid(pid)?
        .addr();
    // The exe link first, while nothing but the vDSO and the scratch area is mapped: the
    // kernel refuses to replace mm->exe_file (EBUSY) while the old exe (the stub's, i.e. the
    // restorer binary) is still mapped, which it is again once the regions of a process whose
    // own exe is the restorer binary (an `understudy run` init) are in place.
    set_exe(&mut rs, p, pid, scratch)?;

    let tr = std::time::Instant::now();
    // Address space.
    let mut path_fds: BTreeMap<(String, bool), u64> = BTreeMap::new();
    let (mp, ma, mf, mg, ms) = (
        u(libc::MAP_PRIVATE),
        u(libc::MAP_ANONYMOUS),
        u(libc::MAP_FIXED),
        u(libc::MAP_GROWSDOWN),
        u(libc::MAP_SHARED),
    );
    let mut reprotect = Vec::new();
    for v in &p.vmas {
        let len = v.end - v.start;
        let need_w = !v.pages.is_empty() && v.prot & 2 == 0;
        let prot = u64::from(v.prot | if need_w { 2 } else { 0 });
        let r = match &v.kind {
            VmaKind::Vdso { .. } => continue,
            VmaKind::Anon { .. } => rs.syscall(
                "mmap",
                nr::MMAP,
                [v.start, len, prot, mp | ma | mf, i64_to_reg(-1), 0],
            ),
            VmaKind::Stack => rs.syscall(
                "mmap(stack)",
                nr::MMAP,
                [v.start, len, prot, mp | ma | mf | mg, i64_to_reg(-1), 0],
            ),
            VmaKind::FilePrivate { path, offset } => {
                let fd = open_remote(&mut rs, &mut path_fds, pid, scratch, path, 0)?;
                rs.syscall(
                    "mmap(file)",
                    nr::MMAP,
                    [v.start, len, prot, mp | mf, fd, *offset],
                )
            }
            VmaKind::FileShared { path, offset } => {
                let fd = open_remote(
                    &mut rs,
                    &mut path_fds,
                    pid,
                    scratch,
                    path,
                    if v.prot & 2 != 0 { 2 } else { 0 },
                )?;
                rs.syscall(
                    "mmap(shared file)",
                    nr::MMAP,
                    [v.start, len, prot, ms | mf, fd, *offset],
                )
            }
            VmaKind::Shmem { id, offset } => rs.syscall(
                "mmap(shared memory)",
                nr::MMAP,
                [
                    v.start,
                    len,
                    prot,
                    ms | mf,
                    u(shm_base) + u64::from(*id),
                    *offset,
                ],
            ),
        };
        let r = r.pid(pid)?;
        for f in &v.madvise {
            let advice = match f.as_str() {
                "hg" => 14,
                "nh" => 15,
                "dc" => 10,
                "wf" => 18,
                "dd" => 16,
                _ => continue,
            };
            rs.syscall(
                &format!("madvise({f})"),
                nr::MADVISE,
                [v.start, len, advice, 0, 0, 0],
            )
            .pid(pid)?;
        }
        if let VmaKind::Anon { name } = &v.kind {
            if let Some(n) = name
                .strip_prefix("[anon:")
                .and_then(|n| n.strip_suffix(']'))
            {
                let mut b = n.as_bytes().to_vec();
                b.push(0);
                rs.put(SCR_PATH, &b).pid(pid)?;
                // PR_SET_VMA, PR_SET_VMA_ANON_NAME: best effort (needs CONFIG_ANON_VMA_NAME).
                let _ = rs.syscall_raw(
                    nr::PRCTL,
                    [0x5356_4d41, 0, v.start, len, scratch + SCR_PATH, 0],
                );
            }
        }
        if r != v.start {
            return Err(RestoreError::Invalid {
                pid: p.pid,
                why: format!("mmap at {:#x} landed at {r:#x}", v.start),
            });
        }
        if need_w {
            reprotect.push(v);
        }
    }
    for (_, fd) in std::mem::take(&mut path_fds) {
        rs.syscall("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])
            .pid(pid)?;
    }
    tracing::debug!("restore: pid {}: mapped at {:?}", p.pid, tr.elapsed());
    // Pages: one pass over the mapped pages file, in file order.
    let data = pages.as_slice();
    let ranges: Vec<RemoteRange> = p
        .vmas
        .iter()
        .flat_map(|v| v.pages.iter())
        .filter(|r| !r.in_parent)
        .map(|r| RemoteRange {
            addr: r.vaddr,
            len: r.npages * PAGE_SIZE,
        })
        .collect();
    // Incremental image: the unchanged pages come from the parent chain.
    let mut from_parents: Vec<(u64, &[u8])> = Vec::with_capacity(parents.0.len());
    for x in parents.0 {
        let src = parents.1[x.level].pages[x.proc].as_slice();
        let at = usize::try_from(x.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(x.len).unwrap_or(usize::MAX);
        let bytes = src
            .get(at..at.saturating_add(len))
            .ok_or_else(|| RestoreError::Invalid {
                pid: p.pid,
                why: format!(
                    "parent page data at {:#x} is outside its pages file",
                    x.offset
                ),
            })?;
        from_parents.push((x.addr, bytes));
    }
    let uffd = if lazy.is_some() || std::env::var_os("UNDERSTUDY_NO_UFFD").is_some() {
        None
    } else {
        remote_uffd(&mut rs, pid)
    };
    match uffd {
        _ if lazy.is_some() => {
            if let Some(lz) = lazy {
                *done += lz.take_process(p, pid, &mut rs, parents)?;
            }
        }
        Some(u) => fill_with_uffd(pid, p, data, &from_parents, &u, opts, done, total)?,
        None => {
            write_pages(pid, data, &ranges, opts, done, total)?;
            for &(addr, bytes) in &from_parents {
                sys::mem::write_exact(pid, bytes, addr).pid(pid)?;
                *done += bytes.len() as u64;
            }
        }
    }
    for v in reprotect {
        rs.syscall(
            "mprotect",
            nr::MPROTECT,
            [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
        )
        .pid(pid)?;
    }

    tracing::debug!(
        "restore: pid {}: pages written at {:?}",
        p.pid,
        tr.elapsed()
    );
    // mm fields: brk, arg/env, auxv, exe.
    let mm = &p.mm;
    let auxv: Vec<u8> = mm.auxv.iter().flat_map(|v| v.to_ne_bytes()).collect();
    rs.put(SCR_AUXV, &auxv).pid(pid)?;
    let set_mm = |rs: &mut RemoteSyscalls| -> Result<i64> {
        // exe_fd -1: the exe link was set before the address space was rebuilt
        let b = mm_map_bytes(mm, scratch + SCR_AUXV, auxv.len(), u32::MAX);
        rs.put(SCR_MM, &b).pid(pid)?;
        rs.syscall_raw(nr::PRCTL, [35, 14, scratch + SCR_MM, b.len() as u64, 0, 0])
            .pid(pid)
    };
    let r = set_mm(&mut rs)?;
    if r < 0 {
        return Err(RestoreError::Invalid {
            pid: p.pid,
            why: format!("prctl(PR_SET_MM_MAP) failed: errno {}", -r),
        });
    }

    // File descriptors: the stub inherited the restorer's prepared files at base + id.
    let base = u(files_base);
    rs.syscall("close_range", nr::CLOSE_RANGE, [0, base - 1, 0, 0, 0, 0])
        .pid(pid)?;
    for f in &p.fds {
        let cloexec = if f.cloexec { 0o2000000 } else { 0 };
        rs.syscall(
            &format!("dup3 to fd {}", f.fd),
            nr::DUP3,
            [base + u64::from(f.file), u(f.fd), cloexec, 0, 0, 0],
        )
        .pid(pid)?;
    }
    rs.syscall(
        "close_range",
        nr::CLOSE_RANGE,
        [base, u64::from(u32::MAX), 0, 0, 0, 0],
    )
    .pid(pid)?;
    crate::evfd::register_epolls(&mut rs, p, pid, SCR_GEN)?;

    // cwd, root, umask.
    let put_path = |rs: &mut RemoteSyscalls, s: &str| -> Result<u64> {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        rs.put(SCR_PATH, &b).pid(pid)?;
        Ok(scratch + SCR_PATH)
    };
    if p.root != "/" {
        let a = put_path(&mut rs, &p.root)?;
        rs.syscall("chroot", nr::CHROOT, [a, 0, 0, 0, 0, 0])
            .pid(pid)?;
    }
    let a = put_path(&mut rs, &p.cwd)?;
    rs.syscall(&format!("chdir {}", p.cwd), nr::CHDIR, [a, 0, 0, 0, 0, 0])
        .pid(pid)?;
    rs.syscall("umask", nr::UMASK, [u64::from(p.umask), 0, 0, 0, 0, 0])
        .pid(pid)?;

    // Signal handlers.
    for (i, sa) in p.sigactions.iter().enumerate() {
        let sig = i as u64 + 1;
        if sig == 9 || sig == 19 {
            continue;
        }
        let b: Vec<u8> = [sa.handler, sa.flags, sa.restorer, sa.mask]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        rs.put(SCR_GEN, &b).pid(pid)?;
        rs.syscall(
            &format!("rt_sigaction({sig})"),
            nr::RT_SIGACTION,
            [sig, scratch + SCR_GEN, 0, 8, 0, 0],
        )
        .pid(pid)?;
    }
    // Interval timers.
    for (which, &(interval, value)) in p.itimers.iter().enumerate() {
        if value == 0 && interval == 0 {
            continue;
        }
        let b: Vec<u8> = [
            interval / 1_000_000,
            interval % 1_000_000,
            value / 1_000_000,
            value % 1_000_000,
        ]
        .iter()
        .flat_map(|v| v.to_ne_bytes())
        .collect();
        rs.put(SCR_GEN, &b).pid(pid)?;
        rs.syscall(
            "setitimer",
            nr::SETITIMER,
            [which as u64, scratch + SCR_GEN, 0, 0, 0, 0],
        )
        .pid(pid)?;
    }
    // Resource limits, within what this restorer may set.
    for (res, &(soft, hard)) in p.rlimits.iter().enumerate() {
        let b: Vec<u8> = [soft, hard].iter().flat_map(|v| v.to_ne_bytes()).collect();
        rs.put(SCR_GEN, &b).pid(pid)?;
        let r = rs
            .syscall_raw(nr::PRLIMIT64, [0, res as u64, scratch + SCR_GEN, 0, 0, 0])
            .pid(pid)?;
        if r < 0 {
            // Raising a hard limit needs CAP_SYS_RESOURCE: keep the current hard limit.
            rs.syscall(
                "prlimit64(get)",
                nr::PRLIMIT64,
                [0, res as u64, 0, scratch + SCR_GEN + 16, 0, 0],
            )
            .pid(pid)?;
            let mut cur = [0u8; 16];
            rs.get(SCR_GEN + 16, &mut cur).pid(pid)?;
            let cur_hard = u64::from_ne_bytes(cur[8..16].try_into().unwrap_or([0; 8]));
            let b: Vec<u8> = [soft.min(cur_hard), cur_hard]
                .iter()
                .flat_map(|v| v.to_ne_bytes())
                .collect();
            rs.put(SCR_GEN, &b).pid(pid)?;
            let r2 = rs
                .syscall_raw(nr::PRLIMIT64, [0, res as u64, scratch + SCR_GEN, 0, 0, 0])
                .pid(pid)?;
            tracing::warn!(
                "pid {}: rlimit {res} ({soft}, {hard}) not allowed; set ({}, {cur_hard}) -> {r2}",
                p.pid,
                soft.min(cur_hard)
            );
        }
    }

    // Seccomp filters (oldest first) before the threads, which inherit them; our own injected
    // calls are not filtered (PTRACE_O_SUSPEND_SECCOMP).
    if p.no_new_privs {
        rs.syscall("prctl(PR_SET_NO_NEW_PRIVS)", nr::PRCTL, [38, 1, 0, 0, 0, 0])
            .pid(pid)?;
    }
    for f in &p.seccomp_filters {
        if f.0.len() % 8 != 0 || f.0.len() > 4096 * 8 {
            return Err(RestoreError::Invalid {
                pid: p.pid,
                why: format!("seccomp filter of {} bytes", f.0.len()),
            });
        }
        rs.put(SCR_FILTER, &f.0).pid(pid)?;
        let mut prog = (f.0.len() as u64 / 8).to_ne_bytes().to_vec(); // u16 len + padding
        prog.extend_from_slice(&(scratch + SCR_FILTER).to_ne_bytes());
        rs.put(SCR_GEN, &prog).pid(pid)?;
        // SECCOMP_SET_MODE_FILTER = 1
        rs.syscall(
            "seccomp(SET_MODE_FILTER)",
            nr::SECCOMP,
            [1, 0, scratch + SCR_GEN, 0, 0, 0],
        )
        .pid(pid)?;
    }

    tracing::debug!("restore: pid {}: state set at {:?}", p.pid, tr.elapsed());
    // Threads, with their own TIDs (outer ones: see `new_outer_id`).
    let mut outer_tids = Vec::with_capacity(p.threads.len());
    outer_tids.push(pid);
    for t in &p.threads[1..] {
        let (tids, n) = set_tid_bytes(t.ns_tid, t.tid, pidns);
        rs.put(SCR_TID, &tids).pid(pid)?;
        let flags =
            CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
        let args = sys::pid::clone_args_bytes(flags, 0, scratch + SCR_TID, n);
        rs.put(SCR_GEN, &args).pid(pid)?;
        let r = rs
            .syscall_raw(
                nr::CLONE3,
                [scratch + SCR_GEN, sys::pid::CLONE_ARGS_SIZE, 0, 0, 0, 0],
            )
            .pid(pid)?;
        if r == -i64::from(libc::EEXIST) {
            return Err(RestoreError::PidTaken { pid: t.tid });
        }
        if r < 0 {
            return Err(RestoreError::Invalid {
                pid: p.pid,
                why: format!("clone3 of thread {} failed: errno {}", t.tid, -r),
            });
        }
        let tid = new_outer_id(&mut rs, t.tid, pidns)?;
        stubs.add_thread(tid);
        ptrace::wait_stop(tid).pid(t.tid)?;
        outer_tids.push(tid);
    }
    // Per-thread state that only the thread itself can set: rseq, alternate stack, pending
    // signals, credentials.
    for (i, t) in p.threads.iter().enumerate() {
        let tid = outer_tids[i];
        let mut own;
        let trs: &mut RemoteSyscalls = if i == 0 {
            &mut rs
        } else {
            own = RemoteSyscalls::new(tid, insn).pid(tid)?;
            &mut own
        };
        if !t.comm.is_empty() {
            let mut name = t.comm.as_bytes()[..t.comm.len().min(15)].to_vec();
            name.push(0);
            mem_put(tid, scratch + SCR_PATH, &name)?;
            // PR_SET_NAME = 15
            trs.syscall(
                "prctl(PR_SET_NAME)",
                nr::PRCTL,
                [15, scratch + SCR_PATH, 0, 0, 0, 0],
            )
            .pid(tid)?;
        }
        if t.clear_child_tid != 0 {
            trs.syscall(
                "set_tid_address",
                nr::SET_TID_ADDRESS,
                [t.clear_child_tid, 0, 0, 0, 0, 0],
            )
            .pid(tid)?;
        }
        if let Some(r) = t.rseq {
            trs.syscall(
                "rseq",
                nr::RSEQ,
                [r.ptr, u64::from(r.size), 0, u64::from(r.signature), 0, 0],
            )
            .pid(tid)?;
        }
        let (sp, flags, size) = t.sigaltstack;
        if flags & libc::SS_DISABLE == 0 {
            let b: Vec<u8> = [sp, 0, size].iter().flat_map(|v| v.to_ne_bytes()).collect();
            mem_put(tid, scratch + SCR_GEN, &b)?;
            trs.syscall(
                "sigaltstack",
                nr::SIGALTSTACK,
                [scratch + SCR_GEN, 0, 0, 0, 0, 0],
            )
            .pid(tid)?;
        }
        for si in &t.pending {
            let sig = i32::from_ne_bytes(si.0[..4].try_into().unwrap_or([0; 4]));
            mem_put(tid, scratch + SCR_PATH, &si.0)?;
            trs.syscall(
                "rt_tgsigqueueinfo",
                nr::RT_TGSIGQUEUEINFO,
                [u(p.ns_pid), u(t.ns_tid), u(sig), scratch + SCR_PATH, 0, 0],
            )
            .pid(tid)?;
        }
        if i == 0 {
            for si in &p.shared_pending {
                let sig = i32::from_ne_bytes(si.0[..4].try_into().unwrap_or([0; 4]));
                mem_put(tid, scratch + SCR_PATH, &si.0)?;
                trs.syscall(
                    "rt_sigqueueinfo",
                    nr::RT_SIGQUEUEINFO,
                    [u(p.ns_pid), u(sig), scratch + SCR_PATH, 0, 0, 0],
                )
                .pid(tid)?;
            }
        }
        let c = &p.creds;
        if c.uid != [0; 4] || c.gid != [0; 4] || !c.groups.is_empty() {
            let g: Vec<u8> = c.groups.iter().flat_map(|v| v.to_ne_bytes()).collect();
            mem_put(tid, scratch + SCR_PATH, &g)?;
            trs.syscall(
                "setgroups",
                nr::SETGROUPS,
                [c.groups.len() as u64, scratch + SCR_PATH, 0, 0, 0, 0],
            )
            .pid(tid)?;
            let (g0, g1, g2) = (
                u64::from(c.gid[0]),
                u64::from(c.gid[1]),
                u64::from(c.gid[2]),
            );
            trs.syscall("setresgid", nr::SETRESGID, [g0, g1, g2, 0, 0, 0])
                .pid(tid)?;
            let (u0, u1, u2) = (
                u64::from(c.uid[0]),
                u64::from(c.uid[1]),
                u64::from(c.uid[2]),
            );
            trs.syscall("setresuid", nr::SETRESUID, [u0, u1, u2, 0, 0, 0])
                .pid(tid)?;
        }
    }
    rs.finish().pid(pid)?;
    Ok(outer_tids)
}

/// `struct prctl_mm_map` for `PR_SET_MM_MAP` (`exe_fd` `u32::MAX` = leave the exe link).
fn mm_map_bytes(mm: &image::MmInfo, auxv: u64, auxv_len: usize, exe_fd: u32) -> Vec<u8> {
    let mut b: Vec<u8> = [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv,
    ]
    .iter()
    .flat_map(|v| v.to_ne_bytes())
    .collect();
    b.extend_from_slice(&u32::try_from(auxv_len).unwrap_or(0).to_ne_bytes());
    b.extend_from_slice(&exe_fd.to_ne_bytes());
    b
}

/// Points `/proc/PID/exe` at the dumped executable; must run while the stub's own exe is no
/// longer mapped. `PR_SET_MM_MAP` (needs `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`) rather
/// than `PR_SET_MM_EXE_FILE` (needs `CAP_SYS_RESOURCE`, which containers often drop); the
/// other fields are set to their final values here and again once memory is in place (with
/// the auxv). An executable that cannot be opened or set (deleted, replaced by a
/// non-executable file) keeps the stub's link, with a warning naming it.
fn set_exe(rs: &mut RemoteSyscalls, p: &Process, pid: i32, scratch: u64) -> Result<()> {
    if p.exe.is_empty() {
        return Ok(());
    }
    let fd = match open_remote(rs, &mut BTreeMap::new(), pid, scratch, &p.exe, 0) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(
                "pid {}: executable {} cannot be opened ({e}); /proc/{}/exe keeps the restorer's",
                p.pid,
                p.exe,
                p.pid
            );
            return Ok(());
        }
    };
    let b = mm_map_bytes(&p.mm, 0, 0, u32::try_from(fd).unwrap_or(u32::MAX));
    rs.put(SCR_MM, &b).pid(pid)?;
    // PR_SET_MM = 35, PR_SET_MM_MAP = 14
    let r = rs
        .syscall_raw(nr::PRCTL, [35, 14, scratch + SCR_MM, b.len() as u64, 0, 0])
        .pid(pid)?;
    if r < 0 {
        tracing::warn!(
            "pid {}: prctl(PR_SET_MM_MAP) with exe {} failed: errno {}; /proc/{}/exe keeps the restorer's",
            p.pid,
            p.exe,
            -r,
            p.pid
        );
    }
    rs.syscall("close", nr::CLOSE, [fd, 0, 0, 0, 0, 0])
        .pid(pid)?;
    Ok(())
}

fn open_remote(
    rs: &mut RemoteSyscalls,
    cache: &mut BTreeMap<(String, bool), u64>,
    pid: i32,
    scratch: u64,
    path: &str,
    flags: u64,
) -> Result<u64> {
    if let Some(&fd) = cache.get(&(path.to_string(), flags != 0)) {
        return Ok(fd);
    }
    let mut b = path.as_bytes().to_vec();
    b.push(0);
    rs.put(SCR_PATH, &b).pid(pid)?;
    let fd = rs
        .syscall(
            &format!("open {path}"),
            nr::OPENAT,
            [
                u(libc::AT_FDCWD),
                scratch + SCR_PATH,
                flags | 0o2000000,
                0,
                0,
                0,
            ],
        )
        .pid(pid)?;
    cache.insert((path.to_string(), flags != 0), fd);
    Ok(fd)
}

/// Creates a userfaultfd inside the target (injected) and takes it; `None` when the kernel
/// or the configuration refuses (the caller falls back to `process_vm_writev`).
fn remote_uffd(rs: &mut RemoteSyscalls, pid: i32) -> Option<sys::uffd_fill::RemoteUffd> {
    let fd = rs
        .syscall("userfaultfd", nr::USERFAULTFD, [0o2000000, 0, 0, 0, 0, 0])
        .ok()?;
    let got = sys::pid::pidfd_open(pid)
        .and_then(|pidfd| sys::pid::pidfd_getfd(&pidfd, i32::try_from(fd).unwrap_or(-1)));
    let _ = rs.syscall("close(userfaultfd)", nr::CLOSE, [fd, 0, 0, 0, 0, 0]);
    match got.and_then(sys::uffd_fill::RemoteUffd::new) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::debug!("pid {pid}: no userfaultfd fill ({e}); using process_vm_writev");
            None
        }
    }
}

/// Fills private anonymous mappings with `UFFDIO_COPY` (no zeroing of the new pages) and the
/// rest with `process_vm_writev`, on two threads. `from_parents` are pages of an incremental
/// image found in its parent chain (address, data).
#[allow(clippy::too_many_arguments)]
fn fill_with_uffd(
    pid: i32,
    p: &Process,
    data: &[u8],
    from_parents: &[(u64, &[u8])],
    uffd: &sys::uffd_fill::RemoteUffd,
    opts: &RestoreOptions,
    done: &mut u64,
    total: u64,
) -> Result<()> {
    const PIECE: u64 = 4 << 20;
    // (dst, source bytes, via uffd)
    let mut jobs: Vec<(u64, &[u8], bool)> = Vec::new();
    let slice = |at: u64, n: u64| -> Result<&[u8]> {
        let at = usize::try_from(at).unwrap_or(usize::MAX);
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        data.get(at..at.saturating_add(n))
            .ok_or_else(|| RestoreError::Invalid {
                pid,
                why: "page run outside the pages file".into(),
            })
    };
    let mut registered = Vec::new();
    for v in &p.vmas {
        if v.pages.is_empty() {
            continue;
        }
        let anon = matches!(v.kind, VmaKind::Anon { .. } | VmaKind::Stack);
        let via = anon && uffd.register(v.start, v.end - v.start).is_ok();
        if via {
            registered.push((v.start, v.end - v.start));
        }
        for r in v.pages.iter().filter(|r| !r.in_parent) {
            let mut off = 0u64;
            let len = r.npages * PAGE_SIZE;
            while off < len {
                let n = PIECE.min(len - off);
                jobs.push((r.vaddr + off, slice(r.offset + off, n)?, via));
                off += n;
            }
        }
    }
    let piece = usize::try_from(PIECE).unwrap_or(usize::MAX);
    // A piece from the parent chain may span adjacent mappings: split it at their bounds, so a
    // part in a registered mapping goes through UFFDIO_COPY (a plain write there would wait
    // for a missing-page handler that is not running).
    for &(addr, bytes) in from_parents {
        let end = addr + bytes.len() as u64;
        for v in p.vmas.iter().filter(|v| v.start < end && v.end > addr) {
            let (s0, e0) = (v.start.max(addr), v.end.min(end));
            let lo = usize::try_from(s0 - addr).unwrap_or(usize::MAX);
            let hi = usize::try_from(e0 - addr).unwrap_or(usize::MAX);
            let Some(sub) = bytes.get(lo..hi) else {
                continue;
            };
            let via = registered.contains(&(v.start, v.end - v.start));
            for (k, part) in sub.chunks(piece).enumerate() {
                jobs.push((s0 + (k * piece) as u64, part, via));
            }
        }
    }
    let bytes_total: u64 = jobs.iter().map(|j| j.1.len() as u64).sum();
    let run = |js: &[(u64, &[u8], bool)]| -> Result<()> {
        for &(dst, src, via) in js {
            if via {
                if let Err(e) = uffd.copy(dst, src) {
                    // Fall back for this piece (pages already copied are simply overwritten).
                    tracing::debug!("pid {pid}: {e}; falling back to process_vm_writev");
                    sys::mem::write_exact(pid, src, dst).pid(pid)?;
                }
            } else {
                sys::mem::write_exact(pid, src, dst).pid(pid)?;
            }
        }
        Ok(())
    };
    let half = jobs.len() / 2;
    let (a, b) = jobs.split_at(half);
    std::thread::scope(|s| {
        let h = s.spawn(|| run(b));
        let r = run(a);
        h.join()
            .unwrap_or_else(|_| {
                Err(RestoreError::Invalid {
                    pid,
                    why: "page writer panicked".into(),
                })
            })
            .and(r)
    })?;
    for (start, len) in registered {
        uffd.unregister(start, len).pid(pid)?;
    }
    *done += bytes_total;
    if let Some(pf) = &opts.progress {
        pf(*done, total);
    }
    Ok(())
}

/// Writes the pages with two threads when there is enough to share (page allocation in the
/// target dominates, and it runs in parallel on two CPUs).
fn write_pages(
    pid: i32,
    data: &[u8],
    ranges: &[RemoteRange],
    opts: &RestoreOptions,
    done: &mut u64,
    total: u64,
) -> Result<()> {
    let bytes: u64 = ranges.iter().map(|r| r.len).sum();
    let step = |rr: &[RemoteRange], d: &[u8]| sys::mem::write_vectored(pid, d, rr).pid(pid);
    if bytes < (32 << 20) || ranges.len() < 2 {
        step(ranges, data)?;
    } else {
        // Split at the range boundary nearest to half of the bytes.
        let mut acc = 0u64;
        let mut cut = 0;
        for (i, r) in ranges.iter().enumerate() {
            if acc >= bytes / 2 {
                cut = i;
                break;
            }
            acc += r.len;
        }
        if cut == 0 {
            // One huge range: split it.
            let r0 = ranges[0];
            let half = (r0.len / 2) & !(PAGE_SIZE - 1);
            let a = [RemoteRange {
                addr: r0.addr,
                len: half,
            }];
            let mut b = vec![RemoteRange {
                addr: r0.addr + half,
                len: r0.len - half,
            }];
            b.extend_from_slice(&ranges[1..]);
            let (d0, d1) = data.split_at(usize::try_from(half).unwrap_or(0));
            std::thread::scope(|s| {
                let h = s.spawn(|| step(&b, d1));
                let r = step(&a, d0);
                h.join()
                    .unwrap_or_else(|_| {
                        Err(RestoreError::Invalid {
                            pid,
                            why: "page writer panicked".into(),
                        })
                    })
                    .and(r)
            })?;
        } else {
            let (d0, d1) = data.split_at(usize::try_from(acc).unwrap_or(0));
            std::thread::scope(|s| {
                let h = s.spawn(|| step(&ranges[cut..], d1));
                let r = step(&ranges[..cut], d0);
                h.join()
                    .unwrap_or_else(|_| {
                        Err(RestoreError::Invalid {
                            pid,
                            why: "page writer panicked".into(),
                        })
                    })
                    .and(r)
            })?;
        }
    }
    *done += bytes;
    if let Some(pf) = &opts.progress {
        pf(*done, total);
    }
    Ok(())
}

fn mem_put(tid: i32, addr: u64, data: &[u8]) -> Result<()> {
    sys::mem::write_exact(tid, data, addr).pid(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(rax: i64, orig: i64, rip: u64) -> UserRegs {
        UserRegs {
            rax: i64_to_reg(rax),
            orig_rax: i64_to_reg(orig),
            rip,
            ..Default::default()
        }
    }

    #[test]
    fn interrupted_calls_are_reissued_and_finished_ones_left_alone() {
        for code in [-512, -513, -514, -516] {
            let mut r = regs(code, 0, 0x1002);
            restart_syscall(&mut r);
            assert_eq!(
                (r.rax, r.rip, reg_to_i64(r.orig_rax)),
                (0, 0x1000, -1),
                "code {code}"
            );
        }
        // A call that returned (or a thread stopped in user space) keeps its registers.
        let mut r = regs(5, 0, 0x1002);
        restart_syscall(&mut r);
        assert_eq!((r.rax, r.rip, reg_to_i64(r.orig_rax)), (5, 0x1002, -1));
        let mut r = regs(-512, -1, 0x2000);
        restart_syscall(&mut r);
        assert_eq!((reg_to_i64(r.rax), r.rip), (-512, 0x2000));
    }
}
