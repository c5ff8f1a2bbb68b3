//! Maintenance jobs on the control plane: a loop computes every job-instance's priority
//! (`tend_jobs`), runs the highest first under leases (fencing tokens), run policies and a health
//! gate, hands runs to agents through the desired state, records history guarded by the lease,
//! renews leases and aborts a run whose lease may have expired.

use std::collections::BTreeMap;
use std::sync::Arc;
use tend_model::hash::HashMap;

use serde::{Deserialize, Serialize};
use tend_api::{JobResult, JobRun};
use tend_jobs::history::{self, RunRecord, RunStatus};
use tend_jobs::lease::{Held, LeaseManager};
use tend_jobs::schedule::Alarm;
use tend_jobs::window::RunPolicy;

use crate::Control;
use tend_api::EventKind;

mod pass;
pub use pass::{pass, run, Pass};

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
    server.inner.jobs_gen.send_modify(|g| *g += 1);
    Ok(())
}

pub async fn remove_policy(server: &Control, id: &str) -> anyhow::Result<bool> {
    let removed = server.inner.store.delete(&format!("{POLICIES}{id}")).await?;
    server.inner.jobs_gen.send_modify(|g| *g += 1);
    Ok(removed)
}

/// Queues an on-demand run (persisted: survives a restart).
pub async fn request_run(server: &Control, svc: &str, job: &str, instance: &str) -> anyhow::Result<()> {
    server.inner.store.put(&on_demand_key(svc, job, instance), b"1").await?;
    server.inner.jobs_gen.send_modify(|g| *g += 1);
    Ok(())
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
        // Pacing is stored before the result: whoever sees the run finished (a restarted
        // control plane too) also sees its pause.
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
        let result = serde_json::to_value(record.status).ok().and_then(|v| v.as_str().map(str::to_string));
        let result = result.unwrap_or_else(|| "unknown".into());
        server.signal(crate::Signal::JobRun { service: r.service.clone(), job: r.job.clone(), result });
        let msg = match written {
            Ok(()) => {
                format!("job {} on {} {:?} after {duration} ms", r.job, r.instance, status).to_lowercase()
            }
            Err(e) => format!("job {} on {}: result refused: {e}", r.job, r.instance),
        };
        server.event(Some(&r.service), EventKind::Job, msg).await;
        server.desired_changed();
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
