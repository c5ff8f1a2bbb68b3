//! The test harness shared by the end-to-end tests: a control plane and three agents as real
//! processes on loopback, a client that runs the real `tend` binary, and waits bounded in time.
#![allow(dead_code)]

pub mod browser;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Port blocks handed out in this test process (see [`port_block`]).
static SLOTS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// The first of 300 loopback ports that no other cluster of this test process uses, below the
/// ephemeral range (10,000–32,499, 75 blocks): agents take their task and metrics ports from one.
pub fn port_block() -> u16 {
    10_000 + SLOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 75 * 300
}

/// A control plane and three agents (zones a, b, c), killed by pid when dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// This cluster's [`port_block`]: its agents' task ports never overlap another cluster's.
    pub ports: u16,
    pub server: Option<Child>,
    pub agents: Vec<Child>,
    /// Extra flags of every agent this cluster starts.
    pub agent_flags: Vec<String>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// A cluster whose control plane runs with `flags`.
    pub fn start_with(flags: &[&str]) -> Cluster {
        Cluster::start_with_agents(flags, &[])
    }

    /// A cluster whose control plane runs with `flags` and its agents with `agent_flags`.
    pub fn start_with_agents(flags: &[&str], agent_flags: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let ports = port_block();
        let agent_flags = agent_flags.iter().map(|s| s.to_string()).collect();
        let mut c = Cluster { dir, port, ports, server: None, agents: Vec::new(), agent_flags };
        c.start_server_with(flags);
        for i in 0..3 {
            let child = c.spawn_agent(i);
            c.agents.push(child);
        }
        c.wait_for(Duration::from_secs(20), "3 agents up", |c| {
            c.api(&["agent", "list"])
                .map(|v| v.as_array().map_or(0, |a| a.iter().filter(|x| x["state"] == "up").count()) == 3)
                .unwrap_or(false)
        });
        c
    }

    /// Starts agent `i` (zone a, b or c) with its fixed id, ports and data directory. A new
    /// agent joins with a fresh single-use join token; a restarted one has its certificate.
    pub fn spawn_agent(&self, i: usize) -> Child {
        let zone = ["a", "b", "c"][i];
        // Below the kernel's ephemeral range (32768–60999), so no client socket takes them.
        let lo = self.ports + i as u16 * 100;
        let data = self.dir.path().join(format!("agent-{zone}"));
        let mut cmd = tend();
        cmd.args([
            "agent",
            "run",
            "--server",
            &self.url(),
            "--id",
            &format!("{zone}1"),
            "--attr",
            &format!("zone={zone}"),
        ])
        .args(["--cpus", "2", "--memory-mb", "2048", "--ports", &format!("{lo}-{}", lo + 98)])
        // The range's last port: the agent's metrics.
        .args(["--metrics-listen", &format!("127.0.0.1:{}", lo + 99)]);
        if !data.join("tls/cert.pem").exists() {
            cmd.args(["--join-token", &self.join_token()]);
        }
        cmd.args(&self.agent_flags);
        cmd.arg("--data-dir").arg(data).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
    }

    /// The port of agent `i`'s metrics listener (plain HTTP): its port range's last.
    pub fn agent_metrics_port(&self, i: usize) -> u16 {
        self.ports + i as u16 * 100 + 99
    }

    /// Agent `i`'s Prometheus metrics (plain HTTP, no token).
    pub fn agent_metrics(&self, i: usize) -> String {
        let port = self.agent_metrics_port(i);
        let out =
            Command::new("curl").args(["-s", &format!("http://127.0.0.1:{port}/metrics")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A single-use join token for one agent.
    pub fn join_token(&self) -> String {
        let v = self.api(&["agent", "token", "create", "--ttl-seconds", "600"]).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    /// The last lines of the control plane's log.
    pub fn server_log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        log[log.len().saturating_sub(3000)..].to_string()
    }

    /// The cluster CA certificate (PEM file).
    pub fn ca(&self) -> PathBuf {
        self.data().join("ca.pem")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("server")
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    /// Starts the control plane with extra flags (e.g. `--adopt-agents`).
    pub fn start_server_with(&mut self, extra: &[&str]) {
        let child = tend()
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--agent-lost-after-seconds",
                "5",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(self.data())
            .env("TEND_LOG", "tend_server=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("server.log")).unwrap())
            .spawn()
            .unwrap();
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            // Serving, and leading (a member answers 503 until it is elected).
            if self.data().join("token").exists()
                && self.ca().exists()
                && self.raw("GET", "/v1/health", None, None).1["role"] == "leader"
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        panic!("control plane did not start:\n{}", &log[log.len().saturating_sub(3000)..]);
    }

    pub fn kill_server(&mut self) {
        if let Some(mut s) = self.server.take() {
            kill(Pid::from_raw(s.id() as i32), Signal::SIGKILL).unwrap();
            s.wait().unwrap();
        }
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data().join("token")).unwrap().trim().to_string()
    }

    /// Runs a client command with --json; returns its parsed output (Err: stderr).
    pub fn api(&self, args: &[&str]) -> Result<Value, String> {
        self.api_as(&self.token(), args)
    }

    /// Runs a client command with --json and the given API token.
    pub fn api_as(&self, token: &str, args: &[&str]) -> Result<Value, String> {
        let out = tend()
            .args(args)
            .args(["--json", "--addr", &self.url(), "--token", token])
            .arg("--ca-cert")
            .arg(self.ca())
            .output()
            .unwrap();
        if !out.status.success() {
            // Errors on stderr; with --json, a command's own account of a failure on stdout.
            let (err, text) = (String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
            return Err(format!("{err}{text}"));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // `service deploy --json` prints one event per line; other commands one document.
        serde_json::from_str(&text).or_else(|_| Ok(Value::String(text.into_owned())))
    }

    pub fn write_spec(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::File::create(&p).unwrap().write_all(text.as_bytes()).unwrap();
        p
    }

    pub fn deploy(&self, spec: &Path, wait: bool) -> Result<Value, String> {
        let mut args = vec!["service", "deploy", spec.to_str().unwrap()];
        if !wait {
            args.push("--no-wait");
        }
        self.api(&args)
    }

    pub fn wait_for(&self, limit: Duration, what: &str, mut f: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("timed out waiting for {what}");
    }

    /// The directory of a pod instance's volume set on its agent (`volumes/<volume id>`).
    pub fn volume_dir(&self, pod: &Value) -> PathBuf {
        let zone = &pod["agent"].as_str().unwrap()[..1];
        let id = pod["reservation"]["volume_id"].as_str().expect("a volume id");
        self.dir.path().join(format!("agent-{zone}/volume-sets/{id}"))
    }

    pub fn pods(&self, service: &str) -> Vec<Value> {
        self.api(&["pod", "list", "--service", service]).unwrap().as_array().cloned().unwrap_or_default()
    }

    pub fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, Value) {
        self.raw_as(None, method, path, token, body)
    }

    /// A call presenting agent `zone`1's certificate and key (`DATA/tls/` of that agent).
    pub fn raw_as_agent(&self, zone: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        self.raw_as(Some(&self.dir.path().join(format!("agent-{zone}/tls"))), method, path, None, body)
    }

    /// A call with curl, presenting the client certificate in `tls` (`cert.pem`, `key.pem`).
    pub fn raw_as(
        &self,
        tls: Option<&Path>,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut c = Command::new("curl");
        if let Some(dir) = tls {
            c.arg("--cert").arg(dir.join("cert.pem")).arg("--key").arg(dir.join("key.pem"));
        }
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method, &format!("{}{path}", self.url())]);
        c.arg("--cacert").arg(self.ca());
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = c.output().expect("curl is installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let code = code.trim().parse().unwrap_or(0);
        if code == 0 {
            // No answer: what curl says instead.
            return (0, Value::String(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents stop their tasks on SIGTERM; then everything is killed by pid.
        for a in &self.agents {
            let _ = kill(Pid::from_raw(a.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for a in &mut self.agents {
            while Instant::now() < deadline && matches!(a.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.kill();
            let _ = a.wait();
        }
        if let Some(s) = &mut self.server {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Cluster {
    pub fn volume_file(&self, pod: &Value, file: &str) -> String {
        std::fs::read_to_string(self.volume_dir(pod).join("data").join(file)).unwrap_or_default()
    }

    pub fn agent_pid(&self, id: &str) -> Pid {
        let i = ["a1", "b1", "c1"].iter().position(|x| *x == id).unwrap();
        Pid::from_raw(self.agents[i].id() as i32)
    }
}

/// A client process a test started: killed (by its pid) if the test ends before it does.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Waits for it to exit, at most `limit` (then kills it and fails).
    pub fn wait_with_output(mut self, limit: Duration) -> std::process::Output {
        let mut child = self.0.take().expect("a child");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return child.wait_with_output().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let out = child.wait_with_output().unwrap();
        panic!("still running after {limit:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.wait();
        }
    }
}
