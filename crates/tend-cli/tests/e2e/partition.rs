//! Fence mode across a real network partition: an agent in its own network namespace (veth to
//! the control plane) is cut off with `ip link set … down`; its task must be killed by the agent
//! itself before the control plane starts a replacement elsewhere — never two at once.
//! Needs root and iproute2; skipped with a message otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace with a veth pair to the root namespace, deleted on drop.
struct Net {
    ns: String,
    veth: String,
}

impl Drop for Net {
    fn drop(&mut self) {
        sh(&format!("ip link del {}", self.veth));
        sh(&format!("ip netns del {}", self.ns));
    }
}

/// Pids of `sleep <arg>` processes.
fn find(arg: &str) -> Vec<i32> {
    tend_testkit::pids_with_cmdline(&["sleep", arg])
}

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

#[test]
fn fence_mode_kills_the_cut_off_task_before_replacing_it() {
    if !sh("[ \"$(id -u)\" = 0 ]") || !sh("command -v ip") {
        eprintln!("skipped: needs root and iproute2 (ip netns) to make a real partition");
        return;
    }
    let id = std::process::id() % 200 + 20;
    let net = Net { ns: format!("tendf{id}"), veth: format!("tf{id}a") };
    let (root_ip, ns_ip) = (format!("10.213.{id}.1"), format!("10.213.{id}.2"));
    let setup = [
        format!("ip netns add {}", net.ns),
        format!("ip link add {} type veth peer name tf{id}b", net.veth),
        format!("ip link set tf{id}b netns {}", net.ns),
        format!("ip addr add {root_ip}/30 dev {}", net.veth),
        format!("ip link set {} up", net.veth),
        format!("ip -n {} addr add {ns_ip}/30 dev tf{id}b", net.ns),
        format!("ip -n {} link set tf{id}b up", net.ns),
        format!("ip -n {} link set lo up", net.ns),
    ];
    for cmd in &setup {
        if !sh(cmd) {
            eprintln!("skipped: cannot set up the namespace ({cmd})");
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind((root_ip.as_str(), 0)).unwrap().local_addr().unwrap().port();
    let url = format!("https://{root_ip}:{port}");
    let data = dir.path().join("server");
    let mut procs = tend_testkit::Procs::new(Duration::from_secs(15));
    procs.children.push(
        tend()
            .args(["server", "--listen", &format!("{root_ip}:{port}"), "--agent-lost-after-seconds", "3"])
            .args(["--tls-host", &root_ip])
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(data.join("ca.pem").exists() && std::net::TcpStream::connect((root_ip.as_str(), port)).is_ok()) {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let token = std::fs::read_to_string(data.join("token")).unwrap().trim().to_string();
    let ca = data.join("ca.pem");
    // Each agent joins with a single-use token.
    let join_token = || {
        let out = tend()
            .args(["agent", "token", "create", "--addr", &url, "--token", &token])
            .arg("--ca-cert")
            .arg(&ca)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let agent = |id: &str, ns: Option<&str>, host: &str, lo: u16| {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_tend")]);
                c
            }
            None => tend(),
        };
        c.args([
            "agent",
            "run",
            "--server",
            &url,
            "--id",
            id,
            "--host",
            host,
            "--attr",
            &format!("zone={id}"),
        ])
        .args(["--ports", &format!("{lo}-{}", lo + 50)])
        .args(["--join-token", &join_token()])
        .arg("--data-dir")
        .arg(dir.path().join(id))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
    };
    let block = crate::common::port_block();
    // Only the namespaced agent at first, so that the instance lands there.
    procs.children.push(agent("a1", Some(&net.ns), &ns_ip, block));
    let spec = dir.path().join("f.yml");
    std::fs::write(
        &spec,
        "version: 1\nname: f\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 3599' } }\nrecovery: { on_partition: fence, fence_after_seconds: 2, failure_timeout_seconds: 1 }\n",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = tend()
            .args(["service", "deploy", "--addr", &url, "--token", &token])
            .arg("--ca-cert")
            .arg(&ca)
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        if ok.success() {
            break;
        }
        assert!(Instant::now() < deadline, "deploy onto the namespaced agent failed");
        std::thread::sleep(Duration::from_millis(300));
    }
    let old = find("3599");
    assert_eq!(old.len(), 1, "one task running: {old:?}");
    let old = old[0];
    procs.children.push(agent("b1", None, "127.0.0.1", block + 100));
    std::thread::sleep(Duration::from_millis(1500));
    // Partition: the namespaced agent loses the control plane.
    assert!(sh(&format!("ip link set {} down", net.veth)));
    let t0 = Instant::now();
    let (mut old_gone, mut new_seen) = (None, None);
    while new_seen.is_none() && t0.elapsed() < Duration::from_secs(40) {
        let now = find("3599");
        if old_gone.is_none() && !now.contains(&old) {
            old_gone = Some(t0.elapsed());
        }
        if now.iter().any(|p| *p != old) {
            new_seen = Some(t0.elapsed());
            assert!(old_gone.is_some(), "a replacement started while the cut-off task still ran");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let (gone, seen) =
        (old_gone.expect("the cut-off task was never fenced"), new_seen.expect("never replaced"));
    assert!(gone < seen, "fenced at {gone:?}, replaced at {seen:?}");
    assert!(gone >= Duration::from_millis(1_500), "fenced too early: {gone:?}");
    eprintln!("fenced after {gone:?}, replacement running after {seen:?}");
    // Heal: nothing comes back on the old agent.
    assert!(sh(&format!("ip link set {} up", net.veth)));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(find("3599").len(), 1, "exactly one incarnation after healing");
}
