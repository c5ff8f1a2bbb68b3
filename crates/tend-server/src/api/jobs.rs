//! Maintenance job routes (status, history, on-demand runs, windows, alarms) and the OpenAPI document.

use super::openapi::*;
use super::*;

// ---------- maintenance jobs ----------

pub(super) fn job_of(s: &Server, name: &str, job: &str) -> Result<tend_spec::JobSpec, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let spec = rt.lock().unwrap_or_else(|e| e.into_inner()).spec.clone();
    spec.jobs.iter().find(|j| j.name == job).cloned().ok_or_else(|| not_found("job", job))
}

/// A job-instance's status on the wire.
fn job_status(j: &tend_control::jobs::JobStatusInfo) -> JobStatusInfo {
    JobStatusInfo {
        service: j.service.clone(),
        job: j.job.clone(),
        instance: j.instance.clone(),
        status: j.status.clone(),
        reason: j.reason.clone(),
        alarm: j.alarm.clone(),
        priority: j.priority,
        last_success_ms: j.last_success_ms,
        due_ms: j.due_ms,
        running: j.running,
        on_demand: j.on_demand,
    }
}

/// A run policy on the wire.
fn run_policy(p: tend_jobs::window::RunPolicy) -> RunPolicy {
    RunPolicy {
        id: p.id,
        job: p.job,
        pods: p.pods,
        start: p.start,
        end: p.end,
        utc_offset_minutes: p.utc_offset_minutes,
    }
}

/// The status of each job-instance of the service.
#[utoipa::path(get, path = "/v1/services/{name}/jobs", tag = "jobs", params(("name" = String, Path, description = "the service")),
    responses((status = 200, description = "the job-instances", body = Vec<JobStatusInfo>), Guarded, NotFound))]
pub(super) async fn list_jobs(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<JobStatusInfo>> {
    s.service(&name).ok_or_else(|| not_found("service", &name))?;
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.get(&name).map(|v| v.iter().map(job_status).collect()).unwrap_or_default()))
}

/// The recorded runs of a job, oldest first.
#[utoipa::path(get, path = "/v1/services/{name}/jobs/{job}/history", tag = "jobs", params(("name" = String, Path, description = "the service"), ("job" = String, Path, description = "the job")),
    responses((status = 200, description = "the runs", body = Vec<JobRunInfo>), Guarded, NotFound, Internal))]
pub(super) async fn job_history(
    State(s): State<Arc<Server>>,
    Path((name, job)): Path<(String, String)>,
) -> ApiResult<Vec<JobRunInfo>> {
    use tend_jobs::history::RunStatus as S;
    job_of(&s, &name, &job)?;
    let runs = tend_control::jobs::job_history(&s, &name, &job).await?;
    let info = |r: tend_jobs::history::RunRecord| JobRunInfo {
        run_id: r.run_id,
        job: r.job,
        instance: r.instance,
        start_ms: r.start_ms,
        end_ms: r.end_ms,
        status: match r.status {
            S::Running => JobRunStatus::Running,
            S::Succeeded => JobRunStatus::Succeeded,
            S::Failed => JobRunStatus::Failed,
            S::TimedOut => JobRunStatus::TimedOut,
            S::Aborted => JobRunStatus::Aborted,
        },
        output_tail: r.output_tail,
        agent: r.agent,
        token: r.token,
        on_demand: r.on_demand,
    };
    Ok(Json(runs.into_iter().map(info).collect()))
}

/// Queues an on-demand run of a job on every instance of its pod, or on one.
#[utoipa::path(post, path = "/v1/services/{name}/jobs/{job}/run", tag = "jobs", params(("name" = String, Path, description = "the service"), ("job" = String, Path, description = "the job")),
    request_body(content = Option<RunJobRequest>, description = "the instance to run it on; may be empty"),
    responses((status = 200, description = "queued", body = JobQueued), Guarded, BadRequest, NotFound, Internal))]
pub(super) async fn run_job(
    State(s): State<Arc<Server>>,
    Path((name, job)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<JobQueued> {
    let spec_job = job_of(&s, &name, &job)?;
    // No body (or `null`): every instance of the job's pod.
    let b: RunJobRequest = optional_body(&body)?;
    let instances: Vec<String> = s
        .instances(&name)
        .await?
        .into_iter()
        .filter(|(i, r)| r.id.pod == spec_job.pod && b.instance.as_ref().is_none_or(|want| want == i))
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
    Ok(Json(JobQueued { job, queued: instances }))
}

/// Every run policy (window in which matching jobs do not start).
#[utoipa::path(get, path = "/v1/jobs/windows", tag = "jobs",
    responses((status = 200, description = "the run policies", body = Vec<RunPolicy>), Guarded, Internal))]
pub(super) async fn list_windows(State(s): State<Arc<Server>>) -> ApiResult<Vec<RunPolicy>> {
    Ok(Json(tend_control::jobs::policies(&s).await?.into_iter().map(run_policy).collect()))
}

/// `HH:MM` as written (the parser also takes signs such as `+1:05`, which the API does not).
fn hh_mm(s: &str) -> bool {
    s.len() == 5 && s.bytes().enumerate().all(|(i, b)| if i == 2 { b == b':' } else { b.is_ascii_digit() })
}

/// Adds (or replaces, by id) a window in which matching jobs do not start.
#[utoipa::path(post, path = "/v1/jobs/windows", tag = "jobs", request_body = WindowRequest,
    responses((status = 200, description = "the run policy", body = RunPolicy), Guarded, BadRequest, Internal))]
pub(super) async fn add_window(
    State(s): State<Arc<Server>>,
    JsonBody(b): JsonBody<WindowRequest>,
) -> ApiResult<RunPolicy> {
    use tend_jobs::window::{parse_time, parse_zone, WindowError};
    let time = |t: &str| if hh_mm(t) { parse_time(t) } else { Err(WindowError::Time(t.to_string())) };
    let start = time(&b.start).map_err(|e| bad(format!("start: {e}")))?;
    let end = time(&b.end).map_err(|e| bad(format!("end: {e}")))?;
    let tz = b.timezone.as_deref().unwrap_or("UTC");
    let signed = tz.strip_prefix(['+', '-']).is_none_or(hh_mm);
    let zone = if signed { parse_zone(tz) } else { Err(WindowError::Zone(tz.to_string())) }
        .map_err(|e| bad(format!("timezone: {e}")))?;
    let id = b.id.unwrap_or_else(|| format!("w{}", s.now_ms()));
    if !tend_spec::decode::valid_name(&id) {
        return Err(bad(format!("invalid window id `{id}`")));
    }
    let p =
        tend_jobs::window::RunPolicy { id, job: b.job, pods: b.pods, start, end, utc_offset_minutes: zone };
    tend_control::jobs::put_policy(&s, &p).await?;
    s.event(None, EventKind::Job, format!("run policy {} added: no job starts in {}", p.id, p.describe()))
        .await;
    Ok(Json(run_policy(p)))
}

/// Removes a window.
#[utoipa::path(delete, path = "/v1/jobs/windows/{id}", tag = "jobs",
    params(("id" = String, Path, description = "the window")),
    responses((status = 200, description = "removed", body = WindowRemoved), Guarded, NotFound, Internal))]
pub(super) async fn remove_window(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> ApiResult<WindowRemoved> {
    if !tend_control::jobs::remove_policy(&s, &id).await? {
        return Err(not_found("window", &id));
    }
    s.event(None, EventKind::Job, format!("run policy {id} removed")).await;
    Ok(Json(WindowRemoved { removed: id }))
}

/// Every job-instance with a raised alarm.
#[utoipa::path(get, path = "/v1/jobs/alarms", tag = "jobs",
    responses((status = 200, description = "the job-instances", body = Vec<JobStatusInfo>), Guarded))]
pub(super) async fn list_alarms(State(s): State<Arc<Server>>) -> ApiResult<Vec<JobStatusInfo>> {
    let st = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Json(st.statuses.values().flatten().filter(|j| j.alarm.is_some()).map(job_status).collect()))
}

/// This document (no token needed).
#[utoipa::path(get, path = "/v1/openapi.json", tag = "cluster", security(()),
    responses((status = 200, description = "the OpenAPI 3.1 document", body = Object), Unavailable))]
pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(document().clone())
}
