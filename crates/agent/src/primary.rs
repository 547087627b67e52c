//! The primary role: journal an application's replication messages locally and stream them to
//! every backup, in order, resuming each backup from its own durable watermark.
//!
//! Memory is bounded: records live in the local journal and in an in-memory window of at most
//! `window_bytes`; a backup that falls behind the window is fed from the journal. In `async`
//! mode a backup that stops acknowledging while holding more than `max_inflight_bytes`
//! unacknowledged is dropped and later resumed from its watermark. In `sync` mode
//! [`Primary::acked_seq`] (the highest seq that at least one backup holds durably) is what
//! gates an application's output.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use transport::{ClusterKey, Frame, RefuseCode, SecureWriter, PROTOCOL_VERSION};

use crate::metrics::{Metrics, StatusFn};
use crate::status::{AgentStatus, AppStatus, PeerStatus};
use crate::store::{OpenStore, Store};
use crate::{blocking, unix_nanos, valid_app_name, AgentError, Mode, Timing};

/// Largest payload accepted by [`Primary::submit_batch`] (it must fit in one data frame).
pub const MAX_PAYLOAD: usize = 4 << 20;

/// Configuration of a primary agent.
#[derive(Clone)]
pub struct PrimaryConfig {
    pub app: String,
    /// `HOST:PORT` of every backup.
    pub backups: Vec<String>,
    pub mode: Mode,
    pub key: ClusterKey,
    /// The local journal lives in `state_dir/apps/NAME/journal`.
    pub state_dir: PathBuf,
    pub open_store: OpenStore,
    pub timing: Timing,
    /// Bytes of recent records kept in memory for streaming.
    pub window_bytes: usize,
    /// Payload bytes per data frame.
    pub batch_bytes: usize,
    /// Async mode: a backup holding more than this unacknowledged, with no ack progress for
    /// `timing.stall`, is dropped and resumed later.
    pub max_inflight_bytes: u64,
    /// Serve the control socket under `state_dir/agents/` (off in some tests).
    pub control_socket: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<String>,
}

impl PrimaryConfig {
    /// Defaults for everything but the application, backups, key and state dir.
    pub fn new(
        app: &str,
        backups: Vec<String>,
        key: ClusterKey,
        state_dir: PathBuf,
        open_store: OpenStore,
    ) -> Self {
        Self {
            app: app.to_owned(),
            backups,
            mode: Mode::Async,
            key,
            state_dir,
            open_store,
            timing: Timing::default(),
            window_bytes: 64 << 20,
            batch_bytes: 256 << 10,
            max_inflight_bytes: 64 << 20,
            control_socket: false,
            metrics: None,
        }
    }
}

impl std::fmt::Debug for PrimaryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryConfig")
            .field("app", &self.app)
            .field("backups", &self.backups)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// One submitted batch in the window, kept in the `Data` frame encoding of its records
/// (`(stream:u32 len:u32 payload)*`), so a sender copies whole runs of records into a frame
/// with no per-record work.
struct WBatch {
    /// Seq of the first record.
    first: u64,
    count: u64,
    enc: Vec<u8>,
    /// Payload bytes of this batch.
    payload: u64,
    /// Payload bytes of every record up to and including this batch.
    cum_bytes: u64,
}

impl WBatch {
    fn last(&self) -> u64 {
        self.first + self.count - 1
    }
    /// Byte offset in `enc` of record `seq` and the payload bytes before it in this batch.
    fn offset_of(&self, seq: u64) -> (usize, u64) {
        let skip = usize::try_from(seq - self.first).unwrap_or(usize::MAX);
        let mut off = 0usize;
        let mut payload = 0u64;
        for (_, p) in transport::frame::records(&self.enc).take(skip) {
            off += transport::frame::RECORD_OVERHEAD + p.len();
            payload += p.len() as u64;
        }
        (off, payload)
    }
}

struct Window {
    /// Seq of the first record of `batches[0]` (or the next seq when empty).
    first: u64,
    batches: VecDeque<WBatch>,
    /// Payload bytes held.
    bytes: usize,
    /// Buffers of batches that left the window, reused for new batches (the window turns over
    /// its whole size continuously under load; fresh allocations would page-fault every page).
    spare: Vec<Vec<u8>>,
    /// Encoded bytes of the last batch submitted (the size to reserve for the next one).
    last_enc_len: usize,
    /// Batches whose last seq is at or below this no longer hold their encoding: every
    /// backup's sender had already copied them into a frame, so their buffer went back to
    /// `spare` at once (a sender that reconnects further back reads them from the journal).
    /// Under load the same few buffers then cycle, warm in the cache, instead of the window
    /// faulting in `window_bytes` of fresh pages before any buffer is reused.
    released_to: u64,
}

/// Largest run of encoded records a data frame carries whole when one submitted batch alone
/// exceeds [`PrimaryConfig::batch_bytes`] (the collector drains up to 4096 records at a time):
/// what fits, with the frame's 20 bytes of headers, in one sealed record of the transport (and
/// at most 4 × `batch_bytes`; larger batches are cut, walking their records).
const LONE_BATCH_MAX: usize = transport::secure::RECORD_MAX - 64;

/// Buffers kept for reuse by [`Window::spare`].
const SPARE_BUFFERS: usize = 8;

impl Window {
    /// Index of the batch holding `seq`, if the window holds it.
    fn find(&self, seq: u64) -> Option<usize> {
        if seq < self.first {
            return None;
        }
        let i = self.batches.partition_point(|b| b.last() < seq);
        (i < self.batches.len()).then_some(i)
    }

    /// Index of the batch holding `seq`, if the window still holds its encoding.
    fn find_resident(&self, seq: u64) -> Option<usize> {
        self.find(seq)
            .filter(|&i| self.batches[i].last() > self.released_to)
    }

    /// Give the buffers of batches up to `sent` (every sender is past them) to `spare`.
    fn release_sent(&mut self, sent: u64, max_capacity: usize) {
        while self.released_to < sent {
            let Some(i) = self.find(self.released_to + 1) else {
                if self.released_to + 1 < self.first {
                    // Evicted from the window meanwhile.
                    self.released_to = self.first - 1;
                    continue;
                }
                break;
            };
            let b = &mut self.batches[i];
            if b.last() > sent {
                break;
            }
            let enc = std::mem::take(&mut b.enc);
            self.released_to = b.last();
            if self.spare.len() < SPARE_BUFFERS && enc.capacity() <= max_capacity {
                let mut enc = enc;
                enc.clear();
                self.spare.push(enc);
            }
        }
    }
}

struct Peer {
    addr: String,
    state: Mutex<(String, Option<String>)>,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Connections re-established after the first one.
    reconnects: AtomicU64,
    connected_once: std::sync::atomic::AtomicBool,
}

impl Peer {
    fn new(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            state: Mutex::new(("connecting".into(), None)),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            connected_once: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

struct Shared {
    cfg: PrimaryConfig,
    store: Mutex<Box<dyn Store>>,
    window: Mutex<Window>,
    /// Last seq appended; senders wait on it.
    last_tx: watch::Sender<u64>,
    /// Highest seq durable on at least one backup.
    acked_tx: watch::Sender<u64>,
    total_bytes: AtomicU64,
    /// Backups; `protect` adds to it while running.
    peers: Mutex<Vec<Arc<Peer>>>,
    /// Senders started after `start` (by [`Primary::add_backup`]).
    extra_senders: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    stop_rx: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

/// A running primary agent for one application.
pub struct Primary {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    /// Control socket and metrics servers (aborted on stop).
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// One sender per backup (asked to say goodbye on stop).
    senders: Vec<tokio::task::JoinHandle<()>>,
    control_path: Option<PathBuf>,
}

impl std::fmt::Debug for Primary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Primary({})", self.shared.cfg.app)
    }
}

impl Primary {
    /// Open the local journal and start one sender per backup. Must run inside a tokio
    /// runtime (multi-threaded for real use: journal I/O runs in `block_in_place`).
    pub async fn start(cfg: PrimaryConfig) -> Result<Self, AgentError> {
        valid_app_name(&cfg.app).map_err(AgentError::Config)?;
        let dir = cfg.state_dir.join("apps").join(&cfg.app).join("journal");
        std::fs::create_dir_all(&dir).map_err(|e| AgentError::Io {
            what: format!("create {}", dir.display()),
            source: e,
        })?;
        let store = (cfg.open_store)(&dir).map_err(|e| AgentError::Store(e.to_string()))?;
        let last = store.last_seq();
        let (last_tx, _) = watch::channel(last);
        let (acked_tx, _) = watch::channel(0);
        let peers = cfg
            .backups
            .iter()
            .map(|a| Arc::new(Peer::new(a)))
            .collect::<Vec<_>>();
        let (stop, stop_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            window: Mutex::new(Window {
                first: last + 1,
                batches: VecDeque::new(),
                bytes: 0,
                spare: Vec::new(),
                last_enc_len: 0,
                released_to: last,
            }),
            last_tx,
            acked_tx,
            total_bytes: AtomicU64::new(0),
            peers: Mutex::new(peers.clone()),
            extra_senders: Mutex::new(Vec::new()),
            stop_rx: stop_rx.clone(),
            metrics: Arc::new(Metrics::default()),
            cfg: cfg.clone(),
        });
        let mut tasks = Vec::new();
        let status_fn: StatusFn = {
            let s = shared.clone();
            Arc::new(move || status(&s))
        };
        let mut control_path = None;
        if cfg.control_socket {
            let (l, p) =
                crate::control::bind(&cfg.state_dir, &format!("primary-{}", cfg.app)).await?;
            control_path = Some(p);
            let command: crate::control::CommandFn = {
                let s = shared.clone();
                Arc::new(move |line: &str| match line.split_once(' ') {
                    Some(("add-backup", addr)) => add_backup(&s, addr.trim())
                        .map(|()| format!("streaming {} to {}", s.cfg.app, addr.trim()))
                        .map_err(|e| e.to_string()),
                    _ => Err(format!("unknown request {line:?}")),
                })
            };
            tasks.push(tokio::spawn(crate::control::serve(
                l,
                status_fn.clone(),
                Some(command),
            )));
        }
        if let Some(m) = &cfg.metrics {
            let l = tokio::net::TcpListener::bind(m)
                .await
                .map_err(|e| AgentError::Io {
                    what: format!("metrics listen on {m}"),
                    source: e,
                })?;
            tasks.push(tokio::spawn(crate::metrics::serve(
                l,
                shared.metrics.clone(),
                status_fn,
            )));
        }
        let senders = peers
            .into_iter()
            .map(|p| tokio::spawn(peer_loop(shared.clone(), p, stop_rx.clone())))
            .collect();
        Ok(Self {
            shared,
            stop,
            tasks,
            senders,
            control_path,
        })
    }

    /// Journal a batch of messages `(stream, payload)` locally (one group commit) and hand
    /// them to the senders. Returns the seq of the last one. Never waits for a backup.
    pub fn submit_batch<'a>(
        &self,
        msgs: impl IntoIterator<Item = (u32, &'a [u8])>,
    ) -> Result<u64, AgentError> {
        let s = &self.shared;
        let mut enc = {
            let mut w = s.window.lock().expect("window lock");
            let mut enc = w.spare.pop().unwrap_or_default();
            // Room for a batch like the last one: no reallocation (and copy) while encoding.
            enc.reserve(w.last_enc_len);
            enc
        };
        let mut count = 0u64;
        let mut payload = 0u64;
        for (stream, p) in msgs {
            if p.len() > MAX_PAYLOAD {
                return Err(AgentError::Config(format!(
                    "message of {} bytes exceeds the {MAX_PAYLOAD}-byte cap",
                    p.len()
                )));
            }
            transport::frame::push_record(&mut enc, stream, p);
            count += 1;
            payload += p.len() as u64;
        }
        if count == 0 {
            return Ok(*s.last_tx.borrow());
        }
        // The highest seq every backup's sender has copied into a frame (read before the locks;
        // a stale value only releases less, or makes a reconnecting sender read the journal).
        let sent = s
            .peers
            .lock()
            .expect("peers lock")
            .iter()
            .map(|p| p.sent.load(Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        // The store lock is held while the window is extended so that concurrent submitters
        // put records into the window in seq order (lock order: store, then window).
        let last = blocking(|| {
            let mut st = s.store.lock().expect("store lock");
            let first = st.last_seq() + 1;
            // The encoding was built just above, record by record: the journal need not walk it.
            let seq = match u32::try_from(count) {
                Ok(n) => st.append_encoded_counted(first, n, &enc),
                Err(_) => st.append_encoded(first, &enc),
            }
            .map_err(|e| AgentError::Store(e.to_string()))?;
            let before = st.fsyncs();
            st.commit().map_err(|e| AgentError::Store(e.to_string()))?;
            Metrics::add(&s.metrics.fsyncs, st.fsyncs() - before);
            let mut w = s.window.lock().expect("window lock");
            let cum = s.total_bytes.load(Relaxed) + payload;
            if w.batches.is_empty() {
                w.first = first;
            }
            w.bytes += usize::try_from(payload).unwrap_or(usize::MAX);
            w.last_enc_len = enc.len().min(4 * s.cfg.batch_bytes);
            w.batches.push_back(WBatch {
                first,
                count,
                enc,
                payload,
                cum_bytes: cum,
            });
            s.total_bytes.store(cum, Relaxed);
            w.release_sent(sent, 4 * s.cfg.batch_bytes);
            while w.bytes > s.cfg.window_bytes && w.batches.len() > 1 {
                let mut b = w.batches.pop_front().expect("non-empty");
                w.bytes -= usize::try_from(b.payload).unwrap_or(usize::MAX);
                w.first = b.last() + 1;
                // Keep moderately sized buffers only: one huge batch must not stay pinned.
                // (A released batch's buffer went to `spare` already.)
                if w.spare.len() < SPARE_BUFFERS
                    && b.enc.capacity() > 0
                    && b.enc.capacity() <= 4 * s.cfg.batch_bytes
                {
                    b.enc.clear();
                    w.spare.push(std::mem::take(&mut b.enc));
                }
            }
            Ok::<_, AgentError>(seq)
        })?;
        s.last_tx.send_replace(last);
        Ok(last)
    }

    /// Journal one message; see [`Primary::submit_batch`].
    pub fn submit(&self, stream: u32, payload: &[u8]) -> Result<u64, AgentError> {
        self.submit_batch([(stream, payload)])
    }

    /// Last seq journaled locally.
    pub fn last_seq(&self) -> u64 {
        *self.shared.last_tx.borrow()
    }

    /// Highest seq durable on at least one backup (the output-commit point in sync mode).
    pub fn acked_seq(&self) -> u64 {
        *self.shared.acked_tx.borrow()
    }

    /// A receiver that sees [`Primary::acked_seq`] change.
    pub fn watch_acked(&self) -> watch::Receiver<u64> {
        self.shared.acked_tx.subscribe()
    }

    /// Wait until at least one backup holds `seq` durably, up to `timeout`.
    pub async fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<(), AgentError> {
        let mut rx = self.watch_acked();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= seq))
            .await
            .map_err(|_| AgentError::AckTimeout {
                seq,
                acked: self.acked_seq(),
                timeout,
            })?
            .map_err(|_| AgentError::Stopped)?;
        Ok(())
    }

    /// Wait until every backup holds everything journaled so far, up to `timeout`.
    pub async fn wait_all_acked(&self, timeout: Duration) -> Result<(), AgentError> {
        let target = self.last_seq();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let min = self
                .shared
                .peers
                .lock()
                .expect("peers lock")
                .iter()
                .map(|p| p.acked.load(Relaxed))
                .min()
                .unwrap_or(target);
            if min >= target {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::AckTimeout {
                    seq: target,
                    acked: min,
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A snapshot of this agent's status.
    pub fn status(&self) -> AgentStatus {
        status(&self.shared)
    }

    /// Start streaming to one more backup (`understudy protect NAME --add HOST:PORT`).
    pub fn add_backup(&self, addr: &str) -> Result<(), AgentError> {
        add_backup(&self.shared, addr)
    }

    /// Counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Say goodbye to every backup and stop.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let extra = std::mem::take(&mut *self.shared.extra_senders.lock().expect("senders lock"));
        for t in self.senders.into_iter().chain(extra) {
            let abort = t.abort_handle();
            if tokio::time::timeout_at(deadline, t).await.is_err() {
                abort.abort();
            }
        }
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = self.control_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn add_backup(s: &Arc<Shared>, addr: &str) -> Result<(), AgentError> {
    if addr.parse::<std::net::SocketAddr>().is_err() && !addr.contains(':') {
        return Err(AgentError::Config(format!(
            "backup address {addr:?} is not HOST:PORT"
        )));
    }
    let p = {
        let mut peers = s.peers.lock().expect("peers lock");
        if peers.iter().any(|p| p.addr == addr) {
            return Err(AgentError::Config(format!(
                "application {} already streams to {addr}",
                s.cfg.app
            )));
        }
        let p = Arc::new(Peer::new(addr));
        peers.push(p.clone());
        p
    };
    let t = tokio::spawn(peer_loop(s.clone(), p, s.stop_rx.clone()));
    s.extra_senders.lock().expect("senders lock").push(t);
    tracing::info!("app {}: added backup {addr}", s.cfg.app);
    Ok(())
}

fn lag_bytes(s: &Shared, acked: u64, last: u64) -> u64 {
    let total = s.total_bytes.load(Relaxed);
    let w = s.window.lock().expect("window lock");
    if acked >= last {
        return 0;
    }
    if let Some(i) = w.find(acked + 1) {
        let b = &w.batches[i];
        let before = if b.last() > w.released_to {
            b.offset_of(acked + 1).1
        } else {
            // Released batch: its encoding is gone; prorate by record count.
            b.payload * (acked + 1 - b.first) / b.count
        };
        return total - (b.cum_bytes - b.payload + before);
    }
    if acked + 1 >= w.first {
        return 0;
    }
    // Past the window: estimate from the window's average record size.
    let recs: u64 = w.batches.iter().map(|b| b.count).sum();
    let avg = (w.bytes as u64).checked_div(recs).unwrap_or(0);
    (last - acked) * avg
}

fn status(s: &Shared) -> AgentStatus {
    let (first, last, durable) = {
        let st = s.store.lock().expect("store lock");
        (st.first_seq(), st.last_seq(), st.durable_seq())
    };
    let peers = s
        .peers
        .lock()
        .expect("peers lock")
        .iter()
        .map(|p| {
            let acked = p.acked.load(Relaxed);
            let (state, error) = p.state.lock().expect("peer state").clone();
            PeerStatus {
                addr: p.addr.clone(),
                state,
                last_seq_sent: p.sent.load(Relaxed),
                last_seq_acked: acked,
                lag_messages: last.saturating_sub(acked),
                lag_bytes: lag_bytes(s, acked, last),
                reconnects: p.reconnects.load(Relaxed),
                error,
            }
        })
        .collect();
    AgentStatus {
        role: "primary".into(),
        pid: std::process::id(),
        listen: String::new(),
        apps: vec![AppStatus {
            name: s.cfg.app.clone(),
            role: "primary".into(),
            mode: s.cfg.mode.to_string(),
            last_seq_journaled: last,
            durable_seq: durable,
            first_seq: first,
            peers,
        }],
    }
}

fn set_state(p: &Peer, state: &str, error: Option<String>) {
    *p.state.lock().expect("peer state") = (state.to_owned(), error);
}

async fn peer_loop(s: Arc<Shared>, p: Arc<Peer>, mut stop: watch::Receiver<bool>) {
    let t = s.cfg.timing.clone();
    let mut backoff = t.reconnect_min;
    loop {
        if *stop.borrow() {
            return;
        }
        let prev_error = p.state.lock().expect("peer state").1.clone();
        set_state(&p, "connecting", prev_error);
        let started = tokio::time::Instant::now();
        let r = session(&s, &p, &mut stop).await;
        let refused = match r {
            Ok(()) => return,
            Err(e) => {
                let state = match &e {
                    AgentError::PeerRefused {
                        code: RefuseCode::TooFarBehind,
                        ..
                    }
                    | AgentError::Refused {
                        code: RefuseCode::TooFarBehind,
                        ..
                    } => "too-far-behind",
                    AgentError::PeerRefused { .. } | AgentError::Refused { .. } => "refused",
                    _ => "disconnected",
                };
                tracing::warn!("app {} backup {}: {e}", s.cfg.app, p.addr);
                set_state(&p, state, Some(e.to_string()));
                state != "disconnected"
            }
        };
        if started.elapsed() > Duration::from_secs(1) {
            backoff = t.reconnect_min;
        }
        // A refusal will not change by itself soon: retry it slowly.
        let wait = if refused {
            backoff.max(Duration::from_secs(5))
        } else {
            backoff
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(t.reconnect_max);
    }
}

fn publish_ack(s: &Shared, p: &Peer, durable: u64) {
    if p.acked.fetch_max(durable, Relaxed) < durable {
        s.acked_tx.send_if_modified(|a| {
            if durable > *a {
                *a = durable;
                true
            } else {
                false
            }
        });
    }
}

async fn session(
    s: &Arc<Shared>,
    p: &Arc<Peer>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let t = s.cfg.timing.clone();
    let tcp = tokio::time::timeout(t.handshake, TcpStream::connect(&p.addr))
        .await
        .map_err(|_| AgentError::PeerTimeout(t.handshake))?
        .map_err(|e| AgentError::Io {
            what: format!("connect to {}", p.addr),
            source: e,
        })?;
    let (mut reader, mut writer) =
        transport::connect(tcp, &s.cfg.key, PROTOCOL_VERSION, t.handshake).await?;
    let (first, last) = {
        let st = s.store.lock().expect("store lock");
        (st.first_seq(), st.last_seq())
    };
    writer
        .send(&Frame::Hello {
            app: s.cfg.app.clone(),
            first_seq: first,
            last_seq: last,
            sync: s.cfg.mode == Mode::Sync,
        })
        .await?;
    let welcome = tokio::time::timeout(t.peer_timeout, reader.next_frame())
        .await
        .map_err(|_| AgentError::PeerTimeout(t.peer_timeout))??;
    let durable = match welcome {
        Frame::Welcome { durable_seq, .. } => durable_seq,
        Frame::Refuse { code, message } => return Err(AgentError::PeerRefused { code, message }),
        other => {
            return Err(AgentError::Protocol(format!(
                "expected welcome, got {}",
                other.kind()
            )))
        }
    };
    let last = *s.last_tx.borrow();
    let first = s.store.lock().expect("store lock").first_seq();
    if durable > last {
        let message = format!(
            "backup holds app {} up to seq {durable} but this primary's journal ends at {last}: \
             histories diverged",
            s.cfg.app
        );
        let _ = writer
            .send(&Frame::Refuse {
                code: RefuseCode::Diverged,
                message: message.clone(),
            })
            .await;
        return Err(AgentError::Refused {
            code: RefuseCode::Diverged,
            message,
        });
    }
    if durable + 1 < first {
        let message = format!(
            "backup holds app {} up to seq {durable} but this primary's journal starts at {first}: \
             too far behind, re-seed it from a checkpoint",
            s.cfg.app
        );
        let _ = writer
            .send(&Frame::Refuse {
                code: RefuseCode::TooFarBehind,
                message: message.clone(),
            })
            .await;
        return Err(AgentError::Refused {
            code: RefuseCode::TooFarBehind,
            message,
        });
    }
    tracing::info!(
        "app {} backup {}: streaming from seq {}",
        s.cfg.app,
        p.addr,
        durable + 1
    );
    set_state(p, "streaming", None);
    if p.connected_once.swap(true, Relaxed) {
        p.reconnects.fetch_add(1, Relaxed);
        Metrics::add(&s.metrics.reconnects, 1);
    }
    p.sent.store(durable, Relaxed);
    publish_ack(s, p, durable);

    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<AgentError>();
    let reader_task = {
        let s = s.clone();
        let p = p.clone();
        let timeout = t.peer_timeout;
        tokio::spawn(async move {
            let err = loop {
                match tokio::time::timeout(timeout, reader.next_frame()).await {
                    Err(_) => break AgentError::PeerTimeout(timeout),
                    Ok(Err(e)) => break e.into(),
                    Ok(Ok(Frame::Ack { durable_seq, .. })) => {
                        Metrics::add(&s.metrics.acks, 1);
                        publish_ack(&s, &p, durable_seq);
                    }
                    Ok(Ok(Frame::Heartbeat { .. })) => {}
                    Ok(Ok(Frame::Refuse { code, message })) => {
                        break AgentError::PeerRefused { code, message }
                    }
                    Ok(Ok(Frame::Goodbye { reason })) => {
                        break AgentError::Protocol(format!("backup said goodbye: {reason}"))
                    }
                    Ok(Ok(other)) => {
                        break AgentError::Protocol(format!(
                            "unexpected {} frame from backup",
                            other.kind()
                        ))
                    }
                }
            };
            let _ = done_tx.send(err);
        })
    };
    let r = send_loop(s, p, &mut writer, durable + 1, stop, &mut done_rx).await;
    reader_task.abort();
    if r.is_ok() {
        let _ = writer
            .send(&Frame::Goodbye {
                reason: "primary stopping".into(),
            })
            .await;
    }
    writer.shutdown().await;
    r
}

async fn send_loop(
    s: &Arc<Shared>,
    p: &Peer,
    writer: &mut SecureWriter,
    mut next: u64,
    stop: &mut watch::Receiver<bool>,
    done: &mut tokio::sync::oneshot::Receiver<AgentError>,
) -> Result<(), AgentError> {
    let t = s.cfg.timing.clone();
    let mut last_rx = s.last_tx.subscribe();
    let mut heartbeat = tokio::time::interval(t.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // (end seq, payload bytes sent through it) of unacknowledged batches, for stall detection.
    let mut inflight: VecDeque<(u64, u64)> = VecDeque::new();
    let mut sent_bytes = 0u64;
    let mut acked_bytes = 0u64;
    let mut last_progress = tokio::time::Instant::now();
    let mut last_acked = p.acked.load(Relaxed);
    loop {
        if let Ok(e) = done.try_recv() {
            return Err(e);
        }
        let acked = p.acked.load(Relaxed);
        if acked > last_acked {
            last_acked = acked;
            last_progress = tokio::time::Instant::now();
        }
        while inflight.front().is_some_and(|(end, _)| *end <= acked) {
            acked_bytes = inflight.pop_front().expect("non-empty").1;
        }
        let unacked = sent_bytes - acked_bytes;
        if s.cfg.mode == Mode::Async
            && unacked > s.cfg.max_inflight_bytes
            && last_progress.elapsed() > t.stall
        {
            return Err(AgentError::Slow {
                unacked_bytes: unacked,
                stalled: t.stall,
            });
        }
        let last = *last_rx.borrow_and_update();
        if next <= last && unacked <= s.cfg.max_inflight_bytes {
            let (n, bytes) = fill_batch(s, writer, next)?;
            writer.flush().await?;
            next += n;
            sent_bytes += bytes;
            inflight.push_back((next - 1, sent_bytes));
            p.sent.store(next - 1, Relaxed);
            Metrics::add(&s.metrics.messages, n);
            Metrics::add(&s.metrics.bytes, bytes);
            heartbeat.reset();
            continue;
        }
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            e = &mut *done => return Err(e.unwrap_or(AgentError::Stopped)),
            r = last_rx.changed() => if r.is_err() { return Err(AgentError::Stopped) },
            _ = heartbeat.tick() => {
                writer.send(&Frame::Heartbeat { sent_unix_nanos: unix_nanos() }).await?;
            }
            // Re-check the inflight bound and stall clock as acks arrive.
            _ = tokio::time::sleep(Duration::from_millis(20)), if unacked > s.cfg.max_inflight_bytes => {}
        }
    }
}

/// Queue one data frame starting at `next` into `writer`; returns (records, payload bytes).
fn fill_batch(s: &Shared, writer: &mut SecureWriter, next: u64) -> Result<(u64, u64), AgentError> {
    let max = s.cfg.batch_bytes;
    {
        let w = s.window.lock().expect("window lock");
        if let Some(i) = w.find_resident(next) {
            // Whole runs of encoded records, cut at `max` encoded bytes (at least one record),
            // at a batch boundary unless the first batch alone is larger.
            let mut pieces: Vec<&[u8]> = Vec::new();
            let (mut enc_bytes, mut count, mut payload) = (0usize, 0u64, 0u64);
            for (k, b) in w.batches.range(i..).enumerate() {
                let (start, skipped) = if k == 0 { b.offset_of(next) } else { (0, 0) };
                let rest = &b.enc[start..];
                let rest_count = b.count - if k == 0 { next - b.first } else { 0 };
                if enc_bytes + rest.len() <= max {
                    pieces.push(rest);
                    enc_bytes += rest.len();
                    count += rest_count;
                    payload += b.payload - skipped;
                    continue;
                }
                if count > 0 {
                    // Frames end at batch boundaries whenever they can, so the next frame
                    // starts at a batch's first record (no walk to find its offset).
                    break;
                }
                if rest.len() <= LONE_BATCH_MAX.min(4 * max) {
                    // A batch larger than a frame but within one sealed record goes whole:
                    // no walk to cut it, and none to find where the next frame starts.
                    pieces.push(rest);
                    count += rest_count;
                    payload += b.payload - skipped;
                    break;
                }
                // The first batch alone exceeds the frame: walk its records to cut it.
                let mut used = 0usize;
                for (_, p) in transport::frame::records(rest) {
                    let n = transport::frame::RECORD_OVERHEAD + p.len();
                    if count > 0 && enc_bytes + n > max {
                        break;
                    }
                    used += n;
                    enc_bytes += n;
                    count += 1;
                    payload += p.len() as u64;
                }
                pieces.push(&rest[..used]);
                break;
            }
            let count32 = u32::try_from(count).expect("frame records capped by bytes");
            writer.queue_data_encoded(next, count32, &pieces);
            return Ok((count, payload));
        }
    }
    // Behind the window (or released from it): read from the journal, encoding the records
    // straight into one run (no buffer per record).
    let mut enc: Vec<u8> = Vec::new();
    let (mut count, mut payload) = (0u64, 0u64);
    let mut gap = None;
    blocking(|| {
        let mut st = s.store.lock().expect("store lock");
        st.read(next, 1 << 16, max, &mut |seq, stream, p| {
            if seq != next + count && gap.is_none() {
                gap = Some(seq);
            }
            count += 1;
            payload += p.len() as u64;
            transport::frame::push_record(&mut enc, stream, p);
        })
        .map_err(|e| AgentError::Store(e.to_string()))
    })?;
    if let Some(g) = gap {
        return Err(AgentError::Store(format!(
            "local journal read from {next} returned seq {g}"
        )));
    }
    if count == 0 {
        return Err(AgentError::Store(format!(
            "local journal holds no record {next}"
        )));
    }
    let count32 = u32::try_from(count).expect("read capped at 65536 records");
    writer.queue_data_encoded(next, count32, &[&enc]);
    Ok((count, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window_with(batches: &[(u64, u64)]) -> Window {
        let mut w = Window {
            first: batches[0].0,
            batches: VecDeque::new(),
            bytes: 0,
            spare: Vec::new(),
            last_enc_len: 0,
            released_to: batches[0].0 - 1,
        };
        for &(first, count) in batches {
            let mut enc = Vec::new();
            for _ in 0..count {
                transport::frame::push_record(&mut enc, 1, &[9u8; 10]);
            }
            w.bytes += usize::try_from(count * 10).unwrap();
            w.batches.push_back(WBatch {
                first,
                count,
                enc,
                payload: count * 10,
                cum_bytes: (first + count - 1) * 10,
            });
        }
        w
    }

    #[test]
    fn sent_batches_give_their_buffers_back_and_are_read_from_the_journal() {
        let mut w = window_with(&[(1, 4), (5, 4), (9, 4)]);
        // Seq 6 sent: only the first batch (1..=4) is wholly behind every sender.
        w.release_sent(6, 1 << 20);
        assert_eq!(w.released_to, 4);
        assert_eq!(w.spare.len(), 1);
        assert!(w.batches[0].enc.is_empty());
        assert_eq!(
            w.find_resident(3),
            None,
            "released: served from the journal"
        );
        assert_eq!(w.find(3), Some(0), "its bookkeeping stays for lag figures");
        assert_eq!(w.find_resident(5), Some(1));
        assert_eq!(w.batches[1].offset_of(6).1, 10);
        // Releasing again is idempotent; releasing everything empties every batch.
        w.release_sent(6, 1 << 20);
        assert_eq!(w.spare.len(), 1);
        w.release_sent(u64::MAX, 1 << 20);
        assert_eq!(w.released_to, 12);
        assert_eq!(w.spare.len(), 3);
        assert_eq!(w.find_resident(12), None);
    }

    #[test]
    fn release_skips_batches_evicted_from_the_window() {
        let mut w = window_with(&[(1, 4), (5, 4), (9, 4)]);
        // The window evicted the first two batches without their being released.
        w.batches.drain(..2);
        w.first = 9;
        w.release_sent(10, 1 << 20);
        assert_eq!(w.released_to, 8, "batch 9..=12 is not wholly sent");
        w.release_sent(12, 1 << 20);
        assert_eq!(w.released_to, 12);
        assert_eq!(w.spare.len(), 1);
        // Oversized buffers are dropped rather than kept.
        let mut w = window_with(&[(1, 4)]);
        w.release_sent(4, 8);
        assert_eq!((w.released_to, w.spare.len()), (4, 0));
    }
}
