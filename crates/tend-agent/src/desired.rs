//! The agent's long poll of its desired state: held by difference (`tend_api::DesiredBook`),
//! refused when it comes from another cluster, an older store or a deposed leader, and handed
//! whole to `reconcile`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use tend_api::DesiredState;
use tokio::sync::watch;

use crate::{cluster, reconcile, AgentState};

pub(crate) async fn desired_loop(
    st: &Arc<AgentState>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut index = 0u64;
    let mut failures = 0;
    // The desired state held, for answers by difference (reconcile still sees every assignment).
    let mut book = tend_api::DesiredBook::new();
    loop {
        let base = st.servers.url();
        let url = format!("{base}/v1/agent/{}/desired", st.cfg.id);
        if st.refetch.swap(false, std::sync::atomic::Ordering::SeqCst) {
            (index, book) = (0, tend_api::DesiredBook::new());
        }
        let mut query = vec![("index", index.to_string()), ("wait_ms", "20000".to_string())];
        if let Some(h) = book.held_from() {
            query.push(("held_from", h.to_string()));
        }
        let req = st
            .http
            .get(&url)
            .bearer_auth(&st.cfg.cluster_token)
            .query(&query)
            .timeout(Duration::from_secs(30));
        let resp = tokio::select! {
            r = req.send() => r,
            _ = stop.changed() => return Ok(()),
        };
        let mut desired: DesiredState = match resp {
            Ok(r) if r.status().is_success() => r.json().await?,
            Ok(r) if r.status() == StatusCode::NOT_FOUND || r.status() == StatusCode::UNAUTHORIZED => {
                anyhow::bail!("control plane does not know this agent ({})", r.status())
            }
            Ok(r) => {
                failures += 1;
                if r.status() == StatusCode::SERVICE_UNAVAILABLE {
                    st.servers.failed(&base);
                }
                if failures > 3 {
                    anyhow::bail!("control plane answered {}", r.status());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                st.servers.failed(&base);
                failures += 1;
                if failures > 3 {
                    return Err(e.into());
                }
                // The control plane may be restarting: report as soon as it is back, so that
                // it reconciles without waiting for the next periodic report.
                st.ctx.board.changed.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if failures > 0 {
            st.ctx.board.changed.notify_one();
        }
        failures = 0;
        index = desired.index;
        let refusal = {
            let mem = st.cluster.lock().unwrap_or_else(|e| e.into_inner());
            cluster::refuse(&mem, &desired)
        };
        if let Some(why) = refusal {
            tracing::error!(agent = %st.cfg.id, "{why}");
            *st.conflict.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            book.forget();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if book.take(&mut desired).is_none() {
            // A difference on a state this agent does not hold: ask again for everything.
            index = 0;
            continue;
        }
        *st.conflict.lock().unwrap_or_else(|e| e.into_inner()) = None;
        remember_revision(st, desired.revision, desired.epoch);
        reconcile(st, desired).await;
    }
}

/// Remembers the highest store revision and leadership epoch obeyed (before acting on them).
fn remember_revision(st: &AgentState, revision: u64, epoch: u64) {
    let mut mem = st.cluster.lock().unwrap_or_else(|e| e.into_inner());
    if revision > mem.revision || epoch > mem.epoch {
        mem.revision = mem.revision.max(revision);
        mem.epoch = mem.epoch.max(epoch);
        if let Err(e) = st.cluster_file.save(&mem) {
            tracing::warn!(error = %e, "cannot save the cluster memory");
        }
    }
}
