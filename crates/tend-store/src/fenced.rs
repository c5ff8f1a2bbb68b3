//! A store seen through one leadership: every write is a transaction guarded by the leadership
//! key (its create revision is the leader's epoch), so a deposed leader — its lease expired,
//! another elected — can write nothing, whatever it still believes. Once a guard fails, or the
//! holder calls [`Fenced::fence`] (its keep-alive failed), every later write is refused at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

use crate::types::*;
use crate::{StateStore, StoreError, Watcher};

pub struct Fenced {
    inner: Arc<dyn StateStore>,
    key: String,
    epoch: Revision,
    lost: AtomicBool,
}

impl Fenced {
    /// Writes through `inner` only while `key` is the one created at revision `epoch`.
    pub fn new(inner: Arc<dyn StateStore>, key: &str, epoch: Revision) -> Arc<Fenced> {
        Arc::new(Fenced { inner, key: key.to_string(), epoch, lost: AtomicBool::new(false) })
    }
    /// Refuses every write from now on (the holder knows its leadership is over).
    pub fn fence(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }
    pub fn is_fenced(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
    fn check(&self) -> Result<(), StoreError> {
        if self.is_fenced() {
            return Err(StoreError::NotLeader { epoch: self.epoch });
        }
        Ok(())
    }
}

fn writes(txn: &Txn) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| matches!(op, TxnOp::Put { .. } | TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. }))
}

#[async_trait]
impl StateStore for Fenced {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner.get(key).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.inner.range(prefix).await
    }
    async fn txn(&self, mut txn: Txn) -> Result<TxnResponse, StoreError> {
        if !writes(&txn) {
            return self.inner.txn(txn).await;
        }
        self.check()?;
        let guard = Compare {
            key: self.key.clone(),
            op: CmpOp::Equal,
            target: CmpTarget::CreateRevision(self.epoch),
        };
        txn.compare.push(guard);
        let r = self.inner.txn(txn).await?;
        if !r.succeeded {
            // The caller's compares, or ours? Ours only fails once the leadership is gone, and
            // it never comes back (a new leadership has a new epoch).
            let held = self.inner.get(&self.key).await?.is_some_and(|kv| kv.create_revision == self.epoch);
            if !held {
                self.fence();
                return Err(StoreError::NotLeader { epoch: self.epoch });
            }
        }
        Ok(r)
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.inner.revision().await
    }
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        self.check()?;
        self.inner.grant_lease(ttl_seconds).await
    }
    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.check()?;
        self.inner.keep_alive(id).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.inner.lease_time_to_live(id).await
    }
    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.check()?;
        self.inner.revoke_lease(id).await
    }
    async fn expire_leases(&self) -> Result<(), StoreError> {
        self.inner.expire_leases().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        self.inner.watch(prefix, from).await
    }
    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.check()?;
        self.inner.compact(rev).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn a_deposed_leader_writes_nothing() {
        let clock = tend_model::ManualClock::new(0);
        let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(clock.clone()));
        let lease = store.grant_lease(5).await.unwrap();
        let won = store
            .txn(
                Txn::new()
                    .when(Compare::absent("leader"))
                    .then(TxnOp::put_with_lease("leader", "a", lease.id)),
            )
            .await
            .unwrap();
        let a = Fenced::new(store.clone(), "leader", won.revision);
        a.put("k", b"1").await.unwrap();
        // A caller's own failed compare is not a lost leadership.
        let r = a.txn(Txn::new().when(Compare::absent("k")).then(TxnOp::put("k", "2"))).await.unwrap();
        assert!(!r.succeeded && !a.is_fenced());
        // The lease expires; another is elected; the first can no longer write, even a key
        // it thinks it owns, and reads still work.
        clock.advance_ms(5_000);
        store.expire_leases().await.unwrap();
        let won = store
            .txn(Txn::new().when(Compare::absent("leader")).then(TxnOp::put("leader", "b")))
            .await
            .unwrap();
        assert!(won.succeeded);
        let e = a.put("k", b"3").await;
        assert!(matches!(e, Err(StoreError::NotLeader { .. })), "{e:?}");
        assert!(a.is_fenced());
        assert_eq!(a.get("k").await.unwrap().unwrap().value, b"1");
        let b = Fenced::new(store.clone(), "leader", won.revision);
        b.put("k", b"4").await.unwrap();
        assert!(matches!(a.put("x", b"1").await, Err(StoreError::NotLeader { .. })));
    }
}
