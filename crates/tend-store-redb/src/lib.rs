//! The embedded, durable StateStore backend: redb underneath, one writer thread doing group commit.
//!
//! Every write request goes to a single writer thread. The thread drains whatever requests are
//! queued, applies each as its own logical transaction (its own revision) inside one redb write
//! transaction, commits once with `Durability::Immediate` (one fsync for the batch), and only then
//! answers the callers and publishes the events to watchers. Reads use redb's MVCC snapshots and
//! never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tend_model::SharedClock;
use tend_store::core::{apply_txn, delete_one, KvAccess, LeaseClock, WatchHub};
use tend_store::{
    KeyValue, LeaseGrant, LeaseId, RangeResponse, Revision, StateStore, StoreError, Txn, TxnOp, TxnResponse,
    WatchEvent, Watcher, FORMAT_VERSION, FORMAT_VERSION_KEY,
};
use tokio::sync::oneshot;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: TableDefinition<(i64, &str), ()> = TableDefinition::new("lease_keys");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";
const META_NEXT_LEASE: &str = "next_lease";

/// Most requests folded into one redb commit.
const MAX_BATCH: usize = 4096;

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Storage record of a key's value and metadata (separate from the model's KeyValue).
fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + kv.value.len());
    b.extend_from_slice(&kv.create_revision.to_le_bytes());
    b.extend_from_slice(&kv.mod_revision.to_le_bytes());
    b.extend_from_slice(&kv.version.to_le_bytes());
    b.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    b.extend_from_slice(&kv.value);
    b
}

fn decode_kv(key: &str, b: &[u8]) -> Result<KeyValue, StoreError> {
    if b.len() < 32 {
        return Err(StoreError::Io(format!("corrupt record for key {key:?}: {} bytes", b.len())));
    }
    let num = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        i64::from_le_bytes(a)
    };
    let lease = num(3);
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: num(0),
        mod_revision: num(1),
        version: num(2),
        lease: (lease != 0).then_some(lease),
        value: b[32..].to_vec(),
    })
}

fn meta_i64(v: Option<redb::AccessGuard<'_, &[u8]>>) -> i64 {
    v.and_then(|g| <[u8; 8]>::try_from(g.value()).ok()).map(i64::from_le_bytes).unwrap_or(0)
}

/// One key of the kv table, decoded.
fn table_get(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<Option<KeyValue>, StoreError> {
    match t.get(key).map_err(io)? {
        Some(v) => Ok(Some(decode_kv(key, v.value())?)),
        None => Ok(None),
    }
}

/// Every key of the kv table under `prefix`, in key order, decoded.
fn table_range(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out = Vec::new();
    for item in t.range(prefix..).map_err(io)? {
        let (k, v) = item.map_err(io)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(decode_kv(k.value(), v.value())?);
    }
    Ok(out)
}

/// KvAccess over the tables of one redb write transaction.
struct WriteAccess<'t> {
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    leases: redb::Table<'t, i64, i64>,
    lease_keys: redb::Table<'t, (i64, &'static str), ()>,
}

impl KvAccess for WriteAccess<'_> {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        table_get(&self.kv, key)
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        table_range(&self.kv, prefix)
    }
    fn put(&mut self, kv: &KeyValue) -> Result<(), StoreError> {
        self.kv.insert(kv.key.as_str(), encode_kv(kv).as_slice()).map_err(io)?;
        Ok(())
    }
    fn delete(&mut self, key: &str) -> Result<(), StoreError> {
        self.kv.remove(key).map_err(io)?;
        Ok(())
    }
    fn lease_exists(&mut self, id: LeaseId) -> Result<bool, StoreError> {
        Ok(self.leases.get(id).map_err(io)?.is_some())
    }
    fn attach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError> {
        self.lease_keys.insert((lease, key), ()).map_err(io)?;
        Ok(())
    }
    fn detach(&mut self, lease: LeaseId, key: &str) -> Result<(), StoreError> {
        self.lease_keys.remove((lease, key)).map_err(io)?;
        Ok(())
    }
}

/// KvAccess over a read snapshot, for transactions that write nothing.
struct ReadAccess {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
}

impl KvAccess for ReadAccess {
    fn get(&mut self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        table_get(&self.kv, key)
    }
    fn range(&mut self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        table_range(&self.kv, prefix)
    }
    fn put(&mut self, _: &KeyValue) -> Result<(), StoreError> {
        Err(StoreError::InvalidRequest("write in a read-only transaction".into()))
    }
    fn delete(&mut self, _: &str) -> Result<(), StoreError> {
        Err(StoreError::InvalidRequest("write in a read-only transaction".into()))
    }
    fn lease_exists(&mut self, _: LeaseId) -> Result<bool, StoreError> {
        Ok(false)
    }
    fn attach(&mut self, _: LeaseId, _: &str) -> Result<(), StoreError> {
        Err(StoreError::InvalidRequest("write in a read-only transaction".into()))
    }
    fn detach(&mut self, _: LeaseId, _: &str) -> Result<(), StoreError> {
        Err(StoreError::InvalidRequest("write in a read-only transaction".into()))
    }
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnResponse, StoreError>>),
    Grant(i64, oneshot::Sender<Result<LeaseGrant, StoreError>>),
    Revoke(LeaseId, bool, oneshot::Sender<Result<(), StoreError>>),
    Compact(Revision, oneshot::Sender<Result<(), StoreError>>),
}

/// Shared between the API side and the writer thread.
struct Shared {
    db: Database,
    hub: WatchHub,
    leases: Mutex<LeaseClock>,
    clock: SharedClock,
    path: PathBuf,
}

/// The redb-backed store. Cloning the `Arc` shares one writer thread.
pub struct RedbStore {
    shared: Arc<Shared>,
    tx: Mutex<Option<std_mpsc::Sender<Request>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl RedbStore {
    /// Opens (or creates) the store in file `path`. Refuses a store of another format version.
    pub fn open(path: impl AsRef<Path>, clock: SharedClock) -> Result<Arc<Self>, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path)
            .map_err(|e| StoreError::Io(format!("cannot open store {}: {e}", path.display())))?;
        let now = clock.now_ms();
        let mut lease_clock = LeaseClock::default();
        let revision;
        {
            let w = db.begin_write().map_err(io)?;
            {
                let mut meta = w.open_table(META).map_err(io)?;
                let found = meta.get(FORMAT_VERSION_KEY).map_err(io)?.map(|g| g.value().to_vec());
                match found {
                    None => {
                        meta.insert(FORMAT_VERSION_KEY, FORMAT_VERSION.to_string().as_bytes()).map_err(io)?;
                    }
                    Some(v) if v == FORMAT_VERSION.to_string().as_bytes() => {}
                    Some(v) => {
                        return Err(StoreError::UnsupportedFormat {
                            path: path.display().to_string(),
                            found: String::from_utf8_lossy(&v).into_owned(),
                            supported: FORMAT_VERSION,
                        })
                    }
                }
                revision = meta_i64(meta.get(META_REVISION).map_err(io)?);
                w.open_table(KV).map_err(io)?;
                w.open_table(LEASE_KEYS).map_err(io)?;
                w.open_table(LOG).map_err(io)?;
                let leases = w.open_table(LEASES).map_err(io)?;
                // Like etcd after a restart: every lease gets its full TTL again.
                for item in leases.iter().map_err(io)? {
                    let (id, ttl) = item.map_err(io)?;
                    lease_clock.arm(id.value(), ttl.value(), now);
                }
            }
            w.commit().map_err(io)?;
        }
        let shared = Arc::new(Shared {
            db,
            hub: WatchHub::new(revision),
            leases: Mutex::new(lease_clock),
            clock,
            path,
        });
        let (tx, rx) = std_mpsc::channel();
        let s2 = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tend-store-writer".into())
            .spawn(move || writer_loop(s2, rx))
            .map_err(io)?;
        Ok(Arc::new(Self { shared, tx: Mutex::new(Some(tx)), writer: Mutex::new(Some(writer)) }))
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Stops the writer thread after it finished queued requests. Later calls fail with Closed.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (otx, orx) = oneshot::channel();
        {
            let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
            let tx = guard.as_ref().ok_or(StoreError::Closed)?;
            tx.send(make(otx)).map_err(|_| StoreError::Closed)?;
        }
        orx.await.map_err(|_| StoreError::Closed)?
    }

    /// Revokes leases whose deadline passed (each a revision of its own, as in etcd).
    async fn expire_due(&self) -> Result<(), StoreError> {
        let due = {
            let lc = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
            lc.expired(self.shared.clock.now_ms())
        };
        for id in due {
            match self.request(|tx| Request::Revoke(id, true, tx)).await {
                Ok(()) | Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_txn(&self, txn: &Txn) -> Result<TxnResponse, StoreError> {
        let r = self.shared.db.begin_read().map_err(io)?;
        let meta = r.open_table(META).map_err(io)?;
        let rev = meta_i64(meta.get(META_REVISION).map_err(io)?);
        let mut access = ReadAccess { kv: r.open_table(KV).map_err(io)? };
        let (resp, events) = apply_txn(&mut access, rev, txn)?;
        debug_assert!(events.is_empty());
        Ok(resp)
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn has_writes(txn: &Txn) -> bool {
    txn.success
        .iter()
        .chain(txn.failure.iter())
        .any(|op| matches!(op, TxnOp::Put { .. } | TxnOp::Delete { .. } | TxnOp::DeletePrefix { .. }))
}

/// A request's outcome, held until the batch is durable.
enum Done {
    Txn(oneshot::Sender<Result<TxnResponse, StoreError>>, Result<TxnResponse, StoreError>),
    Grant(oneshot::Sender<Result<LeaseGrant, StoreError>>, Result<LeaseGrant, StoreError>),
    Unit(oneshot::Sender<Result<(), StoreError>>, Result<(), StoreError>),
}

impl Done {
    fn fail(self, e: &StoreError) {
        let e2 = || StoreError::Io(e.to_string());
        match self {
            Done::Txn(tx, _) => drop(tx.send(Err(e2()))),
            Done::Grant(tx, _) => drop(tx.send(Err(e2()))),
            Done::Unit(tx, _) => drop(tx.send(Err(e2()))),
        }
    }
    fn answer(self) {
        match self {
            Done::Txn(tx, r) => drop(tx.send(r)),
            Done::Grant(tx, r) => drop(tx.send(r)),
            Done::Unit(tx, r) => drop(tx.send(r)),
        }
    }
}

/// Lease changes to make visible in memory only after the commit.
enum LeaseEffect {
    Arm(LeaseId, i64),
    Remove(LeaseId),
}

fn writer_loop(shared: Arc<Shared>, rx: std_mpsc::Receiver<Request>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(batch.len());
        let mut published: Vec<(Revision, Vec<WatchEvent>)> = Vec::new();
        let mut lease_effects = Vec::new();
        let result = write_batch(&shared, batch, &mut done, &mut published, &mut lease_effects);
        match result {
            Ok(()) => {
                {
                    let mut lc = shared.leases.lock().unwrap_or_else(|e| e.into_inner());
                    let now = shared.clock.now_ms();
                    for e in lease_effects {
                        match e {
                            LeaseEffect::Arm(id, ttl) => lc.arm(id, ttl, now),
                            LeaseEffect::Remove(id) => lc.remove(id),
                        }
                    }
                }
                for (rev, events) in &published {
                    shared.hub.publish(*rev, events);
                }
                for d in done {
                    d.answer();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "store batch failed; nothing of it was written");
                for d in done {
                    d.fail(&e);
                }
            }
        }
    }
}

fn write_batch(
    shared: &Shared,
    batch: Vec<Request>,
    done: &mut Vec<Done>,
    published: &mut Vec<(Revision, Vec<WatchEvent>)>,
    lease_effects: &mut Vec<LeaseEffect>,
) -> Result<(), StoreError> {
    let w = shared.db.begin_write().map_err(io)?;
    {
        let mut meta = w.open_table(META).map_err(io)?;
        let mut log = w.open_table(LOG).map_err(io)?;
        let mut access = WriteAccess {
            kv: w.open_table(KV).map_err(io)?,
            leases: w.open_table(LEASES).map_err(io)?,
            lease_keys: w.open_table(LEASE_KEYS).map_err(io)?,
        };
        let mut rev = meta_i64(meta.get(META_REVISION).map_err(io)?);
        let mut next_lease = meta_i64(meta.get(META_NEXT_LEASE).map_err(io)?).max(1);
        let mut compacted = meta_i64(meta.get(META_COMPACTED).map_err(io)?);
        // Leases revoked or granted earlier in this batch (the in-memory clock learns after commit).
        let mut gone: Vec<LeaseId> = Vec::new();
        for req in batch {
            match req {
                Request::Txn(txn, tx) => {
                    let r = apply_txn(&mut access, rev, &txn);
                    if let Err(StoreError::Io(e)) = &r {
                        // A storage fault mid-transaction: abort the whole batch, nothing lands.
                        done.push(Done::Txn(tx, Err(StoreError::Io(e.clone()))));
                        return Err(StoreError::Io(e.clone()));
                    }
                    if let Ok((resp, events)) = &r {
                        if !events.is_empty() {
                            rev = resp.revision;
                            log.insert(rev, serde_json::to_vec(events).map_err(io)?.as_slice())
                                .map_err(io)?;
                            published.push((rev, events.clone()));
                        }
                    }
                    done.push(Done::Txn(tx, r.map(|(resp, _)| resp)));
                }
                Request::Grant(ttl, tx) => {
                    let id = next_lease;
                    next_lease += 1;
                    access.leases.insert(id, ttl).map_err(io)?;
                    lease_effects.push(LeaseEffect::Arm(id, ttl));
                    done.push(Done::Grant(tx, Ok(LeaseGrant { id, ttl_seconds: ttl })));
                }
                Request::Revoke(id, only_if_expired, tx) => {
                    let exists = access.leases.get(id).map_err(io)?.is_some() && !gone.contains(&id);
                    let still_due = !only_if_expired || {
                        let lc = shared.leases.lock().unwrap_or_else(|e| e.into_inner());
                        lc.expired(shared.clock.now_ms()).contains(&id)
                    };
                    if !exists {
                        done.push(Done::Unit(tx, Err(StoreError::LeaseNotFound(id))));
                        continue;
                    }
                    if !still_due {
                        // Kept alive since the caller saw it due.
                        done.push(Done::Unit(tx, Ok(())));
                        continue;
                    }
                    let keys: Vec<String> = {
                        let mut v = Vec::new();
                        for item in access.lease_keys.range((id, "")..(id + 1, "")).map_err(io)? {
                            let (k, _) = item.map_err(io)?;
                            v.push(k.value().1.to_string());
                        }
                        v
                    };
                    let mut events = Vec::new();
                    for k in keys {
                        delete_one(&mut access, &k, rev + 1, &mut events)?;
                    }
                    access.leases.remove(id).map_err(io)?;
                    gone.push(id);
                    lease_effects.push(LeaseEffect::Remove(id));
                    if !events.is_empty() {
                        rev += 1;
                        log.insert(rev, serde_json::to_vec(&events).map_err(io)?.as_slice()).map_err(io)?;
                        published.push((rev, events));
                    }
                    done.push(Done::Unit(tx, Ok(())));
                }
                Request::Compact(to, tx) => {
                    if to > rev {
                        let msg = format!("cannot compact to {to}: beyond the current revision {rev}");
                        done.push(Done::Unit(tx, Err(StoreError::InvalidRequest(msg))));
                        continue;
                    }
                    if to <= compacted {
                        done.push(Done::Unit(tx, Err(StoreError::Compacted { requested: to, compacted })));
                        continue;
                    }
                    log.retain(|r, _| r >= to).map_err(io)?;
                    compacted = to - 1;
                    done.push(Done::Unit(tx, Ok(())));
                }
            }
        }
        meta.insert(META_REVISION, rev.to_le_bytes().as_slice()).map_err(io)?;
        meta.insert(META_NEXT_LEASE, next_lease.to_le_bytes().as_slice()).map_err(io)?;
        meta.insert(META_COMPACTED, compacted.to_le_bytes().as_slice()).map_err(io)?;
    }
    w.commit().map_err(io)?;
    Ok(())
}

#[async_trait]
impl StateStore for RedbStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.expire_due().await?;
        let r = self.shared.db.begin_read().map_err(io)?;
        table_get(&r.open_table(KV).map_err(io)?, key)
    }

    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.expire_due().await?;
        let r = self.shared.db.begin_read().map_err(io)?;
        let meta = r.open_table(META).map_err(io)?;
        let revision = meta_i64(meta.get(META_REVISION).map_err(io)?);
        let mut access = ReadAccess { kv: r.open_table(KV).map_err(io)? };
        Ok(RangeResponse { kvs: access.range(prefix)?, revision })
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.expire_due().await?;
        if !has_writes(&txn) {
            return self.read_txn(&txn);
        }
        tend_store::core::validate_txn(&txn)?;
        self.request(|tx| Request::Txn(txn, tx)).await
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.expire_due().await?;
        let r = self.shared.db.begin_read().map_err(io)?;
        let meta = r.open_table(META).map_err(io)?;
        Ok(meta_i64(meta.get(META_REVISION).map_err(io)?))
    }

    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        if ttl_seconds <= 0 {
            return Err(StoreError::InvalidRequest(format!("lease TTL must be positive, got {ttl_seconds}")));
        }
        self.expire_due().await?;
        self.request(|tx| Request::Grant(ttl_seconds, tx)).await
    }

    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.expire_due().await?;
        let mut lc = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = lc.ttl(id).ok_or(StoreError::LeaseNotFound(id))?;
        lc.arm(id, ttl, self.shared.clock.now_ms());
        Ok(ttl)
    }

    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.expire_due().await?;
        let lc = self.shared.leases.lock().unwrap_or_else(|e| e.into_inner());
        lc.remaining_seconds(id, self.shared.clock.now_ms()).ok_or(StoreError::LeaseNotFound(id))
    }

    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.expire_due().await?;
        self.request(|tx| Request::Revoke(id, false, tx)).await
    }

    async fn expire_leases(&self) -> Result<(), StoreError> {
        self.expire_due().await
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        let db = &self.shared.db;
        self.shared.hub.register(prefix, |upto| {
            let r = db.begin_read().map_err(io)?;
            let meta = r.open_table(META).map_err(io)?;
            let compacted = meta_i64(meta.get(META_COMPACTED).map_err(io)?);
            if from > 0 && from <= compacted {
                return Err(StoreError::Compacted { requested: from, compacted });
            }
            if from <= 0 {
                return Ok(Vec::new());
            }
            let log = r.open_table(LOG).map_err(io)?;
            let mut out = Vec::new();
            for item in log.range(from..=upto).map_err(io)? {
                let (_, v) = item.map_err(io)?;
                let events: Vec<WatchEvent> = serde_json::from_slice(v.value()).map_err(io)?;
                out.extend(events.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
            }
            Ok(out)
        })
    }

    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.request(|tx| Request::Compact(rev, tx)).await
    }
}
