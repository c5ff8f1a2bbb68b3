//! The volume lifecycle, pure: which volumes to retain, which to hand to their agent for
//! deletion. tend never deletes a volume on its own while anything uses it, and never before
//! its retention ends, unless a user asked.

use std::collections::BTreeSet;

use tend_model::{Millis, Volume, VolumeId, VolumeState};

/// Rule: a volume no instance uses is retained, not deleted.
pub const RULE_UNUSED_IS_RETAINED: &str = "no instance uses it any more";
/// Rule: a retained volume is deleted only once its retention ended.
pub const RULE_RETENTION_ENDED: &str = "retention ended";

/// A change to a volume record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeAction {
    Retain { id: VolumeId, until_ms: Option<Millis>, reason: String },
    Delete { id: VolumeId, reason: String },
}

/// Decides the lifecycle changes at `now_ms`. `in_use`: the volume ids that instance records
/// reference (their owners).
pub fn decide(volumes: &[Volume], in_use: &BTreeSet<VolumeId>, now_ms: Millis) -> Vec<VolumeAction> {
    let mut out = Vec::new();
    for v in volumes {
        if in_use.contains(&v.id) {
            continue; // Owned: never retained or deleted.
        }
        match &v.state {
            VolumeState::Active => out.push(VolumeAction::Retain {
                id: v.id.clone(),
                until_ms: v.retention.until(now_ms),
                reason: RULE_UNUSED_IS_RETAINED.into(),
            }),
            VolumeState::Retained { until_ms: Some(until), .. } if *until <= now_ms => {
                out.push(VolumeAction::Delete { id: v.id.clone(), reason: RULE_RETENTION_ENDED.into() })
            }
            VolumeState::Retained { .. } | VolumeState::Deleting { .. } => {}
        }
    }
    out
}

/// The volumes `agent` must delete now: marked for deletion and used by no instance.
pub fn to_release<'a>(volumes: &'a [Volume], in_use: &BTreeSet<VolumeId>, agent: &str) -> Vec<&'a VolumeId> {
    volumes
        .iter()
        .filter(|v| {
            v.agent == agent && matches!(v.state, VolumeState::Deleting { .. }) && !in_use.contains(&v.id)
        })
        .map(|v| &v.id)
        .collect()
}

/// Why a user may not delete a volume now (None: they may).
pub fn refuse_delete(v: &Volume, in_use: &BTreeSet<VolumeId>) -> Option<String> {
    if in_use.contains(&v.id) || v.state == VolumeState::Active {
        return Some(format!(
            "volume {} is in use by {}/{}; replace or delete the instance first",
            v.id, v.service, v.instance
        ));
    }
    None
}
