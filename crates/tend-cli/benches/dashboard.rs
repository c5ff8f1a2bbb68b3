//! The dashboard and `/metrics` at scale, with the real binary: a control plane (mutual TLS) and
//! 10 agents run 10,000 `sleep` tasks — a 1,000-instance service and a 9,000-instance one. Then:
//! the dashboard's service page of the 1,000-instance service in headless Chromium (time from
//! navigation to the instances shown, and to the next re-render after an event), and the time of
//! a `/metrics` scrape (10 in a row; median and max), beside the time of `GET /v1/agents` in the
//! same run as the reference.
//!
//! `cargo bench -p tend-cli --bench dashboard` (needs Debian's chromium and chromium-driver for
//! the browser part; `TEND_BENCH_INSTANCES=2000` for a smaller run).

#[path = "../tests/e2e/common/browser.rs"]
mod browser;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const AGENTS: usize = 10;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

async fn get(http: &reqwest::Client, base: &str, token: &str, path: &str) -> Option<Value> {
    http.get(format!("{base}{path}")).bearer_auth(token).send().await.ok()?.json().await.ok()
}

fn spec(name: &str, count: usize) -> String {
    format!(
        "version: 1\nname: {name}\npods:\n  s:\n    count: {count}\n    tasks:\n      t: {{ cmd: 'exec sleep 3600', cpus: 0.001, memory_mb: 1 }}\nplans:\n  deploy:\n    phases:\n      all: {{ pod: s, strategy: parallel }}\n"
    )
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn timed(http: &reqwest::Client, url: &str, token: &str) -> (f64, usize) {
    let t = Instant::now();
    let r = http.get(url).bearer_auth(token).send().await.expect("answer");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let n = r.bytes().await.expect("body").len();
    (t.elapsed().as_secs_f64() * 1000.0, n)
}

#[tokio::main]
async fn main() {
    let total: usize =
        std::env::var("TEND_BENCH_INSTANCES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let big = 1000.min(total);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = tend_testkit::etcd::free_port();
    let base = format!("https://127.0.0.1:{port}");
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(60));
    procs.children.push(tend_testkit::spawn_server(env!("CARGO_BIN_EXE_tend"), dir.path(), port, &[]));
    assert!(tend_testkit::wait_server(dir.path(), port, true), "server did not listen");
    let token_file = dir.path().join("server/token");
    let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
    let ca = dir.path().join("server/ca.pem");
    let pem = std::fs::read_to_string(&ca).expect("the cluster CA");
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tend_tls::client_config(&pem, None, None).expect("TLS"))
        .build()
        .expect("client");
    for i in 0..AGENTS {
        // The first answers may be 503 while the control plane takes its leadership.
        let mut t = Value::Null;
        for _ in 0..200 {
            let r = http
                .post(format!("{base}/v1/agent-tokens"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "ttl_seconds": 600 }))
                .send()
                .await;
            if let Ok(Ok(v)) = r.map(|r| r.error_for_status()) {
                t = v.json().await.expect("join token");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let lo = 30_000 + i as u16 * 10;
        let extra =
            ["--cpus", "64", "--memory-mb", "65536", "--join-token", t["token"].as_str().expect("token")];
        procs.children.push(tend_testkit::spawn_agent(
            env!("CARGO_BIN_EXE_tend"),
            &base,
            &format!("z{i}"),
            (lo, lo + 9),
            &dir.path().join("server/cluster-token"),
            &dir.path().join(format!("agent-{i}")),
            &extra,
        ));
    }
    let t = Instant::now();
    for (name, count) in [("big", big), ("bulk", total - big)] {
        if count == 0 {
            continue;
        }
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, spec(name, count)).expect("spec");
        let st = tend()
            .args(["service", "deploy", "--no-wait", "--addr", &base, "--token", &token, "--ca-cert"])
            .arg(&ca)
            .arg(&path)
            .stdout(Stdio::null())
            .status()
            .expect("deploy");
        assert!(st.success(), "deploy {name}");
    }
    loop {
        let mut done = true;
        for name in ["big", "bulk"] {
            let plan = get(&http, &base, &token, &format!("/v1/services/{name}/plans/deploy")).await;
            done &= plan.is_some_and(|p| p["status"] == "complete") || (name == "bulk" && total == big);
        }
        if done {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(900), "deploy did not complete");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("{total} instances on {AGENTS} agents deployed in {:.1} s", t.elapsed().as_secs_f64());

    // /metrics at this size, beside a small API call.
    let (mut scrape, mut agents) = (Vec::new(), Vec::new());
    let mut size = 0;
    for _ in 0..10 {
        let (ms, n) = timed(&http, &format!("{base}/metrics"), &token).await;
        scrape.push(ms);
        size = n;
        agents.push(timed(&http, &format!("{base}/v1/agents"), &token).await.0);
    }
    let max = scrape.iter().cloned().fold(0.0, f64::max);
    println!(
        "/metrics scrape at {total} instances: median {:.0} ms, max {max:.0} ms, {} KB  (GET /v1/agents median {:.1} ms)",
        median(&mut scrape),
        size / 1024,
        median(&mut agents)
    );
    let (pods_ms, pods_bytes) = timed(&http, &format!("{base}/v1/services/big/pods"), &token).await;
    println!("GET /v1/services/big/pods ({big} instances): {pods_ms:.0} ms, {} KB", pods_bytes / 1024);

    // The dashboard's service page in headless Chromium.
    let (chromium, driver) = match browser::browser_paths() {
        Ok(p) => p,
        Err(why) => {
            println!("dashboard: SKIPPED ({why})");
            return;
        }
    };
    let (_driver, c) = browser::browser(&chromium, &driver, &dir.path().join("profile")).await;
    c.goto(&format!("{base}/ui/")).await.expect("the sign-in page");
    c.execute(
        &format!("sessionStorage.setItem('tend.token', {}); return true;", serde_json::json!(token)),
        vec![],
    )
    .await
    .expect("token set");
    let mut firsts = Vec::new();
    for _ in 0..5 {
        c.goto(&format!("{base}/ui/#/services/big")).await.expect("navigate");
        c.refresh().await.expect("reload");
        let shown = "performance.getEntriesByName('tend:service-rendered').length > 0 && document.querySelectorAll('#pods tbody tr').length > 0";
        browser::wait_js(&c, shown, Duration::from_secs(60), "the service page").await;
        let v = c
            .execute("return performance.getEntriesByName('tend:service-rendered')[0].startTime", vec![])
            .await
            .expect("mark");
        firsts.push(v.as_f64().expect("a time"));
    }
    let count =
        c.execute("return document.getElementById('count').textContent", vec![]).await.expect("count");
    println!(
        "dashboard service page, {big} instances ({}): first render {:.0} ms after navigation (median of 5, max {:.0} ms)",
        count.as_str().unwrap_or(""),
        median(&mut firsts.clone()),
        firsts.iter().cloned().fold(0.0, f64::max)
    );
    // A live re-render: time from an operator action's event to the page having re-read it all.
    let t = Instant::now();
    c.execute("window.__n = performance.getEntriesByType('resource').filter(e => e.name.includes('/pods')).length; return true;", vec![]).await.expect("count");
    http.post(format!("{base}/v1/services/big/plans/deploy/interrupt"))
        .bearer_auth(&token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("interrupt");
    browser::wait_js(
        &c,
        "document.querySelector('.plan[data-plan=\"deploy\"]').textContent.includes('interrupted')",
        Duration::from_secs(30),
        "the interruption shown",
    )
    .await;
    println!(
        "dashboard: a plan interrupted through the API shown live after {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let _ = c.close().await;
}
