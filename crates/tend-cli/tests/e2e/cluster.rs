//! End-to-end tests of the control plane and agents, as separate real processes on loopback:
//! deploy with placement, pending reasons, SIGKILL of the control plane mid-deploy, a task killed
//! mid-step, services side by side, and bad API input rejected with nothing changed.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Cluster;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

fn data_store_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data-store/service.yml")
}

#[test]
fn deploys_the_data_store_example_respecting_placement() {
    let c = Cluster::start();
    c.deploy(&data_store_spec(), true).unwrap();
    let pods = c.pods("data-store");
    assert_eq!(pods.len(), 5);
    assert!(pods.iter().all(|p| p["state"] == "running" && p["incarnation"] == 1), "{pods:#?}");
    let agents_of = |prefix: &str| -> std::collections::BTreeSet<String> {
        pods.iter().filter(|p| p["pod"] == prefix).map(|p| p["agent"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(agents_of("meta-data").len(), 2, "meta-data: unique per agent, one per zone");
    assert_eq!(agents_of("data").len(), 3, "data: unique per agent");
    // The service works: store a value through an endpoint, read it back from the volume.
    let eps = c.api(&["service", "endpoints", "data-store"]).unwrap();
    let ep = eps.as_array().unwrap().iter().find(|e| e["instance"] == "data-1").unwrap().clone();
    let port = ep["ports"]["api"].as_u64().unwrap();
    let out = Command::new("curl")
        .args(["-s", "-X", "PUT", "--data-binary", "stored", &format!("http://127.0.0.1:{port}/kv/k1")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let data1 = pods.iter().find(|p| p["instance"] == "data-1").unwrap();
    let vol = c.volume_dir(data1).join("data/objects/k1");
    assert_eq!(std::fs::read_to_string(&vol).unwrap(), "stored");
    // Logs through the API.
    let logs = c.api(&["task", "logs", "meta-data-0", "server", "--service", "data-store"]).unwrap();
    assert!(logs["data"].as_str().unwrap().contains("meta-data listening on 127.0.0.1:"), "{logs}");
    // The OpenAPI document is served.
    let (code, doc) = c.raw("GET", "/v1/openapi.json", None, None);
    assert_eq!(code, 200);
    assert!(doc["paths"]["/v1/services"].is_object());
}

#[test]
fn bad_api_input_is_rejected_and_changes_nothing() {
    let c = Cluster::start();
    let token = c.token();
    // Refused calls are audited (kind `audit`); nothing else may happen.
    let changes = |c: &Cluster| {
        let (_, ev) = c.raw("GET", "/v1/events", Some(&token), None);
        ev.as_array().map_or(0, |a| a.iter().filter(|e| e["kind"] != "audit").count())
    };
    let before = changes(&c);
    // No token, wrong token: 401, JSON.
    let (code, body) = c.raw("GET", "/v1/services", None, None);
    assert_eq!((code, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (code, _) = c.raw("POST", "/v1/services", Some("nope"), Some(r#"{"spec":"version: 1"}"#));
    assert_eq!(code, 401);
    // Malformed JSON, invalid spec (with its located report), unknown service, unknown action.
    let (code, body) = c.raw("POST", "/v1/services", Some(&token), Some("{not json"));
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_request")));
    let bad_spec = serde_json::json!({ "spec": "version: 1\nname: x\npods:\n  web:\n    count: -1\n    tasks: { t: { cmd: 'true' } }\n", "file": "x.yml" });
    let (code, body) = c.raw("POST", "/v1/services", Some(&token), Some(&bad_spec.to_string()));
    assert_eq!((code, body["error"]["code"].as_str()), (422, Some("invalid_spec")));
    assert!(body["error"]["message"].as_str().unwrap().contains("x.yml:5:12"), "{body}");
    let local = serde_json::json!({ "spec": "version: 1\nname: y\npods:\n  web:\n    artifacts: [ { uri: ./app.tgz } ]\n    tasks: { t: { cmd: 'true' } }\n" });
    let (code, body) = c.raw("POST", "/v1/services", Some(&token), Some(&local.to_string()));
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("upload it"));
    let (code, _) = c.raw("GET", "/v1/services/ghost", Some(&token), None);
    assert_eq!(code, 404);
    let (code, _) = c.raw("PUT", "/v1/artifacts/abc", Some(&token), Some("x"));
    assert_eq!(code, 400);
    let (code, _) = c.raw("GET", "/v1/agents", Some(&c.dir.path().display().to_string()), None);
    assert_eq!(code, 401);
    // Nothing changed: no service, no new event.
    let (_, services) = c.raw("GET", "/v1/services", Some(&token), None);
    assert_eq!(services, serde_json::json!([]));
    let after = changes(&c);
    assert_eq!(before, after);
    // A plan action that does not exist, on a real service.
    let spec =
        c.write_spec("s.yml", "version: 1\nname: s\npods:\n  w:\n    tasks: { t: { cmd: 'sleep 600' } }\n");
    c.deploy(&spec, true).unwrap();
    let (code, body) = c.raw("POST", "/v1/services/s/plans/deploy/explode", Some(&token), None);
    assert_eq!(code, 400, "{body}");
    let (code, _) =
        c.raw("POST", "/v1/services/s/plans/deploy/restart", Some(&token), Some(r#"{"step":"nope"}"#));
    assert_eq!(code, 404);
    // Volumes: a malformed id, an unknown one and one in use are refused; nothing changes.
    let before = c.api(&["volume", "list"]).unwrap();
    let (code, body) = c.raw("DELETE", "/v1/volumes/..%2Fetc", Some(&token), None);
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (code, body) = c.raw("DELETE", "/v1/volumes/v999999", Some(&token), None);
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    if let Some(id) = before.as_array().and_then(|a| a.first()).and_then(|v| v["id"].as_str()) {
        let (code, body) = c.raw("DELETE", &format!("/v1/volumes/{id}"), Some(&token), None);
        assert_eq!((code, body["error"]["code"].as_str()), (409, Some("volume_in_use")), "{body}");
    }
    assert_eq!(c.api(&["volume", "list"]).unwrap(), before);
    // A wrongly typed expected generation, and an events page of a wrong type.
    let (code, body) = c.raw(
        "PUT",
        "/v1/services/s",
        Some(&token),
        Some(r#"{"spec":"version: 1","expected_generation":"x"}"#),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["code"].is_string(), "{body}");
    let (code, _) = c.raw("GET", "/v1/events?limit=lots", Some(&token), None);
    assert_eq!(code, 400);
    // An agent's report with a wrongly typed store revision is refused (its tasks stay as
    // reported before: checked just below).
    let report = r#"{"seq":1,"tasks":[],"revision":"x"}"#;
    let (code, _) = c.raw_as_agent("a", "POST", "/v1/agent/a1/status", Some(report));
    assert_eq!(code, 400);
    // Delete refuses while tasks run, then works with force.
    let (code, body) = c.raw("DELETE", "/v1/services/s", Some(&token), None);
    assert_eq!((code, body["error"]["code"].as_str()), (409, Some("tasks_running")));
    assert_eq!(c.pods("s")[0]["state"], "running");
    c.api(&["service", "delete", "s", "--force"]).unwrap();
}

#[test]
fn a_pod_that_fits_nowhere_stays_pending_with_its_reason() {
    let c = Cluster::start();
    let spec = c.write_spec(
        "big.yml",
        "version: 1\nname: big\npods:\n  huge:\n    count: 2\n    tasks:\n      t: { cmd: 'sleep 600', cpus: 1.5 }\n    placement: { attributes: [ { name: zone, regex: 'a|b' } ] }\n  small:\n    tasks: { t: { cmd: 'sleep 600', cpus: 8 } }\nplans:\n  deploy:\n    strategy: parallel\n    phases:\n      h: { pod: huge, strategy: parallel }\n      s: { pod: small }\n",
    );
    c.deploy(&spec, false).unwrap();
    c.wait_for(Duration::from_secs(20), "small-0 pending with a reason", |c| {
        c.pods("big").iter().any(|p| p["instance"] == "small-0" && p["pending_reason"].as_str().is_some())
    });
    let pods = c.pods("big");
    let small = pods.iter().find(|p| p["instance"] == "small-0").unwrap();
    let reason = small["pending_reason"].as_str().unwrap();
    assert!(reason.contains("3 agent(s) lack cpus (need 8.0, most free 2.0)"), "{reason}");
    assert_eq!(small["state"], "pending");
    c.wait_for(Duration::from_secs(20), "huge pods running", |c| {
        c.pods("big").iter().filter(|p| p["pod"] == "huge" && p["state"] == "running").count() == 2
    });
    let plan = c.api(&["plan", "show", "deploy", "--service", "big"]).unwrap();
    let text = plan.to_string();
    assert!(text.contains("pending: no agent fits"), "{text}");
}

const SLOW: &str = "version: 1
name: slow
pods:
  node:
    count: 4
    volumes: [ { name: data, path: data, size_mb: 1 } ]
    tasks:
      server:
        cmd: echo $TEND_INCARNATION $$ >> data/launches; sleep 1; touch ready; exec sleep 600
        cpus: 0.1
        readiness_check: { cmd: test -f ready, interval_seconds: 1 }
plans:
  deploy:
    phases:
      all: { pod: node, strategy: serial }
";

#[test]
fn sigkill_of_the_control_plane_mid_deploy_resumes_without_duplicates() {
    let mut c = Cluster::start();
    let spec = c.write_spec("slow.yml", SLOW);
    c.deploy(&spec, false).unwrap();
    c.wait_for(Duration::from_secs(30), "two instances running", |c| {
        c.pods("slow").iter().filter(|p| p["state"] == "running").count() >= 2
    });
    let before: Vec<Value> = c.pods("slow");
    c.kill_server();
    std::thread::sleep(Duration::from_millis(300));
    c.start_server();
    c.wait_for(Duration::from_secs(60), "deploy complete after the restart", |c| {
        c.api(&["plan", "show", "deploy", "--service", "slow"]).is_ok_and(|v| v[0]["status"] == "complete")
    });
    let after = c.pods("slow");
    for p in &after {
        assert_eq!(p["incarnation"], 1, "{p}");
        let inst = p["instance"].as_str().unwrap();
        let launches = std::fs::read_to_string(c.volume_dir(p).join("data/launches")).unwrap();
        assert_eq!(launches.lines().count(), 1, "{inst} launched more than once: {launches}");
    }
    // The instances running before the kill were not restarted: same pids.
    for b in before.iter().filter(|p| p["state"] == "running") {
        let a = after.iter().find(|p| p["instance"] == b["instance"]).unwrap();
        assert_eq!(a["tasks"][0]["pid"], b["tasks"][0]["pid"], "{} was restarted", b["instance"]);
    }
}

#[test]
fn a_task_killed_mid_step_is_restarted_in_place_and_a_crash_loop_fails_the_step() {
    let c = Cluster::start();
    let spec = c.write_spec(
        "stuck.yml",
        "version: 1\nname: stuck\npods:\n  w:\n    tasks:\n      server:\n        cmd: exec sleep 600\n        readiness_check: { cmd: 'false', interval_seconds: 1 }\n",
    );
    c.deploy(&spec, false).unwrap();
    c.wait_for(Duration::from_secs(20), "the task running", |c| {
        c.pods("stuck").first().is_some_and(|p| p["tasks"][0]["pid"].as_u64().is_some())
    });
    let pid = c.pods("stuck")[0]["tasks"][0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    c.wait_for(Duration::from_secs(20), "the task restarted in place", |c| {
        let t = &c.pods("stuck")[0]["tasks"][0];
        t["restarts"] == 1 && t["state"] == "running" && t["pid"].as_u64().is_some_and(|p| p != pid)
    });
    let pod = &c.pods("stuck")[0];
    assert_eq!(pod["incarnation"], 1, "an in-place restart keeps the incarnation");
    assert!(
        pod["tasks"][0]["message"].as_str().unwrap().contains("restarted in place after: killed by a signal"),
        "{pod}"
    );
    // A task that keeps exiting: the agent backs off, and the deploy step fails as a crash loop.
    let spec = c.write_spec(
        "loop.yml",
        "version: 1\nname: crash\npods:\n  w:\n    tasks:\n      server: { cmd: 'exit 3' }\nrecovery: { backoff: { initial_seconds: 1, max_seconds: 1 }, failure_timeout_seconds: never }\n",
    );
    c.deploy(&spec, false).unwrap();
    c.wait_for(Duration::from_secs(30), "the step in error", |c| {
        c.api(&["plan", "show", "deploy", "--service", "crash"]).is_ok_and(|v| v[0]["status"] == "error")
    });
    let plan = c.api(&["plan", "show", "deploy", "--service", "crash"]).unwrap();
    let msg = plan[0]["phases"][0]["steps"][0]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("w-0 incarnation 1") && msg.contains("crash-looping"), "{msg}");
}

#[test]
fn two_services_side_by_side_on_the_same_agents() {
    let c = Cluster::start();
    for name in ["one", "two"] {
        let spec = c.write_spec(
            &format!("{name}.yml"),
            &format!("version: 1\nname: {name}\npods:\n  web:\n    count: 3\n    placement: {{ unique_per_agent: true }}\n    tasks:\n      t: {{ cmd: 'exec sleep 600', ports: {{ http: 0 }} }}\n"),
        );
        c.deploy(&spec, true).unwrap();
    }
    let mut ports = std::collections::BTreeSet::new();
    for name in ["one", "two"] {
        let pods = c.pods(name);
        assert_eq!(pods.iter().filter(|p| p["state"] == "running").count(), 3);
        for p in pods {
            let key = (p["agent"].as_str().unwrap().to_string(), p["ports"]["http"].as_u64().unwrap());
            assert!(ports.insert(key.clone()), "port {key:?} reserved twice");
        }
    }
    let services = c.api(&["service", "list"]).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 2);
}

#[test]
fn a_failing_health_check_kills_the_task_and_it_is_restarted_in_place() {
    let c = Cluster::start();
    let spec = c.write_spec(
        "h.yml",
        "version: 1\nname: h\npods:\n  w:\n    tasks:\n      t:\n        cmd: touch healthy; exec sleep 600\n        health_check: { cmd: test -f healthy, interval_seconds: 1, max_consecutive_failures: 2 }\n",
    );
    c.deploy(&spec, true).unwrap();
    let pod = &c.pods("h")[0];
    let pid = pod["tasks"][0]["pid"].as_u64().unwrap() as i32;
    let zone = &pod["agent"].as_str().unwrap()[..1];
    std::fs::remove_file(c.dir.path().join(format!("agent-{zone}/sandboxes/h/w-0/1/healthy"))).unwrap();
    c.wait_for(Duration::from_secs(20), "the unhealthy task restarted", |c| {
        c.pods("h")[0]["tasks"][0]["restarts"] == 1
    });
    let t = &c.pods("h")[0]["tasks"][0];
    assert!(
        t["message"].as_str().unwrap().contains("unhealthy: health check failed 2 times in a row"),
        "{t}"
    );
    assert!(kill(Pid::from_raw(pid), None).is_err(), "the unhealthy process is gone");
}

const PIDS: &str = "version: 1
name: r
pods:
  w:
    volumes: [ { name: data, path: data, size_mb: 1 } ]
    on_replace: echo bootstrap from peers, replacing $TEND_REPLACED_AGENT > data/hook
    tasks:
      t: { cmd: 'echo $$ $TEND_INCARNATION ${TEND_REPLACING:-0} ${TEND_REPLACED_AGENT:-none} >> data/pids; exec sleep 600' }
recovery: { failure_timeout_seconds: 1, backoff: { initial_seconds: 1, max_seconds: 2 } }
";

#[test]
fn kill_9_of_a_task_restarts_it_in_place_with_its_volume() {
    let c = Cluster::start();
    let spec = c.write_spec("r.yml", PIDS);
    c.deploy(&spec, true).unwrap();
    let pod = c.pods("r")[0].clone();
    let pid = pod["tasks"][0]["pid"].as_u64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    c.wait_for(Duration::from_secs(20), "restart in place", |c| {
        let t = &c.pods("r")[0]["tasks"][0];
        t["state"] == "running" && t["restarts"] == 1
    });
    let after = c.pods("r")[0].clone();
    assert_eq!(
        (after["agent"].clone(), after["incarnation"].clone()),
        (pod["agent"].clone(), Value::from(1))
    );
    let lines = c.volume_file(&after, "pids");
    assert_eq!(lines.lines().count(), 2, "the same volume saw both runs: {lines}");
}

#[test]
fn a_lost_agent_is_replaced_elsewhere_and_its_stale_task_killed_when_it_returns() {
    let c = Cluster::start();
    let spec = c.write_spec("r.yml", PIDS);
    c.deploy(&spec, true).unwrap();
    let pod = c.pods("r")[0].clone();
    let old_agent = pod["agent"].as_str().unwrap().to_string();
    let old_pid = Pid::from_raw(pod["tasks"][0]["pid"].as_u64().unwrap() as i32);
    // Freeze the agent: no heartbeats, but its task keeps running.
    kill(c.agent_pid(&old_agent), Signal::SIGSTOP).unwrap();
    c.wait_for(Duration::from_secs(40), "replacement running on another agent", |c| {
        let p = &c.pods("r")[0];
        p["agent"].as_str().is_some_and(|a| a != old_agent) && p["state"] == "running"
    });
    let new = c.pods("r")[0].clone();
    assert_eq!(new["incarnation"], 2);
    let lines = c.volume_file(&new, "pids");
    assert_eq!(lines.lines().count(), 1, "fresh volume: {lines}");
    assert!(lines.trim().ends_with(&format!("2 1 {old_agent}")), "replacement env: {lines}");
    assert!(kill(old_pid, None).is_ok(), "the old task ran on while its agent was frozen");
    assert_eq!(
        c.volume_file(&new, "hook").trim(),
        format!("bootstrap from peers, replacing {old_agent}"),
        "the on_replace hook ran first"
    );
    let old_volume = c.volume_dir(&pod);
    assert!(old_volume.exists(), "the old volume stays while its agent is away");
    assert_ne!(new["reservation"]["volume_id"], pod["reservation"]["volume_id"], "a new volume id");
    let events = c.api(&["events", "--service", "r"]).unwrap().to_string();
    assert!(events.contains("replacing w-0") && events.contains("fresh volumes"), "{events}");
    // The agent comes back: the stale incarnation is killed, the new one keeps running.
    kill(c.agent_pid(&old_agent), Signal::SIGCONT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && kill(old_pid, None).is_ok() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(kill(old_pid, None).is_err(), "the stale incarnation still runs");
    let p = c.pods("r")[0].clone();
    assert_eq!(
        (p["incarnation"].clone(), p["agent"].clone()),
        (new["incarnation"].clone(), new["agent"].clone())
    );
    let t = p["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "t").unwrap().clone();
    assert!(kill(Pid::from_raw(t["pid"].as_u64().unwrap() as i32), None).is_ok());
    // Its agent back, the old volume is retained, not deleted: listed with its owner and reason.
    let old_id = pod["reservation"]["volume_id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(2));
    assert!(old_volume.join("data/pids").exists(), "tend deleted a replaced instance's volume on its own");
    let vols = c.api(&["volume", "list"]).unwrap();
    let old = vols.as_array().unwrap().iter().find(|v| v["id"] == old_id.as_str()).unwrap().clone();
    assert_eq!(
        (old["state"].as_str(), old["agent"].as_str()),
        (Some("retained"), Some(old_agent.as_str())),
        "{old}"
    );
    assert!(old["reason"].as_str().unwrap().contains("w-0 replaced"), "{old}");
    assert!(old["until_ms"].as_u64().is_some(), "retained for the default week: {old}");
    // The live volume cannot be deleted; the retained one can, on request.
    let live_id = new["reservation"]["volume_id"].as_str().unwrap();
    let err = c.api(&["volume", "delete", live_id]).unwrap_err();
    assert!(err.contains("in use"), "{err}");
    c.api(&["volume", "delete", &old_id]).unwrap();
    c.wait_for(Duration::from_secs(20), "the old volume deleted and confirmed", |c| {
        !old_volume.exists()
            && c.api(&["events", "--service", "r"])
                .is_ok_and(|e| e.to_string().contains(&format!("deleted volume {old_id} of r/w-0")))
    });
    assert!(c.volume_file(&new, "pids").lines().count() == 1, "the live volume is untouched");
}

#[test]
fn operator_pod_restart_keeps_the_volume_and_replace_moves_it() {
    let c = Cluster::start();
    let spec =
        c.write_spec("r.yml", &PIDS.replace("failure_timeout_seconds: 1", "failure_timeout_seconds: never"));
    c.deploy(&spec, true).unwrap();
    let first = c.pods("r")[0].clone();
    c.api(&["pod", "restart", "w-0", "--service", "r"]).unwrap();
    c.wait_for(Duration::from_secs(20), "incarnation 2 running", |c| {
        let p = &c.pods("r")[0];
        p["incarnation"] == 2 && p["state"] == "running"
    });
    let second = c.pods("r")[0].clone();
    assert_eq!(second["agent"], first["agent"], "restart stays in place");
    assert_eq!(c.volume_file(&second, "pids").lines().count(), 2, "same volume");
    c.api(&["pod", "replace", "w-0", "--service", "r"]).unwrap();
    c.wait_for(Duration::from_secs(20), "incarnation 3 running", |c| {
        let p = &c.pods("r")[0];
        p["incarnation"] == 3 && p["state"] == "running"
    });
    let third = c.pods("r")[0].clone();
    assert_ne!(third["agent"], first["agent"], "replace moves it");
    assert_eq!(c.volume_file(&third, "pids").lines().count(), 1, "fresh volume");
    let err = c.api(&["pod", "replace", "w-9", "--service", "r"]).unwrap_err();
    assert!(err.contains("no pod instance `w-9`"), "{err}");
}

#[test]
fn a_sigkilled_agent_readopts_its_running_tasks_and_reports_what_died_meanwhile() {
    let mut c = Cluster::start();
    let spec = c.write_spec(
        "two.yml",
        "version: 1\nname: two\npods:\n  w:\n    count: 2\n    placement: { attributes: [ { name: zone, equals: a } ] }\n    tasks: { t: { cmd: 'exec sleep 600', cpus: 0.1 } }\n",
    );
    c.deploy(&spec, true).unwrap();
    let before = c.pods("two");

    let pid = |p: &Value| p["tasks"][0]["pid"].as_u64().unwrap() as i32;
    // SIGKILL agent a1: its tasks keep running.
    let mut a = c.agents.remove(0);
    kill(Pid::from_raw(a.id() as i32), Signal::SIGKILL).unwrap();
    a.wait().unwrap();
    for p in &before {
        assert!(kill(Pid::from_raw(pid(p)), None).is_ok(), "task died with its agent");
    }
    // One task dies while its agent is down.
    kill(Pid::from_raw(pid(&before[1])), Signal::SIGKILL).unwrap();
    let a = c.spawn_agent(0);
    c.agents.insert(0, a);
    let old = (pid(&before[0]), pid(&before[1]));
    c.wait_for(Duration::from_secs(30), "the restarted agent reporting both running", |c| {
        let p = c.pods("two");
        let running =
            |x: &Value| x["tasks"][0]["state"] == "running" && x["tasks"][0]["pid"].as_u64().is_some();
        p.len() == 2
            && p.iter().all(running)
            && p[0]["tasks"][0]["message"].as_str().is_some_and(|m| m.contains("re-adopted"))
            && p[1]["tasks"][0]["pid"].as_u64() != Some(old.1 as u64)
    });
    let after = c.pods("two");
    assert_eq!(pid(&after[0]), pid(&before[0]), "the live task was re-adopted, not relaunched");
    assert!(after[0]["tasks"][0]["message"].as_str().unwrap_or("").contains("re-adopted"), "{}", after[0]);
    assert_ne!(pid(&after[1]), pid(&before[1]), "the dead one was restarted in place");
    assert!(after.iter().all(|p| p["incarnation"] == 1), "no new incarnation: {after:?}");
    // Exactly one `sleep 600` per instance runs on the machine for this service.
    for p in &after {
        assert!(kill(Pid::from_raw(pid(p)), None).is_ok());
    }
}

#[test]
fn a_control_plane_killed_mid_recovery_resumes_it_without_a_duplicate() {
    let mut c = Cluster::start();
    let spec = c.write_spec("r.yml", PIDS);
    c.deploy(&spec, true).unwrap();
    let pod = c.pods("r")[0].clone();
    let old_agent = pod["agent"].as_str().unwrap().to_string();
    kill(c.agent_pid(&old_agent), Signal::SIGSTOP).unwrap();
    // Kill the control plane while the agent is silent, before it is declared lost.
    std::thread::sleep(Duration::from_millis(1_500));
    c.kill_server();
    c.start_server();
    c.wait_for(Duration::from_secs(40), "the replacement running after the restart", |c| {
        let p = &c.pods("r")[0];
        p["agent"].as_str().is_some_and(|a| a != old_agent) && p["state"] == "running"
    });
    let p = c.pods("r")[0].clone();
    assert_eq!(p["incarnation"], 2, "exactly one replacement: {p}");
    kill(c.agent_pid(&old_agent), Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let p2 = c.pods("r")[0].clone();
    assert_eq!(
        (p2["incarnation"].clone(), p2["agent"].clone()),
        (p["incarnation"].clone(), p["agent"].clone())
    );
    let replaced = c.api(&["events", "--service", "r"]).unwrap().to_string().matches("replacing w-0").count();
    assert_eq!(replaced, 1, "one replacement event");
}

const JOBS: &str = "version: 1
name: m
pods:
  data:
    count: 3
    placement: { unique_per_agent: true }
    tasks:
      t: { cmd: 'exec sleep 600' }
jobs:
  repair:
    pod: data
    cmd: 'echo repairing $TEND_INSTANCE; sleep 0.4'
    interval_seconds: 2
    concurrency: [ { scope: cluster, slots: 1 } ]
  flaky:
    pod: data
    cmd: 'echo disk full >&2; exit 4'
    interval_seconds: 1
    backoff_seconds: 600
    warn_after_seconds: 1
    error_after_seconds: 3600
    concurrency: [ { scope: agent, slots: 1 } ]
";

#[test]
fn maintenance_jobs_respect_leases_windows_backoff_and_alarms() {
    let c = Cluster::start();
    let spec = c.write_spec("m.yml", JOBS);
    c.deploy(&spec, true).unwrap();
    let history = |job: &str| {
        c.api(&["job", "history", job, "--service", "m"]).unwrap().as_array().cloned().unwrap_or_default()
    };
    c.wait_for(Duration::from_secs(40), "6 successful repair runs", |_| {
        history("repair").iter().filter(|r| r["status"] == "succeeded").count() >= 6
    });
    // concurrency cluster/1: runs never overlap (checked from history).
    let mut runs: Vec<(u64, u64)> = history("repair")
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .map(|r| (r["start_ms"].as_u64().unwrap(), r["end_ms"].as_u64().unwrap()))
        .collect();
    runs.sort();
    for w in runs.windows(2) {
        assert!(w[1].0 >= w[0].1, "overlapping runs {w:?}");
    }
    let instances: std::collections::BTreeSet<String> =
        history("repair").iter().map(|r| r["instance"].as_str().unwrap().to_string()).collect();
    assert_eq!(instances.len(), 3, "every instance is repaired");
    // A failing job: one failure per instance, then backoff; the warning alarm is raised.
    c.wait_for(Duration::from_secs(20), "flaky failed everywhere and blocked by backoff", |c| {
        let jobs = c.api(&["job", "status", "flaky", "--service", "m"]).unwrap();
        jobs.as_array().is_some_and(|a| {
            a.len() == 3
                && a.iter().all(|j| {
                    j["status"] == "BLOCKED" && j["reason"].as_str().unwrap_or("").contains("backoff")
                })
        })
    });
    let flaky = history("flaky");
    assert_eq!(flaky.len(), 3, "no retry during the backoff: {flaky:?}");
    assert!(flaky
        .iter()
        .all(|r| r["status"] == "failed" && r["output_tail"].as_str().unwrap().contains("disk full")));
    let (code, alarms) = c.raw("GET", "/v1/jobs/alarms", Some(&c.token()), None);
    assert_eq!(code, 200);
    assert!(
        alarms.as_array().unwrap().iter().any(|a| a["job"] == "flaky" && a["alarm"] == "warning"),
        "{alarms}"
    );
    // A pause-all window blocks new runs and says so.
    let w = c.api(&["job", "window", "add", "--start", "00:00", "--end", "00:00", "--id", "pause"]).unwrap();
    assert_eq!(w["id"], "pause");
    std::thread::sleep(Duration::from_millis(1_500));
    let before = history("repair").len();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(history("repair").len(), before, "a run started inside the window");
    let st = c.api(&["job", "status", "repair", "--service", "m"]).unwrap();
    assert!(st.to_string().contains("run policy window 00:00–00:00 UTC"), "{st}");
    // Bad window input is refused.
    assert!(c
        .api(&["job", "window", "add", "--start", "25:00", "--end", "01:00"])
        .unwrap_err()
        .contains("start"));
    c.api(&["job", "window", "remove", "pause"]).unwrap();
    // On demand: queued, run first, recorded as such.
    c.api(&["job", "run", "flaky", "--pod", "data-1", "--service", "m"]).unwrap();
    c.wait_for(Duration::from_secs(20), "the on-demand run", |_| {
        history("flaky").iter().any(|r| r["on_demand"] == true)
    });
    let err = c.api(&["job", "run", "nope", "--service", "m"]).unwrap_err();
    assert!(err.contains("no job `nope`"), "{err}");
}

#[test]
fn a_control_plane_killed_mid_run_never_runs_a_job_twice_at_once() {
    if !Command::new("sh").args(["-c", "command -v flock"]).status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs flock (util-linux)");
        return;
    }
    let mut c = Cluster::start();
    let log = c.dir.path().join("runs.log");
    let lock = c.dir.path().join("job.lock");
    let spec = c.write_spec(
        "once.yml",
        &format!(
            "version: 1\nname: once\npods:\n  w:\n    tasks: {{ t: {{ cmd: 'exec sleep 600' }} }}\njobs:\n  long:\n    pod: w\n    cmd: \"flock -n {lock} -c 'echo run $TEND_JOB_RUN >> {log}; sleep 4' || echo OVERLAP >> {log}\"\n    interval_seconds: 1\n",
            lock = lock.display(),
            log = log.display()
        ),
    );
    c.deploy(&spec, true).unwrap();
    c.wait_for(Duration::from_secs(20), "a run under way", |_| {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("run "))
    });
    c.kill_server();
    c.start_server();
    // After the restart: the old lease keeps others out until it expires, the agent kills the
    // run the new control plane does not list, then a new run starts and succeeds.
    c.wait_for(Duration::from_secs(40), "a run succeeding after the restart", |c| {
        c.api(&["job", "history", "long", "--service", "once"])
            .is_ok_and(|h| h.as_array().is_some_and(|a| a.iter().any(|r| r["status"] == "succeeded")))
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("OVERLAP"), "two runs at once:\n{text}");
    assert!(text.lines().count() >= 2, "{text}");
}
