//! `tend events --follow`, `tend task logs --follow` and the wake-ups of `tend service deploy`:
//! `tend events --follow` is the event stream (`/v1/events/stream`, Server-Sent Events) printed as
//! it comes, resumed after the last event seen when the connection drops (a control-plane
//! restart or failover), until interrupted.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use tend_api::EventInfo;

use crate::client::Client;

/// Prints events after `since` (all, with 0) as they are recorded; never returns on its own
/// but for an error the control plane answers (a refused token, say).
pub async fn events(
    client: &Client,
    service: Option<String>,
    since: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let path = match &service {
        Some(s) => format!("/v1/events/stream?service={s}&since={since}"),
        None => format!("/v1/events/stream?since={since}"),
    };
    let mut last = (since > 0).then_some(since);
    loop {
        match client.stream(&path, last).await {
            Ok(r) => {
                let mut events = r.bytes_stream().eventsource();
                while let Some(Ok(ev)) = events.next().await {
                    let Ok(e) = serde_json::from_str::<EventInfo>(&ev.data) else { continue };
                    last = Some(e.seq);
                    print(&e, json);
                }
            }
            // Unreachable or between leaders: try again; anything it answered is final.
            Err(e) if crate::client::unreachable(&e) => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print(e: &EventInfo, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        outln!("{:>6} {:<14} {:<14} {}", e.seq, e.kind, e.service.as_deref().unwrap_or(""), e.message);
    }
}

/// Wakes a follower (`service deploy`, `task logs --follow`) whenever the control plane records
/// an event, so that it re-reads what it shows at once instead of polling; it also wakes after
/// `at_most` without one (a resync: progress that makes no event, a lost stream). Reconnects on
/// its own; stops when dropped.
pub struct Wake {
    notify: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Wake {
    pub async fn start(client: &Client, service: Option<&str>) -> Wake {
        let notify = Arc::new(tokio::sync::Notify::new());
        // Only what comes next: start after the newest event recorded now.
        let newest: Option<Vec<EventInfo>> = client.get("/v1/events?last=1").await.ok();
        let mut last = newest.and_then(|v| v.last().map(|e| e.seq)).unwrap_or(0);
        let path = match service {
            Some(s) => format!("/v1/events/stream?service={s}"),
            None => "/v1/events/stream?".to_string(),
        };
        let (client, n) = (client.clone(), notify.clone());
        let task = tokio::spawn(async move {
            loop {
                if let Ok(r) = client.stream(&format!("{path}&since={last}"), Some(last)).await {
                    let mut events = r.bytes_stream().eventsource();
                    while let Some(Ok(ev)) = events.next().await {
                        if let Ok(e) = serde_json::from_str::<EventInfo>(&ev.data) {
                            last = last.max(e.seq);
                            n.notify_one();
                        }
                    }
                }
                n.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Wake { notify, task }
    }

    /// Until the next event, or `at_most`.
    pub async fn wait(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.notify.notified()).await;
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `tend task logs --follow`: the tail, then what the task writes as it writes it (the control
/// plane relays its agent's stream as Server-Sent Events). A lost stream (a control-plane
/// failover, the agent restarting) is opened again without a tail, so nothing printed repeats;
/// bytes written while it was down may be missed. Runs until interrupted or refused.
pub async fn logs(
    client: &Client,
    service: Option<String>,
    instance: &str,
    task: &str,
    stderr: bool,
    tail_bytes: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let service = client.pick_service(service).await?;
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut tail = tail_bytes;
    loop {
        let path = format!(
            "/v1/services/{service}/pods/{instance}/tasks/{task}/logs/stream?stream={stream}&tail_bytes={tail}"
        );
        match client.stream(&path, None).await {
            Ok(r) => {
                tail = 0;
                let mut events = r.bytes_stream().eventsource();
                while let Some(Ok(ev)) = events.next().await {
                    let Ok(chunk) = serde_json::from_str::<tend_api::LogChunk>(&ev.data) else { continue };
                    let mut out = std::io::stdout().lock();
                    if json {
                        crate::out::check(writeln!(
                            out,
                            "{}",
                            serde_json::to_string(&chunk).unwrap_or_default()
                        ));
                    } else {
                        crate::out::check(out.write_all(chunk.data.as_bytes()));
                    }
                    crate::out::check(out.flush());
                }
            }
            Err(e) if crate::client::unreachable(&e) => {}
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
