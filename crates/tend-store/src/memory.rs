//! In-memory backend: the whole store in a BTreeMap behind a mutex; for tests and simulations.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tend_model::SharedClock;

use crate::core::{apply_txn, delete_one, KvAccess, LeaseClock, WatchHub};
use crate::types::*;
use crate::{StateStore, StoreError, Watcher};

#[derive(Default)]
struct Data {
    kv: BTreeMap<String, KeyValue>,
    lease_keys: BTreeMap<LeaseId, BTreeSet<String>>,
}

impl KvAccess for Data {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.kv.get(key).cloned())
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect())
    }
    fn put(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        self.kv.insert(kv.key.clone(), kv.clone());
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key);
        Ok(())
    }
    fn lease_exists(&mut self, id: LeaseId) -> Result<bool, StoreError> {
        Ok(self.lease_keys.contains_key(&id))
    }
    fn attach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError> {
        self.lease_keys.entry(lease).or_default().insert(key.to_string());
        Ok(())
    }
    fn detach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError> {
        if let Some(s) = self.lease_keys.get_mut(&lease) {
            s.remove(key);
        }
        Ok(())
    }
}

struct State {
    data: Data,
    revision: Revision,
    compacted: Revision,
    log: Vec<WatchEvent>,
    leases: LeaseClock,
    next_lease: LeaseId,
}

/// A store that lives in memory only. Cheap to create; loses everything when dropped.
pub struct MemoryStore {
    state: Mutex<State>,
    hub: WatchHub,
    clock: SharedClock,
}

impl MemoryStore {
    /// A new empty store whose leases run on `clock`.
    pub fn new(clock: SharedClock) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                data: Data::default(),
                revision: 0,
                compacted: 0,
                log: Vec::new(),
                leases: LeaseClock::default(),
                next_lease: 1,
            }),
            hub: WatchHub::new(0),
            clock,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Expires due leases; must be called with the state lock held.
    fn expire_locked(&self, st: &mut State) {
        let now = self.clock.now_ms();
        for id in st.leases.expired(now) {
            self.revoke_locked(st, id);
        }
    }

    fn revoke_locked(&self, st: &mut State, id: LeaseId) {
        st.leases.remove(id);
        let keys = st.data.lease_keys.remove(&id).unwrap_or_default();
        let rev = st.revision + 1;
        let mut events = Vec::new();
        for k in keys {
            // Infallible for the in-memory map.
            let _ = delete_one(&mut st.data, &k, rev, &mut events);
        }
        if !events.is_empty() {
            st.revision = rev;
            st.log.extend(events.iter().cloned());
            self.hub.publish(rev, &events);
        }
    }
}

#[async_trait]
impl StateStore for MemoryStore {
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        let kvs = st.data.range(prefix)?;
        Ok(RangeResponse { kvs, revision: st.revision })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        let current = st.revision;
        // apply_txn refuses bad input before its first write, and the in-memory KvAccess never
        // fails, so an error here leaves the map untouched.
        let (resp, events) = apply_txn(&mut st.data, current, &txn)?;
        if !events.is_empty() {
            st.revision = resp.revision;
            st.log.extend(events.iter().cloned());
            self.hub.publish(resp.revision, &events);
        }
        Ok(resp)
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        Ok(st.revision)
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidRequest(format!("lease TTL must be positive, got {ttl_seconds}")));
        }
        let mut st = self.lock();
        self.expire_locked(&mut st);
        let id = st.next_lease;
        st.next_lease += 1;
        st.data.lease_keys.insert(id, BTreeSet::new());
        st.leases.arm(id, ttl_seconds, self.clock.now_ms());
        Ok(LeaseGrant { id, ttl_seconds })
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        let ttl = st.leases.ttl(id).ok_or(StoreError::LeaseNotFound(id))?;
        st.leases.arm(id, ttl, self.clock.now_ms());
        Ok(ttl)
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        st.leases.remaining_seconds(id, self.clock.now_ms()).ok_or(StoreError::LeaseNotFound(id))
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        if st.leases.ttl(id).is_none() {
            return Err(StoreError::LeaseNotFound(id));
        }
        self.revoke_locked(&mut st, id);
        Ok(())
    }

    async fn expire_leases(&self) -> Result<(), StoreError> {
        let mut st = self.lock();
        self.expire_locked(&mut st);
        Ok(())
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        let st = self.lock();
        if from > 0 && from <= st.compacted {
            return Err(StoreError::Compacted { requested: from, compacted: st.compacted });
        }
        self.hub.register(prefix, |upto| {
            if from <= 0 {
                return Ok(Vec::new());
            }
            Ok(st
                .log
                .iter()
                .filter(|e| e.revision() >= from && e.revision() <= upto && e.kv.key.starts_with(prefix))
                .cloned()
                .collect())
        })
    }

    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        let mut st = self.lock();
        if rev > st.revision {
            return Err(StoreError::InvalidRequest(format!(
                "cannot compact to {rev}: beyond the current revision {}",
                st.revision
            )));
        }
        if rev <= st.compacted {
            return Err(StoreError::Compacted { requested: rev, compacted: st.compacted });
        }
        st.log.retain(|e| e.revision() >= rev);
        st.compacted = rev - 1;
        Ok(())
    }
}
