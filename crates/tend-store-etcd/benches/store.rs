//! The store on etcd beside the embedded redb store, in the same run and on the same disk:
//! durable puts per second with one writer (each put its own commit) and with 64 concurrent
//! writers, and the raw 4 KiB write+fdatasync rate as the reference. etcd runs as one member and
//! as a 3-member cluster on loopback (every write replicated and fsynced by a majority).
//!
//! `cargo bench -p tend-store-etcd --bench store` (needs Debian's etcd-server)

use std::sync::Arc;
use std::time::Instant;

use tend_store::StateStore;

async fn single(s: &Arc<dyn StateStore>, n: usize) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        s.put(&format!("single/{i:08}"), b"value-of-about-thirty-two-bytes!").await.unwrap();
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn concurrent(s: &Arc<dyn StateStore>, writers: usize, per: usize) -> f64 {
    let t = Instant::now();
    let mut hs = Vec::new();
    for w in 0..writers {
        let s = s.clone();
        hs.push(tokio::spawn(async move {
            for i in 0..per {
                s.put(&format!("many/{w:03}/{i:06}"), b"value-of-about-thirty-two-bytes!").await.unwrap();
            }
        }));
    }
    for h in hs {
        h.await.unwrap();
    }
    (writers * per) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sync_rate = tend_testkit::fdatasync_rate(dir.path(), 1000);
    println!("reference: raw 4 KiB write+fdatasync   {sync_rate:>9.0} /s");
    std::fs::create_dir_all(dir.path().join("one")).unwrap();
    let Some(one) = tend_testkit::etcd::EtcdCluster::start(&dir.path().join("one"), 1) else {
        eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server)");
        return;
    };
    std::fs::create_dir_all(dir.path().join("three")).unwrap();
    let three = tend_testkit::etcd::EtcdCluster::start(&dir.path().join("three"), 3).expect("etcd");
    rt.block_on(async {
        let redb: Arc<dyn StateStore> =
            tend_store_redb::RedbStore::open(dir.path().join("bench.redb"), Arc::new(tend_model::SystemClock)).unwrap();
        let mut backends: Vec<(&str, Arc<dyn StateStore>)> = vec![("redb", redb)];
        for (name, c) in [("etcd, 1 member", &one), ("etcd, 3 members", &three)] {
            let cfg = tend_store_etcd::EtcdConfig::parse(&format!("etcd://{}/bench", c.endpoints())).unwrap();
            backends.push((name, tend_store_etcd::EtcdStore::connect(&cfg).await.unwrap()));
        }
        for (name, s) in &backends {
            let one = single(s, 1000).await;
            let many = concurrent(s, 64, 100).await;
            println!(
                "{name:<16} 1 writer {one:>7.0} puts/s ({:.2}× fdatasync)   64 writers {many:>7.0} puts/s ({:.2}×)",
                one / sync_rate,
                many / sync_rate
            );
        }
    });
}
