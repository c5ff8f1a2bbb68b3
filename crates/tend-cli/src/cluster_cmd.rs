//! Running the parts of a cluster: `tend server`, `tend agent run`, and `tend dev` (control plane
//! + three local agents + embedded store in one process, deploying a spec).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use std::sync::Arc;
use tend_agent::AgentConfig;
use tend_api::AgentResources;

use tend_server::{Server, ServerConfig};
use tend_store::StateStore;

use crate::client::Client;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Options of `tend server`.
#[derive(clap::Args)]
pub struct ServerArgs {
    #[arg(long, default_value = ".tend")]
    pub data_dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: SocketAddr,
    /// Where the state lives: `redb` (the embedded store in DATA_DIR/server.redb; one member)
    /// or `etcd://HOST:PORT[,HOST:PORT…][/prefix]` (several members elect a leader).
    #[arg(long, default_value = "redb")]
    pub store: String,
    /// CA certificate (PEM) of a TLS-secured etcd.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) when etcd asks for one.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// This member's id, unique in the control plane (default: host name and port).
    #[arg(long)]
    pub id: Option<String>,
    /// The URL other members forward requests to (default: http://LISTEN).
    #[arg(long)]
    pub advertise: Option<String>,
    /// TTL of the leadership lease: a dead leader is replaced within it (keep-alive every third).
    #[arg(long, default_value_t = 5)]
    pub leader_ttl_seconds: i64,
    /// An agent silent for this long is lost.
    #[arg(long, default_value_t = 5)]
    pub agent_lost_after_seconds: u64,
    /// TTL of maintenance-run leases (renewed every TTL/10).
    #[arg(long, default_value_t = 30)]
    pub job_lease_ttl_seconds: i64,
    /// Take command of agents that obeyed another cluster (after a lost store): they then
    /// stop every task this control plane does not know.
    #[arg(long)]
    pub adopt_agents: bool,
    /// A deploy step waiting on an agent fails after this long, saying what it waited for.
    #[arg(long, default_value_t = 600)]
    pub step_deadline_seconds: u64,
    /// Open API connections at most (and at most ¾ of the open-file limit); more are closed.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// A request's headers must arrive within this long (slow clients, idle keep-alives dropped).
    #[arg(long, default_value_t = 10)]
    pub header_timeout_seconds: u64,
    /// Serve plain HTTP: no TLS, agents authenticated by the shared cluster token instead of
    /// their certificates. For benchmarks and trusted networks only.
    #[arg(long)]
    pub plain_http: bool,
    /// Lifetime of agents' certificates (renewed at two thirds of it).
    #[arg(long, default_value_t = 7 * 86_400)]
    pub agent_cert_ttl_seconds: u64,
    /// Another host name or address the member's certificate names (repeatable), for clients
    /// that reach it by a name other than loopback or its advertised host.
    #[arg(long = "tls-host")]
    pub tls_hosts: Vec<String>,
    /// A second listener for the user API (CLI, browsers, tools) presenting the certificate in
    /// --api-tls-cert (PEM chain) and --api-tls-key; agents keep using --listen.
    #[arg(long, requires_all = ["api_tls_cert", "api_tls_key"])]
    pub api_listen: Option<SocketAddr>,
    #[arg(long, requires = "api_listen")]
    pub api_tls_cert: Option<PathBuf>,
    #[arg(long, requires = "api_listen")]
    pub api_tls_key: Option<PathBuf>,
}

/// The store `--store` names, what `tend status` shows of it, and its health check.
async fn open_store(
    a: &ServerArgs,
    clock: tend_model::SharedClock,
) -> anyhow::Result<(Arc<dyn StateStore>, tend_api::StoreInfo, tend_server::ha::HealthCheck, bool)> {
    if a.store == "redb" {
        let path = a.data_dir.join("server.redb");
        tend_server::private_dir(&a.data_dir)?;
        let store = tend_server::open_redb(&path, clock)?;
        let info = tend_api::StoreInfo {
            backend: "redb".into(),
            location: path.display().to_string(),
            healthy: true,
            detail: String::new(),
        };
        let health: tend_server::ha::HealthCheck =
            Arc::new(|| Box::pin(async { Ok("embedded, this member only".to_string()) }));
        return Ok((store, info, health, true));
    }
    let mut cfg =
        tend_store_etcd::EtcdConfig::parse(&a.store).map_err(|e| anyhow::anyhow!("--store: {e}"))?;
    if a.etcd_ca.is_some() || a.etcd_cert.is_some() || a.etcd_key.is_some() {
        cfg.tls = Some(tend_store_etcd::EtcdTls {
            ca: a.etcd_ca.clone(),
            cert: a.etcd_cert.clone(),
            key: a.etcd_key.clone(),
        });
    }
    let etcd = tend_store_etcd::EtcdStore::connect(&cfg)
        .await
        .with_context(|| format!("cannot open the store on etcd {}", cfg.endpoints.join(",")))?;
    let info = tend_api::StoreInfo {
        backend: "etcd".into(),
        location: format!("{} (prefix {})", cfg.endpoints.join(","), cfg.prefix),
        healthy: true,
        detail: String::new(),
    };
    let probe = etcd.clone();
    let health: tend_server::ha::HealthCheck = Arc::new(move || {
        let probe = probe.clone();
        Box::pin(async move {
            probe
                .status()
                .await
                .map(|(v, leader)| format!("etcd {v}, raft leader {leader:x}"))
                .map_err(|e| e.to_string())
        })
    });
    Ok((etcd, info, health, false))
}

pub async fn server(a: ServerArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.job_lease_ttl_seconds >= 1, "--job-lease-ttl-seconds must be at least 1");
    anyhow::ensure!(a.step_deadline_seconds >= 1, "--step-deadline-seconds must be at least 1");
    anyhow::ensure!(a.leader_ttl_seconds >= 2, "--leader-ttl-seconds must be at least 2");
    let mut cfg = ServerConfig::new(&a.data_dir, a.listen);
    cfg.control.agent_lost_after_ms = a.agent_lost_after_seconds * 1000;
    cfg.control.job_lease_ttl_seconds = a.job_lease_ttl_seconds;
    cfg.control.adopt_agents = a.adopt_agents;
    cfg.control.step_deadline_ms = a.step_deadline_seconds * 1000;
    anyhow::ensure!(a.max_connections >= 16, "--max-connections must be at least 16");
    anyhow::ensure!(a.header_timeout_seconds >= 1, "--header-timeout-seconds must be at least 1");
    cfg.bounds = tend_server::listen::Bounds {
        max_connections: a.max_connections,
        header_timeout: std::time::Duration::from_secs(a.header_timeout_seconds),
    };
    anyhow::ensure!(a.agent_cert_ttl_seconds >= 60, "--agent-cert-ttl-seconds must be at least 60");
    cfg.plain_http = a.plain_http;
    cfg.agent_cert_ttl_seconds = a.agent_cert_ttl_seconds;
    cfg.tls_hosts = a.tls_hosts.clone();
    if let (Some(listen), Some(cert), Some(key)) = (a.api_listen, &a.api_tls_cert, &a.api_tls_key) {
        let read =
            |p: &PathBuf| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
        let tls = tend_tls::user_server_config(&read(cert)?, &read(key)?)
            .context("--api-tls-cert/--api-tls-key")?;
        cfg.user_api = Some(tend_server::UserApi { listen, tls: Arc::new(tls) });
    }
    // An address file left by a member that died describes nobody.
    let _ = std::fs::remove_file(a.data_dir.join("address"));
    let clock: tend_model::SharedClock = Arc::new(tend_model::SystemClock);
    let (store, store_info, health, exclusive_store) = open_store(&a, clock.clone()).await?;
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let id = a
        .id
        .clone()
        .unwrap_or_else(|| format!("{}-{}", if host.is_empty() { "tend" } else { &host }, a.listen.port()));
    anyhow::ensure!(tend_spec::decode::valid_name(&id), "--id `{id}`: use lowercase letters, digits and `-`");
    let scheme = if a.plain_http { "http" } else { "https" };
    let advertise = a.advertise.clone().unwrap_or_else(|| format!("{scheme}://{}", a.listen));
    let member_cfg = tend_server::ha::MemberConfig {
        server: cfg,
        id,
        advertise,
        ttl_seconds: a.leader_ttl_seconds,
        exclusive_store,
        store_info,
    };
    let member = tend_server::ha::Member::new(member_cfg, store, clock, health).await?;
    let run = tokio::spawn(member.clone().run(shutdown_signal()));
    let address = a.data_dir.join("address");
    for _ in 0..200 {
        if address.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    outln!(
        "tend control plane member {} listening on {} (store {}; API token in {d}/token, cluster token in {d}/cluster-token)",
        member.cfg.id,
        std::fs::read_to_string(&address).unwrap_or_default().trim(),
        a.store,
        d = a.data_dir.display(),
    );
    run.await??;
    Ok(ExitCode::SUCCESS)
}

/// Options of an agent.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Control plane URL, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    pub server: String,
    /// A single-use join token from `tend agent token create` (https control planes; needed
    /// once: the certificate it gets is kept in DATA_DIR/tls).
    #[arg(long, env = "TEND_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    #[arg(long)]
    pub join_token_file: Option<PathBuf>,
    /// The cluster token, for a control plane run with --plain-http (or --cluster-token-file).
    #[arg(long, env = "TEND_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    #[arg(long)]
    pub cluster_token_file: Option<PathBuf>,
    /// A CA certificate (PEM) trusted for https:// artifacts besides the system's roots.
    #[arg(long)]
    pub artifact_ca: Option<PathBuf>,
    /// Unique id of this agent.
    #[arg(long)]
    pub id: String,
    /// Attributes, e.g. --attr zone=a (repeatable).
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
    #[arg(long, default_value_t = 4.0)]
    pub cpus: f64,
    #[arg(long, default_value_t = 8192)]
    pub memory_mb: u64,
    #[arg(long, default_value_t = 100_000)]
    pub disk_mb: u64,
    /// Port range handed to tasks, LO-HI.
    #[arg(long, default_value = "20000-20999")]
    pub ports: String,
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Where the agent serves logs to the control plane.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Host clients use to reach this agent's tasks.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Serve Prometheus metrics (tasks by state, restarts in place, crash loops, job runs,
    /// contact age, certificate expiry) at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
}

fn parse_ports(s: &str) -> anyhow::Result<[u16; 2]> {
    let (lo, hi) = s.split_once('-').context("--ports must be LO-HI, e.g. 20000-20999")?;
    let lo: u16 = lo.trim().parse().context("--ports: LO is not a port number")?;
    let hi: u16 = hi.trim().parse().context("--ports: HI is not a port number")?;
    anyhow::ensure!(0 < lo && lo <= hi, "--ports: need 0 < LO <= HI");
    Ok([lo, hi])
}

fn secret(value: &Option<String>, file: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    Ok(match (value, file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    })
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let plain = a.server.split(',').any(|u| u.trim().starts_with("http://"));
    let token = secret(&a.cluster_token, &a.cluster_token_file)?;
    let token = match (plain, token) {
        (true, Some(t)) => t,
        (true, None) => anyhow::bail!(
            "a plain-HTTP control plane needs --cluster-token, TEND_CLUSTER_TOKEN or --cluster-token-file"
        ),
        (false, _) => String::new(),
    };
    let artifact_ca_pem = match &a.artifact_ca {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?),
        None => None,
    };
    let mut attributes = BTreeMap::new();
    for kv in &a.attrs {
        let (k, v) = kv.split_once('=').with_context(|| format!("--attr {kv}: expected KEY=VALUE"))?;
        attributes.insert(k.to_string(), v.to_string());
    }
    let cfg = AgentConfig {
        id: a.id,
        server: a.server.trim_end_matches('/').to_string(),
        cluster_token: token,
        join_token: secret(&a.join_token, &a.join_token_file)?,
        artifact_ca_pem,
        host: a.host,
        attributes,
        resources: AgentResources {
            cpus: a.cpus,
            memory_mb: a.memory_mb,
            disk_mb: a.disk_mb,
            port_range: parse_ports(&a.ports)?,
        },
        data_dir: a.data_dir,
        listen: a.listen,
        metrics_listen: a.metrics_listen,
    };
    tend_agent::run(cfg, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// `tend dev SPEC`: everything in one process, on 127.0.0.1 only.
pub async fn dev(
    spec: &Path,
    data_dir: PathBuf,
    addr: SocketAddr,
    agents: usize,
    adopt_agents: bool,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "tend dev listens on loopback only; --addr must be 127.0.0.1:PORT"
    );
    // Check the spec before starting anything.
    let text = std::fs::read_to_string(spec).with_context(|| format!("cannot read {}", spec.display()))?;
    if let Err(r) = tend_spec::load_service(&spec.display().to_string(), &text) {
        eprint!("{}", r.render());
        return Ok(ExitCode::from(1));
    }
    let mut cfg = ServerConfig::new(&data_dir, addr);
    cfg.control.adopt_agents = adopt_agents;
    let server = Server::open(cfg).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut srv_stop = stop_rx.clone();
    let s2 = server.clone();
    let serve = tokio::spawn(async move {
        s2.serve(async move {
            let _ = srv_stop.changed().await;
        })
        .await
    });
    let mut address = None;
    for _ in 0..300 {
        address = server.address();
        if address.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let address = address.context("the control plane did not start")?;
    let zones = ["a", "b", "c"];
    let mut handles = Vec::new();
    let client = Client::with(&address, server.edge.api_token.clone(), Some(&data_dir.join("ca.pem")))?;
    for i in 0..agents {
        let zone = zones[i % zones.len()];
        let id = format!("{zone}{}", i / zones.len() + 1);
        let lo = 21_000 + (i as u16) * 1000;
        let cfg = AgentConfig {
            id: id.clone(),
            server: address.clone(),
            cluster_token: server.edge.cluster_token.clone(),
            // Agents join as on a real cluster: each with its own single-use token.
            join_token: Some(join_token(&client, 600).await?.token),
            artifact_ca_pem: None,
            host: "127.0.0.1".into(),
            attributes: [("zone".to_string(), zone.to_string())].into(),
            resources: AgentResources {
                cpus: 4.0,
                memory_mb: 8192,
                disk_mb: 100_000,
                port_range: [lo, lo + 999],
            },
            data_dir: data_dir.join("agents").join(&id),
            listen: "127.0.0.1:0".parse()?,
            metrics_listen: None,
        };
        let mut rx = stop_rx.clone();
        handles.push(tokio::spawn(async move {
            tend_agent::run(cfg, async move {
                let _ = rx.changed().await;
            })
            .await
        }));
    }
    println!(
        "tend dev: control plane on {address}, {agents} agents (zones a, b, c), data in {}",
        data_dir.display()
    );
    println!(
        "  API token in {}/token — from this directory, `tend pod list` needs no flags",
        data_dir.display()
    );
    println!(
        "  dashboard: {address}/ui/ — sign in with that token (the certificate is signed by the cluster CA, {}/ca.pem)",
        data_dir.display()
    );
    let deployed = async {
        let (name, generation) = crate::service_cmd::submit(&client, spec, false).await?;
        let how = crate::service_cmd::follow_rollout(&client, &name, generation, false, None).await?;
        anyhow::Ok((name, how == crate::service_cmd::Followed::Deployed))
    };
    tokio::select! {
        r = deployed => match r {
            Ok((name, true)) => println!("service `{name}` deployed; Ctrl-C stops every task and exits"),
            Ok((name, false)) => println!("the deploy of `{name}` failed (see `tend plan show`); still running, Ctrl-C to stop"),
            Err(e) => println!("deploy failed: {e:#}; still running, Ctrl-C to stop"),
        },
        _ = shutdown_signal() => {
            println!("stopping");
            let _ = stop_tx.send(true);
            for h in handles { let _ = h.await; }
            let _ = serve.await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    shutdown_signal().await;
    println!("stopping every task");
    let _ = stop_tx.send(true);
    for h in handles {
        let _ = h.await;
    }
    let _ = serve.await;
    println!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `tend status`: the control plane as the member reached sees it.
pub async fn status(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let st: tend_api::ClusterStatus = client.get("/v1/cluster").await?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(ExitCode::SUCCESS);
    }
    let leader = st.leader.as_deref().unwrap_or("none elected");
    outln!("leader {leader} (epoch {}); answered by {} ({})", st.epoch, st.answered_by, st.role);
    let health = if st.store.healthy { "healthy" } else { "UNHEALTHY" };
    outln!("store  {} at {}: {health} ({})", st.store.backend, st.store.location, st.store.detail);
    outln!("{:<24} {:<8} URL", "MEMBER", "ROLE");
    for m in &st.members {
        outln!("{:<24} {:<8} {}", m.id, if m.leader { "leader" } else { "follower" }, m.url);
    }
    Ok(ExitCode::SUCCESS)
}

/// A single-use join token valid `ttl_seconds`.
pub async fn join_token(client: &Client, ttl_seconds: u64) -> anyhow::Result<tend_api::JoinTokenCreated> {
    client.post("/v1/agent-tokens", &tend_api::JoinTokenRequest { ttl_seconds }).await
}
