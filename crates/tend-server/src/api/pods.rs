//! Plan, pod, task, endpoint and agent routes.

use super::openapi::*;
use super::*;
use tend_model::{Instance, InstanceId};

// ---------- plans ----------

/// The recovery plan: one step per instance that is down or being replaced.
pub(super) fn recovery_plan(s: &Server, name: &str) -> PlanInfo {
    let board = s.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
    let steps: Vec<StepInfo> = board
        .entries
        .iter()
        .filter(|((svc, _), _)| svc == name)
        .map(|((_, inst), e)| StepInfo {
            name: inst.clone(),
            status: e.state,
            message: Some(e.message.clone()),
        })
        .collect();
    let status = if steps.is_empty() { StepStatus::Complete } else { StepStatus::InProgress };
    PlanInfo {
        service: name.into(),
        name: "recovery".into(),
        status,
        interrupted: false,
        phases: vec![PhaseInfo { name: "recovery".into(), status, interrupted: false, steps }],
    }
}

pub(super) async fn plan_info(s: &Server, name: &str, plan: &str) -> Result<PlanInfo, ApiError> {
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
    let instances: BTreeMap<String, Instance> = s.instances(name).await?.into_iter().collect();
    Ok(PlanInfo {
        service: name.into(),
        name: v.name,
        status: step_status(v.status),
        interrupted: v.interrupted,
        phases: v
            .phases
            .into_iter()
            .map(|ph| PhaseInfo {
                name: ph.name,
                status: step_status(ph.status),
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
                        StepInfo { name: step, status: step_status(r.status()), message }
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// The service's plans with their phases and steps (and the recovery plan).
#[utoipa::path(get, path = "/v1/services/{name}/plans", tag = "plans", params(("name" = String, Path, description = "the service")),
    responses((status = 200, description = "the plans", body = Vec<PlanInfo>), Guarded, NotFound, Internal))]
pub(super) async fn list_plans(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<PlanInfo>> {
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

/// One plan with its phases and steps.
#[utoipa::path(get, path = "/v1/services/{name}/plans/{plan}", tag = "plans",
    params(("name" = String, Path, description = "the service"), ("plan" = String, Path, description = "the plan, e.g. deploy, update, recovery")),
    responses((status = 200, description = "the plan", body = PlanInfo), Guarded, NotFound, Internal))]
pub(super) async fn get_plan(
    State(s): State<Arc<Server>>,
    Path((name, plan)): Path<(String, String)>,
) -> ApiResult<PlanInfo> {
    Ok(Json(plan_info(&s, &name, &plan).await?))
}

/// An operator action on a plan, or on one of its phases or steps (named in the body; an
/// empty body means the whole plan).
#[utoipa::path(post, path = "/v1/services/{name}/plans/{plan}/{action}", tag = "plans",
    params(("name" = String, Path, description = "the service"), ("plan" = String, Path, description = "the plan"),
        ("action" = inline(PlanActionKind), Path, description = "what to do")),
    request_body(content = Option<PlanAction>, description = "the phase or step it applies to; may be empty"),
    responses((status = 200, description = "the plan after the action", body = PlanInfo),
        Guarded, BadRequest, NotFound, Internal))]
pub(super) async fn plan_action(
    State(s): State<Arc<Server>>,
    Path((name, plan, action)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<PlanInfo> {
    // No body (or `null`): the whole plan.
    let a: PlanAction = optional_body(&body)?;
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
    // Whether anything changed: an interrupt of an interrupted plan (or a continue of a running
    // one) writes nothing and records no event.
    let changed = match action_word(&action) {
        Some(PlanActionKind::Interrupt) => e.interrupt(&p, a.phase.as_deref()).await.map_err(map)?,
        Some(PlanActionKind::Continue) => e.proceed(&p, a.phase.as_deref()).await.map_err(map)?,
        Some(PlanActionKind::ForceComplete) => {
            e.force_complete(&p, &target).await.map_err(map)?;
            true
        }
        Some(PlanActionKind::Restart) => {
            e.restart(&p, &target).await.map_err(map)?;
            true
        }
        None => {
            return Err(bad(format!(
                "unknown plan action `{action}`: use interrupt, continue, force-complete or restart"
            )));
        }
    };
    if changed {
        s.event(Some(&name), EventKind::Plan, format!("plan {plan}: {action} {target:?}")).await;
        trigger.notify_one();
    }
    Ok(Json(plan_info(&s, &name, &plan).await?))
}

// ---------- pods, tasks, endpoints ----------

/// An instance's state (and more on it), from its record, its reported tasks, and its step in
/// the plan of the running rollout.
pub(super) fn pod_state(
    rec: &Instance,
    tasks: Option<&Vec<TaskStatus>>,
    pod: Option<&tend_spec::PodSpec>,
    now_ms: u64,
    step: Option<(&str, tend_plan::Status)>,
) -> (PodState, Option<String>) {
    if let Some((plan, tend_plan::Status::Starting | tend_plan::Status::Started)) = step {
        match plan {
            "update" => return (PodState::Updating, None),
            "rollback" => return (PodState::RollingBack, None),
            _ => {}
        }
    }
    if rec.reservation.is_none() {
        return (PodState::Pending, None);
    }
    if rec.incarnation.is_none() {
        return (PodState::Reserved, None);
    }
    let (Some(tasks), Some(pod)) = (tasks, pod) else { return (PodState::Unknown, None) };
    // A crash loop is the agent's to handle: show it as such, with when it tries next.
    let looping = tasks.iter().find(|t| t.crash_loop >= 2 && t.next_restart_ms.is_some());
    if let Some(t) = looping {
        let next = t.next_restart_ms.unwrap_or(now_ms).saturating_sub(now_ms) as f64 / 1000.0;
        return (
            PodState::CrashLooping,
            Some(format!("task {}: restart {}, next in {next:.1} s", t.task, t.restarts)),
        );
    }
    let state = match judge(pod, tasks, now_ms) {
        Ok(true) => PodState::Running,
        Ok(false) => PodState::Launching,
        Err(_) => PodState::Failed,
    };
    (state, None)
}

/// The plan engine's status on the wire.
pub(super) fn step_status(s: tend_plan::Status) -> StepStatus {
    use tend_plan::Status as S;
    match s {
        S::Pending => StepStatus::Pending,
        S::Prepared => StepStatus::Prepared,
        S::Starting => StepStatus::Starting,
        S::Started => StepStatus::Started,
        S::Complete => StepStatus::Complete,
        S::Waiting => StepStatus::Waiting,
        S::Error => StepStatus::Error,
    }
}

pub(crate) async fn pod_infos(s: &Server, name: &str) -> Result<Vec<PodInfo>, ApiError> {
    let rt = s.service(name).ok_or_else(|| not_found("service", name))?;
    let (spec, ids, plan) = {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        (rt.spec.clone(), rt.identities.clone(), rt.plans.get(&rt.active_plan).cloned())
    };
    // Each instance's step in the plan the rollout runs.
    let mut steps: BTreeMap<String, tend_plan::Status> = BTreeMap::new();
    if let Some(plan) = &plan {
        let records =
            tend_control::deploy::engine(s, name).records(plan).await.map_err(anyhow::Error::from)?;
        for (node, r) in plan.steps.iter().zip(records) {
            steps.insert(node.name.clone(), r.status());
        }
    }
    let plan_name = plan.as_ref().map(|p| p.def.name.clone()).unwrap_or_default();
    let mut recs: BTreeMap<String, Instance> = s.instances(name).await?.into_iter().collect();
    let mut out = Vec::new();
    for p in &spec.pods {
        for i in 0..p.count {
            let inst = format!("{}-{i}", p.name);
            let inst_key = inst.clone();
            let rec =
                recs.remove(&inst).unwrap_or_else(|| Instance::new(InstanceId::new(p.name.clone(), i), 0));
            let tasks = rec.agent().and_then(|a| s.task_statuses(a, name, &inst, rec.incarnation_number()));
            let step = steps.get(&inst).map(|st| (plan_name.as_str(), *st));
            let (state, detail) = pod_state(&rec, tasks.as_ref(), Some(p), s.now_ms(), step);
            out.push(PodInfo {
                service: name.into(),
                state,
                detail,
                instance: inst,
                pod: p.name.clone(),
                index: i,
                agent: rec.agent().map(str::to_string),
                incarnation: rec.incarnation_number(),
                config: rec.config().to_string(),
                target_config: ids.get(&p.name).cloned().unwrap_or_default(),
                pending_reason: rec.pending_reason.clone(),
                ports: rec.ports().cloned().unwrap_or_default(),
                reservation: rec.reservation.as_ref().map(|r| ReservationInfo {
                    agent: r.agent.clone(),
                    cpus: r.resources.cpus_milli as f64 / 1000.0,
                    memory_mb: r.resources.memory_mb,
                    disk_mb: r.resources.disk_mb,
                    ports: r.ports.clone(),
                    volumes: rec.volumes.names.clone(),
                    volume_id: rec.volumes.set.as_ref().map(|v| v.to_string()),
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
    // Instances the spec no longer has: going once the rollout's plan is complete.
    for (inst, rec) in recs {
        let tasks = rec.agent().and_then(|a| s.task_statuses(a, name, &inst, rec.incarnation_number()));
        out.push(PodInfo {
            service: name.into(),
            state: PodState::Decommissioning,
            detail: None,
            instance: inst,
            pod: rec.id.pod.clone(),
            index: rec.id.index,
            agent: rec.agent().map(str::to_string),
            incarnation: rec.incarnation_number(),
            config: rec.config().to_string(),
            target_config: String::new(),
            pending_reason: None,
            ports: rec.ports().cloned().unwrap_or_default(),
            reservation: None,
            tasks: tasks.unwrap_or_default(),
            recovery: None,
        });
    }
    Ok(out)
}

/// The service's pod instances: placement, reservation, incarnation, state, tasks.
#[utoipa::path(get, path = "/v1/services/{name}/pods", tag = "pods", params(("name" = String, Path, description = "the service")),
    responses((status = 200, description = "the instances", body = Vec<PodInfo>), Guarded, NotFound, Internal))]
pub(super) async fn list_pods(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<PodInfo>> {
    Ok(Json(pod_infos(&s, &name).await?))
}

/// One pod instance.
#[utoipa::path(get, path = "/v1/services/{name}/pods/{instance}", tag = "pods", params(("name" = String, Path, description = "the service"), ("instance" = String, Path, description = "the instance, `pod-index`")),
    responses((status = 200, description = "the instance", body = PodInfo), Guarded, NotFound, Internal))]
pub(super) async fn get_pod(
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

/// Restarts a pod instance in place, or replaces it (409 `not_launched` when it cannot be).
#[utoipa::path(post, path = "/v1/services/{name}/pods/{instance}/{action}", tag = "pods",
    params(("name" = String, Path, description = "the service"), ("instance" = String, Path, description = "the instance, `pod-index`"), ("action" = inline(PodActionKind), Path, description = "what to do")),
    responses((status = 200, description = "done", body = PodActionResult),
        Guarded, BadRequest, NotFound, Conflict, Internal))]
pub(super) async fn pod_action(
    State(s): State<Arc<Server>>,
    Path((name, instance, action)): Path<(String, String, String)>,
) -> ApiResult<PodActionResult> {
    let exists = pod_infos(&s, &name).await?.iter().any(|p| p.instance == instance);
    if !exists {
        return Err(not_found("pod instance", &instance));
    }
    let conflict = |m: String| ApiError(StatusCode::CONFLICT, "not_launched", m);
    let Some(kind) = action_word(&action) else {
        return Err(bad(format!("unknown pod action `{action}`: use restart or replace")));
    };
    let message = match kind {
        PodActionKind::Restart => {
            tend_control::recovery::restart_in_place(&s, &name, &instance).await.map_err(conflict)?
        }
        PodActionKind::Replace => tend_control::recovery::replace(&s, &name, &instance, "operator request")
            .await
            .map_err(conflict)?,
    };
    Ok(Json(PodActionResult { instance, action: kind, message }))
}

/// Address and named ports of every running task of the service.
#[utoipa::path(get, path = "/v1/services/{name}/endpoints", tag = "pods", params(("name" = String, Path, description = "the service")),
    responses((status = 200, description = "the endpoints", body = Vec<Endpoint>), Guarded, NotFound, Internal))]
pub(super) async fn endpoints(
    State(s): State<Arc<Server>>,
    Path(name): Path<String>,
) -> ApiResult<Vec<Endpoint>> {
    let pods = pod_infos(&s, &name).await?;
    let hosts: BTreeMap<String, String> = s
        .inner
        .agents
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .map(|a| (a.agent.id.clone(), a.agent.host.clone()))
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

/// Every agent: resources, reservations, state.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses((status = 200, description = "the agents", body = Vec<AgentInfo>), Guarded, Internal))]
pub(super) async fn list_agents(State(s): State<Arc<Server>>) -> ApiResult<Vec<AgentInfo>> {
    let mut reserved: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for svc in s.service_names() {
        for (_, rec) in s.instances(&svc).await? {
            if let Some(r) = &rec.reservation {
                let e = reserved.entry(r.agent.clone()).or_default();
                e.0 += r.resources.cpus_milli;
                e.1 += r.resources.memory_mb;
            }
        }
    }
    let now = s.now_ms();
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    Ok(Json(
        agents
            .values()
            .map(|a| {
                let r = &a.agent;
                let (c, m) = reserved.get(&r.id).copied().unwrap_or_default();
                AgentInfo {
                    id: r.id.clone(),
                    host: r.host.clone(),
                    attributes: r.attributes.clone(),
                    resources: AgentResources {
                        cpus: r.capacity.cpus_milli as f64 / 1000.0,
                        memory_mb: r.capacity.memory_mb,
                        disk_mb: r.capacity.disk_mb,
                        port_range: [r.ports.0, r.ports.1],
                    },
                    reserved_cpus: c as f64 / 1000.0,
                    reserved_memory_mb: m,
                    state: if s.agent_up(a) { AgentState::Up } else { AgentState::Lost },
                    last_seen_ms_ago: a.last_seen_ms.map(|t| now.saturating_sub(t)),
                    tasks: a.tasks.len(),
                    conflict: a.conflict.clone(),
                }
            })
            .collect(),
    ))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct TaskQuery {
    /// Only this service's tasks.
    #[serde(default)]
    service: Option<String>,
}

/// Every task status reported by the agents that are up.
#[utoipa::path(get, path = "/v1/tasks", tag = "pods", params(TaskQuery),
    responses((status = 200, description = "the tasks", body = Vec<TaskStatus>), Guarded, BadRequest))]
pub(super) async fn list_tasks(
    State(s): State<Arc<Server>>,
    QueryParams(q): QueryParams<TaskQuery>,
) -> ApiResult<Vec<TaskStatus>> {
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    Ok(Json(
        agents
            .values()
            .filter(|a| s.agent_up(a))
            .flat_map(|a| a.tasks.all().iter())
            .filter(|t| q.service.as_ref().is_none_or(|svc| &t.service == svc))
            .cloned()
            .collect(),
    ))
}
