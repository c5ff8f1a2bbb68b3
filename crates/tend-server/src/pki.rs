//! The control plane's trust material: the cluster CA (made by the first member to start, kept
//! in the data directory and shared with the other members through the store), this member's
//! certificate (`control.tend`, reissued at each start), and the TLS configurations made of them.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tend_store::{Compare, StateStore, Txn, TxnOp};
use tend_tls::{ClusterCa, ReloadableCert};

const KEY: &str = "meta/ca";

#[derive(Serialize, Deserialize)]
struct StoredCa {
    cert_pem: String,
    key_pem: String,
}

/// A member's CA and certificate.
pub struct Pki {
    pub ca: ClusterCa,
    /// SHA-256 of the CA certificate: what join tokens pin.
    pub fingerprint: String,
    pub cert: Arc<ReloadableCert>,
    pub server_tls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The CA of the data directory (`ca.pem`, `ca-key.pem`), or a new one.
fn local_ca(dir: &Path) -> anyhow::Result<ClusterCa> {
    let (cert, key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    match (std::fs::read_to_string(&cert), std::fs::read_to_string(&key)) {
        (Ok(c), Ok(k)) => ClusterCa::from_pem(&c, &k).with_context(|| format!("the CA in {}", dir.display())),
        _ => Ok(ClusterCa::generate(now_s())?),
    }
}

fn write_files(dir: &Path, ca: &ClusterCa) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("ca-key.pem"))?;
    std::io::Write::write_all(&mut f, ca.key_pem().as_bytes())?;
    Ok(())
}

impl Pki {
    /// The cluster CA shared through `store` (the first member's, or the data directory's),
    /// written to `data_dir`, and a fresh certificate for this member naming `hosts` too.
    pub async fn shared(
        store: &dyn StateStore,
        data_dir: &Path,
        hosts: &[String],
    ) -> anyhow::Result<Arc<Pki>> {
        let local = local_ca(data_dir)?;
        let offer = serde_json::to_vec(&StoredCa {
            cert_pem: local.cert_pem.clone(),
            key_pem: local.key_pem().into(),
        })?;
        let r = store
            .txn(Txn::new().when(Compare::absent(KEY)).then(TxnOp::put(KEY, offer)).or_else(TxnOp::get(KEY)))
            .await?;
        let ca = if r.succeeded {
            local
        } else {
            let stored: StoredCa = match r.responses.first() {
                Some(tend_store::OpResponse::Get(Some(kv))) => serde_json::from_slice(&kv.value)?,
                _ => anyhow::bail!("the cluster CA vanished from the store"),
            };
            ClusterCa::from_pem(&stored.cert_pem, &stored.key_pem).context("the cluster CA in the store")?
        };
        write_files(data_dir, &ca)?;
        Pki::new(ca, hosts)
    }

    /// A member certificate from `ca`.
    pub fn new(ca: ClusterCa, hosts: &[String]) -> anyhow::Result<Arc<Pki>> {
        let (cert_pem, key_pem) = ca.issue_control_plane(hosts, now_s())?;
        let cert = ReloadableCert::new(&cert_pem, &key_pem)?;
        let server_tls = Arc::new(tend_tls::server_config(cert.clone(), &ca.cert_pem, false)?);
        let fingerprint = tend_tls::fingerprint(&ca.cert_pem)?;
        Ok(Arc::new(Pki { ca, fingerprint, cert, server_tls }))
    }

    /// A client of other members (checked as `control.tend`, presenting this member's
    /// certificate) or of agent `agent` (checked as that agent).
    pub fn client(
        &self,
        agent: Option<&str>,
        timeout: std::time::Duration,
    ) -> anyhow::Result<reqwest::Client> {
        let name = match agent {
            Some(a) => tend_tls::agent_name(a),
            None => tend_tls::CONTROL_NAME.to_string(),
        };
        let tls = tend_tls::client_config(&self.ca.cert_pem, Some(&name), Some(self.cert.clone()))?;
        Ok(reqwest::Client::builder().use_preconfigured_tls(tls).timeout(timeout).build()?)
    }

    /// Like [`client`](Self::client) for answers that stream for long (a log followed): only
    /// connecting is bounded by `connect_timeout`.
    pub fn streaming_client(
        &self,
        agent: Option<&str>,
        connect_timeout: std::time::Duration,
    ) -> anyhow::Result<reqwest::Client> {
        let name = match agent {
            Some(a) => tend_tls::agent_name(a),
            None => tend_tls::CONTROL_NAME.to_string(),
        };
        let tls = tend_tls::client_config(&self.ca.cert_pem, Some(&name), Some(self.cert.clone()))?;
        Ok(reqwest::Client::builder().use_preconfigured_tls(tls).connect_timeout(connect_timeout).build()?)
    }
}
