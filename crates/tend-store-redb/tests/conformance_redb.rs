//! Runs the store conformance suite against the redb backend (one fresh file per case).

use std::sync::Arc;

use tend_model::ManualClock;
use tend_store::StateStore;
use tend_store_redb::RedbStore;

/// One temporary directory per test process, holding a fresh file per case.
fn open(clock: ManualClock) -> Arc<dyn StateStore> {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"));
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    RedbStore::open(dir.path().join(format!("state-{n}.redb")), Arc::new(clock)).expect("open store")
}

tend_store::conformance_tests!(open);
