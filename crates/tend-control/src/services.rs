//! Service lifecycle on the control plane: accepting a spec (validated completely before
//! anything is written, serialised, compare-and-swap on the stored generation) and deleting a
//! service (tasks stopped and confirmed by their agents, volumes retained, never deleted).

use std::time::Duration;

use tend_store::{Compare, Txn, TxnOp};

use crate::records::*;
use crate::Control;
use tend_api::EventKind;

/// Why a spec change was refused (HTTP status, stable code, message).
pub type Refusal = (u16, &'static str, String);

/// A spec to accept: already parsed and checked by the caller (artifacts uploaded).
pub struct Submission {
    pub spec: tend_spec::ServiceSpec,
    pub text: String,
    pub file: String,
    pub artifacts: std::collections::BTreeMap<String, String>,
    pub expected_generation: Option<u64>,
    /// Set when the control plane itself restores an earlier generation's spec after a failed
    /// update: (generation rolled back from, generation restored, why).
    pub rollback: Option<(u64, u64, String)>,
    /// Accept shrinking or removing a deployed pod's volumes (see `dryrun::volume_changes`).
    pub allow_data_loss: bool,
}

/// Accepts a spec as the service's next generation. Spec changes are serialised, and the store
/// write is a compare-and-swap on the record read: every acknowledged generation is the one that
/// runs and the one a restarted control plane loads.
pub async fn submit(s: &Control, sub: Submission) -> Result<(String, u64, bool), Refusal> {
    let _serial = s.inner.spec_lock.lock().await;
    let spec = sub.spec.clone();
    let (rec, existed) = accept(s, sub).await?;
    let (name, generation) = (rec.name.clone(), rec.generation);
    s.install(rec, spec, true).await.map_err(|e| (500, "internal", format!("{e:#}")))?;
    Ok((name, generation, existed))
}

/// Validates and writes a new generation (with its rollout) without installing it. The caller
/// holds `spec_lock`.
pub(crate) async fn accept(s: &Control, sub: Submission) -> Result<(ServiceRecord, bool), Refusal> {
    let name = sub.spec.name.clone();
    // Everything that can fail is checked before the write.
    crate::compile_plans(&sub.spec).map_err(|e| (422, "invalid_spec", format!("plans: {e}")))?;
    let key = service_key(&name);
    let current = s.inner.store.get(&key).await.map_err(|e| (503, "store", e.to_string()))?;
    let old: Option<ServiceRecord> = match &current {
        Some(kv) => Some(
            serde_json::from_slice(&kv.value)
                .map_err(|e| (500, "internal", format!("stored record of `{name}`: {e}")))?,
        ),
        None => None,
    };
    let current_gen = old.as_ref().map_or(0, |r| r.generation);
    if let Some(want) = sub.expected_generation {
        if want != current_gen {
            return Err((
                409,
                "stale_generation",
                format!(
                    "service `{name}` is at generation {current_gen}, not {want}: reload it and try again"
                ),
            ));
        }
    }
    if let Some(old) = &old {
        if let Ok(old_spec) = tend_spec::load_service(&old.file, &old.spec) {
            // Volumes of a deployed pod may be added or grown; shrinking or removing one needs
            // `allow_data_loss` (a rollback restores what was deployed: never refused).
            let allow = sub.allow_data_loss || sub.rollback.is_some();
            for p in &sub.spec.pods {
                if let Some(op) = old_spec.pod(&p.name) {
                    crate::dryrun::volume_changes(op, p, allow).map_err(|why| (409, "unsafe_change", why))?;
                }
            }
        }
    }
    let generation = current_gen + 1;
    let rec = ServiceRecord {
        name: name.clone(),
        spec: sub.text,
        file: sub.file,
        generation,
        artifacts: sub.artifacts,
    };
    let v = serde_json::to_vec(&rec).map_err(|e| (500, "internal", e.to_string()))?;
    let cmp = match &current {
        Some(kv) => Compare::mod_revision_eq(&key, kv.mod_revision),
        None => Compare::absent(&key),
    };
    // The rollout of this generation is written with it (intent): nobody following it can see
    // an earlier generation's plan as its own.
    let prev = match s.inner.store.get(&crate::rollout::rollout_key(&name)).await {
        Ok(kv) => kv.and_then(|kv| serde_json::from_slice::<crate::rollout::RolloutRecord>(&kv.value).ok()),
        Err(e) => return Err((503, "store", e.to_string())),
    };
    let mut rollout = crate::rollout::next(prev.as_ref(), generation, sub.rollback);
    rollout.decommission = crate::decommission::beyond(
        &sub.spec,
        &s.instances(&name).await.map_err(|e| (503, "store", e.to_string()))?,
    );
    let rv = serde_json::to_vec(&rollout).map_err(|e| (500, "internal", e.to_string()))?;
    let mut txn = Txn::new()
        .when(cmp)
        .then(TxnOp::put(&key, v.clone()))
        .then(TxnOp::put(crate::rollout::rollout_key(&name), rv))
        .then(TxnOp::put(crate::configs::generation_key(&name, generation), v));
    // Generations kept for the configs instances still run (see `configs`).
    if let Some(old) = &old {
        let ov = serde_json::to_vec(old).map_err(|e| (500, "internal", e.to_string()))?;
        txn = txn.then(TxnOp::put(crate::configs::generation_key(&name, old.generation), ov));
        if let Some(rt) = s.service(&name) {
            let configs = rt.lock().unwrap_or_else(|e| e.into_inner()).configs.clone();
            let in_use = s.instances(&name).await.map_err(|e| (503, "store", e.to_string()))?;
            let in_use = in_use.into_iter().map(|(_, r)| r.config().to_string()).collect();
            let keep =
                [generation, old.generation, prev.as_ref().and_then(|p| p.deployed_generation).unwrap_or(0)];
            for op in configs.prune(&name, &in_use, &keep) {
                txn = txn.then(op);
            }
        }
    }
    let r = s.inner.store.txn(txn).await.map_err(|e| (503, "store", e.to_string()))?;
    if !r.succeeded {
        return Err((
            409,
            "stale_generation",
            format!("service `{name}` changed concurrently; reload it and try again"),
        ));
    }
    s.inner.broken.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
    Ok((rec, old.is_some()))
}

/// What a delete did.
pub struct Deleted {
    pub stopped: usize,
    pub retained_volumes: Vec<String>,
    /// Agents that had not confirmed the stop within the wait (they stop the tasks when they
    /// next hear from the control plane).
    pub unconfirmed: Vec<String>,
}

/// Deletes a service: its records go and its volumes are retained in one transaction; then
/// waits (up to `wait`) until every agent reports its tasks stopped.
pub async fn delete(s: &Control, name: &str, wait: Duration) -> Result<Deleted, Refusal> {
    let _serial = s.inner.spec_lock.lock().await;
    // No launch decided before the delete may be written after it.
    let _launches = s.inner.launch_lock.lock().await;
    let instances = s.instances(name).await.map_err(|e| (500, "internal", e.to_string()))?;
    let live = instances.iter().filter(|(_, r)| r.incarnation.is_some()).count();
    let mut txn = Txn::new()
        .then(TxnOp::DeletePrefix { prefix: format!("services/{name}/") })
        .then(TxnOp::DeletePrefix { prefix: crate::jobs::pace_prefix(name) });
    let mut retained = Vec::new();
    for (inst, rec) in &instances {
        let floor = incarnation_floor(s, name, inst).await.map_err(|e| (503, "store", e))?;
        if rec.incarnation_number() > floor {
            txn =
                txn.then(TxnOp::put(incarnation_floor_key(name, inst), rec.incarnation_number().to_string()));
        }
        if let Some(id) = &rec.volumes.set {
            let reason = format!("service `{name}` deleted ({inst})");
            if let Some(op) =
                crate::volumes::retain_op(s, id.as_str(), &reason).await.map_err(|e| (500, "internal", e))?
            {
                txn = txn.then(op);
                retained.push(id.to_string());
            }
        }
    }
    if let Some(rt) = s.service(name) {
        if let Some(d) = rt.lock().unwrap_or_else(|e| e.into_inner()).driver.take() {
            d.abort();
        }
    }
    s.inner.store.txn(txn).await.map_err(|e| (503, "store", e.to_string()))?;
    s.inner.services.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    crate::jobs::forget_service(s, name);
    s.inner.broken.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    s.desired_changed();
    let unconfirmed = wait_stopped(s, name, wait).await;
    let vols = if retained.is_empty() {
        String::new()
    } else {
        format!("; volumes retained: {}", retained.join(", "))
    };
    let msg = if unconfirmed.is_empty() {
        format!("service `{name}` deleted: {live} instance(s) stopped, confirmed by their agents{vols}")
    } else {
        format!(
            "service `{name}` deleted: {live} instance(s); agents {} have not confirmed the stop yet{vols}",
            unconfirmed.join(", ")
        )
    };
    s.event(Some(name), EventKind::Service, msg).await;
    Ok(Deleted { stopped: live, retained_volumes: retained, unconfirmed })
}

/// The highest incarnation a deleted service's instance of this name reached (0: none).
pub async fn incarnation_floor(s: &Control, service: &str, instance: &str) -> Result<u64, String> {
    let kv = s.inner.store.get(&incarnation_floor_key(service, instance)).await.map_err(|e| e.to_string())?;
    Ok(kv.and_then(|kv| String::from_utf8_lossy(&kv.value).trim().parse().ok()).unwrap_or(0))
}

/// Agents still reporting a live task of `service` after `wait` (empty: all confirmed).
async fn wait_stopped(s: &Control, service: &str, wait: Duration) -> Vec<String> {
    let mut status = s.inner.status_gen.subscribe();
    let _ = tokio::time::timeout(wait, async {
        while !still_running(s, service).is_empty() {
            if status.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    // Agents that are down cannot confirm: named too (they stop the tasks on return).
    let pending = still_running(s, service);
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    let down = agents.values().filter(|a| !s.agent_up(a)).filter(|a| {
        a.tasks.all().iter().any(|t| t.service == service && t.state == tend_api::TaskState::Running)
    });
    pending.into_iter().chain(down.map(|a| format!("{} (down)", a.agent.id))).collect()
}

/// Agents that are up and report a live task of `service`.
fn still_running(s: &Control, service: &str) -> Vec<String> {
    let agents = s.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    agents
        .values()
        .filter(|a| s.agent_up(a))
        .filter(|a| {
            a.tasks.all().iter().any(|t| {
                t.service == service
                    && matches!(t.state, tend_api::TaskState::Running | tend_api::TaskState::Starting)
            })
        })
        .map(|a| a.agent.id.clone())
        .collect()
}
