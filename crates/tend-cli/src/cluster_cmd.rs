//! Running the parts of a cluster: `tend server`, `tend agent run`, and `tend dev` (control plane
//! + three local agents + embedded store in one process, deploying a spec).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use tend_agent::AgentConfig;
use tend_api::AgentResources;
use tend_server::{Server, ServerConfig};

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
pub struct ServerOpts {
    pub lost_after_seconds: u64,
    pub job_lease_ttl_seconds: i64,
    pub adopt_agents: bool,
    pub step_deadline_seconds: u64,
}

pub async fn server(data_dir: PathBuf, listen: SocketAddr, o: ServerOpts) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(o.job_lease_ttl_seconds >= 1, "--job-lease-ttl-seconds must be at least 1");
    anyhow::ensure!(o.step_deadline_seconds >= 1, "--step-deadline-seconds must be at least 1");
    let mut cfg = ServerConfig::new(&data_dir, listen);
    cfg.control.agent_lost_after_ms = o.lost_after_seconds * 1000;
    cfg.control.job_lease_ttl_seconds = o.job_lease_ttl_seconds;
    cfg.control.adopt_agents = o.adopt_agents;
    cfg.control.step_deadline_ms = o.step_deadline_seconds * 1000;
    let server = Server::open(cfg).await?;
    let s2 = server.clone();
    let serve = tokio::spawn(async move { s2.serve(shutdown_signal()).await });
    for _ in 0..200 {
        if server.address().is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "tend control plane listening on {} (data in {}; API token in {}/token, cluster token in {}/cluster-token)",
        server.address().unwrap_or_default(),
        data_dir.display(),
        data_dir.display(),
        data_dir.display()
    );
    serve.await??;
    Ok(ExitCode::SUCCESS)
}

/// Options of an agent.
#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// Control plane URL, e.g. http://127.0.0.1:7070.
    #[arg(long)]
    pub server: String,
    /// The cluster token (or use --cluster-token-file).
    #[arg(long, env = "TEND_CLUSTER_TOKEN", hide_env_values = true)]
    pub cluster_token: Option<String>,
    #[arg(long)]
    pub cluster_token_file: Option<PathBuf>,
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
}

fn parse_ports(s: &str) -> anyhow::Result<[u16; 2]> {
    let (lo, hi) = s.split_once('-').context("--ports must be LO-HI, e.g. 20000-20999")?;
    let lo: u16 = lo.trim().parse().context("--ports: LO is not a port number")?;
    let hi: u16 = hi.trim().parse().context("--ports: HI is not a port number")?;
    anyhow::ensure!(0 < lo && lo <= hi, "--ports: need 0 < LO <= HI");
    Ok([lo, hi])
}

pub async fn agent(a: AgentArgs) -> anyhow::Result<ExitCode> {
    let token = match (&a.cluster_token, &a.cluster_token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))?
            .trim()
            .to_string(),
        (None, None) => anyhow::bail!("pass --cluster-token, TEND_CLUSTER_TOKEN or --cluster-token-file"),
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
    for i in 0..agents {
        let zone = zones[i % zones.len()];
        let id = format!("{zone}{}", i / zones.len() + 1);
        let lo = 21_000 + (i as u16) * 1000;
        let cfg = AgentConfig {
            id: id.clone(),
            server: address.clone(),
            cluster_token: server.edge.cluster_token.clone(),
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
    let client = Client::with(address.clone(), server.edge.api_token.clone());
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
