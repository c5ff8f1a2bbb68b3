//! Control-plane failover on etcd with the real binary: a 3-member etcd, three `tend server`
//! members (default 5 s leadership lease), one agent and a 10-instance service. The leader is
//! killed (SIGKILL) five times; each time the bench measures, from the kill:
//! - elected: a follower reports a new leader (lease expiry + the followers' poll);
//! - load: the new leader's own account of starting its control plane (from its log);
//! - reconciled: the new leader reports every instance running (agent re-registered, state
//!   reconciled, plans resumed).
//!
//! The reference taken in the same run is the lease TTL itself: the ratio says how much of the
//! failover is the lease, and how much is tend.
//!
//! `cargo bench -p tend-cli --bench failover` (needs Debian's etcd-server)

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tend_testkit::etcd::{free_port, EtcdCluster};

const TTL_S: u64 = 5;
const ROUNDS: usize = 5;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn member(dir: &std::path::Path, store: &str, i: usize, port: u16) -> Kill {
    let log =
        std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("m{i}.log"))).unwrap();
    Kill(
        tend()
            .args([
                "server",
                "--store",
                store,
                "--id",
                &format!("m{i}"),
                "--listen",
                &format!("127.0.0.1:{port}"),
                // Failover is measured here, not TLS (the deploy bench compares the two).
                "--plain-http",
            ])
            .arg("--data-dir")
            .arg(dir.join(format!("m{i}")))
            .env("TEND_LOG", "tend_server=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tend server"),
    )
}

fn status(port: u16, token: &str) -> Option<Value> {
    let out = tend()
        .args(["status", "--json", "--addr", &format!("http://127.0.0.1:{port}"), "--token", token])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn running(addrs: &str, token: &str) -> usize {
    let out =
        tend().args(["pod", "list", "--service", "fo", "--json", "--addr", addrs, "--token", token]).output();
    let v: Value = out.ok().and_then(|o| serde_json::from_slice(&o.stdout).ok()).unwrap_or(Value::Null);
    v.as_array().map_or(0, |a| a.iter().filter(|p| p["state"] == "running").count())
}

/// The log without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let Some(etcd) = EtcdCluster::start(dir.path(), 3) else {
        eprintln!("SKIPPED: no etcd binary (install Debian's etcd-server)");
        return;
    };
    let store = format!("etcd://{}/failover", etcd.endpoints());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut members: Vec<Option<Kill>> =
        (0..3).map(|i| Some(member(dir.path(), &store, i, ports[i]))).collect();
    let addrs = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let token_file = dir.path().join("m0/token");
    let t = Instant::now();
    while !token_file.exists()
        || status(ports[0], &std::fs::read_to_string(&token_file).unwrap_or_default())
            .is_none_or(|v| !v["leader"].is_string())
    {
        assert!(t.elapsed() < Duration::from_secs(30), "no leader");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    let _agent = Kill(
        tend()
            .args(["agent", "run", "--server", &addrs, "--id", "a1", "--ports", "14000-14099"])
            .arg("--cluster-token-file")
            .arg(dir.path().join("m0/cluster-token"))
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let spec = dir.path().join("fo.yml");
    std::fs::write(&spec, "version: 1\nname: fo\npods:\n  m:\n    count: 10\n    tasks:\n      t: { cmd: 'exec sleep 3000', cpus: 0.01, memory_mb: 8 }\nplans:\n  deploy:\n    phases:\n      all: { pod: m, strategy: parallel }\n").unwrap();
    let ok = tend()
        .args(["service", "deploy", "--addr", &addrs, "--token", &token])
        .arg(&spec)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    println!("failover of a 3-member control plane on a 3-member etcd (lease {TTL_S} s), 10 instances, {ROUNDS} kills:");
    let mut totals = Vec::new();
    for round in 0..ROUNDS {
        let v = status(ports[0], &token)
            .or_else(|| status(ports[1], &token))
            .or_else(|| status(ports[2], &token))
            .unwrap();
        let leader: usize = v["leader"].as_str().unwrap()[1..].parse().unwrap();
        let epoch = v["epoch"].as_u64().unwrap();
        // Kill mid-way between two keep-alives, as an unlucky crash would.
        std::thread::sleep(Duration::from_millis(900));
        let t0 = Instant::now();
        members[leader] = None;
        let (mut elected, mut new) = (None, leader);
        while elected.is_none() {
            for i in (0..3).filter(|i| *i != leader) {
                if let Some(v) = status(ports[i], &token) {
                    if v["epoch"].as_u64().is_some_and(|e| e > epoch) && v["leader"].is_string() {
                        elected = Some(t0.elapsed());
                        new = v["leader"].as_str().unwrap()[1..].parse().unwrap();
                    }
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no new leader");
            std::thread::sleep(Duration::from_millis(20));
        }
        while running(&addrs, &token) < 10 {
            assert!(t0.elapsed() < Duration::from_secs(60), "not reconciled");
            std::thread::sleep(Duration::from_millis(20));
        }
        let reconciled = t0.elapsed();
        let log =
            strip_ansi(&std::fs::read_to_string(dir.path().join(format!("m{new}.log"))).unwrap_or_default());
        let load_ms = log.lines().rev().find(|l| l.contains("leading the control plane")).and_then(|l| {
            l.split("load_ms=")
                .nth(1)
                .and_then(|x| x.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|x| x.parse::<u64>().ok())
        });
        let elected = elected.unwrap();
        println!(
            "  round {}: elected after {:.2} s, control plane loaded in {} ms, reconciled after {:.2} s ({:.2}× the lease)",
            round + 1,
            elected.as_secs_f64(),
            load_ms.map_or("?".into(), |m| m.to_string()),
            reconciled.as_secs_f64(),
            reconciled.as_secs_f64() / TTL_S as f64
        );
        totals.push(reconciled.as_secs_f64());
        members[leader] = Some(member(dir.path(), &store, leader, ports[leader]));
        std::thread::sleep(Duration::from_secs(2));
    }
    totals.sort_by(f64::total_cmp);
    println!(
        "  median kill → reconciled: {:.2} s; worst {:.2} s (lease {TTL_S} s)",
        totals[totals.len() / 2],
        totals[totals.len() - 1]
    );
    drop(members);
}
