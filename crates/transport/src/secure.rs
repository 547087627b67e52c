//! Connection set-up (version preamble + Noise `NNpsk0` handshake) and the encrypted frame
//! stream on top of it.
//!
//! ```text
//! client → server  preamble: "USTD" version:u16le flags:u16le            (8 bytes, cleartext)
//! server → client  verdict:  "USTD" version:u16le status:u8 0:u8          (8 bytes, cleartext)
//!                  [status 1 = refused: msg_len:u16le msg, then close]
//! client → server  noise msg 1 (-> psk, e)      each noise message: len:u16be bytes
//! server → client  noise msg 2 (<- e, ee)
//! both ways        sealed records len:u32le ciphertext tag, up to 1 MiB of frame stream each
//!                  (AES-256-GCM, keys from Noise's Split(), Noise nonces); versions 3 and 4
//!                  (4: frames carry no CRC32C of their own, see `frame`)
//! ```
//! Both cleartext messages are bound into the handshake as its prologue, so a tampered version
//! makes the handshake fail. The server never decodes a frame before the client has proven it
//! holds the cluster key (message 1 only decrypts with it).

use std::io;
use std::net::SocketAddr;

use std::time::Duration;

use ring::aead::{self, LessSafeKey, UnboundKey};
use snow::HandshakeState;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::frame::{self, BufferPool, Frame, FrameError, HEADER_LEN, MAX_FRAME};
use crate::key::ClusterKey;
use crate::{version_accepted, PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// The Noise pattern and primitives. See `docs/wire-protocol.md` for why.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PREAMBLE_MAGIC: &[u8; 4] = b"USTD";
const PROLOGUE_LABEL: &[u8] = b"understudy-wire";
const NOISE_MAX: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one sealed record: 1 MiB.
pub const RECORD_MAX: usize = 1 << 20;
/// Capacity of the socket read buffer. Small on purpose: a sealed record's body is read
/// straight into the frame buffer once this buffer is drained (a larger one would take in
/// whole data frames and copy every byte out of it again).
const READ_BUFFER: usize = 16 << 10;

/// Errors of the secure connection layer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{peer}: {source}")]
    Io { peer: SocketAddr, source: io::Error },
    #[error("{peer}: not an understudy agent (bad preamble magic {magic:02x?})")]
    BadMagic { peer: SocketAddr, magic: [u8; 4] },
    #[error(
        "{peer}: protocol version {theirs} refused: this agent speaks version {ours} and accepts \
         {prev} and {ours}"
    , ours = PROTOCOL_VERSION, prev = PREVIOUS_PROTOCOL_VERSION)]
    VersionRefusedByUs { peer: SocketAddr, theirs: u16 },
    #[error("{peer}: the peer refused our protocol version {ours} (it speaks {theirs}): {message}", ours = PROTOCOL_VERSION)]
    VersionRefusedByPeer {
        peer: SocketAddr,
        theirs: u16,
        message: String,
    },
    #[error("{peer}: authentication failed (the peer does not hold our cluster key): {why}")]
    Auth { peer: SocketAddr, why: String },
    #[error("{peer}: handshake timed out after {0:?}", .timeout)]
    Timeout { peer: SocketAddr, timeout: Duration },
    #[error("{peer}: bad frame: {source}")]
    Frame {
        peer: SocketAddr,
        source: FrameError,
    },
    #[error("{peer}: connection closed")]
    Closed { peer: SocketAddr },
    #[error("{peer}: connection closed inside a frame ({pending} bytes of it received)")]
    Truncated { peer: SocketAddr, pending: usize },
    #[error("{peer}: {why}")]
    Protocol { peer: SocketAddr, why: String },
}

impl TransportError {
    /// The peer this error is about.
    pub fn peer(&self) -> SocketAddr {
        match self {
            Self::Io { peer, .. }
            | Self::BadMagic { peer, .. }
            | Self::VersionRefusedByUs { peer, .. }
            | Self::VersionRefusedByPeer { peer, .. }
            | Self::Auth { peer, .. }
            | Self::Timeout { peer, .. }
            | Self::Frame { peer, .. }
            | Self::Closed { peer }
            | Self::Truncated { peer, .. }
            | Self::Protocol { peer, .. } => *peer,
        }
    }
}

fn prologue(client: &[u8; 8], server: &[u8; 8]) -> Vec<u8> {
    let mut p = PROLOGUE_LABEL.to_vec();
    p.extend_from_slice(client);
    p.extend_from_slice(server);
    p
}

async fn write_noise(
    w: &mut OwnedWriteHalf,
    msg: &[u8],
    peer: SocketAddr,
) -> Result<(), TransportError> {
    let len = u16::try_from(msg.len()).expect("noise message under 64 KiB");
    let mut buf = Vec::with_capacity(2 + msg.len());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf)
        .await
        .map_err(|source| TransportError::Io { peer, source })
}

async fn read_noise<R: AsyncReadExt + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
) -> Result<(), TransportError> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len)
        .await
        .map_err(|e| io_or_closed(e, peer, 0))?;
    let n = usize::from(u16::from_be_bytes(len));
    buf.resize(n, 0);
    r.read_exact(buf)
        .await
        .map_err(|e| io_or_closed(e, peer, 2))?;
    Ok(())
}

fn io_or_closed(e: io::Error, peer: SocketAddr, pending: usize) -> TransportError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        if pending == 0 {
            TransportError::Closed { peer }
        } else {
            TransportError::Truncated { peer, pending }
        }
    } else {
        TransportError::Io { peer, source: e }
    }
}

/// Connect side: run the preamble and handshake on `stream` as the initiator, speaking
/// `version` (normally [`PROTOCOL_VERSION`]).
pub async fn connect(
    stream: TcpStream,
    key: &ClusterKey,
    version: u16,
    timeout: Duration,
) -> Result<(SecureReader, SecureWriter), TransportError> {
    let peer = stream.peer_addr().map_err(|source| TransportError::Io {
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    match tokio::time::timeout(timeout, connect_inner(stream, key, version, peer)).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout { peer, timeout }),
    }
}

async fn connect_inner(
    stream: TcpStream,
    key: &ClusterKey,
    version: u16,
    peer: SocketAddr,
) -> Result<(SecureReader, SecureWriter), TransportError> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let mut pre = [0u8; 8];
    pre[..4].copy_from_slice(PREAMBLE_MAGIC);
    pre[4..6].copy_from_slice(&version.to_le_bytes());
    w.write_all(&pre)
        .await
        .map_err(|source| TransportError::Io { peer, source })?;
    let mut verdict = [0u8; 8];
    r.read_exact(&mut verdict)
        .await
        .map_err(|e| io_or_closed(e, peer, 0))?;
    if &verdict[..4] != PREAMBLE_MAGIC {
        return Err(TransportError::BadMagic {
            peer,
            magic: verdict[..4].try_into().expect("4"),
        });
    }
    let theirs = u16::from_le_bytes([verdict[4], verdict[5]]);
    if verdict[6] != 0 {
        let mut len = [0u8; 2];
        let mut msg = String::new();
        if r.read_exact(&mut len).await.is_ok() {
            let n = usize::from(u16::from_le_bytes(len)).min(frame::MAX_STRING);
            let mut b = vec![0u8; n];
            if r.read_exact(&mut b).await.is_ok() {
                msg = String::from_utf8_lossy(&b).into_owned();
            }
        }
        return Err(TransportError::VersionRefusedByPeer {
            peer,
            theirs,
            message: msg,
        });
    }
    if theirs != version {
        return Err(TransportError::Protocol {
            peer,
            why: format!("peer accepted version {version} but answered with {theirs}"),
        });
    }
    let prologue = prologue(&pre, &verdict);
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
        .psk(0, key.as_bytes())
        .prologue(&prologue)
        .build_initiator()
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    let mut buf = vec![0u8; NOISE_MAX];
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    write_noise(&mut w, &buf[..n], peer).await?;
    let mut msg = Vec::new();
    read_noise(&mut r, &mut msg, peer)
        .await
        .map_err(|e| match e {
            TransportError::Closed { peer } => TransportError::Auth {
                peer,
                why: "the peer closed the connection during the handshake (wrong cluster key?)"
                    .into(),
            },
            e => e,
        })?;
    hs.read_message(&msg, &mut buf)
        .map_err(|e| TransportError::Auth {
            peer,
            why: format!("handshake reply: {e}"),
        })?;
    let (rx, tx) = ciphers(hs, peer)?;
    Ok(halves(r, w, rx, tx, version, peer))
}

/// Accept side: run the preamble and handshake on `stream` as the responder. Returns the
/// negotiated version with the halves. Any failure is returned before a frame is read.
pub async fn accept(
    stream: TcpStream,
    key: &ClusterKey,
    timeout: Duration,
) -> Result<(SecureReader, SecureWriter), TransportError> {
    let peer = stream.peer_addr().map_err(|source| TransportError::Io {
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })?;
    match tokio::time::timeout(timeout, accept_inner(stream, key, peer)).await {
        Ok(r) => r,
        Err(_) => Err(TransportError::Timeout { peer, timeout }),
    }
}

async fn accept_inner(
    stream: TcpStream,
    key: &ClusterKey,
    peer: SocketAddr,
) -> Result<(SecureReader, SecureWriter), TransportError> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::with_capacity(READ_BUFFER, r);
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .await
        .map_err(|e| io_or_closed(e, peer, 0))?;
    if &pre[..4] != PREAMBLE_MAGIC {
        return Err(TransportError::BadMagic {
            peer,
            magic: pre[..4].try_into().expect("4"),
        });
    }
    let theirs = u16::from_le_bytes([pre[4], pre[5]]);
    let mut verdict = [0u8; 8];
    verdict[..4].copy_from_slice(PREAMBLE_MAGIC);
    if !version_accepted(theirs) {
        verdict[4..6].copy_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        verdict[6] = 1;
        let msg = format!(
            "protocol version {theirs} refused: this agent speaks version {PROTOCOL_VERSION} and \
             accepts {PREVIOUS_PROTOCOL_VERSION} and {PROTOCOL_VERSION}"
        );
        let mut out = verdict.to_vec();
        out.extend_from_slice(&u16::try_from(msg.len()).unwrap_or(0).to_le_bytes());
        out.extend_from_slice(msg.as_bytes());
        let _ = w.write_all(&out).await;
        let _ = w.shutdown().await;
        return Err(TransportError::VersionRefusedByUs { peer, theirs });
    }
    verdict[4..6].copy_from_slice(&theirs.to_le_bytes());
    w.write_all(&verdict)
        .await
        .map_err(|source| TransportError::Io { peer, source })?;
    let prologue = prologue(&pre, &verdict);
    let mut hs = snow::Builder::new(NOISE_PARAMS.parse().expect("valid noise params"))
        .psk(0, key.as_bytes())
        .prologue(&prologue)
        .build_responder()
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    let mut msg = Vec::new();
    read_noise(&mut r, &mut msg, peer).await?;
    let mut buf = vec![0u8; NOISE_MAX];
    hs.read_message(&msg, &mut buf)
        .map_err(|e| TransportError::Auth {
            peer,
            why: format!("first handshake message does not decrypt with our cluster key ({e})"),
        })?;
    let n = hs
        .write_message(&[], &mut buf)
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    write_noise(&mut w, &buf[..n], peer).await?;
    let (rx, tx) = ciphers(hs, peer)?;
    Ok(halves(r, w, rx, tx, theirs, peer))
}

/// The cipher of one direction of an established connection: AES-256-GCM with the key
/// Noise's `Split()` gave this direction, the Noise nonce layout (4 zero bytes, 64-bit
/// big-endian counter) and records of up to [`RECORD_MAX`] bytes, sealed and opened in place.
/// (Version 2's Noise transport messages are no longer spoken.)
struct Cipher(Box<LessSafeKey>);

/// (receive, send) ciphers once the handshake is complete.
fn ciphers(mut hs: HandshakeState, peer: SocketAddr) -> Result<(Cipher, Cipher), TransportError> {
    // Split() gives (initiator -> responder, responder -> initiator) keys.
    let (k1, k2) = hs.dangerously_get_raw_split();
    let key = |k: [u8; 32]| {
        UnboundKey::new(&aead::AES_256_GCM, &k)
            .map(LessSafeKey::new)
            .map_err(|_| TransportError::Auth {
                peer,
                why: "cannot build an AES-256-GCM key from the handshake".into(),
            })
    };
    let (send, recv) = if hs.is_initiator() {
        (k1, k2)
    } else {
        (k2, k1)
    };
    Ok((Cipher(Box::new(key(recv)?)), Cipher(Box::new(key(send)?))))
}

/// The Noise AES-GCM nonce: 32 zero bits, then the counter big-endian. The counter value
/// `u64::MAX` is reserved (Noise); the connection ends before reaching it.
fn aes_nonce(n: u64) -> aead::Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_be_bytes());
    aead::Nonce::assume_unique_for_key(b)
}

fn halves(
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    rx: Cipher,
    tx: Cipher,
    version: u16,
    peer: SocketAddr,
) -> (SecureReader, SecureWriter) {
    (
        SecureReader {
            r,
            st: rx,
            nonce: 0,
            plain: Vec::with_capacity(2 * NOISE_MAX),
            start: 0,
            version,
            peer,
            bytes_in: 0,
            pool: BufferPool::default(),
        },
        SecureWriter {
            w,
            st: tx,
            nonce: 0,
            plain: Vec::with_capacity(2 * NOISE_MAX),
            version,
            peer,
            bytes_out: 0,
        },
    )
}

/// The receiving half of an established connection.
pub struct SecureReader {
    r: BufReader<OwnedReadHalf>,
    st: Cipher,
    nonce: u64,
    plain: Vec<u8>,
    start: usize,
    version: u16,
    peer: SocketAddr,
    bytes_in: u64,
    /// Buffers handed back by the user (see [`frame::DataBatch`]).
    pool: BufferPool,
}

impl std::fmt::Debug for SecureReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecureReader({}, v{})", self.peer, self.version)
    }
}

impl SecureReader {
    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Wire bytes received so far (ciphertext, after the handshake).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// The pool to which the buffers of received [`frame::DataBatch`]es may be given back
    /// ([`BufferPool::put`]) once they are no longer needed, so the reader reuses them.
    pub fn buffer_pool(&self) -> BufferPool {
        self.pool.clone()
    }

    /// Whether bytes of a further frame are already buffered (so the caller can delay a group
    /// commit until it has drained them).
    pub fn has_buffered(&self) -> bool {
        self.start < self.plain.len() || !self.r.buffer().is_empty()
    }

    /// The next frame. Not cancel-safe: drive it from one task and drop the reader on timeout.
    pub async fn next_frame(&mut self) -> Result<Frame, TransportError> {
        loop {
            let pending = &self.plain[self.start..];
            match frame::decode_at(pending, self.version) {
                Ok(Some((mut f, n))) => {
                    if let Frame::Data { records, .. } = &mut f {
                        if self.start == 0 && n == self.plain.len() {
                            // The frame is the whole buffer (the usual case: one data frame
                            // per sealed record): hand the buffer over instead of copying.
                            let fresh = self
                                .pool
                                .take()
                                .unwrap_or_else(|| Vec::with_capacity(2 * NOISE_MAX));
                            records.resolve(std::mem::replace(&mut self.plain, fresh));
                            return Ok(f);
                        } else {
                            records.resolve_copy(pending);
                        }
                    }
                    self.start += n;
                    if self.start == self.plain.len() {
                        self.plain.clear();
                        self.start = 0;
                    }
                    return Ok(f);
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(TransportError::Frame {
                        peer: self.peer,
                        source,
                    })
                }
            }
            if self.start > 0 {
                self.plain.drain(..self.start);
                self.start = 0;
            }
            // `decode` refused lengths over the cap, so this bounds the buffer.
            debug_assert!(self.plain.len() < HEADER_LEN + MAX_FRAME);
            self.read_aes_record().await?;
        }
    }

    /// One sealed record `len:u32le ciphertext tag`, read straight onto the end of
    /// `plain` (no zero-fill, no intermediate buffer for large records) and opened in place.
    async fn read_aes_record(&mut self) -> Result<(), TransportError> {
        let mut len = [0u8; 4];
        if let Err(e) = self.r.read_exact(&mut len).await {
            return Err(io_or_closed(e, self.peer, self.plain.len()));
        }
        let n = usize::try_from(u32::from_le_bytes(len)).unwrap_or(usize::MAX);
        if !(TAG_LEN + 1..=RECORD_MAX + TAG_LEN).contains(&n) {
            return Err(TransportError::Protocol {
                peer: self.peer,
                why: format!(
                    "sealed record {} of {n} bytes (must be {} to {})",
                    self.nonce,
                    TAG_LEN + 1,
                    RECORD_MAX + TAG_LEN
                ),
            });
        }
        let at = self.plain.len();
        self.plain.reserve(n);
        let mut body = (&mut self.r).take(n as u64);
        while self.plain.len() < at + n {
            match body.read_buf(&mut self.plain).await {
                Ok(0) => {
                    return Err(io_or_closed(
                        io::ErrorKind::UnexpectedEof.into(),
                        self.peer,
                        self.plain.len() + 4,
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(io_or_closed(e, self.peer, self.plain.len() + 4)),
            }
        }
        self.bytes_in += 4 + n as u64;
        let key = &self.st.0;
        if self.nonce == u64::MAX {
            return Err(TransportError::Protocol {
                peer: self.peer,
                why: "nonce space exhausted".into(),
            });
        }
        let got = key
            .open_in_place(
                aes_nonce(self.nonce),
                aead::Aad::empty(),
                &mut self.plain[at..],
            )
            .map_err(|_| TransportError::Auth {
                peer: self.peer,
                why: format!("record {} does not authenticate", self.nonce),
            })?
            .len();
        self.nonce += 1;
        self.plain.truncate(at + got);
        Ok(())
    }
}

/// The sending half of an established connection. Frames are queued into a plaintext buffer
/// and encrypted on [`SecureWriter::flush`], so many small frames share one syscall.
pub struct SecureWriter {
    w: OwnedWriteHalf,
    st: Cipher,
    nonce: u64,
    plain: Vec<u8>,
    version: u16,
    peer: SocketAddr,
    bytes_out: u64,
}

impl std::fmt::Debug for SecureWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecureWriter({}, v{})", self.peer, self.version)
    }
}

impl SecureWriter {
    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
    /// Wire bytes sent so far (ciphertext, after the handshake).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }
    /// Plaintext bytes queued and not yet flushed.
    pub fn queued(&self) -> usize {
        self.plain.len()
    }

    /// Queue a frame.
    pub fn queue(&mut self, f: &Frame) -> Result<(), TransportError> {
        frame::encode(f, self.version, &mut self.plain).map_err(|source| TransportError::Frame {
            peer: self.peer,
            source,
        })
    }

    /// Queue a `Data` frame from borrowed records without copying them into a [`Frame`].
    pub fn queue_data<'a>(
        &mut self,
        first_seq: u64,
        records: impl Iterator<Item = (u32, &'a [u8])>,
    ) {
        frame::encode_data(&mut self.plain, self.version, first_seq, records);
    }

    /// Queue a `Data` frame of `count` records already in their `Data` encoding (see
    /// [`frame::encode_data_encoded`]): one copy per piece, no per-record work.
    pub fn queue_data_encoded(&mut self, first_seq: u64, count: u32, encoded: &[&[u8]]) {
        frame::encode_data_encoded(&mut self.plain, self.version, first_seq, count, encoded);
    }

    /// Encrypt and send everything queued.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        if self.plain.is_empty() {
            return Ok(());
        }
        self.flush_aes().await
    }

    /// Seal the queued bytes in place, in records of at most [`RECORD_MAX`], and
    /// send `len | ciphertext | tag` of each with vectored writes (no copy of the payload).
    async fn flush_aes(&mut self) -> Result<(), TransportError> {
        let key = &self.st.0;
        let mut heads: Vec<([u8; 4], aead::Tag)> = Vec::new();
        for chunk in self.plain.chunks_mut(RECORD_MAX) {
            if self.nonce == u64::MAX {
                return Err(TransportError::Protocol {
                    peer: self.peer,
                    why: "nonce space exhausted".into(),
                });
            }
            let tag = key
                .seal_in_place_separate_tag(aes_nonce(self.nonce), aead::Aad::empty(), chunk)
                .map_err(|_| TransportError::Protocol {
                    peer: self.peer,
                    why: "encrypt: record too large".into(),
                })?;
            self.nonce += 1;
            let n = u32::try_from(chunk.len() + TAG_LEN).expect("record under 4 GiB");
            heads.push((n.to_le_bytes(), tag));
        }
        let mut pieces: Vec<&[u8]> = Vec::with_capacity(3 * heads.len());
        for ((len, tag), chunk) in heads.iter().zip(self.plain.chunks(RECORD_MAX)) {
            pieces.extend([&len[..], chunk, tag.as_ref()]);
        }
        let total: usize = pieces.iter().map(|p| p.len()).sum();
        write_all_vectored(&mut self.w, &pieces)
            .await
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })?;
        self.plain.clear();
        self.bytes_out += total as u64;
        Ok(())
    }

    /// Queue one frame and flush.
    pub async fn send(&mut self, f: &Frame) -> Result<(), TransportError> {
        self.queue(f)?;
        self.flush().await
    }

    /// Close the sending direction.
    pub async fn shutdown(&mut self) {
        let _ = self.w.shutdown().await;
    }
}

/// Write every byte of `pieces`, in order, with as few `writev` calls as the socket allows.
async fn write_all_vectored(w: &mut OwnedWriteHalf, pieces: &[&[u8]]) -> io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < pieces.len() {
        let mut iov = Vec::with_capacity(pieces.len() - i);
        iov.push(io::IoSlice::new(&pieces[i][off..]));
        iov.extend(pieces[i + 1..].iter().map(|p| io::IoSlice::new(p)));
        let mut n = w.write_vectored(&iov).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while i < pieces.len() && n >= pieces[i].len() - off {
            n -= pieces[i].len() - off;
            i += 1;
            off = 0;
        }
        off += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        ka: ClusterKey,
        kb: ClusterKey,
        version: u16,
    ) -> (
        Result<(SecureReader, SecureWriter), TransportError>,
        Result<(SecureReader, SecureWriter), TransportError>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(5);
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            accept(s, &kb, t).await
        });
        let c = TcpStream::connect(addr).await.unwrap();
        let client = connect(c, &ka, version, t).await;
        (client, server.await.unwrap())
    }

    #[tokio::test]
    async fn data_frames_alone_or_mixed_arrive_intact_with_buffers_given_back() {
        let k = ClusterKey::generate();
        let (c, s) = pair(k.clone(), k, PROTOCOL_VERSION).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let pool = sr.buffer_pool();
        let batch = |seed: u8| -> frame::DataBatch {
            (0..50u8)
                .map(|i| {
                    (
                        u32::from(i),
                        vec![seed.wrapping_add(i); 10 + usize::from(i)],
                    )
                })
                .collect::<Vec<_>>()
                .iter()
                .map(|(i, p)| (*i, &p[..]))
                .collect()
        };
        // One data frame per flush (its sealed record is the whole receive buffer: handed
        // over), then a data frame sharing a record with a heartbeat (copied out), each
        // buffer given back to the pool and reused by the reader.
        for round in 0..6u8 {
            let data = Frame::Data {
                first_seq: 1 + 50 * u64::from(round),
                records: batch(round),
            };
            cw.queue(&data).unwrap();
            if round % 2 == 1 {
                cw.queue(&Frame::Heartbeat { sent_unix_nanos: 9 }).unwrap();
            }
            cw.flush().await.unwrap();
            let got = sr.next_frame().await.unwrap();
            assert_eq!(got, data);
            if round % 2 == 1 {
                assert_eq!(
                    sr.next_frame().await.unwrap(),
                    Frame::Heartbeat { sent_unix_nanos: 9 }
                );
            }
            let Frame::Data { records, .. } = got else {
                unreachable!()
            };
            assert_eq!(records.iter().count(), 50);
            pool.put(records);
        }
    }

    #[tokio::test]
    async fn frames_flow_both_ways_in_big_and_small_pieces() {
        let k = ClusterKey::generate();
        let (c, s) = pair(k.clone(), k, PROTOCOL_VERSION).await;
        let (mut cr, mut cw) = c.unwrap();
        let (mut sr, mut sw) = s.unwrap();
        let big = vec![7u8; 200_000];
        let frames = vec![
            Frame::Hello {
                app: "web".into(),
                first_seq: 1,
                last_seq: 9,
                sync: true,
            },
            Frame::Data {
                first_seq: 1,
                records: [(1, &big[..]), (2, &b"x"[..])].into_iter().collect(),
            },
            Frame::Heartbeat { sent_unix_nanos: 5 },
        ];
        for f in &frames {
            cw.queue(f).unwrap();
        }
        cw.flush().await.unwrap();
        for f in &frames {
            assert_eq!(&sr.next_frame().await.unwrap(), f);
        }
        sw.send(&Frame::Ack {
            durable_seq: 2,
            journaled_bytes: 200_001,
        })
        .await
        .unwrap();
        assert_eq!(
            cr.next_frame().await.unwrap(),
            Frame::Ack {
                durable_seq: 2,
                journaled_bytes: 200_001
            }
        );
        cw.shutdown().await;
        assert!(matches!(
            sr.next_frame().await,
            Err(TransportError::Closed { .. })
        ));
    }

    /// Authenticated but malformed streams: a frame cut short by EOF, and a frame with a bad
    /// checksum, each end the connection with a typed error (never a panic or a hang).
    #[tokio::test]
    async fn truncated_and_corrupt_frames_after_the_handshake_are_refused() {
        let k = ClusterKey::generate();
        let (c, s) = pair(k.clone(), k.clone(), PROTOCOL_VERSION).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let mut whole = Vec::new();
        frame::encode(
            &Frame::Goodbye {
                reason: "x".repeat(100),
            },
            PROTOCOL_VERSION,
            &mut whole,
        )
        .unwrap();
        cw.plain.extend_from_slice(&whole[..whole.len() / 2]);
        cw.flush().await.unwrap();
        cw.shutdown().await;
        let e = sr.next_frame().await.unwrap_err();
        assert!(matches!(e, TransportError::Truncated { .. }), "{e}");

        // Version 3 frames carry a checksum: a flipped body bit is refused.
        let (c, s) = pair(k.clone(), k.clone(), PREVIOUS_PROTOCOL_VERSION).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let mut bad = Vec::new();
        frame::encode(
            &Frame::Goodbye {
                reason: "x".repeat(100),
            },
            PREVIOUS_PROTOCOL_VERSION,
            &mut bad,
        )
        .unwrap();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        cw.plain.extend_from_slice(&bad);
        cw.flush().await.unwrap();
        let e = sr.next_frame().await.unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::Frame {
                    source: FrameError::Checksum { .. },
                    ..
                }
            ),
            "{e}"
        );

        // Version 4 frames carry 0 there (the sealed record's tag authenticates them):
        // anything else is refused.
        let (c, s) = pair(k.clone(), k, PROTOCOL_VERSION).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let mut bad = whole.clone();
        bad[5] ^= 0x01;
        cw.plain.extend_from_slice(&bad);
        cw.flush().await.unwrap();
        let e = sr.next_frame().await.unwrap_err();
        assert!(
            matches!(
                e,
                TransportError::Frame {
                    source: FrameError::Invalid { field: "crc", .. },
                    ..
                }
            ),
            "{e}"
        );
    }

    /// Both accepted versions (3: frames with a CRC32C, 4: without; sealed records of 1 MiB)
    /// carry frames larger than one message or record both ways, several flushes in a row.
    #[tokio::test]
    async fn both_versions_carry_frames_larger_than_a_record() {
        for version in [PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION] {
            let k = ClusterKey::generate();
            let (c, s) = pair(k.clone(), k, version).await;
            let (mut cr, mut cw) = c.unwrap();
            let (mut sr, mut sw) = s.unwrap();
            assert_eq!((cw.version(), sr.version()), (version, version));
            let big: Vec<u8> = (0..3 * RECORD_MAX + 12345)
                .map(|i| u8::try_from(i % 251).unwrap())
                .collect();
            let frames: Vec<Frame> = (0..3usize)
                .map(|i| Frame::Data {
                    first_seq: 1 + 2 * i as u64,
                    records: [(1, &big[..]), (2, &big[..i * 1000 + 1])]
                        .into_iter()
                        .collect(),
                })
                .collect();
            let send = tokio::spawn(async move {
                for f in &frames {
                    cw.send(f).await.unwrap();
                }
                (cw, frames)
            });
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(sr.next_frame().await.unwrap());
            }
            let (_cw, frames) = send.await.unwrap();
            assert_eq!(got, frames);
            sw.send(&Frame::Heartbeat { sent_unix_nanos: 9 })
                .await
                .unwrap();
            assert_eq!(
                cr.next_frame().await.unwrap(),
                Frame::Heartbeat { sent_unix_nanos: 9 }
            );
        }
    }

    /// A flipped ciphertext bit, and a record length over the cap, end the
    /// connection with a typed error before any frame of it is decoded.
    #[tokio::test]
    async fn tampered_or_oversized_sealed_records_are_refused() {
        for (flip_at, why) in [(Some(10usize), "authenticate"), (None, "sealed record")] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let k = ClusterKey::generate();
            let k2 = k.clone();
            // A relay between client and server that tampers with the first record after the
            // handshake (preambles of 8 bytes, then noise messages of 2 + 48 bytes each way).
            let relay = tokio::spawn(async move {
                let (mut inbound, _) = l.accept().await.unwrap();
                let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let a2 = l2.local_addr().unwrap();
                let server = tokio::spawn(async move {
                    let (s, _) = l2.accept().await.unwrap();
                    let (mut r, _w) = accept(s, &k2, Duration::from_secs(5)).await.unwrap();
                    r.next_frame().await.unwrap_err()
                });
                let mut out = TcpStream::connect(a2).await.unwrap();
                let (mut ir, mut iw) = inbound.split();
                let (mut or, mut ow) = out.split();
                for n in [8usize, 2 + 48] {
                    let mut b = vec![0u8; n];
                    ir.read_exact(&mut b).await.unwrap();
                    ow.write_all(&b).await.unwrap();
                    let mut b = vec![0u8; n];
                    or.read_exact(&mut b).await.unwrap();
                    iw.write_all(&b).await.unwrap();
                }
                let mut rec = vec![0u8; 4 + 100 + TAG_LEN];
                ir.read_exact(&mut rec).await.unwrap();
                match flip_at {
                    Some(i) => rec[4 + i] ^= 1,
                    None => rec[..4].copy_from_slice(&u32::MAX.to_le_bytes()),
                }
                ow.write_all(&rec).await.unwrap();
                server.await.unwrap()
            });
            let c = TcpStream::connect(addr).await.unwrap();
            let (_r, mut w) = connect(c, &k, PROTOCOL_VERSION, Duration::from_secs(5))
                .await
                .unwrap();
            w.plain.extend_from_slice(&[0u8; 100]);
            w.flush().await.unwrap();
            let e = relay.await.unwrap();
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn wrong_key_is_refused_on_both_sides() {
        let (c, s) = pair(
            ClusterKey::generate(),
            ClusterKey::generate(),
            PROTOCOL_VERSION,
        )
        .await;
        assert!(matches!(s, Err(TransportError::Auth { .. })), "{s:?}");
        assert!(matches!(c, Err(TransportError::Auth { .. })), "{c:?}");
    }

    #[tokio::test]
    async fn previous_version_accepted_others_refused_naming_both() {
        let k = ClusterKey::generate();
        let (c, s) = pair(k.clone(), k.clone(), PREVIOUS_PROTOCOL_VERSION).await;
        assert_eq!(c.unwrap().0.version(), PREVIOUS_PROTOCOL_VERSION);
        assert_eq!(s.unwrap().0.version(), PREVIOUS_PROTOCOL_VERSION);
        for old in [7, 2] {
            let (c, s) = pair(k.clone(), k.clone(), old).await;
            let want = format!("version {old}");
            let e = c.unwrap_err().to_string();
            assert!(e.contains(&want) && e.contains("3 and 4"), "{e}");
            let e = s.unwrap_err().to_string();
            assert!(e.contains(&want) && e.contains("3 and 4"), "{e}");
        }
    }

    #[tokio::test]
    async fn garbage_is_refused_before_any_frame() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let k = ClusterKey::generate();
        let server = tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            accept(s, &k, Duration::from_secs(5)).await
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let e = server.await.unwrap().unwrap_err();
        assert!(matches!(e, TransportError::BadMagic { .. }), "{e}");
    }
}
