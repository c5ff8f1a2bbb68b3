//! Real TLS handshakes over an in-memory pipe: who the cluster CA lets in, and as whom.

use std::sync::Arc;

use tend_tls::*;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const NOW: i64 = 1_800_000_000;

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Handshakes a client config against a server config; the server's view of the client's
/// certificate, or the error.
async fn handshake(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
    dial: &str,
) -> Result<Option<PeerCert>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = rustls_pki_types::ServerName::try_from(dial.to_string()).unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    c.map_err(|e| format!("client: {e}"))?;
    let s = s.map_err(|e| format!("server: {e}"))?;
    Ok(s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| PeerCert::parse(c)))
}

fn agent(ca: &ClusterCa, id: &str) -> Arc<ReloadableCert> {
    let (key, csr) = agent_csr(id).unwrap();
    let issued = ca.sign_agent(&csr, id, now(), 86_400).unwrap();
    ReloadableCert::new(&issued.cert_pem, &key).unwrap()
}

#[tokio::test]
async fn agents_and_control_plane_know_each_other_by_name() {
    let ca = ClusterCa::generate(now()).unwrap();
    let (cp_cert, cp_key) = ca.issue_control_plane(&["10.0.0.7".into()], now()).unwrap();
    let cp = ReloadableCert::new(&cp_cert, &cp_key).unwrap();
    let server = || server_config(cp.clone(), &ca.cert_pem, false).unwrap();
    // An agent with its certificate, dialling any address: seen as agent a1.
    let a1 = agent(&ca, "a1");
    let cfg = client_config(&ca.cert_pem, Some(CONTROL_NAME), Some(a1.clone())).unwrap();
    let peer = handshake(server(), cfg, "192.0.2.1").await.unwrap().expect("a client certificate");
    assert_eq!(peer.agent_id(), Some("a1"));
    assert!(!peer.is_control_plane());
    // A user without a certificate is let in (the routes it may use check its token), and
    // checks the control plane by the dialled address.
    let cfg = client_config(&ca.cert_pem, None, None).unwrap();
    assert_eq!(handshake(server(), cfg.clone(), "127.0.0.1").await.unwrap(), None);
    assert!(handshake(server(), cfg, "10.0.0.8").await.is_err(), "not a name of the control plane");
    // An agent cannot pose as the control plane: its certificate does not name control.tend.
    let agent_server = server_config(a1.clone(), &ca.cert_pem, false).unwrap();
    let cfg = client_config(&ca.cert_pem, Some(CONTROL_NAME), None).unwrap();
    assert!(handshake(agent_server, cfg, "127.0.0.1").await.is_err());
    // Another cluster's CA is trusted by nobody here, either way.
    let other = ClusterCa::generate(now()).unwrap();
    let stranger = agent(&other, "a1");
    let cfg = client_config(&ca.cert_pem, Some(CONTROL_NAME), Some(stranger)).unwrap();
    assert!(handshake(server(), cfg, "127.0.0.1").await.is_err(), "a certificate of another CA");
    let cfg = client_config(&other.cert_pem, Some(CONTROL_NAME), None).unwrap();
    assert!(handshake(server(), cfg, "127.0.0.1").await.is_err(), "a control plane of another CA");
    // An agent's own server requires a client certificate.
    let strict = server_config(a1, &ca.cert_pem, true).unwrap();
    let cfg = client_config(&ca.cert_pem, Some(&agent_name("a1")), None).unwrap();
    assert!(handshake(strict, cfg, "127.0.0.1").await.is_err());
}

#[test]
fn a_request_names_only_its_agent_whatever_it_asked_for() {
    let ca = ClusterCa::generate(NOW).unwrap();
    // A request that asks for the control plane's name gets the agent's only.
    let key = hostile_request();
    let issued = ca.sign_agent(&key, "b2", NOW, 3600).unwrap();
    let der = certs_from_pem(&issued.cert_pem).unwrap().remove(0);
    let peer = PeerCert::parse(der.as_ref()).unwrap();
    assert_eq!(peer.names, vec!["b2.agent.tend"]);
    assert_eq!(peer.serial, issued.serial);
    assert_eq!(peer.not_after_s, NOW + 3600);
    assert!(ca.sign_agent("not a request", "b2", NOW, 3600).is_err());
    // A CA key that is not the certificate's is refused.
    let other = ClusterCa::generate(NOW).unwrap();
    assert!(ClusterCa::from_pem(&ca.cert_pem, other.key_pem()).is_err());
    assert!(ClusterCa::from_pem(&ca.cert_pem, ca.key_pem()).is_ok());
    assert_eq!(fingerprint(&ca.cert_pem).unwrap().len(), 64);
}

/// A request for `control.tend` and a CA's powers (as a hostile agent would send).
fn hostile_request() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec![CONTROL_NAME.to_string(), "a1.agent.tend".into()]).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.serialize_request(&key).unwrap().pem().unwrap()
}
