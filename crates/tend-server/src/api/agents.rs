//! The agent routes: joining with a single-use token and a certificate signing request, the CA
//! they pin, register / desired / status / renew under the agent's certificate, and the admin
//! routes that make join tokens and revoke agents. An agent's identity is the id in its
//! certificate, never one it claims: a route naming another agent is refused.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tend_api::*;
use tend_control::agents::AgentProtocol;
use tend_store::{Compare, Txn, TxnOp};
use tend_tls::serve::Peer;

use super::openapi::*;
use super::{bad, constant_time_eq, refusal, ApiError, ApiResult, JsonBody};
use crate::Server;

/// A forwarding member vouches for the agent it authenticated with this header; only another
/// member's certificate makes it believed.
pub const AGENT_HEADER: &str = "x-tend-agent";

/// The agent a request comes from, as its certificate (or the forwarding member) says.
#[derive(Clone, Debug)]
pub struct AgentIdentity(pub Option<String>);

fn refused(msg: impl Into<String>) -> Response {
    ApiError(StatusCode::UNAUTHORIZED, "unauthorized", msg.into()).into_response()
}

/// Guards the agent routes: with TLS, a client certificate of a live agent (not revoked);
/// without (`--plain-http`), the cluster token.
pub async fn guard(State(s): State<Arc<Server>>, mut req: Request, next: Next) -> Response {
    let Some(_) = &s.edge.pki else {
        let ok = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| constant_time_eq(t.as_bytes(), s.edge.cluster_token.as_bytes()));
        if !ok {
            return refused("a valid cluster token is required");
        }
        req.extensions_mut().insert(AgentIdentity(None));
        return next.run(req).await;
    };
    let peer = req.extensions().get::<Peer>().and_then(|p| p.0.clone());
    let Some(peer) = peer else { return refused("an agent certificate of this cluster is required") };
    let (id, serial) = if peer.is_control_plane() {
        // Another member forwards an agent's call it authenticated itself: `ID SERIAL`.
        let vouched =
            req.headers().get(AGENT_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' '));
        match vouched {
            Some((id, serial)) => (id.to_string(), serial.to_string()),
            None => return refused("a member forwarding an agent's call must name the agent"),
        }
    } else {
        match peer.agent_id() {
            Some(id) => (id.to_string(), peer.serial.clone()),
            None => return refused("the certificate names no agent"),
        }
    };
    match s.edge.store.get(&revoked_key(&serial)).await {
        Ok(None) => {}
        Ok(Some(_)) => return refused(format!("the certificate of agent {id} is revoked")),
        Err(e) => return ApiError::from(e).into_response(),
    }
    req.extensions_mut().insert(AgentIdentity(Some(id)));
    next.run(req).await
}

/// Refuses a call about agent `claimed` from anyone but that agent.
fn own(who: &AgentIdentity, claimed: &str) -> Result<(), ApiError> {
    match &who.0 {
        Some(id) if id != claimed => Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the certificate is agent {id}'s; it cannot act as agent {claimed}"),
        )),
        _ => Ok(()),
    }
}

/// An agent joins, or joins again after a restart of either side (its certificate, or the
/// cluster token, must name the agent).
#[utoipa::path(post, path = "/v1/agent/register", tag = "agent", security(("clusterToken" = []), ("agentCertificate" = [])), request_body = RegisterRequest,
    responses((status = 200, description = "registered", body = RegisterResponse),
        Guarded, BadRequest, Conflict, Internal))]
pub(super) async fn register(
    State(s): State<Arc<Server>>,
    axum::Extension(who): axum::Extension<AgentIdentity>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    own(&who, &req.agent_id)?;
    Ok(Json(AgentProtocol::register(&s.control, req).await.map_err(refusal)?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DesiredQuery {
    /// Wait for a state newer than this index (`DesiredState::index`); 0 answers at once.
    #[serde(default)]
    index: u64,
    /// How long to wait for a change, in ms (default 20000; more than 60000 waits 60000).
    #[serde(default)]
    wait_ms: Option<u64>,
    /// The agent holds the state of `index` from this control plane (`DesiredState::source`):
    /// answer with what changed since (`DesiredState::base_index`) when it can.
    #[serde(default)]
    #[param(max_length = 128)]
    held_from: Option<String>,
}

/// Longest `held_from` taken (a control plane's source id is far shorter).
const HELD_FROM_MAX: usize = 128;

/// Long-polls the incarnations the agent must run.
#[utoipa::path(get, path = "/v1/agent/{id}/desired", tag = "agent", security(("clusterToken" = []), ("agentCertificate" = [])), params(("id" = String, Path, description = "the agent; its certificate must name it"), DesiredQuery),
    responses((status = 200, description = "what the agent must run", body = DesiredState),
        Guarded, BadRequest, NotFound, Internal))]
pub(super) async fn desired(
    State(s): State<Arc<Server>>,
    axum::Extension(who): axum::Extension<AgentIdentity>,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<DesiredQuery>,
) -> ApiResult<DesiredState> {
    own(&who, &id)?;
    if q.held_from.as_ref().is_some_and(|h| h.len() > HELD_FROM_MAX) {
        return Err(bad(format!("held_from is longer than {HELD_FROM_MAX} characters")));
    }
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(20_000).min(60_000));
    Ok(Json(
        AgentProtocol::desired(&s.control, &id, q.index, wait, q.held_from.as_deref())
            .await
            .map_err(refusal)?,
    ))
}

/// The agent's full status report (also its heartbeat).
#[utoipa::path(post, path = "/v1/agent/{id}/status", tag = "agent", security(("clusterToken" = []), ("agentCertificate" = [])), params(("id" = String, Path, description = "the agent; its certificate must name it")),
    request_body = StatusReport,
    responses((status = 200, description = "received", body = StatusAck), Guarded, BadRequest, NotFound))]
pub(super) async fn status(
    State(s): State<Arc<Server>>,
    axum::Extension(who): axum::Extension<AgentIdentity>,
    Path(id): Path<String>,
    JsonBody(r): JsonBody<StatusReport>,
) -> ApiResult<StatusAck> {
    own(&who, &id)?;
    Ok(Json(AgentProtocol::status(&s.control, &id, r).await.map_err(refusal)?))
}

// ---------- certificates ----------

/// A join token as stored, under the SHA-256 of its secret.
#[derive(Serialize, Deserialize)]
struct JoinRecord {
    expires_ms: u64,
}

fn join_key(secret: &str) -> String {
    format!("pki/join/{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

fn cert_key(agent: &str, serial: &str) -> String {
    format!("pki/certs/{agent}/{serial}")
}

fn revoked_key(serial: &str) -> String {
    format!("pki/revoked/{serial}")
}

fn pki(s: &Server) -> Result<&crate::pki::Pki, ApiError> {
    s.edge.pki.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::CONFLICT,
            "plain_http",
            "this control plane runs without TLS (--plain-http); agents use the cluster token".into(),
        )
    })
}

/// `GET /v1/agent/ca`: the cluster CA certificate (public; a joining agent compares its
/// fingerprint with its join token's before trusting it).
#[utoipa::path(get, path = "/v1/agent/ca", tag = "agents", security(()),
    responses((status = 200, description = "the CA certificate (PEM)", body = String, content_type = "text/plain"),
        Conflict, Unavailable))]
pub(super) async fn ca(State(s): State<Arc<Server>>) -> Result<String, ApiError> {
    Ok(pki(&s)?.ca.cert_pem.clone())
}

/// `POST /v1/agent-tokens` (admin): a single-use join token.
#[utoipa::path(post, path = "/v1/agent-tokens", tag = "agents", request_body = JoinTokenRequest,
    responses((status = 200, description = "the join token", body = JoinTokenCreated),
        Guarded, BadRequest, Conflict, Internal))]
pub(super) async fn create_join_token(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<JoinTokenRequest>,
) -> ApiResult<JoinTokenCreated> {
    let p = pki(&s)?;
    if req.ttl_seconds == 0 || req.ttl_seconds > 7 * 86_400 {
        return Err(bad("ttl_seconds must be 1 to 604800 (a week)"));
    }
    let secret = tend_control::ids::random_hex(32).map_err(|e| anyhow::anyhow!(e))?;
    let expires_ms = s.now_ms() + req.ttl_seconds * 1000;
    let rec = serde_json::to_vec(&JoinRecord { expires_ms }).map_err(|e| anyhow::anyhow!(e))?;
    s.edge.store.put(&join_key(&secret), &rec).await?;
    Ok(Json(JoinTokenCreated { token: format!("tend-join.{secret}.{}", p.fingerprint), expires_ms }))
}

/// `POST /v1/agent/join`: a join token and a request in, a certificate naming the agent out.
/// The token is spent in the same transaction that checks it: it serves once.
#[utoipa::path(post, path = "/v1/agent/join", tag = "agents", security(()), request_body = JoinRequest,
    responses((status = 200, description = "the agent's certificate", body = JoinResponse),
        BadRequest, Unauthorized, Conflict, Internal, Unavailable))]
pub(super) async fn join(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> ApiResult<JoinResponse> {
    let p = pki(&s)?;
    if !tend_spec::decode::valid_name(&req.agent_id) {
        return Err(bad(format!(
            "agent id `{}` must be 1-63 lowercase letters, digits, `-` or `_`",
            req.agent_id.escape_debug()
        )));
    }
    let invalid = || {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the join token is unknown, spent or expired".into(),
        )
    };
    let secret = req.token.split('.').nth(1).ok_or_else(invalid)?;
    let key = join_key(secret);
    let kv = s.edge.store.get(&key).await?.ok_or_else(invalid)?;
    let rec: JoinRecord = serde_json::from_slice(&kv.value).map_err(|e| anyhow::anyhow!(e))?;
    if rec.expires_ms <= s.now_ms() {
        s.edge.store.delete(&key).await?;
        return Err(invalid());
    }
    let issued = sign(&s, p, &req.agent_id, &req.csr_pem)?;
    let r = s
        .edge
        .store
        .txn(
            Txn::new()
                .when(Compare::mod_revision_eq(key.clone(), kv.mod_revision))
                .then(TxnOp::delete(key))
                .then(TxnOp::put(cert_key(&req.agent_id, &issued.serial), issued.not_after_s.to_string())),
        )
        .await?;
    if !r.succeeded {
        return Err(invalid());
    }
    s.control
        .event(
            None,
            EventKind::Agent,
            format!("agent {} joined with a join token; certificate {} issued", req.agent_id, issued.serial),
        )
        .await;
    Ok(Json(JoinResponse {
        cert_pem: issued.cert_pem,
        ca_pem: p.ca.cert_pem.clone(),
        not_after_ms: issued.not_after_s as u64 * 1000,
    }))
}

fn sign(s: &Server, p: &crate::pki::Pki, agent: &str, csr: &str) -> Result<tend_tls::Issued, ApiError> {
    let now_s = (s.now_ms() / 1000) as i64;
    p.ca.sign_agent(csr, agent, now_s, s.edge.agent_cert_ttl_seconds as i64).map_err(|e| bad(e.to_string()))
}

/// `POST /v1/agent/{id}/renew`: a new certificate for the agent whose certificate this is.
#[utoipa::path(post, path = "/v1/agent/{id}/renew", tag = "agent", security(("clusterToken" = []), ("agentCertificate" = [])), params(("id" = String, Path, description = "the agent; its certificate must name it")),
    request_body = JoinRequest,
    responses((status = 200, description = "the new certificate", body = JoinResponse),
        Guarded, BadRequest, Conflict))]
pub(super) async fn renew(
    State(s): State<Arc<Server>>,
    axum::Extension(who): axum::Extension<AgentIdentity>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<JoinRequest>,
) -> ApiResult<JoinResponse> {
    own(&who, &id)?;
    own(&who, &req.agent_id)?;
    let p = pki(&s)?;
    let issued = sign(&s, p, &id, &req.csr_pem)?;
    s.edge.store.put(&cert_key(&id, &issued.serial), issued.not_after_s.to_string().as_bytes()).await?;
    Ok(Json(JoinResponse {
        cert_pem: issued.cert_pem,
        ca_pem: p.ca.cert_pem.clone(),
        not_after_ms: issued.not_after_s as u64 * 1000,
    }))
}

/// `POST /v1/agents/{id}/revoke` (admin): every certificate issued to the agent stops working.
#[utoipa::path(post, path = "/v1/agents/{id}/revoke", tag = "agents",
    params(("id" = String, Path, description = "the agent")),
    responses((status = 200, description = "revoked", body = AgentRevoked), Guarded, NotFound, Conflict))]
pub(super) async fn revoke(State(s): State<Arc<Server>>, Path(id): Path<String>) -> ApiResult<AgentRevoked> {
    pki(&s)?;
    let certs = s.edge.store.range(&format!("pki/certs/{id}/")).await?.kvs;
    if certs.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no certificate was issued to agent `{id}`"),
        ));
    }
    let mut serials = Vec::new();
    for kv in certs {
        let serial = kv.key.rsplit('/').next().unwrap_or_default().to_string();
        s.edge.store.put(&revoked_key(&serial), id.as_bytes()).await?;
        serials.push(serial);
    }
    s.control
        .event(
            None,
            EventKind::Agent,
            format!("agent {id} revoked: {} certificate(s) refused from now on", serials.len()),
        )
        .await;
    Ok(Json(AgentRevoked { agent: id, revoked: serials }))
}
