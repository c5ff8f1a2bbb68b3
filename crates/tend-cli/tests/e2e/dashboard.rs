//! The web dashboard in a real browser: headless Chromium (Debian's chromium and chromedriver)
//! against a real `tend dev` deploying the data-store example. Signs in, watches the deploy
//! complete live, sees a killed task's restart appear without a reload, runs a job, interrupts
//! and continues a plan. Screenshots go to `target/tmp/dashboard/`.

use crate::common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::browser::{browser, browser_paths, wait_js, Killed};
use common::{free_port, tend};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

fn screenshots() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = screenshots().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// Clicks the element `css` names; the page re-renders live (an element found may be replaced
/// before the click lands), so a stale or missing element is looked up again, for up to 10 s.
async fn click(c: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let err = match c.find(Locator::Css(css)).await {
            Ok(e) => match e.click().await {
                Ok(()) => return,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        assert!(Instant::now() < deadline, "cannot click {css}: {err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks a button that asks for confirmation, then confirms.
async fn click_confirmed(c: &Client, css: &str) {
    click(c, css).await;
    wait_js(c, "!document.getElementById('modal').hidden", Duration::from_secs(5), "the confirmation").await;
    click(c, "#modal-ok").await;
}

fn dev(dir: &Path, port: u16) -> Killed {
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/data-store/service.yml");
    let log = std::fs::File::create(dir.join("dev.log")).unwrap();
    let child = tend()
        .args(["dev", spec.to_str().unwrap(), "--data-dir"])
        .arg(dir.join(".tend"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("tend dev starts");
    Killed(child)
}

/// The pid of a running task, read through the API with the CLI.
fn task_pid(dir: &Path, instance: &str, task: &str) -> Option<i32> {
    let out = tend().current_dir(dir).args(["--json", "pod", "info", instance]).output().ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let t = v["tasks"].as_array()?.iter().find(|t| t["task"] == task && t["state"] == "running")?;
    t["pid"].as_i64().map(|p| p as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let (chromium, driver) = match browser_paths() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED dashboard_in_a_real_browser: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _dev = dev(dir.path(), port);
    let token_file = dir.path().join(".tend/token");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !token_file.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let token = std::fs::read_to_string(&token_file).expect("tend dev wrote its token").trim().to_string();
    let (_driver, c) = browser(&chromium, &driver, &dir.path().join("profile")).await;
    let base = format!("https://127.0.0.1:{port}");

    // Nothing but the sign-in page without a token.
    c.goto(&format!("{base}/ui/")).await.unwrap();
    wait_js(&c, "document.getElementById('token')", Duration::from_secs(10), "the sign-in form").await;
    c.find(Locator::Css("#token")).await.unwrap().send_keys("not-a-token").await.unwrap();
    click(&c, "#signin button").await;
    wait_js(&c, "document.getElementById('signin-error').textContent", Duration::from_secs(5), "a refusal")
        .await;
    shot(&c, "0-signin").await;
    let field = c.find(Locator::Css("#token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(&token).await.unwrap();
    click(&c, "#signin button").await;
    wait_js(
        &c,
        "document.querySelector('.service[data-service=\"data-store\"]')",
        Duration::from_secs(20),
        "the service on the overview",
    )
    .await;
    // A marker that a reload would erase: everything below must arrive live.
    c.execute("window.__noReload = true; return true;", vec![]).await.unwrap();

    // The deploy, followed live on the service page until every instance runs.
    click(&c, ".service[data-service=\"data-store\"] a").await;
    wait_js(
        &c,
        "document.querySelector('.plan[data-plan=\"deploy\"]')",
        Duration::from_secs(10),
        "the deploy plan",
    )
    .await;
    let seen_before = wait_js(
        &c,
        "document.querySelector('.plan[data-plan=\"deploy\"] .badge').textContent",
        Duration::from_secs(5),
        "the deploy status",
    )
    .await;
    let all_running = "(rows => rows.length === 5 && rows.every(r => r.children[1].textContent.trim() === 'running'))([...document.querySelectorAll('#pods tbody tr')])";
    wait_js(&c, all_running, Duration::from_secs(90), "5 running instances").await;
    wait_js(
        &c,
        "document.querySelector('.plan[data-plan=\"deploy\"] .badge').textContent === 'complete'",
        Duration::from_secs(60),
        "the deploy plan complete",
    )
    .await;
    eprintln!("deploy status when first seen: {seen_before}");
    shot(&c, "1-service-deployed").await;

    // Kill a task: its restart in place appears without a reload.
    let pid = task_pid(dir.path(), "data-1", "server").expect("data-1's server runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    wait_js(
        &c,
        "Number(document.querySelector('#pods tr[data-instance=\"data-1\"] .restarts').textContent) >= 1",
        Duration::from_secs(30),
        "data-1's restart in the table",
    )
    .await;
    wait_js(
        &c,
        "[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('data-1'))",
        Duration::from_secs(10),
        "the restart event",
    )
    .await;
    assert_eq!(
        c.execute("return window.__noReload === true", vec![]).await.unwrap(),
        json!(true),
        "the page was reloaded"
    );
    shot(&c, "2-restart-seen").await;

    // Interrupt and continue the deploy plan, each with a confirmation.
    click_confirmed(&c, ".plan[data-plan=\"deploy\"] button[data-act$=\"/interrupt\"]").await;
    wait_js(
        &c,
        "document.querySelector('.plan[data-plan=\"deploy\"]').textContent.includes('interrupted')",
        Duration::from_secs(10),
        "the plan interrupted",
    )
    .await;
    shot(&c, "3-plan-interrupted").await;
    click_confirmed(&c, ".plan[data-plan=\"deploy\"] button[data-act$=\"/continue\"]").await;
    wait_js(
        &c,
        "!document.querySelector('.plan[data-plan=\"deploy\"]').textContent.includes('interrupted')",
        Duration::from_secs(10),
        "the plan continued",
    )
    .await;

    // Run a job now from the jobs page; its run appears in the history with its output.
    click(&c, "a[href$=\"/jobs\"]").await;
    wait_js(
        &c,
        "document.querySelector('#jobs tr[data-job=\"compact\"][data-instance=\"data-0\"]')",
        Duration::from_secs(10),
        "the compact job",
    )
    .await;
    let before: Value =
        wait_js(&c, "String(document.querySelectorAll('tr.run').length)", Duration::from_secs(5), "history")
            .await;
    click_confirmed(&c, "#jobs tr[data-job=\"compact\"][data-instance=\"data-0\"] button").await;
    wait_js(
        &c,
        &format!("document.querySelectorAll('tr.run').length > {} && [...document.querySelectorAll('tr.run')].some(r => r.textContent.includes('data-0') && r.textContent.includes('succeeded') && r.textContent.includes('on demand'))", before.as_str().unwrap_or("0")),
        Duration::from_secs(60),
        "a succeeded on-demand run of compact on data-0",
    )
    .await;
    assert_eq!(
        c.execute("return window.__noReload === true", vec![]).await.unwrap(),
        json!(true),
        "the page was reloaded"
    );
    shot(&c, "4-job-run").await;

    // The agents page lists the three agents with a recent heartbeat.
    click(&c, "nav a[href=\"#/agents\"]").await;
    wait_js(
        &c,
        "document.querySelectorAll('#agents tbody tr').length === 3",
        Duration::from_secs(10),
        "three agents",
    )
    .await;
    shot(&c, "5-agents").await;
    c.close().await.unwrap();
}
