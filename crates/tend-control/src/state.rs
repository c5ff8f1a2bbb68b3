//! The control plane's picture of every pod instance: the instance records of all services,
//! parsed once, indexed by service and by agent, and kept current from the store's watch (so a
//! change written by anyone, this process or another, shows up). Readers first wait until the
//! picture has caught up with the store's revision at the time of asking, so what they read is
//! at least as new as anything written before they asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, RwLock};
use tend_model::hash::{HashMap, HashSet};

use tend_store::{Change, EventKind, Revision, StateStore, WatchEvent, Watcher};
use tokio::sync::watch;

use tend_model::Instance;

use crate::records::{decode_instance, VolumeRecord, VolumeRecordState, VOLUMES_PREFIX};

type Key = (String, String);

#[derive(Default)]
struct Index {
    services: BTreeMap<String, BTreeMap<String, Arc<Instance>>>,
    /// The instances placed on each agent (the same `Arc`s as `services`: an agent's desired
    /// state is read without a lookup per instance among all of them).
    by_agent: BTreeMap<String, BTreeMap<Key, Arc<Instance>>>,
    /// Instance records this version cannot read (they may own volumes).
    unreadable: BTreeSet<String>,
    /// Volume records by id, with their revision.
    volumes: BTreeMap<String, (Arc<VolumeRecord>, Revision)>,
    /// Volume sets being deleted, by agent.
    deleting: BTreeMap<String, BTreeSet<String>>,
    /// How many instance records reference each volume id.
    volume_users: BTreeMap<String, u32>,
    /// Agents whose instances (which one) or volumes (None) changed since the last drain:
    /// their desired state.
    touched: Vec<(String, Option<Key>)>,
    /// What the instances placed on each agent reserve, summed (placement reads this instead
    /// of every instance).
    usage: HashMap<String, AgentUsage>,
    /// Instances placed per placement group (`service/pod`) and agent.
    groups: HashMap<String, HashMap<String, u32>>,
}

/// What the instances placed on one agent reserve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentUsage {
    pub reserved: tend_model::Resources,
    /// Ports held, with how many instances hold each (a conflict shows as a count above one).
    pub ports: BTreeMap<u16, u32>,
}

impl Index {
    /// Adds (`sign` true) or removes an instance's reservation from the aggregates.
    fn account(&mut self, svc: &str, rec: &Instance, add: bool) {
        let Some(res) = &rec.reservation else { return };
        let u = self.usage.entry(res.agent.clone()).or_default();
        if add {
            u.reserved = u.reserved.plus(&res.resources);
        } else {
            u.reserved = u.reserved.minus(&res.resources);
        }
        for p in res.ports.values() {
            let n = u.ports.entry(*p).or_default();
            *n = if add { *n + 1 } else { n.saturating_sub(1) };
            if *n == 0 {
                u.ports.remove(p);
            }
        }
        if u.ports.is_empty() && u.reserved == tend_model::Resources::default() {
            self.usage.remove(&res.agent);
        }
        let group = self.groups.entry(format!("{svc}/{}", rec.id.pod)).or_default();
        let n = group.entry(res.agent.clone()).or_default();
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
        if *n == 0 {
            group.remove(&res.agent);
        }
    }
}

impl Index {
    fn unlink(&mut self, svc: &str, inst: &str) {
        self.unlink_touching(svc, inst, true);
    }

    /// Removes an instance from the index; `touch`: its agent's desired state changes.
    fn unlink_touching(&mut self, svc: &str, inst: &str, touch: bool) {
        let old = self.services.get_mut(svc).and_then(|m| m.remove(inst));
        if let Some(old) = &old {
            self.account(svc, old, false);
        }
        if let Some(id) = old.as_ref().and_then(|r| r.volumes.set.as_ref().map(|v| v.to_string())) {
            if let Some(n) = self.volume_users.get_mut(&id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.volume_users.remove(&id);
                }
            }
        }
        if let Some(agent) = old.as_ref().and_then(|r| r.agent().map(str::to_string)) {
            if touch {
                self.touched.push((agent.clone(), Some((svc.to_string(), inst.to_string()))));
            }
            if let Some(set) = self.by_agent.get_mut(&agent) {
                set.remove(&(svc.to_string(), inst.to_string()));
                if set.is_empty() {
                    self.by_agent.remove(&agent);
                }
            }
        }
        if self.services.get(svc).is_some_and(|m| m.is_empty()) {
            self.services.remove(svc);
        }
    }

    fn put(&mut self, svc: &str, inst: &str, rec: Instance) {
        // Recovery's marks (down since, ready) are not part of any agent's desired state: a
        // record that changed only those wakes no agent.
        let old = self.services.get(svc).and_then(|m| m.get(inst));
        let touch = old.is_none_or(|o| !same_desired_state(o, &rec));
        self.unlink_touching(svc, inst, touch);
        if let Some(agent) = rec.agent().filter(|_| touch) {
            self.touched.push((agent.to_string(), Some((svc.to_string(), inst.to_string()))));
        }
        if let Some(id) = &rec.volumes.set {
            *self.volume_users.entry(id.to_string()).or_default() += 1;
        }
        self.account(svc, &rec, true);
        let rec = Arc::new(rec);
        if let Some(agent) = rec.agent() {
            let key = (svc.to_string(), inst.to_string());
            self.by_agent.entry(agent.to_string()).or_default().insert(key, rec.clone());
        }
        self.services.entry(svc.to_string()).or_default().insert(inst.to_string(), rec);
    }
}

impl Index {
    fn unlink_volume(&mut self, id: &str) {
        if let Some((old, _)) = self.volumes.remove(id) {
            self.touched.push((old.agent.clone(), None));
            if let Some(set) = self.deleting.get_mut(&old.agent) {
                set.remove(id);
                if set.is_empty() {
                    self.deleting.remove(&old.agent);
                }
            }
        }
    }

    fn put_volume(&mut self, rec: VolumeRecord, rev: Revision) {
        self.unlink_volume(&rec.id);
        self.touched.push((rec.agent.clone(), None));
        if rec.state == VolumeRecordState::Deleting {
            self.deleting.entry(rec.agent.clone()).or_default().insert(rec.id.clone());
        }
        self.volumes.insert(rec.id.clone(), (Arc::new(rec), rev));
    }

    /// Applies one stored key's new value (None: deleted).
    fn change(&mut self, key: &str, value: Option<&[u8]>, rev: Revision) {
        if let Some((svc, inst)) = instance_key(key) {
            self.unreadable.remove(key);
            match value.map(decode_instance) {
                None => self.unlink(svc, inst),
                Some(Ok(rec)) => self.put(svc, inst, rec),
                Some(Err(e)) => {
                    tracing::error!(%key, error = %e, "unreadable instance record");
                    self.unlink(svc, inst);
                    self.unreadable.insert(key.to_string());
                }
            }
        } else if let Some(id) = key.strip_prefix(VOLUMES_PREFIX) {
            match value.map(serde_json::from_slice::<VolumeRecord>) {
                None => self.unlink_volume(id),
                Some(Ok(rec)) => self.put_volume(rec, rev),
                Some(Err(e)) => tracing::warn!(%key, error = %e, "unreadable volume record kept as is"),
            }
        }
    }
}

/// Whether two records of an instance give its agent the same assignment (what
/// `deploy::assignment` and `desired::desired_for` read: placement, incarnation, volumes,
/// finished `once` tasks).
fn same_desired_state(a: &Instance, b: &Instance) -> bool {
    a.id == b.id
        && a.reservation == b.reservation
        && a.incarnation == b.incarnation
        && a.volumes == b.volumes
        && a.once_done == b.once_done
}

/// `services/<svc>/instances/<inst>` → (svc, inst).
fn instance_key(key: &str) -> Option<(&str, &str)> {
    let (svc, rest) = key.strip_prefix("services/")?.split_once('/')?;
    Some((svc, rest.strip_prefix("instances/")?))
}

/// Instances whose records changed since recovery last asked (it looks again at those only).
#[derive(Default)]
pub struct Changed {
    /// Everything may have changed (a resync): look at every instance.
    pub all: bool,
    pub instances: HashMap<String, HashSet<String>>,
}

/// Every instance, current with the store.
pub struct ClusterState {
    index: RwLock<Index>,
    changed: Mutex<Changed>,
    /// The store revision applied so far.
    applied: watch::Sender<Revision>,
    /// How to ask the watch for progress (backends whose revision moves with other keys).
    sync: Option<tend_store::SyncHandle>,
    /// Wakes the agents whose desired state a change touched.
    pub wake: crate::wake::AgentWake,
}

impl ClusterState {
    /// Loads every instance record and starts watching the store from there. The returned
    /// watcher must be fed to [`ClusterState::follow`].
    pub async fn load(
        store: &dyn StateStore,
        wake_base: u64,
    ) -> Result<(Arc<ClusterState>, Watcher), tend_store::StoreError> {
        let r = store.range("services/").await?;
        let v = store.range(VOLUMES_PREFIX).await?;
        let mut index = Index::default();
        for kv in r.kvs.iter().chain(v.kvs.iter()) {
            index.change(&kv.key, Some(&kv.value), kv.mod_revision);
        }
        // Both ranges were read at or before this revision; changes after it come by the watch
        // (a change seen twice is applied twice, harmlessly: each is a whole record).
        index.touched.clear();
        let start = r.revision.min(v.revision);
        // Everything: the applied revision must follow the store's, whatever the change.
        let watcher = store.watch("", start + 1).await?;
        let r = tend_store::RangeResponse { kvs: Vec::new(), revision: start };
        let state = Arc::new(ClusterState {
            index: RwLock::new(index),
            changed: Mutex::new(Changed { all: true, ..Default::default() }),
            applied: watch::channel(r.revision).0,
            sync: watcher.sync_handle(),
            wake: crate::wake::AgentWake::new(wake_base),
        });
        Ok((state, watcher))
    }

    /// Applies the store's changes as they come (run as a task; ends when the store does).
    pub async fn follow(self: Arc<Self>, mut watcher: Watcher) {
        while let Some(first) = watcher.next_change().await {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(change) = next.take() {
                match change {
                    Change::Event(ev) => batch.push(ev),
                    Change::Progress(rev) => {
                        self.apply(&std::mem::take(&mut batch));
                        self.mark_applied(rev);
                    }
                    Change::Resync(range) => {
                        self.apply(&std::mem::take(&mut batch));
                        self.resync(range);
                    }
                }
                next = watcher.try_next_change();
            }
            self.apply(&batch);
        }
    }

    /// Replaces the whole index with the store's keys as of `range.revision` (the watch could
    /// not resume: history was compacted).
    fn resync(&self, range: tend_store::RangeResponse) {
        let mut fresh = Index::default();
        for kv in &range.kvs {
            if kv.key.starts_with("services/") || kv.key.starts_with(VOLUMES_PREFIX) {
                fresh.change(&kv.key, Some(&kv.value), kv.mod_revision);
            }
        }
        fresh.touched.clear();
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.changed.lock().unwrap_or_else(|e| e.into_inner()).all = true;
        tracing::warn!(revision = range.revision, "cluster state resynced from the store");
        self.mark_applied(range.revision);
        // Which instances changed is not known: every agent's next answer is a full one.
        self.wake.reset();
    }

    fn mark_applied(&self, rev: Revision) {
        self.applied.send_if_modified(|r| {
            let newer = rev > *r;
            *r = (*r).max(rev);
            newer
        });
    }

    fn apply(&self, events: &[WatchEvent]) {
        let mut top = 0;
        let touched = {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
            for ev in events {
                top = top.max(ev.revision());
                let value = (ev.kind == EventKind::Put).then_some(ev.kv.value.as_slice());
                index.change(&ev.kv.key, value, ev.revision());
                if let Some((svc, inst)) = instance_key(&ev.kv.key) {
                    changed.instances.entry(svc.to_string()).or_default().insert(inst.to_string());
                }
            }
            let mut touched = std::mem::take(&mut index.touched);
            touched.sort_unstable();
            touched.dedup();
            touched
        };
        self.mark_applied(top);
        if !touched.is_empty() {
            self.wake.changes(
                touched.iter().map(|(a, k)| (a.as_str(), k.as_ref().map(|(s, i)| (s.as_str(), i.as_str())))),
            );
        }
    }

    /// The instances whose records changed since the last call (recovery's only).
    pub fn take_changed(&self) -> Changed {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until every change up to the store's current revision is applied.
    pub async fn caught_up(&self, store: &dyn StateStore) -> Result<(), tend_store::StoreError> {
        let want = store.revision().await?;
        self.applied_up_to(want).await;
        Ok(())
    }

    /// Waits until every change up to revision `want` is applied.
    pub async fn applied_up_to(&self, want: Revision) {
        let mut rx = self.applied.subscribe();
        let mut asked = false;
        while *rx.borrow_and_update() < want {
            let Some(sync) = &self.sync else {
                // The revision moves only with watched changes: they arrive.
                if rx.changed().await.is_err() {
                    break;
                }
                continue;
            };
            // Changes of ours arrive by the watch within moments; when they do not (the store's
            // revision moved with keys the watch does not see), ask it for progress.
            let wait = std::time::Duration::from_millis(if asked { 1_000 } else { 50 });
            match tokio::time::timeout(wait, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    sync.request();
                    asked = true;
                }
            }
        }
    }

    /// The revision applied so far (what a read now reflects, at least).
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// The instances of a service, by instance name.
    pub fn instances(&self, svc: &str) -> Vec<(String, Arc<Instance>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .services
            .get(svc)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// One instance, as of the revision applied so far.
    pub fn instance(&self, svc: &str, inst: &str) -> Option<Arc<Instance>> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.services.get(svc)?.get(inst).cloned()
    }

    /// The instances placed on an agent: (service, instance name, instance).
    pub fn of_agent(&self, agent: &str) -> Vec<(String, String, Arc<Instance>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let Some(placed) = index.by_agent.get(agent) else { return Vec::new() };
        placed.iter().map(|((s, i), r)| (s.clone(), i.clone(), r.clone())).collect()
    }

    /// These instances as placed on `agent` (None: not placed there).
    pub fn on_agent(&self, agent: &str, keys: Vec<Key>) -> Vec<(String, String, Option<Arc<Instance>>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let placed = index.by_agent.get(agent);
        keys.into_iter()
            .map(|k| {
                let rec = placed.and_then(|p| p.get(&k)).cloned();
                (k.0, k.1, rec)
            })
            .collect()
    }

    /// What every agent with placed instances has reserved: what placement starts from, at a
    /// cost that follows the number of agents, not of instances.
    pub fn usage(&self) -> HashMap<String, AgentUsage> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.usage.clone()
    }

    /// The instances of one placement group (`service/pod`) per agent.
    pub fn group_usage(&self, group: &str) -> HashMap<String, u32> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.groups.get(group).cloned().unwrap_or_default()
    }

    /// What the instances placed on `agent` have reserved.
    pub fn usage_of(&self, agent: &str) -> AgentUsage {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.usage.get(agent).cloned().unwrap_or_default()
    }

    /// Calls `f` with every placed instance (service, instance), under one read lock.
    pub fn for_each_placed(&self, mut f: impl FnMut(&str, &Instance)) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        for (svc, m) in &index.services {
            for rec in m.values().filter(|r| r.reservation.is_some()) {
                f(svc, rec);
            }
        }
    }
}

impl ClusterState {
    /// Every volume record with its revision.
    pub fn volumes(&self) -> Vec<(VolumeRecord, Revision)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.volumes.values().map(|(r, rev)| ((**r).clone(), *rev)).collect()
    }

    /// The volume records an agent is to delete.
    pub fn deleting_on(&self, agent: &str) -> Vec<VolumeRecord> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let Some(ids) = index.deleting.get(agent) else { return Vec::new() };
        ids.iter().filter_map(|id| index.volumes.get(id).map(|(r, _)| (**r).clone())).collect()
    }

    /// The volume ids instance records reference; Err when some instance record cannot be read
    /// (it may own a volume: nothing may be taken for unused then).
    pub fn volumes_in_use(&self) -> Result<BTreeSet<String>, String> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = index.unreadable.iter().next() {
            return Err(format!("unreadable instance record {k}"));
        }
        Ok(index.volume_users.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tend_model::{InstanceId, Reservation, Resources};

    /// Recomputes what the aggregates must say, from every instance.
    fn recount(index: &Index) -> (HashMap<String, AgentUsage>, HashMap<String, HashMap<String, u32>>) {
        let mut usage: HashMap<String, AgentUsage> = HashMap::default();
        let mut groups: HashMap<String, HashMap<String, u32>> = HashMap::default();
        for (svc, m) in &index.services {
            for rec in m.values() {
                let Some(res) = &rec.reservation else { continue };
                let u = usage.entry(res.agent.clone()).or_default();
                u.reserved = u.reserved.plus(&res.resources);
                for p in res.ports.values() {
                    *u.ports.entry(*p).or_default() += 1;
                }
                *groups
                    .entry(format!("{svc}/{}", rec.id.pod))
                    .or_default()
                    .entry(res.agent.clone())
                    .or_default() += 1;
            }
        }
        usage.retain(|_, u| !(u.ports.is_empty() && u.reserved == Resources::default()));
        groups.retain(|_, g| !g.is_empty());
        (usage, groups)
    }

    fn base() -> Instance {
        let mut rec = Instance::new(InstanceId::new("node", 0), 0);
        rec.reservation = Some(Reservation {
            agent: "a1".into(),
            resources: Resources { cpus_milli: 100, memory_mb: 64, disk_mb: 10 },
            ports: [("http".to_string(), 20_000)].into(),
        });
        rec.next_incarnation(0, "c1".into(), 5);
        rec.volumes.names = vec!["data".into()];
        rec.volumes.set = Some(tend_model::VolumeId::from_seq(1));
        rec
    }

    /// One change to one field of a record; `true`: a field only recovery reads.
    fn mutate(rec: &mut Instance, which: u8) -> bool {
        match which {
            0 => rec.recovery.down_since_ms = Some(7),
            1 => rec.recovery.unreachable_since_ms = Some(8),
            2 => rec.recovery.replaced_ms = 9,
            3 => rec.ready = Some(tend_model::Ready { config: "c1".into(), incarnation: 1 }),
            4 => rec.pending_reason = Some("waiting".into()),
            5 => rec.created_ms = 11,
            6 => {
                rec.next_incarnation(0, "c1".into(), 12);
                return false;
            }
            7 => {
                rec.next_incarnation(0, "c2".into(), 12);
                return false;
            }
            8 => {
                if let Some(r) = rec.reservation.as_mut() {
                    r.ports.insert("http".into(), 20_001);
                }
                return false;
            }
            9 => {
                rec.volumes.set = Some(tend_model::VolumeId::from_seq(2));
                return false;
            }
            10 => {
                rec.once_done.push("init".into());
                return false;
            }
            _ => {
                if let Some(i) = rec.incarnation.as_mut() {
                    i.replaced_from =
                        Some(tend_model::ReplacedFrom { agent: "a0".into(), host: "h0".into() });
                }
                return false;
            }
        }
        true
    }

    proptest! {
        /// A record change that gives the agent another assignment always wakes it; one that
        /// touches only what recovery reads (down since, ready, pending reason) does not.
        #[test]
        fn only_what_an_assignment_reads_wakes_an_agent(changes in proptest::collection::vec(0u8..12, 0..4)) {
            let text = "version: 1\nname: s\npods:\n  node:\n    count: 1\n    volumes:\n      - { name: data, path: data, size_mb: 10 }\n    on_replace: ./hook\n    tasks:\n      init:\n        goal: once\n        cmd: ./init\n      server:\n        goal: running\n        cmd: ./serve\n        ports: { http: 0 }\n";
            let spec = tend_spec::load_service("s.yml", text).unwrap();
            let pod = spec.pod("node").unwrap();
            let asg = |r: &Instance| crate::deploy::assignment("s", &BTreeMap::new(), &spec.recovery, pod, "node-0", r);
            let a = base();
            let mut b = a.clone();
            let mut only_recovery = true;
            for c in changes {
                only_recovery &= mutate(&mut b, c);
            }
            if asg(&a) != asg(&b) {
                prop_assert!(!same_desired_state(&a, &b));
            }
            if only_recovery {
                prop_assert!(same_desired_state(&a, &b));
            }
        }
    }

    proptest! {
        /// Whatever records come and go (placed, moved, unplaced, deleted, unreadable), the
        /// per-agent sums placement reads equal a count over every instance.
        #[test]
        fn usage_follows_the_records(ops in proptest::collection::vec((0usize..6, 0usize..4, 0u64..3, 0u16..3, 0u8..5), 1..60)) {
            let mut index = Index::default();
            for (inst, agent, cpus, port, kind) in ops {
                let key = format!("services/s/instances/node-{inst}");
                let mut rec = Instance::new(InstanceId::new("node", inst as u32), 0);
                if kind < 3 {
                    rec.reservation = Some(Reservation {
                        agent: format!("a{agent}"),
                        resources: Resources { cpus_milli: cpus * 100, memory_mb: cpus, disk_mb: 0 },
                        ports: (0..port).map(|p| (format!("p{p}"), 20_000 + p)).collect(),
                    });
                }
                match kind {
                    4 => index.change(&key, None, 1),
                    3 if cpus == 0 => index.change(&key, Some(b"{not json"), 1),
                    _ => {
                        let v = crate::records::encode_instance(&rec).unwrap();
                        index.change(&key, Some(&v), 1);
                    }
                }
                let (usage, groups) = recount(&index);
                let mut have = index.groups.clone();
                have.retain(|_, g| !g.is_empty());
                prop_assert_eq!(&index.usage, &usage);
                prop_assert_eq!(&have, &groups);
                // Each agent's instances are the placed records naming it, the same values.
                let mut by_agent: BTreeMap<String, BTreeMap<Key, Instance>> = BTreeMap::new();
                for (svc, m) in &index.services {
                    for (inst, r) in m {
                        if let Some(a) = r.agent() {
                            by_agent.entry(a.to_string()).or_default().insert((svc.clone(), inst.clone()), (**r).clone());
                        }
                    }
                }
                let have: BTreeMap<String, BTreeMap<Key, Instance>> = index
                    .by_agent
                    .iter()
                    .map(|(a, m)| (a.clone(), m.iter().map(|(k, r)| (k.clone(), (**r).clone())).collect()))
                    .collect();
                prop_assert_eq!(have, by_agent);
            }
        }
    }
}
