//! Volumes on the control plane: ids drawn from a store counter (never reused), records written
//! in the same transaction as the instance that owns them, the lifecycle reconciler (pure
//! decisions in `crate::rules::volumes`), release to agents and their confirmations.

use std::collections::BTreeSet;
use tend_model::hash::HashMap;

use crate::rules::volumes::{decide, refuse_delete, to_release, VolumeAction};
use tend_api::EventKind;
use tend_model::{Retention, VolumeId, VolumeState};
use tend_store::{Compare, Txn, TxnOp};

use crate::records::*;
use crate::Control;

/// Volume ids reserved from the counter at a time: one store write per block, not per volume.
pub const VOLUME_ID_BLOCK: u64 = 128;

/// Draws the next volume id. Ids come from blocks reserved by compare-and-swap on the store's
/// counter, so two callers (or two control planes) never get the same id; an id whose owner was
/// never written — the rest of a block when its control plane stops — is simply skipped, never
/// reused.
pub async fn next_id(server: &Control) -> Result<VolumeId, String> {
    let take = |ids: &mut std::ops::Range<u64>| ids.next().map(VolumeId::from_seq);
    if let Some(id) = take(&mut server.inner.volume_ids.lock().unwrap_or_else(|e| e.into_inner())) {
        return Ok(id);
    }
    let block = reserve_ids(server, VOLUME_ID_BLOCK).await?;
    let mut ids = server.inner.volume_ids.lock().unwrap_or_else(|e| e.into_inner());
    // Another caller may have refilled it meanwhile: then this block is skipped.
    if ids.is_empty() {
        *ids = block;
    }
    take(&mut ids).ok_or_else(|| "volume id counter exhausted".into())
}

/// Reserves `n` ids: the counter moves from its value c to c + n, and c+1 ..= c+n are ours.
async fn reserve_ids(server: &Control, n: u64) -> Result<std::ops::Range<u64>, String> {
    for _ in 0..64 {
        let cur = server.inner.store.get(VOLUME_SEQ_KEY).await.map_err(|e| e.to_string())?;
        let (c, cmp) = match &cur {
            Some(kv) => (
                std::str::from_utf8(&kv.value).ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0),
                Compare::mod_revision_eq(VOLUME_SEQ_KEY, kv.mod_revision),
            ),
            None => (0, Compare::absent(VOLUME_SEQ_KEY)),
        };
        let top = c.checked_add(n).ok_or("volume id counter exhausted")?;
        let r = server
            .inner
            .store
            .txn(Txn::new().when(cmp).then(TxnOp::put(VOLUME_SEQ_KEY, top.to_string())))
            .await
            .map_err(|e| e.to_string())?;
        if r.succeeded {
            return Ok(c + 1..top + 1);
        }
    }
    Err("volume id counter contended; will retry".into())
}

/// A fresh, active volume record for an instance placed on `agent`.
pub fn new_record(
    server: &Control,
    id: &VolumeId,
    service: &str,
    instance: &str,
    agent: &str,
    pod: &tend_spec::PodSpec,
    retain_seconds: Option<u64>,
) -> VolumeRecord {
    VolumeRecord {
        id: id.to_string(),
        service: service.into(),
        instance: instance.into(),
        agent: agent.into(),
        names: pod.volumes.iter().map(|v| (v.name.clone(), v.size_mb)).collect(),
        created_ms: server.now_ms(),
        retain_ms: retain_seconds.map(|s| s * 1000),
        state: VolumeRecordState::Active,
        since_ms: 0,
        until_ms: None,
        reason: String::new(),
    }
}

/// What relaunching an instance in place on a new config does to its volume set.
pub struct InPlace {
    /// The set's id (a pod that had no volumes gets its first set, on the instance's agent).
    pub volume_id: Option<VolumeId>,
    /// The record to write with the instance (None: unchanged).
    pub op: Option<TxnOp>,
    /// Disk the set takes on the agent: every volume it holds, including removed ones.
    pub disk_mb: u64,
}

/// An instance relaunched in place keeps its volume set, which follows the new config: an
/// added volume is listed (its agent creates it empty at launch), a grown one takes its new size,
/// and a removed or shrunk one keeps its entry and size (its directory and data stay in the set,
/// deleted only with the set once its retention ends or a user deletes it).
pub async fn in_place(
    server: &Control,
    (service, instance): (&str, &str),
    spec: &tend_spec::ServiceSpec,
    pod: &tend_spec::PodSpec,
    rec: &tend_model::Instance,
) -> Result<InPlace, String> {
    let wanted: u64 = pod.volumes.iter().map(|v| v.size_mb).sum();
    let unchanged = InPlace { volume_id: rec.volumes.set.clone(), op: None, disk_mb: wanted };
    if pod.volumes.is_empty() && rec.volumes.set.is_none() {
        return Ok(unchanged);
    }
    let agent = rec.agent().unwrap_or_default().to_string();
    let Some(id) = &rec.volumes.set else {
        if rec.volumes.legacy_generation > 0 {
            return Ok(unchanged); // The old layout: its agent creates added volumes there.
        }
        let id = next_id(server).await?;
        let retain = spec.recovery.retain_volumes_seconds;
        let vrec = new_record(server, &id, service, instance, &agent, pod, retain);
        return Ok(InPlace { volume_id: Some(id), op: Some(put_op(&vrec)?), disk_mb: wanted });
    };
    let Some(kv) = server.inner.store.get(&volume_key(id.as_str())).await.map_err(|e| e.to_string())? else {
        return Ok(unchanged);
    };
    let mut vrec: VolumeRecord = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    let mut names = vrec.names.clone();
    for v in &pod.volumes {
        match names.iter_mut().find(|(n, _)| *n == v.name) {
            Some((_, size)) => *size = (*size).max(v.size_mb),
            None => names.push((v.name.clone(), v.size_mb)),
        }
    }
    let disk_mb = names.iter().map(|(_, s)| s).sum();
    let op = if names != vrec.names {
        vrec.names = names;
        Some(put_op(&vrec)?)
    } else {
        None
    };
    Ok(InPlace { volume_id: Some(id.clone()), op, disk_mb })
}

/// The put of a volume record inside an instance's transaction.
pub fn put_op(rec: &VolumeRecord) -> Result<TxnOp, String> {
    Ok(TxnOp::put(volume_key(&rec.id), serde_json::to_vec(rec).map_err(|e| e.to_string())?))
}

/// Retains a volume now (in the caller's transaction): `reason` says why no instance uses it.
pub async fn retain_op(server: &Control, id: &str, reason: &str) -> Result<Option<TxnOp>, String> {
    let Some(kv) = server.inner.store.get(&volume_key(id)).await.map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut rec: VolumeRecord = serde_json::from_slice(&kv.value).map_err(|e| e.to_string())?;
    if rec.state != VolumeRecordState::Active {
        return Ok(None);
    }
    let now = server.now_ms();
    let retention = retention_of(server, &rec);
    rec.retain_ms = match retention {
        Retention::For(ms) => Some(ms),
        Retention::Forever => None,
    };
    rec.set_state(&VolumeState::Retained {
        since_ms: now,
        until_ms: retention.until(now),
        reason: reason.into(),
    });
    Ok(Some(put_op(&rec)?))
}

/// How long a volume is kept once unused: the longer of what it was created with and what its
/// service's spec says now (raising `retain_volumes_seconds` protects existing volumes too).
fn retention_of(server: &Control, rec: &VolumeRecord) -> Retention {
    let created = rec.retain_ms.map_or(Retention::Forever, Retention::For);
    let current = server.service(&rec.service).map(|rt| {
        let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        rt.spec.recovery.retain_volumes_seconds.map_or(Retention::Forever, |s| Retention::For(s * 1000))
    });
    match (created, current) {
        (Retention::Forever, _) | (_, Some(Retention::Forever)) => Retention::Forever,
        (Retention::For(a), Some(Retention::For(b))) => Retention::For(a.max(b)),
        (r, None) => r,
    }
}

/// Every volume record (unreadable ones are skipped with a warning: never deleted).
pub async fn all(server: &Control) -> anyhow::Result<Vec<(VolumeRecord, i64)>> {
    server.inner.state.caught_up(&*server.inner.store).await?;
    Ok(server.inner.state.volumes())
}

/// The volume ids instance records reference, across every service (their owners). Fails while
/// an instance record cannot be read: it may own a volume.
pub async fn in_use(server: &Control) -> anyhow::Result<BTreeSet<VolumeId>> {
    server.inner.state.caught_up(&*server.inner.store).await?;
    let ids = server.inner.state.volumes_in_use().map_err(|e| anyhow::anyhow!(e))?;
    Ok(ids.iter().filter_map(|id| VolumeId::parse(id)).collect())
}

/// One pass of the volume lifecycle: retain unused volumes, mark those whose retention ended.
pub async fn reconcile(server: &Control) -> anyhow::Result<()> {
    let records = all(server).await?;
    let used = in_use(server).await?;
    let models: Vec<_> = records.iter().filter_map(|(r, _)| r.to_model()).collect();
    let by_id: HashMap<&str, usize> =
        records.iter().enumerate().map(|(i, (r, _))| (r.id.as_str(), i)).collect();
    let record = |id: &VolumeId| by_id.get(id.as_str()).map(|i| &records[*i]);
    let now = server.now_ms();
    for action in decide(&models, &used, now) {
        let (id, state, msg) = match action {
            VolumeAction::Retain { id, until_ms, reason } => {
                let msg = format!("volume {id} retained: {reason}");
                // The longer retention of creation time and the current spec.
                let until_ms = record(&id).map_or(until_ms, |(r, _)| retention_of(server, r).until(now));
                (id, VolumeState::Retained { since_ms: now, until_ms, reason }, msg)
            }
            VolumeAction::Delete { id, reason } => {
                let msg = format!("volume {id} to be deleted: {reason}");
                (id, VolumeState::Deleting { since_ms: now, reason }, msg)
            }
        };
        let Some((rec, rev)) = record(&id) else { continue };
        let mut rec = rec.clone();
        rec.set_state(&state);
        if write(server, &rec, *rev).await? {
            server.event(Some(&rec.service), EventKind::Volume, msg).await;
            server.desired_changed();
        }
    }
    Ok(())
}

async fn write(server: &Control, rec: &VolumeRecord, rev: i64) -> anyhow::Result<bool> {
    let key = volume_key(&rec.id);
    let r = server
        .inner
        .store
        .txn(
            Txn::new()
                .when(Compare::mod_revision_eq(&key, rev))
                .then(TxnOp::put(&key, serde_json::to_vec(rec)?)),
        )
        .await?;
    Ok(r.succeeded)
}

/// The volumes `agent` must delete now (never one an instance uses).
pub async fn releases_for(server: &Control, agent: &str) -> anyhow::Result<Vec<tend_api::VolumeRelease>> {
    server.inner.state.caught_up(&*server.inner.store).await?;
    let records = server.inner.state.deleting_on(agent);
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let used = in_use(server).await?;
    let models: Vec<_> = records.iter().filter_map(|r| r.to_model()).collect();
    Ok(to_release(&models, &used, agent)
        .into_iter()
        .map(|id| tend_api::VolumeRelease { id: id.to_string() })
        .collect())
}

/// An agent confirmed it deleted a volume it was told to: the record goes.
pub async fn on_released(server: &Control, agent: &str, id: &str) {
    let key = volume_key(id);
    let Ok(Some(kv)) = server.inner.store.get(&key).await else { return };
    let Ok(rec) = serde_json::from_slice::<VolumeRecord>(&kv.value) else { return };
    if rec.agent != agent || rec.state != VolumeRecordState::Deleting {
        return;
    }
    let txn = Txn::new().when(Compare::mod_revision_eq(&key, kv.mod_revision)).then(TxnOp::delete(&key));
    if server.inner.store.txn(txn).await.is_ok_and(|r| r.succeeded) {
        let msg = format!(
            "agent {agent} deleted volume {id} of {}/{} ({}; {} MiB)",
            rec.service,
            rec.instance,
            rec.reason,
            rec.names.iter().map(|(_, s)| s).sum::<u64>()
        );
        server.event(Some(&rec.service), EventKind::Volume, msg).await;
        server.desired_changed();
    }
}

/// A user's request to delete a volume: refused while an instance uses it.
pub async fn request_delete(server: &Control, id: &str) -> Result<VolumeRecord, (u16, String)> {
    let records = all(server).await.map_err(|e| (500, e.to_string()))?;
    let Some((rec, rev)) = records.into_iter().find(|(r, _)| r.id == id) else {
        return Err((404, format!("no volume `{id}`")));
    };
    let used = in_use(server).await.map_err(|e| (500, e.to_string()))?;
    let model = rec.to_model().ok_or((500, format!("volume record {id} is unreadable")))?;
    if let Some(why) = refuse_delete(&model, &used) {
        return Err((409, why));
    }
    if rec.state == VolumeRecordState::Deleting {
        return Ok(rec);
    }
    let mut rec = rec;
    rec.set_state(&VolumeState::Deleting { since_ms: server.now_ms(), reason: "deleted by a user".into() });
    match write(server, &rec, rev).await {
        Ok(true) => {
            server
                .event(
                    Some(&rec.service),
                    EventKind::Volume,
                    format!("volume {id} to be deleted: requested by a user"),
                )
                .await;
            server.desired_changed();
            Ok(rec)
        }
        Ok(false) => Err((409, format!("volume {id} changed concurrently; try again"))),
        Err(e) => Err((500, e.to_string())),
    }
}

/// The wire form of a volume record.
pub fn info(r: &VolumeRecord) -> tend_api::VolumeInfo {
    tend_api::VolumeInfo {
        id: r.id.clone(),
        service: r.service.clone(),
        instance: r.instance.clone(),
        agent: r.agent.clone(),
        names: r.names.iter().map(|(n, _)| n.clone()).collect(),
        size_mb: r.names.iter().map(|(_, s)| s).sum(),
        created_ms: r.created_ms,
        state: match r.state {
            VolumeRecordState::Active => tend_api::VolumeLife::Active,
            VolumeRecordState::Retained => tend_api::VolumeLife::Retained,
            VolumeRecordState::Deleting => tend_api::VolumeLife::Deleting,
        },
        since_ms: (r.state != VolumeRecordState::Active).then_some(r.since_ms),
        until_ms: r.until_ms,
        reason: (!r.reason.is_empty()).then(|| r.reason.clone()),
    }
}
