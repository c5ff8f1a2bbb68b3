//! The control plane's picture of every pod instance: the instance records of all services,
//! parsed once, indexed by service and by agent, and kept current from the store's watch (so a
//! change written by anyone, this process or another, shows up). Readers first wait until the
//! picture has caught up with the store's revision at the time of asking, so what they read is
//! at least as new as anything written before they asked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use tend_store::{EventKind, Revision, StateStore, WatchEvent, Watcher};
use tokio::sync::watch;

use crate::records::InstanceRecord;

type Key = (String, String);

#[derive(Default)]
struct Index {
    services: BTreeMap<String, BTreeMap<String, Arc<InstanceRecord>>>,
    by_agent: BTreeMap<String, BTreeSet<Key>>,
}

impl Index {
    fn unlink(&mut self, svc: &str, inst: &str) {
        let old = self.services.get_mut(svc).and_then(|m| m.remove(inst));
        if let Some(agent) = old.as_ref().and_then(|r| r.agent.clone()) {
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

    fn put(&mut self, svc: &str, inst: &str, rec: InstanceRecord) {
        self.unlink(svc, inst);
        if let Some(agent) = &rec.agent {
            self.by_agent.entry(agent.clone()).or_default().insert((svc.to_string(), inst.to_string()));
        }
        self.services.entry(svc.to_string()).or_default().insert(inst.to_string(), Arc::new(rec));
    }
}

/// `services/<svc>/instances/<inst>` → (svc, inst).
fn instance_key(key: &str) -> Option<(&str, &str)> {
    let (svc, rest) = key.strip_prefix("services/")?.split_once('/')?;
    Some((svc, rest.strip_prefix("instances/")?))
}

/// Every instance record, current with the store.
pub struct ClusterState {
    index: RwLock<Index>,
    /// The store revision applied so far.
    applied: watch::Sender<Revision>,
}

impl ClusterState {
    /// Loads every instance record and starts watching the store from there. The returned
    /// watcher must be fed to [`ClusterState::follow`].
    pub async fn load(
        store: &dyn StateStore,
    ) -> Result<(Arc<ClusterState>, Watcher), tend_store::StoreError> {
        let r = store.range("services/").await?;
        let mut index = Index::default();
        for kv in r.kvs {
            let Some((svc, inst)) = instance_key(&kv.key) else { continue };
            match serde_json::from_slice::<InstanceRecord>(&kv.value) {
                Ok(rec) => index.put(svc, inst, rec),
                Err(e) => tracing::error!(key = %kv.key, error = %e, "unreadable instance record: ignored"),
            }
        }
        // Everything: the applied revision must follow the store's, whatever the change.
        let watcher = store.watch("", r.revision + 1).await?;
        let state =
            Arc::new(ClusterState { index: RwLock::new(index), applied: watch::channel(r.revision).0 });
        Ok((state, watcher))
    }

    /// Applies the store's changes as they come (run as a task; ends when the store does).
    pub async fn follow(self: Arc<Self>, mut watcher: Watcher) {
        while let Some(ev) = watcher.next().await {
            let mut batch = vec![ev];
            while let Some(ev) = watcher.try_next() {
                batch.push(ev);
            }
            self.apply(&batch);
        }
    }

    fn apply(&self, events: &[WatchEvent]) {
        let mut top = 0;
        {
            let mut index = self.index.write().unwrap_or_else(|e| e.into_inner());
            for ev in events {
                top = top.max(ev.revision());
                let Some((svc, inst)) = instance_key(&ev.kv.key) else { continue };
                match ev.kind {
                    EventKind::Delete => index.unlink(svc, inst),
                    EventKind::Put => match serde_json::from_slice::<InstanceRecord>(&ev.kv.value) {
                        Ok(rec) => index.put(svc, inst, rec),
                        Err(e) => tracing::error!(key = %ev.kv.key, error = %e, "unreadable instance record"),
                    },
                }
            }
        }
        self.applied.send_if_modified(|r| {
            let newer = top > *r;
            *r = (*r).max(top);
            newer
        });
    }

    /// Waits until every change up to the store's current revision is applied.
    pub async fn caught_up(&self, store: &dyn StateStore) -> Result<(), tend_store::StoreError> {
        let want = store.revision().await?;
        let mut rx = self.applied.subscribe();
        while *rx.borrow_and_update() < want {
            if rx.changed().await.is_err() {
                break;
            }
        }
        Ok(())
    }

    /// The revision applied so far (what a read now reflects, at least).
    pub fn revision(&self) -> Revision {
        *self.applied.borrow()
    }

    /// The instance records of a service, by instance name.
    pub fn instances(&self, svc: &str) -> Vec<(String, Arc<InstanceRecord>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index
            .services
            .get(svc)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    /// The instances placed on an agent: (service, instance, record).
    pub fn of_agent(&self, agent: &str) -> Vec<(String, String, Arc<InstanceRecord>)> {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        let Some(keys) = index.by_agent.get(agent) else { return Vec::new() };
        keys.iter()
            .filter_map(|(s, i)| index.services.get(s)?.get(i).map(|r| (s.clone(), i.clone(), r.clone())))
            .collect()
    }

    /// Calls `f` with every placed instance record (service, record), under one read lock.
    pub fn for_each_placed(&self, mut f: impl FnMut(&str, &InstanceRecord)) {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        for (svc, m) in &index.services {
            for rec in m.values().filter(|r| r.agent.is_some()) {
                f(svc, rec);
            }
        }
    }
}
