//! Connection set-up (version preamble + Noise `NNpsk0` handshake) and the encrypted frame
//! stream on top of it.
//!
//! ```text
//! client → server  preamble: "USTD" version:u16le flags:u16le            (8 bytes, cleartext)
//! server → client  verdict:  "USTD" version:u16le status:u8 0:u8          (8 bytes, cleartext)
//!                  [status 1 = refused: msg_len:u16le msg, then close]
//! client → server  noise msg 1 (-> psk, e)      each noise message: len:u16be bytes
//! server → client  noise msg 2 (<- e, ee)
//! both ways        noise transport messages, each carrying up to 65519 bytes of frame stream
//! ```
//! Both cleartext messages are bound into the handshake as its prologue, so a tampered version
//! makes the handshake fail. The server never decodes a frame before the client has proven it
//! holds the cluster key (message 1 only decrypts with it).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use snow::StatelessTransportState;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::frame::{self, Frame, FrameError, HEADER_LEN, MAX_FRAME};
use crate::key::ClusterKey;
use crate::{version_accepted, PREVIOUS_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// The Noise pattern and primitives. See `docs/wire-protocol.md` for why.
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_AESGCM_BLAKE2s";
const PREAMBLE_MAGIC: &[u8; 4] = b"USTD";
const PROLOGUE_LABEL: &[u8] = b"understudy-wire";
const NOISE_MAX: usize = 65535;
const TAG_LEN: usize = 16;
/// Plaintext carried by one noise transport message.
pub const CHUNK: usize = NOISE_MAX - TAG_LEN;

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
    let mut r = BufReader::with_capacity(256 << 10, r);
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
    let st = hs
        .into_stateless_transport_mode()
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    Ok(halves(r, w, st, version, peer))
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
    let mut r = BufReader::with_capacity(256 << 10, r);
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
    let st = hs
        .into_stateless_transport_mode()
        .map_err(|e| TransportError::Auth {
            peer,
            why: e.to_string(),
        })?;
    Ok(halves(r, w, st, theirs, peer))
}

fn halves(
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    st: StatelessTransportState,
    version: u16,
    peer: SocketAddr,
) -> (SecureReader, SecureWriter) {
    let st = Arc::new(st);
    (
        SecureReader {
            r,
            st: st.clone(),
            nonce: 0,
            plain: Vec::with_capacity(2 * NOISE_MAX),
            start: 0,
            cipher: Vec::with_capacity(NOISE_MAX),
            version,
            peer,
            bytes_in: 0,
        },
        SecureWriter {
            w,
            st,
            nonce: 0,
            plain: Vec::with_capacity(2 * NOISE_MAX),
            out: Vec::with_capacity(2 * NOISE_MAX),
            version,
            peer,
            bytes_out: 0,
        },
    )
}

/// The receiving half of an established connection.
pub struct SecureReader {
    r: BufReader<OwnedReadHalf>,
    st: Arc<StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    start: usize,
    cipher: Vec<u8>,
    version: u16,
    peer: SocketAddr,
    bytes_in: u64,
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

    /// Whether bytes of a further frame are already buffered (so the caller can delay a group
    /// commit until it has drained them).
    pub fn has_buffered(&self) -> bool {
        self.start < self.plain.len() || !self.r.buffer().is_empty()
    }

    /// The next frame. Not cancel-safe: drive it from one task and drop the reader on timeout.
    pub async fn next_frame(&mut self) -> Result<Frame, TransportError> {
        loop {
            let pending = &self.plain[self.start..];
            match frame::decode(pending, self.version) {
                Ok(Some((f, n))) => {
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
            let mut len = [0u8; 2];
            if let Err(e) = self.r.read_exact(&mut len).await {
                return Err(io_or_closed(e, self.peer, self.plain.len()));
            }
            let n = usize::from(u16::from_be_bytes(len));
            self.cipher.resize(n, 0);
            if let Err(e) = self.r.read_exact(&mut self.cipher).await {
                return Err(io_or_closed(e, self.peer, self.plain.len() + 2));
            }
            self.bytes_in += 2 + n as u64;
            let at = self.plain.len();
            self.plain.resize(at + n, 0);
            let got = self
                .st
                .read_message(self.nonce, &self.cipher, &mut self.plain[at..])
                .map_err(|e| TransportError::Auth {
                    peer: self.peer,
                    why: format!("message {} does not authenticate ({e})", self.nonce),
                })?;
            self.nonce += 1;
            self.plain.truncate(at + got);
        }
    }
}

/// The sending half of an established connection. Frames are queued into a plaintext buffer
/// and encrypted on [`SecureWriter::flush`], so many small frames share one syscall.
pub struct SecureWriter {
    w: OwnedWriteHalf,
    st: Arc<StatelessTransportState>,
    nonce: u64,
    plain: Vec<u8>,
    out: Vec<u8>,
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
        frame::encode_data(&mut self.plain, first_seq, records);
    }

    /// Queue a `Data` frame of `count` records already in their `Data` encoding (see
    /// [`frame::encode_data_encoded`]): one copy per piece, no per-record work.
    pub fn queue_data_encoded(&mut self, first_seq: u64, count: u32, encoded: &[&[u8]]) {
        frame::encode_data_encoded(&mut self.plain, first_seq, count, encoded);
    }

    /// Encrypt and send everything queued.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        if self.plain.is_empty() {
            return Ok(());
        }
        self.out.clear();
        for chunk in self.plain.chunks(CHUNK) {
            let at = self.out.len();
            self.out.resize(at + 2 + chunk.len() + TAG_LEN, 0);
            let n = self
                .st
                .write_message(self.nonce, chunk, &mut self.out[at + 2..])
                .map_err(|e| TransportError::Protocol {
                    peer: self.peer,
                    why: format!("encrypt: {e}"),
                })?;
            self.nonce += 1;
            let n16 = u16::try_from(n).expect("noise message under 64 KiB");
            self.out[at..at + 2].copy_from_slice(&n16.to_be_bytes());
            self.out.truncate(at + 2 + n);
        }
        self.plain.clear();
        self.w
            .write_all(&self.out)
            .await
            .map_err(|source| TransportError::Io {
                peer: self.peer,
                source,
            })?;
        self.bytes_out += self.out.len() as u64;
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

        let (c, s) = pair(k.clone(), k, PROTOCOL_VERSION).await;
        let (_cr, mut cw) = c.unwrap();
        let (mut sr, _sw) = s.unwrap();
        let mut bad = whole.clone();
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
        let (c, s) = pair(k.clone(), k, 7).await;
        let e = c.unwrap_err().to_string();
        assert!(e.contains("version 7") && e.contains("version 2"), "{e}");
        let e = s.unwrap_err().to_string();
        assert!(e.contains("version 7") && e.contains("version 2"), "{e}");
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
