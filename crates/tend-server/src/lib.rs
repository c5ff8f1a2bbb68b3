//! The tend control plane's edge (`tend server`): the HTTP/JSON API for clients and agents, the
//! data directory (redb store, tokens, uploaded artifacts) and the system clock, around the
//! brain in `tend-control`. Nothing here decides: requests become calls on [`Control`], agents'
//! long polls and reports become calls on its [`AgentProtocol`](tend_control::agents::AgentProtocol).

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod dashboard;
pub mod ha;
pub mod metrics;
pub mod pki;
mod tokens;

pub use tend_tls::serve as listen;

use std::net::SocketAddr;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tend_model::{SharedClock, SystemClock};
use tend_store::StateStore;

pub use tend_control::{Control, ControlConfig};

/// How a control plane is set up: where it keeps its files, where it listens, and the brain's
/// settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub control: ControlConfig,
    /// Connection cap and header deadline of the API.
    pub bounds: listen::Bounds,
    /// Serve plain HTTP, agents authenticated by the cluster token (no TLS, no agent identity):
    /// for benchmarks and trusted networks only.
    pub plain_http: bool,
    /// Lifetime of the certificates issued to agents (they renew at two thirds of it).
    pub agent_cert_ttl_seconds: u64,
    /// Host names and addresses this member's certificate names, besides `control.tend` and
    /// loopback.
    pub tls_hosts: Vec<String>,
    /// A second listener for users only, with a certificate of their choosing.
    pub user_api: Option<UserApi>,
}

/// A listener for the user API presenting a user-given certificate (agents keep the cluster's).
#[derive(Clone)]
pub struct UserApi {
    pub listen: SocketAddr,
    pub tls: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for UserApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserApi").field("listen", &self.listen).finish_non_exhaustive()
    }
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            control: ControlConfig::default(),
            bounds: Default::default(),
            plain_http: false,
            agent_cert_ttl_seconds: 7 * 86_400,
            tls_hosts: Vec::new(),
            user_api: None,
        }
    }
}

/// What only the edge holds: files and secrets.
pub struct Edge {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub api_token: String,
    pub cluster_token: String,
    pub artifacts_dir: PathBuf,
    pub bounds: listen::Bounds,
    /// The store (fenced by leadership on a control plane of several members): named tokens.
    pub store: Arc<dyn StateStore>,
    /// The cluster CA and this member's certificate; `None` with `--plain-http`.
    pub pki: Option<Arc<pki::Pki>>,
    pub agent_cert_ttl_seconds: u64,
    /// This control plane's metrics (`/metrics`).
    pub metrics: Arc<metrics::Metrics>,
}

/// A running control plane with its HTTP edge. Derefs to its [`Control`].
#[derive(Clone)]
pub struct Server {
    pub control: Control,
    pub edge: Arc<Edge>,
}

impl Deref for Server {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.control
    }
}

/// Creates a data directory (and its parents) readable by its owner only (0700): it holds the
/// store, tokens and artifacts.
pub fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make {} private", dir.display()))
}

/// Opens the embedded store at `path`, a file readable by its owner only (0600): task env and
/// the cluster's tokens are in it.
pub fn open_redb(path: &std::path::Path, clock: SharedClock) -> anyhow::Result<Arc<dyn StateStore>> {
    use std::os::unix::fs::PermissionsExt;
    let store: Arc<dyn StateStore> = tend_store_redb::RedbStore::open(path, clock)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    Ok(store)
}

impl Server {
    /// Opens the data directory (redb store, tokens) with the system clock, and starts.
    pub async fn open(cfg: ServerConfig) -> anyhow::Result<Server> {
        private_dir(&cfg.data_dir)?;
        // An address file left by a control plane that died describes nobody: `serve` writes
        // the new one once it listens.
        let _ = std::fs::remove_file(cfg.data_dir.join("address"));
        let clock: SharedClock = Arc::new(SystemClock);
        let store = open_redb(&cfg.data_dir.join("server.redb"), clock.clone())?;
        Server::new(cfg, store, clock).await
    }

    /// Starts a control plane on `store` and `clock`, with its tokens and uploaded artifacts in
    /// `cfg.data_dir`.
    pub async fn new(
        cfg: ServerConfig,
        store: Arc<dyn StateStore>,
        clock: SharedClock,
    ) -> anyhow::Result<Server> {
        private_dir(&cfg.data_dir)?;
        let tokens = (
            tokens::token_file(&cfg.data_dir.join("token"))?,
            tokens::token_file(&cfg.data_dir.join("cluster-token"))?,
        );
        tokens::check_pair(&tokens.0, &tokens.1)?;
        let pki = match cfg.plain_http {
            true => None,
            false => Some(pki::Pki::shared(&*store, &cfg.data_dir, &cfg.tls_hosts).await?),
        };
        Server::with_tokens(cfg, store, clock, tokens, pki).await
    }

    /// Starts a control plane with the given (API, cluster) tokens.
    pub async fn with_tokens(
        cfg: ServerConfig,
        store: Arc<dyn StateStore>,
        clock: SharedClock,
        (api_token, cluster_token): (String, String),
        pki: Option<Arc<pki::Pki>>,
    ) -> anyhow::Result<Server> {
        let artifacts_dir = cfg.data_dir.join("artifacts");
        std::fs::create_dir_all(&artifacts_dir)?;
        let metrics = Arc::new(metrics::Metrics::new());
        let store = metrics::Metered::wrap(store, metrics.clone());
        let edge = Edge {
            api_token,
            cluster_token,
            artifacts_dir,
            data_dir: cfg.data_dir,
            listen: cfg.listen,
            bounds: cfg.bounds,
            store: store.clone(),
            pki,
            agent_cert_ttl_seconds: cfg.agent_cert_ttl_seconds,
            metrics: metrics.clone(),
        };
        let control = Control::new(cfg.control, store, clock).await?;
        let server = Server { control, edge: Arc::new(edge) };
        metrics.count_events(&server);
        Ok(server)
    }

    /// Serves the API until `shutdown` resolves. Writes `address` into the data directory.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.edge.listen)
            .await
            .with_context(|| format!("cannot listen on {}", self.edge.listen))?;
        let addr = listener.local_addr()?;
        let scheme = if self.edge.pki.is_some() { "https" } else { "http" };
        std::fs::write(self.edge.data_dir.join("address"), format!("{scheme}://{addr}\n"))?;
        tracing::info!(%addr, "control plane listening");
        let app = api::router(self.clone());
        let tls = self.edge.pki.as_ref().map(|p| p.server_tls.clone());
        listen::serve(listener, app, self.edge.bounds, tls, shutdown).await;
        Ok(())
    }

    /// The address written by `serve`.
    pub fn address(&self) -> Option<String> {
        std::fs::read_to_string(self.edge.data_dir.join("address")).ok().map(|s| s.trim().to_string())
    }
}

/// A client of the other members: over TLS (checked as `control.tend`, with this member's
/// certificate) unless the control plane runs plain HTTP.
pub fn member_client(
    pki: Option<&pki::Pki>,
    timeout: std::time::Duration,
) -> anyhow::Result<reqwest::Client> {
    match pki {
        Some(p) => p.client(None, timeout),
        None => Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tend_tls::plain_client_config()?)
            .timeout(timeout)
            .build()?),
    }
}
