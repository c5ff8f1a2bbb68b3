//! Health gates of rolling updates: a command run, through an agent, in a ready instance of a
//! named pod (never the instance being changed), that must pass before an update step starts
//! and after it completes (`update.health_gate`, e.g. `etcdctl endpoint health --cluster`).
//! Runs reach agents as job runs in their desired state; results come back with their reports.

use std::time::Duration;
use tend_model::hash::HashMap;

use tend_api::{JobResult, JobRun, RunState};
use tend_spec::{HealthGate, ServiceSpec};

use crate::deploy::{judge, pod_of};
use crate::Control;

/// Gate runs in flight, by run id: the agent that runs it, the run, and its result once in.
#[derive(Default)]
pub struct Gates {
    runs: HashMap<String, (String, JobRun, Option<JobResult>)>,
    seq: u64,
}

/// Gate runs an agent must execute now.
pub fn runs_for(s: &Control, agent: &str) -> Vec<JobRun> {
    let g = s.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
    g.runs.values().filter(|(a, _, res)| a == agent && res.is_none()).map(|(_, r, _)| r.clone()).collect()
}

/// Takes the results of gate runs out of an agent's report; returns the other results.
pub fn on_results(s: &Control, agent: &str, results: Vec<JobResult>) -> Vec<JobResult> {
    let mut g = s.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
    let mut rest = Vec::new();
    let mut any = false;
    for r in results {
        match g.runs.get_mut(&r.run_id) {
            Some((a, _, slot)) if a == agent => {
                if r.state != RunState::Running && slot.is_none() {
                    *slot = Some(r);
                    any = true;
                }
            }
            _ => rest.push(r),
        }
    }
    drop(g);
    if any {
        s.inner.gates_gen.send_modify(|n| *n += 1);
    }
    rest
}

/// A ready instance of the gate's pod other than `changing`, and its agent.
fn pick(
    s: &Control,
    service: &str,
    spec: &ServiceSpec,
    gate: &HealthGate,
    changing: &str,
) -> Option<(String, String)> {
    let pod = spec.pod(&gate.pod)?;
    let now = s.now_ms();
    s.inner.state.instances(service).into_iter().find_map(|(inst, rec)| {
        if inst == changing || rec.id.pod != gate.pod || rec.incarnation.is_none() {
            return None;
        }
        let agent = rec.agent()?.to_string();
        let tasks = s.task_statuses(&agent, service, &inst, rec.incarnation_number())?;
        (pod_of(spec, &inst).is_some() && judge(pod, &tasks, now) == Ok(true)).then_some((inst, agent))
    })
}

/// Runs the gate once. Err says why it did not pass.
pub async fn run_once(
    s: &Control,
    service: &str,
    spec: &ServiceSpec,
    gate: &HealthGate,
    changing: &str,
) -> Result<(), String> {
    let Some((instance, agent)) = pick(s, service, spec, gate, changing) else {
        return Err(format!(
            "no ready instance of pod `{}` (other than {changing}) to run the health gate in",
            gate.pod
        ));
    };
    let run = Command { job: "health-gate", cmd: &gate.cmd, timeout_seconds: gate.timeout_seconds };
    run_on(s, service, &instance, &agent, run).await.map_err(|e| format!("health gate {e}"))
}

/// A command to run in an instance's sandbox through its agent.
pub struct Command<'a> {
    /// Its name in the agent's job runs (`health-gate`, `decommission`).
    pub job: &'a str,
    pub cmd: &'a str,
    pub timeout_seconds: u64,
}

/// Runs a command in `instance` (on `agent`) and waits for its result. Err says how it failed.
pub async fn run_on(
    s: &Control,
    service: &str,
    instance: &str,
    agent: &str,
    c: Command<'_>,
) -> Result<(), String> {
    let run_id = {
        let mut g = s.inner.gates.lock().unwrap_or_else(|e| e.into_inner());
        g.seq += 1;
        let run_id = format!("{}-{}-{}", c.job, s.inner.epoch, g.seq);
        let run = JobRun {
            run_id: run_id.clone(),
            service: service.to_string(),
            instance: instance.to_string(),
            job: c.job.into(),
            cmd: c.cmd.into(),
            timeout_seconds: c.timeout_seconds,
        };
        g.runs.insert(run_id.clone(), (agent.to_string(), run, None));
        run_id
    };
    s.desired_changed();
    let mut rx = s.inner.gates_gen.subscribe();
    // The command's own timeout, plus time for the agent to hear of it and report.
    let wait = Duration::from_secs(c.timeout_seconds) + Duration::from_secs(10);
    let result = tokio::time::timeout(wait, async {
        loop {
            let done = s
                .inner
                .gates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .runs
                .get(&run_id)
                .and_then(|r| r.2.clone());
            if let Some(r) = done {
                return r;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    s.inner.gates.lock().unwrap_or_else(|e| e.into_inner()).runs.remove(&run_id);
    s.desired_changed();
    match result {
        Ok(r) if r.state == RunState::Succeeded => Ok(()),
        Ok(r) => Err(format!(
            "`{}` in {instance} {}: {}",
            c.cmd,
            match r.state {
                RunState::TimedOut => "timed out".to_string(),
                _ => format!("exited with {}", r.exit_code.map_or("no code".into(), |c| c.to_string())),
            },
            r.output_tail.trim()
        )),
        Err(_) => {
            Err(format!("`{}` in {instance}: no result from agent {agent} in {} s", c.cmd, wait.as_secs()))
        }
    }
}

/// Runs the gate until it passes or `deadline_ms` (clock time) comes, every 2 s.
pub async fn pass_before(
    s: &Control,
    service: &str,
    spec: &ServiceSpec,
    gate: &HealthGate,
    changing: &str,
    deadline_ms: u64,
) -> Result<(), String> {
    loop {
        let err = match run_once(s, service, spec, gate, changing).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if s.now_ms() >= deadline_ms {
            return Err(format!("the health gate did not pass within the step's deadline: {err}"));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
