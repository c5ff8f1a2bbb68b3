//! Uploaded artifacts across the members of a control plane: each member keeps them in its data
//! directory; an upload is pushed to every other member (best effort), and a member asked for one
//! it lacks — a new leader after a failover — pulls it from the others, checking its digest.
//! Member to member, through `/v1/member/artifacts/{sha}` (cluster token), which every member
//! serves from its own directory whatever its role.

use std::path::Path;
use std::time::Duration;

use axum::body::Bytes;
use sha2::{Digest, Sha256};

use crate::Server;

/// The member-to-member route.
pub const MEMBER_ROUTE: &str = "/v1/member/artifacts";

/// Writes `body` as artifact `sha` (already checked) under `dir`, atomically: a unique temporary
/// file renamed into place, so concurrent uploads of one artifact never meet.
pub async fn store_local(dir: &Path, sha: &str, body: &[u8]) -> std::io::Result<()> {
    let nonce = tend_control::ids::random_hex(8).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{sha}.{nonce}.part"));
    tokio::fs::write(&tmp, body).await?;
    let r = tokio::fs::rename(&tmp, dir.join(sha)).await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r
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

/// Sends a fresh upload to every other member, in the background.
pub fn push(s: &Server, sha: String, body: Bytes) {
    let s = s.clone();
    tokio::spawn(async move {
        let Ok(http) = crate::member_client(s.edge.pki.as_deref(), Duration::from_secs(120)) else { return };
        for url in peers(&s).await {
            let r = http
                .put(format!("{url}{MEMBER_ROUTE}/{sha}"))
                .bearer_auth(&s.edge.cluster_token)
                .body(body.clone())
                .send()
                .await;
            if let Err(e) = r.and_then(|r| r.error_for_status()) {
                tracing::warn!(%url, %sha, error = %e, "cannot copy an uploaded artifact to a member; it will pull it when needed");
            }
        }
    });
}

/// Fetches artifact `sha` from another member, checks it and keeps it here.
pub async fn pull(s: &Server, sha: &str) -> Option<Vec<u8>> {
    let http = crate::member_client(s.edge.pki.as_deref(), Duration::from_secs(120)).ok()?;
    for url in peers(s).await {
        let Ok(r) =
            http.get(format!("{url}{MEMBER_ROUTE}/{sha}")).bearer_auth(&s.edge.cluster_token).send().await
        else {
            continue;
        };
        let Ok(body) = r.error_for_status().map(|r| r.bytes()) else { continue };
        let Ok(body) = body.await else { continue };
        if hex::encode(Sha256::digest(&body)) != sha {
            tracing::warn!(%url, %sha, "a member served an artifact whose digest differs; ignored");
            continue;
        }
        if let Err(e) = store_local(&s.edge.artifacts_dir, sha, &body).await {
            tracing::warn!(%sha, error = %e, "cannot keep a pulled artifact");
        }
        return Some(body.to_vec());
    }
    None
}
