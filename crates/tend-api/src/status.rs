//! The wire's closed sets of words: plan and step statuses, pod and agent states, event kinds,
//! probe kinds.
//! Serialised as the same lowercase words as before, compared as enums on both ends.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A plan's, phase's or step's status. Deploy plans use the plan engine's statuses; the
/// recovery plan's steps say what recovery sees of an instance.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pending,
    Prepared,
    Starting,
    Started,
    Complete,
    Waiting,
    Error,
    /// The recovery plan while it has work.
    InProgress,
    /// Recovery: a task stopped; its agent restarts it in place.
    Stopped,
    /// Recovery: the instance's agent is not heard from.
    Unreachable,
    /// Recovery: a replacement is under way.
    Replacing,
    /// Recovery: the instance cannot be repaired by replacing it (e.g. a failed update).
    Blocked,
}

/// What a pod instance is doing, as the control plane sees it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PodState {
    /// Not placed yet.
    Pending,
    /// Placed, never launched.
    Reserved,
    Launching,
    Running,
    /// A task failed (and is not being restarted).
    Failed,
    /// Its agent keeps restarting a task that exits at once (`detail` says when next).
    CrashLooping,
    /// Its step of an update is under way.
    Updating,
    /// Its step of a rollback is under way.
    RollingBack,
    /// The spec no longer has it: it goes once the rollout's plan is complete.
    Decommissioning,
    /// Its agent has not reported it since this control plane started.
    Unknown,
}

/// Whether an agent is heard from.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Up,
    Lost,
}

/// What an event is about.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A service accepted, changed or deleted.
    Service,
    /// A plan's steps: failures, retries, operator actions.
    Plan,
    /// An instance placed and launched.
    Launch,
    /// An instance that cannot be placed yet.
    Pending,
    /// A restart in place: asked by an operator, or made by an agent after a task ended.
    Restart,
    /// A replacement: started, up, refused.
    Replace,
    /// Volumes retained, released, deleted.
    Volume,
    /// Maintenance job runs.
    Job,
    /// Maintenance job alarms raised and cleared.
    Alarm,
    /// Agents registering, lost, refusing.
    Agent,
    /// The control plane starting and reconciling.
    ControlPlane,
    /// A call that changed (or tried to change) something, with the token's name.
    Audit,
    /// Something that stops a service from running (e.g. a stored spec that no longer loads).
    Error,
    /// A kind this version does not know (written by a newer one).
    #[serde(other)]
    Other,
}

/// How a health or readiness check probes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// A shell command in the sandbox; exit 0 passes.
    Cmd,
    /// `GET path` on a port of the instance; a 2xx or 3xx answer passes.
    Http,
    /// A TCP connection to a port of the instance.
    Tcp,
    /// A kind this version does not know (sent by a newer control plane): never passes.
    #[serde(other)]
    Unknown,
}

/// `as_str` (the word serde writes), `Display`, and `ALL` (every value) for each enum.
macro_rules! words {
    ($($t:ident { $($v:ident => $w:literal),* $(,)? })*) => {$(
        impl $t {
            pub const ALL: &'static [$t] = &[$($t::$v),*];
            /// The word on the wire.
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $w),* }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

words! {
    StepStatus {
        Pending => "pending", Prepared => "prepared", Starting => "starting", Started => "started",
        Complete => "complete", Waiting => "waiting", Error => "error", InProgress => "in_progress",
        Stopped => "stopped", Unreachable => "unreachable", Replacing => "replacing", Blocked => "blocked",
    }
    PodState {
        Pending => "pending", Reserved => "reserved", Launching => "launching", Running => "running",
        Failed => "failed", Unknown => "unknown", CrashLooping => "crash_looping", Updating => "updating",
        RollingBack => "rolling_back", Decommissioning => "decommissioning",
    }
    AgentState { Up => "up", Lost => "lost" }
    ProbeKind { Cmd => "cmd", Http => "http", Tcp => "tcp", Unknown => "unknown" }
    EventKind {
        Service => "service", Plan => "plan", Launch => "launch", Pending => "pending",
        Restart => "restart", Replace => "replace", Volume => "volume", Job => "job", Alarm => "alarm",
        Agent => "agent", ControlPlane => "control-plane", Audit => "audit", Error => "error",
        Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every word `as_str` gives is the one serde writes and reads back.
    fn check<T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug + Copy>(
        all: &[T],
        word: fn(T) -> &'static str,
    ) {
        for v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), serde_json::Value::String(word(*v).into()), "{v:?}");
            let back: T = serde_json::from_value(serde_json::Value::String(word(*v).into())).unwrap();
            assert_eq!(back, *v);
        }
    }

    #[test]
    fn words_match_the_wire() {
        check(StepStatus::ALL, StepStatus::as_str);
        check(PodState::ALL, PodState::as_str);
        check(AgentState::ALL, AgentState::as_str);
        check(EventKind::ALL, EventKind::as_str);
        check(ProbeKind::ALL, ProbeKind::as_str);
    }

    #[test]
    fn an_event_kind_from_a_newer_version_is_other() {
        let k: EventKind = serde_json::from_str("\"rebalance\"").unwrap();
        assert_eq!(k, EventKind::Other);
    }
}
