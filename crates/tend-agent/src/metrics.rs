//! The agent's Prometheus metrics (`GET /metrics` on `--metrics-listen`, plain HTTP, no secrets:
//! counts, states and ages only). Everything is read from the agent's own state when scraped.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::AgentState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    service: String,
    instance: String,
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

type F64Gauge = Gauge<f64, std::sync::atomic::AtomicU64>;

/// One scrape: a fresh registry filled from the agent's state.
fn render(st: &AgentState) -> String {
    let mut r = Registry::with_prefix("tend_agent");
    let tasks = Family::<StateLabels, Gauge>::default();
    let restarts = Family::<TaskLabels, Gauge>::default();
    let crash_loops = Family::<TaskLabels, Gauge>::default();
    for t in st.ctx.board.snapshot() {
        tasks.get_or_create(&StateLabels { state: format!("{:?}", t.state).to_lowercase() }).inc();
        let l = TaskLabels { service: t.service, instance: t.instance, task: t.task };
        restarts.get_or_create(&l).set(i64::from(t.restarts));
        crash_loops.get_or_create(&l).set(i64::from(t.crash_loop));
    }
    r.register("tasks", "Tasks on this agent by state", tasks);
    r.register("task_restarts", "Restarts in place of a task in its current incarnation", restarts);
    r.register("task_crash_loop", "Quick exits in a row of a task (2 or more: crash-looping)", crash_loops);
    let runs = Family::<StateLabels, Gauge>::default();
    for j in st.jobs.results() {
        runs.get_or_create(&StateLabels { state: format!("{:?}", j.state).to_lowercase() }).inc();
    }
    r.register("job_runs", "Maintenance runs this agent holds, by state", runs);
    let now = crate::pod::now_ms();
    let contact = F64Gauge::default();
    contact.set(now.saturating_sub(st.last_contact.load(Ordering::SeqCst)) as f64 / 1000.0);
    r.register_with_unit(
        "control_plane_contact_age",
        "Time since the control plane last acknowledged a report",
        Unit::Seconds,
        contact,
    );
    if let Some(id) = &st.identity {
        let expiry = F64Gauge::default();
        expiry.set(id.not_after_s() as f64);
        r.register_with_unit(
            "certificate_expiry_timestamp",
            "When the agent's certificate expires (Unix time; renewed at 2/3 of its life)",
            Unit::Seconds,
            expiry,
        );
    }
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &r).is_err() {
        out.clear();
    }
    out
}

/// `GET /metrics`: the OpenMetrics text.
pub(crate) async fn scrape(State(st): State<Arc<AgentState>>) -> impl IntoResponse {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(&st))
}
