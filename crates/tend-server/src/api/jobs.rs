//! Maintenance job routes (status, history, on-demand runs, windows, alarms) and the OpenAPI document.

use super::*;

// ---------- maintenance jobs ----------

pub(super) fn job_of(s: &Server, name: &str, job: &str) -> Result<tend_spec::JobSpec, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let spec = rt.lock().unwrap_or_else(|e| e.into_inner()).spec.clone();
    spec.jobs.iter().find(|j| j.name == job).cloned().ok_or_else(|| not_found("job", job))
}

pub(super) async fn list_jobs(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<tend_control::jobs::JobStatusInfo>> {
    s.service(&name).ok_or_else(|| not_found("service", &name))?;
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.get(&name).cloned().unwrap_or_default()))
}

pub(super) async fn job_history(
    State(s): State<Arc<Server>>,
    Path((name, job)): Path<(String, String)>,
) -> ApiResult<Vec<serde_json::Value>> {
    job_of(&s, &name, &job)?;
    let runs = tend_control::jobs::job_history(&s, &name, &job).await?;
    Ok(Json(runs.iter().filter_map(|r| serde_json::to_value(r).ok()).collect()))
}

#[derive(Deserialize, Default)]
pub(super) struct RunJobBody {
    #[serde(default)]
    instance: Option<String>,
}

pub(super) async fn run_job(
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
        tend_control::jobs::request_run(&s, &name, &job, i).await?;
    }
    s.event(
        Some(&name),
        EventKind::Job,
        format!("on-demand run of {job} queued for {}", instances.join(", ")),
    )
    .await;
    Ok(Json(serde_json::json!({ "job": job, "queued": instances })))
}

#[derive(Deserialize)]
pub(super) struct WindowBody {
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

pub(super) async fn list_windows(
    State(s): State<Arc<Server>>,
) -> ApiResult<Vec<tend_jobs::window::RunPolicy>> {
    Ok(Json(tend_control::jobs::policies(&s).await?))
}

pub(super) async fn add_window(
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
    tend_control::jobs::put_policy(&s, &p).await?;
    s.event(None, EventKind::Job, format!("run policy {} added: no job starts in {}", p.id, p.describe()))
        .await;
    Ok(Json(p))
}

pub(super) async fn remove_window(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> ApiResult<serde_json::Value> {
    if !tend_control::jobs::remove_policy(&s, &id).await? {
        return Err(not_found("window", &id));
    }
    s.event(None, EventKind::Job, format!("run policy {id} removed")).await;
    Ok(Json(serde_json::json!({ "removed": id })))
}

pub(super) async fn list_alarms(
    State(s): State<Arc<Server>>,
) -> ApiResult<Vec<tend_control::jobs::JobStatusInfo>> {
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.values().flatten().filter(|j| j.alarm.is_some()).cloned().collect()))
}

pub(super) async fn openapi() -> Json<serde_json::Value> {
    let op = |summary: &str| serde_json::json!({ "summary": summary, "responses": { "200": { "description": "OK" }, "401": { "description": "missing or invalid bearer token" }, "403": { "description": "the token's role or service does not allow this call" } } });
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
            "/metrics": { "get": op("Prometheus metrics (any token): OpenMetrics when asked for, else the text format 0.0.4") },
            "/v1/cluster": { "get": op("control-plane members, leader and epoch, store health (answered by every member)") },
            "/v1/services": { "get": op("list services"), "post": op("create a service from a spec (ServiceRequest)") },
            "/v1/services/{name}": { "get": op("service status"), "put": op("replace the spec: a rolling update; body may carry `expected_generation` (409 stale_generation)"), "delete": op("delete; `?force=true` while tasks run, `?wait_seconds=` for the agents' confirmation; volumes are retained") },
            "/v1/services/{name}/plan": { "post": op("dry run: what a spec (ServiceRequest body) would do to each instance; nothing changes") },
            "/v1/services/{name}/rollout": { "get": op("the rollout: generation being rolled out, plan (deploy/update/rollback), state, last deployed generation, rollback") },
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
            "/v1/events/stream": { "get": op("the events as Server-Sent Events (id = seq, event = kind, data = the event as JSON), live; resumes after `Last-Event-ID` or `?since=SEQ`; `?service=` filters; a comment every 15 s") },
            "/v1/volumes": { "get": op("volume sets: owner, agent, size, state (active | retained | deleting), retained until") },
            "/v1/volumes/{id}": { "delete": op("delete a volume set no instance uses (409 volume_in_use otherwise)") },
            "/v1/artifacts/{sha256}": { "put": op("upload an artifact (body = bytes, named by its sha256)") },
            "/v1/tokens": { "get": op("named API tokens (admin): name, role, service, created; never their secrets"), "post": op("create a token {name, role: admin|operator|viewer, service?}; the secret is in this answer only") },
            "/v1/tokens/{token}": { "delete": op("revoke a named token (admin); it stops working at once") },
            "/v1/agent/register": { "post": op("agent joins (cluster token)") },
            "/v1/agent/{id}/desired": { "get": op("long-poll the incarnations to run: ?index=&wait_ms=") },
            "/v1/agent/{id}/status": { "post": op("full status report; also the heartbeat") }
        }
    }))
}
