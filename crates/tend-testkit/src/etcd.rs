//! Real etcd servers for tests: Debian's `etcd` on loopback ports, one data directory each,
//! stopped and killed by pid when dropped. A test that needs etcd and finds no binary skips
//! visibly (see [`etcd_binary`]); the test command installs `etcd-server`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Procs;

/// The etcd binary (`$TEND_ETCD`, else `etcd` on PATH), or None: the caller skips and says so.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TEND_ETCD") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("etcd")).find(|p| p.is_file())
}

/// A free loopback port (bound then released: another process may take it in between, which
/// the caller notices as a failed start).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One member of a cluster: its name, client and peer ports.
#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub client: u16,
    pub peer: u16,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client)
    }
}

/// An etcd cluster of real processes (one member or several), under a temporary directory.
pub struct EtcdCluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    binary: PathBuf,
    /// Running members by index (None: killed by the test).
    procs: Vec<Option<Procs>>,
}

impl EtcdCluster {
    /// Starts `n` members under `dir` and waits (up to 20 s) until every one answers; None when
    /// no etcd binary is installed. A member that exits at once lost one of its ports to another
    /// process (see [`free_port`]): the cluster starts again on fresh ports, up to 3 times.
    pub fn start(dir: &Path, n: usize) -> Option<EtcdCluster> {
        let binary = etcd_binary()?;
        let mut last = String::new();
        for attempt in 0..3 {
            let members: Vec<Member> = (0..n)
                .map(|i| Member { name: format!("m{i}"), client: free_port(), peer: free_port() })
                .collect();
            let mut c =
                EtcdCluster { members, dir: dir.to_path_buf(), binary: binary.clone(), procs: Vec::new() };
            for i in 0..n {
                if attempt > 0 {
                    // What the failed start began, under the old ports.
                    let _ = std::fs::remove_dir_all(c.dir.join(format!("etcd-{}", c.members[i].name)));
                }
                let p = c.spawn(i);
                c.procs.push(Some(p));
            }
            match (0..n).try_for_each(|i| c.wait_ready(i, Duration::from_secs(20))) {
                Ok(()) => return Some(c),
                Err(e @ Exit::Exited(_)) => last = e.to_string(),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last}, three times on fresh ports")
    }

    /// Comma-separated client endpoints (`127.0.0.1:P,…`).
    pub fn endpoints(&self) -> String {
        self.members.iter().map(|m| m.endpoint()).collect::<Vec<_>>().join(",")
    }

    fn spawn(&self, i: usize) -> Procs {
        let m = &self.members[i];
        let initial: Vec<String> =
            self.members.iter().map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer)).collect();
        let data = self.dir.join(format!("etcd-{}", m.name));
        let state = if data.exists() { "existing" } else { "new" };
        let log = std::fs::File::create(self.dir.join(format!("etcd-{}.log", m.name))).ok();
        let child: Child = Command::new(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", m.client)])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", m.client)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", m.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", m.peer)])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "tend-test"])
            // Short raft timers: elections in well under a second on loopback.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            // As tend's docs ask: a service's delete is one transaction.
            .args(["--max-txn-ops", "10000"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdout(Stdio::null())
            .stderr(log.map(Stdio::from).unwrap_or_else(Stdio::null))
            .spawn()
            .expect("etcd starts");
        let mut p = Procs::new(Duration::from_secs(3));
        p.children.push(child);
        p
    }

    /// Waits until member `i` serves its health endpoint, its own process still running (a
    /// member that lost its port to another etcd exits; that other one may answer on it).
    fn wait_ready(&mut self, i: usize, limit: Duration) -> Result<(), Exit> {
        let deadline = Instant::now() + limit;
        let addr = format!("127.0.0.1:{}", self.members[i].client);
        let name = self.members[i].name.clone();
        while Instant::now() < deadline {
            let child = self.procs.get_mut(i).and_then(Option::as_mut).and_then(|p| p.children.first_mut());
            if let Some(Ok(Some(status))) = child.map(|c| c.try_wait()) {
                return Err(Exit::Exited(format!("etcd member {name} exited at start ({status})")));
            }
            if health(&addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(Exit::Timeout(format!("etcd member {name} did not become healthy within {limit:?}")))
    }

    /// The pid of member `i` (None: not running).
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs.get(i)?.as_ref()?.children.first().map(|c| c.id())
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(Some(mut p)) = self.procs.get_mut(i).map(Option::take) {
            for c in &mut p.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            p.children.clear();
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        let p = self.spawn(i);
        self.procs[i] = Some(p);
        if let Err(e) = self.wait_ready(i, Duration::from_secs(20)) {
            panic!("{e}");
        }
    }
}

/// Why a member did not come up.
#[derive(Debug)]
enum Exit {
    Exited(String),
    Timeout(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Exited(m) | Exit::Timeout(m) => f.write_str(m),
        }
    }
}

/// GET /health over a plain TCP socket (no client library in the testkit).
fn health(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
