//! Every raw kernel interface understudy touches: ptrace, remote syscalls, process_vm_readv/writev, pidfds, clone3, userfaultfd, PAGEMAP_SCAN, TCP_REPAIR.

pub mod dirty;
pub mod fdinfo;
pub mod fdpull;
mod ioc;
pub mod netns;
pub mod pagemap;
pub mod sockdiag;
pub mod tcp_repair;
pub mod uffd;
pub mod uffd_lazy;
