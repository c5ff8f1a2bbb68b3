//! Wire types of services, rollouts, plans, pods, agents, endpoints, events and logs (`/v1/services/…`,
//! `/v1/agents`, `/v1/events`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::*;

/// Create or replace a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServiceRequest {
    /// The spec text (YAML).
    pub spec: String,
    /// Label for error locations (the file name on the client).
    #[serde(default)]
    pub file: Option<String>,
    /// Digests of local artifacts, by the URI written in the spec; they were uploaded first.
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
    /// Accept only if the service's current generation is this (0: it must not exist yet);
    /// 409 `stale_generation` otherwise.
    #[serde(default)]
    pub expected_generation: Option<u64>,
    /// Accept shrinking or removing a deployed pod's volumes (refused otherwise, 409
    /// `unsafe_change`). Nothing is deleted even then: the data stays in the volume set.
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// Where a service's rollout stands: the generation being rolled out and by which plan.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RolloutInfo {
    pub service: String,
    pub generation: u64,
    /// `deploy` (never fully deployed before), `update`, or `rollback`.
    pub plan: String,
    pub state: RolloutState,
    /// Whether its plan has started (before, the plan still shows an earlier run's steps).
    #[serde(default)]
    pub started: bool,
    /// The last generation fully deployed.
    #[serde(default)]
    pub deployed_generation: Option<u64>,
    /// On a rollback: the generation it undoes, and the one whose spec it restores.
    #[serde(default)]
    pub rollback_from: Option<u64>,
    #[serde(default)]
    pub rollback_to: Option<u64>,
    /// Why it failed, or why it rolls back.
    #[serde(default)]
    pub message: Option<String>,
}

/// What a spec change would do (`POST /v1/services/{name}/plan`): nothing is changed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChangePreview {
    pub service: String,
    /// The service's generation now (0: it does not exist) — the change would be the next.
    pub generation: u64,
    /// The plan that would roll it out: `deploy` or `update`.
    pub plan: String,
    pub changes: Vec<InstanceChange>,
}

/// What a spec change would do to one instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct InstanceChange {
    pub instance: String,
    pub pod: String,
    pub action: ChangeAction,
    pub data: DataFate,
    /// For a restart: the config fields that change.
    #[serde(default)]
    pub fields: Vec<FieldChange>,
    /// For a refusal: why.
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChangeAction {
    Unchanged,
    /// Its config changes: a new incarnation on the same agent and volumes.
    Restart,
    New,
    /// The new spec no longer has it: its `on_decommission` runs, it stops, its volumes are
    /// retained.
    Decommission,
    /// The change is refused (the reason says why); nothing would happen.
    Refused,
}

/// What becomes of an instance's volumes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DataFate {
    Kept,
    CreatedEmpty,
    Retained,
    /// The pod has no volumes.
    None,
}

/// A config field that changes: its dotted path, old and new values.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FieldChange {
    pub path: String,
    pub old: serde_json::Value,
    pub new: serde_json::Value,
}

/// A rollout's state.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    InProgress,
    Complete,
    /// A step failed and no rollback was made: it is retried; a new spec replaces the target.
    Failed,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub generation: u64,
    /// Set when the stored spec cannot be loaded (the service is not run; others are).
    #[serde(default)]
    pub error: Option<String>,
    pub pods: Vec<PodSummary>,
    pub plans: Vec<PlanSummary>,
    pub instances: u32,
    pub running: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PodSummary {
    pub name: String,
    pub count: u32,
    pub config: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PlanSummary {
    pub name: String,
    pub status: StepStatus,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PlanInfo {
    pub service: String,
    pub name: String,
    pub status: StepStatus,
    pub interrupted: bool,
    pub phases: Vec<PhaseInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PhaseInfo {
    pub name: String,
    pub status: StepStatus,
    pub interrupted: bool,
    pub steps: Vec<StepInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StepInfo {
    pub name: String,
    pub status: StepStatus,
    #[serde(default)]
    pub message: Option<String>,
}

/// An operator action on a plan: interrupt, continue, force-complete, restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PlanAction {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub step: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PodInfo {
    pub service: String,
    pub instance: String,
    pub pod: String,
    pub index: u32,
    pub agent: Option<String>,
    pub incarnation: u64,
    pub config: String,
    pub target_config: String,
    pub state: PodState,
    /// More on the state, e.g. "restart 6, next in 2.6 s" for a crash loop.
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub pending_reason: Option<String>,
    pub ports: BTreeMap<String, u16>,
    pub reservation: Option<ReservationInfo>,
    pub tasks: Vec<TaskStatus>,
    /// Recovery state and next action, e.g. "stopped 3 s; agent restarting it in place".
    #[serde(default)]
    pub recovery: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ReservationInfo {
    pub agent: String,
    pub cpus: f64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub ports: BTreeMap<String, u16>,
    pub volumes: Vec<String>,
    /// The volume set (`tend volume list`); its directory on the agent is `volume-sets/<id>/`.
    #[serde(default)]
    pub volume_id: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AgentInfo {
    pub id: String,
    pub host: String,
    pub attributes: BTreeMap<String, String>,
    pub resources: AgentResources,
    pub reserved_cpus: f64,
    pub reserved_memory_mb: u64,
    pub state: AgentState,
    pub last_seen_ms_ago: Option<u64>,
    #[schema(value_type = u64)]
    pub tasks: usize,
    /// Set while the agent refuses this control plane's desired state (and why).
    #[serde(default)]
    pub conflict: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Endpoint {
    pub instance: String,
    pub task: String,
    pub host: String,
    pub ports: BTreeMap<String, u16>,
    pub ready: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct EventInfo {
    pub seq: u64,
    pub time_ms: u64,
    pub service: Option<String>,
    pub kind: EventKind,
    pub message: String,
}

/// Log bytes of a task.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct LogChunk {
    pub stream: String,
    pub data: String,
    pub truncated: bool,
}
