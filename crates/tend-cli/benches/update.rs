//! Rolling update benchmark with the real binary: 100 instances on a control plane and 3 agents
//! (separate processes), updated with `max_parallel: 10` and `min_healthy_seconds: 0`; then a bad
//! revision, rolled back on its own. Prints tend's overhead per wave of the update (beyond the
//! 1 s a task without a readiness check must run to count as deployed), the time from the
//! failing step to the rollback complete, and the spawn rate of /bin/true in the same run.
//!
//! `cargo bench -p tend-cli --bench update`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const INSTANCES: u32 = 100;
const WINDOW: u32 = 10;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

fn spec(version: &str, cmd: &str) -> String {
    format!(
        "version: 1\nname: bench\nupdate: {{ max_parallel: {WINDOW}, min_healthy_seconds: 0, progress_deadline_seconds: 60 }}\nrecovery: {{ backoff: {{ initial_seconds: 1, max_seconds: 1 }} }}\npods:\n  m:\n    count: {INSTANCES}\n    env: {{ VERSION: '{version}' }}\n    tasks:\n      t: {{ cmd: '{cmd}', cpus: 0.01, memory_mb: 8 }}\nplans:\n  deploy:\n    phases:\n      all: {{ pod: m, strategy: parallel }}\n"
    )
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Option<Value> {
    http.get(format!("{base}{path}")).bearer_auth(token).send().await.ok()?.json().await.ok()
}

/// Submits a spec without following it; returns when it was submitted.
fn submit(dir: &std::path::Path, base: &str, token: &str, name: &str, text: &str) -> Instant {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write spec");
    let t = Instant::now();
    let st = tend()
        .args(["service", "deploy", "--no-wait", "--addr", base, "--token", token])
        .arg(&path)
        .stdout(Stdio::null())
        .status()
        .expect("deploy");
    assert!(st.success());
    t
}

/// Waits until the rollout of `generation` is complete.
async fn complete(http: &reqwest::Client, base: &str, token: &str, generation: u64) {
    let t = Instant::now();
    loop {
        let r = get(http, base, token, "/v1/services/bench/rollout").await.unwrap_or(Value::Null);
        if r["generation"].as_u64() == Some(generation) && r["state"] == "complete" {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(600), "generation {generation} did not complete: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first event whose message contains `what`, after sequence `since`: (seq, time_ms).
async fn event(http: &reqwest::Client, base: &str, token: &str, since: u64, what: &str) -> (u64, u64) {
    let t = Instant::now();
    loop {
        if let Some(ev) = get(http, base, token, &format!("/v1/events?since={since}&limit=1000")).await {
            for e in ev.as_array().into_iter().flatten() {
                if e["message"].as_str().is_some_and(|m| m.contains(what)) {
                    return (e["seq"].as_u64().unwrap_or(0), e["time_ms"].as_u64().unwrap_or(0));
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(600), "no event `{what}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t0 = Instant::now();
    for _ in 0..1000 {
        Command::new("/bin/true").status().expect("/bin/true runs");
    }
    let spawn = 1000.0 / t0.elapsed().as_secs_f64();
    println!("reference: spawn+wait of /bin/true            {spawn:>8.0} /s");
    let port = tend_testkit::etcd::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(30));
    // Updates are measured here, not TLS (the deploy bench compares the two).
    let server = tend_testkit::spawn_server(env!("CARGO_BIN_EXE_tend"), dir.path(), port, &["--plain-http"]);
    procs.children.push(server);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tend_tls::plain_client_config().expect("config"))
        .build()
        .expect("client");
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(dir.path().join("server/token")) {
            if get(&http, &base, t.trim(), "/v1/agents").await.is_some() {
                break t.trim().to_string();
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let lo = 44_000 + i as u16 * 1000;
        procs.children.push(tend_testkit::spawn_agent(
            env!("CARGO_BIN_EXE_tend"),
            &base,
            zone,
            (lo, lo + 999),
            &dir.path().join("server/cluster-token"),
            &dir.path().join(format!("agent-{zone}")),
            &["--cpus", "64", "--memory-mb", "65536"],
        ));
    }
    while get(&http, &base, &token, "/v1/agents").await.and_then(|v| v.as_array().map(|a| a.len())) != Some(3)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    submit(dir.path(), &base, &token, "v1.yml", &spec("1", "exec sleep 3600"));
    complete(&http, &base, &token, 1).await;
    // The update: INSTANCES / WINDOW waves, each at least the 1 s a task must run to count.
    let t = submit(dir.path(), &base, &token, "v2.yml", &spec("2", "exec sleep 3600"));
    complete(&http, &base, &token, 2).await;
    let secs = t.elapsed().as_secs_f64();
    let waves = INSTANCES.div_ceil(WINDOW) as f64;
    let overhead = secs / waves - 1.0;
    println!(
        "rolling update of {INSTANCES} (max_parallel {WINDOW}, min_healthy 0): {secs:>6.2} s = {waves} waves of {:.2} s; tend's overhead {:.0} ms per wave beyond the 1 s running rule",
        secs / waves,
        overhead * 1000.0
    );
    // A bad revision: its first wave crash-loops; the update fails and rolls back on its own.
    let (since, _) = event(&http, &base, &token, 0, "generation 2 deployed").await;
    let t = submit(dir.path(), &base, &token, "v3.yml", &spec("3", "exit 3"));
    let (_, failed_ms) = event(&http, &base, &token, since, "update step").await;
    let failed_after = t.elapsed().as_secs_f64();
    complete(&http, &base, &token, 4).await;
    let (_, rolled_ms) = event(&http, &base, &token, since, "rolled back from generation 3").await;
    println!(
        "bad revision: first step failed {failed_after:.2} s after the submit (crash loop: 3 restarts, 1 s backoff); rollback complete {:.2} s after the failure",
        rolled_ms.saturating_sub(failed_ms) as f64 / 1000.0
    );
}
