//! Agent identity with mutual TLS, end to end with the real binary: every impersonation attempt
//! is refused — no certificate, the old shared cluster token, a certificate of another CA,
//! another agent's certificate, a revoked one; join tokens serve once and expire; an agent will
//! not join a control plane whose CA its token does not pin; an agent's own server answers the
//! control plane only; certificates rotate before they expire.

use crate::common;

use std::process::Command;
use std::time::Duration;

use common::{tend, Cluster};

/// A key and a self-signed certificate naming agent a1, made by openssl: another CA's.
fn stranger(dir: &std::path::Path) -> std::path::PathBuf {
    let d = dir.join("stranger");
    std::fs::create_dir_all(&d).unwrap();
    let ok = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
        .args(["-subj", "/CN=a1.agent.tend", "-addext", "subjectAltName=DNS:a1.agent.tend", "-days", "1"])
        .arg("-keyout")
        .arg(d.join("key.pem"))
        .arg("-out")
        .arg(d.join("cert.pem"))
        .output()
        .expect("openssl is installed");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    d
}

/// The port agent `pid` serves its logs on (its only listening socket).
/// The port of agent `i`'s own server: the one it listens on besides its metrics port.
fn agent_port(c: &Cluster, i: usize) -> u16 {
    let pid = c.agents[i].id();
    let out = Command::new("ss").args(["-ltnpH"]).output().expect("ss is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let ports = text
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3)?.rsplit(':').next()?.parse::<u16>().ok());
    let mut ports = ports.filter(|p| *p != c.agent_metrics_port(i));
    let port = ports.next().expect("the agent listens");
    assert_eq!(ports.next(), None, "agent {i} listens on one port besides its metrics");
    port
}

#[test]
fn impersonation_attempts_are_refused() {
    let mut c = Cluster::start();
    let report = r#"{"seq":99,"tasks":[]}"#;
    let cluster_token = std::fs::read_to_string(c.data().join("cluster-token")).unwrap();
    let own = |c: &Cluster| c.raw_as_agent("a", "GET", "/v1/agent/a1/desired?wait_ms=1", None);
    assert_eq!(own(&c).0, 200, "an agent reads its own desired state");
    // A difference on another control plane's state is never given; an oversized id is refused.
    let (code, v) =
        c.raw_as_agent("a", "GET", "/v1/agent/a1/desired?wait_ms=1&index=5&held_from=elsewhere", None);
    assert_eq!((code, v.get("base_index")), (200, None), "{v}");
    let long = format!("/v1/agent/a1/desired?wait_ms=1&held_from={}", "x".repeat(129));
    let (code, v) = c.raw_as_agent("a", "GET", &long, None);
    assert_eq!((code, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");
    // No certificate; the old shared token; a certificate of another CA.
    let (code, v) = c.raw("POST", "/v1/agent/a1/status", None, Some(report));
    assert_eq!((code, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
    let (code, v) = c.raw("POST", "/v1/agent/a1/status", Some(cluster_token.trim()), Some(report));
    assert_eq!(code, 401, "the shared cluster token opens nothing over TLS: {v}\n{}", c.server_log());
    let s = stranger(c.dir.path());
    let (code, _) = c.raw_as(Some(&s), "GET", "/v1/agent/a1/desired?wait_ms=1", None, None);
    assert_ne!(code, 200, "another CA's certificate for a1");
    // Another agent's certificate: b1 cannot read a1's desired state (its env secrets), report
    // for a1, or register as a1 with its own address.
    let (code, v) = c.raw_as_agent("b", "GET", "/v1/agent/a1/desired?wait_ms=1", None);
    assert_eq!(code, 403, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("agent b1's"), "{v}");
    let (code, _) = c.raw_as_agent("b", "POST", "/v1/agent/a1/status", Some(report));
    assert_eq!(code, 403);
    let register = r#"{"agent_id":"a1","host":"10.9.9.9","agent_url":"https://10.9.9.9:1","resources":{"cpus":1,"memory_mb":1,"disk_mb":1,"port_range":[1,2]}}"#;
    let (code, _) = c.raw_as_agent("b", "POST", "/v1/agent/register", Some(register));
    assert_eq!(code, 403);
    let agents = c.api(&["agent", "list"]).unwrap();
    assert!(!agents.to_string().contains("10.9.9.9"), "nobody re-registered a1: {agents}");
    // An agent's own server answers the control plane's certificate only: not another agent's.
    let port = agent_port(&c, 0);
    let url = format!("https://127.0.0.1:{port}/v1/logs?service=x&instance=x-0&task=t&incarnation=1");
    let b_tls = c.dir.path().join("agent-b/tls");
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            &format!("a1.agent.tend:{port}:127.0.0.1"),
        ])
        .arg("--cacert")
        .arg(c.ca())
        .arg("--cert")
        .arg(b_tls.join("cert.pem"))
        .arg("--key")
        .arg(b_tls.join("key.pem"))
        .arg(url.replace("127.0.0.1", "a1.agent.tend"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401", "agent b1 reading a1's logs");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-k", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "000", "no certificate: no handshake");

    // Revoked: a1's certificate is refused from now on, and a1 is lost.
    c.api(&["agent", "revoke", "a1"]).unwrap();
    assert_eq!(own(&c).0, 401);
    c.wait_for(Duration::from_secs(20), "a1 lost", |c| {
        c.api(&["agent", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "a1" && a["state"] == "lost")
    });
    // A new join token lets it back, with a new certificate.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.agents[0].id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = c.agents[0].wait();
    std::fs::remove_dir_all(c.dir.path().join("agent-a/tls")).unwrap();
    c.agents[0] = c.spawn_agent(0);
    c.wait_for(Duration::from_secs(20), "a1 back", |c| {
        c.api(&["agent", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == "a1" && a["state"] == "up")
    });
    assert_eq!(own(&c).0, 200);
}

/// An agent `id` joined with `token` (its certificate received), killed when dropped.
fn joined(c: &Cluster, id: &str, token: &str, ports: &str) -> common::ChildGuard {
    let child = tend()
        .args(["agent", "run", "--server", &c.url(), "--id", id, "--join-token", token, "--ports", ports])
        .arg("--data-dir")
        .arg(c.dir.path().join(id))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let guard = common::ChildGuard(Some(child));
    let cert = c.dir.path().join(id).join("tls/cert.pem");
    c.wait_for(Duration::from_secs(20), &format!("{id} joined"), |_| cert.exists());
    guard
}

#[test]
fn join_tokens_serve_once_expire_and_pin_the_ca() {
    let c = Cluster::start();
    // The joining agents' ports: a block of their own ([`common::port_block`]).
    let block = common::port_block();
    let join = |token: &str, id: &str| {
        let data = c.dir.path().join(format!("join-{id}"));
        tend()
            .args([
                "agent",
                "run",
                "--server",
                &c.url(),
                "--id",
                id,
                "--join-token",
                token,
                "--ports",
                &format!("{block}-{}", block + 1),
            ])
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    // Spent: the token a1 joined with is gone; a token used once cannot be used again.
    let token = c.join_token();
    let first = joined(&c, "x1", &token, &format!("{}-{}", block + 2, block + 3));
    let out = join(&token, "x2");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown, spent or expired"), "{out:?}");
    drop(first);
    // Expired.
    let v = c.api(&["agent", "token", "create", "--ttl-seconds", "1"]).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = join(v["token"].as_str().unwrap(), "x3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown, spent or expired"), "{out:?}");
    // A token pinning another CA: the agent does not join (and sends nothing).
    let t = c.join_token();
    let (head, _) = t.rsplit_once('.').unwrap();
    let out = join(&format!("{head}.{}", "0".repeat(64)), "x4");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not joining"), "{out:?}");
    // That token was not spent by the refused join: it still works.
    drop(joined(&c, "x5", &t, &format!("{}-{}", block + 4, block + 5)));
    // Bad input changes nothing: a malformed token, a bad agent id, a request that is not one.
    for (body, code) in [
        (r#"{"agent_id":"a1","token":"nope","csr_pem":"x"}"#, 401),
        (r#"{"agent_id":"A B","token":"nope","csr_pem":"x"}"#, 400),
        (r#"{"agent_id":"a1"}"#, 400),
    ] {
        let (got, v) = c.raw("POST", "/v1/agent/join", None, Some(body));
        assert_eq!(got, code, "{body}: {v}\n{}", c.server_log());
        assert!(v["error"]["code"].is_string());
    }
}

#[test]
fn certificates_rotate_before_they_expire() {
    let c = Cluster::start_with(&["--agent-cert-ttl-seconds", "60"]);
    let cert = c.dir.path().join("agent-a/tls/cert.pem");
    let before = std::fs::read_to_string(&cert).unwrap();
    // Renewed at two thirds of its life (40 s), checked every 10 s.
    c.wait_for(Duration::from_secs(75), "a1's certificate renewed", |_| {
        std::fs::read_to_string(&cert).is_ok_and(|now| now != before)
    });
    // And in use: a1 stays up, its calls answered with the new certificate.
    assert_eq!(c.raw_as_agent("a", "GET", "/v1/agent/a1/desired?wait_ms=1", None).0, 200);
    c.wait_for(Duration::from_secs(10), "a1 up", |c| {
        c.api(&["agent", "list"]).unwrap().as_array().unwrap().iter().all(|a| a["state"] == "up")
    });
}

/// A CA and a server certificate for 127.0.0.1 signed by it (openssl), in `dir`.
fn web_ca(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let sh = format!(
        "cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=web-ca \
         -keyout ca.key -out ca.pem -days 1 2>/dev/null && \
         openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
         -keyout srv.key -out srv.csr 2>/dev/null && \
         printf 'subjectAltName=IP:127.0.0.1' > ext && \
         openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext -out srv.pem 2>/dev/null",
        d = dir.display()
    );
    assert!(Command::new("sh").arg("-c").arg(sh).status().unwrap().success());
}

/// `openssl s_server -WWW` serving `dir` over HTTPS with the certificate in `tls`.
fn https_server(dir: &std::path::Path, tls: &std::path::Path, port: u16) -> common::ChildGuard {
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-WWW", "-accept", &port.to_string()])
        .arg("-cert")
        .arg(tls.join("srv.pem"))
        .arg("-key")
        .arg(tls.join("srv.key"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::ChildGuard(Some(child))
}

/// `https://` artifacts: fetched when the server's certificate checks out against the agents'
/// CA (`--artifact-ca`), refused with the TLS error when it is signed by a CA they do not trust.
#[test]
fn https_artifacts_are_checked_against_the_trusted_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let (trusted, other) = (tmp.path().join("trusted"), tmp.path().join("other"));
    web_ca(&trusted);
    web_ca(&other);
    let site = tmp.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(site.join("hello.sh"), "#!/bin/sh\necho fetched over https > data/out; exec sleep 600\n")
        .unwrap();
    let ca = trusted.join("ca.pem");
    let c = Cluster::start_with_agents(&[], &["--artifact-ca", ca.to_str().unwrap()]);
    let (good, bad) = (common::free_port(), common::free_port());
    let _servers = (https_server(&site, &trusted, good), https_server(&site, &other, bad));
    std::thread::sleep(Duration::from_millis(500));
    let spec = |name: &str, port: u16| {
        format!(
            "version: 1\nname: {name}\npods:\n  w:\n    volumes: [ {{ name: data, path: data, size_mb: 1 }} ]\n    artifacts: [ {{ uri: 'https://127.0.0.1:{port}/hello.sh' }} ]\n    tasks:\n      t: {{ cmd: './hello.sh' }}\nrecovery: {{ failure_timeout_seconds: 600 }}\n"
        )
    };
    let ok = c.write_spec("ok.yml", &spec("ok", good));
    c.deploy(&ok, true).unwrap();
    let pod = c.pods("ok")[0].clone();
    assert_eq!(c.volume_file(&pod, "out").trim(), "fetched over https");
    // Another CA: the deploy fails, and says why.
    let refused = c.write_spec("refused.yml", &spec("refused", bad));
    let e = c.deploy(&refused, true).expect_err("an untrusted server");
    let events = c.api(&["events", "--service", "refused"]).unwrap().to_string();
    assert!(
        events.contains("certificate") || e.contains("certificate"),
        "the TLS refusal is reported: {e}\n{events}"
    );
}

/// The user API on a second listener with a certificate of the user's choosing: the CLI and
/// curl check it against that certificate's CA; agents keep the cluster CA's listener (agent
/// routes there find no agent certificate).
#[test]
fn the_user_api_can_present_a_user_given_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web");
    web_ca(&web);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (cert, key) = (web.join("srv.pem"), web.join("srv.key"));
    let c = Cluster::start_with(&[
        "--api-listen",
        &listen,
        "--api-tls-cert",
        cert.to_str().unwrap(),
        "--api-tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("https://{listen}");
    let out = tend()
        .args(["agent", "list", "--json", "--addr", &url, "--token", &c.token()])
        .arg("--ca-cert")
        .arg(web.join("ca.pem"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let agents: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents.as_array().map(Vec::len), Some(3));
    // The cluster CA does not vouch for the user's certificate, nor the other way round.
    let out = tend()
        .args(["agent", "list", "--addr", &url, "--token", &c.token()])
        .arg("--ca-cert")
        .arg(c.ca())
        .output()
        .unwrap();
    assert!(!out.status.success());
    // An agent's call on the user listener: no agent certificate there.
    let code = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg("--cacert")
        .arg(web.join("ca.pem"))
        .arg(format!("{url}/v1/agent/a1/desired?wait_ms=1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&code.stdout), "401");
}
