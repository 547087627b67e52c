//! Reading and writing the files of an image, with magic, version, CRC32C and size caps.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::model::{
    PagesPart, PagesRef, Tree, INCREMENTAL_FORMAT_VERSION, MAX_CHAIN, MAX_PAGES_PARTS,
    PARTS_FORMAT_VERSION, SUPPORTED_VERSIONS, ZOMBIES_FORMAT_VERSION,
};

pub const TREE_FILE: &str = "tree.img";
pub const TREE_MAGIC: [u8; 8] = *b"USTDTREE";
pub const PAGES_MAGIC: [u8; 8] = *b"USTDPAGE";
/// Header of `tree.img`.
pub const TREE_HEADER_LEN: u64 = 32;
/// Header of a pages file; data starts page-aligned after it.
pub const PAGES_HEADER_LEN: u64 = 4096;
/// Largest `tree.img` payload accepted.
pub const TREE_PAYLOAD_CAP: u64 = 256 << 20;
/// Largest pages file accepted (1 TiB).
pub const PAGES_DATA_CAP: u64 = 1 << 40;

/// Everything that can be wrong with an image file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{file}: {err}")]
    Io { file: PathBuf, err: std::io::Error },
    #[error("{file}: truncated: {what}")]
    Truncated { file: PathBuf, what: String },
    #[error("{file}: corrupt: {what}")]
    Corrupt { file: PathBuf, what: String },
    #[error("{file}: format version {version} is not supported (this build reads {supported:?})")]
    Version {
        file: PathBuf,
        version: u32,
        supported: &'static [u32],
    },
    #[error("{file}: parent image {parent}: {why}")]
    Parent {
        file: PathBuf,
        parent: PathBuf,
        why: String,
    },
    #[error("{file}: {what} of {size} bytes exceeds the limit of {cap} bytes")]
    TooLarge {
        file: PathBuf,
        what: &'static str,
        size: u64,
        cap: u64,
    },
}

pub type Result<T> = std::result::Result<T, ImageError>;

fn io_err(file: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |err| ImageError::Io {
        file: file.to_path_buf(),
        err,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Encodes a tree into the bytes of `tree.img`.
pub fn encode_tree(tree: &Tree) -> Vec<u8> {
    let payload = serde_json::to_vec(tree).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 32);
    out.extend_from_slice(&TREE_MAGIC);
    out.extend_from_slice(&tree.format_version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[..28]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes the bytes of `tree.img`; `file` names it in errors.
pub fn decode_tree(file: &Path, bytes: &[u8]) -> Result<Tree> {
    let f = || file.to_path_buf();
    if bytes.len() < 32 {
        return Err(ImageError::Truncated {
            file: f(),
            what: format!("{} bytes, the header alone is 32", bytes.len()),
        });
    }
    if bytes[..8] != TREE_MAGIC {
        return Err(ImageError::Corrupt {
            file: f(),
            what: "bad magic (not a tree.img)".into(),
        });
    }
    if crc32c::crc32c(&bytes[..28]) != u32_at(bytes, 28) {
        return Err(ImageError::Corrupt {
            file: f(),
            what: "header checksum mismatch".into(),
        });
    }
    let version = u32_at(bytes, 8);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(ImageError::Version {
            file: f(),
            version,
            supported: SUPPORTED_VERSIONS,
        });
    }
    let len = u64_at(bytes, 16);
    if len > TREE_PAYLOAD_CAP {
        return Err(ImageError::TooLarge {
            file: f(),
            what: "payload",
            size: len,
            cap: TREE_PAYLOAD_CAP,
        });
    }
    let have = bytes.len() as u64 - 32;
    if have < len {
        return Err(ImageError::Truncated {
            file: f(),
            what: format!("payload has {have} of {len} bytes"),
        });
    }
    if have > len {
        return Err(ImageError::Corrupt {
            file: f(),
            what: format!("{} bytes after the payload", have - len),
        });
    }
    let payload = &bytes[32..];
    let want = u32_at(bytes, 24);
    let got = crc32c::crc32c(payload);
    if want != got {
        return Err(ImageError::Corrupt {
            file: f(),
            what: format!("payload checksum {got:#010x}, header says {want:#010x}"),
        });
    }
    let tree: Tree = serde_json::from_slice(payload).map_err(|e| ImageError::Corrupt {
        file: f(),
        what: format!("payload does not decode: {e}"),
    })?;
    if tree.format_version != version {
        return Err(ImageError::Corrupt {
            file: f(),
            what: "payload and header disagree on the version".into(),
        });
    }
    if (version == PARTS_FORMAT_VERSION) != tree.has_parts() {
        return Err(ImageError::Corrupt {
            file: f(),
            what: format!(
                "format version {version} {} pages split over part files",
                if tree.has_parts() { "with" } else { "without" }
            ),
        });
    }
    for p in &tree.processes {
        check_parts(&p.pages).map_err(|what| ImageError::Corrupt {
            file: f(),
            what: format!("pid {}: {what}", p.pid),
        })?;
    }
    if version == PARTS_FORMAT_VERSION {
        // Zombies and a parent may come with parts in any combination.
        check_zombies(&tree).map_err(|what| ImageError::Corrupt { file: f(), what })?;
        return Ok(tree);
    }
    if (version == ZOMBIES_FORMAT_VERSION) == tree.zombies.is_empty() {
        return Err(ImageError::Corrupt {
            file: f(),
            what: format!(
                "format version {version} with {} zombies",
                tree.zombies.len()
            ),
        });
    }
    if version != ZOMBIES_FORMAT_VERSION
        && (version == INCREMENTAL_FORMAT_VERSION) != tree.parent.is_some()
    {
        return Err(ImageError::Corrupt {
            file: f(),
            what: format!(
                "format version {version} with {} parent",
                if tree.parent.is_some() { "a" } else { "no" }
            ),
        });
    }
    check_zombies(&tree).map_err(|what| ImageError::Corrupt { file: f(), what })?;
    Ok(tree)
}

/// Part files of a process's pages: 2 to [`MAX_PAGES_PARTS`], the first named like the ref,
/// plain names, every part but the last a whole number of chunks, lengths and CRC32C adding
/// up to the ref's.
fn check_parts(r: &PagesRef) -> std::result::Result<(), String> {
    if r.parts.is_empty() {
        return Ok(());
    }
    let n = r.parts.len();
    if !(2..=MAX_PAGES_PARTS).contains(&n) {
        return Err(format!(
            "pages {}: {n} part files (2 to {MAX_PAGES_PARTS} allowed)",
            r.file
        ));
    }
    if r.parts[0].file != r.file {
        return Err(format!(
            "pages {}: first part file is named {:?}",
            r.file, r.parts[0].file
        ));
    }
    let (mut len, mut crc) = (0u64, 0u32);
    for (i, p) in r.parts.iter().enumerate() {
        if p.file.contains('/') || p.file.starts_with('.') || p.file.is_empty() {
            return Err(format!("pages {}: bad part file name {:?}", r.file, p.file));
        }
        if r.parts[..i].iter().any(|q| q.file == p.file) {
            return Err(format!(
                "pages {}: part file {} named twice",
                r.file, p.file
            ));
        }
        if i + 1 < n && (p.len == 0 || !p.len.is_multiple_of(PAGES_CHUNK)) {
            return Err(format!(
                "pages {}: part {} ({}) holds {} bytes, not a whole number of {PAGES_CHUNK}-byte chunks",
                r.file, i, p.file, p.len
            ));
        }
        len = len
            .checked_add(p.len)
            .ok_or_else(|| format!("pages {}: part lengths overflow", r.file))?;
        crc = crate::crc::crc32c_combine(crc, p.crc32c, p.len);
    }
    if len != r.len || crc != r.crc32c {
        return Err(format!(
            "pages {}: parts hold {len} bytes crc {crc:#010x}, the whole is {} bytes crc {:#010x}",
            r.file, r.len, r.crc32c
        ));
    }
    Ok(())
}

/// Zombies: each under a live process of the tree, its pid used once, a real end.
fn check_zombies(tree: &Tree) -> std::result::Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for p in &tree.processes {
        seen.insert(p.pid);
    }
    for z in &tree.zombies {
        if !tree.processes.iter().any(|p| p.pid == z.ppid) {
            return Err(format!(
                "zombie {}: its parent {} is not a process of the tree",
                z.pid, z.ppid
            ));
        }
        if !seen.insert(z.pid) {
            return Err(format!("zombie {}: pid used twice", z.pid));
        }
        match z.end {
            crate::model::ExitHow::Exited { code } if !(0..=255).contains(&code) => {
                return Err(format!("zombie {}: exit code {code} out of 0..=255", z.pid));
            }
            crate::model::ExitHow::Killed { signal, .. } if !(1..=64).contains(&signal) => {
                return Err(format!("zombie {}: signal {signal} out of 1..=64", z.pid));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes `tree.img` into `dir` (through a temporary file renamed into place).
/// The file is fsynced before the rename (the directory is not: see [`PendingTree::commit`]).
pub fn write_tree(dir: &Path, tree: &Tree) -> Result<()> {
    write_tree_pending(dir, tree)?.finish(false)
}

/// The first half of [`write_tree`]: `tree.img` encoded and written to its temporary file
/// (`.tree.img.tmp`, in the page cache), not yet fsynced nor in place; [`PendingTree::commit`]
/// does the rest. A full dump writes it while the tree is frozen (so an error there leaves the
/// tree running) and commits it while the killed tree is reaped.
pub fn write_tree_pending(dir: &Path, tree: &Tree) -> Result<PendingTree> {
    let tmp = dir.join(".tree.img.tmp");
    let bytes = encode_tree(tree);
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&bytes).map_err(io_err(&tmp))?;
    Ok(PendingTree {
        file: f,
        tmp,
        path: dir.join(TREE_FILE),
        dir: dir.to_path_buf(),
    })
}

/// `tree.img` written to its temporary file, waiting for [`PendingTree::commit`]. Dropped
/// without a commit, the temporary file stays behind (readers ignore it; the dump's cleanup
/// removes the directory).
#[derive(Debug)]
pub struct PendingTree {
    file: File,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

impl PendingTree {
    /// Fsyncs the temporary file, renames it to `tree.img` and fsyncs the directory, so a
    /// reader sees either no `tree.img` or a whole one, and once this returns the name and
    /// the content are on stable storage.
    pub fn commit(self) -> Result<()> {
        self.finish(true)
    }

    fn finish(self, sync_dir: bool) -> Result<()> {
        self.file.sync_all().map_err(io_err(&self.tmp))?;
        drop(self.file);
        std::fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        if sync_dir {
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
        }
        Ok(())
    }
}

/// Reads and checks `tree.img` of `dir`.
pub fn read_tree(dir: &Path) -> Result<Tree> {
    let path = dir.join(TREE_FILE);
    let f = File::open(&path).map_err(io_err(&path))?;
    let size = f.metadata().map_err(io_err(&path))?.len();
    if size > TREE_PAYLOAD_CAP + TREE_HEADER_LEN {
        return Err(ImageError::TooLarge {
            file: path,
            what: "file",
            size,
            cap: TREE_PAYLOAD_CAP + TREE_HEADER_LEN,
        });
    }
    let mut bytes = Vec::new();
    f.take(TREE_PAYLOAD_CAP + TREE_HEADER_LEN)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    decode_tree(&path, &bytes)
}

/// CRC32C of a whole `tree.img` file (what a child image records as `parent_digest`).
pub fn tree_digest(dir: &Path) -> Result<u32> {
    let path = dir.join(TREE_FILE);
    let f = File::open(&path).map_err(io_err(&path))?;
    let mut bytes = Vec::new();
    f.take(TREE_PAYLOAD_CAP + TREE_HEADER_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(&path))?;
    Ok(crc32c::crc32c(&bytes))
}

/// Where the parent of the image in `dir` lives (`parent` is relative to `dir` or absolute).
pub fn parent_dir(dir: &Path, tree: &Tree) -> Option<PathBuf> {
    tree.parent.as_ref().map(|p| dir.join(p))
}

/// Reads the image in `dir` and every ancestor it is incremental against, newest first. Each
/// link is fully checked (magic, version, CRC) and must match the digest its child recorded; a
/// missing or mismatched parent is an [`ImageError::Parent`] naming it.
pub fn read_chain(dir: &Path) -> Result<Vec<(PathBuf, Tree)>> {
    let mut out = vec![(dir.to_path_buf(), read_tree(dir)?)];
    loop {
        let (cdir, child) = match out.last() {
            Some((d, t)) => (d.clone(), t.clone()),
            None => return Ok(out),
        };
        let Some(pdir) = parent_dir(&cdir, &child) else {
            return Ok(out);
        };
        let perr = |why: String| ImageError::Parent {
            file: cdir.join(TREE_FILE),
            parent: pdir.clone(),
            why,
        };
        if out.len() >= MAX_CHAIN {
            return Err(perr(format!("chain longer than {MAX_CHAIN} images")));
        }
        if !pdir.join(TREE_FILE).exists() {
            return Err(perr("missing (no tree.img there)".into()));
        }
        let ptree = read_tree(&pdir).map_err(|e| perr(e.to_string()))?;
        let digest = tree_digest(&pdir).map_err(|e| perr(e.to_string()))?;
        if Some(digest) != child.parent_digest {
            return Err(perr(format!(
                "mismatched: its tree.img has CRC32C {digest:#010x}, this image was dumped against {}",
                child
                    .parent_digest
                    .map_or_else(|| "an unrecorded one".to_string(), |d| format!("{d:#010x}"))
            )));
        }
        if ptree.root_pid != child.root_pid {
            return Err(perr(format!(
                "mismatched: root pid {}, this image's is {}",
                ptree.root_pid, child.root_pid
            )));
        }
        out.push((pdir, ptree));
    }
}

/// Version of the pages files this build writes. Version 4 adds a table of per-chunk CRC32C
/// after the data (so a lazy restore can verify each chunk as it serves it); 3 is skipped (it
/// names incremental `tree.img` files). Versions 1 and 2 (no chunk table) are still read.
pub const PAGES_FORMAT_VERSION: u32 = 4;
/// Pages file versions this build reads.
pub const PAGES_SUPPORTED_VERSIONS: &[u32] = &[1, 2, PAGES_FORMAT_VERSION];
/// Bytes of data covered by one entry of a version-4 chunk table (the last chunk may be short).
pub const PAGES_CHUNK: u64 = 256 << 10;
/// Largest chunk size a reader accepts.
const PAGES_CHUNK_CAP: u64 = 64 << 20;

fn pages_header(data_len: u64, crc: u32, table_crc: u32) -> Vec<u8> {
    let mut h = vec![0u8; 4096]; // PAGES_HEADER_LEN
    h[..8].copy_from_slice(&PAGES_MAGIC);
    h[8..12].copy_from_slice(&PAGES_FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&data_len.to_le_bytes());
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    let hcrc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&hcrc.to_le_bytes());
    let chunk = u32::try_from(PAGES_CHUNK).unwrap_or(u32::MAX);
    h[32..36].copy_from_slice(&chunk.to_le_bytes());
    h[36..40].copy_from_slice(&table_crc.to_le_bytes());
    let hcrc2 = crc32c::crc32c(&h[..40]);
    h[40..44].copy_from_slice(&hcrc2.to_le_bytes());
    h
}

/// Number of chunks of `chunk` bytes covering `len` bytes.
fn chunk_count(len: u64, chunk: u64) -> u64 {
    len.div_ceil(chunk.max(1))
}

/// The per-chunk CRC32C table of a version-4 pages file (see [`read_chunk_table`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkTable {
    /// bytes per chunk
    pub chunk: u64,
    /// bytes of data the table covers
    pub len: u64,
    /// CRC32C of each chunk, in data order
    pub crcs: Vec<u32>,
}

impl ChunkTable {
    /// Byte range `[start, end)` of chunk `i` in the data.
    pub fn range(&self, i: usize) -> (u64, u64) {
        let s = i as u64 * self.chunk;
        (s, (s + self.chunk).min(self.len))
    }

    /// Checks `data`, the bytes of chunk `i`, against the table; the error names `file`.
    pub fn check(&self, file: &Path, i: usize, data: &[u8]) -> Result<()> {
        let (s, e) = self.range(i);
        let Some(&want) = self.crcs.get(i) else {
            return Err(ImageError::Corrupt {
                file: file.to_path_buf(),
                what: format!(
                    "chunk {i} is beyond the chunk table ({} chunks)",
                    self.crcs.len()
                ),
            });
        };
        if data.len() as u64 != e.saturating_sub(s) {
            return Err(ImageError::Truncated {
                file: file.to_path_buf(),
                what: format!(
                    "chunk {i} (data bytes {s}..{e}) has only {} bytes",
                    data.len()
                ),
            });
        }
        let got = crc32c::crc32c(data);
        if got != want {
            return Err(ImageError::Corrupt {
                file: file.to_path_buf(),
                what: format!(
                    "page data checksum of chunk {i} (data bytes {s}..{e}) is {got:#010x}, expected {want:#010x}"
                ),
            });
        }
        Ok(())
    }
}

/// Appends page data to a new pages file, computing its CRC32C on the way.
#[derive(Debug)]
pub struct PagesWriter {
    path: PathBuf,
    name: String,
    file: File,
    len: u64,
    crc: u32,
    /// CRC32C of every full chunk written so far
    chunks: Vec<u32>,
    /// CRC32C and length of the chunk being filled
    part: (u32, u64),
}

impl PagesWriter {
    /// Creates `dir/name`.
    /// Creates `dir/name`, or reuses a file of that name whose space was reserved beforehand
    /// (see [`reserve_pages`]): its content is overwritten and its length set by `finish`.
    pub fn create(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        // Read and write: a shared writable mapping of it (`map_data`) needs both.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all_at(&pages_header(0, 0, 0), 0)
            .map_err(io_err(&path))?;
        Ok(PagesWriter {
            path,
            name: name.to_string(),
            file,
            len: 0,
            crc: 0,
            chunks: Vec::new(),
            part: (0, 0),
        })
    }

    /// Current length of the data part (the offset the next write lands at).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        // One pass: the chunk CRCs, combined into the running CRC of the whole data.
        let crc = self.feed_chunks(data, self.crc);
        self.put(data, crc)
    }

    /// Appends `data` whose running CRC32C (over all data so far, this included) the caller
    /// already computed, e.g. on another thread of a copy pipeline. The chunk table costs one
    /// more CRC pass over `data` here.
    pub fn write_checksummed(&mut self, data: &[u8], running_crc: u32) -> Result<()> {
        self.feed_chunks(data, 0);
        self.put(data, running_crc)
    }

    /// Adds `data` to the chunk CRCs; returns `crc` extended by `data`.
    fn feed_chunks(&mut self, mut data: &[u8], mut crc: u32) -> u32 {
        while !data.is_empty() {
            let room = usize::try_from(PAGES_CHUNK - self.part.1).unwrap_or(usize::MAX);
            let n = room.min(data.len());
            let piece = crc32c::crc32c(&data[..n]);
            self.part.0 = crate::crc::crc32c_combine(self.part.0, piece, n as u64);
            self.part.1 += n as u64;
            crc = crate::crc::crc32c_combine(crc, piece, n as u64);
            if self.part.1 == PAGES_CHUNK {
                self.chunks.push(self.part.0);
                self.part = (0, 0);
            }
            data = &data[n..];
        }
        crc
    }

    fn put(&mut self, data: &[u8], running_crc: u32) -> Result<()> {
        self.crc = running_crc;
        self.file
            .write_all_at(data, PAGES_HEADER_LEN + self.len)
            .map_err(io_err(&self.path))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Writes `data` at data offset `offset` without appending (for parallel writers sharing
    /// this writer); the caller then records the total with [`Self::set_written`].
    pub fn write_data_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file
            .write_all_at(data, PAGES_HEADER_LEN + offset)
            .map_err(io_err(&self.path))
    }

    /// Makes the data part at least `len` bytes long and maps it shared and writable, for
    /// copies straight into the file's pages (pieces then recorded with
    /// [`Self::record_written`], as after [`Self::write_data_at`]). `finish` sets the exact length.
    pub fn map_data(&self, len: u64) -> Result<sys::mem::SharedFileMap> {
        let size = self.file.metadata().map_err(io_err(&self.path))?.len();
        if size < PAGES_HEADER_LEN + len {
            self.file
                .set_len(PAGES_HEADER_LEN + len)
                .map_err(io_err(&self.path))?;
        }
        sys::mem::SharedFileMap::map(&self.file, PAGES_HEADER_LEN, len).map_err(|e| {
            ImageError::Io {
                file: self.path.clone(),
                err: std::io::Error::other(e.to_string()),
            }
        })
    }

    /// Bytes of data the file can hold without growing (its length past the header; 0 when
    /// it cannot be told).
    pub fn capacity(&self) -> u64 {
        self.file
            .metadata()
            .map_or(0, |m| m.len().saturating_sub(PAGES_HEADER_LEN))
    }

    /// Whether the file lives on tmpfs.
    pub fn on_tmpfs(&self) -> bool {
        sys::files::is_tmpfs(&self.file)
    }

    /// Records, in data order, pieces written with [`Self::write_data_at`]: each its CRC32C
    /// and length; a piece must not cross a [`PAGES_CHUNK`] boundary of the data.
    pub fn record_written(&mut self, pieces: &[(u32, u64)]) -> Result<()> {
        for &(c, n) in pieces {
            if n > PAGES_CHUNK - self.part.1 {
                return Err(ImageError::Corrupt {
                    file: self.path.clone(),
                    what: format!(
                        "internal: a written piece of {n} bytes at data offset {} crosses a chunk",
                        self.len
                    ),
                });
            }
            self.part.0 = crate::crc::crc32c_combine(self.part.0, c, n);
            self.part.1 += n;
            self.crc = crate::crc::crc32c_combine(self.crc, c, n);
            self.len += n;
            if self.part.1 == PAGES_CHUNK {
                self.chunks.push(self.part.0);
                self.part = (0, 0);
            }
        }
        Ok(())
    }

    /// Writes the final header, flushes the file to stable storage and returns the reference
    /// `tree.img` keeps.
    pub fn finish_synced(self) -> Result<PagesRef> {
        let file = self.file.try_clone().map_err(io_err(&self.path))?;
        let path = self.path.clone();
        let r = self.finish()?;
        file.sync_all().map_err(io_err(&path))?;
        Ok(r)
    }

    /// Writes the final header and returns the reference `tree.img` keeps.
    pub fn finish(mut self) -> Result<PagesRef> {
        if self.part.1 > 0 {
            self.chunks.push(self.part.0);
        }
        let table: Vec<u8> = self.chunks.iter().flat_map(|c| c.to_le_bytes()).collect();
        self.file
            .set_len(PAGES_HEADER_LEN + self.len + table.len() as u64)
            .map_err(io_err(&self.path))?;
        self.file
            .write_all_at(&table, PAGES_HEADER_LEN + self.len)
            .map_err(io_err(&self.path))?;
        self.file
            .write_all_at(&pages_header(self.len, self.crc, crc32c::crc32c(&table)), 0)
            .map_err(io_err(&self.path))?;
        Ok(PagesRef {
            file: self.name,
            len: self.len,
            crc32c: self.crc,
            parts: Vec::new(),
        })
    }
}

/// Reserves space for about `bytes` of page data in `dir/name` before a dump, with `reserve`
/// (e.g. `fallocate`) applied to the new file: the page cache (or blocks) is allocated while
/// the tree still runs, so the frozen copy only has to fill it.
pub fn reserve_pages(
    dir: &Path,
    name: &str,
    bytes: u64,
    reserve: impl FnOnce(&File, u64) -> std::io::Result<()>,
) -> Result<()> {
    let path = dir.join(name);
    let file = File::create(&path).map_err(io_err(&path))?;
    reserve(&file, PAGES_HEADER_LEN + bytes).map_err(io_err(&path))
}

/// Checks a pages file header against its reference and returns the open file.
pub fn open_pages(dir: &Path, r: &PagesRef) -> Result<File> {
    if r.file.contains('/') || r.file.starts_with('.') {
        return Err(ImageError::Corrupt {
            file: dir.join(TREE_FILE),
            what: format!("bad pages file name {:?}", r.file),
        });
    }
    let path = dir.join(&r.file);
    let f = File::open(&path).map_err(io_err(&path))?;
    let size = f.metadata().map_err(io_err(&path))?.len();
    if size < PAGES_HEADER_LEN {
        return Err(ImageError::Truncated {
            file: path,
            what: format!("{size} bytes, the header alone is 4096"),
        });
    }
    let mut h = vec![0u8; 44];
    f.read_exact_at(&mut h, 0).map_err(io_err(&path))?;
    if h[..8] != PAGES_MAGIC {
        return Err(ImageError::Corrupt {
            file: path,
            what: "bad magic (not a pages file)".into(),
        });
    }
    if crc32c::crc32c(&h[..28]) != u32_at(&h, 28) {
        return Err(ImageError::Corrupt {
            file: path,
            what: "header checksum mismatch".into(),
        });
    }
    let version = u32_at(&h, 8);
    if !PAGES_SUPPORTED_VERSIONS.contains(&version) {
        return Err(ImageError::Version {
            file: path,
            version,
            supported: PAGES_SUPPORTED_VERSIONS,
        });
    }
    let mut table_len = 0;
    if version >= 4 {
        if crc32c::crc32c(&h[..40]) != u32_at(&h, 40) {
            return Err(ImageError::Corrupt {
                file: path,
                what: "chunk table header checksum mismatch".into(),
            });
        }
        let chunk = u64::from(u32_at(&h, 32));
        if chunk == 0 || chunk % 4096 != 0 || chunk > PAGES_CHUNK_CAP {
            return Err(ImageError::Corrupt {
                file: path,
                what: format!(
                    "chunk size {chunk} is not a multiple of 4096 up to {PAGES_CHUNK_CAP}"
                ),
            });
        }
        table_len = chunk_count(u64_at(&h, 16), chunk) * 4;
    }
    let len = u64_at(&h, 16);
    if len > PAGES_DATA_CAP {
        return Err(ImageError::TooLarge {
            file: path,
            what: "page data",
            size: len,
            cap: PAGES_DATA_CAP,
        });
    }
    if len != r.len || u32_at(&h, 24) != r.crc32c {
        return Err(ImageError::Corrupt {
            file: path,
            what: format!(
                "header says {len} bytes crc {:#010x}, tree.img says {} bytes crc {:#010x}",
                u32_at(&h, 24),
                r.len,
                r.crc32c
            ),
        });
    }
    if size - PAGES_HEADER_LEN < len {
        return Err(ImageError::Truncated {
            file: path,
            what: format!("data has {} of {len} bytes", size - PAGES_HEADER_LEN),
        });
    }
    if size - PAGES_HEADER_LEN - len < table_len {
        return Err(ImageError::Truncated {
            file: path,
            what: format!(
                "chunk table has {} of {table_len} bytes",
                size - PAGES_HEADER_LEN - len
            ),
        });
    }
    Ok(f)
}

/// Reads and checks the chunk table of a pages file opened with [`open_pages`]; `None` for
/// versions 1 and 2, which have none (verify their whole data with [`check_pages_data`]).
pub fn read_chunk_table(dir: &Path, r: &PagesRef, f: &File) -> Result<Option<ChunkTable>> {
    let path = dir.join(&r.file);
    let mut h = vec![0u8; 44];
    f.read_exact_at(&mut h, 0).map_err(io_err(&path))?;
    if u32_at(&h, 8) < 4 {
        return Ok(None);
    }
    if crc32c::crc32c(&h[..40]) != u32_at(&h, 40) || u64_at(&h, 16) != r.len {
        return Err(ImageError::Corrupt {
            file: path,
            what: "chunk table header changed since the file was opened".into(),
        });
    }
    let chunk = u64::from(u32_at(&h, 32)).max(4096);
    let n = chunk_count(r.len, chunk);
    let bytes = usize::try_from(n * 4).map_err(|_| ImageError::TooLarge {
        file: path.clone(),
        what: "chunk table",
        size: n * 4,
        cap: PAGES_DATA_CAP / 4096,
    })?;
    let mut t = vec![0u8; bytes];
    f.read_exact_at(&mut t, PAGES_HEADER_LEN + r.len)
        .map_err(|e| ImageError::Truncated {
            file: path.clone(),
            what: format!("chunk table of {bytes} bytes: {e}"),
        })?;
    let got = crc32c::crc32c(&t);
    if got != u32_at(&h, 36) {
        return Err(ImageError::Corrupt {
            file: path,
            what: format!(
                "chunk table checksum {got:#010x}, expected {:#010x}",
                u32_at(&h, 36)
            ),
        });
    }
    Ok(Some(ChunkTable {
        chunk,
        len: r.len,
        crcs: t.chunks_exact(4).map(|c| u32_at(c, 0)).collect(),
    }))
}

/// Name of part `k` of process `pid`'s pages: `pages-PID.img` for the first, then
/// `pages-PID.K.img`.
pub fn pages_part_name(pid: i32, k: usize) -> String {
    if k == 0 {
        format!("pages-{pid}.img")
    } else {
        format!("pages-{pid}.{k}.img")
    }
}

/// The reference to data written as `parts` (single-file references, in data order, as
/// [`PagesWriter::finish`] returns them): the part itself when there is one, else the whole
/// with its [`PagesRef::parts`].
pub fn join_parts(mut parts: Vec<PagesRef>) -> PagesRef {
    if parts.len() <= 1 {
        return parts.pop().unwrap_or_default();
    }
    let (mut len, mut crc) = (0u64, 0u32);
    for p in &parts {
        len += p.len;
        crc = crate::crc::crc32c_combine(crc, p.crc32c, p.len);
    }
    PagesRef {
        file: parts[0].file.clone(),
        len,
        crc32c: crc,
        parts: parts
            .into_iter()
            .map(|p| PagesPart {
                file: p.file,
                len: p.len,
                crc32c: p.crc32c,
            })
            .collect(),
    }
}

/// Opens and checks every file of a pages reference (one, or each part): `(data offset,
/// single-file reference, file)` in data order. The first missing or damaged part is named.
pub fn open_pages_parts(dir: &Path, r: &PagesRef) -> Result<Vec<(u64, PagesRef, File)>> {
    check_parts(r).map_err(|what| ImageError::Corrupt {
        file: dir.join(TREE_FILE),
        what,
    })?;
    r.pieces()
        .into_iter()
        .map(|(o, p)| {
            let f = open_pages(dir, &p)?;
            Ok((o, p, f))
        })
        .collect()
}

/// Verifies the data CRC of a pages file given its data bytes (all parts, back to back; each
/// part is checked against its own CRC so that an error names the damaged part file).
pub fn check_pages_data(dir: &Path, r: &PagesRef, data: &[u8]) -> Result<()> {
    if !r.parts.is_empty() {
        if data.len() as u64 != r.len {
            return Err(ImageError::Corrupt {
                file: dir.join(&r.file),
                what: format!("{} bytes of page data, expected {}", data.len(), r.len),
            });
        }
        for (o, p) in r.pieces() {
            let s = usize::try_from(o).unwrap_or(usize::MAX);
            let e = usize::try_from(o + p.len).unwrap_or(usize::MAX);
            check_pages_data(dir, &p, data.get(s..e).unwrap_or(&[]))?;
        }
        return Ok(());
    }
    let got = crc32c::crc32c(data);
    if got != r.crc32c || data.len() as u64 != r.len {
        return Err(ImageError::Corrupt {
            file: dir.join(&r.file),
            what: format!(
                "page data checksum {got:#010x}, expected {:#010x}",
                r.crc32c
            ),
        });
    }
    Ok(())
}

/// Reads a whole pages file's data (bounded by its checked header) and verifies it; for
/// `inspect --verify` and tests. Restore maps the file instead.
pub fn read_pages(dir: &Path, r: &PagesRef) -> Result<Vec<u8>> {
    if !r.parts.is_empty() {
        check_parts(r).map_err(|what| ImageError::Corrupt {
            file: dir.join(TREE_FILE),
            what,
        })?;
        let mut all = Vec::new();
        for (_, p) in r.pieces() {
            all.extend_from_slice(&read_pages(dir, &p)?);
        }
        check_pages_data(dir, r, &all)?;
        return Ok(all);
    }
    let f = open_pages(dir, r)?;
    let path = dir.join(&r.file);
    let len = usize::try_from(r.len).map_err(|_| ImageError::TooLarge {
        file: path.clone(),
        what: "page data",
        size: r.len,
        cap: PAGES_DATA_CAP,
    })?;
    let mut data = vec![0u8; len];
    f.read_exact_at(&mut data, PAGES_HEADER_LEN)
        .map_err(io_err(&path))?;
    check_pages_data(dir, r, &data)?;
    if let Some(t) = read_chunk_table(dir, r, &f)? {
        for i in 0..t.crcs.len() {
            let (s, e) = t.range(i);
            let (s, e) = (
                usize::try_from(s).unwrap_or(usize::MAX),
                usize::try_from(e).unwrap_or(usize::MAX),
            );
            t.check(&path, i, data.get(s..e).unwrap_or(&[]))?;
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn sample() -> Tree {
        Tree {
            format_version: FORMAT_VERSION,
            tool_version: "test".into(),
            created_unix: 1,
            root_pid: 42,
            pidns: false,
            parent: None,
            parent_digest: None,
            live_memory: false,
            processes: vec![Process {
                pid: 42,
                ns_pid: 42,
                ppid: 0,
                pgid: 42,
                sid: 42,
                comm: "x".into(),
                exe: "/bin/x".into(),
                threads: vec![Thread {
                    tid: 42,
                    ns_tid: 42,
                    regs: UserRegs {
                        rip: 0x1234,
                        ..Default::default()
                    },
                    xstate: Hex(vec![1, 2, 3]),
                    sigmask: 5,
                    rseq: Some(RseqConfig {
                        ptr: 1,
                        size: 32,
                        signature: 0x53053053,
                        flags: 0,
                    }),
                    sigaltstack: (0, 2, 0),
                    pending: vec![],
                    clear_child_tid: 0,
                    comm: "x".into(),
                }],
                mm: MmInfo::default(),
                vmas: vec![Vma {
                    start: 0x1000,
                    end: 0x3000,
                    prot: 3,
                    kind: VmaKind::Anon {
                        name: String::new(),
                    },
                    pages: vec![PageRun {
                        vaddr: 0x1000,
                        npages: 1,
                        offset: 0,
                        in_parent: false,
                    }],
                    madvise: vec!["dc".into()],
                }],
                pages: PagesRef {
                    file: "pages-42.img".into(),
                    len: 4096,
                    crc32c: 7,
                    parts: Vec::new(),
                },
                sigactions: vec![],
                shared_pending: vec![],
                fds: vec![Fd {
                    fd: 0,
                    cloexec: false,
                    file: 0,
                }],
                cwd: "/".into(),
                root: "/".into(),
                umask: 0o22,
                rlimits: vec![(1, 2)],
                creds: Creds::default(),
                itimers: vec![(0, 0); 3],
                exit_signal: 17,
                seccomp_filters: vec![Hex(vec![6, 0, 0, 0, 0, 0, 0xff, 0x7f])],
                no_new_privs: true,
                epoll_regs: vec![EpollReg {
                    epfd: 3,
                    tfd: 4,
                    events: 0x8000_0001,
                    data: 77,
                }],
                dirty: Some(DirtyTracking {
                    uffd_fd: 9,
                    tracked: vec![(0x1000, 0x3000)],
                }),
                posix_timers: vec![PosixTimer {
                    id: 3,
                    clock: 1,
                    signo: 36,
                    value: 777,
                    notify: sys::timers::Notify::Thread { tid: 43 },
                    value_ns: 12_000_000,
                    interval_ns: 20_000_000,
                    overrun: 1,
                }],
            }],
            files: vec![
                OpenFile {
                    id: 0,
                    flags: 2,
                    kind: FileKind::Device {
                        path: "/dev/null".into(),
                        rdev: 0x103,
                    },
                },
                OpenFile {
                    id: 1,
                    flags: 0o4002,
                    kind: FileKind::EventFd {
                        count: 5,
                        semaphore: true,
                    },
                },
                OpenFile {
                    id: 2,
                    flags: 2,
                    kind: FileKind::TimerFd {
                        clockid: 1,
                        value_ns: 1_500_000,
                        interval_ns: 10_000_000,
                        settime_flags: 0,
                        ticks: 2,
                    },
                },
                OpenFile {
                    id: 3,
                    flags: 2,
                    kind: FileKind::SignalFd { sigmask: 1 << 9 },
                },
                OpenFile {
                    id: 4,
                    flags: 2,
                    kind: FileKind::Epoll,
                },
                OpenFile {
                    id: 5,
                    flags: 2,
                    kind: FileKind::UnixPair {
                        pair: 0,
                        end: 1,
                        sock_type: 5,
                        queue: vec![Hex(b"ping".to_vec()), Hex(vec![])],
                    },
                },
                OpenFile {
                    id: 6,
                    flags: 2,
                    kind: FileKind::UnixListen {
                        sock_type: 1,
                        name: "/run/x.sock".into(),
                        backlog: 128,
                        mode: Some(0o640),
                    },
                },
                OpenFile {
                    id: 7,
                    flags: 2,
                    kind: FileKind::TcpListen {
                        state: sys::inetsock::ListenState {
                            addr: "127.0.0.1:8080".parse().unwrap(),
                            backlog: 16,
                            opts: sys::inetsock::ReuseOpts {
                                reuseaddr: true,
                                reuseport: false,
                                v6only: false,
                            },
                        },
                    },
                },
                OpenFile {
                    id: 8,
                    flags: 2,
                    kind: FileKind::Udp {
                        state: sys::inetsock::UdpState {
                            local: "[::1]:53".parse().unwrap(),
                            peer: Some("[::1]:5353".parse().unwrap()),
                            opts: sys::inetsock::ReuseOpts::default(),
                        },
                    },
                },
            ],
            shmem: vec![],
            pipes: vec![PipeData {
                pipe: 0,
                capacity: 65536,
                data: Hex(b"abc".to_vec()),
            }],
            zombies: vec![],
        }
    }

    fn with_zombies(mut t: Tree) -> Tree {
        let ppid = t.processes[0].pid;
        t.zombies = vec![
            Zombie {
                pid: 4000,
                ns_pid: 4000,
                ppid,
                pgid: ppid,
                sid: ppid,
                comm: "mv".into(),
                exit_signal: 17,
                end: ExitHow::Exited { code: 7 },
            },
            Zombie {
                pid: 4001,
                ns_pid: 4001,
                ppid,
                pgid: 4001,
                sid: ppid,
                comm: "sleep".into(),
                exit_signal: 17,
                end: ExitHow::Killed {
                    signal: 15,
                    core_dumped: false,
                },
            },
        ];
        t.format_version = t.version_for_content();
        t
    }

    #[test]
    fn zombies_round_trip_with_version_4_full_and_incremental() {
        for t in [with_zombies(sample()), with_zombies(incremental("../a", 7))] {
            assert_eq!(t.format_version, ZOMBIES_FORMAT_VERSION);
            let b = encode_tree(&t);
            assert_eq!(u32_at(&b, 8), ZOMBIES_FORMAT_VERSION);
            let back = decode_tree(Path::new("tree.img"), &b).unwrap();
            assert_eq!(back, t);
            assert_eq!(encode_tree(&back), b);
        }
        // without zombies the field is not written and the version stays
        let plain = encode_tree(&sample());
        assert!(!String::from_utf8_lossy(&plain).contains("zombies"));
        assert_eq!(sample().version_for_content(), FORMAT_VERSION);
        // zombies in an older version, or version 4 without zombies, are refused
        let mut bad = with_zombies(sample());
        bad.format_version = FORMAT_VERSION;
        let e = decode_tree(Path::new("tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(
            e.to_string().contains("format version 2 with 2 zombies"),
            "{e}"
        );
        let mut bad = sample();
        bad.format_version = ZOMBIES_FORMAT_VERSION;
        let e = decode_tree(Path::new("tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(
            e.to_string().contains("format version 4 with 0 zombies"),
            "{e}"
        );
        // a zombie must hang under a process of the tree and end in a real way
        let mut bad = with_zombies(sample());
        bad.zombies[0].ppid = 4001;
        let e = decode_tree(Path::new("tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(
            e.to_string()
                .contains("zombie 4000: its parent 4001 is not a process of the tree"),
            "{e}"
        );
        let mut bad = with_zombies(sample());
        bad.zombies[1].end = ExitHow::Killed {
            signal: 0,
            core_dumped: false,
        };
        let e = decode_tree(Path::new("tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(e.to_string().contains("signal 0 out of 1..=64"), "{e}");
    }

    #[test]
    fn wait_statuses_decode_and_encode() {
        for (st, how) in [
            (7 << 8, ExitHow::Exited { code: 7 }),
            (
                15,
                ExitHow::Killed {
                    signal: 15,
                    core_dumped: false,
                },
            ),
            (
                11 | 0x80,
                ExitHow::Killed {
                    signal: 11,
                    core_dumped: true,
                },
            ),
        ] {
            assert_eq!(ExitHow::from_wait_status(st), Some(how));
            assert_eq!(how.wait_status(), st);
        }
        // a stop status is no end
        assert_eq!(ExitHow::from_wait_status((19 << 8) | 0x7f), None);
    }

    #[test]
    fn tree_round_trips_byte_for_byte() {
        let t = sample();
        let b = encode_tree(&t);
        let back = decode_tree(Path::new("tree.img"), &b).unwrap();
        assert_eq!(back, t);
        assert_eq!(encode_tree(&back), b);
    }

    #[test]
    fn a_pending_tree_appears_only_once_committed() {
        let dir = std::env::temp_dir().join(format!("image-pending-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let t = sample();
        let pending = write_tree_pending(&dir, &t).unwrap();
        // Written, not yet in place: a reader finds no tree.img.
        assert!(!dir.join(TREE_FILE).exists());
        assert!(read_tree(&dir).is_err());
        pending.commit().unwrap();
        assert_eq!(read_tree(&dir).unwrap(), t);
        assert!(!dir.join(".tree.img.tmp").exists());
        // The one-step write gives the same file.
        let again = dir.join("again");
        std::fs::create_dir_all(&again).unwrap();
        write_tree(&again, &t).unwrap();
        assert_eq!(
            std::fs::read(again.join(TREE_FILE)).unwrap(),
            std::fs::read(dir.join(TREE_FILE)).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_and_corrupt_trees_are_refused_with_the_file_named() {
        let b = encode_tree(&sample());
        for cut in [0, 10, 31, 32, b.len() - 1] {
            let e = decode_tree(Path::new("/img/tree.img"), &b[..cut]).unwrap_err();
            assert!(matches!(e, ImageError::Truncated { .. }), "cut {cut}: {e}");
            assert!(e.to_string().starts_with("/img/tree.img: truncated"), "{e}");
        }
        let mut c = b.clone();
        let n = c.len();
        c[n - 3] ^= 0x40;
        let e = decode_tree(Path::new("tree.img"), &c).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let mut m = b.clone();
        m[0] = b'X';
        assert!(decode_tree(Path::new("t"), &m)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let mut v = b;
        v[8] = 99;
        let h = crc32c::crc32c(&v[..28]);
        v[28..32].copy_from_slice(&h.to_le_bytes());
        assert!(matches!(
            decode_tree(Path::new("t"), &v).unwrap_err(),
            ImageError::Version { version: 99, .. }
        ));
    }

    #[test]
    #[allow(clippy::cast_possible_truncation)] // test sizes are small
    fn pages_written_out_of_order_in_pieces_match_an_appended_file() {
        let data: Vec<u8> = (0..(PAGES_CHUNK as usize * 2 + 12288))
            .map(|i| (i / 4096 % 251) as u8)
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut a = PagesWriter::create(dir.path(), "pages-1.img").unwrap();
        a.write(&data).unwrap();
        let ra = a.finish().unwrap();
        // Pieces cut at chunk boundaries and at a few odd page offsets, written last first.
        let cuts = [0, 4096, PAGES_CHUNK, PAGES_CHUNK + 8192, PAGES_CHUNK * 2];
        let mut b = PagesWriter::create(dir.path(), "pages-2.img").unwrap();
        let mut pieces = Vec::new();
        let mut bounds: Vec<u64> = cuts.to_vec();
        bounds.push(data.len() as u64);
        for w in bounds.windows(2).rev() {
            let (s, e) = (w[0] as usize, w[1] as usize);
            b.write_data_at(w[0], &data[s..e]).unwrap();
            pieces.push((crc32c::crc32c(&data[s..e]), w[1] - w[0]));
        }
        pieces.reverse();
        b.record_written(&pieces).unwrap();
        let rb = b.finish().unwrap();
        assert_eq!((ra.len, ra.crc32c), (rb.len, rb.crc32c));
        assert_eq!(read_pages(dir.path(), &rb).unwrap(), data);
        let f = File::open(dir.path().join("pages-2.img")).unwrap();
        let t = read_chunk_table(dir.path(), &rb, &f).unwrap().unwrap();
        let g = File::open(dir.path().join("pages-1.img")).unwrap();
        let u = read_chunk_table(dir.path(), &ra, &g).unwrap().unwrap();
        assert_eq!(t.crcs, u.crcs);
        // A piece crossing a chunk boundary is refused.
        let mut c = PagesWriter::create(dir.path(), "pages-3.img").unwrap();
        let e = c
            .record_written(&[(0, 4096), (0, PAGES_CHUNK)])
            .unwrap_err();
        assert!(e.to_string().contains("crosses a chunk"), "{e}");
    }

    #[test]
    fn pages_file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PagesWriter::create(dir.path(), "pages-1.img").unwrap();
        w.write(&[7u8; 4096]).unwrap();
        w.write(&[9u8; 8192]).unwrap();
        let r = w.finish().unwrap();
        assert_eq!(r.len, 12288);
        let data = read_pages(dir.path(), &r).unwrap();
        assert_eq!(&data[..4096], &[7u8; 4096][..]);
        assert_eq!(&data[4096..], &[9u8; 8192][..]);
        // flip one data byte
        let p = dir.path().join("pages-1.img");
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[1], PAGES_HEADER_LEN + 5000).unwrap();
        let e = read_pages(dir.path(), &r).unwrap_err();
        assert!(
            e.to_string()
                .contains("pages-1.img: corrupt: page data checksum"),
            "{e}"
        );
        // truncate
        f.set_len(PAGES_HEADER_LEN + 100).unwrap();
        let e = read_pages(dir.path(), &r).unwrap_err();
        assert!(matches!(e, ImageError::Truncated { .. }), "{e}");
        let tr = Tree { ..sample() };
        write_tree(dir.path(), &tr).unwrap();
        assert_eq!(read_tree(dir.path()).unwrap(), tr);
    }

    #[test]
    fn pages_file_version_4_chunk_table_round_trip_and_old_versions() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..PAGES_CHUNK * 2 + 12288)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let third = usize::try_from(PAGES_CHUNK / 3).unwrap();
        // pieces crossing chunk bounds, through both write paths
        let mut w = PagesWriter::create(dir.path(), "pages-2.img").unwrap();
        w.write(&data[..third]).unwrap();
        let crc = crc32c::crc32c(&data[..third + 4 * third]);
        w.write_checksummed(&data[third..5 * third], crc).unwrap();
        w.write(&data[5 * third..]).unwrap();
        let r = w.finish().unwrap();
        assert_eq!(r.crc32c, crc32c::crc32c(&data));
        assert_eq!(read_pages(dir.path(), &r).unwrap(), data);
        let f = open_pages(dir.path(), &r).unwrap();
        let t = read_chunk_table(dir.path(), &r, &f)
            .unwrap()
            .expect("version 4");
        assert_eq!(t.crcs.len(), 3);
        assert_eq!(t.range(2), (PAGES_CHUNK * 2, PAGES_CHUNK * 2 + 12288));
        let p = dir.path().join("pages-2.img");
        for i in 0..3 {
            let (s, e) = t.range(i);
            let (s, e) = (usize::try_from(s).unwrap(), usize::try_from(e).unwrap());
            t.check(&p, i, &data[s..e]).unwrap();
        }
        // a flipped byte is found in its chunk
        let mut bad = data.clone();
        bad[usize::try_from(PAGES_CHUNK).unwrap() + 7] ^= 1;
        let (s, e) = t.range(1);
        let e1 = t
            .check(
                &p,
                1,
                &bad[usize::try_from(s).unwrap()..usize::try_from(e).unwrap()],
            )
            .unwrap_err();
        assert!(e1.to_string().contains("checksum of chunk 1"), "{e1}");
        // a truncated table is refused
        let wf = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        wf.set_len(PAGES_HEADER_LEN + r.len + 4).unwrap();
        let e2 = open_pages(dir.path(), &r).unwrap_err();
        assert!(
            e2.to_string().contains("chunk table has 4 of 12 bytes"),
            "{e2}"
        );
        // a version-2 file (no table) is still read
        let mut h = vec![0u8; 4096];
        h[..8].copy_from_slice(&PAGES_MAGIC);
        h[8..12].copy_from_slice(&2u32.to_le_bytes());
        h[16..24].copy_from_slice(&(data.len() as u64).to_le_bytes());
        h[24..28].copy_from_slice(&crc32c::crc32c(&data).to_le_bytes());
        let hc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&hc.to_le_bytes());
        std::fs::write(dir.path().join("pages-3.img"), [h, data.clone()].concat()).unwrap();
        let r3 = PagesRef {
            file: "pages-3.img".into(),
            len: data.len() as u64,
            crc32c: crc32c::crc32c(&data),
            parts: Vec::new(),
        };
        assert_eq!(read_pages(dir.path(), &r3).unwrap(), data);
        let f3 = open_pages(dir.path(), &r3).unwrap();
        assert!(read_chunk_table(dir.path(), &r3, &f3).unwrap().is_none());
        // an unknown version is named
        let mut h5 = std::fs::read(dir.path().join("pages-3.img")).unwrap();
        h5[8..12].copy_from_slice(&3u32.to_le_bytes());
        let hc5 = crc32c::crc32c(&h5[..28]);
        h5[28..32].copy_from_slice(&hc5.to_le_bytes());
        std::fs::write(dir.path().join("pages-3.img"), h5).unwrap();
        let e3 = open_pages(dir.path(), &r3).unwrap_err();
        assert!(
            e3.to_string().contains("format version 3 is not supported"),
            "{e3}"
        );
    }

    fn incremental(parent: &str, digest: u32) -> Tree {
        let mut t = sample();
        t.format_version = INCREMENTAL_FORMAT_VERSION;
        t.parent = Some(parent.into());
        t.parent_digest = Some(digest);
        t.processes[0].vmas[0].pages[0].in_parent = true;
        t
    }

    #[test]
    fn incremental_tree_round_trips_with_version_3() {
        let t = incremental("../a", 0x1234);
        let b = encode_tree(&t);
        assert_eq!(u32_at(&b, 8), INCREMENTAL_FORMAT_VERSION);
        let back = decode_tree(Path::new("tree.img"), &b).unwrap();
        assert_eq!(back, t);
        assert_eq!(encode_tree(&back), b);
        // version and parent must agree
        let mut bad = t.clone();
        bad.format_version = FORMAT_VERSION;
        let e = decode_tree(Path::new("tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("format version {FORMAT_VERSION} with a parent")),
            "{e}"
        );
        // a full image says the full-image version
        assert_eq!(u32_at(&encode_tree(&sample()), 8), FORMAT_VERSION);
    }

    #[test]
    fn chain_is_followed_and_each_link_checked() {
        let root = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            root.path().join("a"),
            root.path().join("b"),
            root.path().join("c"),
        );
        for d in [&a, &b, &c] {
            std::fs::create_dir(d).unwrap();
        }
        write_tree(&a, &sample()).unwrap();
        let da = tree_digest(&a).unwrap();
        write_tree(&b, &incremental("../a", da)).unwrap();
        let db = tree_digest(&b).unwrap();
        write_tree(&c, &incremental(b.to_str().unwrap(), db)).unwrap();
        let chain = read_chain(&c).unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[2].0, b.join("../a"));
        // mismatched: `a` rewritten
        let mut other = sample();
        other.created_unix = 2;
        write_tree(&a, &other).unwrap();
        let e = read_chain(&c).unwrap_err().to_string();
        assert!(
            e.contains("b/tree.img: parent image") && e.contains("mismatched"),
            "{e}"
        );
        // missing
        std::fs::remove_dir_all(&a).unwrap();
        let e = read_chain(&c).unwrap_err().to_string();
        assert!(
            e.contains("parent image") && e.contains("a: missing"),
            "{e}"
        );
        // corrupt parent: named
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join(TREE_FILE), b"USTDTREEgarbage").unwrap();
        let e = read_chain(&c).unwrap_err().to_string();
        assert!(e.contains("parent image") && e.contains("truncated"), "{e}");
    }

    /// Writes `data` as `n` part files of process 42 (every part but the last a whole
    /// number of chunks) and returns the joined reference.
    fn write_parts(dir: &Path, data: &[u8], cuts: &[usize]) -> PagesRef {
        let mut refs = Vec::new();
        let mut at = 0;
        for (k, &end) in cuts.iter().chain([data.len()].iter()).enumerate() {
            let mut w = PagesWriter::create(dir, &pages_part_name(42, k)).unwrap();
            w.write(&data[at..end]).unwrap();
            refs.push(w.finish().unwrap());
            at = end;
        }
        join_parts(refs)
    }

    #[test]
    fn pages_in_part_files_round_trip_with_version_5() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let chunk = usize::try_from(PAGES_CHUNK).unwrap();
        let data: Vec<u8> = (0..chunk * 5 + 8192)
            .map(|i| u8::try_from(i % 253).unwrap())
            .collect();
        let r = write_parts(d, &data, &[chunk * 2, chunk * 4]);
        assert_eq!(r.parts.len(), 3);
        assert_eq!(r.file, "pages-42.img");
        assert_eq!(r.parts[1].file, "pages-42.1.img");
        assert_eq!(r.parts[2].file, "pages-42.2.img");
        assert_eq!(r.len, data.len() as u64);
        assert_eq!(r.crc32c, crc32c::crc32c(&data));
        assert_eq!(read_pages(d, &r).unwrap(), data);
        check_pages_data(d, &r, &data).unwrap();
        // every part is a complete version-4 pages file with its own chunk table
        let files = open_pages_parts(d, &r).unwrap();
        assert_eq!(
            files.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![0, PAGES_CHUNK * 2, PAGES_CHUNK * 4]
        );
        for (_, p, f) in &files {
            assert!(read_chunk_table(d, p, f).unwrap().is_some());
        }
        // one part is no parts at all
        let one = join_parts(vec![r.pieces()[0].1.clone()]);
        assert!(one.parts.is_empty());

        // tree.img: version 5, byte for byte round trip, older versions refused with parts
        let mut t = sample();
        t.processes[0].pages = r.clone();
        t.format_version = t.version_for_content();
        assert_eq!(t.format_version, PARTS_FORMAT_VERSION);
        let bytes = encode_tree(&t);
        let back = decode_tree(Path::new("/x/tree.img"), &bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(encode_tree(&back), bytes);
        // with a parent and zombies it stays 5
        let mut z = t.clone();
        z.parent = Some("../p".into());
        z.parent_digest = Some(1);
        z.format_version = z.version_for_content();
        assert_eq!(z.format_version, PARTS_FORMAT_VERSION);
        decode_tree(Path::new("/x/tree.img"), &encode_tree(&z)).unwrap();
        let mut old = t.clone();
        old.format_version = FORMAT_VERSION;
        let e = decode_tree(Path::new("/x/tree.img"), &encode_tree(&old)).unwrap_err();
        assert!(
            e.to_string().contains("with pages split over part files"),
            "{e}"
        );
        let mut nop = sample();
        nop.format_version = PARTS_FORMAT_VERSION;
        let e = decode_tree(Path::new("/x/tree.img"), &encode_tree(&nop)).unwrap_err();
        assert!(e.to_string().contains("without pages split"), "{e}");
        // parts that do not add up, or split inside a chunk, are refused in tree.img
        let mut bad = t.clone();
        bad.processes[0].pages.parts[1].crc32c ^= 1;
        let e = decode_tree(Path::new("/x/tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(
            e.to_string()
                .contains("pid 42: pages pages-42.img: parts hold"),
            "{e}"
        );
        let mut bad = t.clone();
        bad.processes[0].pages.parts[0].len -= 4096;
        bad.processes[0].pages.parts[1].len += 4096;
        let e = decode_tree(Path::new("/x/tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(e.to_string().contains("not a whole number"), "{e}");
        let mut bad = t.clone();
        bad.processes[0].pages.parts[2].file = "../etc".into();
        let e = decode_tree(Path::new("/x/tree.img"), &encode_tree(&bad)).unwrap_err();
        assert!(e.to_string().contains("bad part file name"), "{e}");
    }

    #[test]
    fn a_missing_or_damaged_part_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let chunk = usize::try_from(PAGES_CHUNK).unwrap();
        let data: Vec<u8> = (0..chunk * 3)
            .map(|i| u8::try_from(i % 241).unwrap())
            .collect();
        let r = write_parts(d, &data, &[chunk * 2]);
        let part1 = d.join("pages-42.1.img");
        // a flipped data byte of part 1: the whole-data check names part 1
        let good = std::fs::read(&part1).unwrap();
        let mut b = good.clone();
        b[4096 + 10] ^= 1;
        std::fs::write(&part1, &b).unwrap();
        let e = read_pages(d, &r).unwrap_err().to_string();
        assert!(e.contains("pages-42.1.img: corrupt"), "{e}");
        let mut whole = data.clone();
        whole[chunk * 2 + 10] ^= 1;
        let e = check_pages_data(d, &r, &whole).unwrap_err().to_string();
        assert!(e.contains("pages-42.1.img: corrupt"), "{e}");
        // a truncated part
        std::fs::write(&part1, &good[..4096 + 100]).unwrap();
        let e = open_pages_parts(d, &r).unwrap_err().to_string();
        assert!(
            e.contains("pages-42.1.img") && e.contains("truncated"),
            "{e}"
        );
        // a missing part
        std::fs::remove_file(&part1).unwrap();
        let e = open_pages_parts(d, &r).unwrap_err().to_string();
        assert!(e.contains("pages-42.1.img"), "{e}");
        let e = read_pages(d, &r).unwrap_err().to_string();
        assert!(e.contains("pages-42.1.img"), "{e}");
    }
}
