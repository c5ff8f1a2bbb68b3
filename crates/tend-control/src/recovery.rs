//! Recovery on the control plane: watches every launched pod instance, judges it with the pure
//! rules of `crate::rules::recovery` (down-since from reports actually received, persisted;
//! failed updates blocked, never replaced) and the replacement limits of
//! `tend_scheduler::recovery`, and replaces failed instances — a new incarnation, placed
//! elsewhere when possible, with fresh volumes; the old volumes are retained, not deleted.
//! Restarts in place are the agents' own business; this loop only reports them.
//!
//! Level-triggered: a pass reads the store and the latest reports and acts; everything it
//! remembers between passes is in the store, so a restarted control plane decides the same.

use std::collections::BTreeMap;
use std::time::Duration;

use tend_api::{EventKind, StepStatus};
use tend_scheduler::recovery::{FailureMonitor, Health};
use tend_spec::ServiceSpec;

use crate::deploy::{pod_of, DeployWork};
use crate::Control;
use tend_model::{Instance, Ready, ReplacedFrom};

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
    let mut volumes = server.inner.volumes_gen.subscribe();
    // The volume lifecycle moves in days: its pass runs when a service, a volume or an instance
    // was deleted or decommissioned, else every 10 s (a launch or a replacement changes no
    // volume's standing: a replacement retains the old set in its own transaction).
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
                    _ = desired.changed() => false,
                    _ = volumes.changed() => true,
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
pub(crate) fn reset_after_ms(spec: &ServiceSpec) -> u64 {
    (spec.recovery.backoff.max_seconds * 1000).max(10_000)
}

/// Writes what the assessment says the store must hold (down-since, ready config), guarded by
/// the incarnation it judged.
pub(crate) async fn persist(
    server: &Control,
    svc: &str,
    inst: &str,
    rec: &Instance,
    (down, unreachable): (Option<u64>, Option<u64>),
    mark_ready: bool,
) {
    if down == rec.recovery.down_since_ms && unreachable == rec.recovery.unreachable_since_ms && !mark_ready {
        return;
    }
    let incarnation = rec.incarnation_number();
    let wrote = server
        .update_instance(svc, inst, |r| {
            if r.incarnation_number() != incarnation {
                return false;
            }
            r.recovery.down_since_ms = down;
            r.recovery.unreachable_since_ms = unreachable;
            if mark_ready {
                r.ready = Some(Ready { config: r.config().to_string(), incarnation });
            }
            true
        })
        .await;
    let was_replacement = rec.replaced_from().is_some();
    if wrote && mark_ready && was_replacement && rec.ready_incarnation() < incarnation {
        let msg = format!("replacement of {inst} is up (incarnation {incarnation})");
        server.event(Some(svc), EventKind::Replace, msg).await;
    }
}

/// The line recovery shows for a down instance.
pub(crate) fn describe(
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

pub use crate::recovery_pass::tick;

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
pub(crate) async fn replace_judged(
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
    if let Some(j) = judged.filter(|j| *j != rec.incarnation_number()) {
        let now = rec.incarnation_number();
        return Err(format!("{inst} changed since it was judged (incarnation {j}, now {now})"));
    }
    // Already released by a replacement that waits (fence mode, or no agent fits): placing now
    // would forget which agent must first confirm the old incarnation dead.
    let Some(old_agent) = rec.agent().map(str::to_string) else {
        let why = rec.pending_reason.clone().unwrap_or_else(|| "waiting for placement".into());
        return Err(format!("{inst} is already being replaced ({why})"));
    };
    let old_host = {
        let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.get(&old_agent).map(|a| a.agent.host.clone()).unwrap_or_default()
    };
    // Release the old reservation before placing, so that it does not count against the new one.
    let released = Instance { reservation: None, ..rec.clone() };
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
    if let Some(old) = rec.volumes.set.take().map(|v| v.to_string()) {
        let reason = format!("{inst} replaced ({why})");
        extra.extend(crate::volumes::retain_op(server, &old, &reason).await?);
    }
    let now = server.now_ms();
    let next = rec.next_incarnation(0, ids.get(&pod.name).cloned().unwrap_or_default(), now);
    next.replaced_from = Some(ReplacedFrom { agent: old_agent.clone(), host: old_host });
    rec.recovery.replaced_ms = now;
    let msg = match placed {
        Ok(placed) => {
            let agent = placed.0.clone();
            extra.extend(crate::launch::reserve(&work, &spec, pod, inst, &mut rec, placed).await?);
            let vols =
                rec.volumes.set.as_ref().map(|v| format!(" with fresh volumes {v}")).unwrap_or_default();
            format!("replacing {inst} ({why}): incarnation {} on agent {agent}{vols} (was on {old_agent}; its volumes are retained)", rec.incarnation_number())
        }
        Err(reason) => {
            rec.reservation = None;
            rec.pending_reason = Some(reason.clone());
            format!("replacing {inst} ({why}): not placed yet: {reason}")
        }
    };
    work.write_with(inst, &rec, rev, extra).await?;
    server.signal(crate::Signal::Replaced { service: svc.to_string() });
    server.event(Some(svc), EventKind::Replace, msg.clone()).await;
    server.instances_changed();
    Ok(msg)
}

/// Operator restart in place: next incarnation on the same agent with the same volumes.
pub async fn restart_in_place(server: &Control, svc: &str, inst: &str) -> Result<String, String> {
    let work = DeployWork::new(server.clone(), svc.to_string());
    let _guard = server.inner.launch_lock.lock().await;
    let (mut rec, rev) = work.record(inst).await?.ok_or_else(|| format!("{inst} was never launched"))?;
    let agent = rec.agent().map(str::to_string).ok_or_else(|| format!("{inst} is not placed"))?;
    let config = rec.config().to_string();
    let number = rec.next_incarnation(0, config, server.now_ms()).number;
    work.write(inst, &rec, rev).await?;
    let msg = format!("restart {inst} in place: incarnation {number} on agent {agent}, same volumes");
    server.event(Some(svc), EventKind::Restart, msg.clone()).await;
    server.instances_changed();
    Ok(msg)
}
