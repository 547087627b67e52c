//! The checkpoint image: what a dumped process tree is made of on disk.
//!
//! An image is a directory:
//!
//! | file | content |
//! |---|---|
//! | `tree.img` | header (magic `USTDTREE`, format version, payload length, CRC32C) + JSON [`Tree`] |
//! | `pages-PID.img` | header (magic `USTDPAGE`, version, data length, CRC32C of data, header CRC) padded to 4 KiB, then raw pages |
//! | `pages-PID.K.img` | (version 5) part K of a process's pages split over part files ([`PagesRef::parts`]), same layout |
//! | `shmem-ID.img` | same layout as a pages file: the contents of one shared memory object |
//!
//! Pages of a process are described in [`Vma::pages`] as [`PageRun`]s: a run of contiguous
//! pages at `vaddr` stored at `offset` of the process's pages file, or marked `in_parent`
//! (incremental dumps: the data is in the parent image). Every read is bounded and checked; any
//! problem is an [`ImageError`] naming the file and what is wrong.

#![forbid(unsafe_code)]

pub mod crc;
mod files;
mod model;

pub use files::*;
pub use model::*;
