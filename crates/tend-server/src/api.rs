//! The v1 HTTP/JSON API: services, plans, pods, agents, tasks, events, artifacts, and the agent
//! endpoints. Bearer tokens guard everything but health and the OpenAPI document; every error is
//! `{ "error": { "code", "message" } }` and changes nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tend_api::*;

use crate::agents::AgentProtocol;
use crate::deploy::{engine, judge};
use crate::records::*;
use crate::Server;

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

/// JSON bodies with a JSON error on bad input (axum's default answers in plain text).
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(JsonBody(v)),
            Err(e) => Err(ApiError(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid JSON body: {}", e.body_text()),
            )),
        }
    }
}

async fn require(token: String, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !ok {
        return ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "a valid bearer token is required".into())
            .into_response();
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The whole API.
pub fn router(server: Server) -> Router {
    let s = Arc::new(server);
    let api_token = s.inner.api_token.clone();
    let cluster_token = s.inner.cluster_token.clone();
    let user = Router::new()
        .route("/v1/services", get(list_services).post(create_service))
        .route("/v1/services/{name}", get(get_service).put(replace_service).delete(delete_service))
        .route("/v1/services/{name}/plans", get(list_plans))
        .route("/v1/services/{name}/plans/{plan}", get(get_plan))
        .route("/v1/services/{name}/plans/{plan}/{action}", post(plan_action))
        .route("/v1/services/{name}/pods", get(list_pods))
        .route("/v1/services/{name}/pods/{instance}", get(get_pod))
        .route("/v1/services/{name}/pods/{instance}/{action}", post(pod_action))
        .route("/v1/services/{name}/pods/{instance}/tasks/{task}/logs", get(task_logs))
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
        .route("/v1/volumes", get(list_volumes))
        .route("/v1/volumes/{id}", axum::routing::delete(delete_volume))
        .route("/v1/artifacts/{sha}", put(upload_artifact))
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .layer(middleware::from_fn(move |req, next| require(api_token.clone(), req, next)));
    let agents = Router::new()
        .route("/v1/agent/register", post(register))
        .route("/v1/agent/{id}/desired", get(desired))
        .route("/v1/agent/{id}/status", post(status))
        .route("/v1/agent/artifacts/{sha}", get(download_artifact))
        .route("/v1/artifacts/{sha}", get(download_artifact))
        .layer(middleware::from_fn(move |req, next| require(cluster_token.clone(), req, next)));
    Router::new()
        .route("/v1/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/v1/openapi.json", get(openapi))
        .merge(user)
        .merge(agents)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "not_found", "no such route".into()) })
        .with_state(s)
}

// ---------- agents ----------

async fn register(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<RegisterRequest>,
) -> ApiResult<RegisterResponse> {
    Ok(Json(AgentProtocol::register(&*s, req).await.map_err(refusal)?))
}

#[derive(Deserialize)]
struct DesiredQuery {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    wait_ms: Option<u64>,
}

async fn desired(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    Query(q): Query<DesiredQuery>,
) -> ApiResult<DesiredState> {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(20_000).min(60_000));
    Ok(Json(AgentProtocol::desired(&*s, &id, q.index, wait).await.map_err(refusal)?))
}

async fn status(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    JsonBody(r): JsonBody<StatusReport>,
) -> ApiResult<StatusAck> {
    Ok(Json(AgentProtocol::status(&*s, &id, r).await.map_err(refusal)?))
}

fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

async fn download_artifact(
    State(s): State<Arc<Server>>,
    Path(sha): Path<String>,
) -> Result<Vec<u8>, ApiError> {
    if !valid_sha(&sha) {
        return Err(bad("an artifact is named by its sha256 (64 lowercase hex characters)"));
    }
    tokio::fs::read(s.inner.artifacts_dir.join(&sha)).await.map_err(|_| not_found("artifact", &sha))
}

async fn upload_artifact(
    State(s): State<Arc<Server>>,
    Path(sha): Path<String>,
    body: Bytes,
) -> ApiResult<serde_json::Value> {
    if !valid_sha(&sha) {
        return Err(bad("an artifact is named by its sha256 (64 lowercase hex characters)"));
    }
    let actual = hex::encode(Sha256::digest(&body));
    if actual != sha {
        return Err(bad(format!("body has sha256 {actual}, not {sha}")));
    }
    let path = s.inner.artifacts_dir.join(&sha);
    let tmp = s.inner.artifacts_dir.join(format!(".{sha}.part"));
    tokio::fs::write(&tmp, &body)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(Json(serde_json::json!({ "sha256": sha, "bytes": body.len() })))
}

// ---------- services ----------

async fn summary(s: &Server, name: &str) -> Result<ServiceSummary, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let (spec, ids, generation, plans) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.spec.clone(), rt.identities.clone(), rt.record.generation, rt.plans.clone())
    };
    let mut plan_summaries = Vec::new();
    for (pname, plan) in &plans {
        let v = engine(s, name)
            .view(plan)
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        plan_summaries.push(PlanSummary { name: pname.clone(), status: v.status.as_str().into() });
    }
    let pods = s.instances(name).await?;
    let mut running = 0;
    for (inst, rec) in &pods {
        let Some(agent) = &rec.agent else { continue };
        if let (Some(tasks), Some(pod)) =
            (s.task_statuses(agent, name, inst, rec.incarnation), spec.pod(&rec.pod))
        {
            if judge(pod, &tasks, s.now_ms()) == Ok(true) {
                running += 1;
            }
        }
    }
    Ok(ServiceSummary {
        name: name.to_string(),
        generation,
        error: None,
        pods: spec
            .pods
            .iter()
            .map(|p| PodSummary {
                name: p.name.clone(),
                count: p.count,
                config: ids.get(&p.name).cloned().unwrap_or_default(),
            })
            .collect(),
        plans: plan_summaries,
        instances: spec.pods.iter().map(|p| p.count).sum(),
        running,
    })
}

/// A service whose stored spec cannot be loaded: shown with the reason.
fn broken_summary(s: &Server, name: &str) -> Option<ServiceSummary> {
    let broken = s.inner.broken.lock().unwrap_or_else(|e| e.into_inner());
    let (rec, why) = broken.get(name)?;
    Some(ServiceSummary {
        name: name.to_string(),
        generation: rec.generation,
        error: Some(why.clone()),
        pods: Vec::new(),
        plans: Vec::new(),
        instances: 0,
        running: 0,
    })
}

async fn list_services(State(s): State<Arc<Server>>) -> ApiResult<Vec<ServiceSummary>> {
    let mut out = Vec::new();
    for n in s.service_names() {
        out.push(summary(&s, &n).await?);
    }
    let broken: Vec<String> =
        s.inner.broken.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
    out.extend(broken.iter().filter_map(|n| broken_summary(&s, n)));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(out))
}

async fn get_service(State(s): State<Arc<Server>>, Path(name): Path<String>) -> ApiResult<ServiceSummary> {
    if let Some(b) = broken_summary(&s, &name) {
        return Ok(Json(b));
    }
    Ok(Json(summary(&s, &name).await?))
}

async fn create_service(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<ServiceRequest>,
) -> Result<(StatusCode, Json<ServiceSummary>), ApiError> {
    let (name, status) = submit(&s, req, None).await?;
    Ok((status, Json(summary(&s, &name).await?)))
}

async fn replace_service(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ServiceRequest>,
) -> ApiResult<ServiceSummary> {
    let (name, _) = submit(&s, req, Some(&name)).await?;
    Ok(Json(summary(&s, &name).await?))
}

/// Validates and stores a service spec (create or replace); nothing changes on any error.
async fn submit(
    s: &Server,
    req: ServiceRequest,
    expect: Option<&str>,
) -> Result<(String, StatusCode), ApiError> {
    let file = req.file.clone().unwrap_or_else(|| "spec.yml".into());
    let spec = tend_spec::load_service(&file, &req.spec)
        .map_err(|r| ApiError(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", r.render()))?;
    if let Some(e) = expect {
        if e != spec.name {
            return Err(bad(format!("the spec names service `{}`, the URL `{e}`", spec.name)));
        }
    }
    for a in spec.pods.iter().flat_map(|p| p.artifacts.iter()) {
        if a.uri.contains("://") {
            continue;
        }
        let Some(sha) = req.artifacts.get(&a.uri) else {
            return Err(bad(format!("artifact `{}` is a local path: upload it (PUT /v1/artifacts/<sha256>) and name its digest in `artifacts`", a.uri)));
        };
        if !valid_sha(sha) || !s.inner.artifacts_dir.join(sha).is_file() {
            return Err(bad(format!("artifact `{}` (sha256 {sha}) was not uploaded", a.uri)));
        }
    }
    let sub = crate::services::Submission {
        spec,
        text: req.spec,
        file,
        artifacts: req.artifacts,
        expected_generation: req.expected_generation,
    };
    let (name, _generation, existed) = crate::services::submit(s, sub).await.map_err(refusal)?;
    Ok((name, if existed { StatusCode::OK } else { StatusCode::CREATED }))
}

fn refusal((code, kind, msg): crate::services::Refusal) -> ApiError {
    ApiError(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), kind, msg)
}

#[derive(Deserialize)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
    /// How long to wait for agents to confirm the stop (default 30, at most 300).
    #[serde(default)]
    wait_seconds: Option<u64>,
}

async fn delete_service(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> ApiResult<serde_json::Value> {
    if s.service(&name).is_none() && broken_summary(&s, &name).is_none() {
        return Err(not_found("service", &name));
    }
    let instances = s.instances(&name).await?;
    let live = instances.iter().filter(|(_, r)| r.incarnation > 0).count();
    if live > 0 && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "tasks_running",
            format!("service `{name}` has {live} launched pod instance(s); delete with force to stop them"),
        ));
    }
    let wait = Duration::from_secs(q.wait_seconds.unwrap_or(30).min(300));
    let d = crate::services::delete(&s, &name, wait).await.map_err(refusal)?;
    Ok(Json(serde_json::json!({
        "deleted": name,
        "stopped_instances": d.stopped,
        "confirmed": d.unconfirmed.is_empty(),
        "unconfirmed_agents": d.unconfirmed,
        "retained_volumes": d.retained_volumes,
    })))
}

// ---------- volumes ----------

async fn list_volumes(State(s): State<Arc<Server>>) -> ApiResult<Vec<VolumeInfo>> {
    Ok(Json(crate::volumes::all(&s).await?.iter().map(|(r, _)| crate::volumes::info(r)).collect()))
}

async fn delete_volume(State(s): State<Arc<Server>>, Path(id): Path<String>) -> ApiResult<VolumeInfo> {
    if tend_model::VolumeId::parse(&id).is_none() {
        return Err(bad(format!("`{id}` is not a volume id (v followed by digits, see `tend volume list`)")));
    }
    match crate::volumes::request_delete(&s, &id).await {
        Ok(r) => Ok(Json(crate::volumes::info(&r))),
        Err((404, m)) => Err(ApiError(StatusCode::NOT_FOUND, "not_found", m)),
        Err((409, m)) => Err(ApiError(StatusCode::CONFLICT, "volume_in_use", m)),
        Err((_, m)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)),
    }
}

// ---------- plans ----------

/// The recovery plan: one step per instance that is down or being replaced.
fn recovery_plan(s: &Server, name: &str) -> PlanInfo {
    let board = s.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
    let steps: Vec<StepInfo> = board
        .entries
        .iter()
        .filter(|((svc, _), _)| svc == name)
        .map(|((_, inst), e)| StepInfo {
            name: inst.clone(),
            status: e.state.clone(),
            message: Some(e.message.clone()),
        })
        .collect();
    let status = if steps.is_empty() { "complete" } else { "in_progress" };
    PlanInfo {
        service: name.into(),
        name: "recovery".into(),
        status: status.into(),
        interrupted: false,
        phases: vec![PhaseInfo { name: "recovery".into(), status: status.into(), interrupted: false, steps }],
    }
}

async fn plan_info(s: &Server, name: &str, plan: &str) -> Result<PlanInfo, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    if plan == "recovery" && !rt.lock().unwrap_or_else(|e| e.into_inner()).plans.contains_key("recovery") {
        return Ok(recovery_plan(s, name));
    }
    let p = rt
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .plans
        .get(plan)
        .cloned()
        .ok_or_else(|| not_found("plan", plan))?;
    let v = engine(s, name)
        .view(&p)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let instances: BTreeMap<String, InstanceRecord> = s.instances(name).await?.into_iter().collect();
    Ok(PlanInfo {
        service: name.into(),
        name: v.name,
        status: v.status.as_str().into(),
        interrupted: v.interrupted,
        phases: v
            .phases
            .into_iter()
            .map(|ph| PhaseInfo {
                name: ph.name,
                status: ph.status.as_str().into(),
                interrupted: ph.interrupted,
                steps: ph
                    .steps
                    .into_iter()
                    .map(|(step, r)| {
                        let message = r.last_error.clone().or_else(|| {
                            instances
                                .get(&step)
                                .and_then(|i| i.pending_reason.clone().map(|p| format!("pending: {p}")))
                        });
                        StepInfo { name: step, status: r.status().as_str().into(), message }
                    })
                    .collect(),
            })
            .collect(),
    })
}

async fn list_plans(State(s): State<Arc<Server>>, Path(name): Path<String>) -> ApiResult<Vec<PlanInfo>> {
    let rt = s.service(&name).ok_or_else(|| not_found("service", &name))?;
    let names: Vec<String> = rt.lock().unwrap_or_else(|e| e.into_inner()).plans.keys().cloned().collect();
    let mut out = Vec::new();
    for p in names {
        out.push(plan_info(&s, &name, &p).await?);
    }
    if !out.iter().any(|p| p.name == "recovery") {
        out.push(recovery_plan(&s, &name));
    }
    Ok(Json(out))
}

async fn get_plan(
    State(s): State<Arc<Server>>,
    Path((name, plan)): Path<(String, String)>,
) -> ApiResult<PlanInfo> {
    Ok(Json(plan_info(&s, &name, &plan).await?))
}

async fn plan_action(
    State(s): State<Arc<Server>>,
    Path((name, plan, action)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<PlanInfo> {
    let a: PlanAction = if body.iter().all(|b| b.is_ascii_whitespace()) {
        PlanAction::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?
    };
    let rt = s.service(&name).ok_or_else(|| not_found("service", &name))?;
    let (p, trigger) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.plans.get(&plan).cloned().ok_or_else(|| not_found("plan", &plan))?, rt.trigger.clone())
    };
    let e = engine(&s, &name);
    let target = match (&a.phase, &a.step) {
        (_, Some(step)) => tend_plan::Target::Step(step.clone()),
        (Some(ph), None) => tend_plan::Target::Phase(ph.clone()),
        (None, None) => tend_plan::Target::Plan,
    };
    let map = |e: tend_plan::EngineError| match e {
        tend_plan::EngineError::NotFound { .. } => {
            ApiError(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        other => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string()),
    };
    match action.as_str() {
        "interrupt" => e.interrupt(&p, a.phase.as_deref()).await.map_err(map)?,
        "continue" => e.proceed(&p, a.phase.as_deref()).await.map_err(map)?,
        "force-complete" => {
            e.force_complete(&p, &target).await.map_err(map)?;
        }
        "restart" => {
            e.restart(&p, &target).await.map_err(map)?;
        }
        other => {
            return Err(bad(format!(
                "unknown plan action `{other}`: use interrupt, continue, force-complete or restart"
            )));
        }
    }
    s.event(Some(&name), "plan", format!("plan {plan}: {action} {target:?}")).await;
    trigger.notify_one();
    Ok(Json(plan_info(&s, &name, &plan).await?))
}

// ---------- pods, tasks, endpoints ----------

fn pod_state(
    rec: &InstanceRecord,
    tasks: Option<&Vec<TaskStatus>>,
    pod: Option<&tend_spec::PodSpec>,
    now_ms: u64,
) -> String {
    if rec.agent.is_none() {
        return "pending".into();
    }
    if rec.incarnation == 0 {
        return "reserved".into();
    }
    let (Some(tasks), Some(pod)) = (tasks, pod) else { return "unknown".into() };
    match judge(pod, tasks, now_ms) {
        Ok(true) => "running".into(),
        Ok(false) => "launching".into(),
        Err(_) => "failed".into(),
    }
}

async fn pod_infos(s: &Server, name: &str) -> Result<Vec<PodInfo>, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let (spec, ids) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.spec.clone(), rt.identities.clone())
    };
    let mut recs: BTreeMap<String, InstanceRecord> = s.instances(name).await?.into_iter().collect();
    let mut out = Vec::new();
    for p in &spec.pods {
        for i in 0..p.count {
            let inst = format!("{}-{i}", p.name);
            let inst_key = inst.clone();
            let rec = recs.remove(&inst).unwrap_or(InstanceRecord {
                pod: p.name.clone(),
                index: i,
                ..Default::default()
            });
            let tasks = rec.agent.as_ref().and_then(|a| s.task_statuses(a, name, &inst, rec.incarnation));
            out.push(PodInfo {
                service: name.into(),
                state: pod_state(&rec, tasks.as_ref(), Some(p), s.now_ms()),
                instance: inst,
                pod: p.name.clone(),
                index: i,
                agent: rec.agent.clone(),
                incarnation: rec.incarnation,
                config: rec.config.clone(),
                target_config: ids.get(&p.name).cloned().unwrap_or_default(),
                pending_reason: rec.pending_reason.clone(),
                ports: rec.ports.clone(),
                reservation: rec.agent.as_ref().map(|a| ReservationInfo {
                    agent: a.clone(),
                    cpus: rec.cpus_milli as f64 / 1000.0,
                    memory_mb: rec.memory_mb,
                    disk_mb: rec.disk_mb,
                    ports: rec.ports.clone(),
                    volumes: rec.volumes.clone(),
                    volume_id: rec.volume_id.clone(),
                }),
                tasks: tasks.unwrap_or_default(),
                recovery: s
                    .inner
                    .recovery
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entries
                    .get(&(name.to_string(), inst_key.clone()))
                    .map(|e| format!("{}: {}", e.state, e.message)),
            });
        }
    }
    Ok(out)
}

async fn list_pods(State(s): State<Arc<Server>>, Path(name): Path<String>) -> ApiResult<Vec<PodInfo>> {
    Ok(Json(pod_infos(&s, &name).await?))
}

async fn get_pod(
    State(s): State<Arc<Server>>,
    Path((name, instance)): Path<(String, String)>,
) -> ApiResult<PodInfo> {
    pod_infos(&s, &name)
        .await?
        .into_iter()
        .find(|p| p.instance == instance)
        .map(Json)
        .ok_or_else(|| not_found("pod instance", &instance))
}

async fn pod_action(
    State(s): State<Arc<Server>>,
    Path((name, instance, action)): Path<(String, String, String)>,
) -> ApiResult<serde_json::Value> {
    let exists = pod_infos(&s, &name).await?.iter().any(|p| p.instance == instance);
    if !exists {
        return Err(not_found("pod instance", &instance));
    }
    let conflict = |m: String| ApiError(StatusCode::CONFLICT, "not_launched", m);
    let msg = match action.as_str() {
        "restart" => crate::recovery::restart_in_place(&s, &name, &instance).await.map_err(conflict)?,
        "replace" => {
            crate::recovery::replace(&s, &name, &instance, "operator request").await.map_err(conflict)?
        }
        other => return Err(bad(format!("unknown pod action `{other}`: use restart or replace"))),
    };
    Ok(Json(serde_json::json!({ "instance": instance, "action": action, "message": msg })))
}

async fn endpoints(State(s): State<Arc<Server>>, Path(name): Path<String>) -> ApiResult<Vec<Endpoint>> {
    let pods = pod_infos(&s, &name).await?;
    let hosts: BTreeMap<String, String> = s
        .inner
        .agents
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|a| (a.record.id.clone(), a.record.host.clone()))
        .collect();
    let mut out = Vec::new();
    for p in pods {
        let Some(agent) = &p.agent else { continue };
        for t in p.tasks.iter().filter(|t| t.state == TaskState::Running) {
            out.push(Endpoint {
                instance: p.instance.clone(),
                task: t.task.clone(),
                host: hosts.get(agent).cloned().unwrap_or_default(),
                ports: p.ports.clone(),
                ready: t.ready,
            });
        }
    }
    Ok(Json(out))
}

async fn list_agents(State(s): State<Arc<Server>>) -> ApiResult<Vec<AgentInfo>> {
    let mut reserved: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for svc in s.service_names() {
        for (_, rec) in s.instances(&svc).await? {
            if let Some(a) = rec.agent {
                let e = reserved.entry(a).or_default();
                e.0 += rec.cpus_milli;
                e.1 += rec.memory_mb;
            }
        }
    }
    let now = s.now_ms();
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    Ok(Json(
        agents
            .values()
            .map(|a| {
                let r = &a.record;
                let (c, m) = reserved.get(&r.id).copied().unwrap_or_default();
                AgentInfo {
                    id: r.id.clone(),
                    host: r.host.clone(),
                    attributes: r.attributes.clone(),
                    resources: AgentResources {
                        cpus: r.cpus_milli as f64 / 1000.0,
                        memory_mb: r.memory_mb,
                        disk_mb: r.disk_mb,
                        port_range: [r.port_lo, r.port_hi],
                    },
                    reserved_cpus: c as f64 / 1000.0,
                    reserved_memory_mb: m,
                    state: if s.agent_up(a) { "up".into() } else { "lost".into() },
                    last_seen_ms_ago: a.last_seen_ms.map(|t| now.saturating_sub(t)),
                    tasks: a.tasks.len(),
                    conflict: a.conflict.clone(),
                }
            })
            .collect(),
    ))
}

#[derive(Deserialize)]
struct TaskQuery {
    #[serde(default)]
    service: Option<String>,
}

async fn list_tasks(State(s): State<Arc<Server>>, Query(q): Query<TaskQuery>) -> ApiResult<Vec<TaskStatus>> {
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    Ok(Json(
        agents
            .values()
            .filter(|a| s.agent_up(a))
            .flat_map(|a| a.tasks.iter())
            .filter(|t| q.service.as_ref().is_none_or(|svc| &t.service == svc))
            .cloned()
            .collect(),
    ))
}

#[derive(Deserialize)]
struct LogsQuery {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    tail_bytes: Option<u64>,
}

async fn task_logs(
    State(s): State<Arc<Server>>,
    Path((name, instance, task)): Path<(String, String, String)>,
    Query(q): Query<LogsQuery>,
) -> ApiResult<LogChunk> {
    let stream = q.stream.unwrap_or_else(|| "stdout".into());
    if stream != "stdout" && stream != "stderr" {
        return Err(bad("stream must be stdout or stderr"));
    }
    let kv = s
        .inner
        .store
        .get(&instance_key(&name, &instance))
        .await?
        .ok_or_else(|| not_found("pod instance", &instance))?;
    let rec: InstanceRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let agent = rec.agent.ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, "not_placed", format!("{instance} is not placed yet"))
    })?;
    let url = s
        .inner
        .agents
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&agent)
        .map(|a| a.record.agent_url.clone())
        .ok_or_else(|| not_found("agent", &agent))?;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{url}/v1/logs"))
        .bearer_auth(&s.inner.cluster_token)
        .query(&[
            ("service", name.as_str()),
            ("instance", instance.as_str()),
            ("task", task.as_str()),
            ("stream", stream.as_str()),
            ("incarnation", &rec.incarnation.to_string()),
            ("tail_bytes", &q.tail_bytes.unwrap_or(64 * 1024).to_string()),
        ])
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "agent_unreachable", format!("agent {agent}: {e}")))?;
    if !r.status().is_success() {
        let code = if r.status() == reqwest::StatusCode::NOT_FOUND {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_GATEWAY
        };
        let body: Option<ErrorBody> = r.json().await.ok();
        return Err(ApiError(
            code,
            "agent_error",
            body.map(|b| b.error.message).unwrap_or_else(|| "agent error".into()),
        ));
    }
    Ok(Json(r.json().await.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "agent_error", e.to_string()))?))
}

#[derive(Deserialize)]
struct EventQuery {
    #[serde(default)]
    since: u64,
    /// At most this many events, oldest first (default 1000, at most 10000): page with `since`.
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    service: Option<String>,
}

async fn list_events(State(s): State<Arc<Server>>, Query(q): Query<EventQuery>) -> ApiResult<Vec<EventInfo>> {
    let mut out = Vec::new();
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    for kv in s.inner.store.range("events/").await?.kvs {
        if out.len() >= limit {
            break;
        }
        let Ok(e) = serde_json::from_slice::<EventRecord>(&kv.value) else { continue };
        if e.seq > q.since && q.service.as_ref().is_none_or(|svc| e.service.as_ref() == Some(svc)) {
            out.push(EventInfo {
                seq: e.seq,
                time_ms: e.time_ms,
                service: e.service,
                kind: e.kind,
                message: e.message,
            });
        }
    }
    Ok(Json(out))
}

// ---------- maintenance jobs ----------

fn job_of(s: &Server, name: &str, job: &str) -> Result<tend_spec::JobSpec, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let spec = rt.lock().unwrap_or_else(|e| e.into_inner()).spec.clone();
    spec.jobs.iter().find(|j| j.name == job).cloned().ok_or_else(|| not_found("job", job))
}

async fn list_jobs(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<crate::jobs::JobStatusInfo>> {
    s.service(&name).ok_or_else(|| not_found("service", &name))?;
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.get(&name).cloned().unwrap_or_default()))
}

async fn job_history(
    State(s): State<Arc<Server>>,
    Path((name, job)): Path<(String, String)>,
) -> ApiResult<Vec<serde_json::Value>> {
    job_of(&s, &name, &job)?;
    let runs = crate::jobs::job_history(&s, &name, &job).await?;
    Ok(Json(runs.iter().filter_map(|r| serde_json::to_value(r).ok()).collect()))
}

#[derive(Deserialize, Default)]
struct RunJobBody {
    #[serde(default)]
    instance: Option<String>,
}

async fn run_job(
    State(s): State<Arc<Server>>,
    Path((name, job)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<serde_json::Value> {
    let spec_job = job_of(&s, &name, &job)?;
    let b: RunJobBody = if body.iter().all(|c| c.is_ascii_whitespace()) {
        RunJobBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))?
    };
    let instances: Vec<String> = s
        .instances(&name)
        .await?
        .into_iter()
        .filter(|(i, r)| r.pod == spec_job.pod && b.instance.as_ref().is_none_or(|want| want == i))
        .map(|(i, _)| i)
        .collect();
    if instances.is_empty() {
        return Err(not_found("pod instance", b.instance.as_deref().unwrap_or(&spec_job.pod)));
    }
    for i in &instances {
        crate::jobs::request_run(&s, &name, &job, i).await?;
    }
    s.event(Some(&name), "job", format!("on-demand run of {job} queued for {}", instances.join(", "))).await;
    Ok(Json(serde_json::json!({ "job": job, "queued": instances })))
}

#[derive(Deserialize)]
struct WindowBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    job: Option<String>,
    #[serde(default)]
    pods: Vec<String>,
    start: String,
    end: String,
    #[serde(default)]
    timezone: Option<String>,
}

async fn list_windows(State(s): State<Arc<Server>>) -> ApiResult<Vec<tend_jobs::window::RunPolicy>> {
    Ok(Json(crate::jobs::policies(&s).await?))
}

async fn add_window(
    State(s): State<Arc<Server>>,
    JsonBody(b): JsonBody<WindowBody>,
) -> ApiResult<tend_jobs::window::RunPolicy> {
    use tend_jobs::window::{parse_time, parse_zone};
    let start = parse_time(&b.start).map_err(|e| bad(format!("start: {e}")))?;
    let end = parse_time(&b.end).map_err(|e| bad(format!("end: {e}")))?;
    let zone =
        parse_zone(b.timezone.as_deref().unwrap_or("UTC")).map_err(|e| bad(format!("timezone: {e}")))?;
    let id = b.id.unwrap_or_else(|| format!("w{}", s.now_ms()));
    if !tend_spec::decode::valid_name(&id) {
        return Err(bad(format!("invalid window id `{id}`")));
    }
    let p =
        tend_jobs::window::RunPolicy { id, job: b.job, pods: b.pods, start, end, utc_offset_minutes: zone };
    crate::jobs::put_policy(&s, &p).await?;
    s.event(None, "job", format!("run policy {} added: no job starts in {}", p.id, p.describe())).await;
    Ok(Json(p))
}

async fn remove_window(State(s): State<Arc<Server>>, Path(id): Path<String>) -> ApiResult<serde_json::Value> {
    if !crate::jobs::remove_policy(&s, &id).await? {
        return Err(not_found("window", &id));
    }
    s.event(None, "job", format!("run policy {id} removed")).await;
    Ok(Json(serde_json::json!({ "removed": id })))
}

async fn list_alarms(State(s): State<Arc<Server>>) -> ApiResult<Vec<crate::jobs::JobStatusInfo>> {
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.values().flatten().filter(|j| j.alarm.is_some()).cloned().collect()))
}

async fn openapi() -> Json<serde_json::Value> {
    let op = |summary: &str| serde_json::json!({ "summary": summary, "responses": { "200": { "description": "OK" }, "401": { "description": "missing or invalid bearer token" } } });
    Json(serde_json::json!({
        "openapi": "3.0.3",
        "info": { "title": "tend API", "version": "v1" },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": { "Error": { "type": "object", "properties": { "error": { "type": "object", "properties": { "code": { "type": "string" }, "message": { "type": "string" } } } } } }
        },
        "security": [ { "bearer": [] } ],
        "paths": {
            "/v1/health": { "get": op("liveness, no token needed") },
            "/v1/services": { "get": op("list services"), "post": op("create a service from a spec (ServiceRequest)") },
            "/v1/services/{name}": { "get": op("service status"), "put": op("replace the spec: a rolling update; body may carry `expected_generation` (409 stale_generation)"), "delete": op("delete; `?force=true` while tasks run, `?wait_seconds=` for the agents' confirmation; volumes are retained") },
            "/v1/services/{name}/plans": { "get": op("plans with phases and steps") },
            "/v1/services/{name}/plans/{plan}": { "get": op("one plan") },
            "/v1/services/{name}/plans/{plan}/{action}": { "post": op("interrupt | continue | force-complete | restart, body {phase?, step?}") },
            "/v1/services/{name}/pods": { "get": op("pod instances: placement, reservation, incarnation, tasks") },
            "/v1/services/{name}/pods/{instance}": { "get": op("one pod instance") },
            "/v1/services/{name}/pods/{instance}/tasks/{task}/logs": { "get": op("tail of stdout/stderr: ?stream=&tail_bytes=") },
            "/v1/services/{name}/endpoints": { "get": op("address and named ports of every running task") },
            "/v1/services/{name}/jobs": { "get": op("maintenance job-instances: status, reason, alarm, priority") },
            "/v1/services/{name}/jobs/{job}/history": { "get": op("runs of a job") },
            "/v1/services/{name}/jobs/{job}/run": { "post": op("queue an on-demand run, body {instance?}") },
            "/v1/jobs/windows": { "get": op("run policies"), "post": op("add a window {start, end, timezone?, job?, pods?}") },
            "/v1/jobs/windows/{id}": { "delete": op("remove a window") },
            "/v1/jobs/alarms": { "get": op("job-instances with a raised alarm") },
            "/v1/agents": { "get": op("agents with resources and state") },
            "/v1/tasks": { "get": op("every task status, `?service=`") },
            "/v1/events": { "get": op("events, oldest first: `?since=SEQ&limit=N&service=` (limit 1000 by default, at most 10000)") },
            "/v1/volumes": { "get": op("volume sets: owner, agent, size, state (active | retained | deleting), retained until") },
            "/v1/volumes/{id}": { "delete": op("delete a volume set no instance uses (409 volume_in_use otherwise)") },
            "/v1/artifacts/{sha256}": { "put": op("upload an artifact (body = bytes, named by its sha256)") },
            "/v1/agent/register": { "post": op("agent joins (cluster token)") },
            "/v1/agent/{id}/desired": { "get": op("long-poll the incarnations to run: ?index=&wait_ms=") },
            "/v1/agent/{id}/status": { "post": op("full status report; also the heartbeat") }
        }
    }))
}
