//! What the etcd backend adds to the conformance suite: URL parsing, prefixes that keep tend
//! clusters apart on one etcd, the format check, a watch that resyncs when its history was
//! compacted, and a store that keeps working when one of three etcd members is killed.

use std::time::Duration;

use tend_store::{Change, StateStore, StoreError};
use tend_store_etcd::{EtcdConfig, EtcdStore};
use tend_testkit::etcd::EtcdCluster;

fn check(url: &str, expected: Result<(&[&str], &str), &str>) {
    match (EtcdConfig::parse(url), expected) {
        (Ok(c), Ok((eps, prefix))) => {
            assert_eq!(c.endpoints, eps, "{url}");
            assert_eq!(c.prefix, prefix, "{url}");
        }
        (Err(e), Err(want)) => assert!(e.contains(want), "{url}: {e}"),
        (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
    }
}

#[test]
fn urls_parse_or_say_what_is_wrong() {
    check("etcd://127.0.0.1:2379", Ok((&["127.0.0.1:2379"], "tend/")));
    check("etcd://a:1,b:2,c:3/clusters/blue", Ok((&["a:1", "b:2", "c:3"], "clusters/blue/")));
    check("etcd://h:2379/", Ok((&["h:2379"], "tend/")));
    check("http://h:2379", Err("etcd://HOST:PORT"));
    check("etcd://h", Err("expected HOST:PORT"));
    check("etcd://h:0", Err("port 1–65535"));
    check("etcd://h:99999", Err("port 1–65535"));
    check("etcd://:2379", Err("port 1–65535"));
    check("etcd://h:1/a//b", Err("prefix"));
}

fn cluster(dir: &std::path::Path, n: usize) -> Option<EtcdCluster> {
    let c = EtcdCluster::start(dir, n);
    if c.is_none() {
        eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server, or set TEND_ETCD)");
    }
    c
}

async fn store(c: &EtcdCluster, prefix: &str) -> std::sync::Arc<EtcdStore> {
    let cfg = EtcdConfig::parse(&format!("etcd://{}/{prefix}", c.endpoints())).unwrap();
    EtcdStore::connect(&cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_clusters_apart_and_a_foreign_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = tokio::task::block_in_place(|| cluster(dir.path(), 1)) else { return };
    let (a, b) = (store(&c, "blue").await, store(&c, "green").await);
    let rev = a.put("services/x", b"a").await.unwrap();
    b.put("services/x", b"b").await.unwrap();
    b.put("services/y", b"b").await.unwrap();
    assert_eq!(a.range("").await.unwrap().kvs.len(), 1);
    assert_eq!(b.range("").await.unwrap().kvs.len(), 2);
    assert_eq!(a.get("services/x").await.unwrap().unwrap().value, b"a");
    // Reopening finds the same store: same revisions.
    let again = store(&c, "blue").await;
    assert_eq!(again.get("services/x").await.unwrap().unwrap().mod_revision, rev);
    // A prefix written by another format is refused, changing nothing.
    let mut raw = etcd_client::Client::connect([c.endpoints()], None).await.unwrap();
    raw.put("red/meta/format_version", "999", None).await.unwrap();
    let cfg = EtcdConfig::parse(&format!("etcd://{}/red", c.endpoints())).unwrap();
    let e = EtcdStore::connect(&cfg).await.err();
    assert!(matches!(e, Some(StoreError::UnsupportedFormat { .. })), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_learns_it_is_current_though_other_prefixes_moved_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let Some(c) = tokio::task::block_in_place(|| cluster(dir.path(), 1)) else { return };
    let (a, b) = (store(&c, "blue").await, store(&c, "green").await);
    a.put("k", b"1").await.unwrap();
    let mut w = a.watch("", 1).await.unwrap();
    for i in 0..5 {
        b.put(&format!("k{i}"), b"x").await.unwrap();
    }
    let want = a.revision().await.unwrap();
    w.sync_handle().expect("a watch of every key can be synced").request();
    let mut seen = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen < want {
        match tokio::time::timeout_at(deadline, w.next_change()).await {
            Ok(Some(Change::Event(e))) => seen = seen.max(e.revision()),
            Ok(Some(Change::Progress(r))) => seen = seen.max(r),
            other => panic!("no progress to {want} (at {seen}): {other:?}"),
        }
    }
    assert!(a.watch("services/", 1).await.unwrap().sync_handle().is_none(), "only a watch of every key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_working_when_one_of_three_members_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut c) = tokio::task::block_in_place(|| cluster(dir.path(), 3)) else { return };
    let s = store(&c, "ha").await;
    let mut w = s.watch("", 0).await.unwrap();
    s.put("before", b"1").await.unwrap();
    tokio::task::block_in_place(|| c.kill(0));
    // Writes go on through the other members (retrying while the client finds them).
    let mut done = 0;
    for i in 0..20 {
        for _ in 0..50 {
            if s.put(&format!("after/{i}"), b"x").await.is_ok() {
                done += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(done, 20, "every write landed");
    assert_eq!(s.range("after/").await.unwrap().kvs.len(), 20);
    // The watcher saw every change, in order, across the loss of its member.
    let mut keys = Vec::new();
    while keys.len() < 21 {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(e)) => keys.push(e.kv.key),
            other => panic!("watch stalled after {keys:?}: {other:?}"),
        }
    }
    assert_eq!(keys[0], "before");
    assert_eq!(keys.len(), 21);
}
