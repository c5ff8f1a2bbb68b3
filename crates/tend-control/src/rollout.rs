//! Rollouts: which generation of a service is being rolled out, by which plan (`deploy` for a
//! service never fully deployed, `update` after that, `rollback` to undo a failed update), and
//! the last generation fully deployed — the rollback target. The record is written with the
//! spec it rolls out (intent), and by the service's driver as the plan starts and ends.

use serde::{Deserialize, Serialize};
use tend_api::EventKind;
use tend_plan::Plan;
use tend_spec::ServiceSpec;
use tend_store::{Compare, Txn, TxnOp};

use crate::deploy::{engine, DeployWork};
use crate::records::*;
use crate::Control;

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    #[default]
    InProgress,
    /// Every step of its plan is complete: this generation is fully deployed.
    Complete,
    /// A step failed and no rollback was made (auto_rollback off, nothing deployed before, or a
    /// rollback itself failed): the driver retries it; a new spec replaces the target.
    Failed,
}

/// A service's rollout (storage record, `services/<name>/rollout`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The generation being rolled out (the service record's).
    pub generation: u64,
    /// `deploy`, `update` or `rollback`.
    pub plan: String,
    pub state: RolloutState,
    /// The last generation fully deployed (None: never).
    #[serde(default)]
    pub deployed_generation: Option<u64>,
    /// Set on a rollback: the generation whose failed update it undoes.
    #[serde(default)]
    pub rollback_from: Option<u64>,
    /// Set on a rollback: the generation whose spec it restores.
    #[serde(default)]
    pub rollback_to: Option<u64>,
    /// Why it failed, or what it rolls back from.
    #[serde(default)]
    pub message: Option<String>,
    /// When the driver started its plan (None: not yet; canary pauses are set then).
    #[serde(default)]
    pub started_ms: Option<u64>,
    #[serde(default)]
    pub ended_ms: Option<u64>,
    /// Instances this generation no longer has (a lower count, a pod removed), highest index
    /// first: decommissioned once its plan is complete.
    #[serde(default)]
    pub decommission: Vec<String>,
}

pub fn rollout_key(service: &str) -> String {
    format!("services/{service}/rollout")
}

/// The spec of the last generation fully deployed (a copy of its service record).
pub fn deployed_key(service: &str) -> String {
    format!("services/{service}/deployed")
}

/// The rollout a newly accepted generation starts, given the previous rollout.
pub fn next(
    prev: Option<&RolloutRecord>,
    generation: u64,
    rollback: Option<(u64, u64, String)>,
) -> RolloutRecord {
    let deployed_generation = prev.and_then(|p| p.deployed_generation);
    let plan = match (&rollback, deployed_generation) {
        (Some(_), _) => "rollback",
        (None, Some(_)) => "update",
        (None, None) => "deploy",
    };
    let (rollback_from, rollback_to, message) = match rollback {
        Some((from, to, why)) => (Some(from), Some(to), Some(why)),
        None => (None, None, None),
    };
    RolloutRecord {
        generation,
        plan: plan.into(),
        state: RolloutState::InProgress,
        deployed_generation,
        rollback_from,
        rollback_to,
        message,
        started_ms: None,
        ended_ms: None,
        decommission: Vec::new(),
    }
}

/// The service's rollout; a service stored before rollouts existed reads as a deploy of its
/// current generation.
pub async fn read(s: &Control, service: &str) -> anyhow::Result<(RolloutRecord, Option<i64>)> {
    if let Some(kv) = s.inner.store.get(&rollout_key(service)).await? {
        return Ok((serde_json::from_slice(&kv.value)?, Some(kv.mod_revision)));
    }
    let generation =
        s.service(service).map_or(0, |rt| rt.lock().unwrap_or_else(|e| e.into_inner()).record.generation);
    Ok((next(None, generation, None), None))
}

/// Writes `rec` if the rollout record is still at `rev` (None: absent) and the service still at
/// `rec.generation`; `extra` operations go in the same transaction. False: something changed
/// (a new generation was accepted): the driver starts over.
pub async fn write(
    s: &Control,
    service: &str,
    rec: &RolloutRecord,
    rev: Option<i64>,
    extra: Vec<TxnOp>,
) -> anyhow::Result<bool> {
    let key = rollout_key(service);
    let cmp = match rev {
        Some(r) => Compare::mod_revision_eq(&key, r),
        None => Compare::absent(&key),
    };
    let mut txn = Txn::new().when(cmp).then(TxnOp::put(&key, serde_json::to_vec(rec)?));
    for op in extra {
        txn = txn.then(op);
    }
    Ok(s.inner.store.txn(txn).await?.succeeded)
}

/// The service record of the last generation fully deployed.
pub async fn deployed_spec(s: &Control, service: &str) -> anyhow::Result<Option<ServiceRecord>> {
    match s.inner.store.get(&deployed_key(service)).await? {
        Some(kv) => Ok(Some(serde_json::from_slice(&kv.value)?)),
        None => Ok(None),
    }
}

/// First wait before a failed step is tried again (doubling up to `STEP_RETRY_MAX_MS`).
pub const STEP_RETRY_MS: u64 = 30_000;
pub const STEP_RETRY_MAX_MS: u64 = 300_000;

/// What one run of the rollout's plan came to.
enum Outcome {
    /// Every step complete.
    Complete,
    /// Nothing failed, but steps are held (an interrupt, a canary pause).
    Held,
    /// These steps failed (step id, error).
    Failed(Vec<(String, String)>),
}

/// Drives a service's rollout whenever it is triggered (spec change, operator action, start):
/// runs the rollout's plan; a complete plan makes its generation the deployed one; a failed
/// update rolls back to the deployed generation (auto_rollback) or is retried after a backoff
/// (level-triggered: a step that failed because its agent was lost completes once recovery
/// replaced the instance; a bad config fails again, and says so, without relaunching anything).
pub async fn drive(server: Control, service: String) {
    server.wait_reconciled().await;
    let mut retry_ms = STEP_RETRY_MS;
    loop {
        let Some(rt) = server.service(&service) else { return };
        let (plans, trigger, record, spec) = {
            let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            (rt.plans.clone(), rt.trigger.clone(), rt.record.clone(), rt.spec.clone())
        };
        let notified = trigger.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (rollout, rev) = match read(&server, &service).await {
            Ok(r) if r.0.generation == record.generation => r,
            Ok(_) => {
                // The spec record and its rollout are written together: a mismatch is a new
                // generation being installed right now.
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(%service, error = %e, "rollout unreadable");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(plan) = plans.get(&rollout.plan).cloned() else {
            tracing::error!(%service, plan = %rollout.plan, "rollout names a plan the spec does not have");
            notified.await;
            continue;
        };
        rt.lock().unwrap_or_else(|e| e.into_inner()).active_plan = rollout.plan.clone();
        if rollout.started_ms.is_none() {
            if let Err(e) = start(&server, &service, &plan, rollout, rev).await {
                tracing::warn!(%service, error = %e, "rollout could not start");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            continue;
        }
        let outcome = match run(&server, &service, &plan, &rollout).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(%service, error = %e, "plan could not run");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let failed = match outcome {
            Outcome::Complete if rollout.state == RolloutState::Complete => {
                retry_ms = STEP_RETRY_MS;
                notified.await;
                continue;
            }
            Outcome::Complete => {
                match crate::decommission::run(&server, &service, &rollout.decommission).await {
                    Ok(()) => {
                        let _ = finish(&server, &service, &record, rollout, rev).await;
                        retry_ms = STEP_RETRY_MS;
                        notified.await;
                        continue;
                    }
                    Err((instance, e)) => vec![(format!("decommission/{instance}"), e)],
                }
            }
            Outcome::Held => {
                notified.await;
                continue;
            }
            Outcome::Failed(f) => f,
        };
        if rollout.state == RolloutState::InProgress
            && fail(&server, &service, &spec, &record, rollout, rev, &failed).await
        {
            continue; // the rollback is the service's new generation
        }
        if tokio::time::timeout(std::time::Duration::from_millis(retry_ms), notified).await.is_ok() {
            retry_ms = STEP_RETRY_MS;
            continue;
        }
        retry_ms = (retry_ms * 2).min(STEP_RETRY_MAX_MS);
        for (step, _) in failed {
            let target = tend_plan::Target::Step(step.clone());
            if engine(&server, &service).restart(&plan, &target).await.is_ok() {
                let msg = format!("retrying {} step {step}", plan.def.name);
                server.event(Some(&service), EventKind::Plan, msg).await;
            }
        }
    }
}

/// Starts a rollout: the canary pause is set before any step runs, then the start is recorded.
async fn start(
    s: &Control,
    service: &str,
    plan: &Plan,
    mut r: RolloutRecord,
    rev: Option<i64>,
) -> anyhow::Result<()> {
    let hold = if r.plan == "update" { crate::plans::after_canary(plan) } else { Vec::new() };
    // The plan's steps show this generation's progress from here on, not an earlier run's.
    engine(s, service).reset(plan).await?;
    for phase in &hold {
        engine(s, service).interrupt(plan, Some(phase)).await?;
    }
    r.started_ms = Some(s.now_ms());
    if write(s, service, &r, rev, Vec::new()).await? {
        let pause = if hold.is_empty() {
            String::new()
        } else {
            format!("; pauses after the canary until `tend plan continue {service} update`")
        };
        let msg = format!("generation {}: {} plan started{pause}", r.generation, r.plan);
        s.event(Some(service), EventKind::Plan, msg).await;
    }
    Ok(())
}

async fn run(s: &Control, service: &str, plan: &Plan, r: &RolloutRecord) -> anyhow::Result<Outcome> {
    let work = if r.plan == "deploy" {
        DeployWork::new(s.clone(), service)
    } else {
        DeployWork::rolling(s.clone(), service, r.started_ms.unwrap_or(0))
    };
    let steps = StepEvents { s: s.clone(), service: service.to_string(), plan: r.plan.clone() };
    let sum = engine(s, service).run(plan, &work, &steps).await?;
    for _ in &sum.failed {
        s.signal(crate::Signal::StepFailed { service: service.into(), plan: r.plan.clone() });
    }
    if sum.complete() {
        let msg = format!(
            "{} plan complete: {} step(s) did work, {} already done",
            r.plan,
            sum.applied.len(),
            sum.skipped.len()
        );
        s.event(Some(service), EventKind::Plan, msg).await;
        return Ok(Outcome::Complete);
    }
    for (step, e) in &sum.failed {
        let msg = format!("generation {}: {} step {step} failed: {e}", r.generation, r.plan);
        s.event(Some(service), EventKind::Plan, msg).await;
    }
    Ok(if sum.failed.is_empty() { Outcome::Held } else { Outcome::Failed(sum.failed) })
}

/// Tells of each step the engine completes as it does (an event and a signal): a plan's run
/// lasts until its last step is done.
struct StepEvents {
    s: Control,
    service: String,
    plan: String,
}

impl tend_plan::Observer for StepEvents {
    fn on_event(&self, e: &tend_plan::Event) {
        let tend_plan::Event::Completed { step, elapsed_ms } = e else { return };
        let seconds = *elapsed_ms as f64 / 1000.0;
        let (service, plan) = (self.service.clone(), self.plan.clone());
        self.s.signal(crate::Signal::StepCompleted { service: service.clone(), plan: plan.clone(), seconds });
        let (s, msg) = (self.s.clone(), format!("{plan} step {step} complete after {seconds:.1} s"));
        tokio::spawn(async move { s.event(Some(&service), EventKind::Plan, msg).await });
    }
}

/// Records a complete rollout: its generation is now the deployed one (and the rollback target).
async fn finish(
    s: &Control,
    service: &str,
    record: &ServiceRecord,
    mut r: RolloutRecord,
    rev: Option<i64>,
) -> anyhow::Result<()> {
    r.state = RolloutState::Complete;
    r.deployed_generation = Some(r.generation);
    r.ended_ms = Some(s.now_ms());
    let deployed = TxnOp::put(deployed_key(service), serde_json::to_vec(record)?);
    if write(s, service, &r, rev, vec![deployed]).await? {
        let msg = match (r.rollback_from, r.rollback_to) {
            (Some(from), Some(to)) => format!(
                "generation {}: rolled back from generation {from} to {to}'s spec: {}",
                r.generation,
                r.message.as_deref().unwrap_or("")
            ),
            _ => format!("generation {} deployed ({} plan complete)", r.generation, r.plan),
        };
        s.event(Some(service), EventKind::Plan, msg).await;
    }
    Ok(())
}

/// Handles the first failure of a rollout: an update whose failed pod has auto_rollback and a
/// deployed generation to return to is rolled back (true); anything else is marked failed and
/// retried.
async fn fail(
    s: &Control,
    service: &str,
    spec: &ServiceSpec,
    record: &ServiceRecord,
    mut r: RolloutRecord,
    rev: Option<i64>,
    failed: &[(String, String)],
) -> bool {
    let (step, error) = failed.first().cloned().unwrap_or_default();
    let instance = step.rsplit('/').next().unwrap_or(&step).to_string();
    let auto = crate::deploy::pod_of(spec, &instance).is_some_and(|(p, _)| p.update.auto_rollback);
    let why = format!("step {instance}: {error}");
    let mut not_rolled = String::new();
    if r.plan == "update" && auto {
        if let Some(to) = r.deployed_generation {
            match rollback(s, service, spec, record, to, &why).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(%service, error = %e, "no rollback");
                    not_rolled = format!(" (not rolled back: {e})");
                }
            }
        }
    }
    r.state = RolloutState::Failed;
    r.message = Some(format!("{why}{not_rolled}"));
    let _ = write(s, service, &r, rev, Vec::new()).await;
    false
}

/// Accepts the deployed generation's spec again as a new generation, rolled out by the
/// `rollback` plan (by this driver: the service is reloaded in place).
async fn rollback(
    s: &Control,
    service: &str,
    current: &ServiceSpec,
    record: &ServiceRecord,
    to: u64,
    why: &str,
) -> anyhow::Result<()> {
    let old =
        deployed_spec(s, service).await?.ok_or_else(|| anyhow::anyhow!("no deployed spec on record"))?;
    let spec = tend_spec::load_service(&old.file, &old.spec).map_err(|r| anyhow::anyhow!("{r}"))?;
    // A rollback restores configs; it does not take instances away (scale-down is a plan of its
    // own, with decommission hooks).
    let shape = |s: &ServiceSpec| s.pods.iter().map(|p| (p.name.clone(), p.count)).collect::<Vec<_>>();
    if shape(&spec) != shape(current) {
        anyhow::bail!("generation {} also changes pods or counts; fix the spec instead", record.generation);
    }
    let from = record.generation;
    let msg = format!("generation {from} failed ({why}): rolling back to generation {to}'s spec");
    s.event(Some(service), EventKind::Plan, msg).await;
    let sub = crate::services::Submission {
        spec: spec.clone(),
        text: old.spec,
        file: old.file,
        artifacts: old.artifacts,
        expected_generation: Some(from),
        rollback: Some((from, to, why.to_string())),
        allow_data_loss: true,
    };
    let _serial = s.inner.spec_lock.lock().await;
    let (rec, _) =
        crate::services::accept(s, sub).await.map_err(|(_, code, e)| anyhow::anyhow!("{code}: {e}"))?;
    // This driver carries on with the new generation (no new driver: it is this one).
    s.reload(rec, spec).await
}
