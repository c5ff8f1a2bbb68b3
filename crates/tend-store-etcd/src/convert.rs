//! Conversions between tend's store types and etcd's: keys under the prefix, revisions relative
//! to the store's base, compares, operations, responses and errors.

use etcd_client as ec;
use tend_store::*;

/// Where a tend store lives inside etcd: its key prefix and the etcd revision at which it was
/// created (tend revision = etcd revision − base, so a fresh store starts at 0 as every backend).
#[derive(Clone, Debug)]
pub struct Frame {
    /// The store's root in etcd (`tend/`): tend's keys are under `<root>k/`, its own under
    /// `<root>meta/`.
    pub root: String,
    /// `<root>k/`.
    pub prefix: String,
    pub base: i64,
}

impl Frame {
    pub fn new(root: &str, base: i64) -> Frame {
        Frame { root: root.to_string(), prefix: format!("{root}k/"), base }
    }
    pub fn key(&self, k: &str) -> Vec<u8> {
        format!("{}{k}", self.prefix).into_bytes()
    }
    /// The marker a watch writes to learn that it is current (see `watch`).
    pub fn sync_key(&self) -> Vec<u8> {
        format!("{}meta/sync", self.root).into_bytes()
    }
    /// A tend revision as etcd's (0 stays 0: "absent" in compares, "now" in watches).
    pub fn to_etcd(&self, rev: Revision) -> i64 {
        if rev > 0 {
            rev + self.base
        } else {
            rev
        }
    }
    /// An etcd revision as tend's (never below 0).
    pub fn from_etcd(&self, rev: i64) -> Revision {
        if rev > 0 {
            (rev - self.base).max(0)
        } else {
            0
        }
    }
    /// A key-value of this store (None: outside the prefix).
    pub fn kv(&self, kv: &ec::KeyValue) -> Option<KeyValue> {
        let key = std::str::from_utf8(kv.key()).ok()?.strip_prefix(&self.prefix)?.to_string();
        Some(KeyValue {
            key,
            value: kv.value().to_vec(),
            create_revision: self.from_etcd(kv.create_revision()),
            mod_revision: self.from_etcd(kv.mod_revision()),
            version: kv.version(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    pub fn compare(&self, c: &Compare) -> ec::Compare {
        let op = match c.op {
            CmpOp::Equal => ec::CompareOp::Equal,
            CmpOp::NotEqual => ec::CompareOp::NotEqual,
            CmpOp::Greater => ec::CompareOp::Greater,
            CmpOp::Less => ec::CompareOp::Less,
        };
        let key = self.key(&c.key);
        match &c.target {
            CmpTarget::Value(v) => ec::Compare::value(key, op, v.clone()),
            CmpTarget::Version(v) => ec::Compare::version(key, op, *v),
            CmpTarget::CreateRevision(r) => ec::Compare::create_revision(key, op, self.to_etcd(*r)),
            CmpTarget::ModRevision(r) => ec::Compare::mod_revision(key, op, self.to_etcd(*r)),
        }
    }

    pub fn op(&self, op: &TxnOp) -> ec::TxnOp {
        match op {
            TxnOp::Put { key, value, lease } => {
                let opts = ec::PutOptions::new().with_prev_key();
                let opts = Some(match lease {
                    Some(l) => opts.with_lease(*l),
                    None => opts,
                });
                ec::TxnOp::put(self.key(key), value.clone(), opts)
            }
            TxnOp::Delete { key } => ec::TxnOp::delete(self.key(key), None),
            TxnOp::DeletePrefix { prefix } => {
                ec::TxnOp::delete(self.key(prefix), Some(ec::DeleteOptions::new().with_prefix()))
            }
            TxnOp::Get { key } => ec::TxnOp::get(self.key(key), None),
            TxnOp::Range { prefix } => {
                ec::TxnOp::get(self.key(prefix), Some(ec::GetOptions::new().with_prefix()))
            }
        }
    }

    pub fn response(&self, op: &TxnOp, r: &ec::TxnOpResponse) -> OpResponse {
        match (op, r) {
            (TxnOp::Put { .. }, ec::TxnOpResponse::Put(p)) => {
                OpResponse::Put { prev: p.prev_key().and_then(|kv| self.kv(kv)) }
            }
            (TxnOp::Get { .. }, ec::TxnOpResponse::Get(g)) => {
                OpResponse::Get(g.kvs().first().and_then(|kv| self.kv(kv)))
            }
            (_, ec::TxnOpResponse::Get(g)) => {
                OpResponse::Range(g.kvs().iter().filter_map(|kv| self.kv(kv)).collect())
            }
            (_, ec::TxnOpResponse::Delete(d)) => OpResponse::Delete { deleted: d.deleted().max(0) as u64 },
            (_, _) => OpResponse::Delete { deleted: 0 },
        }
    }
}

/// An etcd error as the store's. `lease`: the lease the request named, for LeaseNotFound.
pub fn error(e: ec::Error, lease: Option<LeaseId>) -> StoreError {
    let msg = e.to_string();
    if msg.contains("requested lease not found") || msg.contains("lease keep alive error: lease not found") {
        return StoreError::LeaseNotFound(lease.unwrap_or(0));
    }
    if msg.contains("required revision has been compacted") {
        return StoreError::Compacted { requested: 0, compacted: 0 };
    }
    if msg.contains("too many operations") {
        return StoreError::InvalidRequest(format!(
            "{msg}: start etcd with a higher --max-txn-ops (e.g. 10000): tend deletes a service, with its instances and volume records, in one transaction"
        ));
    }
    if msg.contains("future revision") || msg.contains("duplicate key") {
        return StoreError::InvalidRequest(msg);
    }
    if msg.contains("request is too large") {
        return StoreError::InvalidRequest(msg);
    }
    // The causes too: a transport error says no more than "transport error" on its own.
    let mut text = match &e {
        ec::Error::TransportError(t) => format!("etcd: {msg} ({t:?})"),
        _ => format!("etcd: {msg}"),
    };
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(&format!(": {c_text}"));
        }
        cause = c.source();
    }
    StoreError::Io(text)
}
