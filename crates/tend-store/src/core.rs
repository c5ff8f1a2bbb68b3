//! The transaction logic every backend shares: compares, puts, deletes, lease attachment, watch fan-out.
//!
//! A backend supplies storage through [`KvAccess`]; this module decides what a transaction does,
//! so that the in-memory and redb backends (and the conformance suite) agree to the letter.

use std::collections::BTreeSet;
use std::sync::Mutex;
use tend_model::hash::HashMap;

use tokio::sync::mpsc;

use crate::types::*;
use crate::StoreError;

/// Storage operations a backend offers to the shared transaction logic.
pub trait KvAccess {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, StoreError>;
    fn put(&mut self, kv: &KeyValue) -> Result<(), StoreError>;
    fn delete(&mut self, key: &str) -> Result<(), StoreError>;
    fn lease_exists(&mut self, id: LeaseId) -> Result<bool, StoreError>;
    fn attach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError>;
    fn detach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError>;
}

/// Checks a transaction for shapes etcd refuses (the same key written twice in one branch).
pub fn validate_txn(txn: &Txn) -> Result<(), StoreError> {
    for branch in [&txn.success, &txn.failure] {
        let mut seen = BTreeSet::new();
        for op in branch.iter() {
            let key = match op {
                TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
                _ => continue,
            };
            if key.is_empty() {
                return Err(StoreError::InvalidRequest("empty key".into()));
            }
            if !seen.insert(key.clone()) {
                return Err(StoreError::InvalidRequest(format!(
                    "duplicate key {key:?} in one transaction branch"
                )));
            }
        }
    }
    Ok(())
}

/// Applies `txn` on top of `current` (the store revision before it). Returns the response and
/// the events it produced; the new revision is `current + 1` exactly when events is not empty.
pub fn apply_txn(
    access: &mut dyn KvAccess,
    current: Revision,
    txn: &Txn,
) -> Result<(TxnResponse, Vec<WatchEvent>), StoreError> {
    validate_txn(txn)?;
    let mut succeeded = true;
    for c in &txn.compare {
        let kv = access.get(&c.key)?;
        if !c.holds(kv.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    // Leases must exist before anything is written.
    for op in ops {
        if let TxnOp::Put { lease: Some(l), .. } = op {
            if !access.lease_exists(*l)? {
                return Err(StoreError::LeaseNotFound(*l));
            }
        }
    }
    let rev = current + 1;
    let mut events = Vec::new();
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            TxnOp::Put { key, value, lease } => {
                let prev = access.get(key)?;
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(0, |p| p.version) + 1,
                    lease: *lease,
                };
                if let Some(old) = prev.as_ref().and_then(|p| p.lease) {
                    if Some(old) != *lease {
                        access.detach(old, key)?;
                    }
                }
                if let Some(l) = lease {
                    access.attach(*l, key)?;
                }
                access.put(&kv)?;
                events.push(WatchEvent { kind: EventKind::Put, kv });
                responses.push(OpResponse::Put { prev });
            }
            TxnOp::Delete { key } => {
                let n = delete_one(access, key, rev, &mut events)?;
                responses.push(OpResponse::Delete { deleted: n });
            }
            TxnOp::DeletePrefix { prefix } => {
                let keys: Vec<String> = access.range(prefix)?.into_iter().map(|kv| kv.key).collect();
                let mut n = 0;
                for k in keys {
                    n += delete_one(access, &k, rev, &mut events)?;
                }
                responses.push(OpResponse::Delete { deleted: n });
            }
            TxnOp::Get { key } => responses.push(OpResponse::Get(access.get(key)?)),
            TxnOp::Range { prefix } => responses.push(OpResponse::Range(access.range(prefix)?)),
        }
    }
    let revision = if events.is_empty() { current } else { rev };
    Ok((TxnResponse { succeeded, revision, responses }, events))
}

/// Deletes `key` at revision `rev`, recording the event. Returns how many keys went (0 or 1).
pub fn delete_one(
    access: &mut dyn KvAccess,
    key: &str,
    rev: Revision,
    events: &mut Vec<WatchEvent>,
) -> Result<u64, StoreError> {
    let Some(prev) = access.get(key)? else { return Ok(0) };
    if let Some(l) = prev.lease {
        access.detach(l, key)?;
    }
    access.delete(key)?;
    events.push(WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: key.to_string(),
            value: Vec::new(),
            create_revision: prev.create_revision,
            mod_revision: rev,
            version: 0,
            lease: None,
        },
    });
    Ok(1)
}

/// Deadlines of live leases, kept in memory by every backend (etcd, too, re-arms leases with their
/// full TTL after a restart rather than trusting a clock from before it).
#[derive(Debug, Default)]
pub struct LeaseClock {
    deadlines: HashMap<LeaseId, (i64, u64)>,
}

impl LeaseClock {
    /// Arms (or re-arms) `id` with `ttl_seconds` from `now_ms`.
    pub fn arm(&mut self, id: LeaseId, ttl_seconds: i64, now_ms: u64) {
        let deadline = now_ms.saturating_add((ttl_seconds.max(1) as u64) * 1000);
        self.deadlines.insert(id, (ttl_seconds, deadline));
    }
    pub fn remove(&mut self, id: LeaseId) {
        self.deadlines.remove(&id);
    }
    pub fn ttl(&self, id: LeaseId) -> Option<i64> {
        self.deadlines.get(&id).map(|(ttl, _)| *ttl)
    }
    /// Seconds left before `id` expires, rounded up; None if unknown.
    pub fn remaining_seconds(&self, id: LeaseId, now_ms: u64) -> Option<i64> {
        self.deadlines.get(&id).map(|(_, d)| (d.saturating_sub(now_ms)).div_ceil(1000) as i64)
    }
    /// Leases whose deadline has passed at `now_ms`, in id order.
    pub fn expired(&self, now_ms: u64) -> Vec<LeaseId> {
        let mut v: Vec<LeaseId> =
            self.deadlines.iter().filter(|(_, (_, d))| *d <= now_ms).map(|(id, _)| *id).collect();
        v.sort_unstable();
        v
    }
}

struct WatcherSlot {
    prefix: String,
    tx: mpsc::UnboundedSender<Change>,
}

/// Fans committed events out to watchers, with no gap and no duplicate between history and live
/// events: a backend publishes under the hub lock, and registration reads history up to
/// [`WatchHub::published`] under the same lock.
#[derive(Default)]
pub struct WatchHub {
    inner: Mutex<HubInner>,
}

#[derive(Default)]
struct HubInner {
    published: Revision,
    watchers: Vec<WatcherSlot>,
}

impl WatchHub {
    pub fn new(published: Revision) -> Self {
        Self { inner: Mutex::new(HubInner { published, watchers: Vec::new() }) }
    }

    /// Delivers events of revision `rev` (all of them from one transaction, or one lease expiry).
    pub fn publish(&self, rev: Revision, events: &[WatchEvent]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.published = inner.published.max(rev);
        inner.watchers.retain(|w| {
            for e in events {
                if e.kv.key.starts_with(&w.prefix) && w.tx.send(Change::Event(e.clone())).is_err() {
                    return false;
                }
            }
            true
        });
    }

    /// Registers a watcher on `prefix`. `history(upto)` must return every event with revision in
    /// `[from, upto]` for that prefix, in order; it is called under the hub lock.
    pub fn register(
        &self,
        prefix: &str,
        history: impl FnOnce(Revision) -> Result<Vec<WatchEvent>, StoreError>,
    ) -> Result<Watcher, StoreError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for e in history(inner.published)? {
            let _ = tx.send(Change::Event(e));
        }
        inner.watchers.push(WatcherSlot { prefix: prefix.to_string(), tx });
        Ok(Watcher::new(rx))
    }
}

/// What a watcher delivers, in revision order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// One change of a watched key.
    Event(WatchEvent),
    /// Every change of the watched keys up to this revision was delivered: the store's revision
    /// also counts changes outside them (etcd shared with other prefixes or clusters), which a
    /// watcher never sees, so this is how it learns that it is current (see [`SyncHandle`]).
    Progress(Revision),
    /// The watch could not resume where it stopped (history compacted): these are the watched
    /// keys as they are at `revision`, to replace whatever the follower held; events follow it.
    Resync(RangeResponse),
}

/// Asks a watcher's backend for a [`Change::Progress`] at or beyond the store's revision now
/// (a backend whose revision moves with keys nobody watches, like etcd, writes a marker and
/// reports it once every earlier change was delivered). Requests made together are served by one.
#[derive(Clone, Debug)]
pub struct SyncHandle(mpsc::UnboundedSender<()>);

impl SyncHandle {
    pub fn new(tx: mpsc::UnboundedSender<()>) -> SyncHandle {
        SyncHandle(tx)
    }
    pub fn request(&self) {
        let _ = self.0.send(());
    }
}

/// A stream of changes under a prefix, in revision order.
pub struct Watcher {
    rx: mpsc::UnboundedReceiver<Change>,
    sync: Option<SyncHandle>,
}

impl Watcher {
    /// A watcher fed by a backend through `rx`.
    pub fn new(rx: mpsc::UnboundedReceiver<Change>) -> Watcher {
        Watcher { rx, sync: None }
    }
    /// A watcher whose backend can be asked for progress through `sync`.
    pub fn with_sync(rx: mpsc::UnboundedReceiver<Change>, sync: SyncHandle) -> Watcher {
        Watcher { rx, sync: Some(sync) }
    }
    /// How to ask for progress (None: the backend's revision moves only with watched changes,
    /// so waiting for events is enough).
    pub fn sync_handle(&self) -> Option<SyncHandle> {
        self.sync.clone()
    }
    /// The next change of a watched key; None once the store is dropped or the watch ended.
    /// Progress marks are skipped; a resync ends the stream of events (use `next_change` to
    /// follow across one).
    pub async fn next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.rx.recv().await? {
                Change::Event(e) => return Some(e),
                Change::Progress(_) => {}
                Change::Resync(_) => return None,
            }
        }
    }
    /// A change if one is already queued (progress marks skipped).
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        loop {
            match self.rx.try_recv().ok()? {
                Change::Event(e) => return Some(e),
                Change::Progress(_) => {}
                Change::Resync(_) => return None,
            }
        }
    }
    /// The next item, progress marks and resyncs included.
    pub async fn next_change(&mut self) -> Option<Change> {
        self.rx.recv().await
    }
    /// An item if one is already queued.
    pub fn try_next_change(&mut self) -> Option<Change> {
        self.rx.try_recv().ok()
    }
}
