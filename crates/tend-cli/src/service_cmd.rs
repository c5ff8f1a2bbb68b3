//! Client commands against a control plane: service deploy/list/status/endpoints/delete, plans,
//! pods, agents, task logs and events. Tables by default, `--json` everywhere.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tend_api::*;

use crate::client::Client;

pub(crate) fn json_out<T: serde::Serialize>(v: &T) -> anyhow::Result<ExitCode> {
    outln!("{}", serde_json::to_string_pretty(v)?);
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks a spec, with the digests of its local artifacts (uploaded when `upload`).
async fn request(
    client: &Client,
    file: &Path,
    upload: bool,
    allow_data_loss: bool,
) -> anyhow::Result<(tend_spec::ServiceSpec, ServiceRequest)> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let label = file.display().to_string();
    let spec = match tend_spec::load_service(&label, &text) {
        Ok(s) => s,
        Err(r) => bail!("the spec is not valid:\n{}", r.render()),
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let mut artifacts = BTreeMap::new();
    for a in spec.pods.iter().flat_map(|p| p.artifacts.iter()) {
        if a.uri.contains("://") || artifacts.contains_key(&a.uri) {
            continue;
        }
        let path = base.join(&a.uri);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("artifact {}: cannot read {}", a.uri, path.display()))?;
        let sha = hex::encode(Sha256::digest(&bytes));
        if let Some(want) = &a.sha256 {
            if want != &sha {
                bail!("artifact {}: the file has sha256 {sha}, the spec says {want}", a.uri);
            }
        }
        if upload {
            let _: serde_json::Value = client.put_bytes(&format!("/v1/artifacts/{sha}"), bytes).await?;
        }
        artifacts.insert(a.uri.clone(), sha);
    }
    let req = ServiceRequest {
        spec: text,
        file: Some(label),
        artifacts,
        expected_generation: None,
        allow_data_loss,
    };
    Ok((spec, req))
}

/// Uploads the spec's local artifacts and submits it; returns the service name and the
/// generation it became. `allow_data_loss`: accept shrinking or removing a deployed volume.
pub async fn submit(client: &Client, file: &Path, allow_data_loss: bool) -> anyhow::Result<(String, u64)> {
    let (spec, req) = request(client, file, true, allow_data_loss).await?;
    let exists = client.get::<ServiceSummary>(&format!("/v1/services/{}", spec.name)).await.is_ok();
    let summary: ServiceSummary = if exists {
        client.put_json(&format!("/v1/services/{}", spec.name), &req).await?
    } else {
        client.post("/v1/services", &req).await?
    };
    Ok((summary.name, summary.generation))
}

/// How a followed generation ended.
#[derive(Debug, PartialEq)]
pub enum Followed {
    Deployed,
    /// A step failed and nothing was rolled back (it is retried; fix the spec).
    Failed(String),
    /// It failed and was rolled back (the rollback is complete).
    RolledBack {
        to: u64,
        why: String,
    },
    /// A newer generation replaced it before it completed.
    Superseded(u64),
}

/// How long `follow_rollout` keeps trying a control plane that does not answer (a restart).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Follows exactly `generation` of `service` (never an earlier one's plan) until it is deployed,
/// has failed, was rolled back (and the rollback is done) or was superseded. Reconnects across a
/// control-plane restart.
pub async fn follow_rollout(
    client: &Client,
    service: &str,
    generation: u64,
    json: bool,
    timeout: Option<Duration>,
) -> anyhow::Result<Followed> {
    let mut progress = Progress::new(json);
    let t0 = Instant::now();
    let mut down_since: Option<Instant> = None;
    // Re-read on every event of the service (steps completing, launches, failures); a ready
    // task makes no event until its step completes, so also every second.
    let wake = crate::follow::Wake::start(client, Some(service)).await;
    loop {
        let r = match client.get::<RolloutInfo>(&format!("/v1/services/{service}/rollout")).await {
            Ok(r) => r,
            Err(e) if crate::client::unreachable(&e) => {
                let since = *down_since.get_or_insert_with(|| {
                    progress.note(&format!("{e:#}; retrying"));
                    Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.context(format!("no answer for {} s", RECONNECT_FOR.as_secs())));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if down_since.take().is_some() {
            progress.note("control plane back; following on");
        }
        let ours = r.generation == generation;
        let rollback_of_ours = r.rollback_from == Some(generation);
        if !ours && !rollback_of_ours && r.generation > generation {
            return Ok(Followed::Superseded(r.generation));
        }
        if r.generation >= generation {
            if let (true, Ok(info)) =
                (r.started, client.get::<PlanInfo>(&format!("/v1/services/{service}/plans/{}", r.plan)).await)
            {
                progress.show(&info, r.generation);
            }
            match (r.state, rollback_of_ours) {
                (RolloutState::Complete, false) => return Ok(progress.done(Followed::Deployed)),
                (RolloutState::Complete, true) => {
                    let why = r.message.unwrap_or_default();
                    return Ok(progress.done(Followed::RolledBack { to: r.rollback_to.unwrap_or(0), why }));
                }
                (RolloutState::Failed, false) => {
                    return Ok(progress.done(Followed::Failed(r.message.unwrap_or_default())))
                }
                (RolloutState::Failed, true) => {
                    let why = format!("its rollback failed too: {}", r.message.unwrap_or_default());
                    return Ok(progress.done(Followed::Failed(why)));
                }
                (RolloutState::InProgress, _) => {}
            }
        }
        if timeout.is_some_and(|t| t0.elapsed() > t) {
            bail!(
                "generation {generation} of {service} is still rolling out after {:?}",
                timeout.unwrap_or_default()
            );
        }
        wake.wait(Duration::from_secs(1)).await;
    }
}

/// Plan progress on a terminal (bars), as plain lines, or as JSON lines.
struct Progress {
    json: bool,
    tty: bool,
    multi: indicatif::MultiProgress,
    bars: BTreeMap<String, indicatif::ProgressBar>,
    last: BTreeMap<String, (StepStatus, Option<String>)>,
    t0: Instant,
}

impl Progress {
    fn new(json: bool) -> Progress {
        Progress {
            json,
            tty: std::io::stdout().is_terminal() && !json,
            multi: indicatif::MultiProgress::new(),
            bars: BTreeMap::new(),
            last: BTreeMap::new(),
            t0: Instant::now(),
        }
    }

    fn note(&self, msg: &str) {
        if self.json {
            outln!("{}", serde_json::json!({ "event": "note", "message": msg }));
        } else if self.tty {
            let _ = self.multi.println(msg);
        } else {
            outln!("[{:>6.1}s] {msg}", self.t0.elapsed().as_secs_f64());
        }
    }

    fn bar(&mut self, key: &str, len: u64, label: String) -> &indicatif::ProgressBar {
        let multi = &self.multi;
        self.bars.entry(key.to_string()).or_insert_with(|| {
            let style = indicatif::ProgressStyle::with_template(
                "{prefix:<22} [{bar:30}] {pos}/{len} {msg} {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            let pb = multi.add(indicatif::ProgressBar::new(len).with_style(style));
            pb.set_prefix(label);
            pb
        })
    }

    fn show(&mut self, info: &PlanInfo, generation: u64) {
        for ph in &info.phases {
            let key = format!("{generation}/{}/{}", info.name, ph.name);
            if self.tty {
                let done = ph.steps.iter().filter(|s| s.status == StepStatus::Complete).count() as u64;
                let active: Vec<String> = ph
                    .steps
                    .iter()
                    .filter(|s| !matches!(s.status, StepStatus::Complete | StepStatus::Pending))
                    .map(|s| format!("{} {}", s.name, s.status))
                    .collect();
                let pb = self.bar(&key, ph.steps.len() as u64, format!("{} {}", info.name, ph.name));
                pb.set_position(done);
                pb.set_message(active.join(", "));
            }
            for s in &ph.steps {
                let step_key = format!("{key}/{}", s.name);
                let now = (s.status, s.message.clone());
                if self.last.get(&step_key) == Some(&now) {
                    continue;
                }
                if self.json {
                    outln!(
                        "{}",
                        serde_json::json!({ "event": "step", "generation": generation, "plan": info.name, "phase": ph.name, "step": s.name, "status": s.status, "message": s.message })
                    );
                } else if !self.tty {
                    let msg = s.message.as_ref().map(|m| format!(" — {m}")).unwrap_or_default();
                    outln!(
                        "[{:>6.1}s] {:<8} {:<14} {:<14} {}{msg}",
                        self.t0.elapsed().as_secs_f64(),
                        info.name,
                        ph.name,
                        s.name,
                        s.status
                    );
                } else if let Some(m) = &s.message {
                    let _ = self.multi.println(format!("{} {}: {}", s.name, s.status, m));
                }
                self.last.insert(step_key, now);
            }
        }
    }

    fn done(&self, how: Followed) -> Followed {
        for pb in self.bars.values() {
            if how == Followed::Deployed {
                pb.finish();
            } else {
                pb.abandon();
            }
        }
        how
    }
}

/// `tend service plan FILE`: what deploying it would do, per instance.
pub async fn preview(
    client: &Client,
    file: &Path,
    allow_data_loss: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (spec, req) = request(client, file, false, allow_data_loss).await?;
    let p: ChangePreview = client.post(&format!("/v1/services/{}/plan", spec.name), &req).await?;
    let count = |a: ChangeAction| p.changes.iter().filter(|c| c.action == a).count();
    let code = if count(ChangeAction::Refused) > 0 {
        1
    } else if count(ChangeAction::Restart) + count(ChangeAction::New) + count(ChangeAction::Decommission) > 0
    {
        2
    } else {
        0
    };
    if json {
        json_out(&p)?;
        return Ok(ExitCode::from(code));
    }
    let next = if p.generation == 0 {
        "new service".to_string()
    } else {
        format!("generation {} → {}", p.generation, p.generation + 1)
    };
    outln!("service `{}`: {next}, rolled out by its {} plan", p.service, p.plan);
    for c in &p.changes {
        let action = match c.action {
            ChangeAction::Unchanged => "unchanged",
            ChangeAction::Restart => "restart in place",
            ChangeAction::New => "new instance",
            ChangeAction::Decommission => "decommission",
            ChangeAction::Refused => "refused",
        };
        let data = match c.data {
            DataFate::Kept => "data kept",
            DataFate::CreatedEmpty => "volumes created empty",
            DataFate::Retained => "volumes retained",
            DataFate::None => "no volumes",
        };
        outln!("  {:<16} {:<17} {data}", c.instance, action);
        for f in &c.fields {
            outln!("      {}: {} → {}", f.path, f.old, f.new);
        }
        if let Some(r) = &c.reason {
            outln!("      {r}");
        }
    }
    outln!(
        "{} to restart, {} new, {} to decommission, {} unchanged, {} refused",
        count(ChangeAction::Restart),
        count(ChangeAction::New),
        count(ChangeAction::Decommission),
        count(ChangeAction::Unchanged),
        count(ChangeAction::Refused)
    );
    Ok(ExitCode::from(code))
}

/// What `service deploy` was asked.
pub struct DeployArgs<'a> {
    pub file: &'a Path,
    pub wait: bool,
    pub allow_data_loss: bool,
}

pub async fn deploy(client: &Client, args: DeployArgs<'_>, json: bool) -> anyhow::Result<ExitCode> {
    let (file, wait) = (args.file, args.wait);
    let (name, generation) = submit(client, file, args.allow_data_loss).await?;
    if !json {
        outln!("service `{name}` generation {generation} submitted; following its rollout");
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let how = follow_rollout(client, &name, generation, json, None).await?;
    let (code, line) = match &how {
        Followed::Deployed => (0, format!("generation {generation} of `{name}` deployed")),
        Followed::Failed(why) => (1, format!("generation {generation} of `{name}` failed: {why}")),
        Followed::RolledBack { to, why } => {
            (1, format!("generation {generation} of `{name}` failed and was rolled back to generation {to}'s spec: {why}"))
        }
        Followed::Superseded(n) => (1, format!("generation {generation} of `{name}` was replaced by generation {n} before it completed")),
    };
    if json {
        outln!(
            "{}",
            serde_json::json!({ "event": "result", "service": name, "generation": generation, "result": format!("{how:?}"), "message": line })
        );
    } else if code == 0 {
        outln!("{line}");
    } else {
        eprintln!("error: {line}");
    }
    Ok(ExitCode::from(code))
}

pub async fn list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let all: Vec<ServiceSummary> = client.get("/v1/services").await?;
    if json {
        return json_out(&all);
    }
    outln!("{:<20} {:>10} {:>9} {:>8}  PLANS", "SERVICE", "GENERATION", "INSTANCES", "RUNNING");
    for s in all {
        let plans: Vec<String> = s.plans.iter().map(|p| format!("{}={}", p.name, p.status)).collect();
        let plans = match &s.error {
            Some(e) => format!("ERROR: {e}"),
            None => plans.join(" "),
        };
        outln!("{:<20} {:>10} {:>9} {:>8}  {plans}", s.name, s.generation, s.instances, s.running);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(client: &Client, name: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let name = client.pick_service(name).await?;
    let s: ServiceSummary = client.get(&format!("/v1/services/{name}")).await?;
    if json {
        return json_out(&s);
    }
    outln!(
        "service {} (generation {}): {}/{} instances running",
        s.name,
        s.generation,
        s.running,
        s.instances
    );
    for p in &s.pods {
        outln!("  pod {:<14} count {:<4} config {}", p.name, p.count, p.config);
    }
    for p in &s.plans {
        outln!("  plan {:<13} {}", p.name, p.status);
    }
    if let Some(e) = &s.error {
        outln!("  ERROR: {e}");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn endpoints(client: &Client, name: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let name = client.pick_service(name).await?;
    let eps: Vec<Endpoint> = client.get(&format!("/v1/services/{name}/endpoints")).await?;
    if json {
        return json_out(&eps);
    }
    outln!("{:<16} {:<10} {:<6} ADDRESSES", "INSTANCE", "TASK", "READY");
    for e in eps {
        let addrs: Vec<String> = e.ports.iter().map(|(n, p)| format!("{n}={}:{p}", e.host)).collect();
        outln!("{:<16} {:<10} {:<6} {}", e.instance, e.task, e.ready, addrs.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

/// Deletes a service; exit 1 when some agent did not confirm the stop in time.
pub async fn delete(client: &Client, name: &str, force: bool, json: bool) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = client.delete(&format!("/v1/services/{name}?force={force}")).await?;
    let confirmed = v["confirmed"].as_bool().unwrap_or(false);
    if json {
        json_out(&v)?;
    } else {
        let n = &v["stopped_instances"];
        if confirmed {
            outln!("service `{name}` deleted; {n} instance(s) stopped, confirmed by their agents");
        } else {
            let agents: Vec<&str> = v["unconfirmed_agents"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            outln!(
                "service `{name}` deleted; {n} instance(s) told to stop, not yet confirmed by agent(s) {} (they stop them when they next hear from the control plane)",
                agents.join(", ")
            );
        }
        let vols: Vec<&str> = v["retained_volumes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        if !vols.is_empty() {
            outln!("volumes retained (see `tend volume list`): {}", vols.join(", "));
        }
    }
    Ok(if confirmed { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub(crate) fn ago(now_ms: u64, t: u64) -> String {
    let s = now_ms.saturating_sub(t) / 1000;
    if s >= 86_400 {
        format!("{}d ago", s / 86_400)
    } else if s >= 3600 {
        format!("{}h ago", s / 3600)
    } else {
        format!("{s}s ago")
    }
}

fn until(now_ms: u64, t: Option<u64>) -> String {
    match t {
        None => "forever".into(),
        Some(t) if t <= now_ms => "now".into(),
        Some(t) => {
            let s = (t - now_ms) / 1000;
            if s >= 86_400 {
                format!("in {}d{}h", s / 86_400, s % 86_400 / 3600)
            } else if s >= 3600 {
                format!("in {}h{}m", s / 3600, s % 3600 / 60)
            } else {
                format!("in {s}s")
            }
        }
    }
}

pub async fn volume_list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let vols: Vec<VolumeInfo> = client.get("/v1/volumes").await?;
    if json {
        return json_out(&vols);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    outln!(
        "{:<9} {:<12} {:<14} {:<8} {:>8} {:<9} {:<10} {:<10} REASON",
        "ID",
        "SERVICE",
        "INSTANCE",
        "AGENT",
        "SIZE_MB",
        "STATE",
        "SINCE",
        "DELETED"
    );
    for v in vols {
        let since = v.since_ms.map_or_else(|| ago(now, v.created_ms), |t| ago(now, t));
        let (state, deleted) = match v.state {
            VolumeLife::Retained => ("retained", until(now, v.until_ms)),
            VolumeLife::Deleting => ("deleting", "now".into()),
            VolumeLife::Active => ("active", "-".into()),
        };
        outln!(
            "{:<9} {:<12} {:<14} {:<8} {:>8} {:<9} {:<10} {:<10} {}",
            v.id,
            v.service,
            v.instance,
            v.agent,
            v.size_mb,
            state,
            since,
            deleted,
            v.reason.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn volume_delete(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v: VolumeInfo = client.delete(&format!("/v1/volumes/{id}")).await?;
    if json {
        return json_out(&v);
    }
    outln!(
        "volume {} of {}/{} on agent {}: to be deleted by its agent",
        v.id,
        v.service,
        v.instance,
        v.agent
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn plan_show(
    client: &Client,
    service: Option<String>,
    plan: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let plans: Vec<PlanInfo> = match plan {
        Some(p) => vec![client.get(&format!("/v1/services/{service}/plans/{p}")).await?],
        None => client.get(&format!("/v1/services/{service}/plans")).await?,
    };
    if json {
        return json_out(&plans);
    }
    for p in plans {
        let i = if p.interrupted { " (interrupted)" } else { "" };
        outln!("plan {} of {}: {}{i}", p.name, p.service, p.status);
        for ph in p.phases {
            let i = if ph.interrupted { " (interrupted)" } else { "" };
            outln!("  phase {}: {}{i}", ph.name, ph.status);
            for s in ph.steps {
                let m = s.message.map(|m| format!("  {m}")).unwrap_or_default();
                outln!("    {:<18} {}{m}", s.name, s.status);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn plan_action(
    client: &Client,
    service: Option<String>,
    action: &str,
    plan: &str,
    phase: Option<String>,
    step: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let info: PlanInfo = client
        .post(&format!("/v1/services/{service}/plans/{plan}/{action}"), &PlanAction { phase, step })
        .await?;
    if json {
        return json_out(&info);
    }
    outln!("plan {plan} of {service}: {action} done; now {}", info.status);
    Ok(ExitCode::SUCCESS)
}

pub async fn pod_list(client: &Client, service: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let pods: Vec<PodInfo> = client.get(&format!("/v1/services/{service}/pods")).await?;
    if json {
        return json_out(&pods);
    }
    outln!("{:<16} {:<13} {:<8} {:>5}  {:<24} NOTE", "INSTANCE", "STATE", "AGENT", "INC", "PORTS");
    for p in pods {
        let ports: Vec<String> = p.ports.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let note = p.detail.clone().or_else(|| p.pending_reason.clone()).unwrap_or_default();
        outln!(
            "{:<16} {:<13} {:<8} {:>5}  {:<24} {note}",
            p.instance,
            p.state,
            p.agent.clone().unwrap_or_else(|| "-".into()),
            p.incarnation,
            ports.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pod_status(
    client: &Client,
    service: Option<String>,
    instance: &str,
    info: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let p: PodInfo = client.get(&format!("/v1/services/{service}/pods/{instance}")).await?;
    if json {
        return json_out(&p);
    }
    outln!(
        "{} of {}: {} on {} (incarnation {})",
        p.instance,
        p.service,
        p.state,
        p.agent.clone().unwrap_or_else(|| "-".into()),
        p.incarnation
    );
    if let Some(r) = &p.pending_reason {
        outln!("  pending: {r}");
    }
    if let Some(r) = &p.recovery {
        outln!("  recovery: {r}");
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    for t in &p.tasks {
        let code = t.exit_code.map(|c| format!(" exit {c}")).unwrap_or_default();
        let msg = t.message.clone().map(|m| format!(" — {m}")).unwrap_or_default();
        let next = t
            .next_restart_ms
            .map(|n| format!(" next attempt in {:.1} s", n.saturating_sub(now) as f64 / 1000.0))
            .unwrap_or_default();
        outln!(
            "  task {:<10} {:?}{code} ready={} pid={} restarts={}{next}{msg}",
            t.task,
            t.state,
            t.ready,
            t.pid.map_or("-".into(), |p| p.to_string()),
            t.restarts
        );
    }
    if info {
        outln!("  config:  {}", p.config);
        outln!("  target:  {}", p.target_config);
        if let Some(r) = &p.reservation {
            outln!(
                "  reservation on {}: {} cpus, {} MB memory, {} MB disk, ports {:?}, volumes {:?}",
                r.agent,
                r.cpus,
                r.memory_mb,
                r.disk_mb,
                r.ports,
                r.volumes
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn pod_action(
    client: &Client,
    service: Option<String>,
    instance: &str,
    action: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let v: serde_json::Value = client
        .post(&format!("/v1/services/{service}/pods/{instance}/{action}"), &serde_json::json!({}))
        .await?;
    if json {
        return json_out(&v);
    }
    outln!("{}", v["message"].as_str().unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

pub async fn agent_list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let agents: Vec<AgentInfo> = client.get("/v1/agents").await?;
    if json {
        return json_out(&agents);
    }
    outln!(
        "{:<10} {:<6} {:<12} {:>11} {:>15} {:>6}  ATTRIBUTES",
        "AGENT",
        "STATE",
        "HOST",
        "CPUS",
        "MEMORY MB",
        "TASKS"
    );
    for a in agents {
        let attrs: Vec<String> = a.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{:<10} {:<6} {:<12} {:>5.1}/{:<5.1} {:>7}/{:<7} {:>6}  {}",
            a.id,
            a.state,
            a.host,
            a.reserved_cpus,
            a.resources.cpus,
            a.reserved_memory_mb,
            a.resources.memory_mb,
            a.tasks,
            attrs.join(",")
        );
        if let Some(c) = &a.conflict {
            outln!("           REFUSES THIS CONTROL PLANE: {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn task_logs(
    client: &Client,
    service: Option<String>,
    instance: &str,
    task: &str,
    stderr: bool,
    tail_bytes: u64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let stream = if stderr { "stderr" } else { "stdout" };
    let chunk: LogChunk = client
        .get(&format!("/v1/services/{service}/pods/{instance}/tasks/{task}/logs?stream={stream}&tail_bytes={tail_bytes}"))
        .await?;
    if json {
        return json_out(&chunk);
    }
    out!("{}", chunk.data);
    Ok(ExitCode::SUCCESS)
}

pub async fn events(client: &Client, service: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    // Pages of at most 1000, oldest first, until a short page.
    let q = service.map(|s| format!("&service={s}")).unwrap_or_default();
    let mut ev: Vec<EventInfo> = Vec::new();
    for _ in 0..10_000 {
        let since = ev.last().map_or(0, |e| e.seq);
        let page: Vec<EventInfo> = client.get(&format!("/v1/events?since={since}&limit=1000{q}")).await?;
        let short = page.len() < 1000;
        ev.extend(page);
        if short {
            break;
        }
    }
    if json {
        return json_out(&ev);
    }
    for e in ev {
        outln!("{:>6} {:<14} {:<14} {}", e.seq, e.kind, e.service.unwrap_or_default(), e.message);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job_list(
    client: &Client,
    service: Option<String>,
    job: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let mut all: Vec<serde_json::Value> = client.get(&format!("/v1/services/{service}/jobs")).await?;
    if let Some(j) = &job {
        all.retain(|x| x["job"] == j.as_str());
    }
    if json {
        return json_out(&all);
    }
    outln!("{:<12} {:<14} {:<10} {:>9} {:<8} REASON", "JOB", "INSTANCE", "STATUS", "PRIORITY", "ALARM");
    for x in all {
        outln!(
            "{:<12} {:<14} {:<10} {:>9} {:<8} {}{}",
            x["job"].as_str().unwrap_or(""),
            x["instance"].as_str().unwrap_or(""),
            x["status"].as_str().unwrap_or(""),
            x["priority"].as_i64().map_or("-".into(), |p| if p == i64::MAX {
                "on-demand".into()
            } else {
                p.to_string()
            }),
            x["alarm"].as_str().unwrap_or("-"),
            x["reason"].as_str().unwrap_or(""),
            if x["running"] == true { " (running)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job_history(
    client: &Client,
    service: Option<String>,
    job: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let runs: Vec<serde_json::Value> =
        client.get(&format!("/v1/services/{service}/jobs/{job}/history")).await?;
    if json {
        return json_out(&runs);
    }
    outln!(
        "{:<24} {:<14} {:<10} {:>10} {:<6} {:>6}",
        "RUN",
        "INSTANCE",
        "STATUS",
        "DURATION",
        "AGENT",
        "TOKEN"
    );
    for r in runs {
        let dur = match (r["start_ms"].as_u64(), r["end_ms"].as_u64()) {
            (Some(s), Some(e)) => format!("{} ms", e.saturating_sub(s)),
            _ => "-".into(),
        };
        outln!(
            "{:<24} {:<14} {:<10} {:>10} {:<6} {:>6}",
            r["run_id"].as_str().unwrap_or(""),
            r["instance"].as_str().unwrap_or(""),
            r["status"].as_str().unwrap_or(""),
            dur,
            r["agent"].as_str().unwrap_or(""),
            r["token"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn job_run(
    client: &Client,
    service: Option<String>,
    job: &str,
    instance: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let service = client.pick_service(service).await?;
    let v: serde_json::Value = client
        .post(&format!("/v1/services/{service}/jobs/{job}/run"), &serde_json::json!({ "instance": instance }))
        .await?;
    if json {
        return json_out(&v);
    }
    outln!("on-demand run of {job} queued for {}", v["queued"]);
    Ok(ExitCode::SUCCESS)
}

pub async fn window_add(client: &Client, body: serde_json::Value, json: bool) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = client.post("/v1/jobs/windows", &body).await?;
    if json {
        return json_out(&v);
    }
    outln!("window {} added", v["id"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

pub async fn window_list(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let v: Vec<serde_json::Value> = client.get("/v1/jobs/windows").await?;
    if json {
        return json_out(&v);
    }
    for w in v {
        let hm = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
        outln!(
            "{:<16} {}–{} (UTC{:+} min) job={} pods={}",
            w["id"].as_str().unwrap_or(""),
            hm(w["start"].as_u64().unwrap_or(0)),
            hm(w["end"].as_u64().unwrap_or(0)),
            w["utc_offset_minutes"].as_i64().unwrap_or(0),
            w["job"].as_str().unwrap_or("*"),
            w["pods"]
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn window_remove(client: &Client, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v: serde_json::Value = client.delete(&format!("/v1/jobs/windows/{id}")).await?;
    if json {
        return json_out(&v);
    }
    outln!("window {id} removed");
    Ok(ExitCode::SUCCESS)
}
