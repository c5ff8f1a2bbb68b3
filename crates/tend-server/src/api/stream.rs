//! `GET /v1/events/stream`: the event log as Server-Sent Events, live. Resumable: events after
//! `Last-Event-ID` (or `?since=`) are read from the store first, then new ones follow as they
//! are recorded; a follower that falls behind the live channel reads the store again. Filtered
//! by `?service=`. A comment every 15 s keeps idle connections (and proxies) open.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tend_api::{EventInfo, EventKind};
use tend_control::records::EventRecord;
use tokio::sync::broadcast::error::RecvError;

use super::openapi::{BadRequest, Guarded, QueryParams};
use super::ApiError;
use crate::Server;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StreamQuery {
    /// Start after this sequence number (`Last-Event-ID` wins over it).
    #[serde(default)]
    since: Option<u64>,
    /// Only this service's events.
    #[serde(default)]
    service: Option<String>,
}

/// One event of the stream, as Server-Sent Events frame it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // a name in the document only
pub(super) struct SseEvent {
    /// The event's sequence number (what `Last-Event-ID` resumes after).
    #[schema(pattern = "^[0-9]+$")]
    id: String,
    /// The event's kind.
    #[schema(value_type = EventKind)]
    event: String,
    /// The event as JSON (an `EventInfo`).
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The header a reconnecting client sends.
#[derive(utoipa::IntoParams)]
#[into_params(names("Last-Event-ID"), parameter_in = Header)]
#[allow(dead_code)] // read from the headers
pub(super) struct ResumeHeader(
    /// Resume after this sequence number (wins over `since`; a value that is not a number is
    /// ignored).
    #[param(nullable = false)]
    Option<String>,
);

fn info(e: EventRecord) -> EventInfo {
    EventInfo { seq: e.seq, time_ms: e.time_ms, service: e.service, kind: e.kind, message: e.message }
}

fn sse(e: &EventInfo) -> Event {
    Event::default()
        .id(e.seq.to_string())
        .event(e.kind.to_string())
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// Events in the store after `since`, oldest first.
async fn stored(s: &Server, since: u64) -> Result<Vec<EventRecord>, ApiError> {
    let mut out = Vec::new();
    for kv in s.inner.store.range("events/").await?.kvs {
        if let Ok(e) = serde_json::from_slice::<EventRecord>(&kv.value) {
            if e.seq > since {
                out.push(e);
            }
        }
    }
    out.sort_by_key(|e| e.seq);
    Ok(out)
}

/// The sequence numbers already sent, bounded (events may be recorded slightly out of order).
#[derive(Default)]
struct Sent {
    set: BTreeSet<u64>,
    order: VecDeque<u64>,
    max: u64,
}

impl Sent {
    /// Whether `seq` is to be sent now (and remembers it).
    fn first_time(&mut self, seq: u64) -> bool {
        let forgotten = self.order.len() >= 4096 && self.order.front().is_some_and(|f| seq < *f);
        if forgotten || !self.set.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > 4096 {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.max = self.max.max(seq);
        true
    }
}

/// The event log as Server-Sent Events, live and never ending: `id` is the event's sequence
/// number, `event` its kind, `data` the event as JSON (an `EventInfo`); a comment every 15 s.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    params(StreamQuery, ResumeHeader),
    responses(
        (status = 200, description = "the event stream: each event as `SseEvent` describes", body = SseEvent,
            content_type = "text/event-stream"),
        Guarded, BadRequest,
    ))]
pub(super) async fn stream(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    QueryParams(q): QueryParams<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume =
        headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let since = resume.or(q.since).unwrap_or(0);
    // Subscribed before the store is read: nothing recorded in between is missed.
    let mut live = s.inner.events.subscribe();
    let backlog = stored(&s, since).await?;
    let service = q.service;
    let wanted = move |e: &EventRecord| service.as_ref().is_none_or(|svc| e.service.as_ref() == Some(svc));
    let stream = async_stream::stream! {
        let mut sent = Sent { max: since, ..Sent::default() };
        for e in backlog {
            if wanted(&e) && sent.first_time(e.seq) {
                yield Ok(sse(&info(e)));
            }
        }
        loop {
            match live.recv().await {
                Ok(e) => {
                    if wanted(&e) && sent.first_time(e.seq) {
                        yield Ok(sse(&info(e)));
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    let Ok(missed) = stored(&s, sent.max).await else { break };
                    for e in missed {
                        if wanted(&e) && sent.first_time(e.seq) {
                            yield Ok(sse(&info(e)));
                        }
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
