//! The tend control plane's brain: services, plans, pod instances, reservations, volumes and
//! agents as the store holds them; the reconcilers (deploy drivers, recovery, volume lifecycle,
//! maintenance jobs, housekeeping) and the executor that writes their actions to the store;
//! the protocol agents speak ([`agents::AgentProtocol`]). No HTTP, database, files, processes or
//! system clock: the store, the clock and the transport to agents come in from the edges
//! (`tend-server` in real use, `tend-sim` in simulation). The pure decisions are in [`rules`].
//!
//! Intent before action: an instance's new incarnation (agent, config, number) is written to the
//! store before any agent can see it, and agents only ever run the incarnation the store holds,
//! so at most one incarnation of an instance is live, and a restarted control plane resumes from
//! the store instead of guessing.

pub mod agents;
pub mod configs;
pub mod decommission;
pub mod deploy;
pub mod desired;
pub mod dryrun;
pub mod gates;
pub mod housekeeping;
pub mod ids;
pub mod jobs;
pub mod launch;
pub mod leader;
pub mod plans;
pub mod records;
pub mod recovery;
pub mod recovery_cache;
pub mod recovery_pass;
pub mod rollout;
pub mod rules;
pub mod services;
pub mod state;
pub mod volumes;
pub mod wake;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use tend_api::{EventKind, TaskStatus};
use tend_model::SharedClock;
use tend_plan::Plan;
use tend_spec::ServiceSpec;
use tend_store::StateStore;
use tokio::sync::{watch, Notify};

pub use crate::agents::AgentLive;
use crate::ids::fresh_id;
pub use crate::plans::{compile_plans, identities};
use crate::records::*;

/// How a control plane is set up.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// An agent not heard from for this long is lost.
    pub agent_lost_after_ms: u64,
    /// How often agents report (their heartbeat).
    pub status_interval_ms: u64,
    /// The maintenance scheduler runs when something it depends on changes and when a job comes
    /// due; and at least this often.
    pub job_resync_ms: u64,
    /// TTL of a maintenance run's lease; renewed every TTL/10.
    pub job_lease_ttl_seconds: i64,
    /// Take command of agents that obeyed another cluster (e.g. after the store was lost):
    /// they then stop whatever this control plane does not know. Off by default.
    pub adopt_agents: bool,
    /// A deploy step waiting on an agent fails after this long, saying what it waited for.
    pub step_deadline_ms: u64,
    /// Events kept (the oldest go first), and for at most this long.
    pub events_keep: usize,
    pub events_keep_ms: u64,
    /// Store revisions of history kept before compaction.
    pub history_keep_revisions: i64,
    /// Derive the cluster id and epochs from this seed instead of the system's randomness:
    /// a simulation replays byte for byte. `None` (the default) in every real control plane.
    pub id_seed: Option<u64>,
    /// The epoch of the leadership this control plane runs under (the revision at which it was
    /// elected; 0 when there is no election): every desired state carries it, and agents refuse
    /// an older one.
    pub leader_epoch: u64,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            agent_lost_after_ms: 5_000,
            status_interval_ms: 1_000,
            job_resync_ms: 30_000,
            job_lease_ttl_seconds: 30,
            adopt_agents: false,
            step_deadline_ms: 600_000,
            events_keep: 10_000,
            events_keep_ms: 7 * 86_400_000,
            history_keep_revisions: 1_000,
            id_seed: None,
            leader_epoch: 0,
        }
    }
}

/// A service loaded in memory: its parsed spec, config identities and compiled plans.
pub struct ServiceRt {
    pub record: ServiceRecord,
    /// Shared: loops and requests take it without copying it.
    pub spec: Arc<ServiceSpec>,
    pub identities: Arc<BTreeMap<String, String>>,
    pub plans: BTreeMap<String, Arc<Plan>>,
    /// Every pod config an instance may still run (older generations' too), by identity.
    pub configs: Arc<configs::Configs>,
    pub trigger: Arc<Notify>,
    /// The plan the current rollout runs (`deploy`, `update`, `rollback`): recovery leaves the
    /// instances its busy steps hold alone.
    pub active_plan: String,
    pub driver: Option<tokio::task::JoinHandle<()>>,
}

/// The shared state of a running control plane.
pub struct Inner {
    pub cfg: ControlConfig,
    pub store: Arc<dyn StateStore>,
    /// Every instance record, parsed once, indexed, kept current from the store's watch.
    pub state: Arc<state::ClusterState>,
    pub clock: SharedClock,
    pub epoch: String,
    /// When this control plane started (a fence wait after a restart counts from it).
    pub started_ms: u64,
    /// The control plane's own loops, aborted by [`Control::stop`].
    pub loops: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Its passes (recovery, jobs, housekeeping, start-up reconciliation): a subset of `loops`
    /// that [`Control::stop_passes`] aborts alone.
    passes: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Set by [`Control::stop`]: nothing new is started afterwards.
    pub stopped: std::sync::atomic::AtomicBool,
    /// This cluster's identity, created with its store; agents remember it.
    pub cluster_id: String,
    /// Serialises spec changes (each a compare-and-swap on the service record as well).
    pub spec_lock: tokio::sync::Mutex<()>,
    /// Agents refused for belonging to another cluster (their refusal is recorded once).
    pub refused: Mutex<BTreeSet<String>>,
    /// Services whose stored spec cannot be loaded: not run, shown with the reason.
    pub broken: Mutex<BTreeMap<String, (ServiceRecord, String)>>,
    pub agents: RwLock<BTreeMap<String, AgentLive>>,
    pub services: Mutex<BTreeMap<String, Arc<Mutex<ServiceRt>>>>,
    /// Bumped whenever what some agent must run changes.
    pub desired_gen: watch::Sender<u64>,
    /// Bumped by [`Control::desired_changed`] (not by launches): the volume lifecycle pass
    /// runs on it, else every 10 s.
    pub volumes_gen: watch::Sender<u64>,
    /// Bumped whenever an agent reports.
    pub status_gen: watch::Sender<u64>,
    /// Per instance: woken when a report changes what is known of it (a deploy step waits on
    /// its own instance, not on every report of its agent).
    pub reports: wake::InstanceWake,
    /// Bumped when a report says something new (a task changed), not on a bare heartbeat:
    /// recovery wakes on it, so an idle cluster costs one resync a second.
    pub tasks_gen: watch::Sender<u64>,
    /// Bumped when the maintenance scheduler's inputs change outside the instance records
    /// (an on-demand request, a run policy, a service installed): it wakes on it.
    pub jobs_gen: watch::Sender<u64>,
    /// Serialises placement and launch decisions.
    pub launch_lock: tokio::sync::Mutex<()>,
    /// Volume ids reserved from the store's counter and not handed out yet (`volumes::next_id`).
    pub volume_ids: Mutex<std::ops::Range<u64>>,
    /// Launch requests batched under the lock.
    pub launches: launch::LaunchQueue,
    /// True once every known agent has reported since this control plane started (or was
    /// declared lost): plans wait for it, so that they judge tasks by fresh reports.
    pub reconciled: watch::Sender<bool>,
    /// Recovery's view of instances that are down or being replaced.
    pub recovery: Mutex<recovery::RecoveryBoard>,
    /// What agents reported since recovery's last pass, and what its passes concluded (derived:
    /// lets a pass look only at instances whose inputs changed).
    pub reported: Mutex<recovery_cache::Reported>,
    pub recovery_cache: tokio::sync::Mutex<recovery_cache::RecoveryCache>,
    /// Health-gate runs of rolling updates in flight.
    pub gates: Mutex<gates::Gates>,
    /// Bumped when a gate run's result comes in.
    pub gates_gen: watch::Sender<u64>,
    /// The maintenance scheduler's memory (active runs, statuses, alarms).
    pub jobs: Mutex<jobs::JobsState>,
    pub event_seq: AtomicU64,
    /// Every event once it is in the store, for live followers (`/v1/events/stream`); a
    /// follower that lags reads the store again from its last event.
    pub events: tokio::sync::broadcast::Sender<EventRecord>,
    /// What the edge counts (metrics): typed, not parsed from event messages; nobody listening
    /// is fine.
    pub signals: tokio::sync::broadcast::Sender<Signal>,
}

/// Something that happened, for the edge's counters and histograms (the core knows no metrics
/// library).
#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// A plan step reached its goal after `seconds` of work.
    StepCompleted { service: String, plan: String, seconds: f64 },
    /// A plan step failed.
    StepFailed { service: String, plan: String },
    /// Recovery started replacing an instance.
    Replaced { service: String },
    /// A maintenance run ended: `result` is `succeeded`, `failed`, `timed_out`, `aborted`, ….
    JobRun { service: String, job: String, result: String },
}

/// A handle on a running control plane.
#[derive(Clone)]
pub struct Control {
    pub inner: Arc<Inner>,
}

impl Control {
    /// Reads the cluster id, or creates it with a store that has none (a new cluster).
    async fn cluster_id(cfg: &ControlConfig, store: &Arc<dyn StateStore>) -> anyhow::Result<(String, bool)> {
        if let Some(kv) = store.get(CLUSTER_ID_KEY).await? {
            return Ok((String::from_utf8_lossy(&kv.value).into_owned(), false));
        }
        let id = format!("c-{}", fresh_id(cfg, "cluster", 0, 8)?);
        let r = store
            .txn(
                tend_store::Txn::new()
                    .when(tend_store::Compare::absent(CLUSTER_ID_KEY))
                    .then(tend_store::TxnOp::put(CLUSTER_ID_KEY, id.clone())),
            )
            .await?;
        if !r.succeeded {
            let kv = store.get(CLUSTER_ID_KEY).await?.context("cluster id vanished")?;
            return Ok((String::from_utf8_lossy(&kv.value).into_owned(), false));
        }
        Ok((id, true))
    }

    /// Starts a control plane on `store` and `clock`: loads agents and services, then runs
    /// its loops. Agents reach it through [`agents::AgentProtocol`], over whatever transport
    /// the caller serves (HTTP in `tend-server`, a simulated network in `tend-sim`).
    pub async fn new(
        cfg: ControlConfig,
        store: Arc<dyn StateStore>,
        clock: SharedClock,
    ) -> anyhow::Result<Control> {
        let (cluster_id, created) = Self::cluster_id(&cfg, &store).await?;
        let mut agents = BTreeMap::new();
        for kv in store.range("agents/").await?.kvs {
            let agent = decode_agent(&kv.value)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("corrupt {}", kv.key))?;
            agents.insert(agent.id.clone(), AgentLive::new(agent, None, Default::default()));
        }
        let last_event = store
            .range("events/")
            .await?
            .kvs
            .last()
            .and_then(|kv| kv.key[7..].parse::<u64>().ok())
            .unwrap_or(0);
        let started_ms = clock.now_ms();
        // Agents' change numbers start at the clock: an index from before a restart is older.
        let (state, watcher) = state::ClusterState::load(&*store, started_ms).await?;
        let follow = tokio::spawn(state.clone().follow(watcher)).abort_handle();
        let inner = Arc::new(Inner {
            epoch: fresh_id(&cfg, "epoch", started_ms, 6)?,
            started_ms,
            loops: Mutex::new(vec![follow]),
            passes: Mutex::new(Vec::new()),
            state,
            stopped: std::sync::atomic::AtomicBool::new(false),
            cluster_id,
            spec_lock: tokio::sync::Mutex::new(()),
            broken: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeSet::new()),
            cfg,
            store,
            clock,
            agents: RwLock::new(agents),
            services: Mutex::new(BTreeMap::new()),
            // Starts at the clock so that an index from before a restart is always older.
            desired_gen: watch::channel(started_ms).0,
            volumes_gen: watch::channel(1).0,
            status_gen: watch::channel(1).0,
            reports: wake::InstanceWake::default(),
            tasks_gen: watch::channel(1).0,
            jobs_gen: watch::channel(1).0,
            launch_lock: tokio::sync::Mutex::new(()),
            volume_ids: Mutex::new(0..0),
            launches: launch::LaunchQueue::default(),
            reconciled: watch::channel(false).0,
            recovery: Mutex::new(recovery::RecoveryBoard::default()),
            reported: Mutex::new(Default::default()),
            recovery_cache: tokio::sync::Mutex::new(Default::default()),
            jobs: Mutex::new(jobs::JobsState::default()),
            gates: Mutex::new(gates::Gates::default()),
            gates_gen: watch::channel(0).0,
            event_seq: AtomicU64::new(last_event),
            events: tokio::sync::broadcast::channel(1024).0,
            signals: tokio::sync::broadcast::channel(1024).0,
        });
        let server = Control { inner };
        // Load services and resume their plans.
        for kv in server.inner.store.range("services/").await?.kvs {
            if !kv.key.ends_with("/spec") {
                continue;
            }
            let rec: ServiceRecord = match serde_json::from_slice(&kv.value) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(key = %kv.key, error = %e, "unreadable service record: service not run");
                    continue;
                }
            };
            // A stored spec that no longer loads puts that service in error; the rest run on.
            let loaded = tend_spec::load_service(&rec.file, &rec.spec)
                .map_err(|r| r.to_string())
                .and_then(|spec| compile_plans(&spec).map(|_| spec).map_err(|e| e.to_string()));
            match loaded {
                Ok(spec) => server.install(rec, spec, false).await?,
                Err(e) => {
                    let msg = format!("stored spec of `{}` cannot be loaded; service not run: {e}", rec.name);
                    tracing::error!(service = %rec.name, "{msg}");
                    server.event(Some(&rec.name), EventKind::Error, msg.clone()).await;
                    server
                        .inner
                        .broken
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(rec.name.clone(), (rec, msg));
                }
            }
        }
        let what = if created { "new cluster" } else { "cluster" };
        server
            .event(
                None,
                EventKind::ControlPlane,
                format!(
                    "control plane started ({what} {}, epoch {})",
                    server.inner.cluster_id, server.inner.epoch
                ),
            )
            .await;
        let resync = std::time::Duration::from_millis(server.inner.cfg.job_resync_ms.max(100));
        let loops = vec![
            tokio::spawn(server.clone().housekeeping()).abort_handle(),
            tokio::spawn(server.clone().reconcile()).abort_handle(),
            tokio::spawn(recovery::run(server.clone())).abort_handle(),
            tokio::spawn(jobs::run(server.clone(), resync)).abort_handle(),
        ];
        server.inner.passes.lock().unwrap_or_else(|e| e.into_inner()).extend(loops.iter().cloned());
        server.inner.loops.lock().unwrap_or_else(|e| e.into_inner()).extend(loops);
        Ok(server)
    }

    /// Stops the control plane's own passes (recovery, jobs, housekeeping), leaving the cluster
    /// state following the store and the plan drivers running: for benches that run a pass by
    /// hand and time it alone.
    pub fn stop_passes(&self) {
        for h in self.inner.passes.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// Stops every loop and plan driver of this control plane at its next await, as a crash
    /// would (the store keeps whatever was written); requests in flight still finish.
    pub fn stop(&self) {
        self.inner.stopped.store(true, Ordering::SeqCst);
        for h in self.inner.loops.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
        let services: Vec<_> =
            self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for rt in services {
            if let Some(d) = rt.lock().unwrap_or_else(|e| e.into_inner()).driver.take() {
                d.abort();
            }
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Something every agent's desired state shows changed (a service deleted, volumes, job or
    /// gate runs): every agent's long poll answers, and the passes that follow desired state run.
    pub fn desired_changed(&self) {
        self.inner.desired_gen.send_modify(|g| *g += 1);
        self.inner.volumes_gen.send_modify(|g| *g += 1);
        self.inner.state.wake.all();
    }

    /// Instance records were written: the passes that follow desired state run; the agents the
    /// records name wake when the cluster state applies them.
    pub fn instances_changed(&self) {
        self.inner.desired_gen.send_modify(|g| *g += 1);
    }

    /// Tells the edge's counters (nobody listening is fine).
    pub fn signal(&self, s: Signal) {
        let _ = self.inner.signals.send(s);
    }

    /// Records an event.
    pub async fn event(&self, service: Option<&str>, kind: EventKind, message: String) {
        let seq = self.inner.event_seq.fetch_add(1, Ordering::SeqCst) + 1;
        let rec =
            EventRecord { seq, time_ms: self.now_ms(), service: service.map(str::to_string), kind, message };
        tracing::info!(seq, service = ?rec.service, kind = %rec.kind, message = %rec.message, "event");
        if let Ok(v) = serde_json::to_vec(&rec) {
            match self.inner.store.put(&event_key(seq), &v).await {
                // Nobody following is fine.
                Ok(_) => drop(self.inner.events.send(rec)),
                Err(e) => tracing::warn!(error = %e, "cannot record event"),
            }
        }
    }

    /// Makes a (new or replaced) service live: loads it and (re)starts its deploy driver.
    pub async fn install(&self, rec: ServiceRecord, spec: ServiceSpec, announce: bool) -> anyhow::Result<()> {
        let plans = compile_plans(&spec)?;
        let ids = identities(&spec, &rec.artifacts);
        let configs = Arc::new(configs::Configs::load(self, &rec, &spec).await?);
        let name = rec.name.clone();
        let existing = self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned();
        if let Some(rt) = existing {
            let mut rt = rt.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(d) = rt.driver.take() {
                d.abort();
            }
            rt.record = rec;
            rt.spec = Arc::new(spec);
            rt.identities = Arc::new(ids);
            rt.plans = plans;
            rt.configs = configs;
        } else {
            let rt = ServiceRt {
                record: rec,
                spec: Arc::new(spec),
                identities: Arc::new(ids),
                plans,
                configs,
                trigger: Arc::new(Notify::new()),
                active_plan: "deploy".into(),
                driver: None,
            };
            self.inner
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), Arc::new(Mutex::new(rt)));
        }
        // Its instances' assignments may read differently now (recovery settings), or be known
        // at all (an answer before it was loaded had none of them): no difference across this.
        self.inner.state.wake.reset();
        if self.inner.stopped.load(Ordering::SeqCst) {
            return Ok(()); // A stopped control plane starts nothing (a request still in flight).
        }
        let driver = tokio::spawn(rollout::drive(self.clone(), name.clone()));
        if let Some(rt) = self.service(&name) {
            rt.lock().unwrap_or_else(|e| e.into_inner()).driver = Some(driver);
        }
        self.inner.jobs_gen.send_modify(|g| *g += 1);
        if announce {
            let generation = self
                .service(&name)
                .map_or(0, |rt| rt.lock().unwrap_or_else(|e| e.into_inner()).record.generation);
            self.event(
                Some(&name),
                EventKind::Service,
                format!("service `{name}` generation {generation} accepted"),
            )
            .await;
        }
        Ok(())
    }

    /// Loads a new generation of a running service in place, leaving its driver running (the
    /// driver itself accepted it: a rollback).
    pub async fn reload(&self, rec: ServiceRecord, spec: ServiceSpec) -> anyhow::Result<()> {
        let plans = compile_plans(&spec)?;
        let ids = identities(&spec, &rec.artifacts);
        let configs = Arc::new(configs::Configs::load(self, &rec, &spec).await?);
        let rt = self.service(&rec.name).ok_or_else(|| anyhow::anyhow!("service `{}` is gone", rec.name))?;
        let mut rt = rt.lock().unwrap_or_else(|e| e.into_inner());
        rt.configs = configs;
        rt.record = rec;
        rt.spec = Arc::new(spec);
        rt.identities = Arc::new(ids);
        rt.plans = plans;
        self.inner.state.wake.reset();
        Ok(())
    }

    pub fn service(&self, name: &str) -> Option<Arc<Mutex<ServiceRt>>> {
        self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn service_names(&self) -> Vec<String> {
        self.inner.services.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Waits until every agent on record has reported since the start, or the lost timeout
    /// passed; then lets plans run.
    async fn reconcile(self) {
        let t0 = self.now_ms();
        let mut status = self.inner.status_gen.subscribe();
        loop {
            let (known, reported) = {
                let agents = self.inner.agents.read().unwrap_or_else(|e| e.into_inner());
                (agents.len(), agents.values().filter(|a| a.last_seen_ms.is_some()).count())
            };
            let waited = self.now_ms().saturating_sub(t0);
            if reported == known || waited >= self.inner.cfg.agent_lost_after_ms {
                let lost = known - reported;
                self.event(
                    None,
                    EventKind::ControlPlane,
                    format!(
                        "reconciled with {reported} agent(s) in {waited} ms ({lost} not heard from: lost)"
                    ),
                )
                .await;
                self.inner.reconciled.send_replace(true);
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(100), status.changed()).await;
        }
    }

    /// Resolves once the start-up reconciliation is done.
    pub async fn wait_reconciled(&self) {
        let mut rx = self.inner.reconciled.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether an agent is up (heard from within the lost timeout).
    pub fn agent_up(&self, a: &AgentLive) -> bool {
        a.last_seen_ms.is_some_and(|t| self.now_ms().saturating_sub(t) <= self.inner.cfg.agent_lost_after_ms)
    }

    /// The statuses an agent reported for one incarnation of an instance.
    pub fn task_statuses(
        &self,
        agent: &str,
        service: &str,
        instance: &str,
        incarnation: u64,
    ) -> Option<Vec<TaskStatus>> {
        let agents = self.inner.agents.read().unwrap_or_else(|e| e.into_inner());
        let a = agents.get(agent)?;
        if !self.agent_up(a) {
            return None;
        }
        Some(a.instance_tasks(service, instance).filter(|t| t.incarnation == incarnation).cloned().collect())
    }

    /// All instances of a service, by instance name.
    /// (From the cluster state, once it has caught up with the store.)
    pub async fn instances(&self, service: &str) -> anyhow::Result<Vec<(String, tend_model::Instance)>> {
        self.inner.state.caught_up(&*self.inner.store).await?;
        Ok(self.inner.state.instances(service).into_iter().map(|(k, r)| (k, (*r).clone())).collect())
    }

    /// Changes an instance with compare-and-swap on its record; `f` says whether it changed anything.
    /// Returns whether a change was written (a concurrent change makes it skip: the caller's
    /// next report or tick retries).
    pub async fn update_instance(
        &self,
        service: &str,
        instance: &str,
        f: impl FnOnce(&mut tend_model::Instance) -> bool,
    ) -> bool {
        let key = instance_key(service, instance);
        let Ok(Some(kv)) = self.inner.store.get(&key).await else { return false };
        let Ok(mut rec) = records::decode_instance(&kv.value) else { return false };
        if !f(&mut rec) {
            return false;
        }
        let Ok(v) = records::encode_instance(&rec) else { return false };
        self.inner
            .store
            .txn(
                tend_store::Txn::new()
                    .when(tend_store::Compare::mod_revision_eq(&key, kv.mod_revision))
                    .then(tend_store::TxnOp::put(&key, v)),
            )
            .await
            .is_ok_and(|r| r.succeeded)
    }
}
