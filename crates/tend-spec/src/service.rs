//! ServiceSpec v1: the model of a service, its decoding from YAML with every error located, and
//! the defaults that make a spec normal.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

use crate::decode::{find_cycle, Ctx, Fields};
use crate::diag::did_you_mean;
use crate::node::{Node, NodeKind};
use crate::update::{decode_update, UpdatePolicy};

/// The only spec version this tend reads.
pub const SPEC_VERSION: u32 = 1;

/// A whole service: pods, plans, recovery policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceSpec {
    pub version: u32,
    pub name: String,
    #[serde(serialize_with = "named_vec")]
    pub pods: Vec<PodSpec>,
    #[serde(serialize_with = "named_vec")]
    pub plans: Vec<PlanSpec>,
    pub recovery: RecoveryPolicy,
    /// How a new generation rolls out (each pod's effective policy is in `PodSpec::update`).
    pub update: UpdatePolicy,
    /// Recurring maintenance jobs, run per pod instance.
    #[serde(serialize_with = "named_vec", skip_serializing_if = "Vec::is_empty")]
    pub jobs: Vec<JobSpec>,
}

/// A recurring maintenance job, run on every instance of one pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSpec {
    #[serde(skip)]
    pub name: String,
    pub pod: String,
    pub cmd: String,
    pub interval_seconds: u64,
    pub initial_delay_seconds: u64,
    /// low | medium | high | highest (priority factors 1, 2, 3, 100).
    pub weight: String,
    pub timeout_seconds: u64,
    /// Wait after a failed run before trying again.
    pub backoff_seconds: u64,
    /// After each run, pause `pacing_ratio × its duration` before the next on the same scope.
    pub pacing_ratio: f64,
    pub warn_after_seconds: u64,
    pub error_after_seconds: u64,
    /// Leases to hold while running: N slots per scope.
    pub concurrency: Vec<ConcurrencySpec>,
}

/// A lease scope of a job: `cluster`, `agent`, or `attribute:<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConcurrencySpec {
    pub scope: String,
    pub slots: u32,
}

/// A pod type: `count` instances, each with its own reservation and volumes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodSpec {
    #[serde(skip)]
    pub name: String,
    pub count: u32,
    pub placement: Placement,
    pub artifacts: Vec<Artifact>,
    pub volumes: Vec<VolumeSpec>,
    pub env: BTreeMap<String, String>,
    #[serde(serialize_with = "named_vec")]
    pub tasks: Vec<TaskSpec>,
    /// Run in the sandbox before the tasks of a replacement incarnation (with TEND_REPLACING=1,
    /// TEND_REPLACED_AGENT, TEND_REPLACED_HOST), e.g. to bootstrap from the surviving replicas.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_replace: Option<String>,
    /// Run in an instance's sandbox before it is decommissioned (count lowered or pod removed),
    /// e.g. to remove a member from its cluster; it MUST exit 0 or the instance is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_decommission: Option<String>,
    /// How changes roll out to this pod: the service's `update`, with the pod's overrides.
    pub update: UpdatePolicy,
}

/// Where instances of a pod may go.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Placement {
    /// At most one instance of this pod per agent.
    pub unique_per_agent: bool,
    /// At most N instances per value of an agent attribute (e.g. `zone: 1`).
    pub max_per_attribute: BTreeMap<String, u32>,
    /// Agent attributes that must match.
    pub attributes: Vec<AttributeRule>,
}

/// An agent attribute must equal a value or match a regular expression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttributeRule {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub equals: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A file to fetch into the sandbox before the tasks start.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Artifact {
    /// http(s)://, file://, or a path relative to the spec file.
    pub uri: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Unpack a .zip / .tar.gz / .tgz into the sandbox.
    pub extract: bool,
}

/// A persistent volume, kept across relaunches of the same pod instance.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VolumeSpec {
    pub name: String,
    /// Where it appears inside the sandbox (relative).
    pub path: String,
    pub size_mb: u64,
}

/// What a task is meant to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Goal {
    /// Keep it running.
    Running,
    /// Run it once per pod instance, ever.
    Once,
    /// Run it to completion on every deploy of a new config.
    Finish,
}

/// A process inside a pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TaskSpec {
    #[serde(skip)]
    pub name: String,
    pub goal: Goal,
    pub cmd: String,
    pub cpus: f64,
    pub memory_mb: u64,
    /// Named ports; 0 means "any free port".
    pub ports: BTreeMap<String, u16>,
    pub env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<Check>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_check: Option<Check>,
    pub kill_grace_period_seconds: u64,
    /// If an essential task stops, the whole pod instance is restarted.
    pub essential: bool,
}

/// How a check probes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Cmd(String),
    Http { port: String, path: String },
    Tcp { port: String },
}

/// A health or readiness check.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    #[serde(flatten)]
    pub probe: Probe,
    pub interval_seconds: u64,
    pub timeout_seconds: u64,
    pub grace_period_seconds: u64,
    pub max_consecutive_failures: u32,
}

/// Order of children within a plan (phases) or a phase (steps).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Serial,
    Parallel,
    Dependency,
}

/// A plan: phases, each over the instances of one pod.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSpec {
    #[serde(skip)]
    pub name: String,
    pub strategy: Strategy,
    #[serde(serialize_with = "named_vec")]
    pub phases: Vec<PhaseSpec>,
}

/// A phase: one step per instance of `pod`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseSpec {
    #[serde(skip)]
    pub name: String,
    pub pod: String,
    /// Serial or parallel over the pod's instances.
    pub strategy: Strategy,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

/// How failed pod instances are recovered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecoveryPolicy {
    /// After how long a stopped or unreachable instance is judged failed and replaced; None: never.
    #[serde(serialize_with = "never_or")]
    pub failure_timeout_seconds: Option<u64>,
    /// Delay between relaunches of a crash-looping instance.
    pub backoff: Backoff,
    pub max_concurrent_replacements: u32,
    /// What happens to an instance cut off from the control plane.
    pub on_partition: OnPartition,
    /// With `fence`: an agent out of contact this long kills the instance's tasks itself.
    pub fence_after_seconds: u64,
    /// How long volumes no instance uses any more (replaced, decommissioned, service deleted)
    /// are kept before tend deletes them; None: until a user deletes them.
    #[serde(serialize_with = "forever_or")]
    pub retain_volumes_seconds: Option<u64>,
}

/// One week: the default retention of unused volumes.
pub const DEFAULT_RETAIN_VOLUMES_SECONDS: u64 = 7 * 86_400;

fn forever_or<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_u64(*n),
        None => s.serialize_str("forever"),
    }
}

/// Partition safety of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPartition {
    /// Availability: replace an unreachable instance after the failure timeout.
    Replace,
    /// At most one incarnation: the cut-off agent kills the tasks after `fence_after_seconds`,
    /// and the control plane replaces them only after that time has surely passed.
    Fence,
}

/// Exponential backoff bounds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Backoff {
    pub initial_seconds: u64,
    pub max_seconds: u64,
}

impl Default for RecoveryPolicy {
    fn default() -> Self {
        Self {
            failure_timeout_seconds: Some(600),
            backoff: Backoff { initial_seconds: 1, max_seconds: 60 },
            max_concurrent_replacements: 1,
            on_partition: OnPartition::Replace,
            fence_after_seconds: 10,
            retain_volumes_seconds: Some(DEFAULT_RETAIN_VOLUMES_SECONDS),
        }
    }
}

fn never_or<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(n) => s.serialize_u64(*n),
        None => s.serialize_str("never"),
    }
}

/// Things with a name serialise as a mapping `name: spec`, in order.
trait Named {
    fn name(&self) -> &str;
}
impl Named for PodSpec {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for TaskSpec {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for PlanSpec {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for JobSpec {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for PhaseSpec {
    fn name(&self) -> &str {
        &self.name
    }
}

fn named_vec<T: Named + Serialize, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    let mut m = s.serialize_map(Some(v.len()))?;
    for item in v {
        m.serialize_entry(item.name(), item)?;
    }
    m.end()
}

impl ServiceSpec {
    pub fn pod(&self, name: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|p| p.name == name)
    }
    pub fn plan(&self, name: &str) -> Option<&PlanSpec> {
        self.plans.iter().find(|p| p.name == name)
    }
}

/// Decodes a service spec, collecting every problem; None if there was any.
pub fn decode_service(root: &Node, cx: &mut Ctx) -> Option<ServiceSpec> {
    let before = cx.diags.len();
    let f = cx.fields(
        root,
        "the service spec",
        &["version", "name", "pods", "plans", "recovery", "jobs", "update"],
    )?;
    let version = match cx.require(&f, "version", "the service spec", "1") {
        Some(n) => match cx.int(n, "version", 0, u32::MAX as i128) {
            Some(v) if v as u32 == SPEC_VERSION => Some(SPEC_VERSION),
            Some(v) => {
                cx.at(
                    "unsupported-version",
                    n,
                    format!("spec version {v} is not supported"),
                    Some(format!("this tend reads `version: {SPEC_VERSION}`")),
                );
                None
            }
            None => None,
        },
        None => None,
    };
    let name = cx.require(&f, "name", "the service spec", "data-store").and_then(|n| {
        let s = cx.nonempty_string(n, "the service name")?;
        if !crate::decode::valid_name(&s) {
            cx.at(
                "invalid-name",
                n,
                format!("`{s}` is not a valid service name"),
                Some("use 1 to 63 lowercase letters, digits, `-` or `_`".into()),
            );
            return None;
        }
        Some(s)
    });
    let pods = match cx.require(&f, "pods", "the service spec", "{ data: { count: 3, tasks: ... } }") {
        Some(n) => {
            let items = cx.named(n, "`pods`", "pod");
            if items.is_empty() && matches!(n.kind, NodeKind::Map(_)) {
                cx.at("empty", n, "a service needs at least one pod".into(), None);
            }
            items
                .into_iter()
                .filter_map(|(name, _, v)| decode_pod(cx, name, v).map(|p| (p, v)))
                .collect::<Vec<_>>()
        }
        None => Vec::new(),
    };
    let names: Vec<String> = pods.iter().map(|(p, _)| p.name.clone()).collect();
    let pod_names: Vec<&str> = names.iter().map(String::as_str).collect();
    let update = match f.get("update") {
        Some(n) => decode_update(cx, n, "update", &UpdatePolicy::default(), &pod_names),
        None => UpdatePolicy::default(),
    };
    let pods: Vec<PodSpec> = pods
        .into_iter()
        .map(|(mut p, node)| {
            p.update = match pod_update_node(node) {
                Some(n) => decode_update(cx, n, &format!("update of pod `{}`", p.name), &update, &pod_names),
                None => update.clone(),
            };
            p
        })
        .collect();
    let mut plans = match f.get("plans") {
        Some(n) => cx
            .named(n, "`plans`", "plan")
            .into_iter()
            .filter_map(|(name, _, v)| decode_plan(cx, name, v, &pod_names))
            .collect(),
        None => Vec::new(),
    };
    if !plans.iter().any(|p: &PlanSpec| p.name == "deploy") {
        // The default deploy plan: one serial phase per pod, in the order the pods are written.
        plans.insert(
            0,
            PlanSpec {
                name: "deploy".into(),
                strategy: Strategy::Serial,
                phases: pods
                    .iter()
                    .map(|p| PhaseSpec {
                        name: p.name.clone(),
                        pod: p.name.clone(),
                        strategy: Strategy::Serial,
                        depends_on: Vec::new(),
                    })
                    .collect(),
            },
        );
    }
    let recovery = f.get("recovery").map(|n| decode_recovery(cx, n)).unwrap_or_default();
    let jobs = match f.get("jobs") {
        Some(n) => cx
            .named(n, "`jobs`", "job")
            .into_iter()
            .filter_map(|(name, _, v)| decode_job(cx, name, v, &pod_names))
            .collect(),
        None => Vec::new(),
    };
    if cx.diags.len() > before {
        return None;
    }
    Some(ServiceSpec { version: version?, name: name?, pods, plans, recovery, update, jobs })
}

fn opt<'a, T>(f: &Fields<'a>, name: &str, read: impl FnOnce(&'a Node) -> Option<T>) -> Option<T> {
    f.get(name).and_then(read)
}

fn decode_pod(cx: &mut Ctx, name: String, node: &Node) -> Option<PodSpec> {
    let what = format!("pod `{name}`");
    let f = cx.fields(
        node,
        &what,
        &[
            "count",
            "placement",
            "artifacts",
            "volumes",
            "env",
            "tasks",
            "on_replace",
            "on_decommission",
            "update",
        ],
    )?;
    let on_replace = f.get("on_replace").and_then(|n| cx.nonempty_string(n, "on_replace"));
    let on_decommission = f.get("on_decommission").and_then(|n| cx.nonempty_string(n, "on_decommission"));
    let count = opt(&f, "count", |n| cx.int(n, "count", 0, 10_000)).map(|c| c as u32).unwrap_or(1);
    let placement = f.get("placement").map(|n| decode_placement(cx, n)).unwrap_or_default();
    let artifacts = match f.get("artifacts") {
        Some(n) => cx.list(n, "artifacts").iter().filter_map(|a| decode_artifact(cx, a)).collect(),
        None => Vec::new(),
    };
    let mut volumes: Vec<VolumeSpec> = Vec::new();
    if let Some(n) = f.get("volumes") {
        for v in cx.list(n, "volumes") {
            if let Some(vol) = decode_volume(cx, v) {
                if volumes.iter().any(|o| o.name == vol.name) {
                    cx.at(
                        "duplicate-name",
                        v,
                        format!("volume `{}` is declared twice in {what}", vol.name),
                        None,
                    );
                } else if volumes.iter().any(|o| o.path == vol.path) {
                    cx.at(
                        "duplicate-path",
                        v,
                        format!("two volumes of {what} use path `{}`", vol.path),
                        None,
                    );
                } else if let Some(o) = volumes.iter().find(|o| nested(&o.path, &vol.path)) {
                    cx.at(
                        "nested-volume",
                        v,
                        format!(
                            "volume `{}` (path `{}`) and volume `{}` (path `{}`) are nested in {what}",
                            vol.name, vol.path, o.name, o.path
                        ),
                        Some("give each volume a path of its own, side by side".into()),
                    );
                } else if let Some(o) =
                    volumes.iter().find(|o| volume_env_name(&o.name) == volume_env_name(&vol.name))
                {
                    cx.at(
                        "env-clash",
                        v,
                        format!(
                            "volumes `{}` and `{}` of {what} both become {}",
                            vol.name,
                            o.name,
                            volume_env_name(&vol.name)
                        ),
                        Some("rename one of them".into()),
                    );
                } else {
                    volumes.push(vol);
                }
            }
        }
    }
    let env = f.get("env").map(|n| cx.env(n, &format!("env of {what}"))).unwrap_or_default();
    let mut tasks = Vec::new();
    if let Some(n) = cx.require(&f, "tasks", &what, "{ server: { cmd: ./server } }") {
        let items = cx.named(n, "`tasks`", "task");
        if items.is_empty() && matches!(n.kind, NodeKind::Map(_)) {
            cx.at("empty", n, format!("{what} needs at least one task"), None);
        }
        // Port names become PORT_<NAME> variables shared by the pod: they must be unique pod-wide.
        let mut port_names: BTreeMap<String, (String, u32)> = BTreeMap::new();
        let mut fixed_ports: BTreeMap<u16, (String, u32)> = BTreeMap::new();
        for (tname, _, tnode) in items {
            if let Some((task, port_nodes)) = decode_task(cx, &name, tname, tnode) {
                for (pname, pnode) in &port_nodes {
                    let var = port_env_name(pname);
                    if let Some((other, line)) = port_names.get(&var) {
                        cx.at(
                            "port-clash",
                            pnode,
                            format!("port `{pname}` of task `{}` clashes with a port of task `{other}` (both become {var})", task.name),
                            Some(format!("the other is at line {line}; port names must be unique within a pod")),
                        );
                    } else {
                        port_names.insert(var, (task.name.clone(), pnode.pos.line));
                    }
                    let num = task.ports.get(pname).copied().unwrap_or(0);
                    if num != 0 {
                        if let Some((other, line)) = fixed_ports.get(&num) {
                            cx.at(
                                "port-clash",
                                pnode,
                                format!("port number {num} is used twice in {what} (also by `{other}`)"),
                                Some(format!("the other is at line {line}; use 0 for a dynamic port")),
                            );
                        } else {
                            fixed_ports.insert(num, (pname.clone(), pnode.pos.line));
                        }
                    }
                }
                tasks.push(task);
            }
        }
    }
    Some(PodSpec {
        name,
        count,
        placement,
        artifacts,
        volumes,
        env,
        tasks,
        on_replace,
        on_decommission,
        update: UpdatePolicy::default(),
    })
}

/// Whether one volume path lies inside the other (`data` and `data/wal`).
fn nested(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| y.strip_prefix(x).is_some_and(|rest| rest.starts_with('/'));
    inside(a, b) || inside(b, a)
}

/// The variable that gives a task a volume's path.
pub fn volume_env_name(volume: &str) -> String {
    format!("TEND_VOLUME_{}", volume.to_ascii_uppercase().replace('-', "_"))
}

/// A pod's own `update` mapping, if it has one (its fields were checked by `decode_pod`).
fn pod_update_node(pod: &Node) -> Option<&Node> {
    let NodeKind::Map(entries) = &pod.kind else { return None };
    entries.iter().find(|(k, _)| matches!(&k.kind, NodeKind::Str(s) if s == "update")).map(|(_, v)| v)
}

/// The environment variable a named port is published as.
pub fn port_env_name(port: &str) -> String {
    format!("PORT_{}", port.to_ascii_uppercase().replace('-', "_"))
}

fn decode_placement(cx: &mut Ctx, node: &Node) -> Placement {
    let mut p = Placement::default();
    let Some(f) = cx.fields(node, "placement", &["unique_per_agent", "max_per_attribute", "attributes"])
    else {
        return p;
    };
    if let Some(b) = opt(&f, "unique_per_agent", |n| cx.bool(n, "unique_per_agent")) {
        p.unique_per_agent = b;
    }
    if let Some(n) = f.get("max_per_attribute") {
        if let NodeKind::Map(entries) = &n.kind {
            for (k, v) in entries {
                let Some(attr) = cx.string(k, "an attribute name") else { continue };
                if let Some(max) = cx.int(v, &format!("max_per_attribute.{attr}"), 1, 100_000) {
                    p.max_per_attribute.insert(attr, max as u32);
                }
            }
        } else {
            cx.at(
                "wrong-type",
                n,
                format!("max_per_attribute must be a mapping, found {}", n.describe()),
                Some("for example `max_per_attribute: { zone: 1 }`".into()),
            );
        }
    }
    if let Some(n) = f.get("attributes") {
        for item in cx.list(n, "attributes") {
            let Some(af) = cx.fields(item, "an attribute rule", &["name", "equals", "regex"]) else {
                continue;
            };
            let name = cx
                .require(&af, "name", "an attribute rule", "zone")
                .and_then(|n| cx.nonempty_string(n, "name"));
            let equals = opt(&af, "equals", |n| cx.string(n, "equals"));
            let regex = opt(&af, "regex", |n| {
                let s = cx.string(n, "regex")?;
                match regex::Regex::new(&format!("^(?:{s})$")) {
                    Ok(_) => Some(s),
                    Err(e) => {
                        let msg = e.to_string().lines().last().unwrap_or("invalid").to_string();
                        cx.at("invalid-regex", n, format!("invalid regular expression: {msg}"), None);
                        None
                    }
                }
            });
            if af.get("equals").is_some() == af.get("regex").is_some() {
                cx.at(
                    "invalid-rule",
                    item,
                    "an attribute rule needs exactly one of `equals` or `regex`".into(),
                    Some("for example `{ name: zone, equals: a }`".into()),
                );
                continue;
            }
            if let Some(name) = name {
                if equals.is_some() || regex.is_some() {
                    p.attributes.push(AttributeRule { name, equals, regex });
                }
            }
        }
    }
    p
}

fn decode_artifact(cx: &mut Ctx, node: &Node) -> Option<Artifact> {
    let f = cx.fields(node, "an artifact", &["uri", "sha256", "extract"])?;
    let uri_node = cx.require(&f, "uri", "an artifact", "./bin/server.tar.gz")?;
    let uri = cx.nonempty_string(uri_node, "uri")?;
    if let Some((scheme, _)) = uri.split_once("://") {
        if !["http", "https", "file"].contains(&scheme) {
            cx.at(
                "invalid-uri",
                uri_node,
                format!("unsupported URI scheme `{scheme}`"),
                Some("use http://, https://, file://, or a path relative to the spec file".into()),
            );
            return None;
        }
    }
    let path = uri.split_once("://").map_or(uri.as_str(), |(_, rest)| rest);
    let path = path.split(['?', '#']).next().unwrap_or("");
    let last = path.rsplit('/').next().unwrap_or("");
    if last.is_empty() || last == "." || last == ".." || path.split('/').any(|c| c == "..") {
        cx.at(
            "invalid-uri",
            uri_node,
            format!(
                "artifact `{uri}` does not name a file (its last part is `{last}`, or it climbs with `..`)"
            ),
            Some("name the file itself, e.g. ./dist/server.tar.gz".into()),
        );
        return None;
    }
    let sha256 = opt(&f, "sha256", |n| {
        let s = cx.string(n, "sha256")?.to_ascii_lowercase();
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            cx.at(
                "invalid-checksum",
                n,
                "sha256 must be 64 hexadecimal characters".into(),
                Some("compute it with `sha256sum FILE`".into()),
            );
            return None;
        }
        Some(s)
    });
    let archive = [".zip", ".tar.gz", ".tgz"].iter().any(|e| uri.ends_with(e));
    let extract = opt(&f, "extract", |n| cx.bool(n, "extract")).unwrap_or(archive);
    if extract && !archive {
        cx.at(
            "invalid-value",
            node,
            format!("cannot extract `{uri}`: only .zip, .tar.gz and .tgz archives are extracted"),
            Some("remove `extract: true`, or point at an archive".into()),
        );
        return None;
    }
    Some(Artifact { uri, sha256, extract })
}

/// A relative path that stays inside the sandbox.
pub fn safe_relative_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| c != ".." && c != "." && !c.is_empty())
}

fn decode_volume(cx: &mut Ctx, node: &Node) -> Option<VolumeSpec> {
    let f = cx.fields(node, "a volume", &["name", "path", "size_mb"])?;
    let name = cx.require(&f, "name", "a volume", "data").and_then(|n| {
        let s = cx.nonempty_string(n, "volume name")?;
        if !crate::decode::valid_name(&s) {
            cx.at("invalid-name", n, format!("`{s}` is not a valid volume name"), None);
            return None;
        }
        Some(s)
    });
    let path = cx.require(&f, "path", "a volume", "data").and_then(|n| {
        let s = cx.nonempty_string(n, "volume path")?;
        if !safe_relative_path(&s) {
            cx.at(
                "invalid-path",
                n,
                format!("volume path `{s}` must be relative and stay inside the sandbox"),
                Some("use a path like `data` or `var/lib/db` (no leading `/`, no `..`)".into()),
            );
            return None;
        }
        Some(s)
    });
    let size_mb =
        cx.require(&f, "size_mb", "a volume", "1024").and_then(|n| cx.int(n, "size_mb", 1, 1 << 24));
    Some(VolumeSpec { name: name?, path: path?, size_mb: size_mb? as u64 })
}

fn decode_task<'a>(
    cx: &mut Ctx,
    pod: &str,
    name: String,
    node: &'a Node,
) -> Option<(TaskSpec, Vec<(String, &'a Node)>)> {
    let what = format!("task `{name}` of pod `{pod}`");
    let f = cx.fields(
        node,
        &what,
        &[
            "goal",
            "cmd",
            "cpus",
            "memory_mb",
            "ports",
            "env",
            "health_check",
            "readiness_check",
            "kill_grace_period_seconds",
            "essential",
        ],
    )?;
    let goal = match f.get("goal") {
        Some(n) => match cx.choice(n, "goal", &["running", "once", "finish"]).as_deref() {
            Some("running") => Some(Goal::Running),
            Some("once") => Some(Goal::Once),
            Some("finish") => Some(Goal::Finish),
            _ => None,
        },
        None => Some(Goal::Running),
    };
    let cmd = cx
        .require(&f, "cmd", &what, "./server --port $PORT_CLIENT")
        .and_then(|n| cx.nonempty_string(n, "cmd"));
    let cpus = opt(&f, "cpus", |n| cx.number(n, "cpus", false, 1024.0)).unwrap_or(0.1);
    let memory_mb =
        opt(&f, "memory_mb", |n| cx.int(n, "memory_mb", 1, 1 << 30)).map(|v| v as u64).unwrap_or(128);
    let mut ports = BTreeMap::new();
    let mut port_nodes = Vec::new();
    if let Some(n) = f.get("ports") {
        for (pname, k, v) in cx.named(n, "`ports`", "port") {
            if let Some(num) = cx.int(v, &format!("port `{pname}`"), 0, 65_535) {
                ports.insert(pname.clone(), num as u16);
                port_nodes.push((pname, k));
            }
        }
    }
    let env = f.get("env").map(|n| cx.env(n, &format!("env of {what}"))).unwrap_or_default();
    let health_check = f.get("health_check").and_then(|n| decode_check(cx, n, "health_check", &ports));
    let readiness_check =
        f.get("readiness_check").and_then(|n| decode_check(cx, n, "readiness_check", &ports));
    let kill_grace_period_seconds =
        opt(&f, "kill_grace_period_seconds", |n| cx.int(n, "kill_grace_period_seconds", 0, 3600))
            .map(|v| v as u64)
            .unwrap_or(10);
    let essential = opt(&f, "essential", |n| cx.bool(n, "essential")).unwrap_or(true);
    Some((
        TaskSpec {
            name,
            goal: goal?,
            cmd: cmd?,
            cpus,
            memory_mb,
            ports,
            env,
            health_check,
            readiness_check,
            kill_grace_period_seconds,
            essential,
        },
        port_nodes,
    ))
}

fn decode_check(cx: &mut Ctx, node: &Node, what: &str, ports: &BTreeMap<String, u16>) -> Option<Check> {
    let f = cx.fields(
        node,
        what,
        &[
            "cmd",
            "http",
            "tcp",
            "interval_seconds",
            "timeout_seconds",
            "grace_period_seconds",
            "max_consecutive_failures",
        ],
    )?;
    let kinds: Vec<&str> = ["cmd", "http", "tcp"].into_iter().filter(|k| f.get(k).is_some()).collect();
    if kinds.len() != 1 {
        cx.at(
            "invalid-check",
            node,
            format!("{what} needs exactly one of `cmd`, `http` or `tcp` (found {})", kinds.len()),
            Some("for example `http: { port: client, path: /ready }`".into()),
        );
        return None;
    }
    let port_ref = |cx: &mut Ctx, f: &Fields<'_>| -> Option<String> {
        let n = cx.require(f, "port", what, "client")?;
        let p = cx.nonempty_string(n, "port")?;
        if !ports.contains_key(&p) {
            let hint = match did_you_mean(&p, ports.keys().map(|s| s.as_str())) {
                Some(m) => format!("did you mean `{m}`?"),
                None if ports.is_empty() => "declare it under the task's `ports`".into(),
                None => {
                    format!("the task's ports are: {}", ports.keys().cloned().collect::<Vec<_>>().join(", "))
                }
            };
            cx.at(
                "unknown-port",
                n,
                format!("{what} refers to port `{p}`, which the task does not declare"),
                Some(hint),
            );
            return None;
        }
        Some(p)
    };
    let probe = match kinds[0] {
        "cmd" => Probe::Cmd(cx.nonempty_string(f.get("cmd")?, "cmd")?),
        "http" => {
            let hf = cx.fields(f.get("http")?, "http check", &["port", "path"])?;
            let port = port_ref(cx, &hf);
            let path = opt(&hf, "path", |n| {
                let p = cx.nonempty_string(n, "path")?;
                if !p.starts_with('/') || p.chars().any(|c| c.is_control() || c == ' ') {
                    cx.at(
                        "invalid-path",
                        n,
                        format!("HTTP check path `{}` must start with `/` and hold no spaces or control characters", p.escape_debug()),
                        Some("for example `/ready`".into()),
                    );
                    return None;
                }
                Some(p)
            })
            .unwrap_or_else(|| "/".into());
            Probe::Http { port: port?, path }
        }
        _ => {
            let tf = cx.fields(f.get("tcp")?, "tcp check", &["port"])?;
            Probe::Tcp { port: port_ref(cx, &tf)? }
        }
    };
    let secs = |cx: &mut Ctx, name: &str, default: u64, min: i128| {
        opt(&f, name, |n| cx.int(n, name, min, 86_400)).map(|v| v as u64).unwrap_or(default)
    };
    let interval_seconds = secs(cx, "interval_seconds", 5, 1);
    let timeout_seconds = secs(cx, "timeout_seconds", 3, 1);
    let grace_period_seconds = secs(cx, "grace_period_seconds", 0, 0);
    let max_consecutive_failures =
        opt(&f, "max_consecutive_failures", |n| cx.int(n, "max_consecutive_failures", 1, 1000)).unwrap_or(3)
            as u32;
    Some(Check { probe, interval_seconds, timeout_seconds, grace_period_seconds, max_consecutive_failures })
}

fn decode_strategy(cx: &mut Ctx, node: &Node, allowed: &[&str]) -> Option<Strategy> {
    match cx.choice(node, "strategy", allowed).as_deref() {
        Some("serial") => Some(Strategy::Serial),
        Some("parallel") => Some(Strategy::Parallel),
        Some("dependency") => Some(Strategy::Dependency),
        _ => None,
    }
}

fn decode_plan(cx: &mut Ctx, name: String, node: &Node, pods: &[&str]) -> Option<PlanSpec> {
    let what = format!("plan `{name}`");
    let f = cx.fields(node, &what, &["strategy", "phases"])?;
    let strategy = opt(&f, "strategy", |n| decode_strategy(cx, n, &["serial", "parallel", "dependency"]))
        .unwrap_or(Strategy::Serial);
    let mut phases = Vec::new();
    let mut dep_nodes: Vec<(String, Vec<(String, crate::node::Pos)>)> = Vec::new();
    if let Some(n) = cx.require(&f, "phases", &what, "{ data: { pod: data } }") {
        let named = cx.named(n, "`phases`", "phase");
        if named.is_empty() && matches!(n.kind, NodeKind::Map(_)) {
            cx.at(
                "empty",
                n,
                format!("{what} needs at least one phase"),
                Some("{ data: { pod: data } }".into()),
            );
        }
        for (pname, _, pnode) in named {
            let pw = format!("phase `{pname}` of {what}");
            let Some(pf) = cx.fields(pnode, &pw, &["pod", "strategy", "depends_on"]) else { continue };
            let pod = cx.require(&pf, "pod", &pw, pods.first().copied().unwrap_or("data")).and_then(|n| {
                let s = cx.nonempty_string(n, "pod")?;
                if !pods.contains(&s.as_str()) {
                    let hint = match did_you_mean(&s, pods.iter().copied()) {
                        Some(m) => format!("did you mean `{m}`?"),
                        None => format!("the service's pods are: {}", pods.join(", ")),
                    };
                    cx.at(
                        "unknown-pod",
                        n,
                        format!("{pw} refers to pod `{s}`, which is not defined"),
                        Some(hint),
                    );
                    return None;
                }
                Some(s)
            });
            let pstrategy = opt(&pf, "strategy", |n| decode_strategy(cx, n, &["serial", "parallel"]))
                .unwrap_or(Strategy::Serial);
            let deps = pf.get("depends_on").map(|n| cx.string_list(n, "depends_on")).unwrap_or_default();
            if !deps.is_empty() && strategy != Strategy::Dependency {
                if let Some(k) = pf.key("depends_on") {
                    cx.at(
                        "ignored-field",
                        k,
                        format!("`depends_on` in {pw} only applies when the plan's strategy is `dependency`"),
                        Some(format!("add `strategy: dependency` to {what}, or remove `depends_on`")),
                    );
                }
            }
            dep_nodes.push((pname.clone(), deps.clone()));
            if let Some(pod) = pod {
                phases.push(PhaseSpec {
                    name: pname,
                    pod,
                    strategy: pstrategy,
                    depends_on: deps.into_iter().map(|(d, _)| d).collect(),
                });
            }
        }
    }
    // Dependencies must name phases of this plan and form no cycle.
    let names: Vec<&str> = dep_nodes.iter().map(|(n, _)| n.as_str()).collect();
    let mut graph = Vec::new();
    for (pname, deps) in &dep_nodes {
        let mut known = Vec::new();
        for (d, pos) in deps {
            if !names.contains(&d.as_str()) {
                let hint = match did_you_mean(d, names.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("the phases of {what} are: {}", names.join(", ")),
                };
                cx.error(
                    "unknown-phase",
                    *pos,
                    d.len(),
                    format!("phase `{pname}` depends on unknown phase `{d}`"),
                    Some(hint),
                );
            } else {
                known.push(d.clone());
            }
        }
        graph.push((pname.clone(), known));
    }
    if let Some(cycle) = find_cycle(&graph) {
        let first = &cycle[0];
        let pos = dep_nodes
            .iter()
            .find(|(n, _)| n == first)
            .and_then(|(_, d)| d.first().map(|(_, p)| *p))
            .unwrap_or(node.pos);
        cx.error(
            "cyclic-dependency",
            pos,
            1,
            format!("phases of {what} depend on each other in a cycle: {}", cycle.join(" → ")),
            Some("remove one of these `depends_on` entries".into()),
        );
    }
    Some(PlanSpec { name, strategy, phases })
}

fn decode_recovery(cx: &mut Ctx, node: &Node) -> RecoveryPolicy {
    let mut r = RecoveryPolicy::default();
    let Some(f) = cx.fields(
        node,
        "recovery",
        &[
            "failure_timeout_seconds",
            "backoff",
            "max_concurrent_replacements",
            "on_partition",
            "fence_after_seconds",
            "retain_volumes_seconds",
        ],
    ) else {
        return r;
    };
    if let Some(n) = f.get("retain_volumes_seconds") {
        match &n.kind {
            NodeKind::Str(s) if s == "forever" => r.retain_volumes_seconds = None,
            NodeKind::Int(_) => {
                if let Some(v) = cx.int(n, "retain_volumes_seconds", 0, 10 * 365 * 86_400) {
                    r.retain_volumes_seconds = Some(v as u64);
                }
            }
            _ => cx.at(
                "wrong-type",
                n,
                format!(
                    "retain_volumes_seconds must be a number of seconds or `forever`, found {}",
                    n.describe()
                ),
                Some("e.g. `retain_volumes_seconds: 604800` (a week) or `forever`".into()),
            ),
        }
    }
    if let Some(n) = f.get("failure_timeout_seconds") {
        match &n.kind {
            NodeKind::Str(s) if s == "never" => r.failure_timeout_seconds = None,
            NodeKind::Int(_) => {
                if let Some(v) = cx.int(n, "failure_timeout_seconds", 1, 30 * 86_400) {
                    r.failure_timeout_seconds = Some(v as u64);
                }
            }
            _ => cx.at(
                "wrong-type",
                n,
                format!(
                    "failure_timeout_seconds must be a number of seconds or `never`, found {}",
                    n.describe()
                ),
                None,
            ),
        }
    }
    if let Some(n) = f.get("backoff") {
        if let Some(bf) = cx.fields(n, "backoff", &["initial_seconds", "max_seconds"]) {
            if let Some(v) = opt(&bf, "initial_seconds", |n| cx.int(n, "initial_seconds", 0, 86_400)) {
                r.backoff.initial_seconds = v as u64;
            }
            if let Some(v) = opt(&bf, "max_seconds", |n| cx.int(n, "max_seconds", 1, 86_400)) {
                r.backoff.max_seconds = v as u64;
            }
            if r.backoff.initial_seconds > r.backoff.max_seconds {
                cx.at(
                    "invalid-value",
                    n,
                    format!(
                        "backoff initial_seconds ({}) is larger than max_seconds ({})",
                        r.backoff.initial_seconds, r.backoff.max_seconds
                    ),
                    Some("make initial_seconds at most max_seconds".into()),
                );
            }
        }
    }
    if let Some(v) =
        opt(&f, "max_concurrent_replacements", |n| cx.int(n, "max_concurrent_replacements", 1, 10_000))
    {
        r.max_concurrent_replacements = v as u32;
    }
    if let Some(n) = f.get("on_partition") {
        match cx.choice(n, "on_partition", &["replace", "fence"]).as_deref() {
            Some("fence") => r.on_partition = OnPartition::Fence,
            Some(_) => r.on_partition = OnPartition::Replace,
            None => {}
        }
    }
    if let Some(v) = opt(&f, "fence_after_seconds", |n| cx.int(n, "fence_after_seconds", 1, 3600)) {
        r.fence_after_seconds = v as u64;
    }
    r
}

fn decode_job(cx: &mut Ctx, name: String, node: &Node, pods: &[&str]) -> Option<JobSpec> {
    let what = format!("job `{name}`");
    let f = cx.fields(
        node,
        &what,
        &[
            "pod",
            "cmd",
            "interval_seconds",
            "initial_delay_seconds",
            "weight",
            "timeout_seconds",
            "backoff_seconds",
            "pacing_ratio",
            "warn_after_seconds",
            "error_after_seconds",
            "concurrency",
        ],
    )?;
    let pod = cx.require(&f, "pod", &what, pods.first().copied().unwrap_or("data")).and_then(|n| {
        let s = cx.nonempty_string(n, "pod")?;
        if !pods.contains(&s.as_str()) {
            let hint = match did_you_mean(&s, pods.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("the service's pods are: {}", pods.join(", ")),
            };
            cx.at("unknown-pod", n, format!("{what} runs on pod `{s}`, which is not defined"), Some(hint));
            return None;
        }
        Some(s)
    });
    let cmd = cx.require(&f, "cmd", &what, "./repair.sh").and_then(|n| cx.nonempty_string(n, "cmd"));
    let interval = cx
        .require(&f, "interval_seconds", &what, "86400")
        .and_then(|n| cx.int(n, "interval_seconds", 1, 365 * 86_400));
    let secs = |cx: &mut Ctx, key: &str, default: u64, min: i128| {
        opt(&f, key, |n| cx.int(n, key, min, 3650 * 86_400)).map(|v| v as u64).unwrap_or(default)
    };
    let interval_seconds = interval.unwrap_or(1) as u64;
    let initial_delay_seconds = secs(cx, "initial_delay_seconds", 0, 0);
    let timeout_seconds = secs(cx, "timeout_seconds", 3600, 1);
    let backoff_seconds = secs(cx, "backoff_seconds", 1800, 0);
    let warn_after_seconds = secs(cx, "warn_after_seconds", 8 * interval_seconds, 1);
    let error_after_seconds = secs(cx, "error_after_seconds", 10 * interval_seconds, 1);
    if warn_after_seconds > error_after_seconds {
        cx.at(
            "invalid-value",
            f.key("warn_after_seconds").unwrap_or(node),
            format!("{what}: warn_after_seconds ({warn_after_seconds}) is larger than error_after_seconds ({error_after_seconds})"),
            Some("the warning comes before the error".into()),
        );
    }
    let weight = f
        .get("weight")
        .and_then(|n| cx.choice(n, "weight", &["low", "medium", "high", "highest"]))
        .unwrap_or_else(|| "low".into());
    let pacing_ratio = opt(&f, "pacing_ratio", |n| cx.number(n, "pacing_ratio", true, 100.0)).unwrap_or(0.0);
    let mut concurrency = Vec::new();
    if let Some(n) = f.get("concurrency") {
        for item in cx.list(n, "concurrency") {
            let Some(cf) = cx.fields(item, "a concurrency lease", &["scope", "slots"]) else { continue };
            let scope = cx.require(&cf, "scope", "a concurrency lease", "cluster").and_then(|n| {
                let s = cx.nonempty_string(n, "scope")?;
                let ok = s == "cluster"
                    || s == "agent"
                    || s.strip_prefix("attribute:").is_some_and(|a| !a.is_empty());
                if !ok {
                    cx.at(
                        "invalid-value",
                        n,
                        format!("`{s}` is not a lease scope"),
                        Some("use `cluster`, `agent` or `attribute:<name>` (e.g. attribute:zone)".into()),
                    );
                    return None;
                }
                Some(s)
            });
            let slots = opt(&cf, "slots", |n| cx.int(n, "slots", 1, 10_000)).unwrap_or(1) as u32;
            if let Some(scope) = scope {
                if concurrency.iter().any(|c: &ConcurrencySpec| c.scope == scope) {
                    cx.at("duplicate-name", item, format!("scope `{scope}` is given twice in {what}"), None);
                } else {
                    concurrency.push(ConcurrencySpec { scope, slots });
                }
            }
        }
    }
    if concurrency.is_empty() {
        concurrency.push(ConcurrencySpec { scope: "cluster".into(), slots: 1 });
    }
    interval?;
    Some(JobSpec {
        name,
        pod: pod?,
        cmd: cmd?,
        interval_seconds,
        initial_delay_seconds,
        weight,
        timeout_seconds,
        backoff_seconds,
        pacing_ratio,
        warn_after_seconds,
        error_after_seconds,
        concurrency,
    })
}
