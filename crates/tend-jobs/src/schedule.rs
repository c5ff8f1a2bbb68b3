//! Deterministic priorities, the run queue, and job-instance status with alarms.
//!
//! Priority (ecChronos): `(whole granularity units overdue + 1) × weight`, where "overdue" counts
//! from `last success + interval − estimated duration`. On-demand runs outrank everything.

use serde::{Deserialize, Serialize};

use crate::window::{blocking, RunPolicy};

/// How much a job matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Weight {
    Low,
    Medium,
    High,
    Highest,
}

impl Weight {
    pub fn factor(self) -> i64 {
        match self {
            Weight::Low => 1,
            Weight::Medium => 2,
            Weight::High => 3,
            Weight::Highest => 100,
        }
    }
}

/// Granularity of "units overdue" for a job of this interval: a tenth of it, between 1 s and
/// 1 h (a daily job counts in hours like ecChronos, a job every few seconds in seconds).
pub fn granularity_for(interval_ms: u64) -> u64 {
    (interval_ms / 10).clamp(1_000, 3_600_000)
}
/// Units overdue are capped here, so priorities never overflow.
pub const MAX_UNITS: i64 = 1_000_000;
/// Priority of an on-demand run.
pub const ON_DEMAND: i64 = i64::MAX;

/// A job's timing as the scheduler needs it (all durations in ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTiming {
    pub interval_ms: u64,
    pub initial_delay_ms: u64,
    pub weight: Weight,
    pub backoff_ms: u64,
    pub warn_after_ms: u64,
    pub error_after_ms: u64,
    /// Size of one "unit overdue" (see [`granularity_for`]).
    pub granularity_ms: u64,
}

/// One job on one pod instance, as known now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInstance {
    pub job: String,
    pub pod: String,
    pub instance: String,
    pub timing: JobTiming,
    /// End of the last successful run (from history), if any.
    pub last_success_ms: Option<u64>,
    /// End of the last failed run after the last success, if any.
    pub last_failure_ms: Option<u64>,
    /// When the job was first known for this instance (initial delay counts from it).
    pub created_ms: u64,
    /// Estimated run duration (e.g. the last successful run's).
    pub estimate_ms: u64,
    /// An operator asked for a run.
    pub on_demand: bool,
    /// A run is under way.
    pub running: bool,
}

/// Why a due job-instance does not start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Window(String),
    Backoff { until_ms: u64 },
    HealthGate(String),
    LeaseBusy(String),
}

impl std::fmt::Display for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Block::Window(w) => write!(f, "run policy window {w}"),
            Block::Backoff { until_ms } => write!(f, "backoff after a failure until {until_ms}"),
            Block::HealthGate(why) => write!(f, "health gate: {why}"),
            Block::LeaseBusy(scope) => write!(f, "lease busy: {scope}"),
        }
    }
}

/// The moment the job-instance becomes due.
pub fn due_ms(j: &JobInstance) -> u64 {
    match j.last_success_ms {
        Some(s) => (s + j.timing.interval_ms).saturating_sub(j.estimate_ms),
        None => j.created_ms + j.timing.initial_delay_ms,
    }
}

/// The priority at `now_ms`: None when not due; `ON_DEMAND` for an on-demand run.
pub fn priority(j: &JobInstance, now_ms: u64) -> Option<i64> {
    if j.on_demand {
        return Some(ON_DEMAND);
    }
    let due = due_ms(j);
    if now_ms < due {
        return None;
    }
    let units = ((now_ms - due) / j.timing.granularity_ms.max(1)).min(MAX_UNITS as u64) as i64;
    Some((units + 1) * j.timing.weight.factor())
}

/// The next moment after `now_ms` at which this job-instance's standing can change by time
/// alone: it becomes due, its backoff ends, an alarm threshold passes, or a window that applies
/// to it opens or closes. None: nothing changes by time (only by events: a run ending, an
/// on-demand request, a new policy, the instance's health). The scheduler sleeps until then.
pub fn next_change_ms(j: &JobInstance, policies: &[RunPolicy], now_ms: u64) -> Option<u64> {
    let base = j.last_success_ms.unwrap_or(j.created_ms);
    let backoff = j.last_failure_ms.map(|f| f + j.timing.backoff_ms);
    let windows = policies.iter().filter(|p| p.applies(&j.job, &j.pod)).map(|p| p.next_boundary_ms(now_ms));
    [Some(due_ms(j)), backoff, Some(base + j.timing.warn_after_ms), Some(base + j.timing.error_after_ms)]
        .into_iter()
        .flatten()
        .chain(windows)
        .filter(|t| *t > now_ms)
        .min()
}

/// What blocks a due job-instance right now (windows, backoff), before leases and health.
pub fn block(j: &JobInstance, policies: &[RunPolicy], now_ms: u64) -> Option<Block> {
    if let Some(p) = blocking(policies, &j.job, &j.pod, now_ms) {
        return Some(Block::Window(p.describe()));
    }
    if j.on_demand {
        return None;
    }
    if let Some(f) = j.last_failure_ms {
        if now_ms < f + j.timing.backoff_ms {
            return Some(Block::Backoff { until_ms: f + j.timing.backoff_ms });
        }
    }
    None
}

/// The run queue: due, unblocked, not running job-instances, highest priority first; ties go to
/// the one due longest, then by job and instance name (so every control plane orders alike).
/// Returns indices into `jobs`.
pub fn queue(jobs: &[JobInstance], policies: &[RunPolicy], now_ms: u64) -> Vec<(usize, i64)> {
    let mut q: Vec<(usize, i64)> = jobs
        .iter()
        .enumerate()
        .filter(|(_, j)| !j.running)
        .filter_map(|(i, j)| priority(j, now_ms).map(|p| (i, p)))
        .filter(|(i, _)| block(&jobs[*i], policies, now_ms).is_none())
        .collect();
    q.sort_by(|(a, pa), (b, pb)| {
        pb.cmp(pa)
            .then_with(|| due_ms(&jobs[*a]).cmp(&due_ms(&jobs[*b])))
            .then_with(|| jobs[*a].job.cmp(&jobs[*b].job))
            .then_with(|| jobs[*a].instance.cmp(&jobs[*b].instance))
    });
    q
}

/// The status of a job-instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Succeeded within its interval.
    Completed,
    /// Due, not yet late.
    OnTime,
    /// Past warn_after without a success (warning alarm).
    Late,
    /// Past error_after without a success (error alarm).
    Overdue,
    /// Due but held back; the reason says by what.
    Blocked(String),
}

/// An alarm level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alarm {
    Warning,
    Error,
}

/// Status and alarm of a job-instance at `now_ms`. `blocked` is the reason it cannot start now
/// (window, backoff, health gate, lease), if it is due.
pub fn status(j: &JobInstance, blocked: Option<&Block>, now_ms: u64) -> (Status, Option<Alarm>) {
    let since = now_ms.saturating_sub(j.last_success_ms.unwrap_or(j.created_ms));
    let alarm = if since >= j.timing.error_after_ms {
        Some(Alarm::Error)
    } else if since >= j.timing.warn_after_ms {
        Some(Alarm::Warning)
    } else {
        None
    };
    let due = priority(j, now_ms).is_some();
    let st = match (due, blocked, alarm) {
        (true, Some(b), _) => Status::Blocked(b.to_string()),
        (_, _, Some(Alarm::Error)) => Status::Overdue,
        (_, _, Some(Alarm::Warning)) => Status::Late,
        (true, None, None) => Status::OnTime,
        (false, _, None) if j.last_success_ms.is_some() => Status::Completed,
        (false, _, None) => Status::OnTime,
    };
    (st, alarm)
}
