//! The backup role: accept replication streams from any number of primaries (one per
//! application), journal them durably, acknowledge durable seqs.
//!
//! Per connection: secure handshake (refused and logged on any failure, the listener goes on),
//! `Hello` → `Welcome{durable_seq}` → `Data`* / `Heartbeat`* from the primary, `Ack` and
//! `Heartbeat` back. Records are appended strictly in seq order; a gap ends the connection,
//! a record already held is skipped (never written twice). A newer connection for the same
//! application displaces the older one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use transport::{ClusterKey, Frame, RefuseCode, SecureReader, SecureWriter, TransportError};

use crate::metrics::{Metrics, StatusFn};
use crate::status::{AgentStatus, AppStatus, PeerStatus};
use crate::store::{OpenStore, Store};
use crate::{blocking, unix_nanos, valid_app_name, AgentError, Timing};

/// Configuration of a backup agent.
#[derive(Clone)]
pub struct BackupConfig {
    /// `HOST:PORT` to listen on (port 0 picks one).
    pub listen: String,
    /// Applications' journals go to `state_dir/apps/NAME/journal`.
    pub state_dir: PathBuf,
    pub key: ClusterKey,
    pub open_store: OpenStore,
    pub timing: Timing,
    /// Serve the control socket under `state_dir/agents/` (off in some tests).
    pub control_socket: bool,
    /// Serve Prometheus metrics here.
    pub metrics: Option<String>,
    /// Test hook: when set, acks are withheld while the value is true.
    pub hold_acks: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for BackupConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupConfig")
            .field("listen", &self.listen)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

struct BApp {
    name: String,
    store: Mutex<Box<dyn Store>>,
    /// Bumped by each new connection; an older connection stops when it sees a newer one.
    generation: AtomicU64,
    status: Mutex<BAppStatus>,
    journaled_bytes: AtomicU64,
}

#[derive(Default, Clone)]
struct BAppStatus {
    peer: String,
    state: String,
    sync: bool,
    last_received: u64,
    acked: u64,
    error: Option<String>,
    connections: u64,
}

struct Shared {
    cfg: BackupConfig,
    apps: Mutex<HashMap<String, Arc<BApp>>>,
    metrics: Arc<Metrics>,
    listen: SocketAddr,
}

/// A running backup agent. Dropping the handle does not stop it; call [`BackupAgent::stop`].
pub struct BackupAgent {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    control_path: Option<PathBuf>,
}

impl std::fmt::Debug for BackupAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupAgent({})", self.shared.listen)
    }
}

impl BackupAgent {
    /// Bind the listener (and control socket, metrics) and start serving.
    pub async fn start(cfg: BackupConfig) -> Result<Self, AgentError> {
        let listener = TcpListener::bind(&cfg.listen)
            .await
            .map_err(|e| AgentError::Io {
                what: format!("listen on {}", cfg.listen),
                source: e,
            })?;
        let listen = listener.local_addr().map_err(|e| AgentError::Io {
            what: "listener address".into(),
            source: e,
        })?;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            apps: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
            listen,
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let status_fn: StatusFn = {
            let s = shared.clone();
            Arc::new(move || status(&s))
        };
        let mut control_path = None;
        if cfg.control_socket {
            let (l, p) = crate::control::bind(&cfg.state_dir, "backup").await?;
            control_path = Some(p);
            tasks.push(tokio::spawn(crate::control::serve(
                l,
                status_fn.clone(),
                None,
            )));
        }
        if let Some(m) = &cfg.metrics {
            let l = TcpListener::bind(m).await.map_err(|e| AgentError::Io {
                what: format!("metrics listen on {m}"),
                source: e,
            })?;
            tasks.push(tokio::spawn(crate::metrics::serve(
                l,
                shared.metrics.clone(),
                status_fn,
            )));
        }
        tasks.push(tokio::spawn(accept_loop(shared.clone(), listener, stop_rx)));
        tracing::info!("backup agent listening on {listen}");
        Ok(Self {
            shared,
            stop,
            tasks,
            control_path,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen
    }

    /// A snapshot of this agent's status.
    pub fn status(&self) -> AgentStatus {
        status(&self.shared)
    }

    /// Counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Stop accepting, close every connection, remove the control socket.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        // The accept loop (last task) winds its connections down; the others are aborted.
        let mut tasks = self.tasks;
        if let Some(accept) = tasks.pop() {
            let abort = accept.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), accept)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        // Close every journal now (the next agent on this state dir must be able to lock it).
        self.shared.apps.lock().expect("apps lock").clear();
        if let Some(p) = self.control_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn status(s: &Shared) -> AgentStatus {
    let apps = s.apps.lock().expect("apps lock");
    let mut out: Vec<AppStatus> = apps
        .values()
        .map(|a| {
            let (first, last, durable) = {
                let st = a.store.lock().expect("store lock");
                (st.first_seq(), st.last_seq(), st.durable_seq())
            };
            let b = a.status.lock().expect("status lock").clone();
            AppStatus {
                name: a.name.clone(),
                role: "backup".into(),
                mode: if b.sync { "sync" } else { "async" }.into(),
                last_seq_journaled: last,
                durable_seq: durable,
                first_seq: first,
                peers: vec![PeerStatus {
                    addr: b.peer,
                    state: b.state,
                    last_seq_sent: b.last_received,
                    last_seq_acked: b.acked,
                    lag_messages: b.last_received.saturating_sub(b.acked),
                    lag_bytes: 0,
                    reconnects: b.connections.saturating_sub(1),
                    error: b.error,
                }],
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    AgentStatus {
        role: "backup".into(),
        pid: std::process::id(),
        listen: s.listen.to_string(),
        apps: out,
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok((sock, peer)) => {
                    let s = shared.clone();
                    let stop = stop.clone();
                    conns.spawn(async move { connection(s, sock, peer, stop).await });
                }
                Err(e) => {
                    tracing::warn!("accept on {}: {e}", shared.listen);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

async fn connection(
    shared: Arc<Shared>,
    sock: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let key = shared.cfg.key.clone();
    let (reader, mut writer) =
        match transport::accept(sock, &key, shared.cfg.timing.handshake).await {
            Ok(rw) => rw,
            Err(e) => {
                Metrics::add(&shared.metrics.refused_connections, 1);
                tracing::warn!("refused connection from {peer}: {e}");
                return;
            }
        };
    match serve_stream(&shared, reader, &mut writer, stop).await {
        Ok(()) => tracing::info!("{peer}: stream closed"),
        Err(e) => {
            tracing::warn!("{peer}: {e}");
            if let AgentError::Refused { code, message } = &e {
                let _ = writer
                    .send(&Frame::Refuse {
                        code: *code,
                        message: message.clone(),
                    })
                    .await;
            }
        }
    }
    writer.shutdown().await;
}

fn bad(message: String) -> AgentError {
    AgentError::Refused {
        code: RefuseCode::BadRequest,
        message,
    }
}

fn open_app(shared: &Shared, name: &str) -> Result<Arc<BApp>, AgentError> {
    let mut apps = shared.apps.lock().expect("apps lock");
    if let Some(a) = apps.get(name) {
        return Ok(a.clone());
    }
    let dir = shared.cfg.state_dir.join("apps").join(name).join("journal");
    std::fs::create_dir_all(&dir).map_err(|e| AgentError::Refused {
        code: RefuseCode::Internal,
        message: format!("backup cannot create {}: {e}", dir.display()),
    })?;
    let store = (shared.cfg.open_store)(&dir).map_err(|e| AgentError::Refused {
        code: RefuseCode::Internal,
        message: format!("backup cannot open journal {}: {e}", dir.display()),
    })?;
    let a = Arc::new(BApp {
        name: name.to_owned(),
        store: Mutex::new(store),
        generation: AtomicU64::new(0),
        status: Mutex::new(BAppStatus::default()),
        journaled_bytes: AtomicU64::new(0),
    });
    apps.insert(name.to_owned(), a.clone());
    Ok(a)
}

async fn serve_stream(
    shared: &Arc<Shared>,
    mut reader: SecureReader,
    writer: &mut SecureWriter,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let peer = reader.peer();
    let timing = shared.cfg.timing.clone();
    let first = tokio::time::timeout(timing.peer_timeout, reader.next_frame())
        .await
        .map_err(|_| bad(format!("no hello within {:?}", timing.peer_timeout)))??;
    let Frame::Hello {
        app: name,
        first_seq,
        last_seq,
        sync,
    } = first
    else {
        return Err(bad(format!("expected hello, got {}", first.kind())));
    };
    if let Err(why) = valid_app_name(&name) {
        return Err(bad(why));
    }
    let app = open_app(shared, &name)?;
    let generation = app.generation.fetch_add(1, Relaxed) + 1;
    let (durable, last_held) = {
        let st = app.store.lock().expect("store lock");
        (st.durable_seq(), st.last_seq())
    };
    {
        let mut s = app.status.lock().expect("status lock");
        s.peer = peer.to_string();
        s.state = "streaming".into();
        s.sync = sync;
        s.error = None;
        s.connections += 1;
        s.last_received = last_held;
        s.acked = durable;
    }
    tracing::info!(
        "{peer}: app {name}: primary holds {first_seq}..={last_seq}, we hold durable {durable}"
    );
    writer
        .send(&Frame::Welcome {
            durable_seq: durable,
            journaled_bytes: app.journaled_bytes.load(Relaxed),
        })
        .await?;

    // Frames are read by their own task so heartbeats and acks flow while we wait.
    let (tx, mut rx) = mpsc::channel::<Result<(Frame, bool), TransportError>>(64);
    let pool = reader.buffer_pool();
    let reader_task = tokio::spawn(async move {
        loop {
            let r = reader.next_frame().await;
            let more = reader.has_buffered();
            let end = r.is_err();
            if tx.send(r.map(|f| (f, more))).await.is_err() || end {
                break;
            }
        }
    });
    let result = stream_loop(shared, &app, generation, writer, &mut rx, &mut stop, &pool).await;
    reader_task.abort();
    {
        let mut s = app.status.lock().expect("status lock");
        if app.generation.load(Relaxed) == generation {
            s.state = "disconnected".into();
            s.error = result.as_ref().err().map(|e| e.to_string());
        }
    }
    result
}

async fn stream_loop(
    shared: &Arc<Shared>,
    app: &Arc<BApp>,
    generation: u64,
    writer: &mut SecureWriter,
    rx: &mut mpsc::Receiver<Result<(Frame, bool), TransportError>>,
    stop: &mut watch::Receiver<bool>,
    pool: &transport::BufferPool,
) -> Result<(), AgentError> {
    let timing = shared.cfg.timing.clone();
    let mut hold = shared.cfg.hold_acks.clone();
    let mut last_sent_ack = app.store.lock().expect("store lock").durable_seq();
    let mut uncommitted = false;
    // Group commit: wait for frames already received, but never longer than this.
    let mut uncommitted_since = std::time::Instant::now();
    let mut uncommitted_frames = 0u32;
    let mut heartbeat = tokio::time::interval(timing.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = tokio::time::Instant::now();
    loop {
        let held = hold.as_ref().is_some_and(|h| *h.borrow());
        tokio::select! {
            _ = stop.changed() => {
                let _ = writer.send(&Frame::Goodbye { reason: "backup agent stopping".into() }).await;
                return Ok(());
            }
            _ = heartbeat.tick() => {
                if last_rx.elapsed() > timing.peer_timeout {
                    return Err(AgentError::PeerTimeout(timing.peer_timeout));
                }
                writer.send(&Frame::Heartbeat { sent_unix_nanos: unix_nanos() }).await?;
            }
            _ = async { hold.as_mut().expect("held implies hook").changed().await }, if held => {}
            m = rx.recv() => {
                let Some(m) = m else { return Ok(()) };
                let (frame, more) = m?;
                last_rx = tokio::time::Instant::now();
                match frame {
                    Frame::Data { first_seq, records } => {
                        journal_data(shared, app, generation, first_seq, &records)?;
                        // The reader reuses the buffer for a later frame.
                        pool.put(records);
                        if !uncommitted {
                            uncommitted_since = std::time::Instant::now();
                        }
                        uncommitted = true;
                        uncommitted_frames += 1;
                        if more
                            && uncommitted_frames < 64
                            && uncommitted_since.elapsed() < Duration::from_millis(2)
                        {
                            continue;
                        }
                    }
                    Frame::Heartbeat { .. } => {}
                    Frame::Goodbye { reason } => {
                        tracing::info!("{}: primary says goodbye: {reason}", writer.peer());
                        commit(shared, app)?;
                        return Ok(());
                    }
                    Frame::Refuse { code, message } => {
                        return Err(AgentError::PeerRefused { code, message });
                    }
                    other => return Err(bad(format!("unexpected {} frame while streaming", other.kind()))),
                }
            }
        }
        if uncommitted {
            commit(shared, app)?;
            uncommitted = false;
            uncommitted_frames = 0;
        }
        let held = hold.as_ref().is_some_and(|h| *h.borrow());
        if !held {
            let durable = app.store.lock().expect("store lock").durable_seq();
            if durable > last_sent_ack {
                writer
                    .send(&Frame::Ack {
                        durable_seq: durable,
                        journaled_bytes: app.journaled_bytes.load(Relaxed),
                    })
                    .await?;
                Metrics::add(&shared.metrics.acks, 1);
                last_sent_ack = durable;
                app.status.lock().expect("status lock").acked = durable;
            }
        }
    }
}

fn journal_data(
    shared: &Shared,
    app: &BApp,
    generation: u64,
    first_seq: u64,
    records: &transport::DataBatch,
) -> Result<(), AgentError> {
    let n = records.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let mut bytes = 0u64;
    let last_received = blocking(|| {
        let mut st = app.store.lock().expect("store lock");
        if app.generation.load(Relaxed) != generation {
            return Err(AgentError::Displaced);
        }
        let last = st.last_seq();
        if first_seq > last + 1 {
            return Err(bad(format!(
                "gap in stream: expected seq {}, got {first_seq}",
                last + 1
            )));
        }
        // Records we already hold (a resend after reconnect) are skipped, never re-written.
        let skip = usize::try_from(last + 1 - first_seq).unwrap_or(usize::MAX);
        if skip >= records.len() {
            return Ok(last);
        }
        let mut off = 0usize;
        for (_, payload) in records.iter().take(skip) {
            off += transport::frame::RECORD_OVERHEAD + payload.len();
        }
        let enc = &records.encoded()[off..];
        bytes = (enc.len() - (records.len() - skip) * transport::frame::RECORD_OVERHEAD) as u64;
        // Validated when the frame was decoded: the journal need not walk the records again.
        let count = u32::try_from(records.len() - skip).expect("frame records capped by bytes");
        st.append_encoded_counted(last + 1, count, enc)
            .map_err(|e| AgentError::Store(e.to_string()))
    })?;
    app.journaled_bytes.fetch_add(bytes, Relaxed);
    Metrics::add(&shared.metrics.messages, n);
    Metrics::add(&shared.metrics.bytes, bytes);
    app.status.lock().expect("status lock").last_received = last_received;
    Ok(())
}

fn commit(shared: &Shared, app: &BApp) -> Result<u64, AgentError> {
    blocking(|| {
        let mut st = app.store.lock().expect("store lock");
        let before = st.fsyncs();
        let d = st.commit().map_err(|e| AgentError::Store(e.to_string()))?;
        Metrics::add(&shared.metrics.fsyncs, st.fsyncs() - before);
        Ok(d)
    })
}
