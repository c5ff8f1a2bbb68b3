//! Storage records of the control plane (separate from the spec model and the wire types), and
//! the keys they live under.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub fn agent_key(id: &str) -> String {
    format!("agents/{id}")
}
pub fn service_key(name: &str) -> String {
    format!("services/{name}/spec")
}
pub fn instances_prefix(service: &str) -> String {
    format!("services/{service}/instances/")
}
pub fn instance_key(service: &str, instance: &str) -> String {
    format!("services/{service}/instances/{instance}")
}
pub fn plans_prefix(service: &str) -> String {
    format!("services/{service}")
}
pub fn event_key(seq: u64) -> String {
    format!("events/{seq:020}")
}

/// A registered agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub host: String,
    pub agent_url: String,
    pub attributes: BTreeMap<String, String>,
    pub cpus_milli: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub port_lo: u16,
    pub port_hi: u16,
    pub registered_ms: u64,
}

/// A service: its spec text as submitted, and the digests of uploaded artifacts.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub name: String,
    pub spec: String,
    pub file: String,
    pub generation: u64,
    #[serde(default)]
    pub artifacts: BTreeMap<String, String>,
}

/// A pod instance: its reservation (kept across relaunches) and its one live incarnation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceRecord {
    pub pod: String,
    pub index: u32,
    /// The agent holding the reservation.
    pub agent: Option<String>,
    pub cpus_milli: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
    pub ports: BTreeMap<String, u16>,
    pub volumes: Vec<String>,
    /// The incarnation agents must run (0: none yet). Persisted before any agent is told.
    pub incarnation: u64,
    /// Config identity of that incarnation.
    pub config: String,
    #[serde(default)]
    pub pending_reason: Option<String>,
    /// `once` tasks that succeeded; later incarnations skip them.
    #[serde(default)]
    pub once_done: Vec<String>,
    #[serde(default)]
    pub launched_ms: u64,
    /// Volumes live under this generation; a replacement starts a new one (fresh volumes).
    #[serde(default)]
    pub volume_generation: u64,
    /// Set on an incarnation that replaces a failed one: (old agent, old host).
    #[serde(default)]
    pub replaced_from: Option<(String, String)>,
    /// Old volume generations to delete, by agent, until that agent confirms.
    #[serde(default)]
    pub release: Vec<(String, u64)>,
}

/// Something that happened, for `tend events` and debugging.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub service: Option<String>,
    pub kind: String,
    pub message: String,
}
