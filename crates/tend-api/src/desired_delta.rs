//! Desired states by difference: an agent that holds the desired state of index N from one
//! control plane asks for what changed since; the control plane answers with the assignments
//! that changed and the instances that left, or with everything when it cannot say (another
//! control plane, a change every assignment may show, a history it no longer keeps). The agent
//! applies a difference only on exactly the state it was computed from, and otherwise asks for
//! everything: what it then holds is always what a full answer would have said.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{Assignment, DesiredState};

/// One pod instance of one service (an assignment that left a desired state).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash, ToSchema)]
pub struct InstanceKey {
    pub service: String,
    pub instance: String,
}

/// What an answer changed in the held desired state.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Everything was replaced: look at every assignment.
    All,
    /// Only these instances' assignments changed (or left).
    Instances(Vec<InstanceKey>),
}

/// The desired state an agent holds, built from a full answer and the differences after it.
#[derive(Debug, Default)]
pub struct DesiredBook {
    /// Which control plane, and which of its indexes, the assignments below are the state of;
    /// None: nothing held (the next answer must be a full one).
    at: Option<(String, u64)>,
    /// Shared: a caller may keep what it runs without a copy of its own.
    assignments: BTreeMap<(String, String), Arc<Assignment>>,
}

impl DesiredBook {
    pub fn new() -> DesiredBook {
        DesiredBook::default()
    }

    /// What to ask with: the control plane the held state came from (None: ask for everything).
    pub fn held_from(&self) -> Option<&str> {
        self.at.as_ref().map(|(source, _)| source.as_str())
    }

    /// Forgets what is held: the next answer taken must be a full one.
    pub fn forget(&mut self) {
        self.at = None;
    }

    /// Takes an answer. A full one replaces what is held; a difference is applied only on the
    /// state it was computed from (same control plane, same index). None: a difference on
    /// another state, not applied; what was held is forgotten, ask for everything.
    /// `d.assignments` is left holding every assignment either way it is taken.
    pub fn take(&mut self, d: &mut DesiredState) -> Option<Taken> {
        let taken = self.take_held(d)?;
        d.assignments = self.assignments.values().map(|a| (**a).clone()).collect();
        Some(taken)
    }

    /// Takes an answer without copying every assignment back into it (a caller that reads
    /// the held ones through `get` and `assignments`); `d.assignments` is left empty.
    pub fn take_held(&mut self, d: &mut DesiredState) -> Option<Taken> {
        let taken = match d.base_index {
            None => {
                self.assignments = d
                    .assignments
                    .drain(..)
                    .map(|a| ((a.service.clone(), a.instance.clone()), Arc::new(a)))
                    .collect();
                Taken::All
            }
            Some(base) => {
                if self.at.as_ref() != Some(&(d.source.clone(), base)) {
                    self.forget();
                    return None;
                }
                let mut keys = Vec::with_capacity(d.assignments.len() + d.gone.len());
                for k in d.gone.drain(..) {
                    self.assignments.remove(&(k.service.clone(), k.instance.clone()));
                    keys.push(k);
                }
                for a in d.assignments.drain(..) {
                    keys.push(InstanceKey { service: a.service.clone(), instance: a.instance.clone() });
                    self.assignments.insert((a.service.clone(), a.instance.clone()), Arc::new(a));
                }
                Taken::Instances(keys)
            }
        };
        self.at = Some((d.source.clone(), d.index));
        d.base_index = None;
        Some(taken)
    }

    /// Every held assignment, by (service, instance).
    pub fn held(&self) -> &BTreeMap<(String, String), Arc<Assignment>> {
        &self.assignments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backoff;

    fn asg(instance: &str, incarnation: u64) -> Assignment {
        Assignment {
            service: "s".into(),
            pod: "w".into(),
            pod_index: 0,
            instance: instance.into(),
            incarnation,
            config: "c".into(),
            ports: Default::default(),
            env: Default::default(),
            artifacts: Vec::new(),
            volumes: Vec::new(),
            tasks: Vec::new(),
            backoff: Backoff::default(),
            volume_id: String::new(),
            legacy_volume_generation: None,
            fence_after_ms: None,
        }
    }

    fn answer(
        source: &str,
        index: u64,
        base: Option<u64>,
        a: Vec<Assignment>,
        gone: &[&str],
    ) -> DesiredState {
        DesiredState {
            index,
            source: source.into(),
            base_index: base,
            assignments: a,
            gone: gone.iter().map(|i| InstanceKey { service: "s".into(), instance: i.to_string() }).collect(),
            ..Default::default()
        }
    }

    fn held(b: &DesiredBook) -> Vec<(String, u64)> {
        b.held().values().map(|a| (a.instance.clone(), a.incarnation)).collect()
    }

    #[test]
    fn differences_apply_only_on_the_state_they_were_computed_from() {
        let mut b = DesiredBook::new();
        assert_eq!(b.held_from(), None);
        // A difference before any full answer: not applied.
        assert_eq!(b.take(&mut answer("cp1", 5, Some(4), vec![asg("w-0", 1)], &[])), None);
        let mut d = answer("cp1", 5, None, vec![asg("w-0", 1), asg("w-1", 1)], &[]);
        assert_eq!(b.take(&mut d), Some(Taken::All));
        assert_eq!(b.held_from(), Some("cp1"));
        let mut d = answer("cp1", 9, Some(5), vec![asg("w-1", 2), asg("w-2", 1)], &["w-0"]);
        let Some(Taken::Instances(keys)) = b.take(&mut d) else { panic!("a difference on index 5") };
        assert_eq!(keys.len(), 3);
        assert_eq!(held(&b), vec![("w-1".into(), 2), ("w-2".into(), 1)]);
        assert_eq!(d.assignments.len(), 2, "the answer is left holding every assignment");
        // On another index, or from another control plane: not applied, and forgotten.
        assert_eq!(b.take(&mut answer("cp1", 12, Some(5), vec![], &["w-1"])), None);
        assert_eq!(b.held_from(), None);
        b.take(&mut answer("cp1", 13, None, vec![asg("w-1", 2)], &[]));
        assert_eq!(b.take(&mut answer("cp2", 14, Some(13), vec![], &["w-1"])), None);
    }
}
