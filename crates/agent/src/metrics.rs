//! Prometheus text metrics over a tiny HTTP endpoint (`--metrics HOST:PORT`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::status::AgentStatus;

/// Counters shared by an agent's tasks.
#[derive(Debug, Default)]
pub struct Metrics {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub acks: AtomicU64,
    pub fsyncs: AtomicU64,
    pub reconnects: AtomicU64,
    pub refused_connections: AtomicU64,
}

impl Metrics {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Render the Prometheus text exposition of these counters and `status`'s gauges.
    pub fn render(&self, status: &AgentStatus) -> String {
        let role = &status.role;
        let mut s = String::new();
        let counters = [
            (
                "understudy_messages_total",
                "replication messages sent (primary) or journaled (backup)",
                &self.messages,
            ),
            (
                "understudy_bytes_total",
                "payload bytes sent (primary) or journaled (backup)",
                &self.bytes,
            ),
            (
                "understudy_acks_total",
                "acknowledgements sent (backup) or received (primary)",
                &self.acks,
            ),
            (
                "understudy_fsyncs_total",
                "journal commits that synced to disk",
                &self.fsyncs,
            ),
            (
                "understudy_reconnects_total",
                "replication connections re-established",
                &self.reconnects,
            ),
            (
                "understudy_refused_connections_total",
                "connections refused (auth, version, garbage)",
                &self.refused_connections,
            ),
        ];
        for (name, help, c) in counters {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(s, "{name}{{role=\"{role}\"}} {}", c.load(Relaxed));
        }
        let _ = writeln!(s, "# HELP understudy_lag_messages messages not yet acknowledged by a backup\n# TYPE understudy_lag_messages gauge");
        for a in &status.apps {
            for p in &a.peers {
                let _ = writeln!(
                    s,
                    "understudy_lag_messages{{role=\"{role}\",app=\"{}\",peer=\"{}\"}} {}",
                    a.name, p.addr, p.lag_messages
                );
            }
        }
        let _ = writeln!(s, "# HELP understudy_lag_bytes payload bytes not yet acknowledged by a backup\n# TYPE understudy_lag_bytes gauge");
        for a in &status.apps {
            for p in &a.peers {
                let _ = writeln!(
                    s,
                    "understudy_lag_bytes{{role=\"{role}\",app=\"{}\",peer=\"{}\"}} {}",
                    a.name, p.addr, p.lag_bytes
                );
            }
        }
        let _ = writeln!(s, "# HELP understudy_journal_last_seq last seq in this agent's journal\n# TYPE understudy_journal_last_seq gauge");
        for a in &status.apps {
            let _ = writeln!(
                s,
                "understudy_journal_last_seq{{role=\"{role}\",app=\"{}\"}} {}",
                a.name, a.last_seq_journaled
            );
        }
        s
    }
}

/// A function that snapshots an agent's status.
pub type StatusFn = Arc<dyn Fn() -> AgentStatus + Send + Sync>;

/// Serve `GET /metrics` (any path) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, status: StatusFn) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let metrics = metrics.clone();
        let status = status.clone();
        tokio::spawn(async move {
            let mut req = Vec::with_capacity(1024);
            let mut buf = [0u8; 1024];
            let read = async {
                while req.len() < 8192 && !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(2), read)
                .await
                .is_err()
            {
                return;
            }
            let body = metrics.render(&status());
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}
