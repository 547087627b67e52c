//! Primary → backup replication on loopback, in one process (the SIGKILL and network
//! namespace tests drive the `understudy` binary, in crate `understudy`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent::{BackupAgent, BackupConfig, JournalStore, Mode, Primary, PrimaryConfig, Timing};
use journal::{FsyncPolicy, JournalOptions};
use transport::ClusterKey;

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Every wait for another task to make progress is bounded by this; it is generous because CI
/// machines are slow and shared (a wait that succeeds returns as soon as it can).
const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, every 25 ms, for at most [`PATIENCE`].
async fn poll_until<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn fast_timing() -> Timing {
    init_logs();
    // Short heartbeats and reconnects keep the tests fast; the timeouts that declare a live
    // peer dead are long enough that a loaded machine does not trip them by accident.
    Timing {
        heartbeat: Duration::from_millis(100),
        peer_timeout: Duration::from_secs(10),
        handshake: Duration::from_secs(10),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        stall: Duration::from_secs(10),
    }
}

fn opts() -> JournalOptions {
    JournalOptions {
        fsync: FsyncPolicy::Never,
        segment_bytes: 1 << 20,
        ..Default::default()
    }
}

fn backup_cfg(dir: &Path, key: &ClusterKey, listen: &str) -> BackupConfig {
    BackupConfig {
        listen: listen.into(),
        state_dir: dir.to_owned(),
        key: key.clone(),
        open_store: JournalStore::factory(opts()),
        timing: fast_timing(),
        control_socket: true,
        metrics: None,
        hold_acks: None,
    }
}

fn primary_cfg(dir: &Path, key: &ClusterKey, backups: Vec<String>, mode: Mode) -> PrimaryConfig {
    let mut c = PrimaryConfig::new(
        "app1",
        backups,
        key.clone(),
        dir.to_owned(),
        JournalStore::factory(opts()),
    );
    c.mode = mode;
    c.timing = fast_timing();
    c
}

fn summary(dir: &Path) -> journal::inspect::Summary {
    journal::inspect::summarize(dir.join("apps/app1/journal")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_stream_is_identical_and_gapless() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let addr = b.local_addr().to_string();
    let p = Arc::new(
        Primary::start(primary_cfg(pd.path(), &key, vec![addr], Mode::Async))
            .await
            .unwrap(),
    );
    // Several producer threads, each submitting batches of varied sizes.
    let mut hs = Vec::new();
    for t in 0..4u32 {
        let p = p.clone();
        hs.push(std::thread::spawn(move || {
            for i in 0..500u32 {
                let a = format!("t{t} i{i} {}", "x".repeat(usize::try_from(i % 97).unwrap()));
                let b = vec![u8::try_from(t).unwrap(); usize::try_from(i % 7).unwrap()];
                p.submit_batch([(t, a.as_bytes()), (t + 100, &b[..])])
                    .unwrap();
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(p.last_seq(), 4000);
    p.wait_all_acked(PATIENCE).await.unwrap();
    let st = p.status();
    assert_eq!(st.apps[0].peers[0].lag_messages, 0);
    assert_eq!(st.apps[0].peers[0].state, "streaming");
    let bs = b.status();
    assert_eq!(bs.apps[0].last_seq_journaled, 4000);
    // The control socket answers `understudy status`.
    let q = agent::control::query_all(bd.path()).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].apps[0].name, "app1");
    Arc::try_unwrap(p).unwrap().stop().await;
    b.stop().await;
    let (sp, sb) = (summary(pd.path()), summary(bd.path()));
    assert_eq!((sp.records, sp.gaps, sb.gaps), (4000, 0, 0));
    assert_eq!(sp.digest, sb.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restarts_resume_without_gap_or_duplicate() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let mut b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let addr = b.local_addr().to_string();
    let p = Primary::start(primary_cfg(
        pd.path(),
        &key,
        vec![addr.clone()],
        Mode::Async,
    ))
    .await
    .unwrap();
    // The first session must be streaming before the first interruption: a backup stopped
    // while the primary is still connecting is no reconnection (only sessions that streamed
    // before count), and the count below would come up one short.
    wait_peer_state(&p, "streaming").await;
    let payload = [0xabu8; 64];
    for round in 0..4 {
        for _ in 0..200 {
            let batch: Vec<(u32, &[u8])> = (0..10).map(|s| (s, &payload[..])).collect();
            p.submit_batch(batch).unwrap();
        }
        if round < 3 {
            // Stop the backup mid-stream and bring it back on the same port.
            tokio::time::sleep(Duration::from_millis(20)).await;
            b.stop().await;
            for _ in 0..200 {
                p.submit(7, b"while the backup is down").unwrap();
            }
            b = BackupAgent::start(backup_cfg(bd.path(), &key, &addr))
                .await
                .unwrap();
            // Let the primary find it again before the next interruption.
            p.wait_all_acked(PATIENCE).await.unwrap();
        }
    }
    p.wait_all_acked(PATIENCE).await.unwrap();
    assert!(p.status().apps[0].peers[0].reconnects >= 3);
    p.stop().await;
    b.stop().await;
    let (sp, sb) = (summary(pd.path()), summary(bd.path()));
    assert_eq!(sp.records, 4 * 2000 + 3 * 200);
    assert_eq!((sp.gaps, sb.gaps), (0, 0));
    assert_eq!(sp.digest, sb.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_never_acks_before_the_backup_journals() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(true);
    let mut cfg = backup_cfg(bd.path(), &key, "127.0.0.1:0");
    cfg.hold_acks = Some(hold_rx);
    let b = BackupAgent::start(cfg).await.unwrap();
    let p = Primary::start(primary_cfg(
        pd.path(),
        &key,
        vec![b.local_addr().to_string()],
        Mode::Sync,
    ))
    .await
    .unwrap();
    // The "output" may only leave once acked_seq covers it: with acks withheld it never does.
    let seq = p.submit(1, b"output: hello client").unwrap();
    let r = p.wait_acked(seq, Duration::from_millis(500)).await;
    assert!(r.is_err(), "acknowledged while the backup withheld acks");
    assert!(p.acked_seq() < seq);
    // The backup has it (journaled) but has not said so: still not released.
    hold_tx.send(false).unwrap();
    p.wait_acked(seq, PATIENCE).await.unwrap();
    assert!(b.status().apps[0].durable_seq >= seq);
    p.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_and_others_are_still_served() {
    let (pd, pd2, bd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let key = ClusterKey::generate();
    let b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let addr = b.local_addr().to_string();
    let intruder = Primary::start(primary_cfg(
        pd2.path(),
        &ClusterKey::generate(),
        vec![addr.clone()],
        Mode::Async,
    ))
    .await
    .unwrap();
    intruder.submit(1, b"let me in").unwrap();
    let p = Primary::start(primary_cfg(pd.path(), &key, vec![addr], Mode::Async))
        .await
        .unwrap();
    p.submit(1, b"legit").unwrap();
    p.wait_all_acked(PATIENCE).await.unwrap();
    // The intruder's attempts run on their own schedule: wait until the backup counted one
    // refusal and the intruder reported it, however long a loaded machine takes.
    let refused = poll_until(|| {
        (b.metrics()
            .refused_connections
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1)
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "the backup never refused the intruder");
    let st = poll_until(|| {
        let st = intruder.status();
        st.apps[0].peers[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("authentication"))
            .then_some(st)
    })
    .await;
    let st = st.unwrap_or_else(|| {
        panic!(
            "intruder never reported the refusal: {:?}",
            intruder.status()
        )
    });
    assert_eq!(st.apps[0].peers[0].last_seq_acked, 0);
    intruder.stop().await;
    p.stop().await;
    b.stop().await;
}

/// Output commit through the ring, as the interceptor sees it: with the backup withholding its
/// acknowledgements, `ack_seq` never covers the output record, although the backup journaled
/// it; once acks flow, the output is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_ring_ack_waits_for_the_backup() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(true);
    let mut cfg = backup_cfg(bd.path(), &key, "127.0.0.1:0");
    cfg.hold_acks = Some(hold_rx);
    let b = BackupAgent::start(cfg).await.unwrap();
    let p = Arc::new(
        Primary::start(primary_cfg(
            pd.path(),
            &key,
            vec![b.local_addr().to_string()],
            Mode::Sync,
        ))
        .await
        .unwrap(),
    );
    let ring_path = std::path::PathBuf::from(format!(
        "/dev/shm/understudy-test-{}.ring",
        std::process::id()
    ));
    let ring = shmring::RingConsumer::create(&ring_path, 1 << 16).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let collector = {
        let (p, stop) = (p.clone(), stop.clone());
        std::thread::spawn(move || agent::collector::collect(&ring, &p, &stop, true))
    };
    let producer = shmring::RingProducer::open(&ring_path).unwrap();
    let mut last = 0;
    for i in 0..10u32 {
        last = producer.push(format!("input {i}").as_bytes()).unwrap();
    }
    let out = producer.push(b"output: reply to client").unwrap();
    assert!(out > last);
    // The output must not be released while acks are withheld...
    let r = tokio::task::block_in_place(|| producer.wait_ack(out, Duration::from_millis(400)));
    assert!(
        r.is_err(),
        "output released without a backup acknowledgement"
    );
    assert!(producer.ack_seq() < out);
    // ...even though the backup has journaled it (the collector and the stream run on their
    // own: wait for the journal to reach it, then check the output is still held).
    let journaled =
        poll_until(|| (b.status().apps[0].last_seq_journaled >= 11).then_some(())).await;
    assert!(
        journaled.is_some(),
        "the backup never journaled the output: {:?}",
        b.status()
    );
    assert_eq!(b.status().apps[0].last_seq_journaled, 11);
    assert!(
        producer.ack_seq() < out,
        "output released without a backup acknowledgement"
    );
    hold_tx.send(false).unwrap();
    tokio::task::block_in_place(|| producer.wait_ack(out, PATIENCE)).unwrap();
    assert!(p.acked_seq() >= 11);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    collector.join().unwrap().unwrap();
    let _ = std::fs::remove_file(&ring_path);
    Arc::try_unwrap(p).unwrap().stop().await;
    b.stop().await;
}

fn mem_factory(first: u64, prefill: u64) -> agent::OpenStore {
    Arc::new(move |_: &Path| {
        let mut s = agent::MemStore::starting_at(first);
        for i in 0..prefill {
            agent::Store::append(&mut s, first + i, 1, b"old").unwrap();
        }
        agent::Store::commit(&mut s).unwrap();
        Ok(Box::new(s) as Box<dyn agent::Store>)
    })
}

async fn wait_peer_state(p: &Primary, state: &str) -> agent::status::PeerStatus {
    poll_until(|| {
        let st = p.status().apps[0].peers[0].clone();
        (st.state == state).then_some(st)
    })
    .await
    .unwrap_or_else(|| panic!("peer never reached state {state}: {:?}", p.status()))
}

/// The primary's journal starts at seq 1000 (retention dropped the rest); a fresh backup holds
/// nothing, so it cannot be resumed: it is told so, and status says it needs a re-seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_too_far_behind_is_told_so() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let mut cfg = primary_cfg(
        pd.path(),
        &key,
        vec![b.local_addr().to_string()],
        Mode::Async,
    );
    cfg.open_store = mem_factory(1000, 0);
    let p = Primary::start(cfg).await.unwrap();
    p.submit(1, b"after retention").unwrap();
    let st = wait_peer_state(&p, "too-far-behind").await;
    let e = st.error.unwrap();
    assert!(e.contains("too far behind") && e.contains("re-seed"), "{e}");
    assert_eq!(
        b.status().apps[0].last_seq_journaled,
        0,
        "nothing may be written with a gap"
    );
    p.stop().await;
    b.stop().await;
}

/// The backup holds more of the application than the primary: refused as diverged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_backup_is_refused() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let mut bc = backup_cfg(bd.path(), &key, "127.0.0.1:0");
    bc.open_store = mem_factory(1, 50);
    let b = BackupAgent::start(bc).await.unwrap();
    let mut cfg = primary_cfg(
        pd.path(),
        &key,
        vec![b.local_addr().to_string()],
        Mode::Async,
    );
    cfg.open_store = mem_factory(1, 0);
    let p = Primary::start(cfg).await.unwrap();
    p.submit(1, b"new history").unwrap();
    let st = wait_peer_state(&p, "refused").await;
    assert!(st.error.unwrap().contains("diverged"));
    p.stop().await;
    b.stop().await;
}

/// Async mode: a backup that stops acknowledging while too much is in flight is dropped (the
/// primary's memory stays bounded by its window) and resumed from its watermark once it acks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_backup_is_dropped_then_resumed_in_async_mode() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let (hold_tx, hold_rx) = tokio::sync::watch::channel(true);
    let mut bc = backup_cfg(bd.path(), &key, "127.0.0.1:0");
    bc.hold_acks = Some(hold_rx);
    let b = BackupAgent::start(bc).await.unwrap();
    let mut cfg = primary_cfg(
        pd.path(),
        &key,
        vec![b.local_addr().to_string()],
        Mode::Async,
    );
    cfg.max_inflight_bytes = 64 << 10;
    cfg.window_bytes = 256 << 10;
    cfg.timing.stall = Duration::from_millis(300);
    let p = Primary::start(cfg).await.unwrap();
    let payload = [7u8; 1000];
    for _ in 0..100 {
        let batch: Vec<(u32, &[u8])> = (0..10).map(|s| (s, &payload[..])).collect();
        p.submit_batch(batch).unwrap();
    }
    // Never blocked: all 1000 messages (1 MB, four times the window) were accepted at once.
    assert_eq!(p.last_seq(), 1000);
    let dropped = poll_until(|| {
        let st = p.status().apps[0].peers[0].clone();
        st.error
            .as_deref()
            .is_some_and(|e| e.contains("too slow"))
            .then_some(())
    })
    .await;
    assert!(
        dropped.is_some(),
        "slow backup was not dropped: {:?}",
        p.status()
    );
    hold_tx.send(false).unwrap();
    p.wait_all_acked(PATIENCE).await.unwrap();
    assert!(p.status().apps[0].peers[0].reconnects >= 1);
    p.stop().await;
    b.stop().await;
    let (sp, sb) = (summary(pd.path()), summary(bd.path()));
    assert_eq!((sp.records, sb.gaps), (1000, 0));
    assert_eq!(sp.digest, sb.digest);
}

/// One backup agent serves several primaries (one per application) at once, each into its own
/// journal under `apps/NAME/journal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_backup_serves_several_applications() {
    let bd = tempfile::tempdir().unwrap();
    let key = ClusterKey::generate();
    let b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let addr = b.local_addr().to_string();
    let mut prims = Vec::new();
    let mut dirs = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        let d = tempfile::tempdir().unwrap();
        let mut c = primary_cfg(d.path(), &key, vec![addr.clone()], Mode::Async);
        c.app = name.into();
        let p = Primary::start(c).await.unwrap();
        for i in 0..300u32 {
            p.submit(i % 3, format!("{name} {i}").as_bytes()).unwrap();
        }
        prims.push(p);
        dirs.push((name, d));
    }
    for p in &prims {
        p.wait_all_acked(PATIENCE).await.unwrap();
    }
    assert_eq!(b.status().apps.len(), 3);
    for p in prims {
        p.stop().await;
    }
    b.stop().await;
    for (name, d) in &dirs {
        let j = |root: &Path| {
            journal::inspect::summarize(root.join("apps").join(name).join("journal")).unwrap()
        };
        let (sp, sb) = (j(d.path()), j(bd.path()));
        assert_eq!((sp.records, sb.gaps), (300, 0));
        assert_eq!(sp.digest, sb.digest, "{name}");
    }
}

/// Data frames cut inside submitted batches (a frame smaller than a batch, so most frames
/// start and end mid-batch), and a window smaller than the stream (early records come from the
/// journal): still gapless, identical digests, lag 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_cut_inside_batches_and_behind_the_window_stay_gapless() {
    let (pd, bd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let key = ClusterKey::generate();
    let b = BackupAgent::start(backup_cfg(bd.path(), &key, "127.0.0.1:0"))
        .await
        .unwrap();
    let mut c = primary_cfg(
        pd.path(),
        &key,
        vec![b.local_addr().to_string()],
        Mode::Async,
    );
    c.batch_bytes = 300;
    c.window_bytes = 4096;
    let p = Primary::start(c).await.unwrap();
    let mut n = 0u64;
    for i in 0..300usize {
        let payloads: Vec<Vec<u8>> = (0..1 + i % 13)
            .map(|k| vec![u8::try_from(k).unwrap(); (i * 7 + k * 31) % 150])
            .collect();
        n += payloads.len() as u64;
        p.submit_batch(
            payloads
                .iter()
                .map(|v| (u32::try_from(i % 5).unwrap(), &v[..])),
        )
        .unwrap();
    }
    p.wait_all_acked(PATIENCE).await.unwrap();
    let st = p.status();
    assert_eq!(st.apps[0].peers[0].lag_messages, 0);
    assert_eq!(st.apps[0].peers[0].lag_bytes, 0);
    p.stop().await;
    b.stop().await;
    let (sp, sb) = (summary(pd.path()), summary(bd.path()));
    assert_eq!((sp.records, sb.records, sp.gaps, sb.gaps), (n, n, 0, 0));
    assert_eq!(sp.digest, sb.digest);
}
