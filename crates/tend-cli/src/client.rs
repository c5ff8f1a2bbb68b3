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
}

pub struct Client {
    pub base: String,
    token: String,
    http: reqwest::Client,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Client {
    pub fn new(conn: &Conn) -> anyhow::Result<Client> {
        let dir = PathBuf::from(".tend");
        let base = match conn.addr.clone().or_else(|| read_trim(&dir.join("address"))) {
            Some(a) if a.starts_with("http://") || a.starts_with("https://") => a,
            Some(a) => format!("http://{a}"),
            None => bail!("no control plane address: pass --addr or TEND_ADDR, or run from the directory where `tend dev` keeps .tend/"),
        };
        let token = conn
            .token
            .clone()
            .or_else(|| read_trim(&dir.join("token")))
            .context("no API token: pass --token or TEND_TOKEN, or run from the directory where `tend dev` keeps .tend/")?;
        Ok(Client::with(base.trim_end_matches('/').to_string(), token))
    }

    pub fn with(base: String, token: String) -> Client {
        Client { base, token, http: reqwest::Client::new() }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let r = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| anyhow::Error::new(e).context(Unreachable(self.base.clone())))?;
        let status = r.status();
        let bytes = r.bytes().await?;
        if !status.is_success() {
            if let Ok(e) = serde_json::from_slice::<tend_api::ErrorBody>(&bytes) {
                bail!("{} ({}): {}", e.error.code, status.as_u16(), e.error.message.trim_end());
            }
            bail!("the control plane answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| "unexpected answer from the control plane")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn put_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).json(body)).await
    }

    pub async fn put_bytes<T: DeserializeOwned>(&self, path: &str, body: Vec<u8>) -> anyhow::Result<T> {
        self.send(self.http.put(format!("{}{path}", self.base)).body(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base))).await
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
