//! Step and plan status, the persisted step record, and the pure decisions of the engine:
//! which steps may start, whether a step must do work, what a plan's status is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::Plan;

/// The status of a step (and, summarised, of a phase or plan).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Not yet looked at in this run.
    Pending,
    /// Its dependencies are complete; its check is running.
    Prepared,
    /// Its work (apply) is running. Persisted before the work starts: intent before action.
    Starting,
    /// Its work returned; waiting for the check to confirm.
    Started,
    /// The desired state is reached.
    Complete,
    /// Held back by an operator interrupt.
    Waiting,
    /// Its work failed, or its check still said "work needed" after the work (a logic error).
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Prepared => "prepared",
            Status::Starting => "starting",
            Status::Started => "started",
            Status::Complete => "complete",
            Status::Waiting => "waiting",
            Status::Error => "error",
        }
    }
}

/// What the engine remembers about a step between runs (a storage record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub status: Option<Status>,
    /// Fingerprints of the dependencies at the last successful completion.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    /// What this step published at its last completion.
    #[serde(default)]
    pub fingerprint: Option<String>,
    /// Whether the step ever completed.
    #[serde(default)]
    pub completed_once: bool,
    /// The next visit must do the work even if its check passes (operator restart, replay).
    #[serde(default)]
    pub forced: bool,
    /// Times its work was started.
    #[serde(default)]
    pub applies: u64,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub updated_ms: u64,
}

impl StepRecord {
    pub fn status(&self) -> Status {
        self.status.unwrap_or(Status::Pending)
    }
}

/// Operator controls of a plan (a storage record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanControl {
    /// The whole plan is interrupted: no step starts.
    #[serde(default)]
    pub interrupted: bool,
    /// Interrupted phases, by name.
    #[serde(default)]
    pub interrupted_phases: Vec<String>,
}

impl PlanControl {
    /// Whether steps of `phase` may start.
    pub fn may_start(&self, phase: &str) -> bool {
        !self.interrupted && !self.interrupted_phases.iter().any(|p| p == phase)
    }
}

/// The result of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// The desired state is reached.
    Done,
    /// Work is needed.
    Needed,
    /// The step has no check: the record decides.
    NoCheck,
}

/// Why a step will do its work (or that it will not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Skip,
    Apply(ApplyReason),
}

/// Why work is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyReason {
    /// The check says the desired state is not reached.
    CheckFailed,
    /// An operator restart or a replay asked for it.
    Forced,
    /// A dependency published a different fingerprint since the last success.
    InputsChanged(Vec<String>),
    /// No check, and no successful run on record (or it was interrupted).
    NeverCompleted,
}

impl std::fmt::Display for ApplyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApplyReason::CheckFailed => f.write_str("check says work is needed"),
            ApplyReason::Forced => f.write_str("restart requested"),
            ApplyReason::InputsChanged(d) => write!(f, "input changed: {}", d.join(", ")),
            ApplyReason::NeverCompleted => f.write_str("not completed before"),
        }
    }
}

/// Dependencies whose fingerprint differs from the one recorded at the last success.
pub fn changed_inputs(record: &StepRecord, inputs: &BTreeMap<String, String>) -> Vec<String> {
    if !record.completed_once {
        return Vec::new();
    }
    let mut changed: Vec<String> =
        inputs.iter().filter(|(k, v)| record.inputs.get(*k) != Some(*v)).map(|(k, _)| k.clone()).collect();
    changed.extend(record.inputs.keys().filter(|k| !inputs.contains_key(*k)).cloned());
    changed
}

/// Whether the step must do work, given its record, its current inputs and its check.
/// Forced and changed inputs win over a passing check; the check is only consulted otherwise.
pub fn decide(record: &StepRecord, inputs: &BTreeMap<String, String>, check: CheckResult) -> Decision {
    if record.forced {
        return Decision::Apply(ApplyReason::Forced);
    }
    let changed = changed_inputs(record, inputs);
    if !changed.is_empty() {
        return Decision::Apply(ApplyReason::InputsChanged(changed));
    }
    match check {
        CheckResult::Done => Decision::Skip,
        CheckResult::Needed => Decision::Apply(ApplyReason::CheckFailed),
        CheckResult::NoCheck if record.completed_once && record.status() == Status::Complete => {
            Decision::Skip
        }
        CheckResult::NoCheck => Decision::Apply(ApplyReason::NeverCompleted),
    }
}

/// Whether a decision needs the check to be run first (skipped when the answer is known anyway).
pub fn needs_check(record: &StepRecord, inputs: &BTreeMap<String, String>) -> bool {
    !record.forced && changed_inputs(record, inputs).is_empty()
}

/// The default fingerprint of a step that declares none: a hash of its inputs, so a change
/// upstream flows through it and a re-run with the same inputs does not.
pub fn inputs_fingerprint(inputs: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in inputs {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    format!("in:{}", &hex::encode(h.finalize())[..32])
}

/// The input key under which a step sees an upstream phase: the combined fingerprint of all
/// its steps.
pub fn phase_key(plan: &Plan, pi: usize) -> String {
    format!("{}/*", plan.def.phases[pi].name)
}

/// The combined fingerprint of phase `pi`: a hash of its steps' ids and fingerprints, in plan
/// order (`fp(i)` gives step i's). An empty phase passes its upstream phases' fingerprints
/// through (`upstream(u)` gives phase u's), so it does not cut a chain of phases.
pub fn phase_fingerprint(
    plan: &Plan,
    pi: usize,
    fp: impl Fn(usize) -> String,
    upstream: impl Fn(usize) -> String,
) -> String {
    let mut h = Sha256::new();
    let node = &plan.phases[pi];
    for i in node.steps.clone() {
        h.update(plan.steps[i].id.as_bytes());
        h.update([0]);
        h.update(fp(i).as_bytes());
        h.update([0]);
    }
    if node.steps.is_empty() {
        for u in &node.deps {
            h.update(phase_key(plan, *u).as_bytes());
            h.update([0]);
            h.update(upstream(*u).as_bytes());
            h.update([0]);
        }
    }
    format!("phase:{}", &hex::encode(h.finalize())[..32])
}

/// What step `i` depends on and the fingerprints they published: the steps of its phase it
/// waits for, by step id, and each upstream phase, by [`phase_key`].
pub fn step_inputs(
    plan: &Plan,
    i: usize,
    fp: impl Fn(usize) -> String,
    phase_fp: impl Fn(usize) -> String,
) -> BTreeMap<String, String> {
    let s = &plan.steps[i];
    let mut inputs: BTreeMap<String, String> =
        s.deps.iter().map(|d| (plan.steps[*d].id.clone(), fp(*d))).collect();
    for u in &plan.phases[s.phase].deps {
        inputs.insert(phase_key(plan, *u), phase_fp(*u));
    }
    inputs
}

/// Rewrites inputs recorded before phases were barriers (every step of an upstream phase by
/// its id) into today's form (one combined fingerprint per upstream phase), so that an upgrade
/// does not make every step look changed. Inputs in today's form are left as they are.
pub fn normalize_inputs(plan: &Plan, i: usize, rec: &mut StepRecord) {
    let Some(s) = plan.steps.get(i) else { return };
    for &u in &plan.phases[s.phase].deps {
        let key = phase_key(plan, u);
        let prefix = format!("{}/", plan.def.phases[u].name);
        if rec.inputs.contains_key(&key) || !rec.inputs.keys().any(|k| k.starts_with(&prefix)) {
            continue;
        }
        let old = std::mem::take(&mut rec.inputs);
        let (legacy, rest): (BTreeMap<_, _>, BTreeMap<_, _>) =
            old.into_iter().partition(|(k, _)| k.starts_with(&prefix) && k != &key);
        rec.inputs = rest;
        let combined = phase_fingerprint(
            plan,
            u,
            |j| legacy.get(&plan.steps[j].id).cloned().unwrap_or_default(),
            |_| String::new(),
        );
        rec.inputs.insert(key, combined);
    }
}

/// Steps that may start now: not complete, not failed, not running, dependencies complete and
/// their phase not interrupted. `phase_done[p]`: phase p's steps are complete and so are the phases
/// it follows (kept up to date by the caller).
pub fn ready_steps(
    plan: &Plan,
    state: &[Status],
    running: &[bool],
    phase_done: &[bool],
    ctl: &PlanControl,
) -> Vec<usize> {
    (0..plan.steps.len()).filter(|i| is_ready(plan, state, running, phase_done, ctl, *i)).collect()
}

/// Whether the steps and phases step `i` waits for are complete.
fn deps_complete(plan: &Plan, state: &[Status], phase_done: &[bool], i: usize) -> bool {
    let s = &plan.steps[i];
    plan.phases[s.phase].deps.iter().all(|u| phase_done[*u])
        && s.deps.iter().all(|d| state[*d] == Status::Complete)
}

/// Whether step `i` may start now (see [`ready_steps`]).
pub fn is_ready(
    plan: &Plan,
    state: &[Status],
    running: &[bool],
    phase_done: &[bool],
    ctl: &PlanControl,
    i: usize,
) -> bool {
    let Some(s) = plan.steps.get(i) else { return false };
    matches!(
        state[i],
        Status::Pending | Status::Waiting | Status::Prepared | Status::Starting | Status::Started
    ) && !running[i]
        && deps_complete(plan, state, phase_done, i)
        && ctl.may_start(&plan.def.phases[s.phase].name)
}

/// Steps held back by an interrupt (their dependencies are complete but their phase is stopped).
pub fn held_steps(plan: &Plan, state: &[Status], phase_done: &[bool], ctl: &PlanControl) -> Vec<usize> {
    (0..plan.steps.len())
        .filter(|i| {
            state[*i] != Status::Complete
                && state[*i] != Status::Error
                && deps_complete(plan, state, phase_done, *i)
                && !ctl.may_start(&plan.def.phases[plan.steps[*i].phase].name)
        })
        .collect()
}

/// For each phase that is not done, the first step that holds it up (its own, or an upstream
/// phase's when all of its own are complete).
pub fn phase_blockers(plan: &Plan, state: &[Status], phase_done: &[bool]) -> Vec<Option<usize>> {
    let mut out: Vec<Option<usize>> = vec![None; plan.phases.len()];
    for &p in &plan.phase_order {
        if phase_done[p] {
            continue;
        }
        let node = &plan.phases[p];
        out[p] = node
            .steps
            .clone()
            .find(|i| state[*i] != Status::Complete)
            .or_else(|| node.deps.iter().find(|u| !phase_done[**u]).and_then(|u| out[*u]));
    }
    out
}

/// The status of a group of steps: error if any failed, complete if all are, waiting if any is
/// held, in progress (starting/started) if any is working, else pending.
pub fn summarize(statuses: impl IntoIterator<Item = Status>) -> Status {
    let v: Vec<Status> = statuses.into_iter().collect();
    if v.contains(&Status::Error) {
        Status::Error
    } else if v.iter().all(|s| *s == Status::Complete) {
        Status::Complete
    } else if v.contains(&Status::Waiting) {
        Status::Waiting
    } else if v.iter().any(|s| matches!(s, Status::Starting | Status::Started | Status::Prepared)) {
        Status::Starting
    } else if v.contains(&Status::Complete) {
        Status::Started
    } else {
        Status::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(completed: bool, forced: bool, inputs: &[(&str, &str)]) -> StepRecord {
        StepRecord {
            status: Some(if completed { Status::Complete } else { Status::Pending }),
            completed_once: completed,
            forced,
            inputs: inputs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            ..Default::default()
        }
    }

    /// (case, record, current inputs, check, expected decision)
    #[test]
    fn decisions() {
        use ApplyReason::*;
        use CheckResult::*;
        let cur = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
        };
        type Case = (&'static str, StepRecord, BTreeMap<String, String>, CheckResult, Decision);
        let cases: Vec<Case> = vec![
            ("fresh, check passes", rec(false, false, &[]), cur(&[]), Done, Decision::Skip),
            ("fresh, check fails", rec(false, false, &[]), cur(&[]), Needed, Decision::Apply(CheckFailed)),
            ("fresh, no check", rec(false, false, &[]), cur(&[]), NoCheck, Decision::Apply(NeverCompleted)),
            ("done, no check", rec(true, false, &[("a", "1")]), cur(&[("a", "1")]), NoCheck, Decision::Skip),
            ("done, check passes", rec(true, false, &[("a", "1")]), cur(&[("a", "1")]), Done, Decision::Skip),
            (
                "done, check fails",
                rec(true, false, &[("a", "1")]),
                cur(&[("a", "1")]),
                Needed,
                Decision::Apply(CheckFailed),
            ),
            (
                "input changed beats a passing check",
                rec(true, false, &[("a", "1")]),
                cur(&[("a", "2")]),
                Done,
                Decision::Apply(InputsChanged(vec!["a".into()])),
            ),
            (
                "input added",
                rec(true, false, &[("a", "1")]),
                cur(&[("a", "1"), ("b", "1")]),
                Done,
                Decision::Apply(InputsChanged(vec!["b".into()])),
            ),
            (
                "forced beats everything",
                rec(true, true, &[("a", "1")]),
                cur(&[("a", "1")]),
                Done,
                Decision::Apply(Forced),
            ),
        ];
        for (what, r, inputs, check, want) in cases {
            assert_eq!(decide(&r, &inputs, check), want, "{what}");
        }
    }

    #[test]
    fn summaries() {
        use Status::*;
        let cases: &[(&[Status], Status)] = &[
            (&[Complete, Complete], Complete),
            (&[Complete, Error, Pending], Error),
            (&[Complete, Pending], Started),
            (&[Pending, Pending], Pending),
            (&[Complete, Starting], Starting),
            (&[Complete, Waiting], Waiting),
            (&[], Complete),
        ];
        for (input, want) in cases {
            assert_eq!(summarize(input.iter().copied()), *want, "{input:?}");
        }
    }

    #[test]
    fn inputs_fingerprint_is_order_free_and_sensitive() {
        let a: BTreeMap<String, String> = [("x".into(), "1".into()), ("y".into(), "2".into())].into();
        let b: BTreeMap<String, String> = [("y".into(), "2".into()), ("x".into(), "1".into())].into();
        let c: BTreeMap<String, String> = [("x".into(), "1".into()), ("y".into(), "3".into())].into();
        assert_eq!(inputs_fingerprint(&a), inputs_fingerprint(&b));
        assert_ne!(inputs_fingerprint(&a), inputs_fingerprint(&c));
    }
}
