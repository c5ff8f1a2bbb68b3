//! The API under a connection flood, with the real binary: 300 clients that send half a request
//! and stall (slow headers) against a cap of 200 connections and a 2 s header deadline. The
//! stalled connections are closed by the server within the deadline, and `/v1/health` answers
//! again right after — the flood costs seconds, not the control plane. And the routes and flags
//! the HA control plane added refuse bad input.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::Cluster;

#[test]
fn a_slow_header_flood_is_bounded_in_time() {
    let mut c = Cluster::start();
    c.kill_server();
    c.start_server_with(&["--max-connections", "200", "--header-timeout-seconds", "2"]);
    let t = Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..300 {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", c.port)) {
            let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n");
            stalled.push(s);
        }
    }
    // Every stalled connection is closed by the server (EOF or reset) within the deadline.
    for s in &mut stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 512];
        // EOF, a reset, or an error answer (408) all end the request; a read that times out
        // means the server still holds the connection.
        let held = matches!(s.read(&mut buf), Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
        assert!(!held, "a stalled connection is still open after 10 s");
    }
    let all_closed = t.elapsed();
    assert!(all_closed < Duration::from_secs(10), "stalled connections held {all_closed:?}");
    // And the API answers.
    let (status, v) = c.raw("GET", "/v1/health", None, None);
    assert_eq!((status, v["status"].as_str()), (200, Some("ok")), "{v}");
    drop(stalled);
}

/// The routes and flags this control plane gained refuse bad input with a clear error and
/// change nothing: `/v1/cluster` without a token, member artifacts without the cluster token,
/// with a bad name or a body that is not what its name says; server flags out of range.
#[test]
fn new_routes_and_flags_refuse_bad_input() {
    let c = Cluster::start();
    let cluster_token = std::fs::read_to_string(c.data().join("cluster-token")).unwrap().trim().to_string();
    let sha = "a".repeat(64);
    /// (method, path, bearer token, body, expected status)
    type Case<'a> = (&'a str, String, Option<String>, Option<&'a str>, u16);
    let cases: Vec<Case> = vec![
        ("GET", "/v1/cluster".into(), None, None, 401),
        ("GET", "/v1/cluster".into(), Some(cluster_token.clone()), None, 401),
        ("GET", format!("/v1/member/artifacts/{sha}"), None, None, 401),
        ("GET", format!("/v1/member/artifacts/{sha}"), Some(c.token()), None, 401),
        ("GET", "/v1/member/artifacts/NOT-A-SHA".into(), Some(cluster_token.clone()), None, 400),
        ("GET", format!("/v1/member/artifacts/{sha}"), Some(cluster_token.clone()), None, 404),
        ("PUT", format!("/v1/member/artifacts/{sha}"), Some(cluster_token.clone()), Some("not that"), 400),
    ];
    for (method, path, token, body, want) in cases {
        let (status, v) = c.raw(method, &path, token.as_deref(), body);
        assert_eq!(status, want, "{method} {path}: {v}");
        assert!(v["error"]["code"].is_string(), "{method} {path}: a JSON error: {v}");
    }
    assert!(!c.data().join("artifacts").join(&sha).exists(), "nothing stored");
    let (status, v) = c.raw("GET", "/v1/cluster", Some(&c.token()), None);
    assert_eq!((status, v["role"].as_str()), (200, Some("leader")), "{v}");
    // Flags out of range: refused before anything starts.
    for (args, says) in [
        (vec!["--store", "bogus://x"], "etcd://HOST:PORT"),
        (vec!["--store", "etcd://h:0"], "port 1–65535"),
        (vec!["--leader-ttl-seconds", "1"], "--leader-ttl-seconds must be at least 2"),
        (vec!["--max-connections", "3"], "--max-connections must be at least 16"),
        (vec!["--header-timeout-seconds", "0"], "--header-timeout-seconds must be at least 1"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = common::tend()
            .arg("server")
            .args(&args)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
        assert!(!dir.path().join("server.redb").exists(), "{args:?}: no store created");
    }
}

/// Resident memory of a process, in MB.
fn rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// Four parallel uploads of a 40 MB artifact (as the same artifact: concurrent identical
/// uploads must all succeed) are streamed to disk: the control plane's memory stays flat (it
/// held every body in memory before: 1.78 GB for four 200 MB uploads), one file is kept, and no
/// temporary file is left behind. A body that is not what its name says is refused and removed.
#[test]
fn parallel_big_uploads_are_streamed_to_disk() {
    let c = Cluster::start();
    let file = c.dir.path().join("big.bin");
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 40000000 /dev/urandom > {}", file.display()))
        .status()
        .unwrap();
    assert!(ok.success());
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&file).unwrap()))
    };
    let pid = c.server.as_ref().unwrap().id();
    let base = rss_mb(pid);
    let upload = |name: &str| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-T"])
            .arg(&file)
            .arg("--cacert")
            .arg(c.ca())
            .args(["-H", &format!("Authorization: Bearer {}", c.token())])
            .arg(format!("{}/v1/artifacts/{name}", c.url()))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut children: Vec<_> = (0..4).map(|_| common::ChildGuard(Some(upload(&sha)))).collect();
    let mut peak = base;
    let deadline = Instant::now() + Duration::from_secs(120);
    while children.iter_mut().any(|c| c.0.as_mut().is_some_and(|ch| matches!(ch.try_wait(), Ok(None)))) {
        assert!(Instant::now() < deadline, "uploads still running after 120 s");
        peak = peak.max(rss_mb(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    for ch in &mut children {
        let out = ch.0.take().unwrap().wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    }
    eprintln!("server RSS: {base} MB before, {peak} MB at the peak of 4 parallel 40 MB uploads");
    // Held in memory, the four bodies alone would add 160 MB.
    assert!(peak < base + 60, "memory grew with the uploads: {base} MB -> {peak} MB");
    let dir = c.data().join("artifacts");
    assert_eq!(std::fs::metadata(dir.join(&sha)).unwrap().len(), 40_000_000);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "one file, no temporary left: {names:?}");
    // A body whose digest is not its name: refused, nothing kept.
    let wrong = "b".repeat(64);
    let out = upload(&wrong).wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "400");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}
