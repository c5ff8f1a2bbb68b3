//! Repair benchmark with the real binary: in-place restart latency (kill -9 of a task → its
//! replacement process running), median and p99 over N kills, beside runit's `runsv` measured the
//! same way in the same run; then agent loss → replacement running on another agent.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

/// Pids of processes whose command line is exactly `sleep <arg>`.
fn find(arg: &str) -> Vec<i32> {
    tend_testkit::pids_with_cmdline(&["sleep", arg])
}

/// Kills the one `sleep <arg>` `n` times; returns the latencies until a new one runs.
fn measure(arg: &str, n: usize) -> Vec<f64> {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = loop {
            if let [p] = find(arg)[..] {
                break p;
            }
            assert!(Instant::now() < deadline, "no single `sleep {arg}` running");
            std::thread::sleep(Duration::from_millis(2));
        };
        // runsv does not restart a service that ran for less than a second sooner than a second
        // after its start; let every run last past that, for both supervisors alike.
        std::thread::sleep(Duration::from_millis(1_100));
        let t = Instant::now();
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill");
        loop {
            let now = find(arg);
            if now.iter().any(|p| *p != pid) {
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no restart within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    lat
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn runsv_available() -> bool {
    if Command::new("sh")
        .args(["-c", "command -v runsv"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    eprintln!("installing runit (Debian) for the reference measurement");
    Command::new("sh")
        .args(["-c", "apt-get update -qq >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runit >/dev/null 2>&1"])
        .status()
        .is_ok_and(|s| s.success())
}

fn main() {
    let n: usize = std::env::var("REPAIR_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let dir = tempfile::tempdir().expect("tempdir");
    // Reference: runsv supervising `sleep 3602`.
    let reference = if runsv_available() {
        let svc = dir.path().join("svc");
        std::fs::create_dir_all(&svc).expect("svc dir");
        std::fs::write(svc.join("run"), "#!/bin/sh\nexec sleep 3602\n").expect("run script");
        Command::new("chmod").arg("+x").arg(svc.join("run")).status().expect("chmod");
        let mut runsv = tend_testkit::Procs::new(Duration::from_secs(20));
        runsv.children.push(
            Command::new("runsv")
                .arg(&svc)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("runsv"),
        );
        let lat = measure("3602", n);
        drop(runsv);
        for p in find("3602") {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        Some(lat)
    } else {
        eprintln!("runsv not available: no reference");
        None
    };
    // tend: a control plane and 3 agents; one task with immediate in-place restarts.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let base = format!("http://127.0.0.1:{port}");
    let data = dir.path().join("server");
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(20));
    procs.children.push(
        tend()
            .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--agent-lost-after-seconds", "2"])
            // Repair is measured here, not TLS (the deploy bench compares the two).
            .arg("--plain-http")
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(data.join("cluster-token").exists() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, zone) in ["a", "b", "c"].iter().enumerate() {
        let lo = 45_000 + i as u16 * 500;
        procs.children.push(tend_testkit::spawn_agent(
            env!("CARGO_BIN_EXE_tend"),
            &base,
            zone,
            (lo, lo + 99),
            &data.join("cluster-token"),
            &dir.path().join(format!("agent-{zone}")),
            &[],
        ));
    }
    let token = std::fs::read_to_string(data.join("token")).expect("token").trim().to_string();
    // Kills every 1.1 s are a crash loop to the agent (quick exits), and a task caught running in
    // a crash loop counts as down: no failure monitor while measuring restarts in place.
    let spec = dir.path().join("r.yml");
    let text = "version: 1\nname: r\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 3601' } }\nrecovery: { failure_timeout_seconds: never, backoff: { initial_seconds: 0, max_seconds: 1 } }\n";
    std::fs::write(&spec, text).expect("spec");
    std::thread::sleep(Duration::from_millis(800));
    let deploy = || {
        let ok = tend()
            .args(["service", "deploy", "--addr", &base, "--token", &token])
            .arg(&spec)
            .stdout(Stdio::null())
            .status()
            .expect("deploy");
        assert!(ok.success(), "deploy failed");
    };
    deploy();
    let lat = measure("3601", n);
    println!("in-place restart latency, kill -9 → new process running, {n} kills:");
    if let Some(r) = &reference {
        println!("  runit runsv (reference): median {:>7.2} ms   p99 {:>7.2} ms", pct(r, 0.5), pct(r, 0.99));
    }
    println!(
        "  tend agent:              median {:>7.2} ms   p99 {:>7.2} ms",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    if let Some(r) = &reference {
        println!("  ratio tend / runsv:      median {:.2}x", pct(&lat, 0.5) / pct(r, 0.5));
    }
    // Agent loss: let the crash-loop window (10 s) pass, turn the failure monitor on (1 s; the
    // config identity does not change, nothing restarts), freeze the agent that runs the task;
    // time until a new `sleep 3601` runs.
    std::thread::sleep(Duration::from_secs(11));
    std::fs::write(&spec, text.replace("failure_timeout_seconds: never", "failure_timeout_seconds: 1"))
        .expect("spec");
    deploy();
    let pods = tend()
        .args(["pod", "list", "--json", "--service", "r", "--addr", &base, "--token", &token])
        .output()
        .expect("pods");
    let v: serde_json::Value = serde_json::from_slice(&pods.stdout).expect("json");
    let agent = v[0]["agent"].as_str().expect("placed").to_string();
    let idx = ["a1", "b1", "c1"].iter().position(|a| *a == agent).expect("agent") + 1;
    let old = find("3601");
    let t = Instant::now();
    kill(Pid::from_raw(procs.children[idx].id() as i32), Signal::SIGSTOP).expect("stop agent");
    loop {
        if find("3601").iter().any(|p| !old.contains(p)) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no replacement within 60 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    let total = t.elapsed().as_secs_f64();
    println!(
        "agent loss → replacement running on another agent: {total:.2} s after the freeze (lost 2 s after its last report, which came up to 1 s before the freeze; the 1 s failure timeout counts from that report and has run out by then)"
    );
    kill(Pid::from_raw(procs.children[idx].id() as i32), Signal::SIGCONT).expect("cont");
}
