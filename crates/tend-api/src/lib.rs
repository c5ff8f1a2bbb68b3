//! Wire types of the v1 HTTP/JSON API, shared by the control plane, the agents and the CLI.
//!
//! These are not the domain model: the server converts between them and its records. Fields are
//! only ever added (with defaults), never renamed, within v1.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod answers;
mod auth;
mod desired_delta;
mod jobs;
mod report_delta;
mod services;
mod status;
pub use answers::{
    action_word, AgentRevoked, ArtifactStored, Health, PlanActionKind, PodActionKind, PodActionResult,
    ServiceDeleted,
};
pub use auth::{
    JoinRequest, JoinResponse, JoinTokenCreated, JoinTokenRequest, Role, TokenCreateRequest, TokenCreated,
    TokenInfo,
};
pub use desired_delta::{DesiredBook, InstanceKey, Taken};
pub use jobs::{
    JobQueued, JobRunInfo, JobRunStatus, JobStatusInfo, RunJobRequest, RunPolicy, WindowRemoved,
    WindowRequest,
};
pub use report_delta::{Delta, DeltaReporter, TaskKey, TaskSet};
pub use status::{AgentState, EventKind, PodState, ProbeKind, StepStatus};

/// The API version prefix.
pub const API_PREFIX: &str = "/v1";

/// Every error answer: `{ "error": { "code": "...", "message": "..." } }`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

// ---------- agents ----------

/// Resources an agent offers.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AgentResources {
    #[schema(exclusive_minimum = 0)]
    pub cpus: f64,
    #[schema(minimum = 1)]
    pub memory_mb: u64,
    pub disk_mb: u64,
    /// Inclusive port range tend may hand out on this agent: `[lo, hi]`, 0 < lo <= hi.
    #[schema(schema_with = port_range)]
    pub port_range: [u16; 2],
}

/// Two ports, 1 to 65535 (that the first is not above the second, JSON Schema cannot say).
fn port_range() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let port = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::UInt16)))
        .minimum(Some(1))
        .maximum(Some(65535));
    ArrayBuilder::new().items(port).min_items(Some(2)).max_items(Some(2)).build()
}

/// An agent joining (or re-joining after a restart of either side).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RegisterRequest {
    /// 1-63 lowercase letters, digits, `-` or `_`, starting and ending with a letter or digit.
    #[schema(pattern = "^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")]
    pub agent_id: String,
    /// Host clients use to reach tasks on this agent.
    pub host: String,
    /// Where the agent serves task logs (`http://host:port`).
    pub agent_url: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    pub resources: AgentResources,
    /// The cluster this agent obeyed last (None: a fresh agent). A control plane of another
    /// cluster (say, on an empty store) refuses it unless told to adopt agents.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// The highest store revision the agent obeyed: a control plane whose store is older (a
    /// restored backup) refuses it rather than command it from the past.
    #[serde(default)]
    pub revision: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct RegisterResponse {
    pub agent_id: String,
    pub status_interval_ms: u64,
    /// Changes each time the control plane starts; agents log re-registrations with it.
    pub server_epoch: String,
    /// The cluster the agent now belongs to (it remembers it).
    #[serde(default)]
    pub cluster_id: String,
    /// The store's revision when the agent was accepted (an agent adopted by an operator from a
    /// newer store starts over from it).
    #[serde(default)]
    pub revision: u64,
    /// The leadership that accepted it (see `DesiredState::epoch`).
    #[serde(default)]
    pub epoch: u64,
    /// The control plane takes status reports by difference (`StatusReport::base_seq`).
    #[serde(default)]
    pub delta_reports: bool,
}

/// What an agent must run: every live incarnation placed on it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct DesiredState {
    /// Long-poll index: pass it back as `?index=` to wait for the next change.
    pub index: u64,
    /// The cluster and the store revision this state was read at: an agent refuses a desired
    /// state from another cluster or from an older store than one it already obeyed.
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub revision: u64,
    /// The leadership that sent it (the revision at which its leader was elected; 0 without
    /// an election): an agent that obeyed epoch N refuses anything from an older one.
    #[serde(default)]
    pub epoch: u64,
    pub assignments: Vec<Assignment>,
    /// Volumes to delete on this agent (retention ended or a user asked); confirmed in status
    /// reports. Never a volume an instance uses.
    #[serde(default)]
    pub release_volumes: Vec<VolumeRelease>,
    /// Maintenance job runs to execute (each once), in the sandbox of their instance.
    #[serde(default)]
    pub job_runs: Vec<JobRun>,
    /// The control plane that answered (one id per process): a difference is computed against
    /// its own earlier answers only (`?held_from=`).
    #[serde(default)]
    pub source: String,
    /// Set: a difference on this control plane's state of that index. `assignments` are then
    /// only the instances whose assignment changed and `gone` the ones no longer desired; an
    /// agent that does not hold exactly that state asks again for everything. Absent:
    /// `assignments` is every one (job runs and volume releases are always complete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_index: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<InstanceKey>,
}

/// A maintenance job run on one pod instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobRun {
    pub run_id: String,
    pub service: String,
    pub instance: String,
    pub job: String,
    pub cmd: String,
    pub timeout_seconds: u64,
}

/// What became of a job run on its agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobResult {
    pub run_id: String,
    pub state: RunState,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub output_tail: String,
    pub started_ms: u64,
    #[serde(default)]
    pub ended_ms: Option<u64>,
}

/// A volume set to delete (by its id, never reused).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, ToSchema)]
pub struct VolumeRelease {
    pub id: String,
}

/// Where a volume set is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VolumeLife {
    /// Used by the instance that owns it.
    Active,
    /// No instance uses it: kept until `until_ms` (or until a user deletes it).
    Retained,
    /// Its agent deletes it.
    Deleting,
}

/// A volume set as `tend volume list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VolumeInfo {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub agent: String,
    pub names: Vec<String>,
    pub size_mb: u64,
    pub created_ms: u64,
    pub state: VolumeLife,
    /// Since when it is retained or being deleted.
    pub since_ms: Option<u64>,
    /// When a retained volume will be deleted (None: kept until a user deletes it).
    pub until_ms: Option<u64>,
    pub reason: Option<String>,
}

/// One incarnation of a pod instance on an agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Assignment {
    pub service: String,
    pub pod: String,
    pub pod_index: u32,
    /// `pod-index`, e.g. `data-2`.
    pub instance: String,
    /// Fences stale launches: an agent runs at most the highest incarnation of an instance.
    pub incarnation: u64,
    pub config: String,
    pub ports: BTreeMap<String, u16>,
    pub env: BTreeMap<String, String>,
    pub artifacts: Vec<ArtifactRef>,
    pub volumes: Vec<VolumeRef>,
    pub tasks: Vec<TaskLaunch>,
    /// Backoff of in-place restarts: the first is immediate, then `initial` doubling to `max`.
    #[serde(default)]
    pub backoff: Backoff,
    /// The volume set's id: volumes live under `volume-sets/<id>/` on the agent; a new placement
    /// gets a new id (fresh volumes), ids are never reused.
    #[serde(default)]
    pub volume_id: String,
    /// Instances placed by tend before volume ids keep the old layout
    /// `volumes/<service>/<instance>/<generation>` (set only when `volume_id` is empty).
    #[serde(default)]
    pub legacy_volume_generation: Option<u64>,
    /// Fence mode: kill this incarnation after this long without contact with the control plane.
    #[serde(default)]
    pub fence_after_ms: Option<u64>,
}

/// Backoff bounds for in-place restarts, in milliseconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Running this long without exiting resets the backoff.
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial_ms: 1_000, max_ms: 60_000, reset_after_ms: 60_000 }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ArtifactRef {
    /// `http(s)://…`, `file://…`, or `tend://artifacts/<sha256>` (uploaded to the control plane).
    pub uri: String,
    pub sha256: Option<String>,
    pub extract: bool,
    /// File name in the sandbox.
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct VolumeRef {
    pub name: String,
    pub path: String,
    pub size_mb: u64,
}

/// What a task is for: kept running, run once per instance, or run to completion per incarnation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskGoal {
    Running,
    Once,
    Finish,
}

/// Where a maintenance run is on its agent.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    TimedOut,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TaskLaunch {
    pub name: String,
    pub goal: TaskGoal,
    pub cmd: String,
    pub env: BTreeMap<String, String>,
    pub memory_mb: u64,
    pub kill_grace_period_seconds: u64,
    pub essential: bool,
    pub health_check: Option<CheckSpec>,
    pub readiness_check: Option<CheckSpec>,
    /// A `once` task that already succeeded in an earlier incarnation is not run again.
    #[serde(default)]
    pub skip: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CheckSpec {
    pub kind: ProbeKind,
    #[serde(default)]
    pub cmd: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub path: Option<String>,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    pub grace_period_seconds: u64,
    pub max_consecutive_failures: u32,
}

/// What a task is doing, as its agent sees it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Fetching artifacts, preparing the sandbox, or waiting for earlier tasks.
    Starting,
    Running,
    /// Exited on its own; see exit_code.
    Exited,
    /// Killed by its agent (health check failed, or no longer desired).
    Killed,
    /// Could not start (artifact fetch, sandbox, spawn).
    Failed,
}

/// A task's status report.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct TaskStatus {
    pub service: String,
    pub instance: String,
    pub incarnation: u64,
    pub task: String,
    pub state: TaskState,
    #[serde(default)]
    pub ready: bool,
    #[serde(default)]
    pub healthy: Option<bool>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub message: Option<String>,
    pub since_ms: u64,
    /// In-place restarts of this task within its incarnation (the agent's own decision).
    #[serde(default)]
    pub restarts: u32,
    /// When the agent will relaunch it (crash loop backoff), if it is waiting to.
    #[serde(default)]
    pub next_restart_ms: Option<u64>,
    /// Consecutive quick exits before this run (2 or more: a crash loop that has not yet run
    /// long enough to reset).
    #[serde(default)]
    pub crash_loop: u32,
}

impl TaskStatus {
    /// A fresh status of one task of an assignment, in `state` since `since_ms`.
    pub fn of(
        a: &Assignment,
        task: &str,
        state: TaskState,
        message: Option<String>,
        since_ms: u64,
    ) -> TaskStatus {
        TaskStatus {
            service: a.service.clone(),
            instance: a.instance.clone(),
            incarnation: a.incarnation,
            task: task.to_string(),
            state,
            ready: false,
            healthy: None,
            exit_code: None,
            pid: None,
            message,
            since_ms,
            restarts: 0,
            next_restart_ms: None,
            crash_loop: 0,
        }
    }
}

/// An agent's full report of its tasks (also its heartbeat). Idempotent: a full snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StatusReport {
    pub seq: u64,
    pub tasks: Vec<TaskStatus>,
    /// Volume generations this agent has deleted as asked.
    #[serde(default)]
    pub released_volumes: Vec<VolumeRelease>,
    /// Job runs this agent executes or executed, until they are no longer desired.
    #[serde(default)]
    pub job_results: Vec<JobResult>,
    /// Set while the agent refuses the control plane's desired state (and why).
    #[serde(default)]
    pub conflict: Option<String>,
    /// The highest store revision whose desired state the agent obeyed: a report confirms that
    /// something is stopped only once the agent has seen a desired state at least this new.
    #[serde(default)]
    pub revision: Option<u64>,
    /// Set: `tasks` lists only the tasks whose status changed since the report `base_seq` (which
    /// this control plane acknowledged) and `gone` those no longer reported. Unset: `tasks` is
    /// every task. Agents send deltas only to a control plane that offers them at registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<TaskKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StatusAck {
    pub seq: u64,
    /// The report was a delta against a report this control plane does not hold (it restarted,
    /// or another report came in between): nothing of it was applied; send every task.
    #[serde(default)]
    pub full_needed: bool,
}

pub use services::*;

// ---------- control plane ----------

/// A member of the control plane (`tend status`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct MemberInfo {
    pub id: String,
    pub url: String,
    pub leader: bool,
    /// When it started (ms since the epoch).
    pub since_ms: u64,
}

/// The store a control plane runs on, and its health as the answering member sees it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct StoreInfo {
    /// `redb` or `etcd`.
    pub backend: String,
    /// Where: a file, or endpoints and prefix.
    pub location: String,
    pub healthy: bool,
    pub detail: String,
}

/// The control plane as one member sees it: members, the leader and its epoch, the store.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ClusterStatus {
    /// The member that answered.
    pub answered_by: String,
    /// Its role: `leader`, `follower` or `campaigning`.
    pub role: String,
    pub leader: Option<String>,
    pub epoch: u64,
    pub members: Vec<MemberInfo>,
    pub store: StoreInfo,
}
