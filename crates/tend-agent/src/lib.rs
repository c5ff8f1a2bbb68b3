//! The tend agent: joins the control plane (a certificate naming it, got with a join token; or the
//! cluster token in plain HTTP), long-polls the incarnations it
//! must run, runs them as real processes, and reports every task's status (its heartbeat).
//!
//! The agent is level-triggered: it makes its running set equal to the desired set. An
//! incarnation it runs that is not desired (or an older incarnation of a desired instance) is
//! killed; a desired one it lacks is started. Reports are full snapshots, so a lost or repeated
//! report is harmless.

pub mod artifacts;
pub mod checkpoint;
pub mod checks;
pub mod cluster;
mod desired;
pub mod extract;
pub mod identity;
pub mod jobs;
mod logs;
mod metrics;
pub mod pod;
pub mod process;
mod report;
pub mod servers;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;
use axum::routing::get;
use tend_api::{AgentResources, Assignment, DesiredState, RegisterRequest, RegisterResponse};
use tokio::sync::watch;

use crate::artifacts::Fetcher;
use crate::pod::{Board, PodCtx, PodHandle, Pods};

/// How an agent is set up.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: String,
    /// Control-plane base URLs, comma-separated (any member; the next one when it is down),
    /// e.g. `http://10.0.0.1:7070,http://10.0.0.2:7070`.
    pub server: String,
    /// Plain HTTP only: the cluster token (over https the agent's certificate stands for it).
    pub cluster_token: String,
    /// A single-use join token, for an agent that has no certificate yet (https).
    pub join_token: Option<String>,
    /// A CA (PEM) trusted for `https://` artifacts besides the system's roots.
    pub artifact_ca_pem: Option<String>,
    /// Host that clients use to reach this agent's tasks.
    pub host: String,
    pub attributes: BTreeMap<String, String>,
    pub resources: AgentResources,
    pub data_dir: PathBuf,
    /// Where the agent serves task logs to the control plane.
    pub listen: SocketAddr,
    /// Where the agent serves Prometheus metrics over plain HTTP (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
}

struct AgentState {
    cfg: AgentConfig,
    servers: Arc<servers::Servers>,
    http: reqwest::Client,
    identity: Option<Arc<identity::Identity>>,
    ctx: Arc<PodCtx>,
    pods: Pods,
    adoptable: std::sync::Mutex<HashMap<(String, String), checkpoint::Checkpoint>>,
    jobs: Arc<jobs::JobRunner>,
    /// Volume generations deleted as asked, reported until the control plane stops asking.
    released: std::sync::Mutex<Vec<tend_api::VolumeRelease>>,
    /// When the control plane last acknowledged a status report (ms since the epoch).
    last_contact: std::sync::atomic::AtomicU64,
    /// The cluster this agent obeys and the highest store revision it acted on.
    cluster: std::sync::Mutex<cluster::ClusterMemory>,
    cluster_file: cluster::ClusterFile,
    /// A refusal to obey, reported to the control plane until it is resolved.
    conflict: std::sync::Mutex<Option<String>>,
    /// Set when fencing killed something: the next long-poll asks for the desired state at once
    /// (index 0), so a fenced incarnation still desired restarts as soon as contact is back.
    refetch: std::sync::atomic::AtomicBool,
}

/// Runs an agent until `shutdown` resolves; then stops every task it runs and returns.
pub async fn run(
    mut cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create {}", cfg.data_dir.display()))?;
    // Volume links and sandbox paths must not depend on the working directory.
    cfg.data_dir = std::path::absolute(&cfg.data_dir)?;
    let servers = Arc::new(servers::Servers::parse(&cfg.server));
    anyhow::ensure!(!servers.all().is_empty(), "no control-plane URL given (--server URL[,URL…])");
    let tls = servers.all().iter().any(|u| u.starts_with("https://"));
    anyhow::ensure!(
        !tls || servers.all().iter().all(|u| u.starts_with("https://")),
        "--server lists both https:// and http:// members; a control plane is one or the other"
    );
    let identity = match tls {
        true => Some(
            identity::Identity::establish(&cfg.id, &cfg.data_dir, &servers, cfg.join_token.as_deref())
                .await?,
        ),
        false => None,
    };
    let http = match &identity {
        Some(i) => i.client()?,
        None => reqwest::Client::builder()
            .use_preconfigured_tls(tend_tls::plain_client_config()?)
            .connect_timeout(Duration::from_secs(3))
            .build()?,
    };
    let web = reqwest::Client::builder()
        .use_preconfigured_tls(tend_tls::system_client_config(cfg.artifact_ca_pem.as_deref())?)
        .connect_timeout(Duration::from_secs(10))
        .build()?;
    let board = Arc::new(Board::default());
    let ctx = Arc::new(PodCtx {
        data_dir: cfg.data_dir.clone(),
        fetcher: Fetcher {
            cache_dir: cfg.data_dir.join("artifact-cache"),
            servers: servers.clone(),
            token: cfg.cluster_token.clone(),
            http: http.clone(),
            web,
        },
        board: board.clone(),
        checkpoints: checkpoint::Checkpoints::new(&cfg.data_dir),
    });
    // Incarnations this agent ran before a restart: re-adopted when still desired.
    let adoptable: HashMap<(String, String), checkpoint::Checkpoint> = ctx
        .checkpoints
        .load_all()
        .into_iter()
        .map(|c| ((c.assignment.service.clone(), c.assignment.instance.clone()), c))
        .collect();
    if !adoptable.is_empty() {
        tracing::info!(count = adoptable.len(), "found checkpoints of incarnations from before a restart");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let scheme = if identity.is_some() { "https" } else { "http" };
    let agent_url = format!("{scheme}://{}", listener.local_addr()?);
    let cluster_file = cluster::ClusterFile::new(&cfg.data_dir);
    let memory = cluster_file.load()?;
    let state = Arc::new(AgentState {
        cluster: std::sync::Mutex::new(memory),
        cluster_file,
        conflict: std::sync::Mutex::new(None),
        refetch: std::sync::atomic::AtomicBool::new(false),
        cfg: cfg.clone(),
        servers,
        http,
        identity: identity.clone(),
        ctx,
        pods: Pods::default(),
        adoptable: std::sync::Mutex::new(adoptable),
        last_contact: std::sync::atomic::AtomicU64::new(pod::now_ms()),
        released: std::sync::Mutex::new(Vec::new()),
        jobs: Arc::new(jobs::JobRunner::default()),
    });
    let app = axum::Router::new().route("/v1/logs", get(logs::logs)).with_state(state.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut srv_stop = stop_rx.clone();
    // Over TLS the agent's own server asks for a client certificate of the cluster (the logs
    // route then wants the control plane's).
    let tls = match &identity {
        Some(i) => Some(Arc::new(tend_tls::server_config(i.cert.clone(), &i.ca_pem, true)?)),
        None => None,
    };
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = srv_stop.changed().await;
        };
        tend_tls::serve::serve(listener, app, Default::default(), tls, stop).await;
    });
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-listen)"))?;
            tracing::info!(address = %l.local_addr()?, "metrics at /metrics");
            let app = axum::Router::new().route("/metrics", get(metrics::scrape)).with_state(state.clone());
            let mut stop = stop_rx.clone();
            let stop = async move {
                let _ = stop.changed().await;
            };
            Some(tokio::spawn(tend_tls::serve::serve(l, app, Default::default(), None, stop)))
        }
        None => None,
    };
    let renewer = tokio::spawn(renew_loop(state.clone()));
    let fencer = tokio::spawn(fence_loop(state.clone()));
    let main = main_loop(state.clone(), agent_url, stop_rx.clone());
    tokio::select! {
        r = main => { r?; }
        _ = shutdown => {}
    }
    let _ = stop_tx.send(true);
    fencer.abort();
    renewer.abort();
    stop_all(&state).await;
    // One last report so the control plane sees the tasks stopped.
    let _ = report::post_status(&state, u64::MAX, None).await;
    let _ = server.await;
    if let Some(m) = metrics {
        let _ = m.await;
    }
    Ok(())
}

/// Renews the agent's certificate at two thirds of its life (checked every 10 s; a failed
/// renewal is tried again at the next check, until the certificate expires).
async fn renew_loop(st: Arc<AgentState>) {
    let Some(id) = st.identity.clone() else { return };
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let now = (pod::now_ms() / 1000) as i64;
        if id.due(now) {
            let base = st.servers.url();
            if let Err(e) = id.renew(&st.cfg.id, &st.http, &base).await {
                tracing::warn!(agent = %st.cfg.id, error = %format!("{e:#}"), "cannot renew the certificate yet");
            }
        }
    }
}

/// Posts `body` to `/v1/agent/{path}` on the control-plane member in use. A member that cannot
/// be reached or answers 503 is marked failed (the next call tries another); any answer but a
/// success is an error naming `what`, the status and the body.
async fn post_member(
    st: &AgentState,
    path: &str,
    body: &impl serde::Serialize,
    timeout: Option<Duration>,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let base = st.servers.url();
    let mut req =
        st.http.post(format!("{base}/v1/agent/{path}")).bearer_auth(&st.cfg.cluster_token).json(body);
    if let Some(t) = timeout {
        req = req.timeout(t);
    }
    let r = req.send().await.inspect_err(|_| st.servers.failed(&base))?;
    if r.status() == StatusCode::SERVICE_UNAVAILABLE {
        st.servers.failed(&base);
    }
    if !r.status().is_success() {
        let code = r.status();
        let body = r.text().await.unwrap_or_default();
        anyhow::bail!("{what} refused ({code}): {body}");
    }
    Ok(r)
}

async fn register(st: &AgentState, agent_url: &str) -> anyhow::Result<RegisterResponse> {
    let memory = st.cluster.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let req = RegisterRequest {
        agent_id: st.cfg.id.clone(),
        host: st.cfg.host.clone(),
        agent_url: agent_url.to_string(),
        attributes: st.cfg.attributes.clone(),
        resources: st.cfg.resources.clone(),
        cluster_id: memory.cluster_id,
        revision: Some(memory.revision),
    };
    // Contact counts from when a request was sent, never from when its answer came: the control
    // plane noted the agent seen at or after this instant, so the agent's fence deadline is never
    // later than the one the control plane waits out before it replaces an instance.
    let sent = pod::now_ms();
    let r = post_member(st, "register", &req, None, "registration").await?;
    let reg: RegisterResponse = r.json().await?;
    // A registration is contact (the control plane marks the agent seen): what it is then told
    // to run is not fenced for a silence that just ended.
    st.last_contact.fetch_max(sent, std::sync::atomic::Ordering::SeqCst);
    // A fresh agent joins the cluster; an adopted one (the operator said so) changes cluster.
    let mut mem = st.cluster.lock().unwrap_or_else(|e| e.into_inner());
    if !reg.cluster_id.is_empty() && mem.cluster_id.as_deref() != Some(reg.cluster_id.as_str()) {
        if let Some(old) = &mem.cluster_id {
            tracing::warn!(agent = %st.cfg.id, from = %old, to = %reg.cluster_id, "adopted by another cluster");
        }
        *mem = cluster::ClusterMemory { cluster_id: Some(reg.cluster_id.clone()), revision: 0, epoch: 0 };
        st.cluster_file.save(&mem)?;
    } else if mem.revision > reg.revision {
        // Accepted although it obeyed a newer store: an operator adopted it (--adopt-agents).
        tracing::warn!(agent = %st.cfg.id, from = mem.revision, to = reg.revision, "adopted by a control plane with an older store");
        mem.revision = reg.revision;
        mem.epoch = reg.epoch;
        st.cluster_file.save(&mem)?;
    } else if reg.epoch < mem.epoch {
        // A deposed leader (its lease lost, another elected): it may not command this agent.
        anyhow::bail!(
            "registration answered by a deposed leader (epoch {}; this agent follows epoch {})",
            reg.epoch,
            mem.epoch
        );
    }
    Ok(reg)
}

async fn main_loop(
    st: Arc<AgentState>,
    agent_url: String,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut backoff = Duration::from_millis(100);
    loop {
        // (Re-)join: after a restart of either side.
        let reg = match register(&st, &agent_url).await {
            Ok(r) => r,
            Err(e) => {
                let text = e.to_string();
                if text.contains("cluster_mismatch") || text.contains("store_behind") {
                    // Loud, and nothing is stopped: the tasks keep running.
                    tracing::error!(agent = %st.cfg.id, error = %text, "the control plane belongs to another cluster; tasks keep running");
                    backoff = Duration::from_secs(5);
                } else if text.contains("503") {
                    // A member answered, between two leaders: the next one is seconds away at
                    // most, and this agent's tasks should be reconciled as soon as it leads.
                    tracing::warn!(agent = %st.cfg.id, error = %e, "no control-plane leader yet; retrying");
                    backoff = Duration::from_millis(250);
                } else {
                    tracing::warn!(agent = %st.cfg.id, error = %e, "cannot register; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        tracing::info!(agent = %st.cfg.id, server_epoch = %reg.server_epoch, "registered");
        let interval = Duration::from_millis(reg.status_interval_ms.clamp(100, 10_000));
        let reporter = tokio::spawn(report::report_loop(st.clone(), interval, reg.delta_reports));
        let r = desired::desired_loop(&st, stop.clone()).await;
        reporter.abort();
        if let Err(e) = r {
            tracing::warn!(agent = %st.cfg.id, error = %e, "lost the control plane; tasks keep running, re-registering");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

/// Makes the running set equal the desired set.
async fn reconcile(st: &Arc<AgentState>, desired: DesiredState) {
    let want: HashSet<(String, String)> =
        desired.assignments.iter().map(|a| (a.service.clone(), a.instance.clone())).collect();
    // Stop what is no longer desired.
    let stale: Vec<((String, String), PodHandle)> = {
        let mut running = st.pods.running.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<(String, String)> = running
            .iter()
            .filter(|(k, h)| {
                !want.contains(*k)
                    || desired
                        .assignments
                        .iter()
                        .any(|a| a.service == k.0 && a.instance == k.1 && a.incarnation > h.incarnation)
            })
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter().filter_map(|k| running.remove(&k).map(|h| (k, h))).collect()
    };
    for ((service, instance), h) in stale {
        tracing::info!(%service, %instance, incarnation = h.incarnation, "stopping: not desired any more");
        let _ = h.cancel.send(true);
        let _ = h.join.await;
        st.ctx.checkpoints.remove(&service, &instance);
        if !want.contains(&(service.clone(), instance.clone())) {
            st.ctx.board.forget(&service, &instance);
        }
    }
    // Delete the volumes the control plane released (retention ended or a user asked), never
    // one an incarnation running here uses.
    {
        let running = st.pods.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut released = st.released.lock().unwrap_or_else(|e| e.into_inner());
        released.retain(|r| desired.release_volumes.contains(r));
        for r in &desired.release_volumes {
            // Busy too: an incarnation from before a restart, not yet adopted or killed.
            let busy = running.values().any(|h| h.volume_id == r.id)
                || st
                    .adoptable
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .any(|c| c.assignment.volume_id == r.id);
            if busy || released.contains(r) {
                continue;
            }
            let Some(dir) = st.ctx.volume_set_dir(&r.id) else {
                tracing::warn!(id = %r.id, "refusing to delete a volume with an invalid id");
                continue;
            };
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => tracing::info!(id = %r.id, dir = %dir.display(), "deleted a released volume"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot delete released volumes; will retry");
                    continue;
                }
            }
            released.push(r.clone());
        }
        if !released.is_empty() {
            st.ctx.board.changed.notify_one();
        }
    }
    // Start what is desired and not running.
    let mut running = st.pods.running.lock().unwrap_or_else(|e| e.into_inner());
    for a in desired.assignments {
        let key = (a.service.clone(), a.instance.clone());
        if running.contains_key(&key) {
            continue;
        }
        let (tx, rx) = watch::channel(false);
        let incarnation = a.incarnation;
        let fence_after_ms = a.fence_after_ms;
        let volume_id = a.volume_id.clone();
        let assignment = a.clone();
        let found = st.adoptable.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        let join = match found {
            Some(ck) if ck.assignment.incarnation == a.incarnation && ck.prelude_done() => {
                tracing::info!(service = %a.service, instance = %a.instance, incarnation, "re-adopting");
                tokio::spawn(pod::run_adopted(st.ctx.clone(), a, ck, rx))
            }
            other => {
                if let Some(stale) = other {
                    kill_checkpointed(&stale);
                }
                tracing::info!(service = %a.service, instance = %a.instance, incarnation, "launching");
                tokio::spawn(pod::run_pod(st.ctx.clone(), a, rx))
            }
        };
        running
            .insert(key, PodHandle { incarnation, cancel: tx, join, fence_after_ms, volume_id, assignment });
    }
    // Maintenance job runs, in the sandbox of the incarnation running here.
    let assignments: HashMap<(String, String), Assignment> =
        running.iter().map(|(k, h)| (k.clone(), h.assignment.clone())).collect();
    st.jobs
        .sync(&st.ctx, &desired.job_runs, |s, i| assignments.get(&(s.to_string(), i.to_string())).cloned());
    drop(running);
    // Checkpointed incarnations that are not desired any more: stale, killed.
    let stale: Vec<checkpoint::Checkpoint> =
        st.adoptable.lock().unwrap_or_else(|e| e.into_inner()).drain().map(|(_, c)| c).collect();
    for ck in stale {
        tracing::info!(service = %ck.assignment.service, instance = %ck.assignment.instance, incarnation = ck.assignment.incarnation, "killing a stale incarnation from before the restart");
        kill_checkpointed(&ck);
        st.ctx.checkpoints.remove(&ck.assignment.service, &ck.assignment.instance);
    }
}

/// Fence mode: an incarnation whose agent has lost the control plane for longer than its
/// `fence_after_ms` is killed here, by the agent itself, so that the control plane can replace
/// it elsewhere without two incarnations ever running at once.
async fn fence_loop(st: Arc<AgentState>) {
    loop {
        // Every 100 ms while some incarnation runs in fence mode; otherwise once a second.
        let fenced = st
            .pods
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|h| h.fence_after_ms.is_some());
        tokio::time::sleep(Duration::from_millis(if fenced { 100 } else { 1000 })).await;
        let silent = pod::now_ms().saturating_sub(st.last_contact.load(std::sync::atomic::Ordering::SeqCst));
        let fenced: Vec<((String, String), PodHandle)> = {
            let mut running = st.pods.running.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<(String, String)> = running
                .iter()
                .filter(|(_, h)| h.fence_after_ms.is_some_and(|f| silent > f))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter().filter_map(|k| running.remove(&k).map(|h| (k, h))).collect()
        };
        if !fenced.is_empty() {
            st.refetch.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        for ((service, instance), h) in fenced {
            tracing::warn!(%service, %instance, incarnation = h.incarnation, silent_ms = silent, "fencing: no contact with the control plane; killing the instance");
            let _ = h.cancel.send(true);
            let _ = h.join.await;
            st.ctx.checkpoints.remove(&service, &instance);
            for t in
                st.ctx.board.snapshot().into_iter().filter(|t| t.service == service && t.instance == instance)
            {
                st.ctx.board.update(&service, &instance, &t.task, |s| {
                    s.message = Some(format!("fenced: no contact with the control plane for {} ms", silent));
                });
            }
        }
    }
}

/// Kills the still-running processes of a checkpointed incarnation (verified by start time).
fn kill_checkpointed(ck: &checkpoint::Checkpoint) {
    use nix::sys::signal::{killpg, Signal};
    for t in ck.tasks.values() {
        if pod::proc_start_time(t.pid) == Some(t.start_time) {
            let _ = killpg(nix::unistd::Pid::from_raw(t.pid as i32), Signal::SIGKILL);
        }
    }
}

async fn stop_all(st: &AgentState) {
    let all: Vec<PodHandle> = {
        let mut running = st.pods.running.lock().unwrap_or_else(|e| e.into_inner());
        running.drain().map(|(_, h)| h).collect()
    };
    for h in &all {
        let _ = h.cancel.send(true);
    }
    for h in all {
        let _ = h.join.await;
    }
    // Every task was stopped on purpose: nothing to re-adopt.
    for c in st.ctx.checkpoints.load_all() {
        st.ctx.checkpoints.remove(&c.assignment.service, &c.assignment.instance);
    }
}
