//! The store on a TLS-secured etcd that also asks for client certificates: certificates made
//! with the openssl command (a CA, a server certificate for 127.0.0.1, a client certificate);
//! with the CA, certificate and key tend connects and works; without its client certificate it
//! is refused. Skipped, saying so, without etcd or openssl.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tend_store::StateStore;
use tend_store_etcd::{EtcdConfig, EtcdStore, EtcdTls};
use tend_testkit::etcd::{etcd_binary, free_port};

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// ca.pem, server.pem/server.key (SAN 127.0.0.1), client.pem/client.key.
fn certificates(dir: &Path) -> bool {
    // Extensions make X.509 v3 certificates (rustls refuses v1).
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.cnf"), "extendedKeyUsage=clientAuth\n").unwrap();
    let steps = [
        "req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=tend-test-ca",
        "req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1",
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 -extfile san.cnf",
        "req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=tend",
        "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 1 -extfile client.cnf",
    ];
    steps.iter().all(|a| openssl(dir, &a.split(' ').collect::<Vec<_>>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_etcd_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (Some(etcd), true) = (etcd_binary(), which_openssl()) else {
        eprintln!("SKIPPED: needs etcd (Debian etcd-server) and openssl");
        return;
    };
    assert!(certificates(dir.path()), "openssl made the certificates");
    let (client, peer) = (free_port(), free_port());
    let p = |f: &str| dir.path().join(f).display().to_string();
    let child = Command::new(etcd)
        .args(["--name", "tls", "--data-dir", &p("data")])
        .args(["--listen-client-urls", &format!("https://127.0.0.1:{client}")])
        .args(["--advertise-client-urls", &format!("https://127.0.0.1:{client}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("tls=http://127.0.0.1:{peer}")])
        .args(["--cert-file", &p("server.pem"), "--key-file", &p("server.key")])
        .args(["--trusted-ca-file", &p("ca.pem"), "--client-cert-auth"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = tend_testkit::Procs::new(Duration::from_secs(3));
    guard.children.push(child);
    let mut cfg = EtcdConfig::parse(&format!("etcd://127.0.0.1:{client}/secure")).unwrap();
    cfg.tls = Some(EtcdTls {
        ca: Some(p("ca.pem").into()),
        cert: Some(p("client.pem").into()),
        key: Some(p("client.key").into()),
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let store = loop {
        match EtcdStore::connect(&cfg).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot connect over TLS: {e}"),
        }
    };
    store.put("k", b"secret").await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"secret");
    // Without the client certificate, etcd refuses (and nothing is written).
    let mut no_cert = cfg.clone();
    no_cert.tls = Some(EtcdTls { ca: Some(p("ca.pem").into()), cert: None, key: None });
    no_cert.timeout = Duration::from_secs(2);
    let refused = match EtcdStore::connect(&no_cert).await {
        Err(_) => true,
        Ok(s) => s.put("k", b"other").await.is_err(),
    };
    assert!(refused, "a client without a certificate is refused");
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"secret");
}

fn which_openssl() -> bool {
    Command::new("openssl").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}
