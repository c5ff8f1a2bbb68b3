//! Run history in the store: every run with start, end, status, output tail, agent and fencing
//! token. Last success is derived from history, so any recorded run counts (on-demand too).

use serde::{Deserialize, Serialize};
use tend_store::{StateStore, StoreError, TxnOp};

use crate::lease::{guarded, Held};

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    /// Its lease was lost: stopped, result not trusted.
    Aborted,
}

/// One run of a job on a pod instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job: String,
    pub instance: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
    pub status: RunStatus,
    #[serde(default)]
    pub output_tail: String,
    pub agent: String,
    pub token: i64,
    #[serde(default)]
    pub on_demand: bool,
}

/// Why a history write was refused.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused: the lease (fencing token {0}) is no longer held")]
    StaleToken(i64),
}

fn key(prefix: &str, r: &RunRecord) -> String {
    format!("{prefix}/{}/{}/{:020}-{}", r.job, r.instance, r.start_ms, r.run_id)
}

/// Writes (creates or updates) a run record, only while `held` is current.
pub async fn record(
    store: &dyn StateStore,
    prefix: &str,
    held: &Held,
    r: &RunRecord,
) -> Result<(), HistoryError> {
    let v = serde_json::to_vec(r).map_err(|e| StoreError::InvalidRequest(e.to_string()))?;
    let resp = store.txn(guarded(held, vec![TxnOp::put(key(prefix, r), v)])).await?;
    if !resp.succeeded {
        return Err(HistoryError::StaleToken(held.token));
    }
    Ok(())
}

/// Every run of a job on an instance, oldest first.
pub async fn runs(
    store: &dyn StateStore,
    prefix: &str,
    job: &str,
    instance: &str,
) -> Result<Vec<RunRecord>, StoreError> {
    let r = store.range(&format!("{prefix}/{job}/{instance}/")).await?;
    Ok(r.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}

/// End of the last successful run.
pub fn last_success(runs: &[RunRecord]) -> Option<u64> {
    runs.iter().filter(|r| r.status == RunStatus::Succeeded).filter_map(|r| r.end_ms).max()
}

/// End of the last failed run after the last success (for backoff).
pub fn last_failure(runs: &[RunRecord]) -> Option<u64> {
    let s = last_success(runs).unwrap_or(0);
    runs.iter()
        .filter(|r| matches!(r.status, RunStatus::Failed | RunStatus::TimedOut | RunStatus::Aborted))
        .filter_map(|r| r.end_ms)
        .filter(|e| *e > s)
        .max()
}

/// Duration of the last successful run, the estimate for the next.
pub fn estimate(runs: &[RunRecord]) -> u64 {
    runs.iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .filter_map(|r| r.end_ms.map(|e| (e, e.saturating_sub(r.start_ms))))
        .max_by_key(|(e, _)| *e)
        .map_or(0, |(_, d)| d)
}
