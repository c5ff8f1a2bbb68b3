//! `/metrics` with the real binary: the text passes `promtool check metrics`, and its values
//! match the API after a deploy, a task killed (restarted in place by its agent), an operator
//! replacement and a job run; step durations, replacements and job runs are counted as they happen;
//! each agent's own metrics show what it did.

use crate::common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::Cluster;
use serde_json::Value;

fn scrape(c: &Cluster) -> String {
    let out = Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(c.ca())
        .args(["-H", &format!("Authorization: Bearer {}", c.token())])
        .arg(format!("{}/metrics", c.url()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of the sample whose line starts with `series` (name and labels, as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

const SPEC: &str = "version: 1
name: web
pods:
  w:
    count: 2
    tasks: { t: { cmd: 'exec sleep 600' } }
jobs:
  check:
    pod: w
    cmd: 'echo checked'
    interval_seconds: 3600
";

#[test]
fn metrics_pass_promtool_and_match_the_api() {
    let promtool = match Command::new("promtool").arg("--version").output() {
        Ok(_) => "promtool",
        Err(_) => {
            eprintln!("SKIPPED: no promtool (install Debian's prometheus package)");
            return;
        }
    };
    let c = Cluster::start();
    c.deploy(&c.write_spec("web.yml", SPEC), true).unwrap();
    // A task killed: its agent restarts it in place.
    let pods = c.pods("web");
    let pid = pods[0]["tasks"][0]["pid"].as_u64().unwrap() as i32;
    let inst = pods[0]["instance"].as_str().unwrap().to_string();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    c.wait_for(Duration::from_secs(20), "the restart reported", |c| {
        c.pods("web")
            .iter()
            .any(|p| p["instance"] == inst.as_str() && p["tasks"][0]["restarts"].as_u64() == Some(1))
    });
    // A replacement and a job run, on demand.
    c.api(&["pod", "replace", "w-1", "--service", "web"]).unwrap();
    c.api(&["job", "run", "check", "--service", "web"]).unwrap();
    c.wait_for(Duration::from_secs(30), "the job run and the replacement done", |c| {
        let jobs = c.api(&["job", "list", "--service", "web"]).unwrap();
        let ran = jobs.as_array().is_some_and(|a| a.iter().all(|j| !j["last_success_ms"].is_null()));
        ran && c.pods("web").iter().all(|p| p["state"] == "running")
    });
    let text = scrape(&c);
    // promtool checks names, units, types and syntax.
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Values match the API.
    let pods: Vec<Value> = c.pods("web");
    let running = pods.iter().filter(|p| p["state"] == "running").count() as f64;
    assert_eq!(value(&text, "tend_instances{service=\"web\",state=\"running\"}"), Some(running), "{text}");
    let series = format!("tend_task_restarts{{service=\"web\",instance=\"{inst}\",task=\"t\"}}");
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
    assert!(value(&text, "tend_events_total{kind=\"replace\"}").unwrap_or(0.0) >= 1.0, "{text}");
    let jobs = c.api(&["job", "list", "--service", "web"]).unwrap();
    let j = jobs.as_array().unwrap().iter().find(|j| !j["last_success_ms"].is_null()).unwrap().clone();
    let series = format!(
        "tend_job_last_success_timestamp_seconds{{service=\"web\",job=\"check\",instance=\"{}\"}}",
        j["instance"].as_str().unwrap()
    );
    let at = value(&text, &series).expect("a last success");
    assert!((at - j["last_success_ms"].as_f64().unwrap() / 1000.0).abs() < 0.01, "{at} vs {j}");
    let agents = c.api(&["agent", "list"]).unwrap();
    for a in agents.as_array().unwrap() {
        let age = value(
            &text,
            &format!("tend_agent_heartbeat_age_seconds{{agent=\"{}\"}}", a["id"].as_str().unwrap()),
        );
        assert!(age.is_some_and(|s| s < 10.0), "{a}: {age:?}");
    }
    assert!(
        text.contains(
            "tend_http_requests_total{method=\"GET\",route=\"/v1/services/{name}/pods\",status=\"200\"}"
        ),
        "{text}"
    );
    assert!(text.contains("tend_store_operation_duration_seconds_bucket{"), "{text}");
    // Counted as they happen: the deploy's two steps (and the replacement's), the replacement,
    // the job run by its result.
    let steps = value(&text, "tend_plan_step_duration_seconds_count{service=\"web\",plan=\"deploy\"}");
    assert!(steps.is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(value(&text, "tend_replacements_total{service=\"web\"}"), Some(1.0), "{text}");
    let runs = value(&text, "tend_job_runs_total{service=\"web\",job=\"check\",result=\"succeeded\"}");
    let jobs = c.api(&["job", "list", "--service", "web"]).unwrap();
    let succeeded = jobs.as_array().unwrap().iter().filter(|j| !j["last_success_ms"].is_null()).count();
    assert_eq!(runs, Some(succeeded as f64), "{text}");
    assert!(
        text.contains(&format!("tend_task_crash_loop{{service=\"web\",instance=\"{inst}\",task=\"t\"}}")),
        "{text}"
    );
    // Without a token, nothing.
    let (code, _) = c.raw("GET", "/metrics", None, None);
    assert_eq!(code, 401);
    // Each agent's own metrics: the restart in place is on the agent that made it.
    let agent =
        pods.iter().find(|p| p["instance"] == inst.as_str()).unwrap()["agent"].as_str().unwrap().to_string();
    let i = ["a1", "b1", "c1"].iter().position(|a| *a == agent).unwrap();
    let text = c.agent_metrics(i);
    let series = format!("tend_agent_task_restarts{{service=\"web\",instance=\"{inst}\",task=\"t\"}}");
    assert_eq!(value(&text, &series), Some(1.0), "{text}");
    assert!(value(&text, "tend_agent_tasks{state=\"running\"}").is_some_and(|n| n >= 1.0), "{text}");
    let age = value(&text, "tend_agent_control_plane_contact_age_seconds").expect("contact age");
    assert!(age < 10.0, "{text}");
    assert!(value(&text, "tend_agent_certificate_expiry_timestamp_seconds").is_some(), "{text}");
}
