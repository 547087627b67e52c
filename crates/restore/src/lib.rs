//! Restoring a process tree from an image.
