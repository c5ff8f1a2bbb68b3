//! Recovery passes over N running instances (pods of 10,000; one agent per 100 instances, so
//! 10,000 agents for 1,000,000; the memory store; in process): a full pass (the first of a
//! control plane: every instance judged)
//! and the pass after one agent's report that changes one task (incremental: only what changed
//! is judged). Prints the time per pass and its ratio to a reference taken in the same run: one
//! range read of the same N instance records.
//!
//! `cargo bench -p tend-control --bench reconcile -- [N]...` (default 10000)

// A benchmark measures wall time: the crate's clock rule is for its code, not for its benches.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_api::{TaskState, TaskStatus};
use tend_control::agents::{Heard, TaskReport};
use tend_control::records::{
    agent_key, encode_agent, encode_instance, instance_key, service_key, ServiceRecord,
};
use tend_control::{Control, ControlConfig};
use tend_model::{SharedClock, SystemClock};
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

const POD: u32 = 10_000;
const PER_AGENT: u32 = 100;

/// The size of one run: instances (in pods of up to `POD`) and agents.
#[derive(Clone, Copy)]
struct Size {
    instances: u32,
    agents: u32,
}

impl Size {
    fn pods(&self) -> u32 {
        self.instances.div_ceil(POD)
    }
    /// (pod name, index) of instance number `i`.
    fn instance(&self, i: u32) -> (String, u32) {
        (format!("w{}", i / POD), i % POD)
    }
    fn agent_of(&self, i: u32) -> u32 {
        i % self.agents
    }
}

fn spec(size: Size) -> String {
    let mut s = String::from("version: 1\nname: big\npods:\n");
    for p in 0..size.pods() {
        let count = (size.instances - p * POD).min(POD);
        s.push_str(&format!(
            "  w{p}:\n    count: {count}\n    tasks: {{ t: {{ cmd: 'exec sleep 600', cpus: 0.01, memory_mb: 1 }} }}\n"
        ));
    }
    s
}

async fn seed(store: &Arc<dyn StateStore>, size: Size, now: u64) {
    let text = spec(size);
    let parsed = tend_spec::load_service("big.yml", &text).unwrap();
    let configs: Vec<String> =
        parsed.pods.iter().map(|p| tend_spec::pod_config_identity(p, &Default::default())).collect();
    let rec = ServiceRecord {
        name: "big".into(),
        spec: text,
        file: "big.yml".into(),
        generation: 1,
        artifacts: Default::default(),
    };
    store.put(&service_key("big"), &serde_json::to_vec(&rec).unwrap()).await.unwrap();
    for a in 0..size.agents {
        let rec = tend_model::Agent {
            id: format!("a{a}"),
            host: "127.0.0.1".into(),
            url: "http://127.0.0.1:1".into(),
            attributes: Default::default(),
            capacity: tend_model::Resources { cpus_milli: 1_000_000, memory_mb: 1_000_000, disk_mb: 0 },
            ports: (20_000, 30_000),
            registered_ms: now,
        };
        store.put(&agent_key(&rec.id), &encode_agent(&rec).unwrap()).await.unwrap();
    }
    for i in 0..size.instances {
        let (pod, index) = size.instance(i);
        let config = configs[(i / POD) as usize].clone();
        let mut rec =
            tend_model::Instance::new(tend_model::InstanceId::new(pod.clone(), index), now - 60_000);
        rec.reservation =
            Some(tend_model::Reservation { agent: format!("a{}", size.agent_of(i)), ..Default::default() });
        rec.next_incarnation(0, config.clone(), now - 60_000);
        rec.ready = Some(tend_model::Ready { config, incarnation: 1 });
        let key = instance_key("big", &format!("{pod}-{index}"));
        store.put(&key, &encode_instance(&rec).unwrap()).await.unwrap();
    }
}

/// Every agent reports its tasks running for a minute.
async fn report_all(server: &Control, size: Size, now: u64) {
    for a in 0..size.agents {
        let tasks: Vec<TaskStatus> = (0..size.instances)
            .filter(|i| size.agent_of(*i) == a)
            .map(|i| {
                let (pod, index) = size.instance(i);
                TaskStatus {
                    service: "big".into(),
                    instance: format!("{pod}-{index}"),
                    incarnation: 1,
                    task: "t".into(),
                    state: TaskState::Running,
                    ready: true,
                    healthy: None,
                    exit_code: None,
                    pid: Some(1),
                    message: None,
                    since_ms: now - 60_000,
                    restarts: 0,
                    next_restart_ms: None,
                    crash_loop: 0,
                }
            })
            .collect();
        let heard = Heard { seq: 1, tasks: TaskReport::Full(tasks), revision: None, conflict: None };
        server.on_status(&format!("a{a}"), heard, Vec::new()).await;
    }
}

async fn run(size: Size) {
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now_ms();
    let store: Arc<dyn StateStore> = MemoryStore::new(clock.clone());
    seed(&store, size, now).await;
    // Agents report once here (and `a0` once per round): seeding a million instances takes
    // longer than the default 5 s after which a silent agent counts as lost.
    let cfg = ControlConfig { agent_lost_after_ms: 3_600_000, ..ControlConfig::default() };
    let server = Control::new(cfg, store.clone(), clock).await.unwrap();
    report_all(&server, size, now).await;
    // The deploy driver's first run (every step checked and skipped) and the first passes run
    // beside the measured ones otherwise: wait until the rollout is complete.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(1_800) {
        let (r, _) = tend_control::rollout::read(&server, "big").await.unwrap();
        if r.state == tend_control::rollout::RolloutState::Complete {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The passes measured run alone: the control plane's own recovery loop would otherwise run
    // one beside each (woken by the same report) and take turns with it.
    server.stop_passes();
    let (mut reference, mut full, mut one) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..10u32 {
        let t = Instant::now();
        let n = store.range("services/big/instances/").await.unwrap().kvs.len();
        reference.push(t.elapsed());
        assert_eq!(n, size.instances as usize);
        server.inner.recovery_cache.lock().await.last_full_ms = None;
        let t = Instant::now();
        tend_control::recovery::tick(&server).await.unwrap();
        full.push(t.elapsed());
        // One agent reports one task restarted in place; the pass after it.
        // (A delta on the last report, as agents send them.)
        let mut task = server.inner.agents.read().unwrap().get("a0").unwrap().tasks.all()[0].clone();
        task.restarts = round + 1;
        let seq = u64::from(round) + 2;
        let delta = TaskReport::Delta { base: seq - 1, changed: vec![task], gone: Vec::new() };
        let heard = Heard { seq, tasks: delta, revision: None, conflict: None };
        server.on_status("a0", heard, Vec::new()).await;
        let t = Instant::now();
        tend_control::recovery::tick(&server).await.unwrap();
        one.push(t.elapsed());
    }
    for v in [&mut reference, &mut full, &mut one] {
        v.sort();
    }
    let r = reference[5];
    let replaced =
        server.instances("big").await.unwrap().iter().filter(|(_, r)| r.incarnation_number() != 1).count();
    assert_eq!(replaced, 0, "a healthy instance was relaunched");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{} instances, {} agents: full recovery pass median {:.1} ms (min {:.1}); after one agent's report median {:.3} ms (min {:.3}); reference range read {:.1} ms (ratios {:.2}x, {:.4}x)",
        size.instances,
        size.agents,
        ms(full[5]),
        ms(full[0]),
        ms(one[5]),
        ms(one[0]),
        ms(r),
        ms(full[5]) / ms(r),
        ms(one[5]) / ms(r)
    );
    server.stop();
}

fn main() {
    let sizes: Vec<u32> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![10_000] } else { sizes };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for n in sizes {
        let size = Size { instances: n.max(1), agents: (n / PER_AGENT).max(1) };
        rt.block_on(run(size));
    }
}
