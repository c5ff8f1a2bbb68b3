//! Housekeeping of the control plane's store: events bounded by count and age, store history
//! compacted, so that the store does not grow with every action.

use crate::records::EventRecord;
use crate::Control;

impl Control {
    /// Keeps the store bounded: events beyond `events_keep` or older than `events_keep_ms` go
    /// (oldest first), and store history
    /// older than `history_keep_revisions` is compacted. Every 10 s.
    pub(crate) async fn housekeeping(self) {
        loop {
            if let Err(e) = self.trim_events().await {
                tracing::warn!(error = %e, "cannot trim events");
            }
            if let Ok(rev) = self.inner.store.revision().await {
                let keep = self.inner.cfg.history_keep_revisions.max(1);
                if rev > keep {
                    if let Err(e) = self.inner.store.compact(rev - keep).await {
                        tracing::debug!(error = %e, "compaction skipped");
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
    }

    /// Deletes the oldest events beyond the bound.
    pub async fn trim_events(&self) -> anyhow::Result<usize> {
        let kvs = self.inner.store.range("events/").await?.kvs;
        // Beyond the count, and older than the age bound (events are in time order).
        let by_count = kvs.len().saturating_sub(self.inner.cfg.events_keep);
        let cutoff = self.now_ms().saturating_sub(self.inner.cfg.events_keep_ms);
        let by_age = kvs
            .iter()
            .take_while(|kv| {
                serde_json::from_slice::<EventRecord>(&kv.value).is_ok_and(|e| e.time_ms < cutoff)
            })
            .count();
        let excess = by_count.max(by_age);
        // 100 deletes a transaction: within etcd's default limit of 128 operations.
        for chunk in kvs[..excess].chunks(100) {
            let mut txn = tend_store::Txn::new();
            for kv in chunk {
                txn = txn.then(tend_store::TxnOp::delete(&kv.key));
            }
            self.inner.store.txn(txn).await?;
        }
        Ok(excess)
    }
}
