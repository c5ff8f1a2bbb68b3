//! Leadership among several control planes on one store: one leader holds `meta/leader`,
//! attached to its lease; its **epoch** is the revision at which it created the key (unique,
//! and higher for every later leadership). Members announce themselves under `meta/members/`,
//! each on its own lease, so `tend status` lists who is up. The timing (keep-alives, stepping
//! down) is the edge's; here are the store operations, over any `StateStore`.

use serde::{Deserialize, Serialize};
use tend_store::{Compare, LeaseId, Revision, StateStore, StoreError, Txn, TxnOp};

pub const LEADER_KEY: &str = "meta/leader";
pub const MEMBERS_PREFIX: &str = "meta/members/";

/// What the leadership key and a member key hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    /// Where its API is served (followers forward requests there when it leads).
    pub url: String,
    pub since_ms: u64,
}

/// A leadership won: its lease (kept alive by the holder) and its epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub lease: LeaseId,
    pub epoch: Revision,
}

fn encode(rec: &MemberRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(rec).map_err(|e| StoreError::InvalidRequest(e.to_string()))
}

/// Tries once to become leader on `lease`: Some when won, None while another leads.
pub async fn try_acquire(
    store: &dyn StateStore,
    me: &MemberRecord,
    lease: LeaseId,
) -> Result<Option<Leadership>, StoreError> {
    let r = store
        .txn(Txn::new().when(Compare::absent(LEADER_KEY)).then(TxnOp::put_with_lease(
            LEADER_KEY,
            encode(me)?,
            lease,
        )))
        .await?;
    Ok(r.succeeded.then_some(Leadership { lease, epoch: r.revision }))
}

/// The current leader and its epoch, if any.
pub async fn current(store: &dyn StateStore) -> Result<Option<(MemberRecord, Revision)>, StoreError> {
    let Some(kv) = store.get(LEADER_KEY).await? else { return Ok(None) };
    Ok(serde_json::from_slice(&kv.value).ok().map(|r| (r, kv.create_revision)))
}

/// Gives the leadership up at once (a clean shutdown): the key goes with the lease.
pub async fn resign(store: &dyn StateStore, l: Leadership) -> Result<(), StoreError> {
    store.revoke_lease(l.lease).await
}

/// Announces this member on `lease` (gone when the lease ends).
pub async fn announce(store: &dyn StateStore, me: &MemberRecord, lease: LeaseId) -> Result<(), StoreError> {
    let key = format!("{MEMBERS_PREFIX}{}", me.id);
    store.txn(Txn::new().then(TxnOp::put_with_lease(key, encode(me)?, lease))).await.map(|_| ())
}

/// Every member announced and alive.
pub async fn members(store: &dyn StateStore) -> Result<Vec<MemberRecord>, StoreError> {
    Ok(store
        .range(MEMBERS_PREFIX)
        .await?
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn one_leader_at_a_time_and_a_higher_epoch_after_it() {
        let clock = tend_model::ManualClock::new(0);
        let store: Arc<dyn StateStore> = tend_store::memory::MemoryStore::new(Arc::new(clock.clone()));
        let rec = |id: &str| MemberRecord { id: id.into(), url: format!("http://{id}"), since_ms: 0 };
        let (la, lb) = (store.grant_lease(5).await.unwrap(), store.grant_lease(5).await.unwrap());
        let a = try_acquire(&*store, &rec("a"), la.id).await.unwrap().expect("a wins");
        assert_eq!(try_acquire(&*store, &rec("b"), lb.id).await.unwrap(), None, "b waits");
        assert_eq!(current(&*store).await.unwrap(), Some((rec("a"), a.epoch)));
        // b keeps its lease alive; a does not: a's key goes, b wins with a higher epoch.
        clock.advance_ms(4_000);
        store.keep_alive(lb.id).await.unwrap();
        clock.advance_ms(1_000);
        store.expire_leases().await.unwrap();
        let b = try_acquire(&*store, &rec("b"), lb.id).await.unwrap().expect("b wins");
        assert!(b.epoch > a.epoch);
        resign(&*store, b).await.unwrap();
        assert_eq!(current(&*store).await.unwrap(), None);
    }
}
