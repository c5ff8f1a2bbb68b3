//! Task logs through the control plane: a tail (`…/logs`) or a live follow (`…/logs/stream`,
//! Server-Sent Events), both read from the task's agent as the control plane itself.

use futures::StreamExt;

use super::openapi::*;
use super::*;

/// Which output of a task.
#[derive(Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    fn of(q: &LogsQuery) -> &'static str {
        match q.stream.unwrap_or(LogStream::Stdout) {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Which output (default stdout).
    #[serde(default)]
    #[param(inline)]
    stream: Option<LogStream>,
    /// How many bytes of its end (default 64 KiB; the agent caps it at what it keeps).
    #[serde(default)]
    tail_bytes: Option<u64>,
}

/// A request to the log endpoint of the agent running `instance`.
async fn agent_request(
    s: &Server,
    name: &str,
    instance: &str,
    task: &str,
    q: &LogsQuery,
    follow: bool,
) -> Result<(String, reqwest::RequestBuilder), ApiError> {
    let stream = LogStream::of(q);
    let kv = s
        .inner
        .store
        .get(&instance_key(name, instance))
        .await?
        .ok_or_else(|| not_found("pod instance", instance))?;
    let rec = tend_control::records::decode_instance(&kv.value)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let agent = rec.agent().map(str::to_string).ok_or_else(|| {
        ApiError(StatusCode::CONFLICT, "not_placed", format!("{instance} is not placed yet"))
    })?;
    let url = s
        .inner
        .agents
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(&agent)
        .map(|a| a.agent.url.clone())
        .ok_or_else(|| not_found("agent", &agent))?;
    // Over TLS the agent is checked as itself (its certificate names it) and it checks this
    // member's; in plain HTTP the cluster token stands for both. A follow has no overall
    // timeout (the agent ends it), only a connect timeout.
    let timeout = Duration::from_secs(10);
    let (client, token) = match s.edge.pki.as_deref() {
        Some(p) if follow => (p.streaming_client(Some(&agent), timeout)?, None),
        Some(p) => (p.client(Some(&agent), timeout)?, None),
        None if follow => {
            let tls = tend_tls::plain_client_config().map_err(anyhow::Error::from)?;
            let c = reqwest::Client::builder().use_preconfigured_tls(tls).connect_timeout(timeout).build();
            (c.map_err(anyhow::Error::from)?, Some(s.edge.cluster_token.clone()))
        }
        None => (crate::member_client(None, timeout)?, Some(s.edge.cluster_token.clone())),
    };
    let mut rq = client.get(format!("{url}/v1/logs"));
    if let Some(t) = token {
        rq = rq.bearer_auth(t);
    }
    let rq = rq.query(&[
        ("service", name),
        ("instance", instance),
        ("task", task),
        ("stream", stream),
        ("incarnation", &rec.incarnation_number().to_string()),
        ("tail_bytes", &q.tail_bytes.unwrap_or(64 * 1024).to_string()),
        ("follow", if follow { "true" } else { "false" }),
    ]);
    Ok((agent, if follow { rq } else { rq.timeout(timeout) }))
}

/// The agent's answer, or its refusal as ours.
async fn sent(agent: &str, rq: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
    let r = rq
        .send()
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "agent_unreachable", format!("agent {agent}: {e}")))?;
    if r.status().is_success() {
        return Ok(r);
    }
    let code = if r.status() == reqwest::StatusCode::NOT_FOUND {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_GATEWAY
    };
    let body: Option<ErrorBody> = r.json().await.ok();
    Err(ApiError(code, "agent_error", body.map(|b| b.error.message).unwrap_or_else(|| "agent error".into())))
}

/// The tail of a task's stdout or stderr, from its agent.
#[utoipa::path(get, path = "/v1/services/{name}/pods/{instance}/tasks/{task}/logs", tag = "pods",
    params(("name" = String, Path, description = "the service"), ("instance" = String, Path, description = "the instance, `pod-index`"), ("task" = String, Path, description = "the task"), LogsQuery),
    responses((status = 200, description = "the tail", body = LogChunk),
        Guarded, BadRequest, NotFound, Conflict, Internal, BadGateway))]
pub(super) async fn task_logs(
    State(s): State<Arc<Server>>,
    Path((name, instance, task)): Path<(String, String, String)>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> ApiResult<LogChunk> {
    let (agent, rq) = agent_request(&s, &name, &instance, &task, &q, false).await?;
    let r = sent(&agent, rq).await?;
    Ok(Json(r.json().await.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "agent_error", e.to_string()))?))
}

/// A task's stdout or stderr as it is written: first the tail, then every new piece, each an
/// event whose data is a `LogChunk`, until the client goes or the agent ends it (the
/// incarnation is gone, or an hour has passed).
#[utoipa::path(get, path = "/v1/services/{name}/pods/{instance}/tasks/{task}/logs/stream", tag = "pods",
    params(("name" = String, Path, description = "the service"), ("instance" = String, Path, description = "the instance, `pod-index`"), ("task" = String, Path, description = "the task"), LogsQuery),
    responses((status = 200, description = "Server-Sent Events, each `data` a LogChunk", content_type = "text/event-stream", body = String),
        Guarded, BadRequest, NotFound, Conflict, Internal, BadGateway))]
pub(super) async fn follow_logs(
    State(s): State<Arc<Server>>,
    Path((name, instance, task)): Path<(String, String, String)>,
    QueryParams(q): QueryParams<LogsQuery>,
) -> Result<Response, ApiError> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let (agent, rq) = agent_request(&s, &name, &instance, &task, &q, true).await?;
    let r = sent(&agent, rq).await?;
    let stream = LogStream::of(&q);
    let events = r.bytes_stream().map(move |b| {
        let data = match b {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return Err(e),
        };
        let chunk = LogChunk { stream: stream.into(), data, truncated: false };
        Ok::<_, reqwest::Error>(Event::default().data(serde_json::to_string(&chunk).unwrap_or_default()))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}
