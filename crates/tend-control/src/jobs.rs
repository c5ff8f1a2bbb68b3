//! Maintenance jobs on the control plane: a loop computes every job-instance's priority
//! (`tend_jobs`), runs the highest first under leases (fencing tokens), run policies and a health
//! gate, hands runs to agents through the desired state, records history guarded by the lease,
//! renews leases and aborts a run whose lease may have expired.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tend_api::{JobResult, JobRun};
use tend_jobs::history::{self, RunRecord, RunStatus};
use tend_jobs::lease::{Acquired, Held, LeaseManager, Scope};
use tend_jobs::schedule::{self, Alarm, Block, JobInstance, JobTiming, Weight};
use tend_jobs::window::RunPolicy;

use crate::deploy::{judge, pod_of};
use crate::Control;

const POLICIES: &str = "jobs/policies/";
/// Pacing deadlines by (service, job), in the store: a restarted control plane paces the same.
const PACE: &str = "jobs/pace/";

/// Forgets a deleted service's pacing (its store keys go with the service's).
pub fn forget_service(server: &Control, svc: &str) {
    server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).pace_until.retain(|(s, _), _| s != svc);
}

/// The store prefix of a service's pacing deadlines.
pub fn pace_prefix(svc: &str) -> String {
    format!("{PACE}{svc}/")
}

/// Until when runs of a job are paced (0: not), from memory or, after a restart, the store.
async fn pace_until(server: &Control, svc: &str, job: &str) -> u64 {
    let key = (svc.to_string(), job.to_string());
    if let Some(t) = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).pace_until.get(&key) {
        return *t;
    }
    let stored = match server.inner.store.get(&format!("{PACE}{svc}/{job}")).await {
        Ok(kv) => kv.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok()).unwrap_or(0),
        Err(_) => return 0,
    };
    server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).pace_until.insert(key, stored);
    stored
}

fn history_prefix(svc: &str) -> String {
    format!("jobs/history/{svc}")
}
fn on_demand_key(svc: &str, job: &str, instance: &str) -> String {
    format!("jobs/ondemand/{svc}/{job}/{instance}")
}

struct ActiveRun {
    service: String,
    job: String,
    instance: String,
    agent: String,
    held: Held,
    record: RunRecord,
    cmd: String,
    timeout_seconds: u64,
    pacing_ratio: f64,
    last_renewed_ms: u64,
}

/// A job-instance's status, for the API.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobStatusInfo {
    pub service: String,
    pub job: String,
    pub instance: String,
    pub status: String,
    pub reason: Option<String>,
    pub alarm: Option<String>,
    pub priority: Option<i64>,
    pub last_success_ms: Option<u64>,
    pub due_ms: u64,
    pub running: bool,
    pub on_demand: bool,
}

/// (last success, last failure, duration estimate) of a job-instance.
type Summary = (Option<u64>, Option<u64>, u64);

/// The jobs loop's memory.
#[derive(Default)]
pub struct JobsState {
    active: BTreeMap<String, ActiveRun>,
    first_seen: HashMap<(String, String, String), u64>,
    pace_until: HashMap<(String, String), u64>,
    alarms: HashMap<(String, String, String), Alarm>,
    /// (last success, last failure, estimate) per job-instance, read from history once and
    /// dropped whenever a run of it ends: a tick does not read history.
    summaries: HashMap<(String, String, String), Summary>,
    pub statuses: BTreeMap<String, Vec<JobStatusInfo>>,
}

fn lm(server: &Control) -> LeaseManager {
    LeaseManager::new(
        server.inner.store.clone(),
        "jobs/leases",
        server.inner.cfg.job_lease_ttl_seconds.max(1),
    )
}

/// Run policies from the store; an error fails closed (callers block every job).
pub async fn policies(server: &Control) -> anyhow::Result<Vec<RunPolicy>> {
    let mut out = Vec::new();
    for kv in server.inner.store.range(POLICIES).await?.kvs {
        out.push(serde_json::from_slice(&kv.value)?);
    }
    Ok(out)
}

pub async fn put_policy(server: &Control, p: &RunPolicy) -> anyhow::Result<()> {
    server.inner.store.put(&format!("{POLICIES}{}", p.id), &serde_json::to_vec(p)?).await?;
    Ok(())
}

pub async fn remove_policy(server: &Control, id: &str) -> anyhow::Result<bool> {
    Ok(server.inner.store.delete(&format!("{POLICIES}{id}")).await?)
}

/// Queues an on-demand run (persisted: survives a restart).
pub async fn request_run(server: &Control, svc: &str, job: &str, instance: &str) -> anyhow::Result<()> {
    server.inner.store.put(&on_demand_key(svc, job, instance), b"1").await?;
    Ok(())
}

/// Runs the loop forever: a tick every `tick`, faster after a tick that did work.
pub async fn run(server: Control, tick: Duration) {
    server.wait_reconciled().await;
    loop {
        let worked = match tick_once(&server).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "jobs tick failed");
                false
            }
        };
        tokio::time::sleep(if worked { Duration::from_millis(100) } else { tick }).await;
    }
}

fn weight(w: &str) -> Weight {
    match w {
        "medium" => Weight::Medium,
        "high" => Weight::High,
        "highest" => Weight::Highest,
        _ => Weight::Low,
    }
}

/// One pass: renew, schedule, statuses. Returns whether it started anything.
pub async fn tick_once(server: &Control) -> anyhow::Result<bool> {
    let now = server.now_ms();
    let leases = lm(server);
    renew(server, &leases, now).await;
    let (pols, pol_err) = match policies(server).await {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(format!("run policies unreadable ({e}): failing closed"))),
    };
    let mut worked = false;
    for svc in server.service_names() {
        let Some(rt) = server.service(&svc) else { continue };
        let spec = rt.lock().unwrap_or_else(|e| e.into_inner()).spec.clone();
        if spec.jobs.is_empty() {
            continue;
        }
        let instances = server.instances(&svc).await?;
        // On-demand requests of this service, in one read.
        let wanted: std::collections::HashSet<String> = server
            .inner
            .store
            .range(&format!("jobs/ondemand/{svc}/"))
            .await?
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let mut jis = Vec::new();
        let mut meta = Vec::new(); // (job index, agent, healthy reason)
        for (ji, job) in spec.jobs.iter().enumerate() {
            let timing = JobTiming {
                interval_ms: job.interval_seconds * 1000,
                initial_delay_ms: job.initial_delay_seconds * 1000,
                weight: weight(&job.weight),
                backoff_ms: job.backoff_seconds * 1000,
                warn_after_ms: job.warn_after_seconds * 1000,
                error_after_ms: job.error_after_seconds * 1000,
                granularity_ms: schedule::granularity_for(job.interval_seconds * 1000),
            };
            for (inst, rec) in &instances {
                if rec.pod != job.pod || rec.incarnation == 0 {
                    continue;
                }
                let Some(agent) = rec.agent.clone() else { continue };
                let summary = summary(server, &svc, &job.name, inst).await?;
                // From the store (the instance's creation), so a restarted control plane counts
                // the same; records from before `created_ms` fall back to first sight.
                let created = if rec.created_ms > 0 {
                    rec.created_ms
                } else {
                    let mut st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    *st.first_seen.entry((svc.clone(), job.name.clone(), inst.clone())).or_insert(now)
                };
                let running = server
                    .inner
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .active
                    .values()
                    .any(|r| r.service == svc && r.job == job.name && &r.instance == inst);
                let on_demand = wanted.contains(&on_demand_key(&svc, &job.name, inst));
                // Health gate: the instance's tasks run and are ready, and recovery is not at work on it.
                let gate =
                    match (server.task_statuses(&agent, &svc, inst, rec.incarnation), pod_of(&spec, inst)) {
                        (Some(tasks), Some((pod, _))) if judge(pod, &tasks, now) == Ok(true) => None,
                        _ => Some(format!("{inst} is not running and ready")),
                    };
                // ...and recovery is not at work on it (from the record: down, or being replaced).
                let gate = gate.or_else(|| {
                    let replacing = crate::rules::recovery::replacing(
                        rec.replaced_from.is_some(),
                        rec.incarnation,
                        rec.ready_incarnation,
                    );
                    (rec.down_since_ms.is_some() || rec.unreachable_since_ms.is_some() || replacing)
                        .then(|| format!("recovery is busy with {inst} (down or being replaced)"))
                });
                jis.push(JobInstance {
                    job: job.name.clone(),
                    pod: job.pod.clone(),
                    instance: inst.clone(),
                    timing: timing.clone(),
                    last_success_ms: summary.0,
                    last_failure_ms: summary.1,
                    created_ms: created,
                    estimate_ms: summary.2,
                    on_demand,
                    running,
                });
                meta.push((ji, agent, gate));
            }
        }
        let mut blocked: HashMap<usize, Block> = HashMap::new();
        if let Some(e) = &pol_err {
            for i in 0..jis.len() {
                blocked.insert(i, Block::Window(e.clone()));
            }
        } else {
            for (i, _) in schedule::queue(&jis, &pols, now) {
                let (ji, agent, gate) = &meta[i];
                let job = &spec.jobs[*ji];
                if let Some(g) = gate {
                    blocked.insert(i, Block::HealthGate(g.clone()));
                    continue;
                }
                let paced = pace_until(server, &svc, &job.name).await;
                if now < paced && !jis[i].on_demand {
                    blocked.insert(i, Block::LeaseBusy(format!("pacing until {paced}")));
                    continue;
                }
                let scopes: Vec<Scope> = job
                    .concurrency
                    .iter()
                    .map(|c| {
                        let key = match c.scope.as_str() {
                            "cluster" => format!("{svc}/{}/cluster", job.name),
                            "agent" => format!("{svc}/{}/agent={agent}", job.name),
                            other => {
                                let attr = other.strip_prefix("attribute:").unwrap_or(other);
                                let value = server
                                    .inner
                                    .agents
                                    .read()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .get(agent)
                                    .and_then(|a| a.record.attributes.get(attr).cloned())
                                    .unwrap_or_else(|| "unset".into());
                                format!("{svc}/{}/{attr}={value}", job.name)
                            }
                        };
                        Scope { key, slots: c.slots }
                    })
                    .collect();
                let holder = format!("cp-{}", server.inner.epoch);
                match leases.acquire(&holder, &scopes).await? {
                    Acquired::Busy(scope) => {
                        blocked.insert(i, Block::LeaseBusy(scope));
                    }
                    Acquired::Held(held) => {
                        let j = &jis[i];
                        let run_id = format!("{now}-{}", held.token);
                        let record = RunRecord {
                            run_id: run_id.clone(),
                            job: j.job.clone(),
                            instance: j.instance.clone(),
                            start_ms: now,
                            end_ms: None,
                            status: RunStatus::Running,
                            output_tail: String::new(),
                            agent: agent.clone(),
                            token: held.token,
                            on_demand: j.on_demand,
                        };
                        if history::record(server.inner.store.as_ref(), &history_prefix(&svc), &held, &record)
                            .await
                            .is_err()
                        {
                            let _ = leases.release(&holder, &held).await;
                            continue;
                        }
                        if j.on_demand {
                            server.inner.store.delete(&on_demand_key(&svc, &j.job, &j.instance)).await?;
                        }
                        server
                            .event(
                                Some(&svc),
                                "job",
                                format!(
                                    "job {} started on {} (agent {agent}, fencing token {})",
                                    j.job, j.instance, held.token
                                ),
                            )
                            .await;
                        server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).active.insert(
                            run_id,
                            ActiveRun {
                                service: svc.clone(),
                                job: j.job.clone(),
                                instance: j.instance.clone(),
                                agent: agent.clone(),
                                held,
                                record,
                                cmd: job.cmd.clone(),
                                timeout_seconds: job.timeout_seconds,
                                pacing_ratio: job.pacing_ratio,
                                last_renewed_ms: now,
                            },
                        );
                        jis[i].running = true;
                        worked = true;
                    }
                }
            }
        }
        // Statuses and alarms.
        let mut infos = Vec::new();
        for (i, j) in jis.iter().enumerate() {
            let b = blocked.get(&i).cloned().or_else(|| schedule::block(j, &pols, now));
            let (st, alarm) = schedule::status(j, b.as_ref(), now);
            let key = (svc.clone(), j.job.clone(), j.instance.clone());
            let prev = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).alarms.get(&key).copied();
            if prev != alarm {
                let msg = match alarm {
                    Some(a) => format!(
                        "alarm {a:?} raised: job {} on {} has not succeeded for too long",
                        j.job, j.instance
                    ),
                    None => format!("alarm cleared: job {} on {}", j.job, j.instance),
                };
                server.event(Some(&svc), "alarm", msg).await;
                let mut st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
                match alarm {
                    Some(a) => st.alarms.insert(key, a),
                    None => st.alarms.remove(&key),
                };
            }
            let (status, reason) = match st {
                schedule::Status::Blocked(r) => ("BLOCKED".to_string(), Some(r)),
                other => (
                    serde_json::to_value(&other)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    None,
                ),
            };
            infos.push(JobStatusInfo {
                service: svc.clone(),
                job: j.job.clone(),
                instance: j.instance.clone(),
                status,
                reason,
                alarm: alarm.map(|a| format!("{a:?}").to_lowercase()),
                priority: schedule::priority(j, now),
                last_success_ms: j.last_success_ms,
                due_ms: schedule::due_ms(j),
                running: j.running,
                on_demand: j.on_demand,
            });
        }
        server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).statuses.insert(svc.clone(), infos);
    }
    if worked {
        server.inner.desired_gen.send_modify(|g| *g += 1);
    }
    Ok(worked)
}

/// Renews the leases of active runs every TTL/10; a run whose lease may have expired is aborted.
async fn renew(server: &Control, leases: &LeaseManager, now: u64) {
    let ttl_ms = leases.ttl_seconds() as u64 * 1000;
    let due: Vec<(String, Held, u64)> = {
        let st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        st.active
            .iter()
            .filter(|(_, r)| now.saturating_sub(r.last_renewed_ms) >= ttl_ms / 10)
            .map(|(id, r)| (id.clone(), r.held.clone(), r.last_renewed_ms))
            .collect()
    };
    for (id, held, last_ok) in due {
        match leases.renew(&held).await {
            Ok(()) => {
                if let Some(r) =
                    server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).active.get_mut(&id)
                {
                    r.last_renewed_ms = now;
                }
            }
            Err(e)
                if now.saturating_sub(last_ok) >= ttl_ms
                    || matches!(
                        e,
                        tend_jobs::lease::LeaseError::Lost(_)
                            | tend_jobs::lease::LeaseError::NotHolder { .. }
                    ) =>
            {
                let run = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).active.remove(&id);
                if let Some(r) = run {
                    server
                        .event(
                            Some(&r.service),
                            "job",
                            format!(
                                "job {} on {} aborted: its lease may have expired ({e})",
                                r.job, r.instance
                            ),
                        )
                        .await;
                    server.inner.desired_gen.send_modify(|g| *g += 1);
                }
            }
            Err(_) => {} // transient; retried next tick, aborted once the TTL may have passed
        }
    }
}

/// Last success, last failure and duration estimate of a job-instance (cached).
async fn summary(server: &Control, svc: &str, job: &str, inst: &str) -> anyhow::Result<Summary> {
    let key = (svc.to_string(), job.to_string(), inst.to_string());
    if let Some(s) = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).summaries.get(&key) {
        return Ok(*s);
    }
    let runs = history::runs(server.inner.store.as_ref(), &history_prefix(svc), job, inst).await?;
    let s = (history::last_success(&runs), history::last_failure(&runs), history::estimate(&runs));
    server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).summaries.insert(key, s);
    Ok(s)
}

/// Job runs an agent must execute now.
pub fn runs_for(server: &Control, agent: &str) -> Vec<JobRun> {
    let st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    st.active
        .values()
        .filter(|r| r.agent == agent)
        .map(|r| JobRun {
            run_id: r.record.run_id.clone(),
            service: r.service.clone(),
            instance: r.instance.clone(),
            job: r.job.clone(),
            cmd: r.cmd.clone(),
            timeout_seconds: r.timeout_seconds,
        })
        .collect()
}

/// Results reported by an agent: finished runs are recorded (guarded by their lease), their
/// lease released, and pacing applied.
pub async fn on_results(server: &Control, agent: &str, results: Vec<JobResult>) {
    for res in results {
        if res.state == tend_api::RunState::Running {
            continue;
        }
        let run = {
            let mut st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
            match st.active.get(&res.run_id) {
                Some(r) if r.agent == agent => st.active.remove(&res.run_id),
                _ => None,
            }
        };
        let Some(r) = run else { continue };
        let end = res.ended_ms.unwrap_or_else(|| server.now_ms());
        let status = match res.state {
            tend_api::RunState::Succeeded => RunStatus::Succeeded,
            tend_api::RunState::TimedOut => RunStatus::TimedOut,
            tend_api::RunState::Failed | tend_api::RunState::Running => RunStatus::Failed,
        };
        let record =
            RunRecord { end_ms: Some(end), status, output_tail: res.output_tail.clone(), ..r.record.clone() };
        let written =
            history::record(server.inner.store.as_ref(), &history_prefix(&r.service), &r.held, &record).await;
        // The history changed: forget the cached summary of this job-instance.
        server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).summaries.remove(&(
            r.service.clone(),
            r.job.clone(),
            r.instance.clone(),
        ));
        let holder = format!("cp-{}", server.inner.epoch);
        let _ = lm(server).release(&holder, &r.held).await;
        let duration = end.saturating_sub(r.record.start_ms);
        if r.pacing_ratio > 0.0 {
            let until = end + (duration as f64 * r.pacing_ratio) as u64;
            let key = format!("{PACE}{}/{}", r.service, r.job);
            if let Err(e) = server.inner.store.put(&key, until.to_string().as_bytes()).await {
                tracing::warn!(error = %e, "cannot record pacing; kept in memory");
            }
            server
                .inner
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pace_until
                .insert((r.service.clone(), r.job.clone()), until);
        }
        let msg = match written {
            Ok(()) => {
                format!("job {} on {} {:?} after {duration} ms", r.job, r.instance, status).to_lowercase()
            }
            Err(e) => format!("job {} on {}: result refused: {e}", r.job, r.instance),
        };
        server.event(Some(&r.service), "job", msg).await;
        server.inner.desired_gen.send_modify(|g| *g += 1);
    }
}

/// History of a job (all instances), newest last.
pub async fn job_history(server: &Control, svc: &str, job: &str) -> anyhow::Result<Vec<RunRecord>> {
    let r = server.inner.store.range(&format!("{}/{job}/", history_prefix(svc))).await?;
    let mut v: Vec<RunRecord> =
        r.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
    v.sort_by_key(|r| (r.start_ms, r.instance.clone()));
    Ok(v)
}

/// Shared handle for tests.
pub type Shared = Arc<Control>;
