//! Event latency, end to end with the real binary: 40 restarts in place (a task SIGKILLed, its
//! agent restarts it and reports), each followed by an SSE client on `/v1/events/stream`. Two
//! figures per restart: from the control plane recording the agent's report (the event's
//! `time_ms`) to the client reading it, and from the kill to the client reading it (the
//! agent's detection and report included). Median and p99.
//!
//! `cargo bench -p tend-cli --bench events`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

const INSTANCES: usize = 10;
const KILLS: usize = 40;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = tend_testkit::etcd::free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(20));
    procs.children.push(tend_testkit::spawn_server(env!("CARGO_BIN_EXE_tend"), dir.path(), port, &[]));
    assert!(tend_testkit::wait_server(dir.path(), port, true), "server did not listen");
    let (token_file, ca) = (dir.path().join("server/token"), dir.path().join("server/ca.pem"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
    let pem = std::fs::read_to_string(&ca).expect("ca");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tend_tls::client_config(&pem, None, None).expect("tls"))
        .build()
        .expect("client");
    let cli = |args: &[&str]| {
        let out = tend()
            .args(args)
            .args(["--json", "--addr", &base, "--token", &token])
            .arg("--ca-cert")
            .arg(&ca)
            .output()
            .expect("tend");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let jt = cli(&["agent", "token", "create", "--ttl-seconds", "600"])["token"]
        .as_str()
        .expect("token")
        .to_string();
    procs.children.push(
        tend()
            .args([
                "agent",
                "run",
                "--server",
                &base,
                "--id",
                "a1",
                "--join-token",
                &jt,
                "--ports",
                "46000-46999",
            ])
            .arg("--data-dir")
            .arg(dir.path().join("agent"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    );
    let spec = dir.path().join("s.yml");
    std::fs::write(
        &spec,
        format!("version: 1\nname: s\npods:\n  w:\n    count: {INSTANCES}\n    tasks: {{ t: {{ cmd: 'exec sleep 3600', cpus: 0.01, memory_mb: 8 }} }}\nrecovery: {{ backoff: {{ initial_seconds: 1, max_seconds: 1 }} }}\n"),
    )
    .expect("spec");
    for _ in 0..100 {
        if cli(&["agent", "list"]).as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cli(&["service", "deploy", spec.to_str().expect("path")]);
    let resp = http
        .get(format!("{base}/v1/events/stream?service=s&since=1000000000"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("stream");
    let mut events = resp.bytes_stream().eventsource();
    let (mut report_to_client, mut kill_to_client) = (Vec::new(), Vec::new());
    for i in 0..KILLS {
        let pods = cli(&["pod", "list", "--service", "s"]);
        let pid = pods[i % INSTANCES]["tasks"][0]["pid"].as_u64().expect("a pid") as i32;
        let killed = now_ms();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ev = tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), events.next())
                .await
                .expect("a restart event within 20 s")
                .expect("the stream stays open")
                .expect("an event");
            let got = now_ms();
            let e: Value = serde_json::from_str(&ev.data).expect("json");
            if e["kind"] == "restart" {
                report_to_client.push(got.saturating_sub(e["time_ms"].as_u64().unwrap_or(got)) as f64);
                kill_to_client.push(got.saturating_sub(killed) as f64);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{KILLS} restarts in place followed over SSE (TLS), {INSTANCES} instances on one agent:");
    println!(
        "  event recorded -> SSE client: median {:.1} ms, p99 {:.1} ms",
        pct(&mut report_to_client, 0.5),
        pct(&mut report_to_client, 0.99)
    );
    println!(
        "  SIGKILL -> SSE client:        median {:.1} ms, p99 {:.1} ms (agent detection and report included)",
        pct(&mut kill_to_client, 0.5),
        pct(&mut kill_to_client, 0.99)
    );
}
