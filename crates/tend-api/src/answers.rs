//! Wire types of operator commands (the words of plan and pod actions) and the answers of calls
//! that change something without returning a record of their own.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/services/{name}/plans/{plan}/{action}`: what to do to a plan (or one of its phases
/// or steps, named in the body).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlanActionKind {
    /// Stops steps of the plan (or one phase) from starting; running steps finish.
    Interrupt,
    /// Lifts an interrupt of the plan (or one phase).
    Continue,
    /// Marks steps complete without doing their work.
    ForceComplete,
    /// Makes steps do their work again on the next run, whatever their check says.
    Restart,
}

/// `POST /v1/services/{name}/pods/{instance}/{action}`: what to do to a pod instance.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PodActionKind {
    /// The next incarnation on the same agent, with the same volumes.
    Restart,
    /// A new placement (another agent when one fits) with fresh volumes; the old ones are
    /// retained.
    Replace,
}

/// Parses an action word of the URL (`None`: not one of `T`'s).
pub fn action_word<T: serde::de::DeserializeOwned>(word: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(word.to_string())).ok()
}

/// The answer to a pod action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PodActionResult {
    pub instance: String,
    pub action: PodActionKind,
    /// What was done.
    pub message: String,
}

/// The answer to `DELETE /v1/services/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ServiceDeleted {
    pub deleted: String,
    /// Launched instances that were stopped.
    pub stopped_instances: u64,
    /// Whether every agent confirmed the stop within the wait.
    pub confirmed: bool,
    /// Agents that had not confirmed the stop (they stop the tasks when they next hear from the
    /// control plane).
    pub unconfirmed_agents: Vec<String>,
    /// Volume sets kept (see `GET /v1/volumes`).
    pub retained_volumes: Vec<String>,
}

/// The answer to `PUT /v1/artifacts/{sha}`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ArtifactStored {
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// The answer to `POST /v1/agents/{id}/revoke`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AgentRevoked {
    pub agent: String,
    /// Serial numbers of the certificates refused from now on.
    pub revoked: Vec<String>,
}

/// `GET /v1/health`: the process answers. A member of a control plane also says its role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
    /// `leader`, `follower` or `campaigning` (from a control-plane member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The member's id (from a control-plane member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
}
