//! Deploying: the plan steps of a service (one per pod instance), placement with reservations,
//! launching incarnations (intent first), and the desired state each agent pulls.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tend_api::{ArtifactRef, Assignment, CheckSpec, ProbeKind, TaskLaunch, TaskState, VolumeRef};
use tend_plan::{Applied, ApplyReason, CheckResult, Engine, StepNode, StepWork};
use tend_spec::{Goal, PodSpec, Probe, ServiceSpec};
use tend_store::{Compare, Txn, TxnOp};

use tend_model::Instance;

use crate::records::*;
use crate::Control;

/// The plan engine for a service's plans.
pub fn engine(server: &Control, service: &str) -> Engine {
    Engine::new(server.inner.store.clone(), server.inner.clock.clone(), plans_prefix(service))
        .with_max_parallel(10_000)
}

/// A deploy step: get the instance's target incarnation running (and ready).
pub struct DeployWork {
    pub server: Control,
    pub service: String,
    /// Steps of a rolling plan (`update`, `rollback`) follow the pod's update policy: an updated
    /// instance must stay up `min_healthy_seconds`, and a step fails after
    /// `progress_deadline_seconds`. Deploy plans use the control plane's step deadline.
    /// Some(when the rollout started, from its record): incarnations launched since then are
    /// this rollout's, and only they wait out the minimum healthy time and the health gate
    /// after them — read from the store, so a restarted control plane judges them alike.
    pub rolling: Option<u64>,
    /// Why the health gate after a step has not passed yet (for its deadline's message).
    gate_failures: std::sync::Mutex<BTreeMap<String, String>>,
}

impl DeployWork {
    pub fn new(server: Control, service: impl Into<String>) -> DeployWork {
        DeployWork { server, service: service.into(), rolling: None, gate_failures: Default::default() }
    }

    /// The work of a rolling plan (`update`, `rollback`) of a rollout started at `since_ms`.
    pub fn rolling(server: Control, service: impl Into<String>, since_ms: u64) -> DeployWork {
        DeployWork { rolling: Some(since_ms), ..DeployWork::new(server, service) }
    }

    /// Whether the instance's incarnation was launched by this rolling plan's rollout.
    fn launched_here(&self, rec: &Instance) -> bool {
        self.rolling.is_some_and(|since| rec.launched_ms() >= since)
    }

    /// Whether an instance this work launched has been up long enough to move on.
    fn healthy_long_enough(
        &self,
        pod: &PodSpec,
        rec: &Instance,
        tasks: &[tend_api::TaskStatus],
        now: u64,
    ) -> bool {
        if !self.launched_here(rec) {
            return true;
        }
        let min = pod.update.min_healthy_seconds * 1000;
        tasks.iter().filter(|t| t.state == TaskState::Running).all(|t| now.saturating_sub(t.since_ms) >= min)
    }

    /// Milliseconds until time alone may change what the step sees of the instance's target
    /// incarnation (None: nothing due): a running task passes the running rule or the minimum
    /// healthy time of a rolling plan, or the step's deadline passes.
    fn next_due_ms(&self, pod: &PodSpec, instance: &str) -> Option<u64> {
        let rec = self.server.inner.state.instance(&self.service, instance)?;
        let now = self.server.now_ms();
        let deadline = rec.launched_ms().saturating_add(self.deadline_ms(pod)).saturating_add(1);
        let tasks =
            self.server.task_statuses(rec.agent()?, &self.service, instance, rec.incarnation_number());
        let healthy_ms = if self.launched_here(&rec) { pod.update.min_healthy_seconds * 1000 } else { 0 };
        tasks
            .iter()
            .flatten()
            .filter(|t| t.state == TaskState::Running)
            .flat_map(|t| [MIN_RUNNING_MS, healthy_ms].map(|ms| t.since_ms.saturating_add(ms)))
            .chain([deadline])
            .map(|at| at.saturating_sub(now))
            .filter(|ms| *ms > 0)
            .min()
    }

    fn deadline_ms(&self, pod: &PodSpec) -> u64 {
        if self.rolling.is_some() {
            pod.update.progress_deadline_seconds * 1000
        } else {
            self.server.inner.cfg.step_deadline_ms
        }
    }
}

/// The pod of an instance id (parsed once, strictly: `db-backup-0` is pod `db-backup`).
pub(crate) fn pod_of<'a>(spec: &'a ServiceSpec, instance: &str) -> Option<(&'a PodSpec, u32)> {
    let id = tend_model::InstanceId::parse(instance)?;
    spec.pod(&id.pod).map(|p| (p, id.index))
}

/// What a step still waits for, in words (for deadlines and "why is it stuck").
pub fn waiting_for(pod: &PodSpec, tasks: &[tend_api::TaskStatus]) -> String {
    let mut waits = Vec::new();
    for t in &pod.tasks {
        match tasks.iter().find(|s| s.task == t.name) {
            None => waits.push(format!("task `{}` not reported by its agent", t.name)),
            Some(s)
                if t.goal == Goal::Running
                    && s.state == TaskState::Running
                    && t.readiness_check.is_some()
                    && !s.ready =>
            {
                waits.push(format!("task `{}` running but not ready", t.name))
            }
            Some(s)
                if s.state == TaskState::Starting
                    || (t.goal != Goal::Running && s.state == TaskState::Running) =>
            {
                waits.push(format!(
                    "task `{}` {}",
                    t.name,
                    s.message.clone().unwrap_or_else(|| "starting".into())
                ))
            }
            Some(s) if t.goal == Goal::Running && s.state != TaskState::Running => waits.push(format!(
                "task `{}` {}",
                t.name,
                s.message.clone().unwrap_or_else(|| "stopped".into())
            )),
            _ => {}
        }
    }
    if waits.is_empty() {
        "tasks to run steadily".into()
    } else {
        waits.join("; ")
    }
}

/// How long a task without a readiness check must have run to count as deployed.
pub const MIN_RUNNING_MS: u64 = 1_000;

/// The longest a placed instance's step sleeps without a report that changes its judgement or
/// a moment that time decides: what no report announces (a replacement, a new config, a health
/// gate to try again) is seen within this.
pub const PLACED_WAIT_MS: u64 = 2_000;

/// In-place restarts after which a deploy step gives up on an incarnation.
pub const CRASH_LOOP_RESTARTS: u32 = 3;

/// Whether an incarnation's reported tasks satisfy the pod: running tasks running (and ready
/// when they have a readiness check), once/finish tasks exited 0. Err: a task failed.
///
/// A running task without a readiness check counts once it has run for `MIN_RUNNING_MS`, so that
/// a task that exits at once is not taken for deployed (Nomad's min_healthy_time, shortened).
pub fn judge(pod: &PodSpec, tasks: &[tend_api::TaskStatus], now_ms: u64) -> Result<bool, String> {
    let mut all = true;
    for t in &pod.tasks {
        let Some(s) = tasks.iter().find(|s| s.task == t.name) else {
            all = false;
            continue;
        };
        let failed = |what: String| {
            Err(format!(
                "task `{}` {what}{}",
                t.name,
                s.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default()
            ))
        };
        match (t.goal, s.state) {
            (_, TaskState::Failed) => return failed("could not start".into()),
            (Goal::Running, TaskState::Exited | TaskState::Killed) if s.next_restart_ms.is_some() => {
                // The agent restarts it in place; a crash loop fails the deploy step.
                if s.restarts >= CRASH_LOOP_RESTARTS {
                    return failed(format!("is crash-looping ({} restarts in place)", s.restarts));
                }
                all = false;
            }
            (Goal::Running, TaskState::Exited | TaskState::Killed) => {
                return failed(format!(
                    "stopped (exit code {})",
                    s.exit_code.map_or("none".into(), |c| c.to_string())
                ))
            }
            (Goal::Running, TaskState::Running) => {
                let up = if t.readiness_check.is_some() {
                    s.ready
                } else {
                    now_ms.saturating_sub(s.since_ms) >= MIN_RUNNING_MS
                };
                if !up {
                    all = false;
                }
            }
            (_, TaskState::Exited) if s.exit_code == Some(0) => {}
            (_, TaskState::Exited) => {
                return failed(format!(
                    "exited with code {}",
                    s.exit_code.map_or("none".into(), |c| c.to_string())
                ))
            }
            (_, TaskState::Killed) => return failed("was killed".into()),
            _ => all = false,
        }
    }
    Ok(all)
}

/// Config identities by pod, shared.
pub type Identities = Arc<BTreeMap<String, String>>;

impl DeployWork {
    pub(crate) fn spec(&self) -> Option<(Arc<ServiceSpec>, Identities)> {
        let rt = self.server.service(&self.service)?;
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        Some((rt.spec.clone(), rt.identities.clone()))
    }

    /// The instance as stored, with the revision to compare-and-swap on.
    pub(crate) async fn record(&self, instance: &str) -> Result<Option<(Instance, i64)>, String> {
        let key = instance_key(&self.service, instance);
        match self.server.inner.store.get(&key).await.map_err(|e| e.to_string())? {
            Some(kv) => Ok(Some((decode_instance(&kv.value)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    /// The instance as the cluster state has it, current with the store's record as of now
    /// (what a check reads: no decode per look; writes go through [`Self::record`]).
    ///
    /// Only this key must be current: the state waits for the revision of the record's last
    /// change, not for every change made since (other instances' writes, which at scale arrive
    /// all the time). The watch applies changes in revision order, so once that revision is
    /// applied the state holds the record the store holds. A record absent from the store may
    /// have been deleted at any revision: then the whole state catches up.
    pub(crate) async fn current(&self, instance: &str) -> Result<Option<Arc<Instance>>, String> {
        let state = &self.server.inner.state;
        let store = &*self.server.inner.store;
        match store.get(&instance_key(&self.service, instance)).await.map_err(|e| e.to_string())? {
            Some(kv) => state.applied_up_to(kv.mod_revision).await,
            None => state.caught_up(store).await.map_err(|e| e.to_string())?,
        }
        Ok(state.instance(&self.service, instance))
    }

    /// Places (if needed) and launches the target incarnation, writing the intent first
    /// (batched with other launches: `launch.rs`).
    pub(crate) async fn ensure_launched(&self, instance: &str) -> Result<(), String> {
        crate::launch::ensure_launched(&self.server, &self.service, instance).await
    }

    pub(crate) async fn write(&self, instance: &str, rec: &Instance, rev: i64) -> Result<(), String> {
        self.write_with(instance, rec, rev, Vec::new()).await
    }

    /// Writes an instance record (compare-and-swap on its revision) together with `extra`
    /// operations (its volume records) in one transaction.
    pub(crate) async fn write_with(
        &self,
        instance: &str,
        rec: &Instance,
        rev: i64,
        extra: Vec<TxnOp>,
    ) -> Result<(), String> {
        let key = instance_key(&self.service, instance);
        let v = encode_instance(rec)?;
        let mut txn = Txn::new().when(Compare::mod_revision_eq(&key, rev)).then(TxnOp::put(&key, v));
        for op in extra {
            txn = txn.then(op);
        }
        let r = self.server.inner.store.txn(txn).await.map_err(|e| e.to_string())?;
        if !r.succeeded {
            return Err(format!("instance {instance} changed concurrently; will retry"));
        }
        Ok(())
    }

    /// Pure placement over a snapshot of live agents (minus `avoid`) and every reservation.
    pub(crate) async fn place(
        &self,
        pod: &PodSpec,
        instance: &str,
        avoid: Option<&str>,
    ) -> Result<Result<crate::launch::Placed, String>, String> {
        let mut snap = crate::launch::Snapshot::take(&self.server, avoid).await?;
        Ok(snap.place(&self.service, pod, instance))
    }
}

#[async_trait]
impl StepWork for DeployWork {
    async fn check(&self, step: &StepNode) -> Result<CheckResult, String> {
        let (spec, ids) = self.spec().ok_or("service is gone")?;
        let (pod, _) = pod_of(&spec, &step.name).ok_or_else(|| format!("no pod for {}", step.name))?;
        let Some(rec) = self.current(&step.name).await? else { return Ok(CheckResult::Needed) };
        if rec.incarnation.is_none() || Some(rec.config()) != ids.get(&pod.name).map(String::as_str) {
            return Ok(CheckResult::Needed);
        }
        let Some(agent) = rec.agent() else { return Ok(CheckResult::Needed) };
        let Some(tasks) =
            self.server.task_statuses(agent, &self.service, &step.name, rec.incarnation_number())
        else {
            return Ok(CheckResult::Needed);
        };
        let now = self.server.now_ms();
        if judge(pod, &tasks, now) != Ok(true) || !self.healthy_long_enough(pod, &rec, &tasks, now) {
            return Ok(CheckResult::Needed);
        }
        // After the change: the cluster's health gate must pass too.
        let gate = pod.update.health_gate.as_ref().filter(|_| self.launched_here(&rec));
        if let Some(gate) = gate {
            if let Err(e) = crate::gates::run_once(&self.server, &self.service, &spec, gate, &step.name).await
            {
                self.gate_failures.lock().unwrap_or_else(|e| e.into_inner()).insert(step.name.clone(), e);
                return Ok(CheckResult::Needed);
            }
        }
        Ok(CheckResult::Done)
    }

    async fn apply(&self, step: &StepNode, _reason: &ApplyReason) -> Result<Applied, String> {
        // Before the change: the cluster's health gate must pass (within the step's deadline).
        if self.rolling.is_some() {
            let (spec, _) = self.spec().ok_or("service is gone")?;
            let (pod, _) = pod_of(&spec, &step.name).ok_or_else(|| format!("no pod for {}", step.name))?;
            if let Some(gate) = &pod.update.health_gate {
                let deadline = self.server.now_ms() + self.deadline_ms(pod);
                crate::gates::pass_before(&self.server, &self.service, &spec, gate, &step.name, deadline)
                    .await?;
            }
        }
        self.ensure_launched(&step.name).await?;
        Ok(Applied::InProgress)
    }

    async fn progress(&self, step: &StepNode) -> Result<(), String> {
        // A report may change the judgement, and so may time: a task passes the running rule
        // at a moment known in advance, with no report to announce it.
        let (spec, ids) = self.spec().ok_or("service is gone")?;
        let (pod, _) = pod_of(&spec, &step.name).ok_or_else(|| format!("no pod for {}", step.name))?;
        let due = self.next_due_ms(pod, &step.name);
        let placed_on = self.server.inner.state.instance(&self.service, &step.name);
        match placed_on.as_ref().and_then(|r| r.agent().map(|a| (a, r.incarnation_number()))) {
            // Only a report that changes the judgement of the instance's own tasks wakes it
            // (with 100 instances on an agent, a report wakes the steps of the instances it
            // decided, not every step waiting there; a task that starts, or runs but is not
            // ready yet, leaves its step asleep). What time decides (the running rule, the
            // minimum healthy time, deadlines) the wait's bound decides.
            Some((agent, incarnation)) => {
                // Subscribed before reading: a report in between is not missed.
                let mut rx = self.server.inner.reports.subscribe(&self.service, &step.name);
                let own = || self.server.task_statuses(agent, &self.service, &step.name, incarnation);
                let judged = || own().map_or(Ok(false), |t| judge(pod, &t, self.server.now_ms()));
                let before = judged();
                let changed = async {
                    while rx.changed().await.is_ok() {
                        if judged() != before {
                            return;
                        }
                    }
                    // The control plane is stopping: the bound ends the wait.
                    std::future::pending::<()>().await
                };
                let wait =
                    Duration::from_millis(due.map_or(PLACED_WAIT_MS, |ms| ms.clamp(1, PLACED_WAIT_MS)));
                let _ = tokio::time::timeout(wait, changed).await;
            }
            None => {
                let mut status = self.server.inner.status_gen.subscribe();
                let wait = Duration::from_millis(due.map_or(500, |ms| ms.clamp(1, 500)));
                let _ = tokio::time::timeout(wait, status.changed()).await;
            }
        }
        let rec = self.current(&step.name).await?;
        let placed = rec
            .as_ref()
            .is_some_and(|r| r.is_launched() && Some(r.config()) == ids.get(&pod.name).map(String::as_str));
        if !placed {
            // Pending (no agent fitted yet) or a concurrent change: try again.
            return match self.ensure_launched(&step.name).await {
                Ok(()) | Err(_) => Ok(()),
            };
        }
        let rec = rec.ok_or("record vanished")?;
        let agent = rec.agent().unwrap_or_default().to_string();
        let incarnation = rec.incarnation_number();
        let now = self.server.now_ms();
        let tasks = self.server.task_statuses(&agent, &self.service, &step.name, incarnation);
        if let Some(tasks) = &tasks {
            if let Err(e) = judge(pod, tasks, now) {
                return Err(format!("{} incarnation {incarnation} on agent {agent}: {e}", step.name));
            }
        }
        // Every wait on agents has a deadline, and says what it waited for.
        let deadline = self.deadline_ms(pod);
        if now.saturating_sub(rec.launched_ms()) > deadline {
            let gate = self.gate_failures.lock().unwrap_or_else(|e| e.into_inner()).get(&step.name).cloned();
            let what = match (&tasks, gate) {
                (_, Some(g)) => format!("the health gate to pass ({g})"),
                (Some(t), None) => waiting_for(pod, t),
                (None, None) => format!("agent {agent} to report (not heard from)"),
            };
            return Err(format!(
                "{} incarnation {} on agent {agent} not running after {} s: waited for {what}",
                step.name,
                incarnation,
                deadline / 1000
            ));
        }
        Ok(())
    }
}

fn check_spec(c: &tend_spec::Check, ports: &BTreeMap<String, u16>) -> CheckSpec {
    let (kind, cmd, port, path) = match &c.probe {
        Probe::Cmd(s) => (ProbeKind::Cmd, Some(s.clone()), None, None),
        Probe::Http { port, path } => (ProbeKind::Http, None, ports.get(port).copied(), Some(path.clone())),
        Probe::Tcp { port } => (ProbeKind::Tcp, None, ports.get(port).copied(), None),
    };
    CheckSpec {
        kind,
        cmd,
        port,
        path,
        interval_seconds: c.interval_seconds,
        timeout_seconds: c.timeout_seconds,
        grace_period_seconds: c.grace_period_seconds,
        max_consecutive_failures: c.max_consecutive_failures,
    }
}

/// The assignment an agent gets for an instance.
pub fn assignment(
    service: &str,
    rec_artifacts: &BTreeMap<String, String>,
    recovery: &tend_spec::RecoveryPolicy,
    pod: &PodSpec,
    instance: &str,
    rec: &Instance,
) -> Assignment {
    let artifacts = pod
        .artifacts
        .iter()
        .map(|a| {
            let name = a.uri.rsplit('/').next().unwrap_or("artifact").to_string();
            match rec_artifacts.get(&a.uri) {
                Some(sha) if !a.uri.contains("://") => ArtifactRef {
                    uri: format!("tend://artifacts/{sha}"),
                    sha256: Some(sha.clone()),
                    extract: a.extract,
                    name,
                },
                _ => ArtifactRef { uri: a.uri.clone(), sha256: a.sha256.clone(), extract: a.extract, name },
            }
        })
        .collect();
    let mut env = pod.env.clone();
    let replaced_from = rec.incarnation.as_ref().and_then(|i| i.replaced_from.as_ref());
    if let Some(r) = replaced_from {
        env.insert("TEND_REPLACING".into(), "1".into());
        env.insert("TEND_REPLACED_AGENT".into(), r.agent.clone());
        env.insert("TEND_REPLACED_HOST".into(), r.host.clone());
    }
    let ports = rec.ports().cloned().unwrap_or_default();
    let mut asg = Assignment {
        backoff: tend_api::Backoff {
            initial_ms: recovery.backoff.initial_seconds * 1000,
            max_ms: recovery.backoff.max_seconds * 1000,
            reset_after_ms: (recovery.backoff.max_seconds * 1000).max(10_000),
        },
        volume_id: rec.volumes.set.as_ref().map(|v| v.to_string()).unwrap_or_default(),
        legacy_volume_generation: (rec.volumes.set.is_none() && rec.volumes.legacy_generation > 0)
            .then_some(rec.volumes.legacy_generation),
        fence_after_ms: (recovery.on_partition == tend_spec::OnPartition::Fence)
            .then_some(recovery.fence_after_seconds * 1000),
        service: service.to_string(),
        pod: pod.name.clone(),
        pod_index: rec.id.index,
        instance: instance.to_string(),
        incarnation: rec.incarnation_number(),
        config: rec.config().to_string(),
        env,
        artifacts,
        volumes: pod
            .volumes
            .iter()
            .map(|v| VolumeRef { name: v.name.clone(), path: v.path.clone(), size_mb: v.size_mb })
            .collect(),
        tasks: pod
            .tasks
            .iter()
            .map(|t| TaskLaunch {
                name: t.name.clone(),
                goal: match t.goal {
                    Goal::Running => tend_api::TaskGoal::Running,
                    Goal::Once => tend_api::TaskGoal::Once,
                    Goal::Finish => tend_api::TaskGoal::Finish,
                },
                cmd: t.cmd.clone(),
                env: t.env.clone(),
                memory_mb: t.memory_mb,
                kill_grace_period_seconds: t.kill_grace_period_seconds,
                essential: t.essential,
                health_check: t.health_check.as_ref().map(|c| check_spec(c, &ports)),
                readiness_check: t.readiness_check.as_ref().map(|c| check_spec(c, &ports)),
                skip: t.goal == Goal::Once && rec.once_done.contains(&t.name),
            })
            .collect(),
        ports,
    };
    // The failure listener: a replacement runs the pod's hook before its tasks.
    if let (Some(cmd), Some(_)) = (&pod.on_replace, replaced_from) {
        asg.tasks.insert(
            0,
            TaskLaunch {
                name: "on-replace".into(),
                goal: tend_api::TaskGoal::Finish,
                cmd: cmd.clone(),
                env: BTreeMap::new(),
                memory_mb: 64,
                kill_grace_period_seconds: 10,
                essential: false,
                health_check: None,
                readiness_check: None,
                skip: false,
            },
        );
    }
    asg
}

/// Shared handle type for the API.
pub type Shared = Arc<Control>;
