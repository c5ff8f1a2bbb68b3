//! The maintenance scheduler's pass, level-triggered: gather each service's job-instances from
//! the instance records and history, decide (`tend_jobs::schedule`: queue, blocks, statuses,
//! the next moment anything changes by time), act (take leases, record runs, raise alarms).

use std::time::Duration;
use tend_model::hash::HashMap;

use tend_jobs::history::{self, RunRecord, RunStatus};
use tend_jobs::lease::{Acquired, Held, LeaseManager, Scope};
use tend_jobs::schedule::{self, Block, JobInstance, JobTiming, Weight};
use tend_jobs::window::RunPolicy;
use tend_spec::ServiceSpec;

use super::*;
use crate::deploy::{judge, pod_of};
use crate::Control;

/// Runs the scheduler: a pass whenever something it depends on changes (an instance's health or
/// placement, a run ending, an on-demand request, a run policy), at the next moment a
/// job-instance's standing changes by time alone (due, backoff over, alarm threshold, window
/// boundary, pacing over), at the next lease renewal, and at least every `resync`; at most one
/// pass per 100 ms.
pub async fn run(server: Control, resync: Duration) {
    server.wait_reconciled().await;
    let mut tasks = server.inner.tasks_gen.subscribe();
    let mut desired = server.inner.desired_gen.subscribe();
    let mut jobs = server.inner.jobs_gen.subscribe();
    loop {
        let next = match pass(&server).await {
            Ok(p) => p.next_ms,
            Err(e) => {
                tracing::warn!(error = %e, "jobs pass failed");
                None
            }
        };
        let wait_ms = next.map_or(u64::MAX, |t| t.saturating_sub(server.now_ms()));
        let wait = Duration::from_millis(wait_ms)
            .clamp(Duration::from_millis(100), resync.max(Duration::from_millis(100)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = tokio::time::timeout(wait - Duration::from_millis(100), async {
            tokio::select! {
                biased;
                _ = tasks.changed() => {}
                _ = desired.changed() => {}
                _ = jobs.changed() => {}
            }
        })
        .await;
    }
}

/// What a pass did and when the next is due by time.
#[derive(Debug, Default)]
pub struct Pass {
    /// Runs were started (agents were given work).
    pub worked: bool,
    /// The earliest moment a job-instance's standing or a lease renewal comes due (None: only
    /// events can change anything).
    pub next_ms: Option<u64>,
}

/// One pass over every service: renew, schedule, statuses.
pub async fn pass(server: &Control) -> anyhow::Result<Pass> {
    let now = server.now_ms();
    let leases = lm(server);
    let mut out = Pass { worked: false, next_ms: renew(server, &leases, now).await };
    let (pols, pol_err) = match policies(server).await {
        Ok(p) => (p, None),
        Err(e) => (Vec::new(), Some(format!("run policies unreadable ({e}): failing closed"))),
    };
    for svc in server.service_names() {
        let Some(rt) = server.service(&svc) else { continue };
        let spec = rt.lock().unwrap_or_else(|e| e.into_inner()).spec.clone();
        if spec.jobs.is_empty() {
            continue;
        }
        let sp = ServicePass { server, svc: &svc, spec: &spec, pols: &pols, leases: &leases, now };
        let (mut jis, meta) = sp.gather().await?;
        let blocked = match &pol_err {
            Some(e) => (0..jis.len()).map(|i| (i, Block::Window(e.clone()))).collect(),
            None => sp.start_due(&mut jis, &meta, &mut out).await?,
        };
        let next = sp.publish(&jis, &blocked).await;
        out.next_ms = [out.next_ms, next].into_iter().flatten().min();
    }
    if out.worked {
        server.desired_changed();
    }
    Ok(out)
}

fn weight(w: &str) -> Weight {
    match w {
        "medium" => Weight::Medium,
        "high" => Weight::High,
        "highest" => Weight::Highest,
        _ => Weight::Low,
    }
}

fn timing(job: &tend_spec::JobSpec) -> JobTiming {
    JobTiming {
        interval_ms: job.interval_seconds * 1000,
        initial_delay_ms: job.initial_delay_seconds * 1000,
        weight: weight(&job.weight),
        backoff_ms: job.backoff_seconds * 1000,
        warn_after_ms: job.warn_after_seconds * 1000,
        error_after_ms: job.error_after_seconds * 1000,
        granularity_ms: schedule::granularity_for(job.interval_seconds * 1000),
    }
}

/// Per job-instance, beside its timing: its job's index in the spec, its agent, and what the
/// health gate says (None: open).
struct Meta {
    job: usize,
    agent: String,
    gate: Option<String>,
}

/// One service's part of a pass.
struct ServicePass<'a> {
    server: &'a Control,
    svc: &'a str,
    spec: &'a ServiceSpec,
    pols: &'a [RunPolicy],
    leases: &'a LeaseManager,
    now: u64,
}

impl ServicePass<'_> {
    /// Every placed instance of every job's pod, with its history summary and health gate.
    async fn gather(&self) -> anyhow::Result<(Vec<JobInstance>, Vec<Meta>)> {
        let (server, svc, now) = (self.server, self.svc, self.now);
        let instances = server.instances(svc).await?;
        // On-demand requests of this service, in one read.
        let wanted: tend_model::hash::HashSet<String> = server
            .inner
            .store
            .range(&format!("jobs/ondemand/{svc}/"))
            .await?
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect();
        let (mut jis, mut meta) = (Vec::new(), Vec::new());
        for (ji, job) in self.spec.jobs.iter().enumerate() {
            for (inst, rec) in &instances {
                if rec.id.pod != job.pod || rec.incarnation.is_none() {
                    continue;
                }
                let Some(agent) = rec.agent().map(str::to_string) else { continue };
                let summary = summary(server, svc, &job.name, inst).await?;
                // From the store (the instance's creation), so a restarted control plane counts
                // the same; records from before `created_ms` fall back to first sight.
                let created = if rec.created_ms > 0 {
                    rec.created_ms
                } else {
                    let mut st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
                    *st.first_seen.entry((svc.to_string(), job.name.clone(), inst.clone())).or_insert(now)
                };
                let running = server
                    .inner
                    .jobs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .active
                    .values()
                    .any(|r| r.service == svc && r.job == job.name && &r.instance == inst);
                jis.push(JobInstance {
                    job: job.name.clone(),
                    pod: job.pod.clone(),
                    instance: inst.clone(),
                    timing: timing(job),
                    last_success_ms: summary.0,
                    last_failure_ms: summary.1,
                    created_ms: created,
                    estimate_ms: summary.2,
                    on_demand: wanted.contains(&on_demand_key(svc, &job.name, inst)),
                    running,
                });
                meta.push(Meta { job: ji, gate: self.gate(inst, rec, &agent), agent });
            }
        }
        Ok((jis, meta))
    }

    /// The health gate: the instance's tasks run and are ready, and recovery is not at work on
    /// it (from the record: down, or being replaced).
    fn gate(&self, inst: &str, rec: &tend_model::Instance, agent: &str) -> Option<String> {
        let ready = match (
            self.server.task_statuses(agent, self.svc, inst, rec.incarnation_number()),
            pod_of(self.spec, inst),
        ) {
            (Some(tasks), Some((pod, _))) => judge(pod, &tasks, self.now) == Ok(true),
            _ => false,
        };
        if !ready {
            return Some(format!("{inst} is not running and ready"));
        }
        let replacing = crate::rules::recovery::replacing(
            rec.replaced_from().is_some(),
            rec.incarnation_number(),
            rec.ready_incarnation(),
        );
        let marks = &rec.recovery;
        (marks.down_since_ms.is_some() || marks.unreachable_since_ms.is_some() || replacing)
            .then(|| format!("recovery is busy with {inst} (down or being replaced)"))
    }

    /// Starts what the queue says, highest priority first, under the health gate, pacing and
    /// leases. Returns why each queued job-instance that did not start was held back.
    async fn start_due(
        &self,
        jis: &mut [JobInstance],
        meta: &[Meta],
        out: &mut Pass,
    ) -> anyhow::Result<HashMap<usize, Block>> {
        let mut blocked = HashMap::default();
        for (i, _) in schedule::queue(jis, self.pols, self.now) {
            let m = &meta[i];
            let job = &self.spec.jobs[m.job];
            if let Some(g) = &m.gate {
                blocked.insert(i, Block::HealthGate(g.clone()));
                continue;
            }
            let paced = pace_until(self.server, self.svc, &job.name).await;
            if self.now < paced && !jis[i].on_demand {
                blocked.insert(i, Block::LeaseBusy(format!("pacing until {paced}")));
                out.next_ms = [out.next_ms, Some(paced)].into_iter().flatten().min();
                continue;
            }
            let holder = format!("cp-{}", self.server.inner.epoch);
            match self.leases.acquire(&holder, &self.scopes(job, &m.agent)).await? {
                Acquired::Busy(scope) => {
                    blocked.insert(i, Block::LeaseBusy(scope));
                }
                Acquired::Held(held) => {
                    if self.record_start(&jis[i], job, &m.agent, held, &holder).await? {
                        jis[i].running = true;
                        out.worked = true;
                    }
                }
            }
        }
        Ok(blocked)
    }

    /// The lease scopes a run of `job` on `agent` needs.
    fn scopes(&self, job: &tend_spec::JobSpec, agent: &str) -> Vec<Scope> {
        let svc = self.svc;
        job.concurrency
            .iter()
            .map(|c| {
                let key = match c.scope.as_str() {
                    "cluster" => format!("{svc}/{}/cluster", job.name),
                    "agent" => format!("{svc}/{}/agent={agent}", job.name),
                    other => {
                        let attr = other.strip_prefix("attribute:").unwrap_or(other);
                        let agents = self.server.inner.agents.read().unwrap_or_else(|e| e.into_inner());
                        let value = agents.get(agent).and_then(|a| a.agent.attributes.get(attr).cloned());
                        format!("{svc}/{}/{attr}={}", job.name, value.as_deref().unwrap_or("unset"))
                    }
                };
                Scope { key, slots: c.slots }
            })
            .collect()
    }

    /// Records a run guarded by its lease (intent), then hands it to its agent. False (and the
    /// lease released) when the record could not be written.
    async fn record_start(
        &self,
        j: &JobInstance,
        job: &tend_spec::JobSpec,
        agent: &str,
        held: Held,
        holder: &str,
    ) -> anyhow::Result<bool> {
        let (server, svc, now) = (self.server, self.svc, self.now);
        let run_id = format!("{now}-{}", held.token);
        let record = RunRecord {
            run_id: run_id.clone(),
            job: j.job.clone(),
            instance: j.instance.clone(),
            start_ms: now,
            end_ms: None,
            status: RunStatus::Running,
            output_tail: String::new(),
            agent: agent.to_string(),
            token: held.token,
            on_demand: j.on_demand,
        };
        if history::record(server.inner.store.as_ref(), &history_prefix(svc), &held, &record).await.is_err() {
            let _ = self.leases.release(holder, &held).await;
            return Ok(false);
        }
        if j.on_demand {
            server.inner.store.delete(&on_demand_key(svc, &j.job, &j.instance)).await?;
        }
        let msg =
            format!("job {} started on {} (agent {agent}, fencing token {})", j.job, j.instance, held.token);
        server.event(Some(svc), EventKind::Job, msg).await;
        let run = ActiveRun {
            service: svc.to_string(),
            job: j.job.clone(),
            instance: j.instance.clone(),
            agent: agent.to_string(),
            held,
            record,
            cmd: job.cmd.clone(),
            timeout_seconds: job.timeout_seconds,
            pacing_ratio: job.pacing_ratio,
            last_renewed_ms: now,
        };
        server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).active.insert(run_id, run);
        Ok(true)
    }

    /// Statuses and alarms (an event when an alarm is raised or cleared). Returns the earliest
    /// moment any of these job-instances changes by time.
    async fn publish(&self, jis: &[JobInstance], blocked: &HashMap<usize, Block>) -> Option<u64> {
        let (server, svc, now) = (self.server, self.svc, self.now);
        let mut infos = Vec::new();
        let mut next = None;
        for (i, j) in jis.iter().enumerate() {
            next = [next, schedule::next_change_ms(j, self.pols, now)].into_iter().flatten().min();
            let b = blocked.get(&i).cloned().or_else(|| schedule::block(j, self.pols, now));
            let (st, alarm) = schedule::status(j, b.as_ref(), now);
            let key = (svc.to_string(), j.job.clone(), j.instance.clone());
            let prev = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).alarms.get(&key).copied();
            if prev != alarm {
                let msg = match alarm {
                    Some(a) => {
                        format!(
                            "alarm {a:?} raised: job {} on {} has not succeeded for too long",
                            j.job, j.instance
                        )
                    }
                    None => format!("alarm cleared: job {} on {}", j.job, j.instance),
                };
                server.event(Some(svc), EventKind::Alarm, msg).await;
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
                service: svc.to_string(),
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
        server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).statuses.insert(svc.to_string(), infos);
        next
    }
}

/// Renews the leases of active runs every TTL/10; a run whose lease may have expired is aborted.
/// Returns when the next renewal is due.
async fn renew(server: &Control, leases: &LeaseManager, now: u64) -> Option<u64> {
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
                    let result = "aborted".to_string();
                    server.signal(crate::Signal::JobRun {
                        service: r.service.clone(),
                        job: r.job.clone(),
                        result,
                    });
                    let msg =
                        format!("job {} on {} aborted: its lease may have expired ({e})", r.job, r.instance);
                    server.event(Some(&r.service), EventKind::Job, msg).await;
                    server.desired_changed();
                }
            }
            Err(_) => {} // transient; retried next pass, aborted once the TTL may have passed
        }
    }
    let st = server.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
    st.active.values().map(|r| r.last_renewed_ms + (ttl_ms / 10).max(1)).min()
}
