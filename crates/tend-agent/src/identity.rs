//! The agent's identity: a key that never leaves it and a certificate naming its id, signed by
//! the cluster CA. Got once with a join token (the CA checked against the token's pin before
//! anything is trusted), kept in `DATA/tls/`, renewed at two thirds of its life.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tend_api::{JoinRequest, JoinResponse};
use tend_tls::{PeerCert, ReloadableCert, CONTROL_NAME};

use crate::servers::Servers;

/// A certificate in use, swappable on renewal.
pub struct Identity {
    pub cert: Arc<ReloadableCert>,
    pub ca_pem: String,
    dir: PathBuf,
    validity: std::sync::Mutex<(i64, i64)>,
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// (when the certificate was received, when it expires), in seconds: its life is counted from
/// its receipt, not from its `not_before` (set back a little for clocks that differ).
fn validity(cert_pem: &str, received_s: i64) -> anyhow::Result<(i64, i64)> {
    let der = tend_tls::certs_from_pem(cert_pem)?.remove(0);
    let p = PeerCert::parse(der.as_ref()).context("unreadable agent certificate")?;
    Ok((received_s.clamp(p.not_before_s, p.not_after_s), p.not_after_s))
}

/// When a file was last written (seconds since the epoch), or now.
fn written_s(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_s, |d| d.as_secs() as i64)
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

impl Identity {
    /// The identity kept in `data_dir/tls`, or a new one got with `join_token`.
    pub async fn establish(
        id: &str,
        data_dir: &Path,
        servers: &Servers,
        join_token: Option<&str>,
    ) -> anyhow::Result<Arc<Identity>> {
        let dir = data_dir.join("tls");
        let files = (dir.join("key.pem"), dir.join("cert.pem"), dir.join("ca.pem"));
        if let (Ok(key), Ok(cert), Ok(ca)) = (
            std::fs::read_to_string(&files.0),
            std::fs::read_to_string(&files.1),
            std::fs::read_to_string(&files.2),
        ) {
            let v = validity(&cert, written_s(&files.1))?;
            if v.1 > now_s() {
                return Ok(Arc::new(Identity {
                    cert: ReloadableCert::new(&cert, &key)?,
                    ca_pem: ca,
                    dir,
                    validity: std::sync::Mutex::new(v),
                }));
            }
            tracing::warn!(agent = %id, "the agent's certificate expired; joining again");
        }
        let Some(token) = join_token else {
            bail!("agent {id} has no certificate yet: pass --join-token (made by `tend agent token create`)")
        };
        let (ca, key, resp) = join(id, servers, token).await?;
        std::fs::create_dir_all(&dir)?;
        write_private(&files.0, &key)?;
        write_private(&files.1, &resp.cert_pem)?;
        write_private(&files.2, &ca)?;
        tracing::info!(agent = %id, "joined the cluster; certificate kept in {}", dir.display());
        Ok(Arc::new(Identity {
            cert: ReloadableCert::new(&resp.cert_pem, &key)?,
            validity: std::sync::Mutex::new(validity(&resp.cert_pem, now_s())?),
            ca_pem: ca,
            dir,
        }))
    }

    /// A client of the control plane: checked as `control.tend` against the cluster CA,
    /// presenting this agent's certificate.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let tls = tend_tls::client_config(&self.ca_pem, Some(CONTROL_NAME), Some(self.cert.clone()))?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(3))
            .build()?)
    }

    /// When the current certificate expires (s since the epoch).
    pub fn not_after_s(&self) -> i64 {
        self.validity.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Whether two thirds of the certificate's life have passed.
    pub fn due(&self, now_s: i64) -> bool {
        let (from, to) = *self.validity.lock().unwrap_or_else(|e| e.into_inner());
        now_s >= from + (to - from) * 2 / 3
    }

    /// Renews the certificate with a new key; connections use it from their next handshake.
    pub async fn renew(&self, id: &str, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        let (key, csr) = tend_tls::agent_csr(id)?;
        let req = JoinRequest { agent_id: id.to_string(), token: String::new(), csr_pem: csr };
        let r = http.post(format!("{base}/v1/agent/{id}/renew")).json(&req).send().await?;
        if !r.status().is_success() {
            bail!("renewal refused ({}): {}", r.status(), r.text().await.unwrap_or_default());
        }
        let resp: JoinResponse = r.json().await?;
        self.cert.set(&resp.cert_pem, &key)?;
        write_private(&self.dir.join("key.pem"), &key)?;
        write_private(&self.dir.join("cert.pem"), &resp.cert_pem)?;
        *self.validity.lock().unwrap_or_else(|e| e.into_inner()) = validity(&resp.cert_pem, now_s())?;
        tracing::info!(agent = %id, not_after_ms = resp.not_after_ms, "certificate renewed");
        Ok(())
    }
}

/// Joins: fetches the CA, compares it with the token's pin, sends a request for a certificate.
async fn join(id: &str, servers: &Servers, token: &str) -> anyhow::Result<(String, String, JoinResponse)> {
    let pin = match token.split('.').collect::<Vec<_>>()[..] {
        ["tend-join", _, pin] if pin.len() == 64 => pin.to_string(),
        _ => bail!("not a join token (expected tend-join.SECRET.PIN from `tend agent token create`)"),
    };
    let fetch = reqwest::Client::builder()
        .use_preconfigured_tls(tend_tls::fetch_config()?)
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut last = None;
    for base in servers.all() {
        let ca = match fetch.get(format!("{base}/v1/agent/ca")).send().await {
            Ok(r) if r.status().is_success() => r.text().await?,
            Ok(r) => {
                last = Some(anyhow::anyhow!("{base} answered {}", r.status()));
                continue;
            }
            Err(e) => {
                last = Some(anyhow::anyhow!("{base}: {e}"));
                continue;
            }
        };
        let got = tend_tls::fingerprint(&ca)?;
        if !subtle_eq(got.as_bytes(), pin.as_bytes()) {
            bail!(
                "the control plane at {base} has CA {got}, not the {pin} this join token pins: not joining"
            );
        }
        let (key, csr) = tend_tls::agent_csr(id)?;
        let tls = tend_tls::client_config(&ca, Some(CONTROL_NAME), None)?;
        let http =
            reqwest::Client::builder().use_preconfigured_tls(tls).timeout(Duration::from_secs(10)).build()?;
        let req = JoinRequest { agent_id: id.to_string(), token: token.to_string(), csr_pem: csr };
        let r = http.post(format!("{base}/v1/agent/join")).json(&req).send().await?;
        if !r.status().is_success() {
            bail!("join refused by {base} ({}): {}", r.status(), r.text().await.unwrap_or_default());
        }
        return Ok((ca, key, r.json().await?));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no control plane to join")))
}

fn subtle_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life_since_receipt() {
        let now = now_s();
        let ca = tend_tls::ClusterCa::generate(now).unwrap();
        let (_, csr) = tend_tls::agent_csr("a1").unwrap();
        let issued = ca.sign_agent(&csr, "a1", now, 60).unwrap();
        let (from, to) = validity(&issued.cert_pem, now).unwrap();
        assert_eq!((from, to), (now, now + 60), "counted from receipt, not the back-dated not_before");
        let (key, csr) = tend_tls::agent_csr("a1").unwrap();
        let cert = ca.sign_agent(&csr, "a1", now, 60).unwrap().cert_pem;
        let id = Identity {
            cert: ReloadableCert::new(&cert, &key).unwrap(),
            ca_pem: ca.cert_pem.clone(),
            dir: PathBuf::new(),
            validity: std::sync::Mutex::new((from, to)),
        };
        assert!(!id.due(now + 39));
        assert!(id.due(now + 40));
    }
}
