//! Leases for maintenance runs, in the state store: per scope N slots, taken all-or-nothing in
//! one compare-and-swap transaction (keys in sorted order, so no partial holds and no deadlock),
//! attached to a store lease with a TTL, renewed by the holder, released by the holder only.
//! Each hold carries a **fencing token** (the store revision that created it): writes made under
//! a lease compare that the lease keys still hold exactly this hold, so a run whose lease expired
//! cannot record results.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tend_store::{Compare, LeaseId, StateStore, StoreError, Txn, TxnOp};

/// A scope to hold one slot of: e.g. `data-store/repair/cluster` with 2 slots, or
/// `data-store/repair/zone=a` with 1.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Scope {
    pub key: String,
    pub slots: u32,
}

/// What a lease key holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseValue {
    pub holder: String,
    pub lease: LeaseId,
}

/// A hold on one slot of each scope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub holder: String,
    pub keys: Vec<String>,
    pub lease: LeaseId,
    /// The fencing token: strictly greater for every later hold.
    pub token: i64,
    value: Vec<u8>,
}

impl Held {
    /// Compares a write made under this hold must include.
    pub fn guard(&self) -> Vec<Compare> {
        self.keys.iter().map(|k| Compare::value_eq(k.clone(), self.value.clone())).collect()
    }
}

/// The outcome of an attempt to acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    Held(Held),
    /// Every slot of this scope is taken.
    Busy(String),
}

/// Why a lease operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lease lost: {0}")]
    Lost(String),
    #[error("`{holder}` does not hold {key}")]
    NotHolder { holder: String, key: String },
}

/// Leases under a key prefix of a store.
pub struct LeaseManager {
    store: Arc<dyn StateStore>,
    prefix: String,
    ttl_seconds: i64,
}

impl LeaseManager {
    pub fn new(store: Arc<dyn StateStore>, prefix: impl Into<String>, ttl_seconds: i64) -> Self {
        Self { store, prefix: prefix.into(), ttl_seconds }
    }

    /// The TTL; holders renew every TTL/10.
    pub fn ttl_seconds(&self) -> i64 {
        self.ttl_seconds
    }

    fn slot_key(&self, scope: &str, slot: u32) -> String {
        format!("{}/{scope}/{slot:04}", self.prefix)
    }

    /// Takes one free slot in every scope, all or nothing.
    pub async fn acquire(&self, holder: &str, scopes: &[Scope]) -> Result<Acquired, LeaseError> {
        let mut scopes = scopes.to_vec();
        scopes.sort();
        let mut keys = Vec::with_capacity(scopes.len());
        for s in &scopes {
            let taken: Vec<String> = self
                .store
                .range(&format!("{}/{}/", self.prefix, s.key))
                .await?
                .kvs
                .into_iter()
                .map(|kv| kv.key)
                .collect();
            match (0..s.slots).map(|i| self.slot_key(&s.key, i)).find(|k| !taken.contains(k)) {
                Some(k) => keys.push(k),
                None => return Ok(Acquired::Busy(format!("{} ({} slot(s) taken)", s.key, s.slots))),
            }
        }
        let grant = self.store.grant_lease(self.ttl_seconds).await?;
        let value = serde_json::to_vec(&LeaseValue { holder: holder.to_string(), lease: grant.id })
            .map_err(|e| LeaseError::Store(StoreError::InvalidRequest(e.to_string())))?;
        let mut txn = Txn::new();
        for k in &keys {
            txn = txn.when(Compare::absent(k.clone())).then(TxnOp::put_with_lease(
                k.clone(),
                value.clone(),
                grant.id,
            ));
        }
        let r = self.store.txn(txn).await?;
        if !r.succeeded {
            let _ = self.store.revoke_lease(grant.id).await;
            return Ok(Acquired::Busy("a slot was taken concurrently".into()));
        }
        Ok(Acquired::Held(Held {
            holder: holder.to_string(),
            keys,
            lease: grant.id,
            token: r.revision,
            value,
        }))
    }

    /// Renews a hold (the holder's keep-alive); fails once it is lost.
    pub async fn renew(&self, held: &Held) -> Result<(), LeaseError> {
        self.check_holder(&held.holder, held).await?;
        match self.store.keep_alive(held.lease).await {
            Ok(_) => Ok(()),
            Err(StoreError::LeaseNotFound(_)) => {
                Err(LeaseError::Lost(format!("lease {} expired", held.lease)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether every key still holds exactly this hold.
    pub async fn still_holds(&self, held: &Held) -> Result<bool, LeaseError> {
        let r = self.store.txn(Txn { compare: held.guard(), success: vec![], failure: vec![] }).await?;
        Ok(r.succeeded)
    }

    async fn check_holder(&self, holder: &str, held: &Held) -> Result<(), LeaseError> {
        for k in &held.keys {
            let ok = match self.store.get(k).await? {
                Some(kv) => serde_json::from_slice::<LeaseValue>(&kv.value)
                    .is_ok_and(|v| v.holder == holder && v.lease == held.lease),
                None => false,
            };
            if !ok {
                return Err(LeaseError::NotHolder { holder: holder.to_string(), key: k.clone() });
            }
        }
        Ok(())
    }

    /// Renewal attempted by someone else than the holder: refused.
    pub async fn renew_as(&self, who: &str, held: &Held) -> Result<(), LeaseError> {
        self.check_holder(who, held).await?;
        self.renew(held).await
    }

    /// Releases a hold; only its holder can (the keys must still hold it).
    pub async fn release(&self, who: &str, held: &Held) -> Result<(), LeaseError> {
        if who != held.holder {
            return Err(LeaseError::NotHolder { holder: who.to_string(), key: held.keys.join(", ") });
        }
        let mut txn = Txn { compare: held.guard(), ..Default::default() };
        for k in &held.keys {
            txn = txn.then(TxnOp::delete(k.clone()));
        }
        let r = self.store.txn(txn).await?;
        let _ = self.store.revoke_lease(held.lease).await;
        if !r.succeeded {
            return Err(LeaseError::Lost("the lease had already expired or been taken".into()));
        }
        Ok(())
    }

    /// Current holders of a scope's slots (for status displays).
    pub async fn holders(&self, scope: &str) -> Result<Vec<String>, LeaseError> {
        let r = self.store.range(&format!("{}/{scope}/", self.prefix)).await?;
        Ok(r.kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<LeaseValue>(&kv.value).ok())
            .map(|v| v.holder)
            .collect())
    }
}

/// Appends the hold's guard to a write: the write only happens while the hold is current.
pub fn guarded(held: &Held, ops: Vec<TxnOp>) -> Txn {
    Txn { compare: held.guard(), success: ops, failure: vec![] }
}
