//! Runs the store conformance suite against the in-memory backend.

use std::sync::Arc;

use tend_model::ManualClock;
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

tend_store::conformance_tests!(|clock: ManualClock| -> Arc<dyn StateStore> {
    MemoryStore::new(Arc::new(clock))
});
