//! The cluster key: 32 random bytes shared by every agent of a cluster, from which each
//! connection's Noise handshake is keyed.
//!
//! On-disk format (one line of text, so an operator can copy it between hosts):
//! `understudy-cluster-key 1 <64 hex digits> <crc32c of the 32 key bytes, 8 hex digits>\n`.
//! The file is created with mode 0600 and never printed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Magic word that starts a key file.
pub const KEY_MAGIC: &str = "understudy-cluster-key";
/// Key file format version.
pub const KEY_FORMAT_VERSION: u32 = 1;
/// Largest key file we read (the real one is ~100 bytes).
const MAX_KEY_FILE: u64 = 4096;

/// Errors reading or writing the cluster key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cluster key {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster key {path}: {why}")]
    Format { path: PathBuf, why: String },
    #[error("cluster key {path}: already exists (refusing to overwrite it)")]
    Exists { path: PathBuf },
}

/// A 256-bit cluster key. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// A key from raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes, for the handshake.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The file text of this key.
    pub fn encode(&self) -> String {
        format!(
            "{KEY_MAGIC} {KEY_FORMAT_VERSION} {} {:08x}\n",
            hex::encode(self.0),
            crc32c::crc32c(&self.0)
        )
    }

    /// Parse key file text (`path` is only used in error messages).
    pub fn decode(text: &str, path: &Path) -> Result<Self, KeyError> {
        let bad = |why: &str| KeyError::Format {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        let mut parts = text.split_ascii_whitespace();
        if parts.next() != Some(KEY_MAGIC) {
            return Err(bad("not a cluster key file (bad magic)"));
        }
        let version: u32 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("missing format version"))?;
        if version != KEY_FORMAT_VERSION {
            return Err(bad(&format!(
                "format version {version} is not supported (this build reads {KEY_FORMAT_VERSION})"
            )));
        }
        let hexkey = parts.next().ok_or_else(|| bad("missing key"))?;
        let raw = hex::decode(hexkey).map_err(|_| bad("key is not hex"))?;
        let bytes: [u8; 32] = raw.try_into().map_err(|_| bad("key is not 32 bytes"))?;
        let crc = parts
            .next()
            .and_then(|c| u32::from_str_radix(c, 16).ok())
            .ok_or_else(|| bad("missing checksum"))?;
        if crc != crc32c::crc32c(&bytes) {
            return Err(bad("checksum mismatch (file damaged or edited)"));
        }
        if parts.next().is_some() {
            return Err(bad("trailing data after checksum"));
        }
        Ok(Self(bytes))
    }

    /// Read a key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = fs::metadata(path).map_err(io)?;
        if meta.len() > MAX_KEY_FILE {
            return Err(KeyError::Format {
                path: path.to_owned(),
                why: format!("file is {} bytes, larger than any key file", meta.len()),
            });
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "cluster key {}: mode {:o} lets others read it; it should be 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        let text = fs::read_to_string(path).map_err(io)?;
        Self::decode(&text, path)
    }

    /// Write a new key file with mode 0600 (parent directories 0700). Refuses to overwrite an
    /// existing file unless `overwrite`.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.exists() {
                fs::create_dir_all(parent).map_err(io)?;
                fs::set_permissions(parent, fs::Permissions::from_mode(0o700)).map_err(io)?;
            }
        }
        let key = Self::generate();
        let mut opts = OpenOptions::new();
        opts.write(true).mode(0o600);
        if overwrite {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let mut f = opts.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        f.write_all(key.encode().as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(key)
    }

    /// Read the key file, creating it (mode 0600) when absent. Returns whether it was created.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        match Self::create(path, false) {
            Ok(k) => Ok((k, true)),
            Err(KeyError::Exists { .. }) => Ok((Self::load(path)?, false)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/cluster.key");
        let (k, created) = ClusterKey::load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = ClusterKey::load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k, k2);
        assert!(matches!(
            ClusterKey::create(&p, false),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(format!("{k:?}"), "ClusterKey(..)");
    }

    #[test]
    fn damaged_key_is_refused() {
        let k = ClusterKey::generate();
        let text = k.encode();
        let p = Path::new("k");
        assert_eq!(ClusterKey::decode(&text, p).unwrap(), k);
        // Flip one hex digit of the key: the checksum catches it.
        let mut bad = text.clone().into_bytes();
        let i = KEY_MAGIC.len() + 3;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let e = ClusterKey::decode(std::str::from_utf8(&bad).unwrap(), p).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        assert!(ClusterKey::decode("hello", p).is_err());
        assert!(ClusterKey::decode(&text.replace(" 1 ", " 9 "), p).is_err());
    }
}
