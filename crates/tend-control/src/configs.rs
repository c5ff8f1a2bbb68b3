//! Every pod config an instance may still run, by its identity. An instance runs the config its
//! record names until a plan step (or a replacement) moves it on, so its agent must be given
//! that config's tasks, env and artifacts — not the newest spec's. Each accepted generation is
//! kept in the store (`services/<name>/generations/<n>`) while an instance runs one of its
//! configs, or it is the current or the last deployed generation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tend_model::hash::HashMap;

use tend_spec::{PodSpec, ServiceSpec};
use tend_store::TxnOp;

use crate::records::*;
use crate::Control;

/// A pod config: its spec and the digests of the local artifacts it was accepted with.
#[derive(Clone, Debug)]
pub struct PodConfig {
    pub pod: Arc<PodSpec>,
    pub artifacts: Arc<BTreeMap<String, String>>,
}

/// Pod configs by identity, and which identities each stored generation holds.
#[derive(Clone, Debug, Default)]
pub struct Configs {
    pub by_identity: HashMap<String, PodConfig>,
    pub generations: BTreeMap<u64, BTreeSet<String>>,
}

pub fn generation_key(service: &str, generation: u64) -> String {
    format!("services/{service}/generations/{generation:020}")
}

fn generations_prefix(service: &str) -> String {
    format!("services/{service}/generations/")
}

impl Configs {
    fn add(&mut self, generation: u64, rec: &ServiceRecord, spec: &ServiceSpec) {
        let artifacts = Arc::new(rec.artifacts.clone());
        for pod in &spec.pods {
            let id = tend_spec::pod_config_identity(pod, &rec.artifacts);
            self.generations.entry(generation).or_default().insert(id.clone());
            self.by_identity
                .entry(id)
                .or_insert_with(|| PodConfig { pod: Arc::new(pod.clone()), artifacts: artifacts.clone() });
        }
    }

    /// The configs of the stored generations of a service, and of `current` (which wins).
    pub async fn load(s: &Control, current: &ServiceRecord, spec: &ServiceSpec) -> anyhow::Result<Configs> {
        let mut c = Configs::default();
        c.add(current.generation, current, spec);
        for kv in s.inner.store.range(&generations_prefix(&current.name)).await?.kvs {
            let Ok(rec) = serde_json::from_slice::<ServiceRecord>(&kv.value) else { continue };
            if rec.generation == current.generation {
                continue;
            }
            // A generation that no longer loads (an upgrade changed the spec format) offers no
            // configs: its instances get the current pod's, as before generations were kept.
            if let Ok(old) = tend_spec::load_service(&rec.file, &rec.spec) {
                c.add(rec.generation, &rec, &old);
            }
        }
        Ok(c)
    }

    /// The config an instance record names, if known.
    pub fn get(&self, identity: &str) -> Option<&PodConfig> {
        self.by_identity.get(identity)
    }

    /// Deletes of stored generations no longer needed: not `keep` (current, deployed) and no
    /// instance runs one of their configs.
    pub fn prune(&self, service: &str, in_use: &BTreeSet<String>, keep: &[u64]) -> Vec<TxnOp> {
        self.generations
            .iter()
            .filter(|(g, ids)| !keep.contains(g) && ids.is_disjoint(in_use))
            .map(|(g, _)| TxnOp::Delete { key: generation_key(service, *g) })
            .collect()
    }
}
