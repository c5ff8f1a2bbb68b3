//! The control plane's side of the agent protocol — register, long-poll the desired state, report
//! status — as one trait implemented by `Control`. The HTTP routes (`api/`) are a thin edge over
//! it; an in-process caller (a test, a simulator) drives the same control plane without sockets.

use std::collections::BTreeSet;
use std::time::Duration;

use async_trait::async_trait;
use tend_api::{
    DesiredState, RegisterRequest, RegisterResponse, StatusAck, StatusReport, TaskSet, TaskStatus,
};

use crate::records::*;
use crate::services::Refusal;
use crate::Control;
use tend_api::{EventKind, TaskState};
use tend_spec::Goal;

/// What agents ask of the control plane.
#[async_trait]
pub trait AgentProtocol: Send + Sync {
    /// An agent joins (or re-joins after a restart of either side).
    async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, Refusal>;
    /// The incarnations `agent` must run, once the state passes `index` (or after `wait`).
    /// `held_from`: the agent holds the state of `index` from that control plane (its
    /// `DesiredState::source`) and takes a difference on it.
    async fn desired(
        &self,
        agent: &str,
        index: u64,
        wait: Duration,
        held_from: Option<&str>,
    ) -> Result<DesiredState, Refusal>;
    /// A full status report (also the heartbeat).
    async fn status(&self, agent: &str, report: StatusReport) -> Result<StatusAck, Refusal>;
}

fn bad(msg: impl Into<String>) -> Refusal {
    (400, "bad_request", msg.into())
}

fn unknown(agent: &str) -> Refusal {
    (404, "not_found", format!("no agent `{agent}`"))
}

#[async_trait]
impl AgentProtocol for Control {
    async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, Refusal> {
        if !tend_spec::decode::valid_name(&req.agent_id) {
            return Err(bad(format!(
                "invalid agent id `{}`: use lowercase letters, digits, `-`",
                req.agent_id
            )));
        }
        let r = &req.resources;
        if !(r.cpus.is_finite() && r.cpus > 0.0)
            || r.memory_mb == 0
            || r.port_range[0] > r.port_range[1]
            || r.port_range[0] == 0
        {
            return Err(bad(
                "resources must offer cpus > 0, memory_mb > 0 and a port range lo..hi with 0 < lo <= hi",
            ));
        }
        self.check_cluster(&req).await?;
        let rec = tend_model::Agent {
            id: req.agent_id.clone(),
            host: req.host.clone(),
            url: req.agent_url.clone(),
            attributes: req.attributes.clone(),
            capacity: tend_model::Resources {
                cpus_milli: (r.cpus * 1000.0).round() as u64,
                memory_mb: r.memory_mb,
                disk_mb: r.disk_mb,
            },
            ports: (r.port_range[0], r.port_range[1]),
            registered_ms: self.now_ms(),
        };
        let v = encode_agent(&rec).map_err(|e| (500, "internal", e.to_string()))?;
        self.inner.store.put(&agent_key(&rec.id), &v).await.map_err(|e| (503, "store", e.to_string()))?;
        let known = {
            let mut agents = self.inner.agents.write().unwrap_or_else(|e| e.into_inner());
            let known = agents.contains_key(&rec.id);
            let tasks = agents.get(&rec.id).map(|a| a.tasks.clone()).unwrap_or_default();
            let revision = agents.get(&rec.id).and_then(|a| a.revision);
            let mut live = AgentLive::new(rec.clone(), Some(self.now_ms()), tasks);
            live.revision = revision;
            agents.insert(rec.id.clone(), live);
            known
        };
        // Recovery looks again at what runs there (the agent may have been lost).
        self.inner.reported.lock().unwrap_or_else(|e| e.into_inner()).agents.insert(rec.id.clone());
        let what = if known { "re-registered" } else { "joined" };
        self.event(None, EventKind::Agent, format!("agent {} {what} ({})", rec.id, rec.host)).await;
        Ok(RegisterResponse {
            agent_id: rec.id,
            status_interval_ms: self.inner.cfg.status_interval_ms,
            server_epoch: self.inner.epoch.clone(),
            cluster_id: self.inner.cluster_id.clone(),
            revision: self.inner.store.revision().await.map_err(|e| (503, "store", e.to_string()))?.max(0)
                as u64,
            epoch: self.inner.cfg.leader_epoch,
            delta_reports: true,
        })
    }

    async fn desired(
        &self,
        agent: &str,
        index: u64,
        wait: Duration,
        held_from: Option<&str>,
    ) -> Result<DesiredState, Refusal> {
        if !self.inner.agents.read().unwrap_or_else(|e| e.into_inner()).contains_key(agent) {
            return Err(unknown(agent));
        }
        crate::desired::wait_desired(self, agent, index, wait, held_from)
            .await
            .map_err(|e| (500, "internal", format!("{e:#}")))
    }

    async fn status(&self, agent: &str, r: StatusReport) -> Result<StatusAck, Refusal> {
        // A delta on a report this control plane does not hold changes nothing at all: not the
        // tasks, not the revision the agent says it obeyed (with stale tasks, that would read as
        // "it saw the order and runs nothing"), not its jobs. (Checked again under the lock.)
        let refused = {
            let agents = self.inner.agents.read().unwrap_or_else(|e| e.into_inner());
            let Some(a) = agents.get(agent) else { return Err(unknown(agent)) };
            r.base_seq.is_some() && a.seq != r.base_seq
        };
        if refused {
            return Ok(StatusAck { seq: r.seq, full_needed: true });
        }
        let job_results = crate::gates::on_results(self, agent, r.job_results);
        crate::jobs::on_results(self, agent, job_results).await;
        let tasks = match r.base_seq {
            None => TaskReport::Full(r.tasks),
            Some(base) => TaskReport::Delta { base, changed: r.tasks, gone: r.gone },
        };
        let heard = Heard { seq: r.seq, tasks, revision: r.revision, conflict: r.conflict };
        match self.on_status(agent, heard, r.released_volumes).await {
            Intake::Unknown => Err(unknown(agent)),
            Intake::Applied => Ok(StatusAck { seq: r.seq, full_needed: false }),
            Intake::FullNeeded => Ok(StatusAck { seq: r.seq, full_needed: true }),
        }
    }
}

impl Control {
    /// Refuses an agent's registration; the refusal is recorded once per agent and start.
    async fn refuse_agent(&self, agent: &str, code: &'static str, msg: String) -> Result<(), Refusal> {
        if self.inner.refused.lock().unwrap_or_else(|e| e.into_inner()).insert(agent.to_string()) {
            self.event(None, EventKind::Agent, msg.clone()).await;
        }
        Err((409, code, msg))
    }

    /// An agent of this cluster that obeyed a newer store than this one (restored from an older
    /// copy) is not commanded from the past unless an operator says so.
    async fn check_revision(&self, req: &RegisterRequest) -> Result<(), Refusal> {
        let Some(theirs) = req.revision else { return Ok(()) };
        let ours =
            self.inner.store.revision().await.map_err(|e| (503, "store", e.to_string()))?.max(0) as u64;
        if theirs <= ours || self.inner.cfg.adopt_agents {
            return Ok(());
        }
        let msg = format!(
            "agent {} obeyed store revision {theirs}, this control plane's store is at {ours} (restored from an older copy?): refusing to command it, its tasks keep running; restart the control plane with --adopt-agents to take it over",
            req.agent_id
        );
        self.refuse_agent(&req.agent_id, "store_behind", msg).await
    }

    /// No amnesia: an agent that obeyed another cluster is not commanded by this one (it would
    /// be told that nothing is desired and stop everything) unless an operator says so.
    async fn check_cluster(&self, req: &RegisterRequest) -> Result<(), Refusal> {
        let Some(theirs) = req.cluster_id.as_deref().filter(|c| !c.is_empty() && *c != self.inner.cluster_id)
        else {
            return self.check_revision(req).await;
        };
        if self.inner.cfg.adopt_agents {
            let msg = format!("adopting agent {} from cluster {theirs} (--adopt-agents)", req.agent_id);
            self.event(None, EventKind::Agent, msg).await;
            return Ok(());
        }
        let msg = format!(
            "agent {} belongs to cluster {theirs}, this control plane is cluster {} (a new or lost store?): refusing to command it, its tasks keep running; restart the control plane with --adopt-agents to take it over (it will stop what this cluster does not know)",
            req.agent_id, self.inner.cluster_id
        );
        self.refuse_agent(&req.agent_id, "cluster_mismatch", msg).await
    }
}

/// What the control plane knows of an agent right now.
#[derive(Clone, Debug)]
pub struct AgentLive {
    pub agent: tend_model::Agent,
    /// None: not heard from since this control plane started.
    pub last_seen_ms: Option<u64>,
    /// The tasks it reported, found by instance in O(1) as agents grow.
    pub tasks: TaskSet,
    /// The report those tasks are (a delta must build on it); None: none since it registered.
    pub seq: Option<u64>,
    /// Set while the agent refuses this control plane's desired state (and why).
    pub conflict: Option<String>,
    /// The highest store revision whose desired state the agent says it obeyed (None: an agent
    /// that does not say).
    pub revision: Option<u64>,
}

impl AgentLive {
    pub fn new(agent: tend_model::Agent, last_seen_ms: Option<u64>, tasks: TaskSet) -> AgentLive {
        AgentLive { agent, last_seen_ms, tasks, seq: None, conflict: None, revision: None }
    }

    /// The reported tasks of one instance (every incarnation reported).
    pub fn instance_tasks<'a>(
        &'a self,
        service: &str,
        instance: &str,
    ) -> impl Iterator<Item = &'a TaskStatus> + 'a {
        self.tasks.of_instance(service, instance)
    }
}

/// The tasks `new` shows restarted in place since `old` (same incarnation, a higher restart
/// count): (service, event message). Nothing after a control-plane restart (no `old`). Looks up
/// through `old`'s index, so a report costs its own tasks, not their square.
pub(crate) fn restarts_in_place(old: &AgentLive, new: &[TaskStatus], agent: &str) -> Vec<(String, String)> {
    new.iter()
        .filter_map(|t| {
            let before = old
                .instance_tasks(&t.service, &t.instance)
                .find(|o| o.incarnation == t.incarnation && o.task == t.task)?;
            (t.restarts > before.restarts).then(|| {
                let why = before.exit_code.map(|c| format!(" after exit code {c}")).unwrap_or_default();
                let msg = format!(
                    "{} task {} restarted in place on agent {agent}{why} (restart {} of incarnation {})",
                    t.instance, t.task, t.restarts, t.incarnation
                );
                (t.service.clone(), msg)
            })
        })
        .collect()
}

/// The tasks part of a status report.
pub enum TaskReport {
    /// Every task the agent runs.
    Full(Vec<TaskStatus>),
    /// What changed since the report `base`.
    Delta { base: u64, changed: Vec<TaskStatus>, gone: Vec<tend_api::TaskKey> },
}

/// A status report as the control plane takes it.
pub struct Heard {
    pub seq: u64,
    pub tasks: TaskReport,
    /// The highest store revision whose desired state the agent obeyed.
    pub revision: Option<u64>,
    /// Set while the agent refuses this control plane (and why).
    pub conflict: Option<String>,
}

/// What became of a status report.
#[derive(Debug, PartialEq, Eq)]
pub enum Intake {
    Applied,
    /// A delta on a report this control plane does not hold: nothing applied, not even as
    /// contact (an agent whose tasks are unknown is not seen up on their account).
    FullNeeded,
    Unknown,
}

impl Control {
    /// Handles an agent's status report: remember it, note `once` successes, wake waiters.
    pub async fn on_status(
        &self,
        agent: &str,
        heard: Heard,
        released: Vec<tend_api::VolumeRelease>,
    ) -> Intake {
        let conflict = heard.conflict.clone();
        let (restarted, changed, conflict_changed) = {
            let mut agents = self.inner.agents.write().unwrap_or_else(|e| e.into_inner());
            let Some(a) = agents.get_mut(agent) else { return Intake::Unknown };
            let Some((restarted, changed)) = self.take_report(a, agent, heard.seq, heard.tasks) else {
                return Intake::FullNeeded;
            };
            a.revision = heard.revision;
            let conflict_changed = std::mem::replace(&mut a.conflict, heard.conflict) != conflict;
            (restarted, changed, conflict_changed)
        };
        if conflict_changed {
            let msg = match &conflict {
                Some(c) => format!("agent {agent} refuses this control plane: {c}"),
                None => format!("agent {agent} obeys this control plane again"),
            };
            tracing::error!(%agent, "{msg}");
            self.event(None, EventKind::Agent, msg).await;
        }
        for (service, msg) in restarted {
            self.event(Some(&service), EventKind::Restart, msg).await;
        }
        self.note_once_done(&changed).await;
        // Volumes the agent confirms deleted (as it was told): their records go.
        for r in released {
            crate::volumes::on_released(self, agent, &r.id).await;
        }
        self.inner.status_gen.send_modify(|g| *g += 1);
        Intake::Applied
    }

    /// Applies a report to what is known of the agent: the tasks restarted in place (events)
    /// and the tasks that changed. None: a delta on another base (nothing applied).
    #[allow(clippy::type_complexity)]
    fn take_report(
        &self,
        a: &mut AgentLive,
        agent: &str,
        seq: u64,
        report: TaskReport,
    ) -> Option<(Vec<(String, String)>, Vec<TaskStatus>)> {
        let (changed, gone, full) = match report {
            TaskReport::Delta { base, .. } if a.seq != Some(base) => return None,
            TaskReport::Delta { changed, gone, .. } => {
                // Only what differs from what is known counts as a change.
                let changed: Vec<TaskStatus> =
                    changed.into_iter().filter(|t| a.tasks.find(t) != Some(t)).collect();
                let gone: Vec<_> = gone.into_iter().filter(|k| a.tasks.contains(k)).collect();
                (changed, gone, None)
            }
            TaskReport::Full(tasks) => (Vec::new(), Vec::new(), Some(tasks)),
        };
        let was_silent = !self.agent_up(a);
        a.last_seen_ms = Some(self.now_ms());
        a.seq = Some(seq);
        let mut reported = self.inner.reported.lock().unwrap_or_else(|e| e.into_inner());
        let same = match &full {
            Some(tasks) => a.tasks.all() == tasks.as_slice(),
            None => changed.is_empty() && gone.is_empty(),
        };
        if !was_silent && same {
            // A heartbeat: nothing restarted, no instance to look at again.
            reported.note(agent, false, std::iter::empty());
            return Some((Vec::new(), Vec::new()));
        }
        self.inner.tasks_gen.send_modify(|g| *g += 1);
        match full {
            Some(tasks) => {
                let restarted = restarts_in_place(a, &tasks, agent);
                let instances = crate::recovery_cache::changed_instances(a.tasks.all(), &tasks);
                self.inner.reports.notify(instances.iter().copied());
                reported.note(agent, was_silent, instances.into_iter());
                a.tasks.replace(tasks.clone());
                Some((restarted, tasks))
            }
            None => {
                let restarted = restarts_in_place(a, &changed, agent);
                let instances = changed
                    .iter()
                    .map(|t| (t.service.as_str(), t.instance.as_str()))
                    .chain(gone.iter().map(|k| (k.service.as_str(), k.instance.as_str())));
                self.inner.reports.notify(instances.clone());
                reported.note(agent, was_silent, instances);
                a.tasks.apply(changed.clone(), &gone);
                Some((restarted, changed))
            }
        }
    }

    /// Records `once` tasks that succeeded, so that later incarnations skip them.
    async fn note_once_done(&self, tasks: &[TaskStatus]) {
        let mut done: BTreeSet<(String, String, String)> = BTreeSet::new();
        for t in tasks {
            if t.state == TaskState::Exited && t.exit_code == Some(0) {
                let Some(id) = tend_model::InstanceId::parse(&t.instance) else { continue };
                let once = self.service(&t.service).is_some_and(|rt| {
                    let rt = rt.lock().unwrap_or_else(|e| e.into_inner());
                    rt.spec
                        .pod(&id.pod)
                        .is_some_and(|p| p.tasks.iter().any(|x| x.name == t.task && x.goal == Goal::Once))
                });
                if once {
                    done.insert((t.service.clone(), t.instance.clone(), t.task.clone()));
                }
            }
        }
        for (service, instance, task) in done {
            self.update_instance(&service, &instance, |rec| {
                let new = !rec.once_done.contains(&task);
                if new {
                    rec.once_done.push(task.clone());
                }
                new
            })
            .await;
        }
    }
}
