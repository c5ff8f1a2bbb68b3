//! Uploaded artifacts across the members of a control plane: each member keeps them in its data
//! directory; an upload is pushed to every other member (best effort), and a member asked for one
//! it lacks — a new leader after a failover — pulls it from the others, checking its digest.
//! Member to member, through `/v1/member/artifacts/{sha}` (cluster token), which every member
//! serves from its own directory whatever its role. Every copy is streamed through a file while
//! its digest is computed: memory stays flat whatever the artifact's size.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::Server;

/// The member-to-member route.
pub const MEMBER_ROUTE: &str = "/v1/member/artifacts";

/// Largest artifact accepted (streamed to disk: memory stays flat whatever the size).
pub const MAX_ARTIFACT_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Why an upload was not kept.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the body's sha256 is {0}, not the {1} it is uploaded as")]
    Digest(String, String),
    #[error("an artifact is at most {MAX_ARTIFACT_BYTES} bytes")]
    TooLarge,
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("keeping the upload: {0}")]
    Io(#[from] std::io::Error),
}

/// Streams `body` to a unique temporary file under `dir` while hashing it, then renames it to
/// `sha` if the digest matches (removed otherwise): bounded memory, concurrent identical uploads
/// fine. Returns the byte count.
pub async fn receive(dir: &Path, sha: &str, body: axum::body::Body) -> Result<u64, ReceiveError> {
    let nonce = tend_control::ids::random_hex(8).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{sha}.{nonce}.part"));
    let r = write_checked(&tmp, sha, body).await;
    let r = match r {
        Ok(n) => tokio::fs::rename(&tmp, dir.join(sha)).await.map(|()| n).map_err(ReceiveError::from),
        Err(e) => Err(e),
    };
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r
}

async fn write_checked(tmp: &Path, sha: &str, body: axum::body::Body) -> Result<u64, ReceiveError> {
    let mut f = tokio::fs::File::create(tmp).await?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ReceiveError::Body(e.to_string()))?;
        n += chunk.len() as u64;
        if n > MAX_ARTIFACT_BYTES {
            return Err(ReceiveError::TooLarge);
        }
        hasher.update(&chunk);
        f.write_all(&chunk).await?;
    }
    f.sync_all().await?;
    let actual = hex::encode(hasher.finalize());
    if actual != sha {
        return Err(ReceiveError::Digest(actual, sha.to_string()));
    }
    Ok(n)
}

/// A file as a request body, streamed.
async fn file_body(path: &Path) -> std::io::Result<reqwest::Body> {
    let f = tokio::fs::File::open(path).await?;
    Ok(reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f)))
}

/// Other members' URLs (empty outside a control plane of members, e.g. `tend dev`).
async fn peers(s: &Server) -> Vec<String> {
    let me = s.address();
    tend_control::leader::members(&*s.control.inner.store)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.url.trim_end_matches('/').to_string())
        .filter(|u| Some(u.as_str()) != me.as_deref())
        .collect()
}

/// Sends a fresh upload to every other member, in the background, streamed from its file.
pub fn push(s: &Server, sha: String) {
    let s = s.clone();
    tokio::spawn(async move {
        let Ok(http) = crate::member_client(s.edge.pki.as_deref(), Duration::from_secs(600)) else { return };
        let path = s.edge.artifacts_dir.join(&sha);
        for url in peers(&s).await {
            let Ok(body) = file_body(&path).await else { return };
            let r = http
                .put(format!("{url}{MEMBER_ROUTE}/{sha}"))
                .bearer_auth(&s.edge.cluster_token)
                .body(body)
                .send()
                .await;
            if let Err(e) = r.and_then(|r| r.error_for_status()) {
                tracing::warn!(%url, %sha, error = %e, "cannot copy an uploaded artifact to a member; it will pull it when needed");
            }
        }
    });
}

/// Fetches artifact `sha` from another member, streamed to disk and checked; true once kept here.
pub async fn pull(s: &Server, sha: &str) -> bool {
    let Ok(http) = crate::member_client(s.edge.pki.as_deref(), Duration::from_secs(600)) else {
        return false;
    };
    for url in peers(s).await {
        let Ok(r) =
            http.get(format!("{url}{MEMBER_ROUTE}/{sha}")).bearer_auth(&s.edge.cluster_token).send().await
        else {
            continue;
        };
        let Ok(r) = r.error_for_status() else { continue };
        let body = axum::body::Body::from_stream(r.bytes_stream());
        match receive(&s.edge.artifacts_dir, sha, body).await {
            Ok(_) => return true,
            Err(e) => tracing::warn!(%url, %sha, error = %e, "a member's copy of an artifact was not kept"),
        }
    }
    false
}

/// Artifact `sha` of `dir` as a streamed response body, if this member has it.
pub async fn serve_file(dir: &Path, sha: &str) -> Option<axum::body::Body> {
    let f = tokio::fs::File::open(dir.join(sha)).await.ok()?;
    Some(axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(f)))
}
