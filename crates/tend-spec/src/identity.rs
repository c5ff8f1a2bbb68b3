//! Config identity: a canonical hash of a pod's effective config, to tell whether a running task
//! matches the target.
//!
//! The identity covers everything that changes what runs inside an instance: tasks (commands,
//! resources, ports, env, checks), artifacts with their checksums, volumes and pod env. It leaves
//! out `count` and `placement`, which decide how many instances there are and where, not what
//! each one runs: scaling up does not restart the instances already running.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::service::PodSpec;

/// `sha256:<hex>` of the pod's canonical config. `artifact_digests` maps an artifact URI without
/// a declared sha256 to the digest of its current content (the edge computes it), so that a
/// changed local file changes the identity.
pub fn pod_config_identity(pod: &PodSpec, artifact_digests: &BTreeMap<String, String>) -> String {
    let artifacts: Vec<serde_json::Value> = pod
        .artifacts
        .iter()
        .map(|a| {
            let digest = a.sha256.clone().or_else(|| artifact_digests.get(&a.uri).cloned());
            serde_json::json!({ "uri": a.uri, "sha256": digest, "extract": a.extract })
        })
        .collect();
    let tasks: Vec<serde_json::Value> =
        pod.tasks.iter().map(|t| serde_json::json!({ "name": t.name, "spec": t })).collect();
    let canonical = serde_json::json!({
        "identity_version": 1,
        "name": pod.name,
        "artifacts": artifacts,
        "volumes": pod.volumes,
        "env": pod.env,
        "tasks": tasks,
    });
    let mut text = String::new();
    canonical_json(&canonical, &mut text);
    format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))
}

/// JSON text with object keys sorted at every level, whatever serde_json's map order is.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String((*k).clone()).to_string());
                out.push(':');
                canonical_json(&m[k.as_str()], out);
            }
            out.push('}');
        }
        serde_json::Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}
