//! Pod instances as the control plane reasons about them: the reservation an instance holds on
//! one agent (kept across relaunches), the one incarnation agents must run, and what recovery
//! remembers of it. Storage records convert to and from these in one module of the store edge.

use std::collections::BTreeMap;

use crate::{InstanceId, Millis, VolumeId};

/// Resources offered by an agent or reserved by an instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub cpus_milli: u64,
    pub memory_mb: u64,
    pub disk_mb: u64,
}

impl Resources {
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.cpus_milli <= free.cpus_milli && self.memory_mb <= free.memory_mb && self.disk_mb <= free.disk_mb
    }
    pub fn minus(&self, o: &Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_sub(o.cpus_milli),
            memory_mb: self.memory_mb.saturating_sub(o.memory_mb),
            disk_mb: self.disk_mb.saturating_sub(o.disk_mb),
        }
    }
    pub fn plus(&self, o: &Resources) -> Resources {
        Resources {
            cpus_milli: self.cpus_milli.saturating_add(o.cpus_milli),
            memory_mb: self.memory_mb.saturating_add(o.memory_mb),
            disk_mb: self.disk_mb.saturating_add(o.disk_mb),
        }
    }
}

/// What an instance holds on its agent, kept across relaunches in place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reservation {
    pub agent: String,
    pub resources: Resources,
    /// Named ports taken on the agent.
    pub ports: BTreeMap<String, u16>,
}

/// An agent an instance was replaced away from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacedFrom {
    pub agent: String,
    pub host: String,
}

/// One launch of an instance: the number agents fence by, and the config it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incarnation {
    /// Grows with every launch of the instance, never reused (1 is the first).
    pub number: u64,
    /// Config identity (a digest of the pod's effective config).
    pub config: String,
    pub launched_ms: Millis,
    /// Set when this incarnation replaces a failed one elsewhere.
    pub replaced_from: Option<ReplacedFrom>,
}

/// The instance's persistent data: the volume set it uses and its volumes' names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceVolumes {
    /// The spec's volume names the set holds.
    pub names: Vec<String>,
    /// The volume set (None: the pod has no volumes, or the set was handed over to retention).
    pub set: Option<VolumeId>,
    /// Volume generation of the layout before volume ids (`volumes/<service>/<instance>/<g>`),
    /// kept so that an upgraded control plane still gives such an instance its data (0: none).
    pub legacy_generation: u64,
}

/// The config that last became ready on an instance, and in which incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub config: String,
    pub incarnation: u64,
}

/// What recovery remembers of an instance, persisted so that a restarted control plane judges
/// from the same times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryMarks {
    /// Since when a task is down (from the reports received).
    pub down_since_ms: Option<Millis>,
    /// Since when its agent is silent (the fence wait counts from it alone).
    pub unreachable_since_ms: Option<Millis>,
    /// When the last replacement was launched (the launch-rate limit reads it; 0: never).
    pub replaced_ms: Millis,
}

/// A pod instance: where it is reserved, the incarnation agents must run, and its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub id: InstanceId,
    /// When the instance was first placed (jobs count their first run from it).
    pub created_ms: Millis,
    /// None: not placed (never, or released by a replacement that waits).
    pub reservation: Option<Reservation>,
    /// None: never launched. Persisted before any agent is told (intent before action).
    pub incarnation: Option<Incarnation>,
    pub volumes: InstanceVolumes,
    /// Why it cannot be placed or relaunched right now.
    pub pending_reason: Option<String>,
    /// `once` tasks that succeeded; later incarnations skip them.
    pub once_done: Vec<String>,
    pub ready: Option<Ready>,
    pub recovery: RecoveryMarks,
}

impl Instance {
    /// A new, unplaced instance.
    pub fn new(id: InstanceId, created_ms: Millis) -> Instance {
        Instance {
            id,
            created_ms,
            reservation: None,
            incarnation: None,
            volumes: InstanceVolumes::default(),
            pending_reason: None,
            once_done: Vec::new(),
            ready: None,
            recovery: RecoveryMarks::default(),
        }
    }

    /// The agent holding its reservation.
    pub fn agent(&self) -> Option<&str> {
        self.reservation.as_ref().map(|r| r.agent.as_str())
    }

    /// The incarnation number agents must run (0: none yet).
    pub fn incarnation_number(&self) -> u64 {
        self.incarnation.as_ref().map_or(0, |i| i.number)
    }

    /// The target incarnation's config identity ("" before the first launch).
    pub fn config(&self) -> &str {
        self.incarnation.as_ref().map_or("", |i| i.config.as_str())
    }

    /// When the target incarnation was launched (0: never).
    pub fn launched_ms(&self) -> Millis {
        self.incarnation.as_ref().map_or(0, |i| i.launched_ms)
    }

    /// Whether the target incarnation is launched on an agent (intent written, agent chosen).
    pub fn is_launched(&self) -> bool {
        self.reservation.is_some() && self.incarnation.is_some()
    }

    /// The incarnation in which the last ready config became ready (0: none).
    pub fn ready_incarnation(&self) -> u64 {
        self.ready.as_ref().map_or(0, |r| r.incarnation)
    }

    /// Where the target incarnation replaced a failed one from (None: not a replacement).
    pub fn replaced_from(&self) -> Option<&ReplacedFrom> {
        self.incarnation.as_ref().and_then(|i| i.replaced_from.as_ref())
    }

    /// The reserved resources (nothing when not placed).
    pub fn reserved(&self) -> Resources {
        self.reservation.as_ref().map(|r| r.resources).unwrap_or_default()
    }

    /// The ports it holds (none when not placed).
    pub fn ports(&self) -> Option<&BTreeMap<String, u16>> {
        self.reservation.as_ref().map(|r| &r.ports)
    }

    /// Sets the next incarnation: `number` above the current one (or `floor`, for a first launch
    /// after a deleted namesake), on `config`, launched now. Recovery starts over for it.
    pub fn next_incarnation(&mut self, floor: u64, config: String, now_ms: Millis) -> &mut Incarnation {
        let number = self.incarnation_number().max(floor) + 1;
        self.recovery.down_since_ms = None;
        self.recovery.unreachable_since_ms = None;
        self.incarnation.insert(Incarnation { number, config, launched_ms: now_ms, replaced_from: None })
    }
}

/// A registered agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    pub id: String,
    pub host: String,
    /// Where the control plane reaches it (its own HTTP endpoint).
    pub url: String,
    pub attributes: BTreeMap<String, String>,
    /// What it offers in all.
    pub capacity: Resources,
    /// The ports it hands out, inclusive.
    pub ports: (u16, u16),
    pub registered_ms: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_incarnation_grows_from_the_floor_and_resets_recovery() {
        let mut i = Instance::new(InstanceId::new("db", 0), 5);
        i.recovery.down_since_ms = Some(1);
        assert_eq!(i.next_incarnation(7, "c1".into(), 10).number, 8);
        assert_eq!(i.recovery.down_since_ms, None);
        assert_eq!(i.next_incarnation(0, "c2".into(), 11).number, 9);
        assert_eq!((i.config(), i.launched_ms()), ("c2", 11));
    }

    #[test]
    fn resources_saturate() {
        let a = Resources { cpus_milli: 1, memory_mb: u64::MAX, disk_mb: 0 };
        let b = Resources { cpus_milli: 2, memory_mb: 1, disk_mb: 0 };
        assert_eq!(a.minus(&b), Resources { cpus_milli: 0, memory_mb: u64::MAX - 1, disk_mb: 0 });
        assert_eq!(a.plus(&b).memory_mb, u64::MAX);
        assert!(!b.fits_in(&a));
    }
}
