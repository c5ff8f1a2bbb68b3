//! The highly available control plane, end to end with real processes: a 3-member etcd, three
//! `tend server` members electing a leader on it, and three agents that know every member.
//! The leader is killed again and again during a deploy (never two live processes of one
//! instance, no running task relaunched, the deploy completes); a leader cut off (SIGSTOP)
//! steps down, and its agents follow the new epoch only; a killed etcd member changes nothing.
//! Skipped, saying so, when etcd is not installed (the test command installs it).

use crate::common;

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, tend, ChildGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tend_testkit::etcd::EtcdCluster;

/// Lease TTL of the members under test (the default is 5 s; 2 s keeps the suite short).
const TTL: &str = "2";

struct Ha {
    dir: tempfile::TempDir,
    etcd: EtcdCluster,
    ports: Vec<u16>,
    /// The agents' task ports ([`common::port_block`]).
    block: u16,
    members: Vec<Option<ChildGuard>>,
    agents: Vec<ChildGuard>,
}

impl Ha {
    fn start(agents: usize) -> Option<Ha> {
        let dir = tempfile::tempdir().unwrap();
        let Some(etcd) = EtcdCluster::start(dir.path(), 3) else {
            eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server, or set TEND_ETCD)");
            return None;
        };
        let ports = (0..3).map(|_| free_port()).collect();
        let mut ha =
            Ha { dir, etcd, ports, block: common::port_block(), members: Vec::new(), agents: Vec::new() };
        for i in 0..3 {
            let m = ha.spawn_member(i);
            ha.members.push(Some(m));
        }
        ha.wait(Duration::from_secs(30), "a leader elected", |h| h.leader().is_some());
        for i in 0..agents {
            let a = ha.spawn_agent(i);
            ha.agents.push(a);
        }
        ha.wait(Duration::from_secs(30), "agents up", |h| {
            h.api(&["agent", "list"]).is_ok_and(|v| {
                v.as_array().map_or(0, |a| a.iter().filter(|x| x["state"] == "up").count()) == agents
            })
        });
        Some(ha)
    }

    fn store(&self) -> String {
        format!("etcd://{}/ha-test", self.etcd.endpoints())
    }
    fn url(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.ports[i])
    }
    fn urls(&self) -> String {
        (0..3).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    fn spawn_member(&self, i: usize) -> ChildGuard {
        let data = self.dir.path().join(format!("member-{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("member-{i}.log")))
            .unwrap();
        let child = tend()
            .args(["server", "--store", &self.store(), "--id", &format!("m{i}"), "--leader-ttl-seconds", TTL])
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[i]), "--agent-lost-after-seconds", "5"])
            .arg("--data-dir")
            .arg(&data)
            .env("TEND_LOG", "tend_server=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        ChildGuard(Some(child))
    }

    fn spawn_agent(&self, i: usize) -> ChildGuard {
        let zone = ["a", "b", "c"][i];
        let lo = self.block + i as u16 * 100;
        // A new agent joins with a single-use token; a restarted one has its certificate.
        let data = self.dir.path().join(format!("agent-{zone}"));
        let mut cmd = tend();
        cmd.args(["agent", "run", "--server", &self.urls(), "--id", &format!("{zone}1")]).args([
            "--attr",
            &format!("zone={zone}"),
            "--ports",
            &format!("{lo}-{}", lo + 99),
        ]);
        if !data.join("tls/cert.pem").exists() {
            let t = self.api(&["agent", "token", "create", "--ttl-seconds", "600"]).expect("a join token");
            cmd.args(["--join-token", t["token"].as_str().unwrap()]);
        }
        let child: Child = cmd
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("agent-{zone}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        ChildGuard(Some(child))
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("member-0").join("token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Runs a client command against every member (the CLI picks one that answers).
    fn api(&self, args: &[&str]) -> Result<Value, String> {
        let out = tend()
            .args(args)
            .args(["--json", "--addr", &self.urls(), "--token", &self.token()])
            // Every member's certificate is signed by the one cluster CA, shared through the store.
            .arg("--ca-cert")
            .arg(self.dir.path().join("member-0").join("ca.pem"))
            .output()
            .unwrap();
        if !out.status.success() {
            let (err, text) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            return Err(format!("{err}{text}"));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // `service deploy --json` prints one event per line; other commands one document.
        Ok(serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned())))
    }

    /// `/v1/cluster` as member `i` sees it.
    fn cluster_seen_by(&self, i: usize) -> Option<Value> {
        let out = tend()
            .args(["status", "--json", "--addr", &self.url(i), "--token", &self.token()])
            .arg("--ca-cert")
            .arg(self.dir.path().join("member-0").join("ca.pem"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// (index, epoch) of the leader, as any live member sees it.
    fn leader(&self) -> Option<(usize, u64)> {
        (0..3).filter(|i| self.members[*i].is_some()).find_map(|i| {
            let v = self.cluster_seen_by(i)?;
            let id = v["leader"].as_str()?;
            let idx = id.strip_prefix('m')?.parse::<usize>().ok()?;
            Some((idx, v["epoch"].as_u64()?))
        })
    }

    fn member_pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.members[i].as_ref().and_then(|g| g.0.as_ref()).map_or(0, |c| c.id() as i32))
    }

    fn wait(&self, limit: Duration, what: &str, mut f: impl FnMut(&Ha) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: String = (0..3)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("member-{i}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---\n");
        panic!("timed out after {limit:?} waiting for {what}\n{}", &logs[logs.len().saturating_sub(4000)..]);
    }
}

impl Drop for Ha {
    fn drop(&mut self) {
        // Agents stop their tasks on SIGTERM (a killed agent would leave them running).
        for a in self.agents.iter_mut().filter_map(|g| g.0.take()) {
            let _ = kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM);
            let mut a = a;
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(a.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// Every process whose command line is `sleep <marker><i>7`, by instance index: each test has
/// its own marker, so tests running side by side never count each other's tasks.
fn task_pids(marker: u32, count: usize) -> BTreeMap<usize, Vec<i32>> {
    (0..count).map(|i| (i, tend_testkit::pids_with_cmdline(&["sleep", &format!("{marker}{i}7")]))).collect()
}

/// `count` instances whose task runs `sleep <marker><index>7`; ready a second after it starts.
fn spec(marker: u32, count: usize) -> String {
    format!(
        "version: 1
name: ha
pods:
  m:
    count: {count}
    volumes: [ {{ name: data, path: data, size_mb: 1 }} ]
    tasks:
      server:
        cmd: 'exec sleep {marker}${{TEND_POD_INDEX}}7'
        readiness_check: {{ cmd: 'sleep 1', interval_seconds: 1 }}
"
    )
}

#[test]
fn killing_the_leader_during_a_deploy_never_doubles_an_instance_and_the_deploy_completes() {
    let Some(mut ha) = Ha::start(3) else { return };
    let kills: usize = std::env::var("TEND_HA_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let spec = ha.dir.path().join("ha.yml");
    std::fs::write(&spec, self::spec(71, 6)).unwrap();
    ha.api(&["service", "deploy", spec.to_str().unwrap(), "--no-wait"]).unwrap();
    let mut first: BTreeMap<usize, i32> = BTreeMap::new();
    let sample = |first: &mut BTreeMap<usize, i32>| {
        for (i, pids) in task_pids(71, 6) {
            assert!(pids.len() <= 1, "instance m-{i} has {} live processes: {pids:?}", pids.len());
            if let Some(p) = pids.first() {
                let was = *first.entry(i).or_insert(*p);
                assert_eq!(was, *p, "m-{i} was relaunched: pid {was} then {p}");
            }
        }
    };
    let mut epochs = Vec::new();
    for k in 0..kills {
        // Sample while waiting a varying moment into this leadership.
        let until = Instant::now() + Duration::from_millis(700 + (k as u64 * 389) % 1500);
        while Instant::now() < until {
            sample(&mut first);
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some((leader, epoch)) = ha.leader() else { continue };
        epochs.push(epoch);
        let _ = kill(ha.member_pid(leader), Signal::SIGKILL);
        ha.members[leader] = None;
        // Another takes over; the killed one comes back as a member.
        let t = Instant::now();
        while Instant::now() < t + Duration::from_secs(15) {
            sample(&mut first);
            if ha.leader().is_some_and(|(l, e)| l != leader && e > epoch) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let m = ha.spawn_member(leader);
        ha.members[leader] = Some(m);
    }
    ha.wait(Duration::from_secs(90), "the deploy complete", |h| {
        h.api(&["service", "status", "ha"]).is_ok_and(|v| {
            v["running"] == 6
                && v["plans"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == "deploy" && p["status"] == "complete"))
        })
    });
    sample(&mut first);
    let pods = ha.api(&["pod", "list", "--service", "ha"]).unwrap();
    for p in pods.as_array().unwrap() {
        assert_eq!(p["incarnation"], 1, "no instance was relaunched: {p}");
    }
    assert_eq!(first.len(), 6, "every instance ran: {first:?}");
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "epochs only grow: {epochs:?}");
}

#[test]
fn a_leader_cut_off_steps_down_and_its_agents_follow_the_new_epoch_only() {
    let Some(ha) = Ha::start(2) else { return };
    let spec = ha.dir.path().join("ha.yml");
    std::fs::write(&spec, self::spec(72, 2)).unwrap();
    ha.api(&["service", "deploy", spec.to_str().unwrap()]).unwrap();
    let before = task_pids(72, 2);
    let (old, old_epoch) = ha.leader().unwrap();
    // An event stream the leader serves (a follower's `tend service deploy` holds one)…
    let stream = std::process::Command::new("curl")
        .args(["-sN", "--max-time", "120", "-H", &format!("Authorization: Bearer {}", ha.token())])
        .arg("--cacert")
        .arg(ha.dir.path().join("member-0").join("ca.pem"))
        .arg(format!("{}/v1/events/stream", ha.url(old)))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = ChildGuard(Some(stream));
    std::thread::sleep(Duration::from_millis(500));
    // Cut off: the leader stops answering and renewing (as when its machine stalls).
    kill(ha.member_pid(old), Signal::SIGSTOP).unwrap();
    ha.wait(Duration::from_secs(20), "another leader", |h| {
        (0..3).filter(|i| *i != old).any(|i| {
            h.cluster_seen_by(i).is_some_and(|v| v["leader"] != format!("m{old}") && v["leader"].is_string())
        })
    });
    let new_epoch =
        (0..3).filter(|i| *i != old).find_map(|i| ha.cluster_seen_by(i)?["epoch"].as_u64()).unwrap();
    assert!(new_epoch > old_epoch);
    // Agents reach the new leader (through any member) and obey its epoch.
    ha.wait(Duration::from_secs(60), "agents following the new epoch", |h| {
        ["a", "b"].iter().all(|z| {
            let f = h.dir.path().join(format!("agent-{z}/cluster.json"));
            std::fs::read_to_string(f)
                .ok()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok())
                .is_some_and(|v| v["epoch"] == new_epoch)
        })
    });
    // The old leader comes back: it finds its lease gone and steps down; it commands nobody.
    kill(ha.member_pid(old), Signal::SIGCONT).unwrap();
    ha.wait(Duration::from_secs(10), "the old leader a follower", |h| {
        h.cluster_seen_by(old).is_some_and(|v| v["role"] == "follower")
    });
    // …ends when it steps down, not kept open by a control plane that no longer runs.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ended = loop {
        match stream.0.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(_))) => break true,
            _ if std::time::Instant::now() > deadline => break false,
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(ended, "the old leader's event stream still open after it stepped down");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(task_pids(72, 2), before, "the tasks ran on, untouched");
    let log = std::fs::read_to_string(ha.dir.path().join(format!("member-{old}.log"))).unwrap_or_default();
    assert!(log.contains("stepped down"), "the old leader says it stepped down:\n{log}");
}

#[test]
fn tend_keeps_working_when_an_etcd_member_is_killed() {
    let Some(mut ha) = Ha::start(1) else { return };
    let spec = ha.dir.path().join("ha.yml");
    std::fs::write(&spec, self::spec(73, 1)).unwrap();
    ha.api(&["service", "deploy", spec.to_str().unwrap()]).unwrap();
    ha.etcd.kill(0);
    std::fs::write(&spec, self::spec(73, 2)).unwrap();
    ha.api(&["service", "deploy", spec.to_str().unwrap()]).unwrap();
    let st = ha.api(&["status"]).unwrap();
    assert!(st["leader"].is_string(), "{st}");
    assert_eq!(ha.api(&["pod", "list", "--service", "ha"]).unwrap().as_array().map(Vec::len), Some(2));
}

#[test]
fn an_uploaded_artifact_is_copied_to_every_member_and_pulled_by_a_new_leader() {
    let Some(mut ha) = Ha::start(2) else { return };
    std::fs::write(ha.dir.path().join("run.sh"), "exec sleep 7477\n").unwrap();
    let spec = |count: usize| {
        format!(
            "version: 1\nname: art\npods:\n  m:\n    count: {count}\n    placement: {{ unique_per_agent: true }}\n    artifacts: [ {{ uri: ./run.sh }} ]\n    tasks:\n      t: {{ cmd: 'sh run.sh' }}\n"
        )
    };
    let file = ha.dir.path().join("art.yml");
    std::fs::write(&file, spec(1)).unwrap();
    ha.api(&["service", "deploy", file.to_str().unwrap()]).unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"exec sleep 7477\n"))
    };
    let copy = |i: usize| ha.dir.path().join(format!("member-{i}/artifacts/{sha}"));
    ha.wait(Duration::from_secs(10), "the upload copied to every member", |_| {
        (0..3).all(|i| copy(i).is_file())
    });
    // The leader goes; the new one has lost its copy (and so has the third member): it pulls
    // the artifact from the old leader, back as a follower, when the second instance needs it.
    let (old, epoch) = ha.leader().unwrap();
    let _ = kill(ha.member_pid(old), Signal::SIGKILL);
    ha.members[old] = None;
    ha.wait(Duration::from_secs(20), "a new leader", |h| {
        h.leader().is_some_and(|(l, e)| l != old && e > epoch)
    });
    let m = ha.spawn_member(old);
    ha.members[old] = Some(m);
    for i in (0..3).filter(|i| *i != old) {
        std::fs::remove_file(copy(i)).unwrap();
    }
    std::fs::write(&file, spec(2)).unwrap();
    ha.api(&["service", "deploy", file.to_str().unwrap()]).unwrap();
    assert_eq!(
        tend_testkit::pids_with_cmdline(&["sleep", "7477"]).len(),
        2,
        "both instances run the artifact"
    );
    let (now, _) = ha.leader().unwrap();
    assert!(copy(now).is_file(), "the new leader pulled the artifact and kept it");
}
