//! The checkpoint image format: magic, versions, checksums, bounded reads.
