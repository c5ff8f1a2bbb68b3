//! Launching incarnations, in batches. Deploy steps that start together (a parallel phase of
//! 500 instances) each ask for a launch; whoever holds the launch lock takes every queued request,
//! places them all against one snapshot of agents and reservations, writes every intent (record,
//! volume set) concurrently so the store commits them together, then wakes the agents once.
//! Each launch is still its own compare-and-swap transaction written before any agent hears of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use tend_model::hash::{HashMap, HashSet};

use tend_scheduler::{AgentSnapshot, Cluster, Decision, Request, Resources, Rules};
use tend_spec::{PodSpec, ServiceSpec};
use tend_store::TxnOp;

use crate::deploy::{pod_of, DeployWork};
use crate::Control;
use tend_api::EventKind;
use tend_model::{Instance, Reservation};

/// What an instance of `pod` reserves.
pub fn needs_of(pod: &PodSpec) -> Resources {
    Resources {
        cpus_milli: pod.tasks.iter().map(|t| (t.cpus * 1000.0).round() as u64).sum(),
        memory_mb: pod.tasks.iter().map(|t| t.memory_mb).sum(),
        disk_mb: pod.volumes.iter().map(|v| v.size_mb).sum(),
    }
}

/// An instance relaunched in place on a new config keeps its agent; its reservation follows the
/// new config's needs (`disk_mb`: what its volume set takes) when the agent has room for the
/// difference. Err: why it must wait.
fn re_reserve(server: &Control, rec: &mut Instance, pod: &PodSpec, disk_mb: u64) -> Result<(), String> {
    let needs = Resources { disk_mb, ..needs_of(pod) };
    let old = rec.reserved();
    let agent = rec.agent().unwrap_or_default().to_string();
    let more = needs.minus(&old);
    if more != Resources::default() {
        let capacity = {
            let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
            agents.get(&agent).map(|a| a.agent.capacity).ok_or_else(|| format!("agent {agent} is unknown"))?
        };
        let reserved = server.inner.state.usage_of(&agent).reserved;
        let free = capacity.minus(&reserved);
        if !more.fits_in(&free) {
            return Err(format!(
                "the new config needs {} more cpu (milli), {} MB more memory and {} MB more disk on agent {agent}, which has {}, {} MB and {} MB free",
                more.cpus_milli, more.memory_mb, more.disk_mb, free.cpus_milli, free.memory_mb, free.disk_mb
            ));
        }
    }
    let ports = re_port(server, &agent, rec, pod)?;
    let resources = Resources { disk_mb: needs.disk_mb.max(old.disk_mb), ..needs };
    rec.reservation = Some(Reservation { agent, resources, ports });
    rec.volumes.names = pod.volumes.iter().map(|v| v.name.clone()).collect();
    Ok(())
}

/// The instance's named ports under the new config: those it had are kept, new ones are taken
/// on its agent (a fixed number if free, else the lowest free in the agent's range), gone ones
/// are released. Err: a port that cannot be had there.
fn re_port(
    server: &Control,
    agent: &str,
    rec: &Instance,
    pod: &PodSpec,
) -> Result<BTreeMap<String, u16>, String> {
    let none = BTreeMap::new();
    let have = rec.ports().unwrap_or(&none);
    let wanted: Vec<(String, u16)> =
        pod.tasks.iter().flat_map(|t| t.ports.iter().map(|(n, p)| (n.clone(), *p))).collect();
    if wanted.iter().all(|(n, p)| have.get(n).is_some_and(|h| *p == 0 || h == p)) {
        return Ok(wanted.iter().filter_map(|(n, _)| have.get(n).map(|p| (n.clone(), *p))).collect());
    }
    let (lo, hi) = {
        let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        agents.get(agent).map(|a| a.agent.ports).ok_or_else(|| format!("agent {agent} is unknown"))?
    };
    let mut used: HashSet<u16> = server.inner.state.usage_of(agent).ports.into_keys().collect();
    // This instance's own ports are free for it.
    for p in have.values() {
        used.remove(p);
    }
    let mut out = BTreeMap::new();
    for (name, fixed) in &wanted {
        let port = match (have.get(name), *fixed) {
            (Some(have), 0) => *have,
            (Some(have), f) if *have == f => f,
            (_, 0) => (lo..=hi)
                .find(|p| !used.contains(p) && !out.values().any(|v| v == p))
                .ok_or_else(|| format!("no free port on agent {agent} for the new port `{name}`"))?,
            (_, f) if used.contains(&f) => {
                return Err(format!("port {f} (`{name}`) is taken on agent {agent}"))
            }
            (_, f) => f,
        };
        out.insert(name.clone(), port);
    }
    Ok(out)
}

/// Launch requests waiting for the lock, and results of requests another holder processed.
/// Each request has its own id, so a result is only ever taken by the waiter that asked (a
/// cancelled waiter's result is never handed to a later request for the same instance).
#[derive(Default)]
pub struct LaunchQueue {
    next: std::sync::atomic::AtomicU64,
    pending: std::sync::Mutex<Vec<(u64, (String, String))>>,
    done: std::sync::Mutex<HashMap<u64, Result<(), String>>>,
}

/// A placement: agent, named ports, reserved resources.
pub type Placed = (String, BTreeMap<String, u16>, Resources);

/// One snapshot of the cluster for placement: live agents (minus `avoid`), every reservation.
pub struct Snapshot {
    cluster: Cluster,
    /// Where existing instances per placement group and agent are read, once per group on first
    /// use (a batch places a few groups; the cluster may have hundreds).
    state: Arc<crate::state::ClusterState>,
    counted: HashSet<String>,
}

impl Snapshot {
    pub async fn take(server: &Control, avoid: Option<&str>) -> Result<Snapshot, String> {
        let mut agents: BTreeMap<String, AgentSnapshot> = {
            let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
            agents
                .values()
                .map(|a| {
                    let r = &a.agent;
                    let snap = AgentSnapshot {
                        id: r.id.clone(),
                        attributes: r.attributes.clone(),
                        capacity: r.capacity,
                        reserved: Resources::default(),
                        port_range: r.ports,
                        used_ports: Default::default(),
                        schedulable: server.agent_up(a) && Some(r.id.as_str()) != avoid,
                    };
                    (r.id.clone(), snap)
                })
                .collect()
        };
        let state = &server.inner.state;
        state.caught_up(&*server.inner.store).await.map_err(|e| e.to_string())?;
        // The index keeps these sums as records change: a snapshot costs the agents, not every
        // instance placed.
        let usage = state.usage();
        for (agent, u) in usage {
            if let Some(a) = agents.get_mut(&agent) {
                a.reserved = u.reserved;
                a.used_ports.extend(u.ports.into_keys());
            }
        }
        Ok(Snapshot {
            cluster: Cluster::new(agents.into_values().collect()),
            state: state.clone(),
            counted: HashSet::default(),
        })
    }

    /// Places one instance of `pod` (and reserves it in this snapshot); Err: why it is pending.
    pub fn place(&mut self, service: &str, pod: &PodSpec, instance: &str) -> Result<Placed, String> {
        let group = format!("{service}/{}", pod.name);
        if self.counted.insert(group.clone()) {
            self.cluster.set_rules(&group, Rules::from_spec(&pod.placement));
            for (a, n) in self.state.group_usage(&group) {
                for _ in 0..n {
                    self.cluster.count_existing(&group, &a);
                }
            }
        }
        let needs = needs_of(pod);
        let ports: Vec<(String, u16)> =
            pod.tasks.iter().flat_map(|t| t.ports.iter().map(|(n, p)| (n.clone(), *p))).collect();
        let req = Request {
            instance: instance.to_string(),
            group,
            needs,
            fixed_ports: ports.iter().filter(|(_, p)| *p != 0).map(|(_, p)| *p).collect(),
            dynamic_ports: ports.iter().filter(|(_, p)| *p == 0).count(),
        };
        match self.cluster.place(&req) {
            Decision::Placed { agent, ports: got, .. } => {
                // Fixed ports come first in `got`, then dynamic ones in declaration order.
                let mut fixed = got.iter().take(req.fixed_ports.len());
                let mut dynamic = got.iter().skip(req.fixed_ports.len());
                let mut named = BTreeMap::new();
                for (n, p) in &ports {
                    let v = if *p != 0 { fixed.next() } else { dynamic.next() };
                    named.insert(n.clone(), v.copied().unwrap_or(*p));
                }
                Ok((agent, named, needs))
            }
            Decision::Pending { reason, .. } => Err(reason),
        }
    }
}

/// Places (if needed) and launches the target incarnation of `instance`, writing the intent
/// first; batched with every other launch queued meanwhile.
pub async fn ensure_launched(server: &Control, service: &str, instance: &str) -> Result<(), String> {
    let key = (service.to_string(), instance.to_string());
    let q = &server.inner.launches;
    let id = q.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    q.pending.lock().unwrap_or_else(|e| e.into_inner()).push((id, key.clone()));
    let _guard = server.inner.launch_lock.lock().await;
    if let Some(r) = q.done.lock().unwrap_or_else(|e| e.into_inner()).remove(&id) {
        return r; // Launched by the holder before us, in its batch.
    }
    let waiting: Vec<(u64, (String, String))> =
        std::mem::take(&mut *q.pending.lock().unwrap_or_else(|e| e.into_inner()));
    let mut seen = HashSet::default();
    let batch: Vec<(String, String)> = waiting
        .iter()
        .map(|(_, k)| k.clone())
        .chain(std::iter::once(key.clone()))
        .filter(|k| seen.insert(k.clone()))
        .collect();
    let results: HashMap<(String, String), Result<(), String>> =
        launch_batch(server, &batch).await.into_iter().collect();
    let mut done = q.done.lock().unwrap_or_else(|e| e.into_inner());
    for (other, k) in waiting.into_iter().filter(|(other, _)| *other != id) {
        done.insert(other, results.get(&k).cloned().unwrap_or(Ok(())));
    }
    results.get(&key).cloned().unwrap_or(Ok(()))
}

/// What a batch decided for one instance.
enum Plan {
    Nothing,
    Pending { rec: Instance, rev: i64, reason: String },
    Launch { rec: Instance, rev: i64, extra: Vec<TxnOp> },
}

/// Decides a batch against one snapshot, then writes every intent concurrently.
async fn launch_batch(
    server: &Control,
    batch: &[(String, String)],
) -> Vec<((String, String), Result<(), String>)> {
    let mut snapshot = None;
    let mut plans = Vec::new();
    for (svc, inst) in batch {
        let work = DeployWork::new(server.clone(), svc.clone());
        let plan = decide(&work, inst, &mut snapshot).await;
        plans.push(((svc.clone(), inst.clone()), work, plan));
    }
    let writes = plans.into_iter().map(|(key, work, plan)| async move {
        let r = match plan {
            Ok(Plan::Nothing) => Ok(false),
            Ok(Plan::Pending { rec, rev, reason }) => {
                let r = work.write(&key.1, &rec, rev).await;
                if r.is_ok() {
                    let msg = format!("{} cannot be placed: {reason}", key.1);
                    work.server.event(Some(&key.0), EventKind::Pending, msg).await;
                }
                // Agents hear of the new revision (a fence wait needs the old agent to have
                // obeyed a desired state at least as new as this record).
                r.map(|_| true)
            }
            Ok(Plan::Launch { rec, rev, extra }) => {
                // Intent before action: the store holds "incarnation N of P on A" before any agent sees it.
                let r = work.write_with(&key.1, &rec, rev, extra).await;
                if r.is_ok() {
                    let agent = rec.agent().unwrap_or_default();
                    let msg = format!(
                        "launch incarnation {} of {} on agent {agent}",
                        rec.incarnation_number(),
                        key.1
                    );
                    work.server.event(Some(&key.0), EventKind::Launch, msg).await;
                }
                r.map(|_| true)
            }
            Err(e) => Err(e),
        };
        (key, r)
    });
    let results: Vec<((String, String), Result<bool, String>)> = futures::future::join_all(writes).await;
    if results.iter().any(|(_, r)| matches!(r, Ok(true))) {
        server.instances_changed();
    }
    results.into_iter().map(|(k, r)| (k, r.map(|_| ()))).collect()
}

/// Decides one instance: nothing to do, pending (with the reason), or the next incarnation.
async fn decide(work: &DeployWork, instance: &str, snapshot: &mut Option<Snapshot>) -> Result<Plan, String> {
    let (spec, ids) = work.spec().ok_or("service is gone")?;
    let (pod, index) = pod_of(&spec, instance).ok_or_else(|| format!("no pod for instance {instance}"))?;
    let target = ids.get(&pod.name).cloned().unwrap_or_default();
    let current = work.record(instance).await?;
    let rev = current.as_ref().map_or(0, |(_, r)| *r);
    let mut rec = current.map(|(r, _)| r).unwrap_or_else(|| {
        Instance::new(tend_model::InstanceId::new(pod.name.clone(), index), work.server.now_ms())
    });
    if rec.is_launched() && rec.config() == target {
        return Ok(Plan::Nothing); // Already launched: the intent is on record, the agent acts on it.
    }
    let mut extra = Vec::new();
    let in_place = rec.is_launched();
    if rec.reservation.is_none() {
        if let Some(reason) = fence_wait(work, &spec, instance, (&rec, rev)) {
            if rec.pending_reason.as_deref() == Some(reason.as_str()) {
                return Ok(Plan::Nothing);
            }
            rec.pending_reason = Some(reason.clone());
            return Ok(Plan::Pending { rec, rev, reason });
        }
        if snapshot.is_none() {
            *snapshot = Some(Snapshot::take(&work.server, None).await?);
        }
        let snap = snapshot.as_mut().ok_or("no snapshot")?;
        match snap.place(&work.service, pod, instance) {
            Ok(placed) => extra = reserve(work, &spec, pod, instance, &mut rec, placed).await?,
            Err(reason) => {
                if rec.pending_reason.as_deref() == Some(reason.as_str()) {
                    return Ok(Plan::Nothing);
                }
                rec.pending_reason = Some(reason.clone());
                return Ok(Plan::Pending { rec, rev, reason });
            }
        }
    }
    if in_place {
        // Relaunched in place on a new config: the reservation and the volume set follow it, or
        // the step waits.
        let volumes =
            crate::volumes::in_place(&work.server, (&work.service, instance), &spec, pod, &rec).await?;
        if let Err(reason) = re_reserve(&work.server, &mut rec, pod, volumes.disk_mb) {
            if rec.pending_reason.as_deref() == Some(reason.as_str()) {
                return Ok(Plan::Nothing);
            }
            rec.pending_reason = Some(reason.clone());
            return Ok(Plan::Pending { rec, rev, reason });
        }
        rec.volumes.set = volumes.volume_id;
        extra.extend(volumes.op);
        rec.pending_reason = None;
    }
    // A first launch starts above any incarnation a deleted service's namesake reached.
    let floor = match rec.incarnation {
        None => crate::services::incarnation_floor(&work.server, &work.service, instance).await?,
        Some(_) => 0,
    };
    // A relaunch in place (a new config) is no replacement: the marker of one goes with its
    // incarnation. Placed anew while a replacement still waited for an agent, it still is one.
    let replaced_from = if in_place { None } else { rec.replaced_from().cloned() };
    rec.next_incarnation(floor, target, work.server.now_ms()).replaced_from = replaced_from;
    Ok(Plan::Launch { rec, rev, extra })
}

/// Fence mode: a replacement is placed only once the old incarnation is surely dead — its agent
/// reported, after the replacement was decided, that it runs nothing of the instance, or it has
/// been silent for the fence time plus the margin (it killed the tasks itself). Some(why) while
/// waiting. The report must come from an agent that has obeyed a desired state at least as new
/// as the release (`rev`, the record's revision): a desired state sent before the release, still
/// in flight, could otherwise start the old incarnation again after the agent said it stopped.
fn fence_wait(
    work: &DeployWork,
    spec: &ServiceSpec,
    instance: &str,
    (rec, rev): (&Instance, i64),
) -> Option<String> {
    if spec.recovery.on_partition != tend_spec::OnPartition::Fence {
        return None;
    }
    let old = &rec.incarnation.as_ref()?.replaced_from.as_ref().filter(|r| !r.agent.is_empty())?.agent;
    let server = &work.server;
    let now = server.now_ms();
    let fence_ms = spec.recovery.fence_after_seconds * 1000 + crate::rules::recovery::FENCE_MARGIN_MS;
    let agents = server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
    let (seen, confirmed) = match agents.get(old) {
        Some(a) => {
            // A task waiting out its restart backoff is live too: its agent will start it again.
            let live = a.instance_tasks(&work.service, instance).any(|t| {
                matches!(t.state, tend_api::TaskState::Running | tend_api::TaskState::Starting)
                    || t.next_restart_ms.is_some()
            });
            (
                a.last_seen_ms,
                a.last_seen_ms.is_some_and(|t| t > rec.recovery.replaced_ms)
                    && server.agent_up(a)
                    && !live
                    && a.revision.is_none_or(|r| r >= rev.max(0) as u64),
            )
        }
        None => (None, false),
    };
    // Silent since its last report, or since this control plane started if it never heard it.
    let silent_since = seen.unwrap_or(server.inner.started_ms);
    if confirmed || now >= silent_since + fence_ms {
        return None;
    }
    Some(format!("fence: waiting until agent {old} confirms the old incarnation of {instance} stopped, or {} s without contact", fence_ms / 1000))
}

/// Records a placement in the instance record; a new placement gets a fresh volume set under a
/// new id, written in the same transaction (returned as extra operations).
pub(crate) async fn reserve(
    work: &DeployWork,
    spec: &ServiceSpec,
    pod: &PodSpec,
    instance: &str,
    rec: &mut Instance,
    (agent, ports, needs): Placed,
) -> Result<Vec<TxnOp>, String> {
    let mut extra = Vec::new();
    if !pod.volumes.is_empty() {
        let id = crate::volumes::next_id(&work.server).await?;
        let retain = spec.recovery.retain_volumes_seconds;
        let vrec =
            crate::volumes::new_record(&work.server, &id, &work.service, instance, &agent, pod, retain);
        extra.push(crate::volumes::put_op(&vrec)?);
        rec.volumes.set = Some(id);
    }
    rec.reservation = Some(Reservation { agent, resources: needs, ports });
    rec.volumes.names = pod.volumes.iter().map(|v| v.name.clone()).collect();
    rec.pending_reason = None;
    Ok(extra)
}
