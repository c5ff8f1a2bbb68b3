//! The CLI's HTTP client: where the control plane is (flag, env, or `./.tend/`), its token, and
//! JSON calls that turn API errors into readable messages.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Connection settings shared by every client command.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// Control plane address (default: `.tend/address` in this directory).
    #[arg(long, env = "TEND_ADDR", global = true)]
    pub addr: Option<String>,
    /// API token (default: `.tend/token` in this directory).
    #[arg(long, env = "TEND_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) an https control plane is checked against (default: `.tend/ca.pem`
    /// when present, else the system's roots).
    #[arg(long, env = "TEND_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
}

pub struct Client {
    /// Control-plane members (`TEND_ADDR` may list several, comma-separated): any one serves
    /// (followers forward to the leader); the next is tried when one cannot be reached.
    bases: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    token: String,
    http: reqwest::Client,
}

impl Clone for Client {
    fn clone(&self) -> Client {
        Client {
            bases: self.bases.clone(),
            current: std::sync::atomic::AtomicUsize::new(
                self.current.load(std::sync::atomic::Ordering::Relaxed),
            ),
            token: self.token.clone(),
            http: self.http.clone(),
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Client {
    pub fn new(conn: &Conn) -> anyhow::Result<Client> {
        let dir = PathBuf::from(".tend");
        let Some(list) = conn.addr.clone().or_else(|| read_trim(&dir.join("address"))) else {
            bail!("no control plane address: pass --addr or TEND_ADDR, or run from the directory where `tend dev` keeps .tend/")
        };
        let token = conn
            .token
            .clone()
            .or_else(|| read_trim(&dir.join("token")))
            .context("no API token: pass --token or TEND_TOKEN, or run from the directory where `tend dev` keeps .tend/")?;
        let ca = conn.ca_cert.clone().or_else(|| Some(dir.join("ca.pem")).filter(|p| p.exists()));
        Client::with(&list, token, ca.as_deref())
    }

    /// `list`: one address or several, comma-separated (`http://` assumed when absent); an
    /// https one is checked against `ca` (a PEM file), or the system's roots without one.
    pub fn with(list: &str, token: String, ca: Option<&Path>) -> anyhow::Result<Client> {
        let bases = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                let a = if a.starts_with("http://") || a.starts_with("https://") {
                    a.to_string()
                } else {
                    format!("http://{a}")
                };
                a.trim_end_matches('/').to_string()
            })
            .collect();
        let tls = match ca {
            Some(p) => {
                let pem =
                    std::fs::read_to_string(p).with_context(|| format!("cannot read CA {}", p.display()))?;
                tend_tls::client_config(&pem, None, None)?
            }
            None => tend_tls::system_client_config(None)?,
        };
        // Bounded in time: a member that accepts a connection and then never answers (a host
        // gone mid-request) costs a command at most this, never forever. Streams are not cut:
        // the control plane sends them a keep-alive every 15 s.
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(std::time::Duration::from_secs(60))
            .build()?;
        Ok(Client { bases, current: Default::default(), token, http })
    }

    /// The member in use.
    pub fn base(&self) -> String {
        let i = self.current.load(std::sync::atomic::Ordering::SeqCst);
        self.bases.get(i % self.bases.len().max(1)).cloned().unwrap_or_default()
    }

    /// Sends to the member in use; one that cannot be reached (nothing was sent), or that has
    /// no leader, makes way for the next, once round the list.
    async fn send<T: DeserializeOwned>(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let bytes = self.send_raw(build).await?.bytes().await?;
        serde_json::from_slice(&bytes).with_context(|| "unexpected answer from the control plane")
    }

    /// A streamed answer (`GET path`, e.g. `/v1/events/stream`), resumed after `last_event_id`.
    pub async fn stream(&self, path: &str, last_event_id: Option<u64>) -> anyhow::Result<reqwest::Response> {
        self.send_raw(|b| {
            let r = self.http.get(format!("{b}{path}")).header("accept", "text/event-stream");
            match last_event_id {
                Some(id) => r.header("last-event-id", id.to_string()),
                None => r,
            }
        })
        .await
    }

    /// [`send`](Self::send) up to a successful answer, its body unread.
    async fn send_raw(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let n = self.bases.len().max(1);
        let mut tries = 0;
        // A control plane between leaders (an election takes up to its lease TTL) answers 503:
        // wait for the next one, up to this long.
        let patience = std::time::Instant::now() + std::time::Duration::from_secs(15);
        let r = loop {
            let base = self.base();
            tries += 1;
            match build(&base).bearer_auth(&self.token).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && tries < n => {}
                Ok(r)
                    if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && std::time::Instant::now() < patience =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                }
                Ok(r) => break r,
                Err(e) if (e.is_connect() || e.is_timeout()) && tries < n => {}
                Err(e) => return Err(anyhow::Error::new(e).context(Unreachable(base))),
            }
            self.current.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        let status = r.status();
        if !status.is_success() {
            let bytes = r.bytes().await?;
            if let Ok(e) = serde_json::from_slice::<tend_api::ErrorBody>(&bytes) {
                bail!("{} ({}): {}", e.error.code, status.as_u16(), e.error.message.trim_end());
            }
            bail!("the control plane answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(r)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(|b| self.http.get(format!("{b}{path}"))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(|b| self.http.post(format!("{b}{path}")).json(body)).await
    }

    pub async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(|b| self.http.put(format!("{b}{path}")).json(body)).await
    }

    pub async fn put_bytes<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        let body = bytes::Bytes::from(body); // Cloned per try without copying.
        self.send(|b| self.http.put(format!("{b}{path}")).body(body.clone())).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(|b| self.http.delete(format!("{b}{path}"))).await
    }

    /// The service a command is about: the one given, or the only one there is.
    pub async fn pick_service(&self, given: Option<String>) -> anyhow::Result<String> {
        if let Some(s) = given {
            return Ok(s);
        }
        let all: Vec<tend_api::ServiceSummary> = self.get("/v1/services").await?;
        match all.as_slice() {
            [one] => Ok(one.name.clone()),
            [] => bail!("no services are deployed"),
            many => bail!(
                "several services are deployed ({}): pass --service",
                many.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

/// The control plane did not answer at all (not an error it answered with): worth retrying
/// across a restart.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot reach the control plane at {}", self.0)
    }
}

/// Whether an error is the control plane not answering.
pub fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some()
}
