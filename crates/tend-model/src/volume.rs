//! Persistent volumes as the control plane tracks them: who owns them, where they are, and how
//! long they are kept once no instance uses them. tend never deletes a volume on its own: a
//! volume no instance uses is *retained* until its retention ends or a user deletes it.

use crate::{InstanceId, Millis, VolumeId};

/// How long a volume is kept once no instance uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retention {
    /// Kept this many milliseconds, then deleted.
    For(Millis),
    /// Kept until a user deletes it.
    Forever,
}

impl Retention {
    /// The deadline for a volume retained at `since_ms` (None: forever).
    pub fn until(&self, since_ms: Millis) -> Option<Millis> {
        match self {
            Retention::For(ms) => Some(since_ms.saturating_add(*ms)),
            Retention::Forever => None,
        }
    }
}

/// Where a volume is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeState {
    /// Used by the instance that owns it.
    Active,
    /// No instance uses it any more (replaced, decommissioned, service deleted): kept until
    /// `until_ms` (None: until a user deletes it).
    Retained { since_ms: Millis, until_ms: Option<Millis>, reason: String },
    /// To be deleted by its agent (retention ended or a user asked); the record goes once the
    /// agent confirms.
    Deleting { since_ms: Millis, reason: String },
}

/// The volumes of one pod instance on one agent, under an id that is never reused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub id: VolumeId,
    pub service: String,
    pub instance: InstanceId,
    pub agent: String,
    /// The spec's volume names and sizes.
    pub names: Vec<(String, u64)>,
    pub created_ms: Millis,
    pub retention: Retention,
    pub state: VolumeState,
}

impl Volume {
    pub fn size_mb(&self) -> u64 {
        self.names.iter().map(|(_, s)| s).sum()
    }
}
