//! The control socket through which `understudy status` asks an agent for its state.
//!
//! Each agent binds `STATE_DIR/agents/<id>.sock` (directory 0700, socket 0600, owned by the
//! agent's user, root in production). Protocol: the client writes one line, the agent answers
//! with one line of JSON and closes. Requests: `status` (answer: [`AgentStatus`]) and, on a
//! primary, `add-backup HOST:PORT` (answer: `{"ok": ...}` or `{"error": ...}`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::metrics::StatusFn;
use crate::status::AgentStatus;
use crate::AgentError;

/// Directory of the control sockets under a state dir.
pub fn socket_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("agents")
}

/// Bind the control socket `id`; refuses when a live agent already holds it.
pub async fn bind(state_dir: &Path, id: &str) -> Result<(UnixListener, PathBuf), AgentError> {
    let dir = socket_dir(state_dir);
    let io = |what: &str, p: &Path, e: std::io::Error| AgentError::Io {
        what: format!("{what} {}", p.display()),
        source: e,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("chmod", &dir, e))?;
    let path = dir.join(format!("{id}.sock"));
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(AgentError::Busy(format!(
                "another agent serves {} (control socket {} is live)",
                id,
                path.display()
            )));
        }
        let _ = std::fs::remove_file(&path);
    }
    let l = UnixListener::bind(&path).map_err(|e| io("bind", &path, e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", &path, e))?;
    Ok((l, path))
}

/// Handles a request other than `status`; `Err` is reported to the client as `{"error": ..}`.
pub type CommandFn = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// Answer requests on `l` until the task is dropped.
pub async fn serve(l: UnixListener, status: StatusFn, command: Option<CommandFn>) {
    loop {
        let Ok((sock, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let status = status.clone();
        let command = command.clone();
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r.take(256));
            let ok = tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line)).await;
            if !matches!(ok, Ok(Ok(_))) {
                return;
            }
            let reply = match (line.trim(), &command) {
                ("status", _) => serde_json::to_string(&status()).unwrap_or_default(),
                (other, Some(c)) => match c(other) {
                    Ok(ok) => serde_json::json!({ "ok": ok }).to_string(),
                    Err(e) => serde_json::json!({ "error": e }).to_string(),
                },
                (other, None) => {
                    serde_json::json!({ "error": format!("unknown request {other:?}") }).to_string()
                }
            };
            let _ = w.write_all(reply.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

/// Ask every agent under `state_dir` for its status. Stale sockets are skipped.
pub async fn query_all(state_dir: &Path) -> Vec<AgentStatus> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(socket_dir(state_dir)) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    paths.sort();
    for p in paths {
        if let Ok(Ok(Some(s))) = tokio::time::timeout(Duration::from_secs(3), query(&p)).await {
            out.push(s);
        }
    }
    out
}

/// Send one request line to the agent at `path`; returns its JSON answer.
pub async fn request(path: &Path, line: &str) -> std::io::Result<serde_json::Value> {
    let sock = UnixStream::connect(path).await?;
    let (r, mut w) = sock.into_split();
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await?;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await?;
    serde_json::from_str(&answer)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

async fn query(path: &Path) -> std::io::Result<Option<AgentStatus>> {
    let sock = UnixStream::connect(path).await?;
    let (r, mut w) = sock.into_split();
    w.write_all(b"status\n").await?;
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    Ok(serde_json::from_str(&line).ok())
}
