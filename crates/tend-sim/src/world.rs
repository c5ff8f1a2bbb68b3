//! One simulated world: the real control plane (`tend_control::Control`, its loops unchanged) on
//! the memory store and simulated time, N simulated agents, a workload and faults; checks after
//! every step; once faults stop, convergence within bounded simulated time and a quiet window.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tend_control::{Control, ControlConfig};
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

use crate::agent::SimAgent;
use crate::checks::Checks;
use crate::clock::SimClock;
use crate::faults::Faults;
use crate::net::Net;
use crate::rng::Rng;
use crate::store::{ProcessStore, SlowStore};
use crate::trace::Trace;
use crate::workload::SvcModel;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub agents: usize,
    pub instances: usize,
    pub faults: Faults,
    /// Simulated seconds of workload and faults.
    pub duration_s: u64,
    /// Simulated seconds allowed to converge once faults stop.
    pub converge_s: u64,
    /// Simulated seconds of quiet after convergence in which nothing may be relaunched.
    pub quiet_s: u64,
    /// Print every trace line to stderr.
    pub echo: bool,
    /// Trace lines shown with a failure.
    pub keep_trace: usize,
    /// Benchmark mode: one service of `instances` pod instances deployed in parallel, no
    /// workload after it, invariants checked at the end only.
    pub bulk: bool,
    /// How often simulated agents move their tasks on (ms).
    pub tick_ms: u64,
    /// Benchmark mode: a reading taken once the deploy converged, with everything still alive
    /// (the bench reads resident memory: the simulator itself reads nothing of the machine).
    pub probe: Option<fn() -> u64>,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            agents: 5,
            instances: 6,
            faults: Faults::all(),
            duration_s: 120,
            converge_s: 600,
            quiet_s: 60,
            echo: false,
            keep_trace: 60,
            bulk: false,
            tick_ms: 50,
            probe: None,
        }
    }

    /// The one-line command that replays this run.
    pub fn replay(&self) -> String {
        format!(
            "cargo run --release -p tend-sim -- --seed {} --agents {} --instances {} --faults {} --duration {} --trace",
            self.seed,
            self.agents,
            self.instances,
            self.faults.to_arg(),
            self.duration_s
        )
    }
}

/// The cost of passes measured after a bulk deploy, and what measuring them took (not part of
/// the deploy: the bench subtracts it).
#[derive(Clone, Copy, Debug, Default)]
pub struct Passes {
    /// A full recovery pass (every instance judged), µs.
    pub full_us: u64,
    /// The recovery pass after one agent's report that changed one task, µs.
    pub one_report_us: u64,
    /// One agent's desired state, µs.
    pub desired_us: u64,
    /// `SimConfig::probe`'s reading once the deploy converged.
    pub probe: Option<u64>,
    /// Simulated and wall time spent settling and measuring.
    pub spent_sim_ms: u64,
    pub spent_wall_us: u64,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub sim_ms: u64,
    pub steps: u64,
    pub checks: u64,
    pub faults: BTreeMap<String, u64>,
    pub ops: BTreeMap<String, u64>,
    pub plans_converged: usize,
    pub converge_ms: u64,
    /// Digest of the whole trace: the same seed gives the same digest.
    pub digest: String,
    /// Benchmark mode: wall-clock µs of one recovery pass and of one agent's desired state.
    /// Passes measured after a bulk deploy (None: not measured).
    pub passes_us: Option<Passes>,
}

/// A run that broke an invariant or did not converge.
#[derive(Clone, Debug)]
pub struct Failure {
    pub message: String,
    pub replay: String,
    pub trace_tail: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "simulation failed: {}", self.message)?;
        writeln!(f, "replay: {}", self.replay)?;
        writeln!(f, "last trace lines:")?;
        for l in &self.trace_tail {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// The shared state of a run.
pub struct World {
    pub cfg: SimConfig,
    pub faults: Faults,
    pub clock: SimClock,
    pub trace: Trace,
    pub net: Arc<Net>,
    /// The store itself (the checks' view, never slowed).
    pub mem: Arc<MemoryStore>,
    store: Arc<SlowStore>,
    /// The running control plane's access to the store (closed when it crashes).
    process: Mutex<Option<Arc<ProcessStore>>>,
    pub agents: Vec<Arc<SimAgent>>,
    pub checks: Checks,
    rng: Mutex<Rng>,
    pub services: Mutex<BTreeMap<String, SvcModel>>,
    stats: Mutex<BTreeMap<String, u64>>,
    spawned: Mutex<Vec<tokio::task::AbortHandle>>,
    last_event: AtomicU64,
    /// Benchmark mode: measured pass costs (µs).
    pub passes: Mutex<Option<Passes>>,
}

impl World {
    pub fn rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut self.rng.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Changes the workload's model of a service.
    pub fn model<T: Default>(&self, svc: &str, f: impl FnOnce(&mut SvcModel) -> T) -> T {
        self.services.lock().unwrap_or_else(|e| e.into_inner()).get_mut(svc).map(f).unwrap_or_default()
    }

    fn count(&self, key: String) {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
    }

    pub fn op(&self, kind: &str, detail: String) {
        self.count(format!("op:{kind}"));
        self.trace.log(format!("OP {detail}"));
    }

    pub fn fault(&self, kind: &str, detail: String) {
        self.count(format!("fault:{kind}"));
        self.trace.log(format!("FAULT {detail}"));
    }

    /// Spawns a task that the end of the fault phase aborts.
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(f).abort_handle();
        self.spawned.lock().unwrap_or_else(|e| e.into_inner()).push(h);
    }

    fn server_config(&self) -> ControlConfig {
        ControlConfig { id_seed: Some(self.cfg.seed), step_deadline_ms: 120_000, ..Default::default() }
    }

    /// Starts a control plane on the store (a restart after a crash reads everything from it).
    pub async fn start_control_plane(&self) {
        if self.net.server().is_some() {
            return;
        }
        let process = Arc::new(ProcessStore::new(self.store.clone()));
        let store: Arc<dyn StateStore> = process.clone();
        match Control::new(self.server_config(), store, Arc::new(self.clock.clone())).await {
            Ok(s) => {
                self.trace.log(format!("control plane up (epoch {})", s.inner.epoch));
                self.net.set_server(Some(s));
                *self.process.lock().unwrap_or_else(|e| e.into_inner()) = Some(process);
            }
            Err(e) => self.checks.violate(self, format!("control plane cannot start from its store: {e:#}")),
        }
    }

    /// After an agent's step: the invariants over every agent.
    pub async fn after_step(&self) {
        if self.cfg.bulk {
            return;
        }
        self.checks.check_agents(self);
    }

    /// Copies the control plane's new events into the trace.
    async fn trace_events(&self) {
        let Ok(r) = self.mem.range("events/").await else { return };
        let last = self.last_event.load(Ordering::Relaxed);
        for kv in r.kvs {
            let Ok(e) = serde_json::from_slice::<tend_control::records::EventRecord>(&kv.value) else {
                continue;
            };
            if e.seq > last {
                self.trace.log(format!("event {} {}: {}", e.service.unwrap_or_default(), e.kind, e.message));
                self.last_event.store(e.seq, Ordering::Relaxed);
            }
        }
    }

    fn failure(&self, message: String) -> Failure {
        Failure { message, replay: self.cfg.replay(), trace_tail: self.trace.tail() }
    }
}

/// Runs one simulation to its end on a fresh deterministic runtime.
pub fn run(cfg: SimConfig) -> Result<Report, Failure> {
    let mut b = tokio::runtime::Builder::new_current_thread();
    b.enable_time().start_paused(true);
    // The runtime's own random choices (select! order, watch wakers) come from the seed too.
    #[cfg(tokio_unstable)]
    b.rng_seed(tokio::runtime::RngSeed::from_bytes(&cfg.seed.to_le_bytes()));
    let rt = b.build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            return Err(Failure {
                message: format!("runtime: {e}"),
                replay: cfg.replay(),
                trace_tail: vec![],
            })
        }
    };
    rt.block_on(run_world(cfg))
}

fn build(cfg: SimConfig) -> Result<Arc<World>, Failure> {
    let start = tokio::time::Instant::now();
    let clock = SimClock::new(start, 0);
    let mut rng = Rng::new(cfg.seed);
    let f = cfg.faults;
    let mem = MemoryStore::new(Arc::new(clock.clone()));
    let store = Arc::new(SlowStore::new(mem.clone(), rng.fork(), if f.slow_store { 0.05 } else { 0.0 }));
    let net = Arc::new(Net::new(clock.clone(), rng.fork(), f.messages));
    let agents = (0..cfg.agents)
        .map(|i| {
            let drift = if f.clock_drift { rng.range(0, 40_000) as i64 - 20_000 } else { 0 };
            Arc::new(SimAgent::new(format!("a{i}"), SimClock::new(start, drift), rng.fork()))
        })
        .collect();
    Ok(Arc::new(World {
        faults: f,
        trace: Trace::new(clock.clone(), cfg.keep_trace, cfg.echo),
        services: Mutex::new(if cfg.bulk {
            crate::workload::bulk(cfg.instances)
        } else {
            crate::workload::initial(cfg.instances)
        }),
        cfg,
        clock,
        net,
        mem,
        store,
        process: Mutex::new(None),
        agents,
        checks: Checks::default(),
        rng: Mutex::new(rng),
        stats: Mutex::new(BTreeMap::new()),
        spawned: Mutex::new(Vec::new()),
        last_event: AtomicU64::new(0),
        passes: Mutex::new(None),
    }))
}

async fn run_world(cfg: SimConfig) -> Result<Report, Failure> {
    let w = build(cfg)?;
    w.start_control_plane().await;
    for ag in &w.agents {
        ag.start(&w);
    }
    let names: Vec<String> = w.services.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
    for name in names {
        let r = crate::workload::push(&w, &name).await;
        if let (true, Err(e)) = (w.cfg.bulk, &r) {
            return Err(w.failure(format!("deploy of {name} refused: {e}")));
        }
        w.op("deploy", format!("deploy {name}: {r:?}"));
    }
    let checker = tokio::spawn(checker(w.clone())).abort_handle();
    if w.cfg.bulk {
        checker.abort();
    }
    let phase = if w.cfg.bulk { Ok(()) } else { crate::phases::fault_phase(&w).await };
    let result = match phase {
        Err(msg) => Err(msg),
        Ok(()) => crate::phases::settle(&w).await,
    };
    // The control plane's latest events belong in the trace around a failure.
    w.trace_events().await;
    let result = result.map_err(|m| w.failure(m));
    checker.abort();
    for h in w.spawned.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        h.abort();
    }
    if let Some(s) = w.net.server() {
        s.stop();
    }
    let converge_ms = result?;
    let (digest, steps) = w.trace.digest();
    let stats = w.stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let pick = |p: &str| -> BTreeMap<String, u64> {
        stats.iter().filter_map(|(k, v)| k.strip_prefix(p).map(|k| (k.to_string(), *v))).collect()
    };
    let plans = w.services.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|m| m.exists).count();
    let passes_us = *w.passes.lock().unwrap_or_else(|e| e.into_inner());
    Ok(Report {
        seed: w.cfg.seed,
        sim_ms: w.clock.elapsed_ms(),
        steps,
        checks: w.checks.count.load(Ordering::Relaxed),
        faults: pick("fault:"),
        ops: pick("op:"),
        plans_converged: plans,
        converge_ms,
        digest,
        passes_us,
    })
}

/// Checks the store-side invariants and copies events into the trace, every 100 ms.
async fn checker(w: Arc<World>) {
    let mut n = 0u64;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        w.checks.check_agents(&w);
        w.checks.check_store(&w).await;
        n += 1;
        if n.is_multiple_of(10) {
            w.trace_events().await;
        }
    }
}

impl World {
    /// The control plane crashes: its loops stop, its requests in flight lose their answers
    /// and can no longer write.
    pub fn crash_control_plane(&self) {
        if let Some(p) = self.process.lock().unwrap_or_else(|e| e.into_inner()).take() {
            p.kill();
        }
        self.net.set_server(None);
    }

    /// Ends the fault phase: aborts pending fault and workload tasks.
    pub fn stop_spawned(&self) {
        for h in self.spawned.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            h.abort();
        }
    }

    /// Turns the ambient faults off (messages, slow store).
    pub fn calm(&self) {
        self.net.messy.store(false, Ordering::Relaxed);
        self.store.slow_ppm.store(0, Ordering::Relaxed);
        self.net.heal_all();
    }
}
