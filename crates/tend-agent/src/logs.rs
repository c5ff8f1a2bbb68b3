//! The agent's log endpoint: the tail of a task's stdout or stderr, for the control plane
//! (its certificate over TLS; the cluster token, in constant time, in plain HTTP), read from the
//! end of the file.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::{pod, AgentState};

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    service: String,
    instance: String,
    incarnation: u64,
    task: String,
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    tail_bytes: Option<u64>,
    /// Stream the tail, then what is written, as it is written (raw bytes, chunked).
    #[serde(default)]
    follow: bool,
}

fn api_error(code: StatusCode, kind: &str, msg: String) -> Response {
    (code, Json(serde_json::json!({ "error": { "code": kind, "message": msg } }))).into_response()
}

/// Serves the tail of a task's stdout or stderr to the control plane.
pub(crate) async fn logs(
    State(st): State<Arc<AgentState>>,
    headers: HeaderMap,
    peer: Option<axum::Extension<tend_tls::serve::Peer>>,
    Query(q): Query<LogQuery>,
) -> Response {
    let peer = peer.and_then(|p| p.0 .0);
    if let Some(refusal) = caller_refused(&st, &headers, peer.as_ref()) {
        return api_error(StatusCode::UNAUTHORIZED, "unauthorized", refusal.into());
    }
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", "stream must be stdout or stderr".into());
    }
    let valid = |s: &str| !s.is_empty() && !s.contains('/') && s != ".." && s != ".";
    if !valid(&q.service) || !valid(&q.instance) || !valid(&q.task) {
        return api_error(StatusCode::BAD_REQUEST, "bad_request", "invalid name".into());
    }
    let path =
        st.ctx.sandbox_dir(&q.service, &q.instance, q.incarnation).join(format!("{}.{stream}", q.task));
    let tail = q.tail_bytes.unwrap_or(64 * 1024).min(pod::LOG_CAP_BYTES);
    // Only the tail is read, from the end of the file: a huge log costs no more than its tail.
    let rotated = path.with_file_name(format!("{}.{stream}.1", q.task));
    let Ok((bytes, truncated)) = tail_across_rotation(&path, &rotated, tail).await else {
        return api_error(StatusCode::NOT_FOUND, "not_found", format!("no {stream} log for that task"));
    };
    if q.follow {
        return axum::body::Body::from_stream(follow(path, bytes)).into_response();
    }
    let data = String::from_utf8_lossy(&bytes).into_owned();
    Json(tend_api::LogChunk { stream, data, truncated }).into_response()
}

/// How often a followed log is looked at for new bytes, and for how long at most.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(200);
const FOLLOW_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
/// At most this much is sent in one piece.
const FOLLOW_CHUNK: usize = 64 * 1024;

/// `tail`, then the bytes appended to `path` as they come: from where the tail ended; from the
/// start of the new file after a rotation (the file got shorter). Ends when the file is gone
/// (the incarnation's sandbox removed), after `FOLLOW_MAX`, or when the reader goes (the body
/// is dropped).
fn follow(path: std::path::PathBuf, tail: Vec<u8>) -> impl futures::Stream<Item = std::io::Result<Vec<u8>>> {
    async_stream::try_stream! {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut pos = tokio::fs::metadata(&path).await?.len();
        if !tail.is_empty() {
            yield tail;
        }
        let end = tokio::time::Instant::now() + FOLLOW_MAX;
        while tokio::time::Instant::now() < end {
            let Ok(meta) = tokio::fs::metadata(&path).await else { break };
            if meta.len() < pos {
                pos = 0; // rotated: the rest of the old file is in `.1`
            }
            if meta.len() == pos {
                tokio::time::sleep(FOLLOW_POLL).await;
                continue;
            }
            let mut f = tokio::fs::File::open(&path).await?;
            f.seek(std::io::SeekFrom::Start(pos)).await?;
            let mut buf = Vec::with_capacity(FOLLOW_CHUNK);
            f.take(FOLLOW_CHUNK as u64).read_to_end(&mut buf).await?;
            pos += buf.len() as u64;
            yield buf;
        }
    }
}

/// The last `n` bytes of a log: of `current`, and when it holds fewer (just rotated), the rest
/// from the end of `rotated`.
async fn tail_across_rotation(
    current: &std::path::Path,
    rotated: &std::path::Path,
    n: u64,
) -> std::io::Result<(Vec<u8>, bool)> {
    let (mut bytes, truncated) = read_tail(current, n).await?;
    let short = n.saturating_sub(bytes.len() as u64);
    if short > 0 {
        if let Ok((mut older, more)) = read_tail(rotated, short).await {
            older.append(&mut bytes);
            return Ok((older, more));
        }
    }
    Ok((bytes, truncated))
}

/// The last `n` bytes of a file, and whether there was more before them.
async fn read_tail(path: &std::path::Path, n: u64) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(path).await?;
    let len = f.metadata().await?.len();
    let start = len.saturating_sub(n);
    f.seek(std::io::SeekFrom::Start(start)).await?;
    let mut buf = Vec::with_capacity((len - start) as usize);
    f.take(n).read_to_end(&mut buf).await?;
    Ok((buf, start > 0))
}

/// Over TLS only the control plane's certificate may read logs; in plain HTTP the cluster
/// token, compared in constant time (how long a refusal takes says nothing of how much of the
/// token matched).
fn caller_refused(
    st: &AgentState,
    headers: &HeaderMap,
    peer: Option<&tend_tls::PeerCert>,
) -> Option<&'static str> {
    if st.identity.is_some() {
        return match peer {
            Some(p) if p.is_control_plane() => None,
            _ => Some("only the control plane's certificate may read logs"),
        };
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    let want = format!("Bearer {}", st.cfg.cluster_token);
    let same = auth.len() == want.len()
        && auth.bytes().zip(want.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
    (!same).then_some("a valid cluster token is required")
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn only_the_tail_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.stdout");
        let mut body = vec![b'x'; 1 << 20];
        body.extend_from_slice(b"last line\n");
        std::fs::write(&p, &body).unwrap();
        let (tail, truncated) = super::read_tail(&p, 10).await.unwrap();
        assert_eq!((tail.as_slice(), truncated), (&b"last line\n"[..], true));
        let (all, truncated) = super::read_tail(&p, 10 << 20).await.unwrap();
        assert_eq!((all.len(), truncated), (body.len(), false));
    }

    /// A log past the cap keeps only the cap's worth in `.1`, and a tail read right after the
    /// rotation still shows the last lines.
    #[tokio::test]
    async fn rotation_keeps_the_end_and_tails_read_across_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.stdout");
        let cap = crate::pod::LOG_CAP_BYTES as usize;
        let mut body = vec![b'x'; 3 * cap];
        body.extend_from_slice(b"before rotation\n");
        std::fs::write(&p, &body).unwrap();
        crate::pod::rotate_logs(dir.path(), "t");
        let rotated = dir.path().join("t.stdout.1");
        assert_eq!(std::fs::metadata(&rotated).unwrap().len(), cap as u64, "only the cap is kept");
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        std::fs::write(&p, b"after\n").unwrap();
        let (tail, truncated) = super::tail_across_rotation(&p, &rotated, 22).await.unwrap();
        assert_eq!((tail.as_slice(), truncated), (&b"before rotation\nafter\n"[..], true));
    }
}
