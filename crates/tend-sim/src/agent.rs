//! A simulated agent: registers, long-polls its desired state and reports its tasks through the
//! simulated network, exactly as the real agent's loops do (`tend-agent/src/lib.rs`), but its
//! pods are state (`pod.rs`) instead of processes. It remembers the cluster it obeys (the real
//! `cluster::refuse`), re-adopts its incarnations after its own restart, fences in fence mode,
//! deletes released volume sets, and runs maintenance job runs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tend_agent::cluster::{refuse, ClusterMemory};
use tend_api::{
    AgentResources, DesiredBook, JobResult, JobRun, RegisterRequest, RunState, StatusReport, TaskStatus,
    VolumeRelease,
};
use tend_control::agents::AgentProtocol;
use tend_model::Clock;
use tokio::sync::Notify;

use crate::clock::SimClock;
use crate::net::NetError;
use crate::pod::SimPod;
use crate::rng::Rng;
use crate::work::{reconcile, tick_loop};
use crate::world::World;

type Key = (String, String);

/// A job run under way or finished on this agent.
#[derive(Clone, Debug)]
pub struct SimJob {
    pub run: JobRun,
    pub result: JobResult,
    pub(crate) finish_at: Option<(u64, i32)>,
}

/// Everything an agent holds; pods and volume sets survive the agent's own crash (they are
/// processes and files), the rest is its memory.
pub struct AgentSt {
    pub clock: SimClock,
    pub(crate) rng: Rng,
    /// The cluster memory file (survives restarts).
    pub mem: ClusterMemory,
    pub conflict: Option<String>,
    pub pods: BTreeMap<Key, SimPod>,
    /// Pods from before the agent's restart, not yet re-adopted or killed.
    pub adoptable: BTreeSet<Key>,
    /// Statuses of incarnations stopped by fencing, reported until the next desired state.
    pub(crate) ghosts: Vec<TaskStatus>,
    pub volume_sets: BTreeSet<String>,
    pub deleted_sets: BTreeSet<String>,
    pub(crate) released: Vec<VolumeRelease>,
    /// Agent-clock time of the last acknowledged report.
    pub last_contact: u64,
    /// The agent process runs.
    pub alive: bool,
    /// The machine exists (false: lost for good).
    pub machine_up: bool,
    pub jobs: BTreeMap<String, SimJob>,
    pub(crate) seq: u64,
    /// Reports by difference, when the control plane it registered with offers them.
    pub(crate) deltas: bool,
    pub(crate) delta: tend_api::DeltaReporter,
    /// Fencing killed something: the next long-poll asks at once (as the real agent does).
    pub(crate) refetch: bool,
    /// The generation of what this agent reports: moved by everything that may change a task's
    /// status or which tasks are reported (`touched`), so that a heartbeat on an unchanged
    /// agent sends an empty delta without comparing every task (`DeltaReporter::report_at`).
    gen: u64,
}

impl AgentSt {
    /// Something reported may have changed: the new generation, to stamp changed pods with.
    pub(crate) fn touched(&mut self) -> u64 {
        self.gen += 1;
        self.gen
    }

    /// The generation the next `touched` moves to.
    pub(crate) fn next_gen(&self) -> u64 {
        self.gen + 1
    }
}

/// One simulated agent.
pub struct SimAgent {
    pub id: String,
    pub st: Mutex<AgentSt>,
    loops: Mutex<Vec<tokio::task::AbortHandle>>,
    pub(crate) changed: Notify,
}

impl SimAgent {
    pub fn new(id: String, clock: SimClock, rng: Rng) -> SimAgent {
        let now = clock.now_ms();
        SimAgent {
            id,
            st: Mutex::new(AgentSt {
                clock,
                rng,
                mem: ClusterMemory::default(),
                conflict: None,
                pods: BTreeMap::new(),
                adoptable: BTreeSet::new(),
                ghosts: Vec::new(),
                volume_sets: BTreeSet::new(),
                deleted_sets: BTreeSet::new(),
                released: Vec::new(),
                last_contact: now,
                alive: false,
                machine_up: true,
                jobs: BTreeMap::new(),
                seq: 0,
                deltas: false,
                delta: Default::default(),
                refetch: false,
                gen: 0,
            }),
            loops: Mutex::new(Vec::new()),
            changed: Notify::new(),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, AgentSt> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts (or restarts) the agent process.
    pub fn start(self: &Arc<Self>, w: &Arc<World>) {
        {
            let mut st = self.lock();
            if !st.machine_up {
                return;
            }
            st.alive = true;
            st.touched();
            st.last_contact = st.clock.now_ms();
            // What ran before the restart is re-adopted when the control plane still wants it.
            st.adoptable = st.pods.keys().cloned().collect();
        }
        let main = tokio::spawn(main_loop(self.clone(), w.clone())).abort_handle();
        let tick = tokio::spawn(tick_loop(self.clone(), w.clone())).abort_handle();
        self.loops.lock().unwrap_or_else(|e| e.into_inner()).extend([main, tick]);
    }

    fn stop_loops(&self) {
        for h in self.loops.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// The agent process dies; its pods' processes keep running unless they die with it.
    pub fn crash(&self) {
        self.stop_loops();
        let mut st = self.lock();
        st.alive = false;
        let gen = st.touched();
        st.released.clear();
        st.ghosts.clear();
        st.conflict = None;
        // Job runs and fence-mode tasks die with their agent (the real agent spawns them with a
        // parent-death signal); other tasks keep running and are re-adopted.
        st.jobs.clear();
        let now = st.clock.now_ms();
        for p in st.pods.values_mut() {
            let fenced = p.a.fence_after_ms.is_some();
            p.agent_died(now, fenced);
            p.changed_gen = gen;
        }
    }

    /// The machine is gone for good, with everything on it.
    pub fn lose(&self) {
        self.crash();
        let mut st = self.lock();
        st.machine_up = false;
        st.touched();
        st.pods.clear();
        st.adoptable.clear();
    }

    /// Which incarnation of each instance is live here: a process runs, or the agent runs and
    /// will restart it in place.
    pub fn live(&self) -> Vec<(Key, u64, bool)> {
        let st = self.lock();
        if !st.machine_up {
            return Vec::new();
        }
        let now = st.clock.now_ms();
        st.pods
            .iter()
            .filter(|(k, p)| p.processes_alive(now) || (st.alive && !st.adoptable.contains(*k)))
            .map(|(k, p)| (k.clone(), p.a.incarnation, p.a.fence_after_ms.is_some()))
            .collect()
    }

    /// Job runs executing here (they die with the agent).
    pub fn running_jobs(&self) -> Vec<JobRun> {
        let st = self.lock();
        st.jobs.values().filter(|j| j.result.state == RunState::Running).map(|j| j.run.clone()).collect()
    }

    /// A fault: one serving task of a random pod exits now (`loop_ms`: and keeps crashing that long).
    pub fn crash_task(&self, rng: &mut Rng, loop_ms: u64) -> Option<(String, String, String)> {
        let mut st = self.lock();
        let gen = st.touched();
        let keys: Vec<Key> = st.pods.keys().cloned().collect();
        let k = rng.pick(&keys)?.clone();
        let now = st.clock.now_ms();
        let p = st.pods.get_mut(&k)?;
        p.changed_gen = gen;
        // Only a fault that happened (a serving task to crash) keeps crashing it: one that did
        // not is neither traced nor a cause.
        let t = p.crash_one(rng, now)?;
        p.crash_until = now + loop_ms;
        Some((k.0.clone(), k.1.clone(), format!("{}/{} task {t}", k.0, k.1)))
    }

    fn resources() -> AgentResources {
        AgentResources { cpus: 16.0, memory_mb: 65_536, disk_mb: 1_000_000, port_range: [20_000, 29_999] }
    }
}

async fn register(ag: &Arc<SimAgent>, w: &World) -> Result<(), NetError> {
    let mem = ag.lock().mem.clone();
    let req = RegisterRequest {
        agent_id: ag.id.clone(),
        host: format!("{}.sim", ag.id),
        agent_url: format!("http://{}.sim:1", ag.id),
        attributes: BTreeMap::new(),
        resources: SimAgent::resources(),
        cluster_id: mem.cluster_id,
        revision: Some(mem.revision),
    };
    // Contact counts from the send, as the real agent counts it; a registration is contact.
    let sent = ag.lock().clock.now_ms();
    let reg = w.net.call(&ag.id, |s| async move { s.register(req).await }).await?;
    let mut st = ag.lock();
    st.last_contact = st.last_contact.max(sent);
    if !reg.cluster_id.is_empty() && st.mem.cluster_id.as_deref() != Some(reg.cluster_id.as_str()) {
        st.mem = ClusterMemory { cluster_id: Some(reg.cluster_id.clone()), revision: 0, epoch: 0 };
    } else if st.mem.revision > reg.revision {
        st.mem.revision = reg.revision;
    }
    st.deltas = reg.delta_reports;
    st.delta.forget();
    Ok(())
}

async fn main_loop(ag: Arc<SimAgent>, w: Arc<World>) {
    let mut backoff = 100u64;
    loop {
        if let Err(e) = register(&ag, &w).await {
            if matches!(&e, NetError::Refused(409, _)) {
                backoff = 5_000;
            }
            tokio::time::sleep(Duration::from_millis(backoff)).await;
            backoff = (backoff * 2).min(5_000);
            continue;
        }
        backoff = 100;
        w.trace.log(format!("agent {} registered", ag.id));
        let reporter = tokio::spawn(report_loop(ag.clone(), w.clone()));
        ag.loops.lock().unwrap_or_else(|e| e.into_inner()).push(reporter.abort_handle());
        desired_loop(&ag, &w).await;
        reporter.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(ag: &SimAgent) -> StatusReport {
    let mut guard = ag.lock();
    let st = &mut *guard;
    st.seq += 1;
    let (pods, adoptable, ghosts) = (&st.pods, &st.adoptable, &st.ghosts);
    let current = || {
        pods.iter()
            .filter(|(k, _)| !adoptable.contains(*k))
            .flat_map(|(_, p)| p.tasks.iter().map(|t| (&t.status, Some(p.changed_gen))))
            .chain(ghosts.iter().map(|t| (t, None)))
    };
    let tasks = if st.deltas {
        st.delta.report_stamped(st.seq, st.gen, current)
    } else {
        tend_api::Delta::full(current().map(|(t, _)| t.clone()).collect())
    };
    StatusReport {
        seq: st.seq,
        tasks: tasks.tasks,
        released_volumes: st.released.clone(),
        job_results: st.jobs.values().map(|j| j.result.clone()).collect(),
        conflict: st.conflict.clone(),
        revision: Some(st.mem.revision),
        base_seq: tasks.base_seq,
        gone: tasks.gone,
    }
}

async fn report_loop(ag: Arc<SimAgent>, w: Arc<World>) {
    let mut retry = 25u64;
    loop {
        let r = report(&ag);
        let seq = r.seq;
        if w.net.duplicate() {
            let (net, id, dup) = (w.net.clone(), ag.id.clone(), r.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let who = id.clone();
                let _ = net.call(&id, |s| async move { s.status(&who, dup).await }).await;
            });
        }
        let id = ag.id.clone();
        let sent = ag.lock().clock.now_ms();
        let res = w.net.call(&ag.id, |s| async move { s.status(&id, r).await }).await;
        let interval = {
            let st = ag.lock();
            let fence = st.pods.values().filter_map(|p| p.a.fence_after_ms).min();
            fence.map_or(1_000, |f| (f / 4).clamp(100, 1_000))
        };
        let wait = match res {
            // A refused delta applied nothing: not contact (the control plane did not hear
            // what runs here); every task goes at once.
            Ok(ack) if ack.full_needed => {
                ag.lock().delta.acked(seq, true);
                retry
            }
            Ok(_) => {
                let mut st = ag.lock();
                st.delta.acked(seq, false);
                st.last_contact = st.last_contact.max(sent);
                retry = 25;
                interval
            }
            Err(_) => {
                ag.lock().delta.failed();
                retry = (retry * 2).min(interval);
                retry
            }
        };
        tokio::select! {
            biased;
            _ = ag.changed.notified() => tokio::time::sleep(Duration::from_millis(5)).await,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
        }
    }
}

async fn desired_loop(ag: &Arc<SimAgent>, w: &Arc<World>) {
    let mut index = 0u64;
    let mut failures = 0;
    // The desired state held, for answers by difference (as the real agent keeps it).
    let mut book = DesiredBook::new();
    loop {
        let id = ag.id.clone();
        if std::mem::take(&mut ag.lock().refetch) {
            (index, book) = (0, DesiredBook::new());
        }
        let (asked, held) = (index, book.held_from().map(str::to_string));
        let r =
            w.net
                .call(&ag.id, |s| async move {
                    s.desired(&id, asked, Duration::from_secs(20), held.as_deref()).await
                })
                .await;
        let mut desired = match r {
            Ok(d) => d,
            Err(NetError::Refused(404, _)) => return,
            Err(_) => {
                failures += 1;
                if failures > 3 {
                    return;
                }
                ag.changed.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if failures > 0 {
            ag.changed.notify_one();
        }
        failures = 0;
        index = desired.index;
        let refusal = {
            let mut st = ag.lock();
            let why = refuse(&st.mem, &desired);
            st.conflict = why.clone();
            if why.is_none() && desired.revision > st.mem.revision {
                st.mem.revision = desired.revision;
            }
            why
        };
        if let Some(why) = refusal {
            w.trace.log(format!("agent {} refuses: {why}", ag.id));
            book.forget();
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let Some(taken) = book.take_held(&mut desired) else {
            // A difference on a state this agent does not hold: ask again for everything.
            w.trace.log(format!("agent {} asks for its whole desired state again", ag.id));
            index = 0;
            continue;
        };
        reconcile(ag, w, desired, &book, taken).await;
        ag.changed.notify_one();
        w.after_step().await;
    }
}
