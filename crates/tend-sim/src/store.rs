//! The memory store behind fault injectors: with slow-store faults on, some calls wait a drawn
//! time before they run (a loaded disk or a slow etcd), which reorders the control plane's work;
//! and each control-plane incarnation reaches it through its own [`ProcessStore`], closed when that
//! incarnation crashes, so a dead control plane's requests still in flight cannot write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tend_store::memory::MemoryStore;
use tend_store::*;

use crate::rng::Rng;

/// A store whose calls are sometimes slow.
pub struct SlowStore {
    inner: Arc<MemoryStore>,
    rng: Mutex<Rng>,
    /// Chance that one call is delayed, in millionths (0: never).
    pub slow_ppm: std::sync::atomic::AtomicU64,
    /// Delays drawn up to this many milliseconds.
    pub max_delay_ms: u64,
}

impl SlowStore {
    pub fn new(inner: Arc<MemoryStore>, rng: Rng, slow_chance: f64) -> SlowStore {
        SlowStore {
            inner,
            rng: Mutex::new(rng),
            slow_ppm: std::sync::atomic::AtomicU64::new((slow_chance * 1e6) as u64),
            max_delay_ms: 150,
        }
    }

    pub(crate) async fn maybe_wait(&self) {
        let ppm = self.slow_ppm.load(std::sync::atomic::Ordering::Relaxed);
        if ppm == 0 {
            return;
        }
        let delay = {
            let mut r = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            r.chance(ppm as f64 / 1e6).then(|| r.range(1, self.max_delay_ms))
        };
        if let Some(ms) = delay {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

#[async_trait]
impl StateStore for SlowStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.maybe_wait().await;
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.maybe_wait().await;
        self.inner.range(prefix).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.maybe_wait().await;
        self.inner.txn(txn).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.maybe_wait().await;
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.maybe_wait().await;
        self.inner.delete(key).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        self.inner.grant_lease(ttl_seconds).await
    }
    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.maybe_wait().await;
        self.inner.keep_alive(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.inner.lease_time_to_live(id).await
    }
    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(id).await
    }
    async fn expire_leases(&self) -> Result<(), StoreError> {
        self.inner.expire_leases().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.inner.compact(rev).await
    }
}

/// One control-plane process's access to the store: closed when the process dies.
pub struct ProcessStore {
    inner: Arc<SlowStore>,
    dead: std::sync::atomic::AtomicBool,
}

impl ProcessStore {
    pub fn new(inner: Arc<SlowStore>) -> ProcessStore {
        ProcessStore { inner, dead: std::sync::atomic::AtomicBool::new(false) }
    }

    /// The process died: every later call fails.
    pub fn kill(&self) {
        self.dead.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn alive(&self) -> Result<(), StoreError> {
        if self.dead.load(std::sync::atomic::Ordering::SeqCst) {
            Err(StoreError::Closed)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl StateStore for ProcessStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.alive()?;
        let r = self.inner.get(key).await;
        self.alive().and(r)
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.alive()?;
        let r = self.inner.range(prefix).await;
        self.alive().and(r)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        // Checked after a slow call too: a write never commits after the process died.
        self.alive()?;
        self.inner.maybe_wait().await;
        self.alive()?;
        self.inner.inner.txn(txn).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.alive()?;
        self.inner.maybe_wait().await;
        self.alive()?;
        self.inner.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.alive()?;
        self.inner.maybe_wait().await;
        self.alive()?;
        self.inner.inner.delete(key).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.alive()?;
        self.inner.revision().await
    }
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        self.alive()?;
        self.inner.grant_lease(ttl_seconds).await
    }
    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.alive()?;
        self.inner.keep_alive(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.alive()?;
        self.inner.lease_time_to_live(id).await
    }
    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.alive()?;
        self.inner.revoke_lease(id).await
    }
    async fn expire_leases(&self) -> Result<(), StoreError> {
        self.alive()?;
        self.inner.expire_leases().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        self.alive()?;
        self.inner.watch(prefix, from).await
    }
    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.alive()?;
        self.inner.compact(rev).await
    }
}
