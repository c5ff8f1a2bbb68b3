//! The plan engine: visits steps in dependency order (check → apply → re-check), persisting
//! every status change in the state store before acting, so that a killed process resumes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use tend_model::SharedClock;
use tend_store::{Compare, StateStore, StoreError, Txn, TxnOp};

use crate::model::{Plan, StepNode};
use crate::state::*;

/// What a step does. Implemented by the edges (shell commands, launching tasks, …).
#[async_trait]
pub trait StepWork: Send + Sync {
    /// Is the desired state of `step` reached? Err: the check itself could not run.
    async fn check(&self, step: &StepNode) -> Result<CheckResult, String>;
    /// Does the work of `step`. `Applied::InProgress` means the work goes on elsewhere (a task
    /// launching on an agent): the engine then alternates `check` and `progress` until the check
    /// passes or `progress` reports a failure.
    async fn apply(&self, step: &StepNode, reason: &ApplyReason) -> Result<Applied, String>;
    /// Waits until an in-progress step may have moved (an event, or a poll interval).
    /// Err: the step failed (its task exited, a deadline passed). Implementations MUST return
    /// within a bounded time.
    async fn progress(&self, _step: &StepNode) -> Result<(), String> {
        Ok(())
    }
    /// A fingerprint of what the step produced; None: the hash of its inputs.
    async fn fingerprint(&self, _step: &StepNode) -> Result<Option<String>, String> {
        Ok(None)
    }
}

/// How an apply ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The work is done: the check must pass now.
    Done,
    /// The work was started and completes elsewhere: wait for the check to pass.
    InProgress,
}

/// Something the engine did, for progress displays and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Checking {
        step: String,
    },
    /// The desired state was already reached; `resumed` if a previous run was interrupted here.
    Skipped {
        step: String,
        resumed: bool,
    },
    Applying {
        step: String,
        reason: String,
        resumed: bool,
    },
    Completed {
        step: String,
        elapsed_ms: u64,
    },
    Failed {
        step: String,
        error: String,
    },
    /// Not started because a dependency failed.
    Blocked {
        step: String,
        by: String,
    },
    /// Not started because its phase or plan is interrupted.
    Held {
        step: String,
    },
}

/// Receives engine events.
pub trait Observer: Send + Sync {
    fn on_event(&self, event: &Event);
}

/// An observer that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {
    fn on_event(&self, _: &Event) {}
}

/// What went wrong running the engine itself (not a step).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("corrupt record at {key}: {error}")]
    Corrupt { key: String, error: String },
    #[error("no {what} `{name}` in plan `{plan}`")]
    NotFound { plan: String, what: &'static str, name: String },
    #[error("the plan record changed concurrently too often; try again")]
    Contended,
}

/// What one run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub applied: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub blocked: Vec<String>,
    pub held: Vec<String>,
    /// Steps a previous run was interrupted in (found starting or started).
    pub resumed: Vec<String>,
}

impl RunSummary {
    /// Every step reached its desired state.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.blocked.is_empty() && self.held.is_empty()
    }
}

/// Which part of a plan an operator action targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Plan,
    Phase(String),
    Step(String),
}

/// A persisted view of a plan: statuses of plan, phases and steps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanView {
    pub name: String,
    pub status: Status,
    pub interrupted: bool,
    pub phases: Vec<PhaseView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PhaseView {
    pub name: String,
    pub status: Status,
    pub interrupted: bool,
    pub steps: Vec<(String, StepRecord)>,
}

/// Runs plans against a state store.
pub struct Engine {
    store: Arc<dyn StateStore>,
    clock: SharedClock,
    prefix: String,
    max_parallel: usize,
}

impl Engine {
    /// An engine keeping its records under `prefix` (e.g. `workflows/deploy-app`).
    pub fn new(store: Arc<dyn StateStore>, clock: SharedClock, prefix: impl Into<String>) -> Self {
        Self { store, clock, prefix: prefix.into(), max_parallel: 16 }
    }

    /// At most `n` steps work at once.
    pub fn with_max_parallel(mut self, n: usize) -> Self {
        self.max_parallel = n.max(1);
        self
    }

    fn step_key(&self, plan: &Plan, step: &str) -> String {
        format!("{}/plans/{}/steps/{}", self.prefix, plan.def.name, step)
    }

    fn control_key(&self, plan: &Plan) -> String {
        format!("{}/plans/{}/control", self.prefix, plan.def.name)
    }

    /// The persisted record of one step (the default for a step never seen).
    pub async fn record(&self, plan: &Plan, step_id: &str) -> Result<StepRecord, EngineError> {
        let key = self.step_key(plan, step_id);
        match self.store.get(&key).await? {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map_err(|e| EngineError::Corrupt { key, error: e.to_string() }),
            None => Ok(StepRecord::default()),
        }
    }

    /// The persisted records of every step, in plan order (defaults for steps never seen).
    pub async fn records(&self, plan: &Plan) -> Result<Vec<StepRecord>, EngineError> {
        let prefix = format!("{}/plans/{}/steps/", self.prefix, plan.def.name);
        let kvs = self.store.range(&prefix).await?.kvs;
        let mut by_id = BTreeMap::new();
        for kv in kvs {
            let rec: StepRecord = serde_json::from_slice(&kv.value)
                .map_err(|e| EngineError::Corrupt { key: kv.key.clone(), error: e.to_string() })?;
            by_id.insert(kv.key[prefix.len()..].to_string(), rec);
        }
        Ok(plan.steps.iter().map(|s| by_id.remove(&s.id).unwrap_or_default()).collect())
    }

    /// The operator controls of a plan.
    pub async fn control(&self, plan: &Plan) -> Result<PlanControl, EngineError> {
        let key = self.control_key(plan);
        match self.store.get(&key).await? {
            Some(kv) => serde_json::from_slice(&kv.value)
                .map_err(|e| EngineError::Corrupt { key, error: e.to_string() }),
            None => Ok(PlanControl::default()),
        }
    }

    async fn save(&self, plan: &Plan, step: &StepNode, rec: &mut StepRecord) -> Result<(), EngineError> {
        rec.updated_ms = self.clock.now_ms();
        let value = serde_json::to_vec(rec)
            .map_err(|e| EngineError::Corrupt { key: step.id.clone(), error: e.to_string() })?;
        self.store.put(&self.step_key(plan, &step.id), &value).await?;
        Ok(())
    }

    /// Runs the plan until every step is complete, failed, blocked by a failure or held by an
    /// interrupt. Independent steps run concurrently.
    pub async fn run(
        &self,
        plan: &Plan,
        work: &dyn StepWork,
        obs: &dyn Observer,
    ) -> Result<RunSummary, EngineError> {
        let mut records = self.records(plan).await?;
        let mut run = RunState::new(plan);
        let mut summary = RunSummary::default();
        let mut futs = FuturesUnordered::new();
        let mut ctl = self.control(plan).await?;
        run.settle(plan, &records);
        let mut queue: VecDeque<usize> = run.ready(plan, &ctl).into();
        loop {
            while futs.len() < self.max_parallel {
                let Some(i) = queue.pop_front() else { break };
                if !is_ready(plan, &run.state, &run.running, &run.phase_done, &ctl, i) {
                    continue;
                }
                run.running[i] = true;
                run.state[i] = Status::Prepared;
                let inputs = run.inputs(plan, i, &records);
                let mut rec = records[i].clone();
                normalize_inputs(plan, i, &mut rec);
                futs.push(async move { (i, self.visit(plan, i, inputs, rec, work, obs).await) });
            }
            let Some((i, outcome)) = futs.next().await else { break };
            run.running[i] = false;
            let (rec, what) = outcome?;
            let id = plan.steps[i].id.clone();
            match what {
                Visit::Skipped { resumed } | Visit::Applied { resumed } => {
                    run.state[i] = Status::Complete;
                    if resumed {
                        summary.resumed.push(id.clone());
                    }
                    match what {
                        Visit::Skipped { .. } => summary.skipped.push(id),
                        _ => summary.applied.push(id),
                    }
                }
                Visit::Failed(e) => {
                    run.state[i] = Status::Error;
                    summary.failed.push((id, e));
                }
            }
            records[i] = rec;
            let now_ready = run.finished(plan, i, &records);
            // An operator's interrupt or continue changes what may start: look at everything.
            let now_ctl = self.control(plan).await?;
            if now_ctl != ctl {
                ctl = now_ctl;
                queue = run.ready(plan, &ctl).into();
            } else {
                queue.extend(now_ready);
            }
        }
        self.wrap_up(plan, &run, &mut records, obs, &mut summary).await?;
        Ok(summary)
    }

    /// Records what did not run: held by an interrupt, or blocked by a failure.
    async fn wrap_up(
        &self,
        plan: &Plan,
        run: &RunState,
        records: &mut [StepRecord],
        obs: &dyn Observer,
        summary: &mut RunSummary,
    ) -> Result<(), EngineError> {
        let ctl = self.control(plan).await?;
        let mut state = run.state.clone();
        for i in held_steps(plan, &state, &run.phase_done, &ctl) {
            let step = &plan.steps[i];
            records[i].status = Some(Status::Waiting);
            self.save(plan, step, &mut records[i]).await?;
            obs.on_event(&Event::Held { step: step.id.clone() });
            summary.held.push(step.id.clone());
            state[i] = Status::Waiting;
        }
        let blockers = phase_blockers(plan, &state, &run.phase_done);
        for (i, step) in plan.steps.iter().enumerate() {
            if matches!(state[i], Status::Pending) {
                let by = step
                    .deps
                    .iter()
                    .copied()
                    .find(|d| matches!(state[*d], Status::Error | Status::Pending | Status::Waiting))
                    .or_else(|| {
                        let phase = &plan.phases[step.phase];
                        phase.deps.iter().find(|u| !run.phase_done[**u]).and_then(|u| blockers[*u])
                    })
                    .map(|d| plan.steps[d].id.clone())
                    .unwrap_or_default();
                obs.on_event(&Event::Blocked { step: step.id.clone(), by });
                summary.blocked.push(step.id.clone());
            }
        }
        Ok(())
    }

    async fn visit(
        &self,
        plan: &Plan,
        i: usize,
        inputs: BTreeMap<String, String>,
        mut rec: StepRecord,
        work: &dyn StepWork,
        obs: &dyn Observer,
    ) -> Result<(StepRecord, Visit), EngineError> {
        let step = &plan.steps[i];
        let t0 = self.clock.now_ms();
        let resumed = matches!(rec.status(), Status::Starting | Status::Started);
        rec.status = Some(Status::Prepared);
        self.save(plan, step, &mut rec).await?;
        let check = if needs_check(&rec, &inputs) {
            obs.on_event(&Event::Checking { step: step.id.clone() });
            match work.check(step).await {
                Ok(c) => c,
                Err(e) => return self.fail(plan, step, rec, format!("check could not run: {e}"), obs).await,
            }
        } else {
            CheckResult::NoCheck
        };
        let reason = match decide(&rec, &inputs, check) {
            Decision::Skip => {
                self.complete(plan, step, &mut rec, &inputs, work).await?;
                obs.on_event(&Event::Skipped { step: step.id.clone(), resumed });
                return Ok((rec, Visit::Skipped { resumed }));
            }
            Decision::Apply(r) => r,
        };
        // Intent before action.
        rec.status = Some(Status::Starting);
        rec.applies += 1;
        self.save(plan, step, &mut rec).await?;
        obs.on_event(&Event::Applying { step: step.id.clone(), reason: reason.to_string(), resumed });
        let applied = match work.apply(step, &reason).await {
            Ok(a) => a,
            Err(e) => return self.fail(plan, step, rec, e, obs).await,
        };
        rec.status = Some(Status::Started);
        self.save(plan, step, &mut rec).await?;
        // The check after the work, unless the wait for it already saw it pass.
        let mut passed = false;
        if applied == Applied::InProgress {
            loop {
                match work.check(step).await {
                    Ok(CheckResult::Needed) => {}
                    Ok(_) => {
                        passed = true;
                        break;
                    }
                    Err(e) => {
                        return self.fail(plan, step, rec, format!("check could not run: {e}"), obs).await
                    }
                }
                if let Err(e) = work.progress(step).await {
                    return self.fail(plan, step, rec, e, obs).await;
                }
            }
        }
        let after = if passed { Ok(CheckResult::Done) } else { work.check(step).await };
        match after {
            Ok(CheckResult::Needed) => {
                let e =
                    "logic error: the check still says work is needed after the work succeeded".to_string();
                return self.fail(plan, step, rec, e, obs).await;
            }
            Ok(_) => {}
            Err(e) => {
                return self
                    .fail(plan, step, rec, format!("check could not run after the work: {e}"), obs)
                    .await
            }
        }
        self.complete(plan, step, &mut rec, &inputs, work).await?;
        obs.on_event(&Event::Completed {
            step: step.id.clone(),
            elapsed_ms: self.clock.now_ms().saturating_sub(t0),
        });
        Ok((rec, Visit::Applied { resumed }))
    }

    async fn complete(
        &self,
        plan: &Plan,
        step: &StepNode,
        rec: &mut StepRecord,
        inputs: &BTreeMap<String, String>,
        work: &dyn StepWork,
    ) -> Result<(), EngineError> {
        let fp = match work.fingerprint(step).await {
            Ok(Some(f)) => f,
            // Unchanged inputs keep their default fingerprint, also one computed from inputs
            // recorded in an older form (see `normalize_inputs`): downstream sees no change.
            Ok(None) => match &rec.fingerprint {
                Some(f) if f.starts_with("in:") && rec.completed_once && rec.inputs == *inputs => f.clone(),
                _ => inputs_fingerprint(inputs),
            },
            Err(e) => format!("unreadable:{e}"),
        };
        rec.status = Some(Status::Complete);
        rec.completed_once = true;
        rec.forced = false;
        rec.last_error = None;
        rec.inputs = inputs.clone();
        rec.fingerprint = Some(fp);
        self.save(plan, step, rec).await
    }

    async fn fail(
        &self,
        plan: &Plan,
        step: &StepNode,
        mut rec: StepRecord,
        error: String,
        obs: &dyn Observer,
    ) -> Result<(StepRecord, Visit), EngineError> {
        rec.status = Some(Status::Error);
        rec.last_error = Some(error.clone());
        self.save(plan, step, &mut rec).await?;
        obs.on_event(&Event::Failed { step: step.id.clone(), error: error.clone() });
        Ok((rec, Visit::Failed(error)))
    }

    /// The persisted view of the plan.
    pub async fn view(&self, plan: &Plan) -> Result<PlanView, EngineError> {
        let records = self.records(plan).await?;
        let ctl = self.control(plan).await?;
        let mut phases = Vec::new();
        for (pi, p) in plan.def.phases.iter().enumerate() {
            let steps: Vec<(String, StepRecord)> = plan.phases[pi]
                .steps
                .clone()
                .map(|i| (plan.steps[i].name.clone(), records[i].clone()))
                .collect();
            let interrupted = ctl.interrupted_phases.contains(&p.name);
            let status = summarize(steps.iter().map(|(_, r)| r.status()));
            phases.push(PhaseView { name: p.name.clone(), status, interrupted, steps });
        }
        let status = summarize(phases.iter().map(|p| p.status));
        Ok(PlanView { name: plan.def.name.clone(), status, interrupted: ctl.interrupted, phases })
    }

    fn target_steps(&self, plan: &Plan, target: &Target) -> Result<Vec<usize>, EngineError> {
        let nf = |what, name: &str| EngineError::NotFound {
            plan: plan.def.name.clone(),
            what,
            name: name.to_string(),
        };
        match target {
            Target::Plan => Ok((0..plan.steps.len()).collect()),
            Target::Phase(p) => {
                let pi = plan.def.phases.iter().position(|x| &x.name == p).ok_or_else(|| nf("phase", p))?;
                Ok(plan.phases[pi].steps.clone().collect())
            }
            Target::Step(id) => {
                let i = plan
                    .index(id)
                    .or_else(|| {
                        // A bare step name is accepted when it is unambiguous.
                        let m: Vec<usize> = plan
                            .steps
                            .iter()
                            .enumerate()
                            .filter(|(_, s)| &s.name == id)
                            .map(|(i, _)| i)
                            .collect();
                        (m.len() == 1).then(|| m[0])
                    })
                    .ok_or_else(|| nf("step", id))?;
                Ok(vec![i])
            }
        }
    }

    /// Changes the plan's controls; Ok(false) when `f` changed nothing (and nothing was written).
    async fn update_control(&self, plan: &Plan, f: impl Fn(&mut PlanControl)) -> Result<bool, EngineError> {
        let key = self.control_key(plan);
        for _ in 0..100 {
            let cur = self.store.get(&key).await?;
            let mut ctl: PlanControl = match &cur {
                Some(kv) => serde_json::from_slice(&kv.value)
                    .map_err(|e| EngineError::Corrupt { key: key.clone(), error: e.to_string() })?,
                None => PlanControl::default(),
            };
            let before = ctl.clone();
            f(&mut ctl);
            if ctl == before {
                return Ok(false);
            }
            let value = serde_json::to_vec(&ctl)
                .map_err(|e| EngineError::Corrupt { key: key.clone(), error: e.to_string() })?;
            let rev = cur.map_or(0, |kv| kv.mod_revision);
            let r = self
                .store
                .txn(Txn::new().when(Compare::mod_revision_eq(&key, rev)).then(TxnOp::put(&key, value)))
                .await?;
            if r.succeeded {
                return Ok(true);
            }
        }
        Err(EngineError::Contended)
    }

    fn check_phase(&self, plan: &Plan, phase: Option<&str>) -> Result<(), EngineError> {
        if let Some(p) = phase {
            if !plan.def.phases.iter().any(|x| x.name == p) {
                return Err(EngineError::NotFound {
                    plan: plan.def.name.clone(),
                    what: "phase",
                    name: p.into(),
                });
            }
        }
        Ok(())
    }

    /// Stops steps of the plan (or one phase) from starting; running steps finish.
    /// Ok(false): it was interrupted already (nothing written).
    pub async fn interrupt(&self, plan: &Plan, phase: Option<&str>) -> Result<bool, EngineError> {
        self.check_phase(plan, phase)?;
        self.update_control(plan, |c| match phase {
            None => c.interrupted = true,
            Some(p) => {
                if !c.interrupted_phases.iter().any(|x| x == p) {
                    c.interrupted_phases.push(p.to_string());
                }
            }
        })
        .await
    }

    /// Lifts an interrupt of the plan (or one phase).
    /// Ok(false): it was not interrupted (nothing written).
    pub async fn proceed(&self, plan: &Plan, phase: Option<&str>) -> Result<bool, EngineError> {
        self.check_phase(plan, phase)?;
        self.update_control(plan, |c| match phase {
            None => {
                c.interrupted = false;
                c.interrupted_phases.clear();
            }
            Some(p) => c.interrupted_phases.retain(|x| x != p),
        })
        .await
    }

    /// Marks steps complete without doing their work.
    pub async fn force_complete(&self, plan: &Plan, target: &Target) -> Result<Vec<String>, EngineError> {
        let idx = self.target_steps(plan, target)?;
        let mut records = self.records(plan).await?;
        let mut done = Vec::new();
        // Phase fingerprints from the records, computed once every phase before the target's is:
        // targets come in plan order, so an upstream phase's forced steps are recorded by then.
        let mut phase_fp: Vec<Option<String>> = vec![None; plan.phases.len()];
        let mut upto = 0;
        for i in idx {
            let step = &plan.steps[i];
            while upto < plan.phase_order.len() && plan.phase_order[upto] != step.phase {
                let p = plan.phase_order[upto];
                let fp = phase_fingerprint(
                    plan,
                    p,
                    |j| records[j].fingerprint.clone().unwrap_or_default(),
                    |u| phase_fp[u].clone().unwrap_or_default(),
                );
                phase_fp[p] = Some(fp);
                upto += 1;
            }
            let inputs = step_inputs(
                plan,
                i,
                |d| records[d].fingerprint.clone().unwrap_or_default(),
                |u| phase_fp[u].clone().unwrap_or_default(),
            );
            let rec = &mut records[i];
            rec.status = Some(Status::Complete);
            rec.completed_once = true;
            rec.forced = false;
            rec.last_error = None;
            if rec.fingerprint.is_none() {
                rec.fingerprint = Some(inputs_fingerprint(&inputs));
            }
            rec.inputs = inputs;
            let mut r = rec.clone();
            self.save(plan, step, &mut r).await?;
            records[i] = r;
            done.push(step.id.clone());
        }
        Ok(done)
    }

    /// Makes steps do their work again on the next run, whatever their check says.
    pub async fn restart(&self, plan: &Plan, target: &Target) -> Result<Vec<String>, EngineError> {
        let idx = self.target_steps(plan, target)?;
        let records = self.records(plan).await?;
        let mut done = Vec::new();
        for i in idx {
            let step = &plan.steps[i];
            let mut rec = records[i].clone();
            rec.forced = true;
            rec.status = Some(Status::Pending);
            rec.last_error = None;
            self.save(plan, step, &mut rec).await?;
            done.push(step.id.clone());
        }
        Ok(done)
    }

    /// Shows every step as pending again (a new run of the plan for a new target begins),
    /// without forcing any work: what each step does is still decided by its check and record.
    pub async fn reset(&self, plan: &Plan) -> Result<(), EngineError> {
        let records = self.records(plan).await?;
        for (step, rec) in plan.steps.iter().zip(records) {
            if rec.status.is_some() && !rec.forced {
                let mut rec = StepRecord { status: None, last_error: None, ..rec };
                self.save(plan, step, &mut rec).await?;
            }
        }
        Ok(())
    }
}

enum Visit {
    Skipped { resumed: bool },
    Applied { resumed: bool },
    Failed(String),
}

/// What one run knows about its steps and phases, kept up to date as steps finish, so that a
/// finished step costs its own dependants, not a scan of the plan.
struct RunState {
    /// Status of each step in this run (complete only once visited in this run).
    state: Vec<Status>,
    running: Vec<bool>,
    /// Steps of each phase not yet complete.
    left: Vec<usize>,
    phase_done: Vec<bool>,
    /// Combined fingerprint of each done phase.
    phase_fp: Vec<Option<String>>,
    /// Direct dependants of each step within its phase.
    dependants: Vec<Vec<usize>>,
    /// Phases waiting for each phase.
    phase_dependants: Vec<Vec<usize>>,
}

impl RunState {
    fn new(plan: &Plan) -> Self {
        let n = plan.steps.len();
        let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (j, s) in plan.steps.iter().enumerate() {
            for d in &s.deps {
                dependants[*d].push(j);
            }
        }
        let phase_dependants = (0..plan.phases.len()).map(|p| plan.phase_dependants(p)).collect();
        RunState {
            state: vec![Status::Pending; n],
            running: vec![false; n],
            left: plan.phases.iter().map(|p| p.steps.len()).collect(),
            phase_done: vec![false; plan.phases.len()],
            phase_fp: vec![None; plan.phases.len()],
            dependants,
            phase_dependants,
        }
    }

    fn ready(&self, plan: &Plan, ctl: &PlanControl) -> Vec<usize> {
        ready_steps(plan, &self.state, &self.running, &self.phase_done, ctl)
    }

    /// The inputs step `i` sees now.
    fn inputs(&self, plan: &Plan, i: usize, records: &[StepRecord]) -> BTreeMap<String, String> {
        step_inputs(
            plan,
            i,
            |d| records[d].fingerprint.clone().unwrap_or_default(),
            |u| self.phase_fp[u].clone().unwrap_or_default(),
        )
    }

    /// Marks phases done whose steps and upstream phases all are; returns them.
    fn settle(&mut self, plan: &Plan, records: &[StepRecord]) -> Vec<usize> {
        let mut newly = Vec::new();
        for &p in &plan.phase_order {
            let node = &plan.phases[p];
            if self.phase_done[p] || self.left[p] > 0 || !node.deps.iter().all(|u| self.phase_done[*u]) {
                continue;
            }
            self.phase_done[p] = true;
            let fp = phase_fingerprint(
                plan,
                p,
                |i| records[i].fingerprint.clone().unwrap_or_default(),
                |u| self.phase_fp[u].clone().unwrap_or_default(),
            );
            self.phase_fp[p] = Some(fp);
            newly.push(p);
        }
        newly
    }

    /// Step `i` finished (its state is set): the steps that may have become ready.
    fn finished(&mut self, plan: &Plan, i: usize, records: &[StepRecord]) -> Vec<usize> {
        if self.state[i] != Status::Complete {
            return Vec::new();
        }
        let mut out = self.dependants[i].clone();
        let p = plan.steps[i].phase;
        self.left[p] -= 1;
        if self.left[p] == 0 {
            for done in self.settle(plan, records) {
                for q in &self.phase_dependants[done] {
                    out.extend(plan.phases[*q].steps.clone());
                }
            }
        }
        out
    }
}
