//! `tend events --follow`: the event stream (`/v1/events/stream`, Server-Sent Events) printed as
//! it comes, resumed after the last event seen when the connection drops (a control-plane
//! restart or failover), until interrupted.

use std::process::ExitCode;
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
        println!("{}", serde_json::to_string(e).unwrap_or_default());
    } else {
        println!("{:>6} {:<14} {:<14} {}", e.seq, e.kind, e.service.as_deref().unwrap_or(""), e.message);
    }
}
