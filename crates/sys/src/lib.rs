//! Every raw kernel interface understudy touches: ptrace, remote syscalls, process_vm_readv/writev, pidfds, clone3, userfaultfd, PAGEMAP_SCAN, TCP_REPAIR.
