//! Recovery passes over 10,000 running instances (20 agents, memory store, in-process): a full
//! pass (the first of a control plane: every instance judged) and the pass after one agent's
//! report that changes one task (incremental: only what changed is judged). Prints the time per
//! pass and its ratio to a reference taken in the same run: one range read of the same 10,000
//! instance records.
//!
//! `cargo bench -p tend-control --bench reconcile`

// A benchmark measures wall time: the crate's clock rule is for its code, not for its benches.
#![allow(clippy::disallowed_methods)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tend_api::{TaskState, TaskStatus};
use tend_control::records::{
    agent_key, encode_agent, encode_instance, instance_key, service_key, ServiceRecord,
};
use tend_control::{Control, ControlConfig};
use tend_model::{SharedClock, SystemClock};
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

const INSTANCES: u32 = 10_000;
const AGENTS: u32 = 20;

fn spec() -> String {
    format!("version: 1\nname: big\npods:\n  w:\n    count: {INSTANCES}\n    tasks: {{ t: {{ cmd: 'exec sleep 600', cpus: 0.01, memory_mb: 1 }} }}\n")
}

async fn seed(store: &Arc<dyn StateStore>, now: u64) -> String {
    let text = spec();
    let parsed = tend_spec::load_service("big.yml", &text).unwrap();
    let config = tend_spec::pod_config_identity(&parsed.pods[0], &Default::default());
    let rec = ServiceRecord {
        name: "big".into(),
        spec: text,
        file: "big.yml".into(),
        generation: 1,
        artifacts: Default::default(),
    };
    store.put(&service_key("big"), &serde_json::to_vec(&rec).unwrap()).await.unwrap();
    for a in 0..AGENTS {
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
    for i in 0..INSTANCES {
        let mut rec = tend_model::Instance::new(tend_model::InstanceId::new("w", i), now - 60_000);
        rec.reservation =
            Some(tend_model::Reservation { agent: format!("a{}", i % AGENTS), ..Default::default() });
        rec.next_incarnation(0, config.clone(), now - 60_000);
        rec.ready = Some(tend_model::Ready { config: config.clone(), incarnation: 1 });
        store.put(&instance_key("big", &format!("w-{i}")), &encode_instance(&rec).unwrap()).await.unwrap();
    }
    config
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let clock: SharedClock = Arc::new(SystemClock);
        let now = clock.now_ms();
        let store: Arc<dyn StateStore> = MemoryStore::new(clock.clone());
        seed(&store, now).await;
        let server = Control::new(ControlConfig::default(), store.clone(), clock)
            .await
            .unwrap();
        // Every agent reports its tasks running for a minute.
        for a in 0..AGENTS {
            let tasks: Vec<TaskStatus> = (0..INSTANCES)
                .filter(|i| i % AGENTS == a)
                .map(|i| TaskStatus {
                    service: "big".into(),
                    instance: format!("w-{i}"),
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
                })
                .collect();
            server.on_status(&format!("a{a}"), tasks, Vec::new()).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut reference = Vec::new();
        let mut passes = Vec::new();
        let mut one = Vec::new();
        for round in 0..10u32 {
            let t = Instant::now();
            let n = store.range("services/big/instances/").await.unwrap().kvs.len();
            reference.push(t.elapsed());
            assert_eq!(n, INSTANCES as usize);
            server.inner.recovery_cache.lock().await.last_full_ms = None;
            let t = Instant::now();
            tend_control::recovery::tick(&server).await.unwrap();
            passes.push(t.elapsed());
            // One agent reports one task restarted in place; the pass after it.
            let mut tasks = server.inner.agents.read().unwrap().get("a0").unwrap().tasks.clone();
            tasks[0].restarts = round + 1;
            server.on_status("a0", tasks, Vec::new()).await;
            let t = Instant::now();
            tend_control::recovery::tick(&server).await.unwrap();
            one.push(t.elapsed());
        }
        reference.sort();
        passes.sort();
        one.sort();
        let (r, p) = (reference[5], passes[5]);
        let replaced = server.instances("big").await.unwrap().iter().filter(|(_, r)| r.incarnation_number() != 1).count();
        assert_eq!(replaced, 0, "a healthy instance was relaunched");
        println!(
            "full recovery pass over {INSTANCES} instances on {AGENTS} agents: median {:.1} ms (min {:.1} ms); reference range read of the records: {:.1} ms; ratio {:.1}x",
            p.as_secs_f64() * 1e3,
            passes[0].as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            p.as_secs_f64() / r.as_secs_f64()
        );
        println!(
            "recovery pass after one agent's report (one task changed): median {:.3} ms (min {:.3} ms); ratio to the reference {:.4}x",
            one[5].as_secs_f64() * 1e3,
            one[0].as_secs_f64() * 1e3,
            one[5].as_secs_f64() / r.as_secs_f64()
        );
    });
}
