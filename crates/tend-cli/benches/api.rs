//! API throughput with TLS on one core: the control plane pinned to CPU 0 (`taskset`), the
//! clients elsewhere; keep-alive requests per second (`GET /v1/services`, bearer token, JSON
//! answer) over HTTPS and over plain HTTP in the same run, and new HTTPS connections per second
//! (a full handshake each) beside plain HTTP's new connections per second, with the ratios.
//!
//! `cargo bench -p tend-cli --bench api`

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 16;
const SECONDS: u64 = 5;

fn start(dir: &std::path::Path, port: u16, tls: bool) -> Child {
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    let mut c = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", env!("CARGO_BIN_EXE_tend")]);
        c
    } else {
        println!("taskset not found: the control plane is not pinned to one core");
        Command::new(env!("CARGO_BIN_EXE_tend"))
    };
    c.args(["server", "--listen", &format!("127.0.0.1:{port}")]).arg("--data-dir").arg(dir);
    if !tls {
        c.arg("--plain-http");
    }
    c.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("tend server starts")
}

fn client(dir: &std::path::Path, tls: bool, keep_alive: bool) -> reqwest::Client {
    let cfg = match tls {
        true => {
            let pem = std::fs::read_to_string(dir.join("ca.pem")).expect("the cluster CA");
            tend_tls::client_config(&pem, None, None).expect("config")
        }
        false => tend_tls::plain_client_config().expect("config"),
    };
    let b = reqwest::Client::builder().use_preconfigured_tls(cfg);
    let b = if keep_alive { b } else { b.pool_max_idle_per_host(0) };
    b.build().expect("client")
}

/// Requests per second over `SECONDS` with `CLIENTS` concurrent clients.
async fn rate(http: reqwest::Client, url: String, token: String) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, token, done) = (http.clone(), url.clone(), token.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let ok =
                    http.get(&url).bearer_auth(&token).send().await.is_ok_and(|r| r.status().is_success());
                assert!(ok, "a request failed");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    done.load(Ordering::Relaxed) as f64 / SECONDS as f64
}

async fn measure(tls: bool, keep_alive: bool) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(10));
    procs.children.push(start(dir.path(), port, tls));
    let token_file = dir.path().join("token");
    for _ in 0..500 {
        if token_file.exists() && tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let token = std::fs::read_to_string(&token_file).expect("token").trim().to_string();
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{port}/v1/services");
    rate(client(dir.path(), tls, keep_alive), url, token).await
}

#[tokio::main]
async fn main() {
    let plain = measure(false, true).await;
    let tls = measure(true, true).await;
    let fresh = measure(true, false).await;
    let plain_fresh = measure(false, false).await;
    println!("GET /v1/services, {CLIENTS} clients, control plane on one core, {SECONDS} s each:");
    println!("  plain HTTP, keep-alive        {plain:>8.0} req/s");
    println!("  HTTPS, keep-alive             {tls:>8.0} req/s  ({:.3}x plain)", tls / plain);
    println!("  plain HTTP, a new connection each {plain_fresh:>8.0} req/s");
    println!(
        "  HTTPS, a new connection each  {fresh:>8.0} req/s  ({:.3}x plain with a new connection each)",
        fresh / plain_fresh
    );
}
