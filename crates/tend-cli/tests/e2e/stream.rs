//! The live event stream (`/v1/events/stream`, Server-Sent Events) with the real binary:
//! `tend events --follow` prints a deploy's events and a restart in place as they are recorded, a client resuming with
//! `Last-Event-ID` gets only what came after, and `?service=` filters.

use crate::common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{tend, Cluster};
use serde_json::Value;

/// The events a stream sends within `secs` (curl, resumed after `last`).
fn stream(c: &Cluster, query: &str, last: Option<u64>, secs: u64) -> Vec<Value> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sN", "--max-time", &secs.to_string()])
        .arg("--cacert")
        .arg(c.ca())
        .args(["-H", &format!("Authorization: Bearer {}", c.token())]);
    if let Some(id) = last {
        cmd.args(["-H", &format!("Last-Event-ID: {id}")]);
    }
    let out = cmd.arg(format!("{}/v1/events/stream{query}", c.url())).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// `tend ARGS` against the cluster with `token`, its stdout lines arriving on a channel; killed
/// when the guard goes.
fn follow(
    c: &Cluster,
    token: &str,
    args: &[&str],
) -> (common::ChildGuard, std::sync::mpsc::Receiver<String>) {
    let mut child = tend()
        .args(args)
        .args(["--addr", &c.url(), "--token", token])
        .arg("--ca-cert")
        .arg(c.ca())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (common::ChildGuard(Some(child)), rx)
}

#[test]
fn events_stream_live_resume_after_the_last_seen_and_filter_by_service() {
    let c = Cluster::start();
    let (_follower, lines) = follow(&c, &c.token(), &["events", "--follow", "--json"]);
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for v in lines.iter().filter_map(|l| serde_json::from_str(&l).ok()) {
            if tx.send(v).is_err() {
                break;
            }
        }
    });
    let spec = c.write_spec(
        "web.yml",
        "version: 1\nname: web\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\n",
    );
    c.deploy(&spec, false).unwrap();
    // The follower sees the deploy happen, without polling.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &Value| e["message"].as_str().is_some_and(|m| m.contains("plan complete"))) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no `plan complete` event followed: {seen:?}");
        if let Ok(v) = rx.recv_timeout(left) {
            seen.push(v);
        }
    }
    assert!(seen.iter().any(|e| e["kind"] == "launch" && e["service"] == "web"), "{seen:?}");
    // A task killed: its agent restarts it in place, and the follower hears of it.
    let pid = c.pods("web")[0]["tasks"][0]["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no restart event followed: {seen:?}");
        let Ok(v) = rx.recv_timeout(left) else { continue };
        let restart =
            v["kind"] == "restart" && v["message"].as_str().is_some_and(|m| m.contains("restarted in place"));
        seen.push(v);
        if restart {
            break;
        }
    }
    let seqs: Vec<u64> = seen.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] != w[1]), "no event twice: {seqs:?}");
    // Resumed after an event: only later ones.
    let mid = seqs[seqs.len() / 2];
    let resumed = stream(&c, "", Some(mid), 2);
    assert!(!resumed.is_empty() && resumed.iter().all(|e| e["seq"].as_u64().unwrap() > mid), "{resumed:?}");
    // Filtered: another service's stream has none of web's events.
    let other = stream(&c, "?service=other", None, 2);
    assert!(other.iter().all(|e| e["service"] == "other"), "{other:?}");
    let web = stream(&c, "?service=web", None, 2);
    assert!(web.iter().any(|e| e["kind"] == "launch"), "{web:?}");
    // A bad resume point is refused like any bad input.
    let (code, v) = c.raw("GET", "/v1/events/stream?since=soon", Some(&c.token()), None);
    assert_eq!(code, 400, "{v}");
}

/// `tend task logs --follow` prints the tail, then each line as the task writes it, and never
/// one twice; a viewer token may follow.
#[test]
fn task_logs_follow_prints_lines_as_they_are_written() {
    let c = Cluster::start();
    let spec = c.write_spec(
        "talk.yml",
        "version: 1\nname: talk\npods:\n  p:\n    tasks: { t: { cmd: 'i=0; while true; do echo line $i; i=$((i+1)); sleep 0.2; done' } }\n",
    );
    c.deploy(&spec, true).unwrap();
    let viewer = c.api(&["token", "create", "watcher", "--role", "viewer"]).unwrap();
    let token = viewer["token"].as_str().unwrap().to_string();
    let (_follower, rx) = follow(&c, &token, &["task", "logs", "p-0", "t", "--follow", "--service", "talk"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut numbers = Vec::new();
    let mut next_line = || {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "followed only {numbers:?}");
        let line = rx.recv_timeout(left).ok()?;
        let n = line.strip_prefix("line ").and_then(|n| n.parse::<u64>().ok())?;
        numbers.push(n);
        Some(n)
    };
    // The follower is streaming once its first line arrives; whatever the task writes after
    // that must reach it too, not only the tail it printed first.
    while next_line().is_none() {}
    let logs = c.api(&["task", "logs", "p-0", "t", "--service", "talk"]).unwrap();
    let written = logs["data"].as_str().unwrap_or_default();
    let last_written = written.lines().filter_map(|l| l.strip_prefix("line ")?.parse::<u64>().ok()).max();
    let last_written = last_written.expect("the task has written lines");
    while next_line().is_none_or(|n| n < last_written + 3) {}
    // Each line the next number: none missing, none repeated, from the tail on.
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "lines missing or repeated: {numbers:?}");
    // A reader that goes away (`tend task logs --follow | head -1`) ends the follower quietly.
    let mut child = tend()
        .args(["task", "logs", "p-0", "t", "--follow", "--service", "talk", "--addr", &c.url()])
        .args(["--token", &token])
        .arg("--ca-cert")
        .arg(c.ca())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    reader.read_line(&mut first).unwrap();
    drop(reader);
    let out = common::ChildGuard(Some(child)).wait_with_output(Duration::from_secs(20));
    assert!(first.starts_with("line "), "{first}");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "quietly: {}", String::from_utf8_lossy(&out.stderr));
    // Bad input: clear JSON errors, and nothing streamed.
    let base = "/v1/services/talk/pods";
    let (code, body) = c.raw("GET", &format!("{base}/p-9/tasks/t/logs/stream"), Some(&token), None);
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (code, body) =
        c.raw("GET", &format!("{base}/p-0/tasks/t/logs/stream?stream=stdin"), Some(&token), None);
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (code, body) = c.raw("GET", &format!("{base}/p-0/tasks/nope/logs/stream"), Some(&token), None);
    assert_eq!(code, 404, "{body}");
    let (code, _) = c.raw("GET", &format!("{base}/p-0/tasks/t/logs/stream"), None, None);
    assert_eq!(code, 401);
}
