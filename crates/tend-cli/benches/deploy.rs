//! End-to-end deploy benchmark with the real binary: 500 long-running tasks with a parallel plan
//! on a control plane and 3 agents (separate processes), beside the spawn rate of /bin/true
//! measured in the same run; once over plain HTTP (`--plain-http`, the cluster token) and once
//! with mutual TLS (agents joined with join tokens), the overhead as a ratio; then a SIGKILL of
//! the (TLS) control plane with the 500 tasks running: time until reconciled and the deploy plan
//! complete again, and the number of relaunches.
//!
//! `cargo bench -p tend-cli --bench deploy` on the embedded store;
//! `TEND_BENCH_STORE=etcd cargo bench -p tend-cli --bench deploy` on a 3-member etcd (the
//! restarted control plane then also waits out its predecessor's leadership lease).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const TASKS: usize = 500;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn spawn_rate(n: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        Command::new("/bin/true").status().expect("/bin/true runs");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Option<Value> {
    http.get(format!("{base}{path}")).bearer_auth(token).send().await.ok()?.json().await.ok()
}

/// A control plane on `port` and its data under `dir/server`, listening (with its token written).
fn start_server(dir: &std::path::Path, port: u16, store: &str, tls: bool) -> Child {
    let mut extra = vec!["--agent-lost-after-seconds", "10", "--store", store];
    if !tls {
        extra.push("--plain-http");
    }
    let child = tend_testkit::spawn_server(env!("CARGO_BIN_EXE_tend"), dir, port, &extra);
    assert!(tend_testkit::wait_server(dir, port, tls), "server did not listen");
    child
}

#[tokio::main]
async fn main() {
    let top = tempfile::tempdir().expect("tempdir");
    let spawn = spawn_rate(1000);
    println!("reference: spawn+wait of /bin/true          {spawn:>8.0} /s");
    let etcd = match std::env::var("TEND_BENCH_STORE").as_deref() {
        Ok("etcd") => Some(tend_testkit::etcd::EtcdCluster::start(top.path(), 3).expect("etcd is installed")),
        _ => None,
    };
    let store =
        |name: &str| etcd.as_ref().map_or("redb".to_string(), |e| format!("etcd://{}/{name}", e.endpoints()));
    println!("store: {}", store("bench"));
    let plain = run(top.path(), &store("bench-plain"), false, spawn).await;
    let tls = run(top.path(), &store("bench-tls"), true, spawn).await;
    println!(
        "mutual TLS vs plain HTTP, same run: deploy time {:.3}x ({tls:.2} s vs {plain:.2} s)",
        tls / plain
    );
}

/// A control plane and 3 agents, over mutual TLS or plain HTTP: deploys 500 tasks; with TLS,
/// then kills and restarts the control plane. Returns the deploy time in seconds.
async fn run(top: &std::path::Path, store: &str, tls: bool, spawn: f64) -> f64 {
    // Under `top`, deleted only when every run is over: ext4 scans past inodes freed within the
    // last 30 s when it allocates new ones, so a run's cleanup would slow the next run's launches.
    let dir = tempfile::tempdir_in(top).expect("tempdir");
    let dir = dir.keep();
    let dir = &dir;
    let port = tend_testkit::etcd::free_port();
    let base = format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" });
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(30));
    procs.children.push(start_server(dir, port, store, tls));
    let token = std::fs::read_to_string(dir.join("server/token")).expect("token").trim().to_string();
    let ca = dir.join("server/ca.pem");
    let http = match tls {
        true => {
            let pem = std::fs::read_to_string(&ca).expect("the cluster CA");
            let cfg = tend_tls::client_config(&pem, None, None).expect("a TLS client");
            reqwest::Client::builder().use_preconfigured_tls(cfg).build().expect("client")
        }
        false => reqwest::Client::builder()
            .use_preconfigured_tls(tend_tls::plain_client_config().expect("config"))
            .build()
            .expect("client"),
    };
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let lo = 40_000 + i as u16 * 1000;
        let mut extra = vec!["--cpus".to_string(), "64".into(), "--memory-mb".into(), "65536".into()];
        if tls {
            // A control plane listens before it leads (it answers `no_leader` meanwhile).
            let mut t = Value::Null;
            for _ in 0..250 {
                let req = http
                    .post(format!("{base}/v1/agent-tokens"))
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "ttl_seconds": 600 }));
                t = req.send().await.expect("join token").json().await.expect("join token");
                if t["error"]["code"] != "no_leader" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let Some(join) = t["token"].as_str() else { panic!("no join token: {t}") };
            extra.extend(["--join-token".to_string(), join.to_string()]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        procs.children.push(tend_testkit::spawn_agent(
            env!("CARGO_BIN_EXE_tend"),
            &base,
            zone,
            (lo, lo + 999),
            &dir.join("server/cluster-token"),
            &dir.join(format!("agent-{zone}")),
            &extra,
        ));
    }
    for _ in 0..500 {
        let up = get(&http, &base, &token, "/v1/agents")
            .await
            .and_then(|v| v.as_array().map(|a| a.len()))
            .unwrap_or(0);
        if up == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let spec = format!(
        "version: 1\nname: bench\npods:\n  sleeper:\n    count: {TASKS}\n    tasks:\n      t: {{ cmd: 'exec sleep 3600', cpus: 0.01, memory_mb: 8 }}\nplans:\n  deploy:\n    phases:\n      all: {{ pod: sleeper, strategy: parallel }}\n"
    );
    let spec_path = dir.join("bench.yml");
    std::fs::write(&spec_path, spec).expect("write spec");
    let t = Instant::now();
    let t_ms = now_ms();
    let mut deploy = tend();
    deploy.args(["service", "deploy", "--no-wait", "--addr", &base, "--token", &token]);
    if tls {
        deploy.arg("--ca-cert").arg(&ca);
    }
    let st = deploy.arg(&spec_path).stdout(Stdio::null()).status().expect("deploy");
    assert!(st.success());
    loop {
        let plan = get(&http, &base, &token, "/v1/services/bench/plans/deploy").await;
        if plan.as_ref().is_some_and(|p| p["status"] == "complete") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "deploy did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let rate = TASKS as f64 / secs;
    let mode = if tls { "mutual TLS" } else { "plain HTTP" };
    println!(
        "deploy {TASKS} tasks (parallel plan, 3 agents, {mode}): {secs:>6.2} s = {rate:>6.0} tasks running/s  ({:.3}x spawn rate)",
        rate / spawn
    );
    // Where the time went: the agents' start times of the tasks, against the submit.
    let pods = get(&http, &base, &token, "/v1/services/bench/pods").await.unwrap_or_default();
    let mut starts: Vec<u64> = pods
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["tasks"][0]["since_ms"].as_u64()).collect())
        .unwrap_or_default();
    starts.sort_unstable();
    if let (Some(first), Some(last)) = (starts.first(), starts.last()) {
        let rel = |ms: u64| ms.saturating_sub(t_ms) as f64 / 1000.0;
        println!(
            "  tasks started {:.2}–{:.2} s after the submit (median {:.2} s); plan complete {:.2} s after the last start",
            rel(*first),
            rel(*last),
            rel(starts[starts.len() / 2]),
            secs - rel(*last)
        );
    }
    if !tls {
        return secs;
    }
    let pods_before = get(&http, &base, &token, "/v1/services/bench/pods").await.expect("pods");
    let pids = |pods: &Value| -> Vec<Value> {
        pods.as_array().map(|a| a.iter().map(|p| p["tasks"][0]["pid"].clone()).collect()).unwrap_or_default()
    };
    // Events are paged (at most 1000 a request): remember the last sequence number seen.
    let mut last_seq = 0u64;
    loop {
        let page = get(&http, &base, &token, &format!("/v1/events?since={last_seq}&limit=1000")).await;
        let Some(seq) =
            page.as_ref().and_then(|v| v.as_array()).and_then(|a| a.last()).and_then(|e| e["seq"].as_u64())
        else {
            break;
        };
        last_seq = seq;
    }
    // SIGKILL the control plane with the tasks running, then start it again.
    let mut server = procs.children.remove(0);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(server.id() as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    server.wait().expect("reap");
    let t = Instant::now();
    procs.children.insert(0, start_server(dir, port, store, tls));
    let listening = t.elapsed().as_secs_f64();
    let (mut reconciled, mut complete) = (None, None);
    while complete.is_none() {
        assert!(t.elapsed() < Duration::from_secs(300), "plan did not complete after restart");
        if let Some(ev) = get(&http, &base, &token, &format!("/v1/events?since={last_seq}")).await {
            for e in ev.as_array().into_iter().flatten() {
                let m = e["message"].as_str().unwrap_or("");
                if m.starts_with("reconciled") && reconciled.is_none() {
                    reconciled = Some(t.elapsed().as_secs_f64());
                }
                if m.contains("plan complete:") && complete.is_none() {
                    complete = Some((t.elapsed().as_secs_f64(), m.to_string()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pods_after = get(&http, &base, &token, "/v1/services/bench/pods").await.expect("pods");
    let incarnations: u64 = pods_after
        .as_array()
        .map(|a| a.iter().map(|p| p["incarnation"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0);
    let relaunches = incarnations - TASKS as u64;
    let same_pids = pids(&pods_before)
        .iter()
        .zip(pids(&pods_after).iter())
        .filter(|(a, b)| a == b && !a.is_null())
        .count();
    let (done_s, msg) = complete.unwrap_or_default();
    println!(
        "control plane SIGKILL with {TASKS} running: listening after {listening:.2} s, reconciled after {:.2} s, deploy plan complete after {done_s:.2} s",
        reconciled.unwrap_or(f64::NAN)
    );
    println!("  {msg}; relaunches: {relaunches}; tasks with unchanged pid: {same_pids}/{TASKS}");
    secs
}
