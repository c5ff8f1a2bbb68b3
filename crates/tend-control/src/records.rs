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
pub fn volume_key(id: &str) -> String {
    format!("volumes/{id}")
}
pub const VOLUMES_PREFIX: &str = "volumes/";

/// The highest incarnation an instance of a deleted service reached: a re-created service's
/// instance starts above it, so incarnation numbers of an instance name only ever grow (an
/// agent that still runs the old incarnation is never told a lower number for the same name).
pub fn incarnation_floor_key(service: &str, instance: &str) -> String {
    format!("meta/incarnation-floor/{service}/{instance}")
}
/// The cluster's identity: created with the store, remembered by every agent.
pub const CLUSTER_ID_KEY: &str = "meta/cluster-id";
/// The counter volume ids are drawn from (never reused).
pub const VOLUME_SEQ_KEY: &str = "meta/volume-seq";

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
    /// The instance's volumes (a `VolumeRecord`); a new placement gets a new id, never reused.
    #[serde(default)]
    pub volume_id: Option<String>,
    /// Written by tend before volume ids: the volume generation of the old layout
    /// (`volumes/<service>/<instance>/<generation>`), kept so that an upgraded control plane
    /// still gives such an instance its data. Never written for new placements.
    #[serde(default)]
    pub volume_generation: u64,
    /// Set on an incarnation that replaces a failed one: (old agent, old host).
    #[serde(default)]
    pub replaced_from: Option<(String, String)>,
    /// When the last replacement was launched (the launch-rate limit reads it).
    #[serde(default)]
    pub replaced_ms: u64,
    /// The config that last became ready on this instance, and in which incarnation.
    #[serde(default)]
    pub ready_config: Option<String>,
    #[serde(default)]
    pub ready_incarnation: u64,
    /// Since when recovery has seen it down (from the reports it received), persisted so that a
    /// restarted control plane judges from the same time.
    #[serde(default)]
    pub down_since_ms: Option<u64>,
    /// Since when its agent is silent (from the last report received, or this control plane's
    /// start), persisted apart from `down_since_ms`: the fence wait counts from it alone.
    #[serde(default)]
    pub unreachable_since_ms: Option<u64>,
    /// When the instance was first placed (jobs count their first run from it).
    #[serde(default)]
    pub created_ms: u64,
}

impl InstanceRecord {
    /// The domain value (None: a record this version cannot read, e.g. a malformed volume id).
    pub fn to_model(&self) -> Option<tend_model::Instance> {
        use tend_model::{Incarnation, InstanceVolumes, Ready, RecoveryMarks, ReplacedFrom, Reservation};
        let set = match &self.volume_id {
            Some(id) => Some(tend_model::VolumeId::parse(id)?),
            None => None,
        };
        Some(tend_model::Instance {
            id: tend_model::InstanceId::new(self.pod.clone(), self.index),
            created_ms: self.created_ms,
            reservation: self.agent.clone().map(|agent| Reservation {
                agent,
                resources: tend_model::Resources {
                    cpus_milli: self.cpus_milli,
                    memory_mb: self.memory_mb,
                    disk_mb: self.disk_mb,
                },
                ports: self.ports.clone(),
            }),
            incarnation: (self.incarnation > 0).then(|| Incarnation {
                number: self.incarnation,
                config: self.config.clone(),
                launched_ms: self.launched_ms,
                replaced_from: self.replaced_from.clone().map(|(agent, host)| ReplacedFrom { agent, host }),
            }),
            volumes: InstanceVolumes {
                names: self.volumes.clone(),
                set,
                legacy_generation: self.volume_generation,
            },
            pending_reason: self.pending_reason.clone(),
            once_done: self.once_done.clone(),
            ready: self
                .ready_config
                .clone()
                .map(|config| Ready { config, incarnation: self.ready_incarnation }),
            recovery: RecoveryMarks {
                down_since_ms: self.down_since_ms,
                unreachable_since_ms: self.unreachable_since_ms,
                replaced_ms: self.replaced_ms,
            },
        })
    }

    /// The record of a domain value.
    pub fn from_model(i: &tend_model::Instance) -> InstanceRecord {
        let r = i.reserved();
        let inc = i.incarnation.as_ref();
        InstanceRecord {
            pod: i.id.pod.clone(),
            index: i.id.index,
            agent: i.agent().map(str::to_string),
            cpus_milli: r.cpus_milli,
            memory_mb: r.memory_mb,
            disk_mb: r.disk_mb,
            ports: i.ports().cloned().unwrap_or_default(),
            volumes: i.volumes.names.clone(),
            incarnation: i.incarnation_number(),
            config: i.config().to_string(),
            pending_reason: i.pending_reason.clone(),
            once_done: i.once_done.clone(),
            launched_ms: i.launched_ms(),
            volume_id: i.volumes.set.as_ref().map(|v| v.to_string()),
            volume_generation: i.volumes.legacy_generation,
            replaced_from: inc.and_then(|c| c.replaced_from.clone()).map(|r| (r.agent, r.host)),
            replaced_ms: i.recovery.replaced_ms,
            ready_config: i.ready.as_ref().map(|r| r.config.clone()),
            ready_incarnation: i.ready.as_ref().map_or(0, |r| r.incarnation),
            down_since_ms: i.recovery.down_since_ms,
            unreachable_since_ms: i.recovery.unreachable_since_ms,
            created_ms: i.created_ms,
        }
    }
}

impl AgentRecord {
    /// The domain value.
    pub fn to_model(&self) -> tend_model::Agent {
        tend_model::Agent {
            id: self.id.clone(),
            host: self.host.clone(),
            url: self.agent_url.clone(),
            attributes: self.attributes.clone(),
            capacity: tend_model::Resources {
                cpus_milli: self.cpus_milli,
                memory_mb: self.memory_mb,
                disk_mb: self.disk_mb,
            },
            ports: (self.port_lo, self.port_hi),
            registered_ms: self.registered_ms,
        }
    }

    /// The record of a domain value.
    pub fn from_model(a: &tend_model::Agent) -> AgentRecord {
        AgentRecord {
            id: a.id.clone(),
            host: a.host.clone(),
            agent_url: a.url.clone(),
            attributes: a.attributes.clone(),
            cpus_milli: a.capacity.cpus_milli,
            memory_mb: a.capacity.memory_mb,
            disk_mb: a.capacity.disk_mb,
            port_lo: a.ports.0,
            port_hi: a.ports.1,
            registered_ms: a.registered_ms,
        }
    }
}

/// Reads a stored instance record as the domain value (Err: why it cannot be read).
pub fn decode_instance(bytes: &[u8]) -> Result<tend_model::Instance, String> {
    let rec: InstanceRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    rec.to_model().ok_or_else(|| format!("malformed volume id {:?}", rec.volume_id))
}

/// Reads a stored agent record as the domain value.
pub fn decode_agent(bytes: &[u8]) -> Result<tend_model::Agent, String> {
    let rec: AgentRecord = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    Ok(rec.to_model())
}

/// The stored form of an agent.
pub fn encode_agent(a: &tend_model::Agent) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&AgentRecord::from_model(a)).map_err(|e| e.to_string())
}

/// The stored form of an instance.
pub fn encode_instance(i: &tend_model::Instance) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&InstanceRecord::from_model(i)).map_err(|e| e.to_string())
}

/// The lifecycle state as stored (the domain's `VolumeState` without its data).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum VolumeRecordState {
    Active,
    Retained,
    Deleting,
}

/// A set of volumes of one instance on one agent (see `tend_model::Volume`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct VolumeRecord {
    pub id: String,
    pub service: String,
    pub instance: String,
    pub agent: String,
    pub names: Vec<(String, u64)>,
    pub created_ms: u64,
    /// Retention once unused, in ms (None: forever).
    pub retain_ms: Option<u64>,
    pub state: VolumeRecordState,
    #[serde(default)]
    pub since_ms: u64,
    #[serde(default)]
    pub until_ms: Option<u64>,
    #[serde(default)]
    pub reason: String,
}

impl VolumeRecord {
    /// The domain value (None: a record this version cannot read).
    pub fn to_model(&self) -> Option<tend_model::Volume> {
        use tend_model::{Retention, VolumeState};
        let state = match self.state {
            VolumeRecordState::Active => VolumeState::Active,
            VolumeRecordState::Retained => VolumeState::Retained {
                since_ms: self.since_ms,
                until_ms: self.until_ms,
                reason: self.reason.clone(),
            },
            VolumeRecordState::Deleting => {
                VolumeState::Deleting { since_ms: self.since_ms, reason: self.reason.clone() }
            }
        };
        Some(tend_model::Volume {
            id: tend_model::VolumeId::parse(&self.id)?,
            service: self.service.clone(),
            instance: tend_model::InstanceId::parse(&self.instance)?,
            agent: self.agent.clone(),
            names: self.names.clone(),
            created_ms: self.created_ms,
            retention: self.retain_ms.map_or(Retention::Forever, Retention::For),
            state,
        })
    }

    /// Sets the lifecycle state from the domain value.
    pub fn set_state(&mut self, state: &tend_model::VolumeState) {
        use tend_model::VolumeState;
        match state {
            VolumeState::Active => {
                self.state = VolumeRecordState::Active;
                self.until_ms = None;
                self.reason.clear();
            }
            VolumeState::Retained { since_ms, until_ms, reason } => {
                self.state = VolumeRecordState::Retained;
                self.since_ms = *since_ms;
                self.until_ms = *until_ms;
                self.reason = reason.clone();
            }
            VolumeState::Deleting { since_ms, reason } => {
                self.state = VolumeRecordState::Deleting;
                self.since_ms = *since_ms;
                self.until_ms = None;
                self.reason = reason.clone();
            }
        }
    }
}

/// Something that happened, for `tend events` and debugging.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub service: Option<String>,
    pub kind: tend_api::EventKind,
    pub message: String,
}
