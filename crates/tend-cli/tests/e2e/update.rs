//! Updates as their own plan, end to end with the real binary: a rolling update never takes
//! more than `max_parallel` instances down, the CLI follows exactly the generation it submitted,
//! a bad revision rolls back on its own (and the CLI says so, exit 1), a canary pauses the plan
//! until `tend plan continue`, an instance not yet updated keeps running its old config even
//! when it restarts, and volumes are added and grown in place (removing one needs
//! `--allow-data-loss`, and deletes nothing).

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

/// Three members; `VERSION` is what an update changes. A member is ready once it has written
/// its own version into its volume (half a second after it starts).
fn spec(version: &str, extra: &str) -> String {
    format!(
        "version: 1
name: kv
update: {{ max_parallel: 1, min_healthy_seconds: 1{extra} }}
pods:
  m:
    count: 3
    env: {{ VERSION: '{version}' }}
    volumes: [ {{ name: data, path: data, size_mb: 1 }} ]
    tasks:
      server:
        cmd: 'sleep 0.5; echo $VERSION > data/version; exec sleep 600'
        readiness_check: {{ cmd: 'grep -qx \"$VERSION\" data/version', interval_seconds: 1 }}
"
    )
}

fn rollout(c: &Cluster) -> Value {
    c.raw("GET", "/v1/services/kv/rollout", Some(&c.token()), None).1
}

/// (instance → (incarnation, state, running VERSION from its volume)).
fn members(c: &Cluster) -> Vec<(String, u64, String, String)> {
    c.pods("kv")
        .iter()
        .map(|p| {
            let v = c.volume_file(p, "version").trim().to_string();
            (
                p["instance"].as_str().unwrap_or("").to_string(),
                p["incarnation"].as_u64().unwrap_or(0),
                p["state"].as_str().unwrap_or("").to_string(),
                v,
            )
        })
        .collect()
}

#[test]
fn a_rolling_update_takes_one_member_down_at_a_time_and_the_cli_follows_its_generation() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    assert!(members(&c).iter().all(|m| m.1 == 1 && m.2 == "running" && m.3 == "1"), "{:?}", members(&c));
    let volumes =
        |c: &Cluster| c.pods("kv").iter().map(|p| p["reservation"]["volume_id"].clone()).collect::<Vec<_>>();
    let before = volumes(&c);
    // A sampler counts members not running and ready, every 50 ms, through the API.
    let stop = Arc::new(AtomicBool::new(false));
    let (url, token, ca) = (c.url(), c.token(), c.ca());
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = 0;
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) && samples < 2_000 {
                let out = std::process::Command::new("curl")
                    .arg("--cacert")
                    .arg(&ca)
                    .args([
                        "-s",
                        "-H",
                        &format!("Authorization: Bearer {token}"),
                        &format!("{url}/v1/services/kv/pods"),
                    ])
                    .output()
                    .expect("curl is installed");
                if let Ok(Value::Array(pods)) = serde_json::from_slice::<Value>(&out.stdout) {
                    let down = pods.iter().filter(|p| p["state"] != "running").count();
                    worst = worst.max(down);
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (worst, samples)
        })
    };
    // The CLI returns only once generation 2 itself is deployed (never on generation 1's plan).
    let out = c.deploy(&c.write_spec("v2.yml", &spec("2", "")), true).unwrap();
    let now = members(&c);
    stop.store(true, Ordering::SeqCst);
    let (worst, samples) = sampler.join().unwrap();
    assert!(
        now.iter().all(|m| m.1 == 2 && m.2 == "running" && m.3 == "2"),
        "right after the CLI returned: {now:?}\n{out}"
    );
    assert!(samples > 20, "only {samples} samples");
    assert_eq!(worst, 1, "at most max_parallel (1) member down at once, and the update did take one down");
    let r = rollout(&c);
    assert_eq!(
        (r["generation"].as_u64(), r["plan"].as_str(), r["state"].as_str()),
        (Some(2), Some("update"), Some("complete")),
        "{r}"
    );
    // Each member kept its volume.
    assert_eq!(volumes(&c), before);
}

#[test]
fn a_bad_revision_rolls_back_on_its_own_and_the_cli_exits_1() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    let bad = spec("2", "").replace("exec sleep 600", "exit 3");
    let e = c.deploy(&c.write_spec("bad.yml", &bad), true).expect_err("a failed update exits 1");
    assert!(e.contains("rolled back to generation 1"), "{e}");
    let r = rollout(&c);
    assert_eq!(
        (r["generation"].as_u64(), r["plan"].as_str(), r["state"].as_str(), r["rollback_from"].as_u64()),
        (Some(3), Some("rollback"), Some("complete"), Some(2)),
        "{r}"
    );
    // m-0 was updated (and crash-looped), so it was rolled back; m-1 and m-2 were never touched.
    let now = members(&c);
    assert!(now.iter().all(|m| m.2 == "running" && m.3 == "1"), "{now:?}");
    assert_eq!(now.iter().map(|m| m.1).collect::<Vec<_>>(), vec![3, 1, 1], "{now:?}");
    let events = c.api(&["events", "--service", "kv"]).unwrap().to_string();
    assert!(events.contains("rolling back to generation 1"), "{events}");
}

#[test]
fn a_canary_pauses_the_update_until_continue() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", ", canary: 1")), true).unwrap();
    c.deploy(&c.write_spec("v2.yml", &spec("2", ", canary: 1")), false).unwrap();
    c.wait_for(Duration::from_secs(30), "the canary updated", |c| {
        let m = members(c);
        m.len() == 3 && m[0].1 == 2 && m[0].2 == "running"
    });
    // Paused: the others stay on the old version, and the rollout is still in progress.
    std::thread::sleep(Duration::from_secs(3));
    let m = members(&c);
    assert_eq!(m.iter().map(|m| m.1).collect::<Vec<_>>(), vec![2, 1, 1], "{m:?}");
    assert_eq!(rollout(&c)["state"], "in_progress");
    c.api(&["plan", "continue", "update", "--service", "kv"]).unwrap();
    c.wait_for(Duration::from_secs(40), "the update complete after continue", |c| {
        rollout(c)["state"] == "complete"
    });
    assert!(members(&c).iter().all(|m| m.1 == 2 && m.3 == "2"), "{:?}", members(&c));
}

#[test]
fn an_instance_not_yet_updated_restarts_on_its_own_config() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    // An update whose first member never becomes ready holds the plan at m-0 (no rollback here).
    let stuck = spec("2", ", auto_rollback: false").replace("grep -qx \"$VERSION\" data/version", "false");
    c.deploy(&c.write_spec("v2.yml", &stuck), false).unwrap();
    c.wait_for(Duration::from_secs(30), "m-0 on the new config", |c| {
        members(c).first().is_some_and(|m| m.1 == 2)
    });
    // An operator restarts m-2, which the update has not reached: it must come back on version 1.
    c.api(&["pod", "restart", "m-2", "--service", "kv"]).unwrap();
    c.wait_for(Duration::from_secs(30), "m-2 restarted", |c| {
        members(c).get(2).is_some_and(|m| m.1 == 2 && m.2 == "running")
    });
    assert_eq!(members(&c)[2].3, "1", "m-2 runs the config its record names, not the update's");
}

#[test]
fn the_health_gate_holds_an_update_until_the_cluster_is_healthy() {
    let c = Cluster::start();
    let closed = c.data().join("gate-closed");
    let gate =
        format!(", health_gate: {{ pod: m, cmd: 'test ! -e {}', timeout_seconds: 5 }}", closed.display());
    c.deploy(&c.write_spec("v1.yml", &spec("1", &gate)), true).unwrap();
    std::fs::write(&closed, "").unwrap();
    c.deploy(&c.write_spec("v2.yml", &spec("2", &gate)), false).unwrap();
    // While the gate fails, no member is touched.
    std::thread::sleep(Duration::from_secs(5));
    assert!(members(&c).iter().all(|m| m.1 == 1), "{:?}", members(&c));
    assert_eq!(rollout(&c)["state"], "in_progress");
    std::fs::remove_file(&closed).unwrap();
    c.wait_for(Duration::from_secs(60), "the update complete once the gate passes", |c| {
        rollout(c)["state"] == "complete"
    });
    assert!(members(&c).iter().all(|m| m.1 == 2 && m.3 == "2"), "{:?}", members(&c));
}

/// `tend service plan FILE`: (code, text) without --json.
fn dry_run(c: &Cluster, file: &std::path::Path) -> (i32, String) {
    let out = common::tend()
        .args(["service", "plan", file.to_str().unwrap(), "--addr", &c.url(), "--token", &c.token()])
        .arg("--ca-cert")
        .arg(c.ca())
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Compares with `tests/snapshots/<name>`; UPDATE_SNAPSHOTS=1 rewrites it.
fn snapshot(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots").join(name);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("missing snapshot {}", path.display()));
    assert_eq!(expected, actual, "{} differs", path.display());
}

#[test]
fn the_dry_run_shows_each_kind_of_change_and_changes_nothing() {
    let c = Cluster::start();
    let v1 = c.write_spec("v1.yml", &spec("1", ""));
    let (code, text) = dry_run(&c, &v1);
    assert_eq!(code, 2, "{text}");
    snapshot("plan_new_service.txt", &text);
    c.deploy(&v1, true).unwrap();
    let cases = [
        ("plan_unchanged.txt", spec("1", ""), 0),
        ("plan_restart_and_new.txt", spec("2", "").replace("count: 3", "count: 4"), 2),
        ("plan_volume_grow_and_add.txt", spec("1", "").replace(DATA_VOLUME, GROWN_WITH_WAL), 2),
        ("plan_volume_removed_refused.txt", spec("1", "").replace(DATA_VOLUME, ""), 1),
        ("plan_scale_down.txt", spec("1", "").replace("count: 3", "count: 2"), 2),
    ];
    for (name, text, want) in cases {
        let (code, out) = dry_run(&c, &c.write_spec(name, &text));
        assert_eq!(code, want, "{name}: {out}");
        snapshot(name, &out);
    }
    // Nothing changed: still generation 1, every member on incarnation 1.
    assert_eq!(rollout(&c)["generation"], 1);
    assert!(members(&c).iter().all(|m| m.1 == 1), "{:?}", members(&c));
}

const DATA_VOLUME: &str = "    volumes: [ { name: data, path: data, size_mb: 1 } ]\n";
const GROWN_WITH_WAL: &str =
    "    volumes: [ { name: data, path: data, size_mb: 1000 }, { name: wal, path: wal, size_mb: 1 } ]\n";

/// `tend service deploy` with extra arguments: (exit code, stdout and stderr).
fn deploy_with(c: &Cluster, file: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let out = common::tend()
        .args(["service", "deploy", file.to_str().unwrap(), "--addr", &c.url(), "--token", &c.token()])
        .arg("--ca-cert")
        .arg(c.ca())
        .args(extra)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn volumes_are_added_and_grown_in_place_and_removing_one_needs_allow_data_loss() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    let before = c.pods("kv");
    for p in &before {
        std::fs::write(c.volume_dir(p).join("data/keep"), "precious").unwrap();
    }
    // v2 grows `data` and adds `wal`: a rolling restart in place on the same volume sets.
    let v2 = spec("2", "")
        .replace(DATA_VOLUME, GROWN_WITH_WAL)
        .replace("sleep 0.5;", "sleep 0.5; echo w > wal/mark;");
    c.deploy(&c.write_spec("v2.yml", &v2), true).unwrap();
    let after = c.pods("kv");
    for (old, new) in before.iter().zip(&after) {
        let same = |k: &str| old["reservation"][k] == new["reservation"][k];
        assert!(same("volume_id") && same("agent"), "kept its volume set and agent: {old} → {new}");
        assert_eq!(new["incarnation"], 2, "{new}");
        assert_eq!(new["reservation"]["disk_mb"], 1001, "{new}");
        let dir = c.volume_dir(new);
        assert_eq!(std::fs::read_to_string(dir.join("data/keep")).unwrap(), "precious", "data kept");
        assert_eq!(
            std::fs::read_to_string(dir.join("wal/mark")).unwrap().trim(),
            "w",
            "the new volume is used"
        );
    }
    let vols = c.api(&["volume", "list"]).unwrap().to_string();
    assert!(
        vols.contains("\"wal\"") && vols.contains("\"size_mb\":1001"),
        "the volume sets list the change: {vols}"
    );
    // A size no agent has: the first member waits, saying why; nothing is relaunched.
    let huge = v2.replace("size_mb: 1000", "size_mb: 300000").replace("VERSION: '2'", "VERSION: '3'");
    c.deploy(&c.write_spec("v3.yml", &huge), false).unwrap();
    c.wait_for(Duration::from_secs(20), "the update waiting for disk, with the reason", |c| {
        c.pods("kv").iter().any(|p| p["pending_reason"].as_str().is_some_and(|r| r.contains("MB more disk")))
    });
    assert!(members(&c).iter().all(|m| m.1 == 2), "{:?}", members(&c));
    // Removing `wal` (and shrinking `data` back) is refused without --allow-data-loss…
    let v4 = c.write_spec("v4.yml", &spec("4", "").replace("size_mb: 1", "size_mb: 1000"));
    let (code, text) = deploy_with(&c, &v4, &[]);
    assert_ne!(code, 0, "{text}");
    assert!(text.contains("removes volume `wal`") && text.contains("--allow-data-loss"), "{text}");
    assert_eq!(rollout(&c)["generation"], 3, "a refused spec changes nothing");
    // …and with it the update runs; the removed volume's data stays in the volume set.
    let (code, text) = deploy_with(&c, &v4, &["--allow-data-loss"]);
    assert_eq!(code, 0, "{text}");
    for p in c.pods("kv") {
        assert_eq!(p["reservation"]["volumes"], serde_json::json!(["data"]), "{p}");
        let dir = c.volume_dir(&p);
        assert_eq!(
            std::fs::read_to_string(dir.join("wal/mark")).unwrap().trim(),
            "w",
            "nothing deleted: {p}"
        );
        assert_eq!(std::fs::read_to_string(dir.join("data/keep")).unwrap(), "precious");
    }
}

#[test]
fn the_cli_follows_its_generation_across_a_control_plane_restart() {
    let mut c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    // Each member must stay up 3 s: the update takes about 10 s.
    let v2 =
        c.write_spec("v2.yml", &spec("2", "").replace("min_healthy_seconds: 1", "min_healthy_seconds: 3"));
    let follower = common::tend()
        .args(["service", "deploy", v2.to_str().unwrap(), "--addr", &c.url(), "--token", &c.token()])
        .arg("--ca-cert")
        .arg(c.ca())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let guard = common::ChildGuard(Some(follower));
    std::thread::sleep(Duration::from_secs(2));
    c.kill_server();
    std::thread::sleep(Duration::from_secs(1));
    c.start_server();
    let out = guard.wait_with_output(Duration::from_secs(60));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The status says how it ended (a code, or the signal that ended it): a run in CI once
    // ended with neither output nor message.
    assert!(out.status.success(), "{}: {text}", out.status);
    assert!(text.contains("cannot reach the control plane") && text.contains("control plane back"), "{text}");
    assert!(text.contains("generation 2 of `kv` deployed"), "{text}");
    assert!(members(&c).iter().all(|m| m.1 == 2 && m.3 == "2"), "{:?}", members(&c));
}

#[test]
fn scaling_up_then_down_decommissions_highest_first_and_retains_the_volumes() {
    let c = Cluster::start();
    let log = c.data().join("decommissioned");
    let with_hook = |count: u32| {
        spec("1", "").replace("count: 3", &format!("count: {count}")).replace(
            "    volumes:",
            &format!("    on_decommission: 'echo $TEND_INSTANCE >> {}'\n    volumes:", log.display()),
        )
    };
    c.deploy(&c.write_spec("v3.yml", &with_hook(3)), true).unwrap();
    c.deploy(&c.write_spec("v5.yml", &with_hook(5)), true).unwrap();
    assert_eq!(members(&c).len(), 5);
    let volume_of = |c: &Cluster, i: &str| {
        c.pods("kv").iter().find(|p| p["instance"] == i).map(|p| p["reservation"]["volume_id"].clone())
    };
    let gone: Vec<Value> = ["m-4", "m-3", "m-2"].iter().filter_map(|i| volume_of(&c, i)).collect();
    c.deploy(&c.write_spec("v2.yml", &with_hook(2)), true).unwrap();
    // The hook ran in each decommissioned instance, highest index first; two members are left.
    assert_eq!(std::fs::read_to_string(&log).unwrap_or_default(), "m-4\nm-3\nm-2\n");
    let left = members(&c);
    assert_eq!(left.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(), vec!["m-0", "m-1"], "{left:?}");
    // Their volumes are retained, not deleted.
    let vols = c.api(&["volume", "list"]).unwrap();
    for id in &gone {
        let v = vols.as_array().unwrap().iter().find(|v| &v["id"] == id).unwrap_or(&Value::Null).clone();
        assert_eq!(v["state"], "retained", "{id}: {vols}");
    }
    let events = c.api(&["events", "--service", "kv"]).unwrap().to_string();
    assert!(events.contains("decommissioned m-4"), "{events}");
}

#[test]
fn an_update_that_needs_more_memory_is_reserved_in_place_or_waits_with_the_reason() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    let memory =
        |c: &Cluster| c.pods("kv").iter().map(|p| p["reservation"]["memory_mb"].clone()).collect::<Vec<_>>();
    assert_eq!(memory(&c), vec![Value::from(128); 3]);
    // 512 MB fits on every agent (2,048 MB each): each member's reservation follows its config.
    let more = |mb: u32| {
        spec("2", "").replace("        cmd: 'sleep", &format!("        memory_mb: {mb}\n        cmd: 'sleep"))
    };
    c.deploy(&c.write_spec("v2.yml", &more(512)), true).unwrap();
    assert_eq!(memory(&c), vec![Value::from(512); 3]);
    // 4,096 MB does not: the first member waits on its agent, saying why; nothing was relaunched.
    c.deploy(&c.write_spec("v3.yml", &more(4096).replace("VERSION: '2'", "VERSION: '3'")), false).unwrap();
    c.wait_for(Duration::from_secs(20), "the update waiting with the reason", |c| {
        c.pods("kv")[0]["pending_reason"].as_str().is_some_and(|r| r.contains("MB more memory"))
    });
    assert_eq!(members(&c).iter().map(|m| m.1).collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(memory(&c), vec![Value::from(512); 3]);
}

#[test]
fn a_port_added_by_an_update_is_reserved_in_place() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    let with_port = spec("2", "").replace(
        "cmd: 'sleep 0.5; echo",
        "ports: { admin: 0 }\n        cmd: 'sleep 0.5; echo $PORT_ADMIN > data/admin; echo",
    );
    c.deploy(&c.write_spec("v2.yml", &with_port), true).unwrap();
    for p in c.pods("kv") {
        let port = p["ports"]["admin"].as_u64().unwrap_or(0);
        assert!(port > 0, "no admin port: {p}");
        assert_eq!(c.volume_file(&p, "admin").trim(), port.to_string(), "the task saw its new port: {p}");
    }
}

/// The new routes refuse bad input with a JSON error and change nothing.
#[test]
fn the_rollout_and_plan_routes_refuse_bad_input_and_change_nothing() {
    let c = Cluster::start();
    c.deploy(&c.write_spec("v1.yml", &spec("1", "")), true).unwrap();
    let token = c.token();
    let good = serde_json::json!({ "spec": spec("2", "") }).to_string();
    let renamed = serde_json::json!({ "spec": spec("2", "").replace("name: kv", "name: other") }).to_string();
    let broken = serde_json::json!({ "spec": spec("2", "").replace("max_parallel: 1", "max_parallel: 0") })
        .to_string();
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("GET", "/v1/services/nope/rollout", None, 404, "not_found"),
        ("POST", "/v1/services/kv/plan", Some("{not json"), 400, ""),
        ("POST", "/v1/services/kv/plan", Some(renamed.as_str()), 400, "bad_request"),
        ("POST", "/v1/services/kv/plan", Some(broken.as_str()), 422, "invalid_spec"),
    ];
    for (method, path, body, want, code) in cases {
        let (status, v) = c.raw(method, path, Some(&token), body);
        assert_eq!(status, want, "{method} {path} {body:?}: {v}");
        assert!(v["error"]["code"].as_str().is_some_and(|c| code.is_empty() || c == code), "{v}");
    }
    let (status, _) = c.raw("POST", "/v1/services/kv/plan", None, Some(good.as_str()));
    assert_eq!(status, 401, "no token, no answer");
    // Nothing changed: still generation 1, deployed, every member on its first incarnation.
    let r = rollout(&c);
    assert_eq!((r["generation"].as_u64(), r["state"].as_str()), (Some(1), Some("complete")), "{r}");
    assert!(members(&c).iter().all(|m| m.1 == 1), "{:?}", members(&c));
}
