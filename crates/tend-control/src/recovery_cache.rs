//! What makes a recovery pass incremental: which instances may be judged differently since the
//! last pass (their record changed, their agent's report about them changed, their agent came
//! back or went silent, or a moment passed that their judgement depends on), and what the last
//! passes concluded about the others.
//!
//! The cache is derived, never a source of truth: a pass decides only from the store and the
//! reports, and the cache only spares looking again at instances whose inputs have not changed.
//! A new control plane starts with an empty cache (its first pass looks at everything), and a
//! full pass runs at least every `FULL_PASS_MS` all the same.

use std::collections::BTreeSet;
use tend_model::hash::{HashMap, HashSet};

use tend_api::{StepStatus, TaskStatus};
use tend_scheduler::recovery::InstanceView;

/// A full pass at least this often, as a safety net.
pub const FULL_PASS_MS: u64 = 60_000;

/// What agents reported since the last pass: instances whose reported tasks changed, agents
/// that reported, and agents that came back after being silent (all their instances change).
#[derive(Default)]
pub struct Reported {
    pub instances: HashMap<String, HashSet<String>>,
    pub agents: HashSet<String>,
    pub revived: HashSet<String>,
}

impl Reported {
    /// Notes a report of `agent` and the (service, instance) pairs whose tasks it changed.
    pub fn note<'a>(
        &mut self,
        agent: &str,
        was_silent: bool,
        changed: impl Iterator<Item = (&'a str, &'a str)>,
    ) {
        self.agents.insert(agent.to_string());
        if was_silent {
            self.revived.insert(agent.to_string());
        }
        for (svc, inst) in changed {
            self.instances.entry(svc.to_string()).or_default().insert(inst.to_string());
        }
    }
}

/// The (service, instance) pairs whose reported tasks differ between two reports of an agent.
pub fn changed_instances<'a>(old: &'a [TaskStatus], new: &'a [TaskStatus]) -> HashSet<(&'a str, &'a str)> {
    // An agent lists its tasks in a stable order: when both reports list the same tasks in the
    // same order, the instances that changed are those of the positions that differ.
    let same_tasks = old.len() == new.len()
        && old
            .iter()
            .zip(new)
            .all(|(o, n)| o.service == n.service && o.instance == n.instance && o.task == n.task);
    if same_tasks {
        return old
            .iter()
            .zip(new)
            .filter(|(o, n)| o != n)
            .map(|(_, n)| (n.service.as_str(), n.instance.as_str()))
            .collect();
    }
    fn group(ts: &[TaskStatus]) -> HashMap<(&str, &str), Vec<&TaskStatus>> {
        let mut m: HashMap<(&str, &str), Vec<&TaskStatus>> = HashMap::default();
        for t in ts {
            m.entry((t.service.as_str(), t.instance.as_str())).or_default().push(t);
        }
        m
    }
    let (o, n) = (group(old), group(new));
    o.keys().chain(n.keys()).filter(|k| o.get(*k) != n.get(*k)).copied().collect()
}

/// What the last pass concluded about an instance that is not simply up: its view for the
/// failure monitor, the line recovery shows, and when time alone could change its judgement.
#[derive(Clone, Debug)]
pub struct Entry {
    pub view: Option<InstanceView>,
    pub note: Option<(StepStatus, String)>,
}

/// One service's part of the cache.
#[derive(Default)]
pub struct ServiceCache {
    /// The pods' target configs the entries were judged against (a change: look at everything).
    pub targets: std::collections::BTreeMap<String, String>,
    /// Instances that are down, replacing, held or waiting (decide and the board read these).
    pub entries: HashMap<String, Entry>,
    /// When to look again at an instance, whatever the reports say.
    pub due: BTreeSet<(u64, String)>,
    pub due_of: HashMap<String, u64>,
    /// Instances not on their target config: a step may hold them, which changes without a
    /// record or a report changing, so they are looked at on every pass.
    pub off_target: HashSet<String>,
    /// When the service's last replacement was launched (the launch-rate limit).
    pub last_launch: Option<u64>,
}

impl ServiceCache {
    /// Sets (or clears) when to look at `inst` again.
    pub fn set_due(&mut self, inst: &str, at: Option<u64>) {
        if let Some(old) = self.due_of.remove(inst) {
            self.due.remove(&(old, inst.to_string()));
        }
        if let Some(t) = at {
            self.due.insert((t, inst.to_string()));
            self.due_of.insert(inst.to_string(), t);
        }
    }

    /// The instances due by `now`.
    pub fn due_by(&self, now: u64) -> impl Iterator<Item = &String> + '_ {
        self.due.iter().take_while(move |(t, _)| *t <= now).map(|(_, i)| i)
    }

    /// Forgets an instance (its record is gone).
    pub fn forget(&mut self, inst: &str) {
        self.set_due(inst, None);
        self.entries.remove(inst);
        self.off_target.remove(inst);
    }

    /// The earliest moment an instance is due.
    pub fn next_due(&self) -> Option<u64> {
        self.due.iter().next().map(|(t, _)| *t)
    }
}

/// Recovery's derived memory between passes.
#[derive(Default)]
pub struct RecoveryCache {
    pub services: HashMap<String, ServiceCache>,
    /// Agents seen up by the last pass, and when each counts as lost unless it reports again.
    pub up: HashSet<String>,
    pub lost_at: BTreeSet<(u64, String)>,
    pub lost_at_of: HashMap<String, u64>,
    pub last_full_ms: Option<u64>,
}

impl RecoveryCache {
    /// Whether this pass must look at everything.
    pub fn full_due(&self, now: u64) -> bool {
        self.last_full_ms.is_none_or(|t| now.saturating_sub(t) >= FULL_PASS_MS)
    }

    /// Notes that `agent` reported: it counts as lost at `lost_at` unless it reports again.
    pub fn heard(&mut self, agent: &str, lost_at: u64) {
        if let Some(old) = self.lost_at_of.insert(agent.to_string(), lost_at) {
            self.lost_at.remove(&(old, agent.to_string()));
        }
        self.lost_at.insert((lost_at, agent.to_string()));
        self.up.insert(agent.to_string());
    }

    /// Agents whose lost deadline has passed since the last pass (their instances must be
    /// judged again); they are forgotten until they report.
    pub fn newly_lost(&mut self, now: u64) -> Vec<String> {
        let due: Vec<(u64, String)> = self.lost_at.iter().take_while(|(t, _)| *t <= now).cloned().collect();
        for (t, a) in &due {
            self.lost_at.remove(&(*t, a.clone()));
            self.lost_at_of.remove(a);
            self.up.remove(a);
        }
        due.into_iter().map(|(_, a)| a).collect()
    }

    /// The earliest moment an agent counts as lost.
    pub fn next_lost(&self) -> Option<u64> {
        self.lost_at.iter().next().map(|(t, _)| *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tend_api::TaskState;

    fn task(inst: &str, state: TaskState, restarts: u32) -> TaskStatus {
        TaskStatus {
            service: "s".into(),
            instance: inst.into(),
            incarnation: 1,
            task: "t".into(),
            state,
            ready: false,
            healthy: None,
            exit_code: None,
            pid: None,
            message: None,
            since_ms: 0,
            restarts,
            next_restart_ms: None,
            crash_loop: 0,
        }
    }

    #[test]
    fn only_instances_whose_tasks_differ_change() {
        let old = vec![task("a-0", TaskState::Running, 0), task("a-1", TaskState::Running, 0)];
        let new = vec![
            task("a-0", TaskState::Running, 0),
            task("a-1", TaskState::Running, 1),
            task("a-2", TaskState::Starting, 0),
        ];
        let mut got: Vec<_> = changed_instances(&old, &new).into_iter().collect();
        got.sort();
        assert_eq!(got, vec![("s", "a-1"), ("s", "a-2")]);
        // An instance no longer reported changed too.
        let got: Vec<_> = changed_instances(&new, &new[..1]).into_iter().collect();
        assert_eq!(got.len(), 2);
        // The same tasks in the same order (the usual report): the positions that differ.
        let mut same = new.clone();
        same[2].state = TaskState::Running;
        assert_eq!(changed_instances(&new, &same).into_iter().collect::<Vec<_>>(), vec![("s", "a-2")]);
        assert!(changed_instances(&new, &new).is_empty());
        // The same tasks in another order: nothing changed.
        let mut shuffled = new.clone();
        shuffled.reverse();
        assert!(changed_instances(&new, &shuffled).is_empty());
    }

    #[test]
    fn due_and_lost_deadlines_come_in_order() {
        let mut c = ServiceCache::default();
        c.set_due("a-1", Some(50));
        c.set_due("a-0", Some(10));
        c.set_due("a-1", Some(5));
        assert_eq!(c.due_by(10).cloned().collect::<Vec<_>>(), vec!["a-1".to_string(), "a-0".to_string()]);
        c.forget("a-1");
        assert_eq!(c.next_due(), Some(10));
        let mut r = RecoveryCache::default();
        r.heard("x", 100);
        r.heard("x", 200);
        r.heard("y", 150);
        assert_eq!(r.newly_lost(160), vec!["y".to_string()]);
        assert_eq!(r.next_lost(), Some(200));
        assert!(r.up.contains("x") && !r.up.contains("y"));
    }
}
