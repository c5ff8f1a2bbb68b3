//! The v1 HTTP/JSON API: services, plans, pods, agents, tasks, events, artifacts, and the agent
//! endpoints. Bearer tokens guard everything but health and the OpenAPI document; every error is
//! `{ "error": { "code", "message" } }` and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use tend_api::*;

mod agents;
pub use agents::AGENT_HEADER;
pub(crate) use pods::pod_infos;
mod jobs;
mod logs;
mod openapi;
mod pods;
mod services;
mod stream;

use self::jobs::*;
use self::pods::*;
use self::services::*;
use crate::Server;
use tend_control::deploy::{engine, judge};
use tend_control::records::*;

/// An API error: HTTP status, stable code, message.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.1.into(), message: self.2 } };
        (self.0, Json(body)).into_response()
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e:#}"))
    }
}

impl From<tend_store::StoreError> for ApiError {
    fn from(e: tend_store::StoreError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "store", e.to_string())
    }
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "not_found", format!("no {what} `{name}`"))
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, "bad_request", msg.into())
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// JSON bodies with a JSON error on bad input (axum's default answers in plain text). Bodies are
/// objects (serde would take an array for a struct); a whole number written as `5.0` is the
/// integer 5, as JSON Schema (and the OpenAPI document) says.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let invalid =
            |m: String| ApiError(StatusCode::BAD_REQUEST, "bad_request", format!("invalid JSON body: {m}"));
        let v = match Json::<serde_json::Value>::from_request(req, state).await {
            Ok(Json(v)) => v,
            Err(e) => return Err(invalid(e.body_text())),
        };
        if !v.is_object() {
            return Err(invalid("expected a JSON object".into()));
        }
        serde_json::from_value(whole_numbers(v)).map(JsonBody).map_err(|e| invalid(e.to_string()))
    }
}

/// Floats without a fractional part, as integers (recursively).
fn whole_numbers(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => Value::from(f as u64),
            Some(f) if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect()),
        other => other,
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Largest JSON body of a user call.
pub const USER_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Largest JSON body of an agent call.
pub const AGENT_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The whole API.
pub fn router(server: Server) -> Router {
    let s = Arc::new(server);
    let user = Router::new()
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{name}", get(get_service).put(replace_service).delete(delete_service))
        .route("/v1/services/{name}/rollout", get(get_rollout))
        .route("/v1/services/{name}/plan", post(preview_change))
        .route("/v1/services/{name}/plans", get(list_plans))
        .route("/v1/services/{name}/plans/{plan}", get(get_plan))
        .route("/v1/services/{name}/plans/{plan}/{action}", post(plan_action))
        .route("/v1/services/{name}/pods", get(list_pods))
        .route("/v1/services/{name}/pods/{instance}", get(get_pod))
        .route("/v1/services/{name}/pods/{instance}/{action}", post(pod_action))
        .route("/v1/services/{name}/pods/{instance}/tasks/{task}/logs", get(logs::task_logs))
        .route("/v1/services/{name}/pods/{instance}/tasks/{task}/logs/stream", get(logs::follow_logs))
        .route("/v1/services/{name}/endpoints", get(endpoints))
        .route("/v1/services/{name}/jobs", get(list_jobs))
        .route("/v1/services/{name}/jobs/{job}/history", get(job_history))
        .route("/v1/services/{name}/jobs/{job}/run", post(run_job))
        .route("/v1/jobs/windows", get(list_windows).post(add_window))
        .route("/v1/jobs/windows/{id}", axum::routing::delete(remove_window))
        .route("/v1/jobs/alarms", get(list_alarms))
        .route("/v1/agents", get(list_agents))
        .route("/v1/tasks", get(list_tasks))
        .route("/v1/events", get(list_events))
        .route("/v1/events/stream", get(stream::stream))
        .route("/v1/volumes", get(list_volumes))
        .route("/v1/volumes/{id}", axum::routing::delete(delete_volume))
        .route("/v1/artifacts/{sha}", put(upload_artifact))
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/v1/tokens/{token}", axum::routing::delete(revoke_token))
        .route("/v1/agent-tokens", post(agents::create_join_token))
        .route("/v1/agents/{id}/revoke", post(agents::revoke))
        // JSON bodies (specs, actions); artifact uploads are streamed and bounded on their own.
        .layer(DefaultBodyLimit::max(USER_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(s.clone(), crate::auth::guard));
    let agents = Router::new()
        .route("/v1/agent/register", post(agents::register))
        .route("/v1/agent/{id}/desired", get(agents::desired))
        .route("/v1/agent/{id}/status", post(agents::status))
        .route("/v1/agent/{id}/renew", post(agents::renew))
        .route("/v1/agent/artifacts/{sha}", get(download_artifact))
        .route("/v1/artifacts/{sha}", get(download_artifact))
        .route_layer(middleware::from_fn_with_state(s.clone(), agents::guard))
        // A status report lists every task of the agent.
        .layer(DefaultBodyLimit::max(AGENT_BODY_BYTES));
    Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/agent/ca", get(agents::ca))
        .route("/v1/agent/join", post(agents::join))
        .merge(user)
        .merge(agents)
        .merge(crate::dashboard::router())
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "not_found", "no such route".into()) })
        .layer(middleware::from_fn_with_state(s.clone(), crate::metrics::track))
        .with_state(s)
}

fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

async fn download_artifact(
    State(s): State<Arc<Server>>,
    Path(sha): Path<String>,
) -> Result<axum::body::Body, ApiError> {
    if !valid_sha(&sha) {
        return Err(bad("an artifact is named by its sha256 (64 lowercase hex characters)"));
    }
    // Uploaded to another member (a leader before a failover): pulled from it first.
    if !s.edge.artifacts_dir.join(&sha).is_file() {
        crate::artifacts::pull(&s, &sha).await;
    }
    crate::artifacts::serve_file(&s.edge.artifacts_dir, &sha).await.ok_or_else(|| not_found("artifact", &sha))
}

/// Streamed to disk while hashed: a big upload costs disk, not memory.
async fn upload_artifact(
    State(s): State<Arc<Server>>,
    Path(sha): Path<String>,
    body: axum::body::Body,
) -> ApiResult<serde_json::Value> {
    use crate::artifacts::ReceiveError;
    if !valid_sha(&sha) {
        return Err(bad("an artifact is named by its sha256 (64 lowercase hex characters)"));
    }
    let n = match crate::artifacts::receive(&s.edge.artifacts_dir, &sha, body).await {
        Ok(n) => n,
        Err(e @ (ReceiveError::Digest(..) | ReceiveError::Body(_))) => return Err(bad(e.to_string())),
        Err(e @ ReceiveError::TooLarge) => {
            return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string()))
        }
        Err(e) => return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())),
    };
    crate::artifacts::push(&s, sha.clone());
    Ok(Json(serde_json::json!({ "sha256": sha, "bytes": n })))
}

async fn list_tokens(State(s): State<Arc<Server>>) -> ApiResult<Vec<TokenInfo>> {
    Ok(Json(crate::auth::list(&s).await?))
}

async fn create_token(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<TokenCreateRequest>,
) -> ApiResult<TokenCreated> {
    Ok(Json(crate::auth::create(&s, req).await?))
}

async fn revoke_token(State(s): State<Arc<Server>>, Path(name): Path<String>) -> ApiResult<TokenInfo> {
    Ok(Json(crate::auth::revoke(&s, &name).await?))
}

fn refusal((code, kind, msg): tend_control::services::Refusal) -> ApiError {
    ApiError(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), kind, msg)
}
