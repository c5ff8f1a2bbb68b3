//! One recovery pass: gather the facts of the instances that may be judged differently since
//! the last pass, judge them with the pure rules, let the failure monitor decide over every
//! instance that is down or being replaced, and act.
//!
//! Incremental: an instance is looked at again when its record changed, its agent's report
//! about it changed, its agent came back or was lost, a moment its judgement depends on came,
//! it is down, replacing or waiting, or a step may hold it. The rest keep what the last pass
//! concluded (`recovery_cache`), so a pass after one agent's report costs what that report
//! changed, not the cluster's size. The first pass of a control plane, a resync of the cluster
//! state, a change of a service's target configs and a periodic safety net look at everything.

use std::collections::{BTreeMap, BTreeSet};
use tend_model::hash::HashSet;

use tend_api::{StepStatus, TaskState, TaskStatus};
use tend_plan::Status;
use tend_scheduler::recovery::{
    decide, FailureMonitor, Health, InstanceView, RecoveryAction, ReplacementLimits,
};
use tend_spec::{Goal, PodSpec, ServiceSpec};

use crate::deploy::{engine, judge, pod_of, DeployWork, MIN_RUNNING_MS};
use crate::recovery::{describe, persist, replace_judged, MIN_REPLACEMENT_INTERVAL_MS};
use crate::recovery_cache::{Entry, RecoveryCache, ServiceCache};
use crate::rules::recovery::{assess, replacing, InstanceFacts, Observed, FENCE_MARGIN_MS, READY_STABLE_MS};
use crate::Control;
use tend_model::Instance;

/// One pass over every service. Returns the earliest moment a decision could change with time
/// alone (a failure or fence deadline, the rate limit, an agent about to count as lost, a task
/// about to pass a running or readiness rule).
pub async fn tick(server: &Control) -> anyhow::Result<Option<u64>> {
    let mut cache = server.inner.recovery_cache.lock().await;
    server.inner.state.caught_up(&*server.inner.store).await?;
    let now = server.now_ms();
    let changed = server.inner.state.take_changed();
    let reported = std::mem::take(&mut *server.inner.reported.lock().unwrap_or_else(|e| e.into_inner()));
    let full = changed.all || cache.full_due(now);
    let moved = agents_moved(server, &mut cache, &reported, full, now);
    let mut next = cache.next_lost();
    let names = server.service_names();
    cache.services.retain(|s, _| names.contains(s));
    // A deleted service's lines go with it.
    server
        .inner
        .recovery
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entries
        .retain(|(s, _), _| names.contains(s));
    for svc in names {
        let Some(rt) = server.service(&svc) else { continue };
        let (spec, deploy, ids) = {
            let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            (rt.spec.clone(), rt.plans.get(&rt.active_plan).cloned(), rt.identities.clone())
        };
        let sc = cache.services.entry(svc.clone()).or_default();
        let everything = full || sc.targets != *ids;
        let candidates = if everything {
            *sc = ServiceCache { targets: (*ids).clone(), ..Default::default() };
            server.inner.state.instances(&svc).into_iter().map(|(i, _)| i).collect()
        } else {
            let mut c: BTreeSet<String> = sc.due_by(now).cloned().collect();
            c.extend(sc.entries.keys().cloned());
            c.extend(sc.off_target.iter().cloned());
            c.extend(changed.instances.get(&svc).into_iter().flatten().cloned());
            c.extend(reported.instances.get(&svc).into_iter().flatten().cloned());
            for agent in &moved {
                let on = server.inner.state.of_agent(agent);
                c.extend(on.into_iter().filter(|(s, _, _)| *s == svc).map(|(_, i, _)| i));
            }
            c
        };
        if everything {
            let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
            board.entries.retain(|(s, _), _| *s != svc);
        }
        // One service's trouble (an unreadable record) does not stop recovery of the others.
        let pass = ServicePass { server, svc: &svc, spec: &spec, targets: &ids, now };
        match pass.run(sc, deploy.as_deref(), candidates).await {
            Ok(()) => {
                next = earliest(next, sc.next_due());
                let rate = sc.last_launch.map(|t| t + MIN_REPLACEMENT_INTERVAL_MS).filter(|t| *t > now);
                next = earliest(next, rate);
            }
            Err(e) => tracing::warn!(service = %svc, error = %e, "recovery pass of a service failed"),
        }
    }
    if full {
        cache.last_full_ms = Some(now);
    }
    Ok(next)
}

/// Agents whose liveness changed since the last pass (every instance on them is judged again):
/// those that reported after being silent, and those whose lost deadline has passed.
fn agents_moved(
    server: &Control,
    cache: &mut RecoveryCache,
    reported: &crate::recovery_cache::Reported,
    full: bool,
    now: u64,
) -> HashSet<String> {
    let lost_after = server.inner.cfg.agent_lost_after_ms;
    let mut moved: HashSet<String> = reported.revived.iter().cloned().collect();
    let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    let heard: Vec<&String> = if full { agents.keys().collect() } else { reported.agents.iter().collect() };
    for id in heard {
        let Some(a) = agents.get(id).filter(|a| server.agent_up(a)) else { continue };
        if !cache.up.contains(id) {
            moved.insert(id.clone());
        }
        cache.heard(id, a.last_seen_ms.unwrap_or(now).saturating_add(lost_after + 1));
    }
    for id in cache.newly_lost(now) {
        // Reported again in time: its deadline moved (a report raced the pass).
        if let Some(a) = agents.get(&id).filter(|a| server.agent_up(a)) {
            cache.heard(&id, a.last_seen_ms.unwrap_or(now).saturating_add(lost_after + 1));
            continue;
        }
        moved.insert(id);
    }
    moved
}

pub(crate) fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, y) => x.or(y),
    }
}

/// What recovery knows of one instance's agent: whether it is up, when it was last heard, and
/// the tasks it reports of the instance (every incarnation).
struct Reported {
    up: bool,
    last_seen_ms: Option<u64>,
    tasks: Vec<TaskStatus>,
}

impl Reported {
    fn of(server: &Control, agent: &str, svc: &str, inst: &str) -> Option<Reported> {
        let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        let a = agents.get(agent)?;
        let up = server.agent_up(a);
        let tasks = if up { a.instance_tasks(svc, inst).cloned().collect() } else { Vec::new() };
        Some(Reported { up, last_seen_ms: a.last_seen_ms, tasks })
    }
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

struct ServicePass<'a> {
    server: &'a Control,
    svc: &'a str,
    spec: &'a ServiceSpec,
    targets: &'a BTreeMap<String, String>,
    now: u64,
}

impl ServicePass<'_> {
    /// Judges `candidates` again, then decides over every instance down or being replaced.
    async fn run(
        &self,
        sc: &mut ServiceCache,
        deploy: Option<&tend_plan::Plan>,
        candidates: BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let (server, svc, now) = (self.server, self.svc, self.now);
        let records: Vec<(String, std::sync::Arc<Instance>)> = candidates
            .iter()
            .filter_map(|i| Some((i.clone(), server.inner.state.instance(svc, i)?)))
            .collect();
        let off_target: BTreeSet<String> = records
            .iter()
            .filter(|(_, r)| self.targets.get(&r.id.pod).map(String::as_str) != Some(r.config()))
            .map(|(i, _)| i.clone())
            .collect();
        let busy = busy_steps(server, svc, deploy, &off_target).await?;
        let policy = Policy::of(self.spec);
        // The incarnation each judgement was about: a replacement acts only if it is still current.
        let mut judged: BTreeMap<String, u64> = BTreeMap::new();
        for inst in &candidates {
            sc.forget(inst);
        }
        for (inst, rec) in records {
            if off_target.contains(&inst) {
                sc.off_target.insert(inst.clone());
            }
            let Some((entry, due)) = self.judge(&inst, &rec, &policy, busy.contains(&inst)).await else {
                continue;
            };
            judged.insert(inst.clone(), rec.incarnation_number());
            if rec.recovery.replaced_ms > 0 {
                sc.last_launch = Some(
                    sc.last_launch.map_or(rec.recovery.replaced_ms, |l| l.max(rec.recovery.replaced_ms)),
                );
            }
            sc.set_due(&inst, due);
            if entry.view.is_some() || entry.note.is_some() {
                sc.entries.insert(inst, entry);
            }
        }
        let last_launch = sc.last_launch;
        // Decide over every instance down or being replaced, then act.
        let views: Vec<InstanceView> = sc.entries.values().filter_map(|e| e.view.clone()).collect();
        let mut notes: BTreeMap<String, (StepStatus, String)> =
            sc.entries.iter().filter_map(|(i, e)| Some((i.clone(), e.note.clone()?))).collect();
        for action in decide(&views, &policy.monitor, &policy.limits, last_launch, now) {
            match action {
                RecoveryAction::Replace { instance } => {
                    let why = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                    let judged = judged.get(&instance).copied();
                    let why = format!("failure monitor: {why}");
                    match replace_judged(server, svc, &instance, &why, judged).await {
                        Ok(msg) => {
                            sc.last_launch = Some(now);
                            notes.insert(instance, (StepStatus::Replacing, msg));
                        }
                        Err(e) => {
                            tracing::warn!(service = %svc, %instance, error = %e, "replacement failed; will retry")
                        }
                    }
                }
                RecoveryAction::Wait { instance, reason } => {
                    let prev = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                    notes.insert(
                        instance,
                        (StepStatus::Waiting, format!("{prev}; replacement waits: {reason}")),
                    );
                }
            }
        }
        let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
        for inst in &candidates {
            board.entries.remove(&(svc.to_string(), inst.clone()));
        }
        for (inst, (state, message)) in notes {
            board.entries.insert((svc.to_string(), inst), crate::recovery::RecoveryEntry { state, message });
        }
        Ok(())
    }

    /// Judges one instance: what the failure monitor and the board must know of it, and when
    /// time alone could change that. None: nothing to judge (never launched, pod gone).
    async fn judge(
        &self,
        inst: &str,
        rec: &Instance,
        policy: &Policy,
        busy: bool,
    ) -> Option<(Entry, Option<u64>)> {
        let (server, svc, spec, now) = (self.server, self.svc, self.spec, self.now);
        let incarnation = rec.incarnation.as_ref()?;
        let is_replacing =
            replacing(incarnation.replaced_from.is_some(), incarnation.number, rec.ready_incarnation());
        let Some(agent) = rec.agent() else {
            // A replacement still waiting for an agent that fits: try again (each second).
            let _ = DeployWork::new(server.clone(), svc.to_string()).ensure_launched(inst).await;
            let why = rec.pending_reason.clone().unwrap_or_else(|| "waiting for placement".into());
            let view = InstanceView {
                instance: inst.to_string(),
                health: Health::Up,
                replacing: true,
                busy: false,
                min_unreachable_ms: 0,
            };
            let note = (StepStatus::Replacing, format!("replacement pending: {why}"));
            return Some((Entry { view: Some(view), note: Some(note) }, Some(now + 1_000)));
        };
        let (pod, _) = pod_of(spec, inst)?;
        // A step holds an instance only until it has launched the target config there; a step
        // that merely waits on the agent does not hide the instance from recovery.
        let held = busy && self.targets.get(&pod.name).map(String::as_str) != Some(rec.config());
        let reported = Reported::of(server, agent, svc, inst);
        let tasks: Vec<TaskStatus> = reported
            .as_ref()
            .map(|r| r.tasks.iter().filter(|t| t.incarnation == incarnation.number).cloned().collect())
            .unwrap_or_default();
        let observed = match &reported {
            None => Observed::AgentSilent { last_seen_ms: None },
            Some(r) if !r.up => Observed::AgentSilent { last_seen_ms: r.last_seen_ms },
            Some(_) => observe(spec, pod, &tasks, now),
        };
        let up_since = reported.as_ref().filter(|r| r.up).and_then(|_| up_since(pod, &tasks, now));
        let facts = InstanceFacts {
            incarnation: incarnation.number,
            config: incarnation.config.clone(),
            ready_config: rec.ready.as_ref().map(|r| r.config.clone()),
            ready_incarnation: rec.ready_incarnation(),
            down_since_ms: rec.recovery.down_since_ms,
            unreachable_since_ms: rec.recovery.unreachable_since_ms,
            observed,
            up_since_ms: up_since,
        };
        let a = assess(&facts, now);
        persist(server, svc, inst, rec, (a.down_since_ms, a.unreachable_since_ms), a.mark_ready).await;
        let mut note = describe(&a.health, agent, &policy.monitor, a.blocked, now);
        if note.is_none() && is_replacing {
            note = Some((StepStatus::Replacing, "replacement launching".into()));
        }
        let mut due = time_due(spec, &tasks, up_since, now);
        if let Health::Stopped { since_ms } | Health::Unreachable { since_ms } = a.health {
            due = earliest(due, policy.monitor.deadline_ms(&a.health).filter(|d| *d > now));
            let fenced = since_ms + policy.fence_ms;
            due = earliest(due, (fenced > now).then_some(fenced));
        }
        // A replacement is under way while it starts; once it is down itself (its new agent
        // lost, its tasks stopped, or its config failed) it is judged like any other instance
        // and must not hold the replacement limit forever.
        let plain_up = a.health == Health::Up && !is_replacing && !held && a.blocked.is_none();
        let view = (!plain_up).then(|| InstanceView {
            instance: inst.to_string(),
            replacing: is_replacing && a.health == Health::Up,
            health: a.health,
            // A blocked instance is not the failure monitor's to replace.
            busy: held || a.blocked.is_some(),
            min_unreachable_ms: policy.fence_ms,
        });
        Some((Entry { view, note }, due))
    }
}

/// The next moment an instance's judgement could change with time alone, from its target
/// incarnation's reported tasks: a task passing the running rule, leaving a crash loop's reset
/// window, or having stayed up long enough for its config to count as ready.
fn time_due(spec: &ServiceSpec, tasks: &[TaskStatus], up_since: Option<u64>, now: u64) -> Option<u64> {
    let reset = crate::recovery::reset_after_ms(spec);
    let mut at: Vec<u64> = Vec::new();
    for t in tasks.iter().filter(|t| t.state == TaskState::Running) {
        at.push(t.since_ms.saturating_add(MIN_RUNNING_MS));
        if t.crash_loop >= 2 {
            at.push(t.since_ms.saturating_add(reset));
        }
    }
    at.extend(up_since.map(|s| s.saturating_add(READY_STABLE_MS)));
    at.into_iter().filter(|t| *t > now).min()
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
    let mut busy = HashSet::default();
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

/// What the reports say of an instance's target incarnation (`tasks`: its reported tasks).
fn observe(spec: &ServiceSpec, pod: &PodSpec, tasks: &[TaskStatus], now: u64) -> Observed {
    let mut down: Option<u64> = None;
    for t in pod.tasks.iter().filter(|t| t.goal == Goal::Running) {
        let Some(s) = tasks.iter().find(|s| s.task == t.name) else { continue };
        let stopped = matches!(s.state, TaskState::Exited | TaskState::Killed | TaskState::Failed);
        // Caught running inside a crash loop: still down until it runs past the reset window.
        let looping = s.state == TaskState::Running
            && s.crash_loop >= 2
            && now.saturating_sub(s.since_ms) < crate::recovery::reset_after_ms(spec);
        if stopped || looping {
            down = Some(down.map_or(s.since_ms, |d| d.min(s.since_ms)));
        }
    }
    if let Some(since_ms) = down {
        return Observed::TaskDown { since_ms };
    }
    if judge(pod, tasks, now) == Ok(true) {
        Observed::Up
    } else {
        Observed::Starting
    }
}

/// Since when every long-running task of the target incarnation has been up without a restart
/// (the latest start among them); None when one is not running.
fn up_since(pod: &PodSpec, tasks: &[TaskStatus], now: u64) -> Option<u64> {
    let mut latest = 0;
    for t in pod.tasks.iter().filter(|t| t.goal == Goal::Running) {
        let s = tasks.iter().find(|s| s.task == t.name)?;
        if s.state != TaskState::Running {
            return None;
        }
        latest = latest.max(s.since_ms.min(now));
    }
    Some(latest)
}
