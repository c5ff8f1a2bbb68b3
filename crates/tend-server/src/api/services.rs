//! Service routes: create, update, delete, status; volumes; events.

use super::openapi::*;
use super::*;

// ---------- services ----------

pub(super) async fn summary(s: &Server, name: &str) -> Result<ServiceSummary, ApiError> {
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
        plan_summaries.push(PlanSummary { name: pname.clone(), status: super::pods::step_status(v.status) });
    }
    let pods = s.instances(name).await?;
    let mut running = 0;
    for (inst, rec) in &pods {
        let Some(agent) = rec.agent() else { continue };
        if let (Some(tasks), Some(pod)) =
            (s.task_statuses(agent, name, inst, rec.incarnation_number()), spec.pod(&rec.id.pod))
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
pub(super) fn broken_summary(s: &Server, name: &str) -> Option<ServiceSummary> {
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

/// Every service with its pods, plans and how many instances run.
#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses(
        (status = 200, description = "the services, by name", body = Vec<ServiceSummary>),
        Guarded, Internal,
    ))]
pub(super) async fn list_services(State(s): State<Arc<Server>>) -> ApiResult<Vec<ServiceSummary>> {
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

/// One service: its pods, plans and how many instances run (or why its stored spec does not
/// load).
#[utoipa::path(get, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "the service")),
    responses(
        (status = 200, description = "the service", body = ServiceSummary),
        Guarded, NotFound, Internal,
    ))]
pub(super) async fn get_service(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<ServiceSummary> {
    if let Some(b) = broken_summary(&s, &name) {
        return Ok(Json(b));
    }
    Ok(Json(summary(&s, &name).await?))
}

/// Creates a service from a spec, or replaces the spec of the service it names (a rolling
/// update). Local artifacts must be uploaded first and named by digest in `artifacts`.
#[utoipa::path(post, path = "/v1/services", tag = "services",
    request_body = ServiceRequest,
    responses(
        (status = 201, description = "created: its first generation", body = ServiceSummary),
        (status = 200, description = "it existed: the new generation is being rolled out", body = ServiceSummary),
        Guarded, BadRequest, Conflict, InvalidSpec, Internal,
    ))]
pub(super) async fn create_service(
    State(s): State<Arc<Server>>,
    JsonBody(req): JsonBody<ServiceRequest>,
) -> Result<(StatusCode, Json<ServiceSummary>), ApiError> {
    let (name, generation, status) = submit(&s, req, None).await?;
    // The generation this request made (a later one may already be running).
    Ok((status, Json(ServiceSummary { generation, ..summary(&s, &name).await? })))
}

/// Replaces the service's spec (a rolling update), or creates it; the spec must name the
/// service of the URL. `expected_generation` makes it conditional (409 `stale_generation`).
#[utoipa::path(put, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "the service; the spec must name it")),
    request_body = ServiceRequest,
    responses(
        (status = 200, description = "the new generation is being rolled out", body = ServiceSummary),
        Guarded, BadRequest, Conflict, InvalidSpec, Internal,
    ))]
pub(super) async fn replace_service(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ServiceRequest>,
) -> ApiResult<ServiceSummary> {
    let (name, generation, _) = submit(&s, req, Some(&name)).await?;
    Ok(Json(ServiceSummary { generation, ..summary(&s, &name).await? }))
}

/// Validates and stores a service spec (create or replace); nothing changes on any error.
pub(super) async fn submit(
    s: &Server,
    req: ServiceRequest,
    expect: Option<&str>,
) -> Result<(String, u64, StatusCode), ApiError> {
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
        if !valid_sha(sha) || !s.edge.artifacts_dir.join(sha).is_file() {
            return Err(bad(format!("artifact `{}` (sha256 {sha}) was not uploaded", a.uri)));
        }
    }
    let sub = tend_control::services::Submission {
        spec,
        text: req.spec,
        file,
        artifacts: req.artifacts,
        expected_generation: req.expected_generation,
        rollback: None,
        allow_data_loss: req.allow_data_loss,
    };
    let (name, generation, existed) = tend_control::services::submit(s, sub).await.map_err(refusal)?;
    Ok((name, generation, if existed { StatusCode::OK } else { StatusCode::CREATED }))
}

/// What a spec would change, instance by instance; nothing is changed (a dry run: any token
/// may ask).
#[utoipa::path(post, path = "/v1/services/{name}/plan", tag = "services",
    params(("name" = String, Path, description = "the service; the spec must name it")),
    request_body = ServiceRequest,
    responses(
        (status = 200, description = "what would change", body = ChangePreview),
        Guarded, BadRequest, InvalidSpec, Internal,
    ))]
pub(super) async fn preview_change(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    JsonBody(req): JsonBody<ServiceRequest>,
) -> ApiResult<ChangePreview> {
    let file = req.file.clone().unwrap_or_else(|| "spec.yml".into());
    let spec = tend_spec::load_service(&file, &req.spec)
        .map_err(|r| ApiError(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", r.render()))?;
    if spec.name != name {
        return Err(bad(format!("the spec names service `{}`, the URL `{name}`", spec.name)));
    }
    tend_control::compile_plans(&spec)
        .map_err(|e| ApiError(StatusCode::UNPROCESSABLE_ENTITY, "invalid_spec", format!("plans: {e}")))?;
    let Some(rt) = s.service(&name) else {
        let changes = tend_control::dryrun::plan(None, &spec, &req.artifacts, req.allow_data_loss);
        return Ok(Json(ChangePreview { service: name, generation: 0, plan: "deploy".into(), changes }));
    };
    let (current, configs, generation) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.spec.clone(), rt.configs.clone(), rt.record.generation)
    };
    let instances = s.instances(&name).await?.into_iter().collect();
    let running = tend_control::dryrun::Running { configs: &configs, instances: &instances, spec: &current };
    let changes = tend_control::dryrun::plan(Some(&running), &spec, &req.artifacts, req.allow_data_loss);
    let (rollout, _) = tend_control::rollout::read(&s, &name).await?;
    let plan = if rollout.deployed_generation.is_some() { "update" } else { "deploy" };
    Ok(Json(ChangePreview { service: name, generation, plan: plan.into(), changes }))
}

/// Where the service's rollout stands: the generation being rolled out, by which plan, its
/// state, the last generation fully deployed.
#[utoipa::path(get, path = "/v1/services/{name}/rollout", tag = "services",
    params(("name" = String, Path, description = "the service")),
    responses(
        (status = 200, description = "the rollout", body = RolloutInfo),
        Guarded, NotFound, Internal,
    ))]
pub(super) async fn get_rollout(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<RolloutInfo> {
    if s.service(&name).is_none() {
        return Err(not_found("service", &name));
    }
    let (r, _) = tend_control::rollout::read(&s, &name).await?;
    Ok(Json(RolloutInfo {
        service: name,
        generation: r.generation,
        plan: r.plan,
        state: match r.state {
            tend_control::rollout::RolloutState::InProgress => RolloutState::InProgress,
            tend_control::rollout::RolloutState::Complete => RolloutState::Complete,
            tend_control::rollout::RolloutState::Failed => RolloutState::Failed,
        },
        started: r.started_ms.is_some(),
        deployed_generation: r.deployed_generation,
        rollback_from: r.rollback_from,
        rollback_to: r.rollback_to,
        message: r.message,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DeleteQuery {
    /// Delete even while instances are launched (they are stopped); refused otherwise.
    #[serde(default)]
    force: bool,
    /// How long to wait for agents to confirm the stop, in seconds (default 30; more than 300
    /// waits 300).
    #[serde(default)]
    wait_seconds: Option<u64>,
}

/// Deletes a service: its instances stop (with `force`), its volumes are retained.
#[utoipa::path(delete, path = "/v1/services/{name}", tag = "services",
    params(("name" = String, Path, description = "the service"), DeleteQuery),
    responses(
        (status = 200, description = "deleted", body = ServiceDeleted),
        Guarded, BadRequest, NotFound, Conflict, Internal,
    ))]
pub(super) async fn delete_service(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
    QueryParams(q): QueryParams<DeleteQuery>,
) -> ApiResult<ServiceDeleted> {
    if s.service(&name).is_none() && broken_summary(&s, &name).is_none() {
        return Err(not_found("service", &name));
    }
    let instances = s.instances(&name).await?;
    let live = instances.iter().filter(|(_, r)| r.incarnation.is_some()).count();
    if live > 0 && !q.force {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "tasks_running",
            format!("service `{name}` has {live} launched pod instance(s); delete with force to stop them"),
        ));
    }
    let wait = Duration::from_secs(q.wait_seconds.unwrap_or(30).min(300));
    let d = tend_control::services::delete(&s, &name, wait).await.map_err(refusal)?;
    Ok(Json(ServiceDeleted {
        deleted: name,
        stopped_instances: d.stopped as u64,
        confirmed: d.unconfirmed.is_empty(),
        unconfirmed_agents: d.unconfirmed,
        retained_volumes: d.retained_volumes,
    }))
}

// ---------- volumes ----------

/// Every volume set: owner, agent, size, state, and until when a retained one is kept.
#[utoipa::path(get, path = "/v1/volumes", tag = "volumes",
    responses(
        (status = 200, description = "the volume sets", body = Vec<VolumeInfo>),
        Guarded, Internal,
    ))]
pub(super) async fn list_volumes(State(s): State<Arc<Server>>) -> ApiResult<Vec<VolumeInfo>> {
    Ok(Json(
        tend_control::volumes::all(&s).await?.iter().map(|(r, _)| tend_control::volumes::info(r)).collect(),
    ))
}

/// Deletes a volume set no instance uses (its agent deletes the data).
#[utoipa::path(delete, path = "/v1/volumes/{id}", tag = "volumes",
    params(("id" = String, Path, pattern = "^v[0-9]{1,20}$", description = "the volume set's id")),
    responses(
        (status = 200, description = "being deleted", body = VolumeInfo),
        Guarded, BadRequest, NotFound, Conflict, Internal,
    ))]
pub(super) async fn delete_volume(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> ApiResult<VolumeInfo> {
    if tend_model::VolumeId::parse(&id).is_none() {
        return Err(bad(format!("`{id}` is not a volume id (v followed by digits, see `tend volume list`)")));
    }
    match tend_control::volumes::request_delete(&s, &id).await {
        Ok(r) => Ok(Json(tend_control::volumes::info(&r))),
        Err((404, m)) => Err(ApiError(StatusCode::NOT_FOUND, "not_found", m)),
        Err((409, m)) => Err(ApiError(StatusCode::CONFLICT, "volume_in_use", m)),
        Err((_, m)) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", m)),
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct EventQuery {
    /// Only events after this sequence number.
    #[serde(default)]
    since: u64,
    /// At most this many events, oldest first (default 1000; 0 counts as 1, more than 10000 as
    /// 10000): page with `since`.
    #[serde(default)]
    #[param(value_type = Option<u64>)]
    limit: Option<usize>,
    /// Only this service's events.
    #[serde(default)]
    service: Option<String>,
    /// Only the newest this many (still oldest first; more than 10000 is refused): where a
    /// follower starts.
    #[serde(default)]
    #[param(value_type = Option<u64>, maximum = 10000)]
    last: Option<usize>,
}

/// The event log, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(EventQuery),
    responses(
        (status = 200, description = "the events", body = Vec<EventInfo>),
        Guarded, BadRequest,
    ))]
pub(super) async fn list_events(
    State(s): State<Arc<Server>>,
    QueryParams(q): QueryParams<EventQuery>,
) -> ApiResult<Vec<EventInfo>> {
    if q.last.is_some_and(|n| n > 10_000) {
        return Err(bad("last: at most 10000"));
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let mut out: std::collections::VecDeque<EventInfo> = std::collections::VecDeque::new();
    for kv in s.inner.store.range("events/").await?.kvs {
        if q.last.is_none() && out.len() >= limit {
            break;
        }
        let Ok(e) = serde_json::from_slice::<EventRecord>(&kv.value) else { continue };
        if e.seq > q.since && q.service.as_ref().is_none_or(|svc| e.service.as_ref() == Some(svc)) {
            out.push_back(EventInfo {
                seq: e.seq,
                time_ms: e.time_ms,
                service: e.service,
                kind: e.kind,
                message: e.message,
            });
            // The newest `last`: drop the oldest as newer ones come.
            if q.last.is_some_and(|n| out.len() > n) {
                out.pop_front();
            }
        }
    }
    let mut out: Vec<EventInfo> = out.into();
    out.truncate(limit);
    Ok(Json(out))
}
