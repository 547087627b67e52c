//! Dumping a running process tree into an image.
