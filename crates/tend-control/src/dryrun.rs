//! Dry run of a spec change (`tend service plan FILE`): what would happen to each instance —
//! unchanged, restarted in place (with the fields that changed), new, decommissioned, or
//! refused — and what becomes of its data. Pure: the running service's configs and records in, the answer out.

use std::collections::BTreeMap;

use serde_json::Value;
use tend_api::{ChangeAction, DataFate, FieldChange, InstanceChange};
use tend_spec::{PodSpec, ServiceSpec};

use crate::configs::Configs;
use crate::records::InstanceRecord;

/// The running side of a dry run: the service's configs and instance records.
pub struct Running<'a> {
    pub configs: &'a Configs,
    pub instances: &'a BTreeMap<String, InstanceRecord>,
    pub spec: &'a ServiceSpec,
}

/// Each instance's fate under `new` (with its local artifacts' digests).
pub fn plan(
    running: Option<&Running>,
    new: &ServiceSpec,
    artifacts: &BTreeMap<String, String>,
) -> Vec<InstanceChange> {
    let mut out = Vec::new();
    for pod in &new.pods {
        let identity = tend_spec::pod_config_identity(pod, artifacts);
        let old_pod = running.and_then(|r| r.spec.pod(&pod.name));
        let refusal = old_pod.and_then(|o| refuse(o, pod));
        for i in 0..pod.count {
            let instance = format!("{}-{i}", pod.name);
            let rec = running.and_then(|r| r.instances.get(&instance)).filter(|r| r.incarnation > 0);
            let change = match (rec, &refusal) {
                (Some(_), Some(why)) => {
                    change(&instance, pod, ChangeAction::Refused, DataFate::Kept, vec![], Some(why.clone()))
                }
                (Some(rec), None) if rec.config == identity => {
                    change(&instance, pod, ChangeAction::Unchanged, fate(pod, true), vec![], None)
                }
                (Some(rec), None) => {
                    let was = running.and_then(|r| r.configs.get(&rec.config)).map(|c| c.pod.as_ref());
                    let fields = was.map(|w| diff(w, pod)).unwrap_or_default();
                    change(&instance, pod, ChangeAction::Restart, fate(pod, true), fields, None)
                }
                (None, _) => change(&instance, pod, ChangeAction::New, fate(pod, false), vec![], None),
            };
            out.push(change);
        }
    }
    // Instances the new spec no longer has (a lower count, a pod removed).
    if let Some(r) = running {
        for (instance, rec) in r.instances {
            let kept = new.pod(&rec.pod).is_some_and(|p| rec.index < p.count);
            if !kept {
                let hook = r.configs.get(&rec.config).and_then(|c| c.pod.on_decommission.clone());
                let data = if rec.volume_id.is_some() { DataFate::Retained } else { DataFate::None };
                out.push(InstanceChange {
                    instance: instance.clone(),
                    pod: rec.pod.clone(),
                    action: ChangeAction::Decommission,
                    data,
                    fields: vec![],
                    reason: hook.map(|h| format!("runs on_decommission first: {h}")),
                });
            }
        }
    }
    out
}

fn change(
    instance: &str,
    pod: &PodSpec,
    action: ChangeAction,
    data: DataFate,
    fields: Vec<FieldChange>,
    reason: Option<String>,
) -> InstanceChange {
    InstanceChange { instance: instance.into(), pod: pod.name.clone(), action, data, fields, reason }
}

fn fate(pod: &PodSpec, existing: bool) -> DataFate {
    match (pod.volumes.is_empty(), existing) {
        (true, _) => DataFate::None,
        (false, true) => DataFate::Kept,
        (false, false) => DataFate::CreatedEmpty,
    }
}

/// Why a pod change is refused (the same rule `submit` applies).
pub fn refuse(old: &PodSpec, new: &PodSpec) -> Option<String> {
    (old.volumes != new.volumes).then(|| {
        format!(
            "volumes of pod `{}` cannot change once deployed (data would be lost); deploy a new pod instead",
            new.name
        )
    })
}

/// The fields of a pod's config that differ, as dotted paths (`tasks.server.cmd`), with their
/// old and new values. `count`, `placement` and `update` are not part of the config.
pub fn diff(old: &PodSpec, new: &PodSpec) -> Vec<FieldChange> {
    let strip = |p: &PodSpec| {
        let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            for k in ["count", "placement", "update"] {
                m.remove(k);
            }
        }
        v
    };
    let mut out = Vec::new();
    walk("", &strip(old), &strip(new), &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(&p, x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null), out);
            }
        }
        _ if a != b => out.push(FieldChange { path: path.to_string(), old: a.clone(), new: b.clone() }),
        _ => {}
    }
}
