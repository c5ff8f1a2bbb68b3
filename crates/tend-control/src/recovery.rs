//! Recovery on the control plane: watches every launched pod instance, judges it with the pure
//! rules of `crate::rules::recovery` (down-since from reports actually received, persisted;
//! failed updates blocked, never replaced) and the replacement limits of
//! `tend_scheduler::recovery`, and replaces failed instances — a new incarnation, placed
//! elsewhere when possible, with fresh volumes; the old volumes are retained, not deleted.
//! Restarts in place are the agents' own business; this loop only reports them.
//!
//! Level-triggered: a pass reads the store and the latest reports and acts; everything it
//! remembers between passes is in the store, so a restarted control plane decides the same.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use crate::rules::recovery::{assess, replacing, InstanceFacts, Observed};
use tend_api::TaskState;
use tend_api::{EventKind, StepStatus};
use tend_plan::Status;
use tend_scheduler::recovery::{
    decide, FailureMonitor, Health, InstanceView, RecoveryAction, ReplacementLimits,
};
use tend_spec::{Goal, PodSpec, ServiceSpec};

use crate::deploy::{engine, judge, pod_of, DeployWork};
use crate::records::InstanceRecord;
use crate::Control;

pub use crate::rules::recovery::FENCE_MARGIN_MS;

/// Least time between two replacement launches of one service.
pub const MIN_REPLACEMENT_INTERVAL_MS: u64 = 1_000;

/// What recovery shows for one instance.
#[derive(Clone, Debug)]
pub struct RecoveryEntry {
    /// Stopped, unreachable, replacing, waiting or blocked.
    pub state: StepStatus,
    pub message: String,
}

/// What the last pass showed (a display cache only: decisions never read it).
#[derive(Default)]
pub struct RecoveryBoard {
    pub entries: BTreeMap<(String, String), RecoveryEntry>,
}

/// Runs recovery (after start-up reconciliation): a pass whenever a report says something new,
/// what runs changes or a deadline comes (failure, fence, rate limit, an agent about to count as
/// lost), at most every 100 ms, and at least every 2 s.
pub async fn run(server: Control) {
    server.wait_reconciled().await;
    let mut status = server.inner.tasks_gen.subscribe();
    let mut desired = server.inner.desired_gen.subscribe();
    // The volume lifecycle moves in days: its pass runs when what runs changed, else every 10 s.
    let mut volumes_due = true;
    let mut last_volumes_ms = server.now_ms();
    loop {
        let next = match tick(&server).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "recovery pass failed");
                None
            }
        };
        // Wake for the next deadline, else resync every 2 s.
        let wait_ms = next.map_or(2_000, |t| t.saturating_sub(server.now_ms()).clamp(100, 2_000));
        if volumes_due || server.now_ms().saturating_sub(last_volumes_ms) >= 10_000 {
            if let Err(e) = crate::volumes::reconcile(&server).await {
                tracing::warn!(error = %e, "volume pass failed");
            }
            last_volumes_ms = server.now_ms();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        volumes_due =
            tokio::time::timeout(Duration::from_millis(wait_ms.saturating_sub(100).max(1)), async {
                tokio::select! {
                    biased;
                    _ = status.changed() => false,
                    _ = desired.changed() => true,
                }
            })
            .await
            .unwrap_or(false);
    }
}

fn fmt_secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The reset window of the agents' crash-loop state (as `deploy::assignment` sets it).
fn reset_after_ms(spec: &ServiceSpec) -> u64 {
    (spec.recovery.backoff.max_seconds * 1000).max(10_000)
}

/// The reports of one service, gathered once per pass: each agent's liveness, and the task
/// statuses by (agent, instance).
struct Reports {
    agents: BTreeMap<String, (bool, Option<u64>)>,
    tasks: HashMap<(String, String), Vec<tend_api::TaskStatus>>,
}

impl Reports {
    fn gather(server: &Control, svc: &str) -> Reports {
        let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        let mut tasks: HashMap<(String, String), Vec<tend_api::TaskStatus>> = HashMap::new();
        for (id, a) in agents.iter().filter(|(_, a)| server.agent_up(a)) {
            for t in a.tasks.iter().filter(|t| t.service == svc) {
                tasks.entry((id.clone(), t.instance.clone())).or_default().push(t.clone());
            }
        }
        let agents =
            agents.iter().map(|(id, a)| (id.clone(), (server.agent_up(a), a.last_seen_ms))).collect();
        Reports { agents, tasks }
    }
}

/// What the reports say of an instance's target incarnation.
fn observe(
    reports: &Reports,
    now: u64,
    (spec, pod): (&ServiceSpec, &PodSpec),
    inst: &str,
    rec: &InstanceRecord,
    agent: &str,
) -> Observed {
    let Some((up, last_seen_ms)) = reports.agents.get(agent) else {
        return Observed::AgentSilent { last_seen_ms: None };
    };
    if !up {
        return Observed::AgentSilent { last_seen_ms: *last_seen_ms };
    }
    let tasks: Vec<tend_api::TaskStatus> = reports
        .tasks
        .get(&(agent.to_string(), inst.to_string()))
        .map(|ts| ts.iter().filter(|t| t.incarnation == rec.incarnation).cloned().collect())
        .unwrap_or_default();
    let mut down: Option<u64> = None;
    for t in pod.tasks.iter().filter(|t| t.goal == Goal::Running) {
        let Some(s) = tasks.iter().find(|s| s.task == t.name) else { continue };
        let stopped = matches!(s.state, TaskState::Exited | TaskState::Killed | TaskState::Failed);
        // Caught running inside a crash loop: still down until it runs past the reset window.
        let looping = s.state == TaskState::Running
            && s.crash_loop >= 2
            && now.saturating_sub(s.since_ms) < reset_after_ms(spec);
        if stopped || looping {
            down = Some(down.map_or(s.since_ms, |d| d.min(s.since_ms)));
        }
    }
    if let Some(since_ms) = down {
        return Observed::TaskDown { since_ms };
    }
    if judge(pod, &tasks, now) == Ok(true) {
        Observed::Up
    } else {
        Observed::Starting
    }
}

/// Since when every long-running task of the instance's target incarnation has been up without
/// a restart (the latest start among them), from the reports; None when one is not running.
fn up_since(
    reports: &Reports,
    pod: &PodSpec,
    inst: &str,
    rec: &InstanceRecord,
    agent: &str,
    now: u64,
) -> Option<u64> {
    let tasks = reports.tasks.get(&(agent.to_string(), inst.to_string()))?;
    let mut latest = 0;
    for t in pod.tasks.iter().filter(|t| t.goal == Goal::Running) {
        let s = tasks.iter().find(|s| s.task == t.name && s.incarnation == rec.incarnation)?;
        if s.state != TaskState::Running {
            return None;
        }
        latest = latest.max(s.since_ms.min(now));
    }
    Some(latest)
}

/// How a service's spec says to recover.
struct Policy {
    monitor: FailureMonitor,
    limits: ReplacementLimits,
    /// Fence mode: replace an unreachable instance only once its agent has surely killed it.
    fence_ms: u64,
}

impl Policy {
    fn of(spec: &ServiceSpec) -> Policy {
        Policy {
            monitor: match spec.recovery.failure_timeout_seconds {
                Some(s) => FailureMonitor::Timed { timeout_ms: s * 1000 },
                None => FailureMonitor::Never,
            },
            limits: ReplacementLimits {
                max_concurrent: spec.recovery.max_concurrent_replacements,
                min_interval_ms: MIN_REPLACEMENT_INTERVAL_MS,
            },
            fence_ms: match spec.recovery.on_partition {
                tend_spec::OnPartition::Fence => spec.recovery.fence_after_seconds * 1000 + FENCE_MARGIN_MS,
                tend_spec::OnPartition::Replace => 0,
            },
        }
    }
}

/// Of `candidates` (instances not yet on their target config), those a deploy step is working
/// on (a step past its deadline fails, releasing them). Reads only their steps' records: an
/// instance on its target config is never held, so a settled service costs no read at all.
async fn busy_steps(
    server: &Control,
    svc: &str,
    deploy: Option<&tend_plan::Plan>,
    candidates: &BTreeSet<String>,
) -> anyhow::Result<HashSet<String>> {
    let mut busy = HashSet::new();
    let Some(plan) = deploy.filter(|_| !candidates.is_empty()) else { return Ok(busy) };
    let engine = engine(server, svc);
    for node in plan.steps.iter().filter(|n| candidates.contains(&n.name)) {
        let r = engine.record(plan, &node.id).await?;
        if matches!(r.status(), Status::Prepared | Status::Starting | Status::Started) {
            busy.insert(node.name.clone());
        }
    }
    Ok(busy)
}

/// Writes what the assessment says the store must hold (down-since, ready config), guarded by
/// the incarnation it judged.
async fn persist(
    server: &Control,
    svc: &str,
    inst: &str,
    rec: &InstanceRecord,
    (down, unreachable): (Option<u64>, Option<u64>),
    mark_ready: bool,
) {
    if down == rec.down_since_ms && unreachable == rec.unreachable_since_ms && !mark_ready {
        return;
    }
    let incarnation = rec.incarnation;
    let wrote = server
        .update_instance(svc, inst, |r| {
            if r.incarnation != incarnation {
                return false;
            }
            r.down_since_ms = down;
            r.unreachable_since_ms = unreachable;
            if mark_ready {
                r.ready_config = Some(r.config.clone());
                r.ready_incarnation = r.incarnation;
            }
            true
        })
        .await;
    if wrote && mark_ready && rec.replaced_from.is_some() && rec.ready_incarnation < incarnation {
        let msg = format!("replacement of {inst} is up (incarnation {incarnation})");
        server.event(Some(svc), EventKind::Replace, msg).await;
    }
}

/// The line recovery shows for a down instance.
fn describe(
    health: &Health,
    agent: &str,
    monitor: &FailureMonitor,
    blocked: Option<&str>,
    now: u64,
) -> Option<(StepStatus, String)> {
    let (state, what) = match health {
        Health::Up => return None,
        Health::Unreachable { since_ms } => (
            StepStatus::Unreachable,
            format!("agent {agent} unreachable for {}", fmt_secs(now.saturating_sub(*since_ms))),
        ),
        Health::Stopped { since_ms } => (
            StepStatus::Stopped,
            format!(
                "stopped for {}; agent {agent} restarting it in place",
                fmt_secs(now.saturating_sub(*since_ms))
            ),
        ),
    };
    if let Some(why) = blocked {
        return Some((StepStatus::Blocked, format!("{what}; {why}")));
    }
    let next = match monitor.deadline_ms(health) {
        Some(d) if d > now => format!("; replaced in {} if still down", fmt_secs(d - now)),
        Some(_) => "; failed".into(),
        None => "; failure monitor: never replaced automatically".into(),
    };
    Some((state, format!("{what}{next}")))
}

/// One pass over every service. Returns the earliest moment a decision could change with time
/// alone (a failure or fence deadline, the rate limit, an agent about to count as lost).
pub async fn tick(server: &Control) -> anyhow::Result<Option<u64>> {
    let mut next: Option<u64> = None;
    for svc in server.service_names() {
        let Some(rt) = server.service(&svc) else { continue };
        let (spec, deploy, ids) = {
            let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            (rt.spec.clone(), rt.plans.get(&rt.active_plan).cloned(), rt.identities.clone())
        };
        // One service's trouble (an unreadable record) does not stop recovery of the others.
        match service_pass(server, &svc, &spec, &ids, deploy.as_ref()).await {
            Ok(n) => next = earliest(next, n),
            Err(e) => tracing::warn!(service = %svc, error = %e, "recovery pass of a service failed"),
        }
    }
    let lost_after = server.inner.cfg.agent_lost_after_ms;
    let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    for a in agents.values().filter(|a| server.agent_up(a)) {
        next = earliest(next, a.last_seen_ms.map(|t| t + lost_after + 1));
    }
    Ok(next)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

async fn service_pass(
    server: &Control,
    svc: &str,
    spec: &ServiceSpec,
    targets: &BTreeMap<String, String>,
    deploy: Option<&tend_plan::Plan>,
) -> anyhow::Result<Option<u64>> {
    let now = server.now_ms();
    let mut next: Option<u64> = None;
    // Gather: facts from the store and the reports, judged by the pure rules.
    server.inner.state.caught_up(&*server.inner.store).await?;
    let records = server.inner.state.instances(svc);
    let off_target: BTreeSet<String> = records
        .iter()
        .filter(|(_, r)| targets.get(&r.pod) != Some(&r.config))
        .map(|(i, _)| i.clone())
        .collect();
    let busy = busy_steps(server, svc, deploy, &off_target).await?;
    let reports = Reports::gather(server, svc);
    let policy = Policy::of(spec);
    let mut views = Vec::new();
    let mut notes: BTreeMap<String, (StepStatus, String)> = BTreeMap::new();
    let mut last_launch: Option<u64> = None;
    // The incarnation each judgement was about: a replacement acts only if it is still current.
    let mut judged: BTreeMap<String, u64> = BTreeMap::new();
    for (inst, rec) in records {
        if rec.incarnation == 0 {
            continue;
        }
        if rec.replaced_from.is_some() && rec.replaced_ms > 0 {
            last_launch = Some(last_launch.map_or(rec.replaced_ms, |l: u64| l.max(rec.replaced_ms)));
        }
        let is_replacing = replacing(rec.replaced_from.is_some(), rec.incarnation, rec.ready_incarnation);
        let Some(agent) = rec.agent.clone() else {
            // A replacement still waiting for an agent that fits: try again.
            let _ = DeployWork::new(server.clone(), svc.to_string()).ensure_launched(&inst).await;
            let why = rec.pending_reason.clone().unwrap_or_else(|| "waiting for placement".into());
            notes.insert(inst.clone(), (StepStatus::Replacing, format!("replacement pending: {why}")));
            views.push(InstanceView {
                instance: inst,
                health: Health::Up,
                replacing: true,
                busy: false,
                min_unreachable_ms: 0,
            });
            continue;
        };
        let Some((pod, _)) = pod_of(spec, &inst) else { continue };
        // A step holds an instance only until it has launched the target config there; a step
        // that merely waits on the agent does not hide the instance from recovery.
        let held = busy.contains(&inst) && targets.get(&pod.name) != Some(&rec.config);
        let facts = InstanceFacts {
            incarnation: rec.incarnation,
            config: rec.config.clone(),
            ready_config: rec.ready_config.clone(),
            ready_incarnation: rec.ready_incarnation,
            down_since_ms: rec.down_since_ms,
            unreachable_since_ms: rec.unreachable_since_ms,
            observed: observe(&reports, now, (spec, pod), &inst, &rec, &agent),
            up_since_ms: up_since(&reports, pod, &inst, &rec, &agent, now),
        };
        let a = assess(&facts, now);
        judged.insert(inst.clone(), rec.incarnation);
        persist(server, svc, &inst, &rec, (a.down_since_ms, a.unreachable_since_ms), a.mark_ready).await;
        if let Some(note) = describe(&a.health, &agent, &policy.monitor, a.blocked, now) {
            notes.insert(inst.clone(), note);
        } else if is_replacing {
            notes.insert(inst.clone(), (StepStatus::Replacing, "replacement launching".into()));
        }
        if let Health::Stopped { since_ms } | Health::Unreachable { since_ms } = a.health {
            next = earliest(next, policy.monitor.deadline_ms(&a.health).filter(|d| *d > now));
            let fenced = since_ms + policy.fence_ms;
            next = earliest(next, (fenced > now).then_some(fenced));
        }
        // A replacement is under way while it starts; once it is down itself (its new agent
        // lost, its tasks stopped, or its config failed) it is judged like any other instance
        // and must not hold the replacement limit forever.
        views.push(InstanceView {
            instance: inst.clone(),
            replacing: is_replacing && a.health == Health::Up,
            health: a.health,
            // A blocked instance is not the failure monitor's to replace.
            busy: held || a.blocked.is_some(),
            min_unreachable_ms: policy.fence_ms,
        });
    }
    if let Some(t) = last_launch.map(|t| t + MIN_REPLACEMENT_INTERVAL_MS).filter(|t| *t > now) {
        next = earliest(next, Some(t));
    }
    // Decide, then act.
    for action in decide(&views, &policy.monitor, &policy.limits, last_launch, now) {
        match action {
            RecoveryAction::Replace { instance } => {
                let why = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                let judged = judged.get(&instance).copied();
                match replace_judged(server, svc, &instance, &format!("failure monitor: {why}"), judged).await
                {
                    Ok(msg) => {
                        notes.insert(instance, (StepStatus::Replacing, msg));
                    }
                    Err(e) => {
                        tracing::warn!(service = %svc, %instance, error = %e, "replacement failed; will retry")
                    }
                }
            }
            RecoveryAction::Wait { instance, reason } => {
                let prev = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                notes.insert(instance, (StepStatus::Waiting, format!("{prev}; replacement waits: {reason}")));
            }
        }
    }
    let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
    board.entries.retain(|(s, _), _| s != svc);
    for (inst, (state, message)) in notes {
        board.entries.insert((svc.to_string(), inst), RecoveryEntry { state, message });
    }
    Ok(next)
}

/// Replaces an instance: releases its reservation, places it anew (another agent when one fits),
/// fresh volumes under a new id, next incarnation, all written before any agent hears of it.
/// The old volumes are retained (listed, deleted only after their retention), in the same
/// transaction.
pub async fn replace(server: &Control, svc: &str, inst: &str, why: &str) -> Result<String, String> {
    replace_judged(server, svc, inst, why, None).await
}

/// Replaces an instance — when `judged` is given, only if its incarnation is still the one that
/// was judged failed (a pass decides on a snapshot: an incarnation launched since, say by an
/// update, has not failed).
async fn replace_judged(
    server: &Control,
    svc: &str,
    inst: &str,
    why: &str,
    judged: Option<u64>,
) -> Result<String, String> {
    let work = DeployWork::new(server.clone(), svc.to_string());
    let _guard = server.inner.launch_lock.lock().await;
    let (spec, ids) = work.spec().ok_or("service is gone")?;
    let (pod, _) = pod_of(&spec, inst).ok_or_else(|| format!("no pod for {inst}"))?;
    let (mut rec, rev) = work.record(inst).await?.ok_or_else(|| format!("{inst} was never launched"))?;
    if let Some(j) = judged.filter(|j| *j != rec.incarnation) {
        return Err(format!("{inst} changed since it was judged (incarnation {j}, now {})", rec.incarnation));
    }
    // Already released by a replacement that waits (fence mode, or no agent fits): placing now
    // would forget which agent must first confirm the old incarnation dead.
    let Some(old_agent) = rec.agent.clone() else {
        let why = rec.pending_reason.clone().unwrap_or_else(|| "waiting for placement".into());
        return Err(format!("{inst} is already being replaced ({why})"));
    };
    let old_host = {
        let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.get(&old_agent).map(|a| a.record.host.clone()).unwrap_or_default()
    };
    // Release the old reservation before placing, so that it does not count against the new one.
    let released = InstanceRecord {
        agent: None,
        ports: BTreeMap::new(),
        cpus_milli: 0,
        memory_mb: 0,
        disk_mb: 0,
        ..rec.clone()
    };
    work.write(inst, &released, rev).await?;
    let (_, rev) = work.record(inst).await?.ok_or("record vanished")?;
    // Fence mode: nothing is placed before the old incarnation is surely dead (launch.rs
    // places it once its agent confirms, or after the fence time without contact).
    let fence = spec.recovery.on_partition == tend_spec::OnPartition::Fence;
    let placed = if fence {
        Err(format!("fence: waiting until agent {old_agent} confirms the old incarnation stopped"))
    } else {
        match work.place(pod, inst, Some(&old_agent)).await? {
            Ok(p) => Ok(p),
            Err(_) => work.place(pod, inst, None).await?,
        }
    };
    let mut extra = Vec::new();
    if let Some(old) = rec.volume_id.take() {
        let reason = format!("{inst} replaced ({why})");
        extra.extend(crate::volumes::retain_op(server, &old, &reason).await?);
    }
    rec.incarnation += 1;
    rec.config = ids.get(&pod.name).cloned().unwrap_or_default();
    rec.launched_ms = server.now_ms();
    rec.replaced_ms = rec.launched_ms;
    rec.replaced_from = Some((old_agent.clone(), old_host));
    rec.down_since_ms = None;
    rec.unreachable_since_ms = None;
    let msg = match placed {
        Ok(placed) => {
            let agent = placed.0.clone();
            extra.extend(crate::launch::reserve(&work, &spec, pod, inst, &mut rec, placed).await?);
            let vols =
                rec.volume_id.as_deref().map(|v| format!(" with fresh volumes {v}")).unwrap_or_default();
            format!("replacing {inst} ({why}): incarnation {} on agent {agent}{vols} (was on {old_agent}; its volumes are retained)", rec.incarnation)
        }
        Err(reason) => {
            rec.agent = None;
            rec.ports = BTreeMap::new();
            rec.cpus_milli = 0;
            rec.memory_mb = 0;
            rec.disk_mb = 0;
            rec.pending_reason = Some(reason.clone());
            format!("replacing {inst} ({why}): not placed yet: {reason}")
        }
    };
    work.write_with(inst, &rec, rev, extra).await?;
    server.signal(crate::Signal::Replaced { service: svc.to_string() });
    server.event(Some(svc), EventKind::Replace, msg.clone()).await;
    server.inner.desired_gen.send_modify(|g| *g += 1);
    Ok(msg)
}

/// Operator restart in place: next incarnation on the same agent with the same volumes.
pub async fn restart_in_place(server: &Control, svc: &str, inst: &str) -> Result<String, String> {
    let work = DeployWork::new(server.clone(), svc.to_string());
    let _guard = server.inner.launch_lock.lock().await;
    let (mut rec, rev) = work.record(inst).await?.ok_or_else(|| format!("{inst} was never launched"))?;
    let agent = rec.agent.clone().ok_or_else(|| format!("{inst} is not placed"))?;
    rec.incarnation += 1;
    rec.launched_ms = server.now_ms();
    rec.replaced_from = None;
    rec.down_since_ms = None;
    rec.unreachable_since_ms = None;
    work.write(inst, &rec, rev).await?;
    let msg =
        format!("restart {inst} in place: incarnation {} on agent {agent}, same volumes", rec.incarnation);
    server.event(Some(svc), EventKind::Restart, msg.clone()).await;
    server.inner.desired_gen.send_modify(|g| *g += 1);
    Ok(msg)
}
