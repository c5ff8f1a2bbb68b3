//! Runs the store conformance suite against a real etcd: one fresh single-member etcd process
//! per case (killed by pid when the case ends), so that revisions start where the suite expects.
//! Without an etcd binary every case says it skips (the test command installs `etcd-server`).

use std::sync::Arc;

use tend_store::StateStore;
use tend_store_etcd::{EtcdConfig, EtcdStore};
use tend_testkit::etcd::EtcdCluster;

async fn open() -> tend_store::conformance::Opened {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = tokio::task::block_in_place(|| EtcdCluster::start(dir.path(), 1));
    let Some(cluster) = cluster else {
        eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server, or set TEND_ETCD)");
        return None;
    };
    let cfg = EtcdConfig::parse(&format!("etcd://{}/conformance", cluster.endpoints())).expect("url");
    let store: Arc<dyn StateStore> = EtcdStore::connect(&cfg).await.expect("connect");
    Some((store, Box::new((cluster, dir))))
}

tend_store::conformance_tests!(real_time: open);
