//! The conformance suite every StateStore backend must pass: etcd's semantics, checked case by case.
//!
//! A backend's test file calls [`conformance_tests!`] with a factory taking a
//! [`ManualClock`](tend_model::ManualClock) and returning an `Arc<dyn StateStore>`; a backend on
//! real time (etcd, whose leases expire by its own clock) calls `conformance_tests!(real_time:
//! f)` with an async factory that also returns what keeps its server alive for the case. The
//! macro expands to one `#[tokio::test]` per case so a failure names its case.

use std::any::Any;
use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tend_model::ManualClock;

use crate::types::*;
use crate::{StateStore, StoreError};

/// A backend under test on a manual clock: a fresh, empty store on the given clock.
pub type Factory = Arc<dyn Fn(ManualClock) -> Arc<dyn StateStore> + Send + Sync>;
/// A fresh store on real time, and what must live as long as the case (its server); None when
/// the backend is not installed here (the case then says it skips, and passes nothing off as
/// tested).
pub type Opened = Option<(Arc<dyn StateStore>, Box<dyn Any + Send>)>;
/// A backend under test on real time.
pub type RealFactory = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Opened> + Send>> + Send + Sync>;

/// How a case gets its store.
pub enum Backend {
    Manual(Factory),
    Real(RealFactory),
}

/// Expands to one test per conformance case for the given factory expression.
#[macro_export]
macro_rules! conformance_tests {
    (real_time: $factory:expr) => {
        $crate::conformance_tests!(@all {
            let f = $factory;
            $crate::conformance::Backend::Real(std::sync::Arc::new(move || Box::pin(f())))
        });
    };
    ($factory:expr) => {
        $crate::conformance_tests!(@all $crate::conformance::Backend::Manual(std::sync::Arc::new($factory)));
    };
    (@all $backend:expr) => {
        $crate::conformance_tests!(@cases $backend;
            put_get_and_revisions, versions_and_create_revision, txn_compares,
            txn_failure_branch_and_reads, reads_do_not_bump_revision, delete_and_prefix,
            duplicate_key_in_txn_refused, cas_race_one_winner_per_round, create_if_absent_race,
            lease_expiry_deletes_keys, keep_alive_extends, revoke_deletes_keys,
            put_with_unknown_lease_refused_and_changes_nothing, watch_replays_then_follows,
            watch_prefix_filter, watch_sees_lease_expiry, compaction);
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::conformance::$case($backend).await;
            }
        )*
    };
}

/// A case's store and its time.
struct Subject {
    store: Arc<dyn StateStore>,
    clock: Option<ManualClock>,
    _alive: Option<Box<dyn Any + Send>>,
}

impl Subject {
    /// Lets `ms` pass: on the manual clock at once, on real time by sleeping.
    async fn advance_ms(&self, ms: u64) {
        match &self.clock {
            Some(c) => c.advance_ms(ms),
            None => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    /// Expires due leases: a manual-clock backend when told; a real-time one (etcd) on its own
    /// schedule, so this waits (up to 5 s) until `key` is gone.
    async fn expire(&self, key: &str) {
        self.store.expire_leases().await.unwrap();
        if self.clock.is_none() {
            for _ in 0..100 {
                if self.store.get(key).await.unwrap().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    /// Rounds of a loop that lets time pass: fewer on real time, where each costs seconds.
    fn rounds(&self, manual: usize) -> usize {
        if self.clock.is_some() {
            manual
        } else {
            2
        }
    }
    /// Seconds a lease has left, as reported: a real-time backend counts whole seconds down
    /// while the case runs, so one less is accepted there.
    fn ttl_ok(&self, got: i64, want: i64) -> bool {
        got == want || (self.clock.is_none() && got == want - 1)
    }
}

async fn fresh(b: &Backend) -> Option<Subject> {
    match b {
        Backend::Manual(f) => {
            let clock = ManualClock::new(1_000_000);
            Some(Subject { store: f(clock.clone()), clock: Some(clock), _alive: None })
        }
        Backend::Real(f) => {
            let Some((store, alive)) = f().await else {
                eprintln!("SKIPPED: the backend under test is not installed here");
                return None;
            };
            Some(Subject { store, clock: None, _alive: Some(alive) })
        }
    }
}

pub async fn put_get_and_revisions(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    assert_eq!(s.revision().await.unwrap(), 0);
    assert_eq!(s.put("a", b"1").await.unwrap(), 1);
    assert_eq!(s.put("b", b"2").await.unwrap(), 2);
    let a = s.get("a").await.unwrap().expect("a exists");
    assert_eq!(a.value, b"1");
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 1, 1));
    assert_eq!(s.get("missing").await.unwrap(), None);
    let r = s.range("").await.unwrap();
    assert_eq!(r.revision, 2);
    assert_eq!(r.kvs.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(), vec!["a", "b"]);
}

pub async fn versions_and_create_revision(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("k", b"1").await.unwrap();
    s.put("x", b"x").await.unwrap();
    s.put("k", b"2").await.unwrap();
    let k = s.get("k").await.unwrap().unwrap();
    assert_eq!((k.create_revision, k.mod_revision, k.version), (1, 3, 2));
    assert!(s.delete("k").await.unwrap());
    assert!(!s.delete("k").await.unwrap(), "second delete finds nothing");
    s.put("k", b"3").await.unwrap();
    let k = s.get("k").await.unwrap().unwrap();
    assert_eq!((k.create_revision, k.version), (5, 1), "recreated key starts over");
}

pub async fn txn_compares(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("k", b"v1").await.unwrap();
    let cases: Vec<(Compare, bool)> = vec![
        (Compare::value_eq("k", b"v1".to_vec()), true),
        (Compare::value_eq("k", b"v2".to_vec()), false),
        (Compare::value_eq("missing", b"".to_vec()), false),
        (Compare::version_eq("k", 1), true),
        (Compare::version_eq("k", 2), false),
        (Compare::absent("missing"), true),
        (Compare::absent("k"), false),
        (Compare::present("k"), true),
        (Compare::mod_revision_eq("k", 1), true),
        (Compare::mod_revision_eq("missing", 0), true),
        (Compare { key: "k".into(), op: CmpOp::Less, target: CmpTarget::ModRevision(5) }, true),
        (Compare { key: "k".into(), op: CmpOp::Greater, target: CmpTarget::CreateRevision(1) }, false),
        (Compare { key: "k".into(), op: CmpOp::NotEqual, target: CmpTarget::Value(b"zz".to_vec()) }, true),
    ];
    for (c, want) in cases {
        let r = s.txn(Txn::new().when(c.clone())).await.unwrap();
        assert_eq!(r.succeeded, want, "compare {c:?}");
    }
}

pub async fn txn_failure_branch_and_reads(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("k", b"old").await.unwrap();
    let r = s
        .txn(
            Txn::new()
                .when(Compare::value_eq("k", b"other".to_vec()))
                .then(TxnOp::put("k", b"new".to_vec()))
                .or_else(TxnOp::get("k")),
        )
        .await
        .unwrap();
    assert!(!r.succeeded);
    match &r.responses[..] {
        [OpResponse::Get(Some(kv))] => assert_eq!(kv.value, b"old"),
        other => panic!("unexpected responses {other:?}"),
    }
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"old");
    // Multi-key atomic success.
    let r = s
        .txn(
            Txn::new()
                .when(Compare::version_eq("k", 1))
                .then(TxnOp::put("k", b"n".to_vec()))
                .then(TxnOp::put("j", b"m".to_vec())),
        )
        .await
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(
        s.get("k").await.unwrap().unwrap().mod_revision,
        s.get("j").await.unwrap().unwrap().mod_revision
    );
}

pub async fn reads_do_not_bump_revision(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("k", b"1").await.unwrap();
    let r = s.txn(Txn::new().then(TxnOp::get("k")).then(TxnOp::Range { prefix: "".into() })).await.unwrap();
    assert_eq!(r.revision, 1);
    let r = s.txn(Txn::new().then(TxnOp::delete("nothing"))).await.unwrap();
    assert_eq!(r.revision, 1, "a delete that deletes nothing changes nothing");
    assert_eq!(s.revision().await.unwrap(), 1);
}

pub async fn delete_and_prefix(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    for k in ["p/a", "p/b", "p/c/d", "q/a", "p"] {
        s.put(k, b"x").await.unwrap();
    }
    let r = s.txn(Txn::new().then(TxnOp::DeletePrefix { prefix: "p/".into() })).await.unwrap();
    assert_eq!(r.responses, vec![OpResponse::Delete { deleted: 3 }]);
    assert_eq!(r.revision, 6, "one revision for the whole prefix delete");
    let keys: Vec<String> = s.range("").await.unwrap().kvs.into_iter().map(|k| k.key).collect();
    assert_eq!(keys, vec!["p", "q/a"]);
}

pub async fn duplicate_key_in_txn_refused(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let e = s.txn(Txn::new().then(TxnOp::put("k", b"1".to_vec())).then(TxnOp::put("k", b"2".to_vec()))).await;
    assert!(matches!(e, Err(StoreError::InvalidRequest(_))), "got {e:?}");
    assert_eq!(s.revision().await.unwrap(), 0);
    assert_eq!(s.get("k").await.unwrap(), None);
}

/// N writers increment a counter with compare-and-swap; every success is unique, none lost.
pub async fn cas_race_one_winner_per_round(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("counter", b"0").await.unwrap();
    let writers = 8;
    let per_writer = 25;
    let mut handles = Vec::new();
    for _ in 0..writers {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut attempts = 0;
            while wins.len() < per_writer {
                attempts += 1;
                assert!(attempts < 100_000, "bounded retries");
                let cur = s.get("counter").await.unwrap().unwrap();
                let n: u64 = String::from_utf8(cur.value.clone()).unwrap().parse().unwrap();
                let r = s
                    .txn(
                        Txn::new()
                            .when(Compare::mod_revision_eq("counter", cur.mod_revision))
                            .then(TxnOp::put("counter", (n + 1).to_string().into_bytes())),
                    )
                    .await
                    .unwrap();
                if r.succeeded {
                    wins.push(n + 1);
                }
            }
            wins
        }));
    }
    let mut all = BTreeSet::new();
    for h in handles {
        for w in h.await.unwrap() {
            assert!(all.insert(w), "value {w} won twice");
        }
    }
    let total = (writers * per_writer) as u64;
    assert_eq!(all.len() as u64, total);
    let v = s.get("counter").await.unwrap().unwrap();
    assert_eq!(String::from_utf8(v.value).unwrap(), total.to_string());
}

pub async fn create_if_absent_race(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    for round in 0..20 {
        let key = format!("lock/{round}");
        let mut handles = Vec::new();
        for w in 0..6 {
            let s = s.clone();
            let key = key.clone();
            handles.push(tokio::spawn(async move {
                s.txn(
                    Txn::new()
                        .when(Compare::absent(&key))
                        .then(TxnOp::put(&key, format!("w{w}").into_bytes())),
                )
                .await
                .unwrap()
                .succeeded
            }));
        }
        let mut winners = 0;
        for h in handles {
            winners += h.await.unwrap() as u32;
        }
        assert_eq!(winners, 1, "round {round}: exactly one writer creates the key");
    }
}

pub async fn lease_expiry_deletes_keys(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let l = s.grant_lease(10).await.unwrap();
    s.txn(Txn::new().then(TxnOp::put_with_lease("held", b"x".to_vec(), l.id))).await.unwrap();
    s.put("free", b"y").await.unwrap();
    t.advance_ms(9_000).await;
    assert!(s.get("held").await.unwrap().is_some(), "alive before the TTL");
    let ttl = s.lease_time_to_live(l.id).await.unwrap();
    assert!(t.ttl_ok(ttl, 1), "1 s left, not {ttl}");
    t.advance_ms(1_000).await;
    t.expire("held").await;
    assert!(s.get("held").await.unwrap().is_none(), "gone at the TTL");
    assert!(s.get("free").await.unwrap().is_some());
    let e = s.keep_alive(l.id).await;
    assert!(matches!(e, Err(StoreError::LeaseNotFound(_))), "got {e:?}");
    assert_eq!(s.revision().await.unwrap(), 3, "expiry is a revision of its own");
}

pub async fn keep_alive_extends(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let l = s.grant_lease(5).await.unwrap();
    s.txn(Txn::new().then(TxnOp::put_with_lease("k", b"x".to_vec(), l.id))).await.unwrap();
    for _ in 0..t.rounds(10) {
        t.advance_ms(4_000).await;
        assert_eq!(s.keep_alive(l.id).await.unwrap(), 5);
    }
    assert!(s.get("k").await.unwrap().is_some(), "kept alive every 4 s");
    t.advance_ms(5_001).await;
    t.expire("k").await;
    assert!(s.get("k").await.unwrap().is_none());
}

pub async fn revoke_deletes_keys(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let l = s.grant_lease(60).await.unwrap();
    s.txn(Txn::new().then(TxnOp::put_with_lease("a", b"1".to_vec(), l.id)).then(TxnOp::put_with_lease(
        "b",
        b"2".to_vec(),
        l.id,
    )))
    .await
    .unwrap();
    // Re-putting "b" without the lease detaches it.
    s.put("b", b"3").await.unwrap();
    s.revoke_lease(l.id).await.unwrap();
    assert!(s.get("a").await.unwrap().is_none());
    assert_eq!(s.get("b").await.unwrap().unwrap().value, b"3");
    assert!(matches!(s.revoke_lease(l.id).await, Err(StoreError::LeaseNotFound(_))));
    assert!(matches!(s.grant_lease(0).await, Err(StoreError::InvalidRequest(_))));
}

pub async fn put_with_unknown_lease_refused_and_changes_nothing(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    s.put("x", b"1").await.unwrap();
    let e = s
        .txn(Txn::new().then(TxnOp::put("x", b"2".to_vec())).then(TxnOp::put_with_lease(
            "k",
            b"v".to_vec(),
            4242,
        )))
        .await;
    assert!(matches!(e, Err(StoreError::LeaseNotFound(4242))), "got {e:?}");
    assert_eq!(s.get("x").await.unwrap().unwrap().value, b"1");
    assert_eq!(s.revision().await.unwrap(), 1);
}

async fn next_event(w: &mut crate::Watcher) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("event within 5 s")
        .expect("stream open")
}

pub async fn watch_replays_then_follows(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    for i in 0..5 {
        s.put(&format!("k{i}"), format!("{i}").as_bytes()).await.unwrap();
    }
    let mut w = s.watch("", 2).await.unwrap();
    // Concurrent writers while the watcher starts: no gap, no duplicate, in order.
    let writer = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 5..50 {
                s.put(&format!("k{}", i % 7), format!("{i}").as_bytes()).await.unwrap();
            }
        })
    };
    let mut revs = Vec::new();
    while revs.len() < 49 {
        revs.push(next_event(&mut w).await.revision());
    }
    writer.await.unwrap();
    assert_eq!(revs, (2..=50).collect::<Vec<_>>());
    assert!(w.try_next().is_none());
    // From 0 means: only future changes.
    let mut w0 = s.watch("", 0).await.unwrap();
    s.delete("k1").await.unwrap();
    let e = next_event(&mut w0).await;
    assert_eq!((e.kind, e.kv.key.as_str(), e.revision()), (EventKind::Delete, "k1", 51));
}

pub async fn watch_prefix_filter(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let mut w = s.watch("svc/a/", 1).await.unwrap();
    s.put("svc/a/x", b"1").await.unwrap();
    s.put("svc/b/x", b"2").await.unwrap();
    s.put("svc/a/y", b"3").await.unwrap();
    assert_eq!(next_event(&mut w).await.kv.key, "svc/a/x");
    let e = next_event(&mut w).await;
    assert_eq!((e.kv.key.as_str(), e.revision()), ("svc/a/y", 3));
}

pub async fn watch_sees_lease_expiry(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    let l = s.grant_lease(3).await.unwrap();
    s.txn(Txn::new().then(TxnOp::put_with_lease("agents/a", b"up".to_vec(), l.id))).await.unwrap();
    let mut w = s.watch("agents/", 1).await.unwrap();
    assert_eq!(next_event(&mut w).await.kind, EventKind::Put);
    t.advance_ms(3_000).await;
    t.expire("agents/a").await;
    let e = next_event(&mut w).await;
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "agents/a"));
}

pub async fn compaction(f: Backend) {
    let Some(t) = fresh(&f).await else { return };
    let s = t.store.clone();
    for i in 0..10 {
        s.put("k", format!("{i}").as_bytes()).await.unwrap();
    }
    s.compact(6).await.unwrap();
    assert!(matches!(s.watch("", 5).await, Err(StoreError::Compacted { .. })));
    let mut w = s.watch("", 6).await.unwrap();
    assert_eq!(next_event(&mut w).await.revision(), 6);
    assert!(matches!(s.compact(99).await, Err(StoreError::InvalidRequest(_))));
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"9", "compaction keeps current values");
}
