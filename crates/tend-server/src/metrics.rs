//! Prometheus metrics of the control plane (`GET /metrics`, OpenMetrics text): one registry per
//! control plane, passed in (no global). API requests and store operations are counted and timed
//! as they happen; events are counted by kind from the event stream; everything that is a state
//! (instances by state, agents' heartbeat age, job alarms and last successes, restarts in place)
//! is read from the control plane when scraped, so it is never stale.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tend_control::Signal;
use tend_store::*;

use crate::Server;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub service: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub agent: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub service: String,
    pub job: String,
    pub instance: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub service: String,
    pub plan: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub service: String,
    pub job: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    pub service: String,
    pub instance: String,
    pub task: String,
}

fn seconds_histogram() -> Histogram {
    // 0.5 ms … ~33 s.
    Histogram::new(exponential_buckets(0.0005, 3.0, 11))
}

fn step_histogram() -> Histogram {
    // 0.1 s … ~40 min: a step waits for a process to start and become ready.
    Histogram::new(exponential_buckets(0.1, 2.5, 12))
}

/// Every metric of a control plane, and the registry they are in.
pub struct Metrics {
    registry: Registry,
    /// Serialises scrapes: the state gauges are cleared and refilled by each.
    scrape: tokio::sync::Mutex<()>,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub store_duration: Family<OpLabels, Histogram, fn() -> Histogram>,
    pub events: Family<KindLabels, Counter>,
    instances: Family<StateLabels, Gauge>,
    heartbeat_age: Family<AgentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    job_alarm: Family<JobLabels, Gauge>,
    job_last_success: Family<JobLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    restarts: Family<TaskLabels, Gauge>,
    crash_loops: Family<TaskLabels, Gauge>,
    pub step_duration: Family<PlanLabels, Histogram, fn() -> Histogram>,
    pub step_failures: Family<PlanLabels, Counter>,
    pub replacements: Family<ServiceLabels, Counter>,
    pub job_runs: Family<RunLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("tend");
        let m = Metrics {
            registry: Registry::default(),
            scrape: tokio::sync::Mutex::new(()),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(seconds_histogram),
            store_duration: Family::new_with_constructor(seconds_histogram),
            events: Family::default(),
            instances: Family::default(),
            heartbeat_age: Family::default(),
            job_alarm: Family::default(),
            job_last_success: Family::default(),
            restarts: Family::default(),
            crash_loops: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram),
            step_failures: Family::default(),
            replacements: Family::default(),
            job_runs: Family::default(),
        };
        r.register("http_requests", "API requests answered, by route and status", m.http_requests.clone());
        r.register_with_unit(
            "http_request_duration",
            "Time to answer an API request",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register_with_unit(
            "store_operation_duration",
            "Time of a store operation (get, range, txn, …)",
            Unit::Seconds,
            m.store_duration.clone(),
        );
        r.register(
            "events",
            "Events recorded, by kind (launch, restart, replace, job, alarm, …)",
            m.events.clone(),
        );
        r.register("instances", "Pod instances by service and state", m.instances.clone());
        r.register_with_unit(
            "agent_heartbeat_age",
            "Time since an agent's last report",
            Unit::Seconds,
            m.heartbeat_age.clone(),
        );
        r.register("job_alarm", "1 while a job-instance's alarm is raised", m.job_alarm.clone());
        r.register_with_unit(
            "job_last_success_timestamp",
            "When a job-instance last succeeded (Unix time)",
            Unit::Seconds,
            m.job_last_success.clone(),
        );
        r.register(
            "task_restarts",
            "Restarts in place of a task in its current incarnation, as its agent reports",
            m.restarts.clone(),
        );
        r.register(
            "task_crash_loop",
            "Quick exits in a row of a task (2 or more: crash-looping), as its agent reports",
            m.crash_loops.clone(),
        );
        r.register_with_unit(
            "plan_step_duration",
            "Time from a plan step's start to its goal (instance launched and ready)",
            Unit::Seconds,
            m.step_duration.clone(),
        );
        r.register("plan_step_failures", "Plan steps that failed (then retried)", m.step_failures.clone());
        r.register("replacements", "Instances recovery started replacing", m.replacements.clone());
        r.register("job_runs", "Maintenance runs ended, by result", m.job_runs.clone());
        Metrics { registry: r, ..m }
    }

    /// The OpenMetrics text, with the state gauges read from `s` now.
    pub async fn render(&self, s: &Server) -> String {
        let _one = self.scrape.lock().await;
        self.refresh(s).await;
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    async fn refresh(&self, s: &Server) {
        self.instances.clear();
        self.restarts.clear();
        self.crash_loops.clear();
        for svc in s.service_names() {
            if let Ok(pods) = crate::api::pod_infos(s, &svc).await {
                for p in pods {
                    let labels = StateLabels { service: svc.clone(), state: p.state.to_string() };
                    self.instances.get_or_create(&labels).inc();
                    for t in p.tasks {
                        let l =
                            TaskLabels { service: svc.clone(), instance: p.instance.clone(), task: t.task };
                        self.restarts.get_or_create(&l).set(i64::from(t.restarts));
                        self.crash_loops.get_or_create(&l).set(i64::from(t.crash_loop));
                    }
                }
            }
        }
        self.heartbeat_age.clear();
        let now = s.now_ms();
        for a in s.inner.agents.read().unwrap_or_else(|e| e.into_inner()).values() {
            if let Some(seen) = a.last_seen_ms {
                let age = now.saturating_sub(seen) as f64 / 1000.0;
                self.heartbeat_age.get_or_create(&AgentLabels { agent: a.agent.id.clone() }).set(age);
            }
        }
        self.job_alarm.clear();
        self.job_last_success.clear();
        let jobs = s.inner.jobs.lock().unwrap_or_else(|e| e.into_inner()).statuses.clone();
        for j in jobs.values().flatten() {
            let l =
                JobLabels { service: j.service.clone(), job: j.job.clone(), instance: j.instance.clone() };
            self.job_alarm.get_or_create(&l).set(i64::from(j.alarm.is_some()));
            if let Some(t) = j.last_success_ms {
                self.job_last_success.get_or_create(&l).set(t as f64 / 1000.0);
            }
        }
    }

    /// Counts every recorded event by kind, and what the control plane signals, until it stops.
    pub fn count_events(self: &Arc<Self>, s: &Server) {
        let mut rx = s.inner.events.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        me.events.get_or_create(&KindLabels { kind: e.kind.to_string() }).inc();
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        let mut rx = s.inner.signals.subscribe();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(sig) => me.on_signal(sig),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }

    fn on_signal(&self, sig: Signal) {
        match sig {
            Signal::StepCompleted { service, plan, seconds } => {
                self.step_duration.get_or_create(&PlanLabels { service, plan }).observe(seconds)
            }
            Signal::StepFailed { service, plan } => {
                self.step_failures.get_or_create(&PlanLabels { service, plan }).inc();
            }
            Signal::Replaced { service } => {
                self.replacements.get_or_create(&ServiceLabels { service }).inc();
            }
            Signal::JobRun { service, job, result } => {
                self.job_runs.get_or_create(&RunLabels { service, job, result }).inc();
            }
        }
    }
}

/// Counts and times every API request by its route pattern (not its path: bounded labels).
pub async fn track(
    State(s): State<Arc<Server>>,
    route: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().to_string();
    let route = route.map_or_else(|| "unmatched".to_string(), |r| r.as_str().to_string());
    let t = Instant::now();
    let resp = next.run(req).await;
    let m = &s.edge.metrics;
    m.http_duration
        .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
        .observe(t.elapsed().as_secs_f64());
    m.http_requests.get_or_create(&HttpLabels { method, route, status: resp.status().as_u16() }).inc();
    resp
}

/// `GET /metrics`: OpenMetrics to a client that asks for it (Prometheus does), the Prometheus
/// text format (0.0.4) otherwise (curl, promtool).
pub async fn scrape(State(s): State<Arc<Server>>, headers: axum::http::HeaderMap) -> Response {
    let body = s.edge.metrics.render(&s).await;
    let accept = headers.get("accept").and_then(|v| v.to_str().ok()).unwrap_or("");
    if accept.contains("application/openmetrics-text") {
        return ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
            .into_response();
    }
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], prometheus_text(&body)).into_response()
}

/// OpenMetrics text as the Prometheus text format: counters' metadata named with `_total`
/// like their samples, no `# UNIT` lines, no `# EOF`.
pub fn prometheus_text(om: &str) -> String {
    let counters: std::collections::HashSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta =
            ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) { format!("{name}_total") } else { name.to_string() };
                out.push_str(&format!("{p}{name} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A store that times every operation into `tend_store_operation_duration_seconds`.
pub struct Metered {
    inner: Arc<dyn StateStore>,
    m: Arc<Metrics>,
}

impl Metered {
    pub fn wrap(inner: Arc<dyn StateStore>, m: Arc<Metrics>) -> Arc<dyn StateStore> {
        Arc::new(Metered { inner, m })
    }

    async fn timed<T>(&self, op: &'static str, f: impl std::future::Future<Output = T>) -> T {
        let t = Instant::now();
        let r = f.await;
        self.m.store_duration.get_or_create(&OpLabels { op }).observe(t.elapsed().as_secs_f64());
        r
    }
}

#[async_trait]
impl StateStore for Metered {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.timed("get", self.inner.get(key)).await
    }
    async fn range(&self, prefix: &str) -> Result<RangeResponse, StoreError> {
        self.timed("range", self.inner.range(prefix)).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.timed("txn", self.inner.txn(txn)).await
    }
    async fn put(&self, key: &str, value: &[u8]) -> Result<Revision, StoreError> {
        self.timed("put", self.inner.put(key, value)).await
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.timed("delete", self.inner.delete(key)).await
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        self.timed("revision", self.inner.revision()).await
    }
    async fn grant_lease(&self, ttl_seconds: i64) -> Result<LeaseGrant, StoreError> {
        self.timed("grant_lease", self.inner.grant_lease(ttl_seconds)).await
    }
    async fn keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.timed("keep_alive", self.inner.keep_alive(id)).await
    }
    async fn lease_time_to_live(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.timed("lease_time_to_live", self.inner.lease_time_to_live(id)).await
    }
    async fn revoke_lease(&self, id: LeaseId) -> Result<(), StoreError> {
        self.timed("revoke_lease", self.inner.revoke_lease(id)).await
    }
    async fn expire_leases(&self) -> Result<(), StoreError> {
        self.inner.expire_leases().await
    }
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watcher, StoreError> {
        self.timed("watch", self.inner.watch(prefix, from)).await
    }
    async fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.timed("compact", self.inner.compact(rev)).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP tend_events Events.\n# TYPE tend_events counter\ntend_events_total{kind=\"launch\"} 2\n# HELP tend_x_seconds X.\n# TYPE tend_x_seconds gauge\n# UNIT tend_x_seconds seconds\ntend_x_seconds 1.5\n# EOF\n";
        let want = "# HELP tend_events_total Events.\n# TYPE tend_events_total counter\ntend_events_total{kind=\"launch\"} 2\n# HELP tend_x_seconds X.\n# TYPE tend_x_seconds gauge\ntend_x_seconds 1.5\n";
        assert_eq!(super::prometheus_text(om), want);
    }
}
