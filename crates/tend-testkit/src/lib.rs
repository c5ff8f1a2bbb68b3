//! Helpers shared by tend's tests and benches (never by the product): child processes that are
//! stopped and killed by pid when dropped, /proc lookups by command line, and the raw fdatasync
//! rate measured as the reference for store benchmarks.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod etcd;

/// Child processes that get SIGCONT + SIGTERM, then SIGKILL after `grace`, when dropped.
pub struct Procs {
    pub children: Vec<Child>,
    pub grace: Duration,
}

impl Procs {
    pub fn new(grace: Duration) -> Procs {
        Procs { children: Vec::new(), grace }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.children {
            let pid = Pid::from_raw(c.id() as i32);
            let _ = kill(pid, Signal::SIGCONT);
            let _ = kill(pid, Signal::SIGTERM);
        }
        for c in &mut self.children {
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pids of the processes whose command line is exactly `args` (e.g. `["sleep", "3601"]`).
pub fn pids_with_cmdline(args: &[&str]) -> Vec<i32> {
    let mut want = Vec::new();
    for a in args {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// 4 KiB write + fdatasync per iteration in `dir`: the reference rate for durable writes.
pub fn fdatasync_rate(dir: &Path, n: usize) -> f64 {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(dir.join("sync.bin"))
        .expect("reference file");
    let buf = [7u8; 4096];
    let t = Instant::now();
    for i in 0..n {
        f.write_all_at(&buf, ((i % 64) * 4096) as u64).expect("write");
        f.sync_data().expect("fdatasync");
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Starts `tend server` (binary `tend`) listening on loopback `port`, its data under
/// `dir/server`, with `extra` arguments; output discarded.
pub fn spawn_server(tend: &str, dir: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new(tend)
        .args(["server", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.join("server"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tend server starts")
}

/// Waits until the server started with [`spawn_server`] has written its API token (and, over
/// TLS, the cluster CA) and listens on `port`. False after 10 s.
pub fn wait_server(dir: &Path, port: u16, tls: bool) -> bool {
    let (token, ca) = (dir.join("server/token"), dir.join("server/ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if token.exists()
            && (!tls || ca.exists())
            && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Starts `tend agent run` (binary `tend`) as agent `<zone>1` with attribute `zone=<zone>`,
/// ports `lo..=hi`, the cluster token from `token_file`, and `extra` arguments; output discarded.
pub fn spawn_agent(
    tend: &str,
    server: &str,
    zone: &str,
    ports: (u16, u16),
    token_file: &Path,
    data_dir: &Path,
    extra: &[&str],
) -> Child {
    Command::new(tend)
        .args([
            "agent",
            "run",
            "--server",
            server,
            "--id",
            &format!("{zone}1"),
            "--attr",
            &format!("zone={zone}"),
        ])
        .args(["--ports", &format!("{}-{}", ports.0, ports.1)])
        .args(extra)
        .arg("--cluster-token-file")
        .arg(token_file)
        .arg("--data-dir")
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tend agent starts")
}
