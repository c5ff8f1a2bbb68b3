//! End-to-end tests of the control core's data-safety rules, each a case seen by a user that
//! failed before: a bad config update never replaced onto fresh volumes, a restarted control
//! plane judging from its own time, a deleted service's data retained and never handed to a new
//! one, an empty store that cannot wipe the cluster, a deploy that completes after an agent
//! restart, serialised spec changes, a stored spec that no longer loads, essential tasks.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// The plan the service's current rollout runs (deploy, update or rollback).
fn plan(c: &Cluster, service: &str) -> Value {
    let (_, r) = c.raw("GET", &format!("/v1/services/{service}/rollout"), Some(&c.token()), None);
    let name = r["plan"].as_str().unwrap_or("deploy").to_string();
    c.api(&["plan", "show", &name, "--service", service]).map(|v| v[0].clone()).unwrap_or(Value::Null)
}

fn alive(pid: i32) -> bool {
    kill(Pid::from_raw(pid), None).is_ok()
}

fn task_pid(pod: &Value, task: &str) -> i32 {
    pod["tasks"].as_array().unwrap().iter().find(|t| t["task"] == task).unwrap()["pid"].as_u64().unwrap()
        as i32
}

const COUNTER: &str = "version: 1
name: db
pods:
  db:
    volumes: [ { name: data, path: data, size_mb: 1 } ]
    tasks:
      server: { cmd: 'echo run >> data/count; exec sleep 600' }
recovery: { failure_timeout_seconds: 2, backoff: { initial_seconds: 1, max_seconds: 1 } }
update: { auto_rollback: false, min_healthy_seconds: 1 }
";

#[test]
fn a_bad_config_update_is_blocked_not_replaced_and_keeps_its_volume() {
    let c = Cluster::start();
    let good = c.write_spec("db.yml", COUNTER);
    c.deploy(&good, true).unwrap();
    let before = c.pods("db")[0].clone();
    let bad =
        c.write_spec("db-bad.yml", &COUNTER.replace("echo run >> data/count; exec sleep 600", "exit 3"));
    let e = c.deploy(&bad, true).expect_err("a bad update fails");
    assert!(e.contains("generation 2 of `db` failed") && e.contains("crash-looping"), "{e}");
    c.wait_for(Duration::from_secs(30), "the update step failed as crash-looping", |c| {
        let p = plan(c, "db");
        p["status"] == "error" && p.to_string().contains("crash-looping")
    });
    // Its agent keeps restarting it: shown as crash-looping, with when it tries next.
    c.wait_for(Duration::from_secs(10), "the instance shown as crash-looping", |c| {
        let p = c.pods("db")[0].clone();
        p["state"] == "crash_looping" && p["detail"].as_str().is_some_and(|d| d.contains("next in"))
    });
    // Far past the failure timeout: still on its agent, on its volume, shown as blocked.
    std::thread::sleep(Duration::from_secs(6));
    let p = c.pods("db")[0].clone();
    assert_eq!(p["agent"], before["agent"], "moved: {p}");
    assert_eq!(p["reservation"]["volume_id"], before["reservation"]["volume_id"], "fresh volume: {p}");
    assert_eq!(p["incarnation"], 2, "{p}");
    let rec = p["recovery"].as_str().unwrap_or("");
    assert!(rec.starts_with("blocked") && rec.contains("new config never became ready"), "{p}");
    let events = c.api(&["events", "--service", "db"]).unwrap().to_string();
    assert!(!events.contains("replacing db-0"), "{events}");
    // Fixing the spec brings it back on the same data; the CLI follows that generation to its end.
    c.deploy(&good, true).unwrap();
    let p = c.pods("db")[0].clone();
    assert_eq!((p["incarnation"].as_u64(), p["state"].as_str()), (Some(3), Some("running")), "{p}");
    assert_eq!(p["reservation"]["volume_id"], before["reservation"]["volume_id"]);
    assert_eq!(c.volume_file(&p, "count").lines().count(), 2, "the same volume saw both good runs");
}

#[test]
fn a_restarted_control_plane_judges_a_silent_agent_from_its_own_time() {
    let mut c = Cluster::start();
    let spec =
        c.write_spec("db.yml", &COUNTER.replace("failure_timeout_seconds: 2", "failure_timeout_seconds: 12"));
    c.deploy(&spec, true).unwrap();
    let before = c.pods("db")[0].clone();
    // The instance is older than its failure timeout when its agent goes silent.
    std::thread::sleep(Duration::from_secs(13));
    let agent = before["agent"].as_str().unwrap().to_string();
    kill(c.agent_pid(&agent), Signal::SIGSTOP).unwrap();
    c.kill_server();
    c.start_server();
    let restarted = Instant::now();
    // Not replaced at once: unreachable counted from what this control plane saw.
    c.wait_for(Duration::from_secs(20), "the silent agent seen as unreachable", |c| {
        c.pods("db")[0]["recovery"].as_str().is_some_and(|r| r.starts_with("unreachable"))
    });
    let p = c.pods("db")[0].clone();
    assert_eq!(p["incarnation"], 1, "replaced right after the restart: {p}");
    let secs: f64 = p["recovery"]
        .as_str()
        .unwrap()
        .split("unreachable for ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs < 12.0, "counted from before the restart: {p}");
    // And replaced once the failure timeout has passed since then.
    c.wait_for(Duration::from_secs(40), "replacement elsewhere", |c| c.pods("db")[0]["incarnation"] == 2);
    assert!(restarted.elapsed() >= Duration::from_secs(12), "replaced before the timeout passed");
    kill(c.agent_pid(&agent), Signal::SIGCONT).unwrap();
}

#[test]
fn a_deleted_service_keeps_its_volumes_retained_and_a_new_one_starts_clean() {
    let c = Cluster::start();
    let spec = c.write_spec("db.yml", COUNTER);
    c.deploy(&spec, true).unwrap();
    let first = c.pods("db")[0].clone();
    let pid = task_pid(&first, "server");
    let old_dir = c.volume_dir(&first);
    let out = c.api(&["service", "delete", "db", "--force"]).unwrap();
    assert_eq!(out["confirmed"], true, "{out}");
    assert!(!alive(pid), "the task still runs after a confirmed delete");
    let vols = c.api(&["volume", "list"]).unwrap();
    let old_id = first["reservation"]["volume_id"].as_str().unwrap();
    let v = vols.as_array().unwrap().iter().find(|v| v["id"] == old_id).unwrap().clone();
    assert_eq!(v["state"], "retained", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("service `db` deleted"), "{v}");
    // A new service of the same name gets a fresh volume; the old data stays where it was.
    c.deploy(&spec, true).unwrap();
    let second = c.pods("db")[0].clone();
    assert_ne!(second["reservation"]["volume_id"], first["reservation"]["volume_id"]);
    assert_eq!(c.volume_file(&second, "count").lines().count(), 1, "the new service saw old data");
    assert_eq!(std::fs::read_to_string(old_dir.join("data/count")).unwrap().lines().count(), 1);
}

#[test]
fn an_empty_store_cannot_wipe_the_cluster_unless_told_to_adopt() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "f.yml",
        "version: 1\nname: f\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\n",
    );
    c.deploy(&spec, true).unwrap();
    let pid = task_pid(&c.pods("f")[0], "t");
    // The store is lost (tokens kept): a new cluster, which must not command the old agents.
    c.kill_server();
    std::fs::remove_file(c.data().join("server.redb")).unwrap();
    c.start_server();
    c.wait_for(Duration::from_secs(20), "the refusal recorded", |c| {
        c.api(&["events"]).is_ok_and(|e| e.to_string().contains("refusing to command it"))
    });
    std::thread::sleep(Duration::from_secs(6));
    assert!(alive(pid), "an empty store's control plane had the task killed");
    // The operator says so: the agents are adopted and stop what this cluster does not know.
    c.kill_server();
    c.start_server_with(&["--adopt-agents"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!alive(pid), "the adopted agent kept a task nobody wants");
}

#[test]
fn a_deploy_with_a_once_task_completes_after_an_agent_restart() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "o.yml",
        "version: 1
name: o
pods:
  w:
    placement: { attributes: [ { name: zone, equals: a } ] }
    tasks:
      init: { goal: once, cmd: 'touch inited' }
      server:
        cmd: 'sleep 3; touch ready; exec sleep 600'
        readiness_check: { cmd: 'test -f ready', interval_seconds: 1 }
",
    );
    c.deploy(&spec, false).unwrap();
    c.wait_for(Duration::from_secs(20), "init done, server running", |c| {
        c.pods("o").first().is_some_and(|p| {
            p["tasks"].as_array().is_some_and(|ts| {
                ts.iter().any(|t| t["task"] == "init" && t["state"] == "exited")
                    && ts.iter().any(|t| t["task"] == "server" && t["state"] == "running")
            })
        })
    });
    let pid = task_pid(&c.pods("o")[0], "server");
    kill(Pid::from_raw(c.agents[0].id() as i32), Signal::SIGKILL).unwrap();
    let _ = c.agents[0].wait();
    c.agents[0] = c.spawn_agent(0);
    c.wait_for(Duration::from_secs(30), "deploy complete after the agent restart", |c| {
        plan(c, "o")["status"] == "complete"
    });
    let p = c.pods("o")[0].clone();
    assert_eq!(p["incarnation"], 1, "{p}");
    assert_eq!(task_pid(&p, "server"), pid, "re-adopted, not relaunched");
}

#[test]
fn a_step_that_waits_on_agents_fails_at_its_deadline_saying_what_it_waited_for() {
    let mut c = Cluster::start();
    c.kill_server();
    c.start_server_with(&["--step-deadline-seconds", "3"]);
    let spec = c.write_spec(
        "n.yml",
        "version: 1\nname: nr\npods:\n  w:\n    tasks:\n      t:\n        cmd: exec sleep 600\n        readiness_check: { cmd: 'false', interval_seconds: 1 }\n",
    );
    assert!(c.deploy(&spec, true).is_err());
    let p = plan(&c, "nr");
    let msg = p["phases"][0]["steps"][0]["message"].as_str().unwrap_or("").to_string();
    assert_eq!(p["status"], "error", "{p}");
    assert!(msg.contains("not running after 3 s") && msg.contains("running but not ready"), "{msg}");
}

#[test]
fn concurrent_spec_updates_are_serialised_and_stale_ones_refused() {
    let mut c = Cluster::start();
    let base = "version: 1\nname: s\npods:\n  w:\n    env: { V: 'VALUE' }\n    tasks: { t: { cmd: 'exec sleep 600', cpus: 0.1 } }\n";
    c.deploy(&c.write_spec("s.yml", &base.replace("VALUE", "0")), false).unwrap();
    let token = c.token();
    let url = format!("{}/v1/services/s", c.url());
    let children: Vec<std::process::Child> = (1..=24)
        .map(|i| {
            let body = serde_json::json!({ "spec": base.replace("VALUE", &i.to_string()) }).to_string();
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", &url])
                .arg("--cacert")
                .arg(c.ca())
                .args([
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "-H",
                    "Content-Type: application/json",
                ])
                .args(["--data-binary", &body])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<String> = children
        .into_iter()
        .map(|ch| String::from_utf8_lossy(&ch.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    let accepted = codes.iter().filter(|c| c.as_str() == "200").count() as u64;
    assert_eq!(
        accepted, 24,
        "without an expected generation every update is taken, one after the other: {codes:?}"
    );
    let status = c.api(&["service", "status", "s"]).unwrap();
    let generation = status["generation"].as_u64().or_else(|| status[0]["generation"].as_u64()).unwrap();
    assert_eq!(generation, 1 + accepted, "every acknowledged update is a generation: {codes:?}");
    // A stale expected generation is refused and changes nothing.
    let body =
        serde_json::json!({ "spec": base.replace("VALUE", "stale"), "expected_generation": 1 }).to_string();
    let (code, v) = c.raw("PUT", "/v1/services/s", Some(&token), Some(&body));
    assert_eq!((code, v["error"]["code"].as_str()), (409, Some("stale_generation")), "{v}");
    // Events come in pages, oldest first, resumable from a sequence number.
    let (_, page) = c.raw("GET", "/v1/events?limit=3", Some(&token), None);
    let page = page.as_array().cloned().unwrap_or_default();
    assert_eq!(page.len(), 3, "{page:?}");
    let last = page[2]["seq"].as_u64().unwrap();
    let (_, next) = c.raw("GET", &format!("/v1/events?since={last}&limit=3"), Some(&token), None);
    assert_eq!(next[0]["seq"].as_u64(), Some(last + 1), "{next}");
    // What runs is what was acknowledged last, and it survives a restart.
    let target = c.pods("s")[0]["target_config"].clone();
    c.kill_server();
    c.start_server();
    c.wait_for(Duration::from_secs(20), "the service loaded", |c| !c.pods("s").is_empty());
    assert_eq!(c.pods("s")[0]["target_config"], target);
}

#[test]
fn a_stored_spec_that_no_longer_loads_stops_only_its_service() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "f.yml",
        "version: 1\nname: f\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\n",
    );
    c.deploy(&spec, true).unwrap();
    c.kill_server();
    // A record as an older or newer tend may have written it: its spec does not load here.
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let clock: tend_model::SharedClock = std::sync::Arc::new(tend_model::SystemClock);
            let store = tend_store_redb::RedbStore::open(c.data().join("server.redb"), clock).unwrap();
            let rec = serde_json::json!({
                "name": "old", "spec": "version: 7\nname: old\n", "file": "old.yml", "generation": 3, "artifacts": {}
            });
            tend_store::StateStore::put(&*store, "services/old/spec", rec.to_string().as_bytes()).await.unwrap();
        });
    }
    c.start_server();
    c.wait_for(Duration::from_secs(20), "the control plane up", |c| c.api(&["service", "list"]).is_ok());
    let list = c.api(&["service", "list"]).unwrap();
    let old = list.as_array().unwrap().iter().find(|s| s["name"] == "old").unwrap().clone();
    assert!(old["error"].as_str().unwrap().contains("cannot be loaded"), "{old}");
    c.wait_for(Duration::from_secs(20), "the other service runs on", |c| {
        c.pods("f").first().is_some_and(|p| p["state"] == "running")
    });
}

#[test]
fn a_non_essential_task_restarts_alone_and_an_essential_one_takes_the_others_with_it() {
    let c = Cluster::start();
    let spec = c.write_spec(
        "e.yml",
        "version: 1\nname: e\npods:\n  w:\n    tasks:\n      main: { cmd: 'exec sleep 600' }\n      side: { cmd: 'exec sleep 600', essential: false }\n",
    );
    c.deploy(&spec, true).unwrap();
    let p = c.pods("e")[0].clone();
    let (main, side) = (task_pid(&p, "main"), task_pid(&p, "side"));
    kill(Pid::from_raw(side), Signal::SIGKILL).unwrap();
    c.wait_for(Duration::from_secs(20), "side restarted alone", |c| {
        let p = &c.pods("e")[0];
        p["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["task"] == "side" && t["restarts"] == 1 && t["state"] == "running")
    });
    assert_eq!(task_pid(&c.pods("e")[0], "main"), main, "a non-essential stop restarted the essential task");
    let side2 = task_pid(&c.pods("e")[0], "side");
    kill(Pid::from_raw(main), Signal::SIGKILL).unwrap();
    c.wait_for(Duration::from_secs(20), "both restarted", |c| {
        let p = &c.pods("e")[0];
        let ts = p["tasks"].as_array().unwrap();
        ts.iter().all(|t| t["state"] == "running")
            && ts.iter().any(|t| t["task"] == "main" && t["restarts"] == 1)
            && ts.iter().any(|t| t["task"] == "side" && t["restarts"] == 2)
    });
    assert!(!alive(side2), "the side task's old process survived its essential sibling's stop");
}

#[test]
fn a_restarted_control_plane_keeps_pacing_maintenance_jobs() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "p.yml",
        "version: 1\nname: p\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\njobs:\n  paced:\n    pod: w\n    cmd: 'sleep 1'\n    interval_seconds: 1\n    pacing_ratio: 30\n",
    );
    c.deploy(&spec, true).unwrap();
    let runs = |c: &Cluster| {
        c.api(&["job", "history", "paced", "--service", "p"])
            .map(|h| h.as_array().map_or(0, |a| a.len()))
            .unwrap_or(0)
    };
    c.wait_for(Duration::from_secs(30), "a first run finished", |c| {
        c.api(&["job", "history", "paced", "--service", "p"])
            .is_ok_and(|h| h.as_array().is_some_and(|a| a.iter().any(|r| r["status"] == "succeeded")))
    });
    // Paced for ~30 s after that run; a restart must not forget it.
    c.kill_server();
    c.start_server();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(runs(&c), 1, "a run started during the pacing pause after the restart");
    let jobs = c.api(&["job", "list", "--service", "p"]).unwrap().to_string();
    assert!(jobs.contains("pacing until"), "{jobs}");
}

#[test]
fn fence_mode_tasks_die_with_their_agent_and_restart_in_place_when_it_returns() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "f.yml",
        "version: 1\nname: fz\npods:\n  w:\n    volumes: [{ name: data, path: data, size_mb: 1 }]\n    tasks:\n      t:\n        cmd: echo kept > data/mark && exec sleep 7391\n        cpus: 0.1\nrecovery:\n  on_partition: fence\n  fence_after_seconds: 60\n  failure_timeout_seconds: 600\n",
    );
    c.deploy(&spec, true).unwrap();
    let p = c.pods("fz")[0].clone();
    let agent = p["agent"].as_str().unwrap().to_string();
    let pid = task_pid(&p, "t");
    let i = ["a1", "b1", "c1"].iter().position(|x| *x == agent).unwrap();
    kill(c.agent_pid(&agent), Signal::SIGKILL).unwrap();
    let _ = c.agents[i].wait();
    // No agent is left to fence it while the control plane may replace it: it dies with it.
    c.wait_for(Duration::from_secs(10), "the fence-mode task to die with its agent", |_| {
        // Gone, or a zombie not yet reaped by its new parent.
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_or(true, |s| s.lines().any(|l| l.starts_with("State:") && l.contains('Z')))
    });
    c.agents[i] = c.spawn_agent(i);
    c.wait_for(Duration::from_secs(30), "the task restarted in place", |c| {
        c.pods("fz").first().is_some_and(|p| {
            p["state"] == "running" && p["tasks"][0]["pid"].as_u64().is_some_and(|n| n as i32 != pid)
        })
    });
    let p = c.pods("fz")[0].clone();
    assert_eq!((p["agent"].as_str(), p["incarnation"].as_u64()), (Some(agent.as_str()), Some(1)), "{p}");
    assert_eq!(c.volume_file(&p, "mark").trim(), "kept", "same volume");
}
