//! Recovery on the control plane: watches every launched pod instance, feeds the pure
//! FailureMonitor and replacement limits (`tend_scheduler::recovery`), and replaces failed
//! instances — a new incarnation, placed elsewhere when possible, with fresh volumes. Restarts in
//! place are the agents' own business; this loop only reports them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use tend_api::TaskState;
use tend_plan::Status;
use tend_scheduler::recovery::{
    decide, FailureMonitor, Health, InstanceView, RecoveryAction, ReplacementLimits,
};
use tend_spec::Goal;

use crate::deploy::{engine, pod_of, DeployWork};
use crate::records::InstanceRecord;
use crate::Server;

/// Added to `fence_after_seconds` before a fenced instance is replaced: covers the agent's
/// check interval, the report round trip and clock-rate differences.
pub const FENCE_MARGIN_MS: u64 = 2_000;

/// Least time between two replacement launches of one service.
pub const MIN_REPLACEMENT_INTERVAL_MS: u64 = 1_000;

/// What recovery shows for one instance.
#[derive(Clone, Debug, Default)]
pub struct RecoveryEntry {
    /// stopped | unreachable | replacing | waiting
    pub state: String,
    pub message: String,
}

/// Recovery's memory (rebuilt after a restart from the store and fresh reports).
#[derive(Default)]
pub struct RecoveryBoard {
    down_since: HashMap<(String, String), u64>,
    replacing: HashSet<(String, String)>,
    last_launch: HashMap<String, u64>,
    pub entries: BTreeMap<(String, String), RecoveryEntry>,
}

/// Runs recovery forever (after start-up reconciliation).
pub async fn run(server: Server) {
    server.wait_reconciled().await;
    loop {
        if let Err(e) = tick(&server).await {
            tracing::warn!(error = %e, "recovery tick failed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fmt_secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// One pass over every service.
pub async fn tick(server: &Server) -> anyhow::Result<()> {
    let now = server.now_ms();
    for svc in server.service_names() {
        let Some(rt) = server.service(&svc) else { continue };
        let (spec, deploy) = {
            let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            (rt.spec.clone(), rt.plans.get("deploy").cloned())
        };
        // A pod instance is touched by one plan at a time: skip those the deploy plan is working on.
        let mut busy = HashSet::new();
        if let Some(plan) = &deploy {
            let recs = engine(server, &svc).records(plan).await?;
            for (node, r) in plan.steps.iter().zip(recs) {
                if matches!(r.status(), Status::Prepared | Status::Starting | Status::Started) {
                    busy.insert(node.name.clone());
                }
            }
        }
        let monitor = match spec.recovery.failure_timeout_seconds {
            Some(s) => FailureMonitor::Timed { timeout_ms: s * 1000 },
            None => FailureMonitor::Never,
        };
        let limits = ReplacementLimits {
            max_concurrent: spec.recovery.max_concurrent_replacements,
            min_interval_ms: MIN_REPLACEMENT_INTERVAL_MS,
        };
        // Fence mode: replace an unreachable instance only once its agent has surely killed it.
        let fence_ms = match spec.recovery.on_partition {
            tend_spec::OnPartition::Fence => spec.recovery.fence_after_seconds * 1000 + FENCE_MARGIN_MS,
            tend_spec::OnPartition::Replace => 0,
        };
        let work = DeployWork { server: server.clone(), service: svc.clone() };
        let mut views = Vec::new();
        let mut notes: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (inst, rec) in server.instances(&svc).await? {
            if rec.incarnation == 0 {
                continue;
            }
            let key = (svc.clone(), inst.clone());
            let Some(agent) = rec.agent.clone() else {
                // A replacement still waiting for an agent that fits: try again.
                let _ = work.ensure_launched(&inst).await;
                let why = rec.pending_reason.clone().unwrap_or_else(|| "waiting for placement".into());
                notes.insert(inst.clone(), ("replacing".into(), format!("replacement pending: {why}")));
                views.push(InstanceView {
                    instance: inst,
                    health: Health::Up,
                    replacing: true,
                    busy: false,
                    min_unreachable_ms: 0,
                });
                continue;
            };
            let health = health_of(server, &spec, &svc, &inst, &rec, &agent);
            let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
            let health = match health {
                None => {
                    board.down_since.remove(&key);
                    if board.replacing.remove(&key) {
                        notes.insert(inst.clone(), ("recovered".into(), String::new()));
                    }
                    Health::Up
                }
                Some((unreachable, since)) => {
                    let since = *board.down_since.entry(key.clone()).or_insert(since);
                    if unreachable {
                        Health::Unreachable { since_ms: since }
                    } else {
                        Health::Stopped { since_ms: since }
                    }
                }
            };
            let replacing = board.replacing.contains(&key);
            drop(board);
            if let Health::Stopped { since_ms } | Health::Unreachable { since_ms } = &health {
                let what = if matches!(health, Health::Unreachable { .. }) {
                    format!("agent {agent} unreachable for {}", fmt_secs(now.saturating_sub(*since_ms)))
                } else {
                    format!(
                        "stopped for {}; agent {agent} restarting it in place",
                        fmt_secs(now.saturating_sub(*since_ms))
                    )
                };
                let next = match monitor.deadline_ms(&health) {
                    Some(d) if d > now => format!("; replaced in {} if still down", fmt_secs(d - now)),
                    Some(_) => "; failed".into(),
                    None => "; failure monitor: never replaced automatically".into(),
                };
                let state =
                    if matches!(health, Health::Unreachable { .. }) { "unreachable" } else { "stopped" };
                notes.insert(inst.clone(), (state.into(), format!("{what}{next}")));
            }
            views.push(InstanceView {
                instance: inst.clone(),
                health,
                replacing,
                busy: busy.contains(&inst),
                min_unreachable_ms: fence_ms,
            });
        }
        let last =
            server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner()).last_launch.get(&svc).copied();
        for action in decide(&views, &monitor, &limits, last, now) {
            match action {
                RecoveryAction::Replace { instance } => {
                    let why = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                    match replace(server, &svc, &instance, &format!("failure monitor: {why}")).await {
                        Ok(msg) => {
                            let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
                            board.replacing.insert((svc.clone(), instance.clone()));
                            board.down_since.remove(&(svc.clone(), instance.clone()));
                            board.last_launch.insert(svc.clone(), now);
                            notes.insert(instance, ("replacing".into(), msg));
                        }
                        Err(e) => {
                            tracing::warn!(service = %svc, %instance, error = %e, "replacement failed; will retry")
                        }
                    }
                }
                RecoveryAction::Wait { instance, reason } => {
                    let prev = notes.get(&instance).map(|n| n.1.clone()).unwrap_or_default();
                    notes
                        .insert(instance, ("waiting".into(), format!("{prev}; replacement waits: {reason}")));
                }
            }
        }
        // Replacements under way that are not up yet stay listed.
        let mut board = server.inner.recovery.lock().unwrap_or_else(|e| e.into_inner());
        for (s, inst) in board.replacing.clone() {
            if s == svc && !notes.contains_key(&inst) {
                notes.insert(inst, ("replacing".into(), "replacement launching".into()));
            }
        }
        board.entries.retain(|(s, _), _| s != &svc);
        for (inst, (state, message)) in notes {
            if state != "recovered" {
                board.entries.insert((svc.clone(), inst), RecoveryEntry { state, message });
            }
        }
    }
    Ok(())
}

/// None if the instance is up; Some((unreachable, since_ms)) if it is down.
fn health_of(
    server: &Server,
    spec: &tend_spec::ServiceSpec,
    svc: &str,
    inst: &str,
    rec: &InstanceRecord,
    agent: &str,
) -> Option<(bool, u64)> {
    let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    let a = agents.get(agent)?;
    if !server.agent_up(a) {
        return Some((true, a.last_seen_ms.unwrap_or(rec.launched_ms)));
    }
    let (pod, _) = pod_of(spec, inst)?;
    let down = a
        .tasks
        .iter()
        .filter(|t| t.service == svc && t.instance == inst && t.incarnation == rec.incarnation)
        .find(|t| {
            pod.tasks.iter().any(|p| p.name == t.task && p.goal == Goal::Running)
                && matches!(t.state, TaskState::Exited | TaskState::Killed | TaskState::Failed)
        })?;
    Some((false, down.since_ms))
}

/// Replaces an instance: releases its reservation, places it anew (another agent when one fits),
/// fresh volumes, next incarnation, all written before any agent hears of it.
pub async fn replace(server: &Server, svc: &str, inst: &str, why: &str) -> Result<String, String> {
    let work = DeployWork { server: server.clone(), service: svc.to_string() };
    let _guard = server.inner.launch_lock.lock().await;
    let (spec, ids) = work.spec().ok_or("service is gone")?;
    let (pod, _) = pod_of(&spec, inst).ok_or_else(|| format!("no pod for {inst}"))?;
    let (mut rec, rev) = work.record(inst).await?.ok_or_else(|| format!("{inst} was never launched"))?;
    let old_agent = rec.agent.clone().unwrap_or_default();
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
    let placed = match work.place(&spec, pod, inst, Some(&old_agent)).await? {
        Ok(p) => Ok(p),
        Err(_) => work.place(&spec, pod, inst, None).await?,
    };
    if !pod.volumes.is_empty() && !old_agent.is_empty() {
        // The old volumes are deleted only once their agent confirms it did.
        rec.release.push((old_agent.clone(), rec.volume_generation));
    }
    rec.incarnation += 1;
    rec.config = ids.get(&pod.name).cloned().unwrap_or_default();
    rec.launched_ms = server.now_ms();
    rec.replaced_from = Some((old_agent.clone(), old_host));
    rec.volume_generation = rec.incarnation;
    let msg = match placed {
        Ok((agent, ports, needs)) => {
            rec.agent = Some(agent.clone());
            rec.ports = ports;
            rec.cpus_milli = needs.cpus_milli;
            rec.memory_mb = needs.memory_mb;
            rec.disk_mb = needs.disk_mb;
            rec.pending_reason = None;
            format!("replacing {inst} ({why}): incarnation {} on agent {agent} with fresh volumes (was on {old_agent})", rec.incarnation)
        }
        Err(reason) => {
            rec.agent = None;
            rec.ports = BTreeMap::new();
            rec.cpus_milli = 0;
            rec.memory_mb = 0;
            rec.disk_mb = 0;
            rec.pending_reason = Some(reason.clone());
            format!("replacing {inst} ({why}): no agent fits yet: {reason}")
        }
    };
    work.write(inst, &rec, rev).await?;
    server.event(Some(svc), "replace", msg.clone()).await;
    server.inner.desired_gen.send_modify(|g| *g += 1);
    Ok(msg)
}

/// Operator restart in place: next incarnation on the same agent with the same volumes.
pub async fn restart_in_place(server: &Server, svc: &str, inst: &str) -> Result<String, String> {
    let work = DeployWork { server: server.clone(), service: svc.to_string() };
    let _guard = server.inner.launch_lock.lock().await;
    let (mut rec, rev) = work.record(inst).await?.ok_or_else(|| format!("{inst} was never launched"))?;
    let agent = rec.agent.clone().ok_or_else(|| format!("{inst} is not placed"))?;
    rec.incarnation += 1;
    rec.launched_ms = server.now_ms();
    rec.replaced_from = None;
    work.write(inst, &rec, rev).await?;
    let msg =
        format!("restart {inst} in place: incarnation {} on agent {agent}, same volumes", rec.incarnation);
    server.event(Some(svc), "restart", msg.clone()).await;
    server.inner.desired_gen.send_modify(|g| *g += 1);
    Ok(msg)
}
