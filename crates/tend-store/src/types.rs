//! The etcd-shaped data model of the store: key-values with revisions, compares, transactions, watch events.

use serde::{Deserialize, Serialize};

/// The store-wide revision: bumped by one for every transaction that changes something.
pub type Revision = i64;
/// A lease identifier (never 0; 0 is etcd's "no lease").
pub type LeaseId = i64;

/// One key with its value and MVCC metadata, as etcd reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the transaction that created the key (since its last deletion).
    pub create_revision: Revision,
    /// Revision of the last transaction that changed the key.
    pub mod_revision: Revision,
    /// Number of puts since creation; 0 means the key does not exist.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// How a compare relates the stored field to the given one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// The field a compare looks at. An absent key has version 0, revisions 0 and an empty value
/// that compares unequal to everything (as in etcd).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmpTarget {
    Value(Vec<u8>),
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
}

/// One guard of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CmpOp,
    pub target: CmpTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Self { key: key.into(), op: CmpOp::Equal, target: CmpTarget::Version(0) }
    }
    /// The key exists.
    pub fn present(key: impl Into<String>) -> Self {
        Self { key: key.into(), op: CmpOp::Greater, target: CmpTarget::Version(0) }
    }
    /// The key holds exactly `value`.
    pub fn value_eq(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self { key: key.into(), op: CmpOp::Equal, target: CmpTarget::Value(value.into()) }
    }
    /// The key was last modified at `rev` (0: absent).
    pub fn mod_revision_eq(key: impl Into<String>, rev: Revision) -> Self {
        Self { key: key.into(), op: CmpOp::Equal, target: CmpTarget::ModRevision(rev) }
    }
    /// The key's version is `version` (0: absent).
    pub fn version_eq(key: impl Into<String>, version: i64) -> Self {
        Self { key: key.into(), op: CmpOp::Equal, target: CmpTarget::Version(version) }
    }

    /// Evaluates the compare against the current state of its key.
    pub fn holds(&self, current: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord: Option<Ordering> = match (&self.target, current) {
            (CmpTarget::Value(v), Some(kv)) => Some(kv.value.as_slice().cmp(v.as_slice())),
            // etcd: a value compare on a missing key is false whatever the operator.
            (CmpTarget::Value(_), None) => None,
            (CmpTarget::Version(v), kv) => Some(kv.map_or(0, |k| k.version).cmp(v)),
            (CmpTarget::CreateRevision(r), kv) => Some(kv.map_or(0, |k| k.create_revision).cmp(r)),
            (CmpTarget::ModRevision(r), kv) => Some(kv.map_or(0, |k| k.mod_revision).cmp(r)),
        };
        match (ord, self.op) {
            (None, _) => false,
            (Some(o), CmpOp::Equal) => o == Ordering::Equal,
            (Some(o), CmpOp::NotEqual) => o != Ordering::Equal,
            (Some(o), CmpOp::Greater) => o == Ordering::Greater,
            (Some(o), CmpOp::Less) => o == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Get { key: String },
    Range { prefix: String },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: None }
    }
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }
    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }
}

/// The result of one [`TxnOp`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResponse {
    Put { prev: Option<KeyValue> },
    Delete { deleted: u64 },
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
}

/// A transaction: if every compare holds, run `success`, else run `failure`. Atomic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, c: Compare) -> Self {
        self.compare.push(c);
        self
    }
    pub fn then(mut self, op: TxnOp) -> Self {
        self.success.push(op);
        self
    }
    pub fn or_else(mut self, op: TxnOp) -> Self {
        self.failure.push(op);
        self
    }
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether the compares held (and so the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: Revision,
    pub responses: Vec<OpResponse>,
}

/// The keys under a prefix at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseGrant {
    pub id: LeaseId,
    pub ttl_seconds: i64,
}

/// Kind of a change seen by a watcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change, in revision order. For a delete, `kv` carries the key, an empty value and
/// `mod_revision` set to the deleting revision (as etcd does).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchEvent {
    pub kind: EventKind,
    pub kv: KeyValue,
}

impl WatchEvent {
    /// The revision at which the change happened.
    pub fn revision(&self) -> Revision {
        self.kv.mod_revision
    }
}
