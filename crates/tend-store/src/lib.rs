//! The state store of tend: an etcd-shaped key-value trait (revisions, compare-and-swap
//! transactions, leases, watch) with an in-memory backend and a conformance suite for all backends.
//!
//! Backends: [`memory::MemoryStore`] here (tests, simulations), `tend-store-redb` (embedded,
//! durable default) and, later, etcd. Every backend must pass [`conformance`].

pub mod conformance;
pub mod core;
pub mod fenced;
pub mod memory;
pub mod types;

pub use crate::core::{Change, SyncHandle, Watcher};
pub use crate::types::*;

use async_trait::async_trait;

/// Format version of the store's own layout; a store written by another version is refused.
pub const FORMAT_VERSION: u32 = 1;
/// The key under which every backend records [`FORMAT_VERSION`] (outside the user key space).
pub const FORMAT_VERSION_KEY: &str = "format_version";

/// What can go wrong talking to a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("revision {requested} has been compacted (oldest available: {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error(
        "store at {path} has format version {found}, this tend understands {supported}; \
         use a tend release that matches, or move the data directory aside"
    )]
    UnsupportedFormat { path: String, found: String, supported: u32 },
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is closed")]
    Closed,
    #[error("not the leader any more (leadership of epoch {epoch} lost): nothing was written")]
    NotLeader { epoch: Revision },
}

/// An etcd-shaped state store. All writes are durable when the call returns (for durable backends).
#[async_trait]
pub trait StateStore: Send + Sync {
    /// One key, or None.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let r = self.txn(Txn::new().then(TxnOp::get(key))).await?;
        match r.responses.into_iter().next() {
            Some(OpResponse::Get(kv)) => Ok(kv),
            _ => Ok(None),
        }
    }
    /// Every key starting with `prefix`, in key order, with the revision they were read at.
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError>;
    /// Runs a transaction atomically.
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError>;
    /// Unconditional put; returns the new revision.
    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        Ok(self.txn(Txn::new().then(TxnOp::put(key, value))).await?.revision)
    }
    /// Unconditional delete; returns whether the key existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let r = self.txn(Txn::new().then(TxnOp::delete(key))).await?;
        Ok(matches!(r.responses.first(), Some(OpResponse::Delete { deleted: 1 })))
    }
    /// The current revision.
    async fn revision(&self) -> Result<Revision, StoreError>;
    /// Grants a lease that expires `ttl_seconds` after its last keep-alive.
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError>;
    /// Renews a lease; returns its TTL. Fails with LeaseNotFound once it expired.
    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError>;
    /// Seconds left on a lease, or LeaseNotFound.
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError>;
    /// Revokes a lease, deleting every key attached to it.
    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError>;
    /// Expires every lease whose deadline passed (backends also do this before each call).
    async fn expire_leases(&self) -> Result<(), StoreError>;
    /// Changes under `prefix` with revision >= `from` (0: only future ones), then live ones.
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError>;
    /// Forgets history before `rev`; watching from an older revision then fails with Compacted.
    async fn compact(&self, rev: Revision) -> Result<(), StoreError>;
}
