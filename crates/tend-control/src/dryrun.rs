//! Dry run of a spec change (`tend service plan FILE`): what would happen to each instance —
//! unchanged, restarted in place (with the fields that changed), new, decommissioned, or
//! refused — and what becomes of its data. Pure: the running service's configs and records in, the answer out.

use std::collections::BTreeMap;

use serde_json::Value;
use tend_api::{ChangeAction, DataFate, FieldChange, InstanceChange};
use tend_spec::{PodSpec, ServiceSpec};

use crate::configs::Configs;
use tend_model::Instance;

/// The running side of a dry run: the service's configs and instance records.
pub struct Running<'a> {
    pub configs: &'a Configs,
    pub instances: &'a BTreeMap<String, Instance>,
    pub spec: &'a ServiceSpec,
}

/// Each instance's fate under `new` (with its local artifacts' digests); `allow_data_loss` as
/// the submission would carry it.
pub fn plan(
    running: Option<&Running>,
    new: &ServiceSpec,
    artifacts: &BTreeMap<String, String>,
    allow_data_loss: bool,
) -> Vec<InstanceChange> {
    let mut out = Vec::new();
    for pod in &new.pods {
        let identity = tend_spec::pod_config_identity(pod, artifacts);
        let old_pod = running.and_then(|r| r.spec.pod(&pod.name));
        let volumes = old_pod.map_or(Ok(vec![]), |o| volume_changes(o, pod, allow_data_loss));
        let refusal = volumes.as_ref().err();
        let notes = volumes.as_ref().ok().filter(|n| !n.is_empty()).map(|n| n.join("; "));
        for i in 0..pod.count {
            let instance = format!("{}-{i}", pod.name);
            let rec = running.and_then(|r| r.instances.get(&instance)).filter(|r| r.incarnation.is_some());
            let change = match (rec, &refusal) {
                (Some(_), Some(why)) => change(
                    &instance,
                    pod,
                    ChangeAction::Refused,
                    DataFate::Kept,
                    vec![],
                    Some(why.to_string()),
                ),
                (Some(rec), None) if rec.config() == identity => {
                    change(&instance, pod, ChangeAction::Unchanged, fate(pod, true), vec![], None)
                }
                (Some(rec), None) => {
                    let was = running.and_then(|r| r.configs.get(rec.config())).map(|c| c.pod.as_ref());
                    let fields = was.map(|w| diff(w, pod)).unwrap_or_default();
                    change(&instance, pod, ChangeAction::Restart, fate(pod, true), fields, notes.clone())
                }
                (None, _) => change(&instance, pod, ChangeAction::New, fate(pod, false), vec![], None),
            };
            out.push(change);
        }
    }
    // Instances the new spec no longer has (a lower count, a pod removed).
    if let Some(r) = running {
        for (instance, rec) in r.instances {
            let kept = new.pod(&rec.id.pod).is_some_and(|p| rec.id.index < p.count);
            if !kept {
                let hook = r.configs.get(rec.config()).and_then(|c| c.pod.on_decommission.clone());
                let data = if rec.volumes.set.is_some() { DataFate::Retained } else { DataFate::None };
                out.push(InstanceChange {
                    instance: instance.clone(),
                    pod: rec.id.pod.clone(),
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

/// What a deployed pod's volume changes do, as notes for the dry run; Err(why) when the change
/// is refused (the same rule `submit` applies). Adding a volume (created empty) and growing one
/// (re-reserved in place) are rollouts like any other change; shrinking or removing one could
/// lose data and needs `allow_data_loss` — and even then nothing is deleted: a removed volume's
/// directory stays in the instance's volume set, which is retained when the instance goes.
pub fn volume_changes(old: &PodSpec, new: &PodSpec, allow_data_loss: bool) -> Result<Vec<String>, String> {
    let (mut notes, mut lossy) = (Vec::new(), Vec::new());
    for v in &new.volumes {
        match old.volumes.iter().find(|o| o.name == v.name) {
            None => notes.push(format!("adds volume `{}` ({} MB, created empty)", v.name, v.size_mb)),
            Some(o) => {
                if v.size_mb > o.size_mb {
                    notes.push(format!(
                        "grows volume `{}` from {} to {} MB (re-reserved in place)",
                        v.name, o.size_mb, v.size_mb
                    ));
                } else if v.size_mb < o.size_mb {
                    lossy.push(format!("shrinks volume `{}` from {} to {} MB", v.name, o.size_mb, v.size_mb));
                }
                if v.path != o.path {
                    notes.push(format!("mounts volume `{}` at `{}` instead of `{}`", v.name, v.path, o.path));
                }
            }
        }
    }
    for o in &old.volumes {
        if !new.volumes.iter().any(|v| v.name == o.name) {
            lossy.push(format!("removes volume `{}`", o.name));
        }
    }
    if lossy.is_empty() {
        return Ok(notes);
    }
    if !allow_data_loss {
        return Err(format!(
            "pod `{}` {}: that can lose data, so it is refused; pass --allow-data-loss (`allow_data_loss: true`) to do it anyway (nothing is deleted: the data stays in each instance's volume set, retained with it)",
            new.name,
            lossy.join(" and ")
        ));
    }
    for l in lossy {
        notes.push(format!("{l} (allowed by --allow-data-loss; its data stays in the volume set)"));
    }
    Ok(notes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(volumes: &str) -> PodSpec {
        let text = format!(
            "version: 1\nname: s\npods:\n  p:\n    count: 1\n    volumes: [{volumes}]\n    tasks:\n      t: {{ cmd: 'true' }}\n"
        );
        let spec = tend_spec::load_service("s.yml", &text).unwrap_or_else(|r| panic!("{}", r.render()));
        spec.pods[0].clone()
    }

    /// (old volumes, new volumes, allow_data_loss) → notes, or the refusal's start.
    fn check(old: &str, new: &str, allow: bool, expected: Result<&[&str], &str>) {
        let got = volume_changes(&pod(old), &pod(new), allow);
        match (got, expected) {
            (Ok(notes), Ok(want)) => assert_eq!(notes, want, "{old} → {new}"),
            (Err(why), Err(want)) => assert!(why.starts_with(want), "{why}"),
            (got, want) => panic!("{old} → {new}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn volume_changes_are_rolled_out_or_refused() {
        let d1 = "{ name: d, path: d, size_mb: 1 }";
        let d5 = "{ name: d, path: d, size_mb: 5 }";
        let w = "{ name: w, path: w, size_mb: 2 }";
        check(d1, d1, false, Ok(&[]));
        check(d1, d5, false, Ok(&["grows volume `d` from 1 to 5 MB (re-reserved in place)"]));
        check(d1, &format!("{d1}, {w}"), false, Ok(&["adds volume `w` (2 MB, created empty)"]));
        check(
            d1,
            "{ name: d, path: e, size_mb: 1 }",
            false,
            Ok(&["mounts volume `d` at `e` instead of `d`"]),
        );
        check(d5, d1, false, Err("pod `p` shrinks volume `d` from 5 to 1 MB: that can lose data"));
        check(&format!("{d1}, {w}"), d1, false, Err("pod `p` removes volume `w`: that can lose data"));
        check(
            &format!("{d5}, {w}"),
            d1,
            true,
            Ok(&[
                "shrinks volume `d` from 5 to 1 MB (allowed by --allow-data-loss; its data stays in the volume set)",
                "removes volume `w` (allowed by --allow-data-loss; its data stays in the volume set)",
            ]),
        );
    }
}
