//! Status reports: every task after registering, then only what changed since the report the
//! control plane acknowledged (`tend_api::DeltaReporter`); also the agent's heartbeat.

use std::sync::Arc;
use std::time::Duration;

use tend_api::{Delta, DeltaReporter, StatusAck, StatusReport};

use crate::{pod, AgentState};

/// Sends report `seq`: every task, or (`deltas`) what changed since the last acknowledged one.
/// Ok(false): the control plane asks for every task (a delta it could not apply).
pub(crate) async fn post_status(
    st: &AgentState,
    seq: u64,
    deltas: Option<&mut DeltaReporter>,
) -> anyhow::Result<bool> {
    let released = st.released.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let current = st.ctx.board.snapshot();
    let tasks = match deltas {
        Some(d) => d.report(seq, &current),
        None => Delta::full(current),
    };
    let report = StatusReport {
        seq,
        tasks: tasks.tasks,
        released_volumes: released,
        conflict: st.conflict.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        job_results: st.jobs.results(),
        revision: Some(st.cluster.lock().unwrap_or_else(|e| e.into_inner()).revision),
        base_seq: tasks.base_seq,
        gone: tasks.gone,
    };
    let sent = pod::now_ms();
    let path = format!("{}/status", st.cfg.id);
    let r = crate::post_member(st, &path, &report, Some(Duration::from_secs(5)), "status report").await?;
    let ack: StatusAck = r.json().await?;
    if ack.full_needed {
        // Nothing was applied: not contact (the control plane does not know what runs here).
        return Ok(false);
    }
    st.last_contact.fetch_max(sent, std::sync::atomic::Ordering::SeqCst);
    Ok(true)
}

pub(crate) async fn report_loop(st: Arc<AgentState>, interval: Duration, deltas: bool) {
    // Numbers never reused by this agent, across registrations and restarts: a delta names the
    // report it builds on, and a late report of an earlier session must not pass for it.
    let mut seq = pod::now_ms().saturating_mul(1000);
    let mut reporter = DeltaReporter::default();
    let mut retry = Duration::from_millis(25);
    loop {
        seq += 1;
        // After a failure (a restarting control plane) retry soon, backing off to the interval:
        // a restarted control plane reconciles as soon as every agent has reported.
        // In fence mode the heartbeat must come well within the fence time: at most a quarter.
        let fence_min = st
            .pods
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(|h| h.fence_after_ms)
            .min();
        let interval = fence_min.map_or(interval, |f| interval.min(Duration::from_millis((f / 4).max(100))));
        let wait = match post_status(&st, seq, deltas.then_some(&mut reporter)).await {
            Ok(true) => {
                reporter.acked(seq, false);
                retry = Duration::from_millis(25);
                interval
            }
            Ok(false) => {
                reporter.acked(seq, true);
                retry
            }
            Err(e) => {
                reporter.failed();
                tracing::debug!(error = %e, "status report failed; the next one carries the same state");
                retry = (retry * 2).min(interval);
                retry
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = st.ctx.board.changed.notified() => {
                // Coalesce bursts of changes.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}
