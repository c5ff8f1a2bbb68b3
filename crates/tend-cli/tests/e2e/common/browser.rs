//! Headless Chromium through chromedriver (Debian's chromium and chromium-driver), for the
//! dashboard's browser test and bench: a session that accepts the cluster CA's certificate, and
//! waits on JavaScript expressions bounded in time. Used by `tests/dashboard.rs` (through
//! `common`) and `benches/dashboard.rs` (by path).
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A child started in its own process group, killed with the whole group when dropped
/// (chromedriver and every Chromium process it started, also when a test fails midway).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// The browser and its driver, or why this machine cannot run the test.
pub fn browser_paths() -> Result<(PathBuf, PathBuf), String> {
    let chromium =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().map(PathBuf::from).find(|p| p.exists());
    let driver = PathBuf::from("/usr/bin/chromedriver");
    match chromium {
        Some(c) if driver.exists() => Ok((c, driver)),
        _ => {
            Err("Debian packages chromium and chromium-driver are not installed (scripts/test installs them)"
                .into())
        }
    }
}

/// Starts chromedriver and a headless Chromium session that trusts nothing but loopback.
pub async fn browser(chromium: &Path, driver: &Path, profile: &Path) -> (Killed, Client) {
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let killed = Killed(child);
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", "--window-size=1400,1000",
                     format!("--user-data-dir={}", profile.display())],
        }
    });
    let caps = caps.as_object().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conn = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(conn)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => return (killed, c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no WebDriver session: {e}"),
        }
    }
}

/// Polls a JavaScript expression until it is truthy; returns its value.
pub async fn wait_js(c: &Client, expr: &str, limit: Duration, what: &str) -> Value {
    let deadline = Instant::now() + limit;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(v) = c.execute(&format!("return ({expr});"), vec![]).await {
            let truthy = !matches!(v, Value::Null | Value::Bool(false)) && v != json!("") && v != json!(0);
            if truthy {
                return v;
            }
            last = v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = c.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
    panic!(
        "timed out waiting for {what} (last value {last}); the page says:\n{}",
        body.as_str().unwrap_or("")
    );
}
