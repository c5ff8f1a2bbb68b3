//! Runs the store conformance suite against the redb backend (one fresh file per case).

use std::sync::Arc;

use tend_model::ManualClock;
use tend_store::StateStore;
use tend_store_redb::RedbStore;

fn open(clock: ManualClock) -> Arc<dyn StateStore> {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    RedbStore::open(dir.join("state.redb"), Arc::new(clock)).expect("open store")
}

tend_store::conformance_tests!(open);
