//! What users do to the simulated cluster: deploy two services (one in fence mode with a `once`
//! task, a volume and a maintenance job; one in replace mode), then update them (good and bad
//! configs), restart and replace instances, scale up, run jobs, delete and re-create a service.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tend_control::services::{submit, Submission};

use crate::checks::Cause;
use crate::world::World;

/// What the workload has asked of one service.
#[derive(Clone, Debug)]
pub struct SvcModel {
    pub fence: bool,
    pub count: u32,
    pub generation: u64,
    /// The last spec submitted has a crashing command (a failed update until fixed).
    pub bad: bool,
    pub exists: bool,
    /// The benchmark's service: one pod deployed in parallel.
    pub bulk: bool,
}

/// The spec text of a service.
pub fn spec_yaml(name: &str, m: &SvcModel) -> String {
    if m.bulk {
        // Pods of at most 10,000 instances (the spec's bound), all deployed in parallel.
        let pods = m.count.div_ceil(10_000).max(1);
        let mut s = format!("version: 1\nname: {name}\npods:\n");
        let mut phases = String::new();
        for p in 0..pods {
            let count = (m.count - p * 10_000).min(10_000);
            s.push_str(&format!(
                "  node{p}:\n    count: {count}\n    volumes:\n      - {{ name: data, path: data, size_mb: 1 }}\n    tasks:\n      server:\n        goal: running\n        cmd: sim-serve --generation {g}\n        cpus: 0.001\n        memory_mb: 1\n        readiness_check: {{ cmd: sim-ready, interval_seconds: 1 }}\n",
                g = m.generation
            ));
            phases.push_str(&format!("      nodes{p}:\n        pod: node{p}\n        strategy: parallel\n"));
        }
        s.push_str("plans:\n  deploy:\n    strategy: parallel\n    phases:\n");
        s.push_str(&phases);
        return s;
    }
    let cmd = if m.bad { "sim-crash" } else { "sim-serve" };
    let (pod, partition) = if m.fence { ("db", "fence") } else { ("cache", "replace") };
    let mut s = format!(
        "version: 1\nname: {name}\npods:\n  {pod}:\n    count: {count}\n    volumes:\n      - {{ name: data, path: data, size_mb: {size} }}\n    tasks:\n",
        count = m.count,
        // Updates grow the volume now and then (re-reserved in place); never shrink it.
        size = 1 + m.generation / 3,
    );
    if m.fence {
        s.push_str("      init: { goal: once, cmd: sim-ok, cpus: 0.01, memory_mb: 1 }\n");
    }
    s.push_str(&format!(
        "      server:\n        goal: running\n        cmd: {cmd} --generation {g}\n        cpus: 0.01\n        memory_mb: 1\n        readiness_check: {{ cmd: sim-ready, interval_seconds: 1 }}\n",
        g = m.generation
    ));
    s.push_str(&format!(
        "recovery:\n  failure_timeout_seconds: 20\n  on_partition: {partition}\n  fence_after_seconds: 5\n  backoff: {{ initial_seconds: 1, max_seconds: 8 }}\n  retain_volumes_seconds: 120\n"
    ));
    if m.fence {
        s.push_str(&format!(
            "jobs:\n  repair:\n    pod: {pod}\n    cmd: sim-job\n    interval_seconds: 30\n    timeout_seconds: 20\n    backoff_seconds: 5\n"
        ));
    }
    s
}

/// Submits the service's current model to the control plane that is up.
pub async fn push(w: &World, name: &str) -> Result<u64, String> {
    let m = w.services.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned();
    let Some(m) = m else { return Err(format!("no service {name}")) };
    let server = w.net.server().ok_or("control plane down")?;
    let text = spec_yaml(name, &m);
    let spec = tend_spec::load_service("sim.yml", &text).map_err(|r| r.to_string())?;
    let sub = Submission {
        spec,
        text,
        file: "sim.yml".into(),
        artifacts: BTreeMap::new(),
        expected_generation: None,
        rollback: None,
        allow_data_loss: false,
    };
    submit(&server, sub).await.map(|(_, g, _)| g).map_err(|(_, code, msg)| format!("{code}: {msg}"))
}

/// The initial services, sized to `instances` in all.
pub fn initial(instances: usize) -> BTreeMap<String, SvcModel> {
    let fence = (instances * 3 / 5).max(1) as u32;
    let replace = (instances as u32).saturating_sub(fence).max(1);
    let m =
        |fence: bool, count| SvcModel { fence, count, generation: 1, bad: false, exists: true, bulk: false };
    BTreeMap::from([("alpha".to_string(), m(true, fence)), ("beta".to_string(), m(false, replace))])
}

/// The benchmark's one service.
pub fn bulk(instances: usize) -> BTreeMap<String, SvcModel> {
    let m = SvcModel {
        fence: false,
        count: instances as u32,
        generation: 1,
        bad: false,
        exists: true,
        bulk: true,
    };
    BTreeMap::from([("bulk".to_string(), m)])
}

fn instance_of(w: &World, svc: &str) -> Option<String> {
    let m = w.services.lock().unwrap_or_else(|e| e.into_inner()).get(svc).cloned()?;
    let pod = if m.fence { "db" } else { "cache" };
    let i = w.rng(|r| r.below(m.count as u64));
    Some(format!("{pod}-{i}"))
}

/// One random user operation.
pub async fn step(w: &Arc<World>) {
    let roll = w.rng(|r| r.below(100));
    let svc = if w.rng(|r| r.chance(0.5)) { "alpha" } else { "beta" };
    let exists = w.services.lock().unwrap_or_else(|e| e.into_inner()).get(svc).is_some_and(|m| m.exists);
    let Some(server) = w.net.server() else {
        w.trace.log("op skipped: control plane down");
        return;
    };
    if !exists {
        if roll < 50 {
            w.model(svc, |m| m.exists = true);
            let now = w.clock.elapsed_ms();
            w.checks.open(Cause::Service(svc), now);
            let r = push(w, svc).await;
            w.checks.close(w.clock.elapsed_ms() + 1);
            w.op("re-create", format!("re-create {svc}: {r:?}"));
        }
        return;
    }
    // Operations that may relaunch are causes, recorded before they act: the service's (spec
    // changes, delete) or one instance's (restart, replace).
    let inst = instance_of(w, svc);
    let now = w.clock.elapsed_ms();
    // Open until the operation returns (it may wait on locks, and act at any point meanwhile).
    match (roll, &inst) {
        (0..=39 | 65..=74 | 85..=92, _) => w.checks.open(Cause::Service(svc), now),
        (40..=64, Some(i)) => w.checks.open(Cause::Instance(svc, i), now),
        _ => {}
    }
    let done = act(w, &server, (roll, svc), inst).await;
    w.checks.close(w.clock.elapsed_ms() + 1);
    let Some((what, detail)) = done else { return };
    w.op(what, detail);
}

/// Carries out the operation `roll` picked; None when it did nothing.
async fn act(
    w: &Arc<World>,
    server: &tend_control::Control,
    (roll, svc): (u64, &str),
    inst: Option<String>,
) -> Option<(&'static str, String)> {
    let server = server.clone();
    Some(match roll {
        0..=29 => {
            w.model(svc, |m| {
                m.generation += 1;
                m.bad = false;
            });
            ("update", format!("update {svc}: {:?}", push(w, svc).await))
        }
        30..=39 if w.faults.bad_config => {
            w.model(svc, |m| {
                m.generation += 1;
                m.bad = true;
            });
            ("bad-update", format!("bad update {svc}: {:?}", push(w, svc).await))
        }
        40..=54 => {
            let i = inst?;
            let r = tend_control::recovery::restart_in_place(&server, svc, &i).await;
            ("restart", format!("restart {svc}/{i}: {r:?}"))
        }
        55..=64 => {
            let i = inst?;
            let r = tend_control::recovery::replace(&server, svc, &i, "operator asked (sim)").await;
            ("replace", format!("replace {svc}/{i}: {r:?}"))
        }
        65..=74 => {
            let cap = w.cfg.instances as u32 * 2;
            // Down a third of the time (decommission: hook, stop, volumes retained), else up.
            let down = w.rng(|r| r.chance(0.33));
            let changed = w.model(svc, |m| {
                let ok = if down { m.count > 1 } else { m.count < cap };
                if ok {
                    m.count = if down { m.count - 1 } else { m.count + 1 };
                }
                ok
            });
            if !changed {
                return None;
            }
            let how = if down { "down" } else { "up" };
            ("scale", format!("scale {how} {svc}: {:?}", push(w, svc).await))
        }
        75..=84 if svc == "alpha" => {
            let i = inst?;
            let r =
                tend_control::jobs::request_run(&server, svc, "repair", &i).await.map_err(|e| e.to_string());
            ("job-run", format!("run job repair on {svc}/{i}: {r:?}"))
        }
        85..=92 if svc == "alpha" => ("window", format!("{svc} jobs: {:?}", window(w, &server).await)),
        85..=92 if svc == "beta" => {
            let r = tend_control::services::delete(&server, svc, Duration::from_secs(5)).await;
            w.model(svc, |m| {
                m.exists = false;
                m.generation = 1;
            });
            ("delete", format!("delete {svc}: {:?}", r.map(|d| d.unconfirmed).map_err(|e| e.2)))
        }
        _ => return None,
    })
}

/// Sets (or removes) a maintenance window for the repair job: jobs run only inside it (simulated
/// time starts at 00:00 UTC).
async fn window(w: &World, server: &tend_control::Control) -> Result<String, String> {
    let id = "sim-window".to_string();
    let r = if w.rng(|r| r.chance(0.5)) {
        let start = w.rng(|r| r.below(24 * 60)) as u32;
        let policy = tend_jobs::window::RunPolicy {
            id,
            job: Some("repair".into()),
            pods: Vec::new(),
            start,
            end: (start + 30) % (24 * 60),
            utc_offset_minutes: 0,
        };
        tend_control::jobs::put_policy(server, &policy).await.map(|_| format!("window from minute {start}"))
    } else {
        tend_control::jobs::remove_policy(server, &id).await.map(|_| "window removed".to_string())
    };
    r.map_err(|e| e.to_string())
}
