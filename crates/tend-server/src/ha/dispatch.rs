//! The HTTP front of a member: `/v1/health` and `/v1/cluster` answered by every member; every
//! other request served by the leader's API when this member leads, forwarded to the leader when
//! it follows (bounded body, one hop only), refused with 503 `no_leader` while none is elected.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tend_api::{ClusterStatus, MemberInfo};
use tower::ServiceExt;

use super::{Member, Role};

/// Requests bigger than this are not forwarded (the API's own limit for artifact uploads).
const MAX_FORWARD_BYTES: usize = 256 * 1024 * 1024;
/// Marks a forwarded request: a member never forwards one again (no loops between members
/// that disagree for a moment on who leads).
const FORWARDED: &str = "x-tend-forwarded-by";

pub fn router(m: Arc<Member>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/cluster", get(cluster))
        .route(
            &format!("{}/{{sha}}", crate::artifacts::MEMBER_ROUTE),
            get(member_artifact)
                .put(member_artifact_put)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_FORWARD_BYTES)),
        )
        .fallback(dispatch)
        .with_state(m)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response()
}

fn role_name(r: &Role) -> &'static str {
    match r {
        Role::Leader { .. } => "leader",
        Role::Follower { .. } => "follower",
        Role::Campaigning => "campaigning",
    }
}

async fn health(State(m): State<Arc<Member>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "role": role_name(&m.role()), "member": m.cfg.id }))
}

fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// The bootstrap API token or any named one (every role may see the control plane).
async fn authorized(m: &Member, headers: axum::http::HeaderMap) -> bool {
    let t = bearer(&headers);
    crate::api::constant_time_eq(t.as_bytes(), m.tokens.0.as_bytes())
        || (!t.is_empty() && matches!(m.store.get(&crate::auth::hash_key(t)).await, Ok(Some(_))))
}

fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// An artifact from this member's own directory (for another member; cluster token).
async fn member_artifact(
    State(m): State<Arc<Member>>,
    axum::extract::Path(sha): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if !crate::api::constant_time_eq(bearer(&headers).as_bytes(), m.tokens.1.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "the cluster token is required".into());
    }
    if !valid_sha(&sha) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "an artifact is named by its sha256".into());
    }
    match crate::artifacts::serve_file(&m.cfg.server.data_dir.join("artifacts"), &sha).await {
        Some(body) => body.into_response(),
        None => {
            error(StatusCode::NOT_FOUND, "not_found", format!("no artifact {sha} on member {}", m.cfg.id))
        }
    }
}

/// An artifact another member received (cluster token; its digest is checked).
async fn member_artifact_put(
    State(m): State<Arc<Member>>,
    axum::extract::Path(sha): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    use crate::artifacts::ReceiveError;
    if !crate::api::constant_time_eq(bearer(&headers).as_bytes(), m.tokens.1.as_bytes()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "the cluster token is required".into());
    }
    if !valid_sha(&sha) {
        return error(StatusCode::BAD_REQUEST, "bad_request", format!("`{sha}` is not a sha256"));
    }
    let dir = m.cfg.server.data_dir.join("artifacts");
    let _ = tokio::fs::create_dir_all(&dir).await;
    match crate::artifacts::receive(&dir, &sha, body).await {
        Ok(n) => Json(serde_json::json!({ "sha256": sha, "bytes": n })).into_response(),
        Err(e @ (ReceiveError::Digest(..) | ReceiveError::Body(_) | ReceiveError::TooLarge)) => {
            error(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

/// Members, leader, epoch and store health, as this member sees them.
async fn cluster(State(m): State<Arc<Member>>, req: Request) -> Response {
    if !authorized(&m, req.headers().clone()).await {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required".into());
    }
    let role = m.role();
    let current = tend_control::leader::current(&*m.store).await.ok().flatten();
    let mut store = m.cfg.store_info.clone();
    match tokio::time::timeout(std::time::Duration::from_secs(3), (m.health)()).await {
        Ok(Ok(detail)) => (store.healthy, store.detail) = (true, detail),
        Ok(Err(e)) => (store.healthy, store.detail) = (false, e),
        Err(_) => (store.healthy, store.detail) = (false, "no answer within 3 s".into()),
    }
    let leader_id = current.as_ref().map(|(r, _)| r.id.clone());
    let members = tend_control::leader::members(&*m.store)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| MemberInfo {
            leader: Some(&r.id) == leader_id.as_ref(),
            id: r.id,
            url: r.url,
            since_ms: r.since_ms,
        })
        .collect();
    Json(ClusterStatus {
        answered_by: m.cfg.id.clone(),
        role: role_name(&role).into(),
        leader: leader_id,
        epoch: current.map_or(0, |(_, e)| e.max(0) as u64),
        members,
        store,
    })
    .into_response()
}

async fn dispatch(State(m): State<Arc<Member>>, req: Request) -> Response {
    let mut changes = m.term_changes();
    match m.role() {
        Role::Leader { router, .. } => {
            // Served by this leadership only: when it ends, what was asked of it (an answer not
            // yet given, a stream) ends too, and the client tries again with the next leader.
            let stepped_down = || {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no_leader",
                    format!("member {} stopped leading; retry in a moment", m.cfg.id),
                )
            };
            let resp = tokio::select! {
                r = router.oneshot(req) => match r {
                    Ok(r) => r,
                    Err(never) => match never {},
                },
                _ = changes.changed() => return stepped_down(),
            };
            let (parts, body) = resp.into_parts();
            let ended = async move {
                let _ = changes.changed().await;
            };
            let body = futures::StreamExt::take_until(body.into_data_stream(), Box::pin(ended));
            Response::from_parts(parts, Body::from_stream(body))
        }
        Role::Follower { leader, .. } => forward(&m, &leader.url, req).await,
        Role::Campaigning => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            "no control-plane leader is elected yet; retry in a moment".into(),
        ),
    }
}

/// Forwards one request to the leader and its answer back.
async fn forward(m: &Member, base: &str, req: Request) -> Response {
    if req.headers().contains_key(FORWARDED) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_leader",
            format!("member {} does not lead either; retry in a moment", m.cfg.id),
        );
    }
    // Streamed both ways: a big upload through a follower costs it no memory (the leader
    // bounds what it accepts).
    let (parts, body) = req.into_parts();
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut rb =
        m.http.request(parts.method.clone(), format!("{}{path}", base.trim_end_matches('/'))).body(body);
    for h in ["authorization", "content-type", "accept", "last-event-id"] {
        if let Some(v) = parts.headers.get(h) {
            rb = rb.header(h, v.clone());
        }
    }
    rb = rb.header(FORWARDED, m.cfg.id.as_str());
    // An agent's call: this member vouches for the certificate it checked (id and serial); the
    // leader believes it only from a member's certificate, and checks the serial's revocation.
    if let Some(peer) = parts.extensions.get::<tend_tls::serve::Peer>().and_then(|p| p.0.as_ref()) {
        if let Some(id) = peer.agent_id() {
            rb = rb.header(crate::api::AGENT_HEADER, format!("{id} {}", peer.serial));
        }
    }
    let resp = match rb.send().await {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "leader_unreachable",
                format!("cannot reach the leader at {base}: {e}; retry in a moment"),
            )
        }
    };
    let status = resp.status();
    let content_type = resp.headers().get("content-type").cloned();
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert("content-type", ct);
    }
    out.headers_mut()
        .insert(FORWARDED, HeaderValue::from_str(&m.cfg.id).unwrap_or(HeaderValue::from_static("?")));
    out
}
