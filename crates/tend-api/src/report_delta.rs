//! Status reports by difference, both ends of the rule: once the control plane has acknowledged
//! a report, the agent's next one carries only the tasks whose status changed and the keys of
//! those no longer reported. Both ends keep the tasks in a [`TaskSet`] and apply a delta the same
//! way, so they hold the same tasks after every acknowledged report.

use std::collections::{HashMap, HashSet};

// Fixed: the same tasks iterate alike in every process (the simulator's seed decides all).
use foldhash::fast::FixedState;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::TaskStatus;

/// Names one reported task: a task of one incarnation of an instance.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Hash, ToSchema)]
pub struct TaskKey {
    pub service: String,
    pub instance: String,
    pub incarnation: u64,
    pub task: String,
}

impl TaskKey {
    pub fn of(t: &TaskStatus) -> TaskKey {
        TaskKey {
            service: t.service.clone(),
            instance: t.instance.clone(),
            incarnation: t.incarnation,
            task: t.task.clone(),
        }
    }
}

/// An agent's reported tasks, found by instance without allocating (service → instance →
/// positions), changed in place by a delta in time proportional to the delta.
#[derive(Clone, Debug, Default)]
pub struct TaskSet {
    tasks: Vec<TaskStatus>,
    /// Per task, the last diff that found it current (the agent's end only).
    marks: Vec<u32>,
    index: HashMap<String, HashMap<String, Vec<usize>, FixedState>, FixedState>,
    /// The last full report listed a key twice: a lookup finds the first only, so no delta is
    /// computed against these tasks.
    repeats: bool,
}

impl TaskSet {
    pub fn new(tasks: Vec<TaskStatus>) -> TaskSet {
        let mut s = TaskSet::default();
        s.replace(tasks);
        s
    }

    /// Every task, in no particular order.
    pub fn all(&self) -> &[TaskStatus] {
        &self.tasks
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Replaces every task (a full report).
    pub fn replace(&mut self, tasks: Vec<TaskStatus>) {
        self.index.clear();
        self.repeats = false;
        for (i, t) in tasks.iter().enumerate() {
            let ps = self.index.entry(t.service.clone()).or_default().entry(t.instance.clone()).or_default();
            self.repeats |= ps.iter().any(|p| tasks.get(*p).is_some_and(|o| same_key(o, t)));
            ps.push(i);
        }
        self.marks = vec![0; tasks.len()];
        self.tasks = tasks;
    }

    fn positions(&self, service: &str, instance: &str) -> &[usize] {
        self.index.get(service).and_then(|m| m.get(instance)).map_or(&[], |v| v.as_slice())
    }

    /// The reported tasks of one instance (every incarnation reported).
    pub fn of_instance<'a>(
        &'a self,
        service: &str,
        instance: &str,
    ) -> impl Iterator<Item = &'a TaskStatus> + 'a {
        self.positions(service, instance).iter().filter_map(move |i| self.tasks.get(*i))
    }

    fn position(&self, service: &str, instance: &str, incarnation: u64, task: &str) -> Option<usize> {
        self.positions(service, instance)
            .iter()
            .copied()
            .find(|p| self.tasks.get(*p).is_some_and(|t| t.incarnation == incarnation && t.task == task))
    }

    /// The task reported under the same key as `t`.
    pub fn find(&self, t: &TaskStatus) -> Option<&TaskStatus> {
        self.position(&t.service, &t.instance, t.incarnation, &t.task).and_then(|p| self.tasks.get(p))
    }

    /// Whether a task is reported under `key`.
    pub fn contains(&self, key: &TaskKey) -> bool {
        self.position(&key.service, &key.instance, key.incarnation, &key.task).is_some()
    }

    /// Applies a delta: `gone` leave, each of `changed` replaces the task of its key or joins.
    pub fn apply(&mut self, changed: Vec<TaskStatus>, gone: &[TaskKey]) {
        for k in gone {
            if let Some(p) = self.position(&k.service, &k.instance, k.incarnation, &k.task) {
                self.remove_at(p);
            }
        }
        for t in changed {
            match self.position(&t.service, &t.instance, t.incarnation, &t.task) {
                Some(p) => self.tasks[p] = t,
                None => {
                    let p = self.tasks.len();
                    self.index
                        .entry(t.service.clone())
                        .or_default()
                        .entry(t.instance.clone())
                        .or_default()
                        .push(p);
                    self.tasks.push(t);
                    self.marks.push(0);
                }
            }
        }
    }

    fn remove_at(&mut self, p: usize) {
        let last = self.tasks.len() - 1;
        let t = self.tasks.swap_remove(p);
        self.marks.swap_remove(p);
        self.reindex(&t.service, &t.instance, p, None);
        if p != last {
            let (s, i) = (self.tasks[p].service.clone(), self.tasks[p].instance.clone());
            self.reindex(&s, &i, last, Some(p));
        }
    }

    /// Moves position `from` of an instance to `to` (None: drops it).
    fn reindex(&mut self, service: &str, instance: &str, from: usize, to: Option<usize>) {
        let Some(by_inst) = self.index.get_mut(service) else { return };
        let Some(ps) = by_inst.get_mut(instance) else { return };
        match (ps.iter().position(|x| *x == from), to) {
            (Some(j), Some(to)) => ps[j] = to,
            (Some(j), None) => {
                ps.swap_remove(j);
            }
            (None, _) => {}
        }
        if ps.is_empty() {
            by_inst.remove(instance);
            if by_inst.is_empty() {
                self.index.remove(service);
            }
        }
    }
}

fn same_key(a: &TaskStatus, b: &TaskStatus) -> bool {
    a.incarnation == b.incarnation && a.task == b.task && a.instance == b.instance && a.service == b.service
}

/// What a report carries about tasks.
#[derive(Clone, Debug, PartialEq)]
pub struct Delta {
    /// None: `tasks` is every task. Some(seq): a delta against the acknowledged report `seq`.
    pub base_seq: Option<u64>,
    pub tasks: Vec<TaskStatus>,
    pub gone: Vec<TaskKey>,
}

impl Delta {
    /// Every task (what an agent sends a control plane that takes no deltas).
    pub fn full(tasks: Vec<TaskStatus>) -> Delta {
        Delta { base_seq: None, tasks, gone: Vec::new() }
    }
}

struct Sent {
    seq: u64,
    delta: Delta,
    /// The generation of the tasks it was taken from (see [`DeltaReporter::report_at`]).
    gen: Option<u64>,
}

/// The agent's end: what the control plane acknowledged, and the report in flight.
#[derive(Default)]
pub struct DeltaReporter {
    acked: Option<u64>,
    tasks: TaskSet,
    /// The generation the acknowledged tasks were taken at, when the caller counts them.
    acked_gen: Option<u64>,
    sent: Option<Sent>,
    /// Numbers the diffs (see `TaskSet::marks`).
    round: u32,
}

impl DeltaReporter {
    /// The tasks part of report `seq`, given every task the agent runs now: everything until a
    /// report is acknowledged (or when the current tasks repeat a key), else what changed.
    pub fn report<'a>(&mut self, seq: u64, current: impl IntoIterator<Item = &'a TaskStatus>) -> Delta {
        self.take(seq, None, current)
    }

    /// [`Self::report`] for an agent that numbers its tasks' generations: `gen` changes whenever
    /// a task may have changed (a start, an exit, a readiness, a task added or gone). When the
    /// acknowledged tasks were taken at `gen`, nothing changed since: the delta is empty and
    /// `current` is not called (a heartbeat costs nothing per task).
    pub fn report_at<'a, I>(&mut self, seq: u64, gen: u64, current: impl FnOnce() -> I) -> Delta
    where
        I: IntoIterator<Item = &'a TaskStatus>,
    {
        match self.acked {
            Some(base) if self.acked_gen == Some(gen) && !self.tasks.repeats => {
                // Debug builds (every test, the simulator's seeds in CI) hold the caller to its
                // promise: at an unchanged generation, the tasks are the acknowledged ones.
                #[cfg(debug_assertions)]
                {
                    let now: Vec<&TaskStatus> = current().into_iter().collect();
                    let d = self.diff(base, &now);
                    assert!(
                        d.is_some_and(|d| d.tasks.is_empty() && d.gone.is_empty()),
                        "report_at: the tasks changed at unchanged generation {gen}"
                    );
                }
                let delta = Delta { base_seq: Some(base), tasks: Vec::new(), gone: Vec::new() };
                self.sent = Some(Sent { seq, delta: delta.clone(), gen: Some(gen) });
                delta
            }
            _ => self.take(seq, Some(gen), current()),
        }
    }

    /// [`Self::report_at`] for an agent that also stamps each task with the generation its
    /// status last changed at (None: not known). A task stamped at or before the acknowledged
    /// generation is the acknowledged one and is not compared, so a report costs the tasks that
    /// changed, not every task the agent runs. The caller's promise: the stamps are honest and
    /// no key repeats. When the count does not add up (a task gone), every task is compared after
    /// all; debug builds compare every task always and fail loudly on a broken promise.
    pub fn report_stamped<'a, I>(&mut self, seq: u64, gen: u64, current: impl FnOnce() -> I) -> Delta
    where
        I: IntoIterator<Item = (&'a TaskStatus, Option<u64>)>,
    {
        let current: Vec<(&TaskStatus, Option<u64>)> = current().into_iter().collect();
        let quick = match (self.acked, self.acked_gen) {
            (Some(base), Some(acked_gen)) if acked_gen != gen && !self.tasks.repeats => {
                self.diff_stamped(base, acked_gen, &current)
            }
            _ => None,
        };
        let Some(delta) = quick else {
            return self.report_at(seq, gen, || current.iter().map(|(t, _)| *t));
        };
        #[cfg(debug_assertions)]
        {
            let all: Vec<&TaskStatus> = current.iter().map(|(t, _)| *t).collect();
            let full = delta.base_seq.and_then(|base| self.diff(base, &all));
            assert_eq!(full.as_ref(), Some(&delta), "report_stamped: a task changed after its stamp");
        }
        self.sent = Some(Sent { seq, delta: delta.clone(), gen: Some(gen) });
        delta
    }

    /// The delta against the acknowledged tasks, comparing only the tasks stamped after
    /// `acked_gen`; None when a task is gone or a key repeats (the full diff decides).
    fn diff_stamped(
        &mut self,
        base: u64,
        acked_gen: u64,
        current: &[(&TaskStatus, Option<u64>)],
    ) -> Option<Delta> {
        self.round = self.round.wrapping_add(1).max(1);
        let (round, set) = (self.round, &mut self.tasks);
        let (mut tasks, mut found) = (Vec::new(), 0usize);
        let mut fresh: HashSet<(&str, &str, u64, &str), FixedState> = HashSet::default();
        for (t, stamp) in current {
            if stamp.is_some_and(|s| s <= acked_gen) {
                found += 1;
                continue;
            }
            match set.position(&t.service, &t.instance, t.incarnation, &t.task) {
                Some(p) if set.marks[p] == round => return None,
                Some(p) => {
                    set.marks[p] = round;
                    found += 1;
                    if set.tasks[p] != **t {
                        tasks.push((*t).clone());
                    }
                }
                None if !fresh.insert((&t.service, &t.instance, t.incarnation, &t.task)) => return None,
                None => tasks.push((*t).clone()),
            }
        }
        (found == set.len()).then_some(Delta { base_seq: Some(base), tasks, gone: Vec::new() })
    }

    fn take<'a>(
        &mut self,
        seq: u64,
        gen: Option<u64>,
        current: impl IntoIterator<Item = &'a TaskStatus>,
    ) -> Delta {
        let current: Vec<&TaskStatus> = current.into_iter().collect();
        let delta = match self.acked {
            Some(base) => self.diff(base, &current),
            None => None,
        }
        .unwrap_or_else(|| Delta::full(current.iter().map(|t| (*t).clone()).collect()));
        self.sent = Some(Sent { seq, delta: delta.clone(), gen });
        delta
    }

    /// What changed since the acknowledged tasks; None: the current tasks repeat a key.
    fn diff(&mut self, base: u64, current: &[&TaskStatus]) -> Option<Delta> {
        // Acknowledged tasks that repeat a key make a key ambiguous (which one changed, which
        // one is gone): everything again, until a full report without repeats is acknowledged.
        if self.tasks.repeats {
            return None;
        }
        self.round = self.round.wrapping_add(1).max(1);
        let (round, set) = (self.round, &mut self.tasks);
        let mut tasks = Vec::new();
        let mut found = 0;
        let mut fresh: HashSet<(&str, &str, u64, &str), FixedState> = HashSet::default();
        // The agent lists its tasks in much the order they were acknowledged in: the one after
        // the last found is tried first, and only a miss is looked up.
        let mut next = 0;
        for t in current {
            let hinted = set.tasks.get(next).filter(|h| same_key(h, t)).map(|_| next);
            match hinted.or_else(|| set.position(&t.service, &t.instance, t.incarnation, &t.task)) {
                Some(p) => {
                    if set.marks[p] == round {
                        return None;
                    }
                    set.marks[p] = round;
                    next = p + 1;
                    found += 1;
                    if set.tasks[p] != **t {
                        tasks.push((*t).clone());
                    }
                }
                None => {
                    if !fresh.insert((&t.service, &t.instance, t.incarnation, &t.task)) {
                        return None;
                    }
                    tasks.push((*t).clone());
                }
            }
        }
        let gone = if found == set.len() {
            Vec::new()
        } else {
            set.tasks
                .iter()
                .zip(&set.marks)
                .filter(|(_, m)| **m != round)
                .map(|(t, _)| TaskKey::of(t))
                .collect()
        };
        Some(Delta { base_seq: Some(base), tasks, gone })
    }

    /// The control plane's answer to report `seq`: applied, or asking for every task.
    pub fn acked(&mut self, seq: u64, full_needed: bool) {
        let Some(sent) = self.sent.take() else { return };
        if full_needed {
            self.forget();
            return;
        }
        if sent.seq != seq {
            return;
        }
        match sent.delta.base_seq {
            None => self.tasks.replace(sent.delta.tasks),
            Some(_) => self.tasks.apply(sent.delta.tasks, &sent.delta.gone),
        }
        self.acked = Some(seq);
        self.acked_gen = sent.gen;
    }

    /// The report in flight got no answer: the next one differs from the same base (the
    /// control plane, if it did apply it, asks for everything).
    pub fn failed(&mut self) {
        self.sent = None;
    }

    /// Starts over with a full report (a new registration).
    pub fn forget(&mut self) {
        *self = DeltaReporter::default();
    }
}

#[cfg(test)]
#[path = "report_delta_tests.rs"]
mod tests;
