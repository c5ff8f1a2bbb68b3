//! Decommissioning: instances a new generation no longer has (a lower count, a pod removed) go,
//! highest index first, once the generation's plan is complete. Each runs its pod's
//! `on_decommission` command in its sandbox (which MUST exit 0, or it is kept and retried), then
//! its record goes in one transaction with its volumes handed to retention — never deleted —
//! and its incarnation floor kept; its agent stops it when it next hears what is desired.
//! The list is in the rollout record (intent): a restarted control plane finishes it.

use tend_api::EventKind;
use tend_store::{Compare, Txn, TxnOp};

use crate::records::*;
use crate::Control;

/// How long an `on_decommission` command may run.
pub const HOOK_TIMEOUT_SECONDS: u64 = 120;

/// The instances `spec` no longer has, highest index first.
pub fn beyond(spec: &tend_spec::ServiceSpec, instances: &[(String, tend_model::Instance)]) -> Vec<String> {
    let mut out: Vec<(u32, String)> = instances
        .iter()
        .filter(|(_, r)| spec.pod(&r.id.pod).is_none_or(|p| r.id.index >= p.count))
        .map(|(i, r)| (r.id.index, i.clone()))
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    out.into_iter().map(|(_, i)| i).collect()
}

/// Decommissions `instances` in order. Err: the instance that could not go yet, and why.
pub async fn run(s: &Control, service: &str, instances: &[String]) -> Result<(), (String, String)> {
    for inst in instances {
        one(s, service, inst).await.map_err(|e| (inst.clone(), e))?;
    }
    Ok(())
}

async fn one(s: &Control, service: &str, inst: &str) -> Result<(), String> {
    let key = instance_key(service, inst);
    let Some(kv) = s.inner.store.get(&key).await.map_err(|e| e.to_string())? else { return Ok(()) };
    let rec = decode_instance(&kv.value)?;
    if let (Some(agent), true) = (rec.agent(), rec.incarnation.is_some()) {
        if let Some(cmd) = hook(s, service, &rec) {
            let run = crate::gates::Command {
                job: "decommission",
                cmd: &cmd,
                timeout_seconds: HOOK_TIMEOUT_SECONDS,
            };
            crate::gates::run_on(s, service, inst, agent, run)
                .await
                .map_err(|e| format!("on_decommission {e}; {inst} is kept and tried again"))?;
        }
    }
    let _launches = s.inner.launch_lock.lock().await;
    let mut txn =
        Txn::new().when(Compare::mod_revision_eq(&key, kv.mod_revision)).then(TxnOp::Delete { key });
    let floor = crate::services::incarnation_floor(s, service, inst).await?;
    let incarnation = rec.incarnation_number();
    if incarnation > floor {
        txn = txn.then(TxnOp::put(incarnation_floor_key(service, inst), incarnation.to_string()));
    }
    let mut retained = String::new();
    if let Some(id) = &rec.volumes.set {
        let reason = format!("{inst} decommissioned");
        if let Some(op) = crate::volumes::retain_op(s, id.as_str(), &reason).await? {
            txn = txn.then(op);
            retained = format!("; volumes {id} retained");
        }
    }
    if !s.inner.store.txn(txn).await.map_err(|e| e.to_string())?.succeeded {
        return Err(format!("{inst} changed while being decommissioned; tried again"));
    }
    s.desired_changed();
    let msg = format!("decommissioned {inst} (incarnation {incarnation}){retained}");
    s.event(Some(service), EventKind::Service, msg).await;
    Ok(())
}

/// The `on_decommission` command of the config the instance runs (its pod may be gone from the
/// current spec).
fn hook(s: &Control, service: &str, rec: &tend_model::Instance) -> Option<String> {
    let rt = s.service(service)?;
    let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
    let from_config = rt.configs.get(rec.config()).and_then(|c| c.pod.on_decommission.clone());
    from_config.or_else(|| rt.spec.pod(&rec.id.pod).and_then(|p| p.on_decommission.clone()))
}
