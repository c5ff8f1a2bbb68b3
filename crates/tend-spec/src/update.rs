//! The `update` section: how a new generation of a running service rolls out (service-wide,
//! overridable per pod): parallelism, minimum healthy time, deadline, automatic rollback, canary
//! and a cluster-health gate.

use serde::Serialize;

use crate::decode::Ctx;
use crate::node::Node;

/// How changes roll out to a pod's running instances.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UpdatePolicy {
    /// Instances changed at once (a sliding window over the pod's instances).
    pub max_parallel: u32,
    /// An updated instance must stay up (running, ready) this long before its step completes.
    pub min_healthy_seconds: u64,
    /// A step that has not completed after this long fails (and rolls back, with auto_rollback).
    pub progress_deadline_seconds: u64,
    /// A failed update rolls the instances already updated back to the last generation that
    /// was fully deployed.
    pub auto_rollback: bool,
    /// Update this many instances first, then pause until `tend plan continue SERVICE update`.
    pub canary: u32,
    /// A command that must pass, in a ready instance of another pod instance, before each step
    /// starts and after it completes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_gate: Option<HealthGate>,
}

/// A cluster-health check run during updates, e.g. `etcdctl endpoint health --cluster`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthGate {
    /// Run in a ready instance of this pod (never in the instance being changed).
    pub pod: String,
    pub cmd: String,
    pub timeout_seconds: u64,
}

impl Default for UpdatePolicy {
    fn default() -> Self {
        Self {
            max_parallel: 1,
            min_healthy_seconds: 10,
            progress_deadline_seconds: 600,
            auto_rollback: true,
            canary: 0,
            health_gate: None,
        }
    }
}

const FIELDS: &[&str] = &[
    "max_parallel",
    "min_healthy_seconds",
    "progress_deadline_seconds",
    "auto_rollback",
    "canary",
    "health_gate",
];

/// Decodes an `update` mapping on top of `base` (the defaults, or the service's section for a
/// pod's override). The health gate's pod is checked against `pods`.
pub(crate) fn decode_update(
    cx: &mut Ctx,
    node: &Node,
    what: &str,
    base: &UpdatePolicy,
    pods: &[&str],
) -> UpdatePolicy {
    let mut u = base.clone();
    let Some(f) = cx.fields(node, what, FIELDS) else { return u };
    if let Some(v) = f.get("max_parallel").and_then(|n| cx.int(n, "max_parallel", 1, 10_000)) {
        u.max_parallel = v as u32;
    }
    if let Some(v) = f.get("min_healthy_seconds").and_then(|n| cx.int(n, "min_healthy_seconds", 0, 86_400)) {
        u.min_healthy_seconds = v as u64;
    }
    if let Some(v) =
        f.get("progress_deadline_seconds").and_then(|n| cx.int(n, "progress_deadline_seconds", 1, 7 * 86_400))
    {
        u.progress_deadline_seconds = v as u64;
    }
    if let Some(v) = f.get("auto_rollback").and_then(|n| cx.bool(n, "auto_rollback")) {
        u.auto_rollback = v;
    }
    if let Some(v) = f.get("canary").and_then(|n| cx.int(n, "canary", 0, 10_000)) {
        u.canary = v as u32;
    }
    if let Some(n) = f.get("health_gate") {
        u.health_gate = decode_gate(cx, n, pods);
    }
    let at = f.get("min_healthy_seconds").or(f.get("progress_deadline_seconds"));
    if let (Some(at), true) = (at, u.min_healthy_seconds >= u.progress_deadline_seconds) {
        cx.at(
            "invalid-value",
            at,
            format!(
                "min_healthy_seconds ({}) must be shorter than progress_deadline_seconds ({})",
                u.min_healthy_seconds, u.progress_deadline_seconds
            ),
            Some("every step would miss its deadline".into()),
        );
    }
    u
}

fn decode_gate(cx: &mut Ctx, node: &Node, pods: &[&str]) -> Option<HealthGate> {
    let f = cx.fields(node, "health_gate", &["pod", "cmd", "timeout_seconds"])?;
    let pod = cx.require(&f, "pod", "health_gate", "data").and_then(|n| {
        let p = cx.nonempty_string(n, "health_gate.pod")?;
        if !pods.contains(&p.as_str()) {
            let hint = match crate::diag::did_you_mean(&p, pods.iter().copied()) {
                Some(m) => format!("did you mean `{m}`?"),
                None => format!("this service's pods: {}", pods.join(", ")),
            };
            cx.at(
                "unknown-pod",
                n,
                format!("health_gate names pod `{p}`, which this service does not have"),
                Some(hint),
            );
            return None;
        }
        Some(p)
    });
    let cmd = cx
        .require(&f, "cmd", "health_gate", "etcdctl endpoint health --cluster")
        .and_then(|n| cx.nonempty_string(n, "health_gate.cmd"));
    let timeout_seconds = match f.get("timeout_seconds") {
        Some(n) => cx.int(n, "timeout_seconds", 1, 3600)? as u64,
        None => 30,
    };
    Some(HealthGate { pod: pod?, cmd: cmd?, timeout_seconds })
}
