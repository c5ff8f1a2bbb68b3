//! The invariants, checked after every simulated step against the agents' real state and the
//! store (a god's-eye view the control plane does not have):
//!
//! - never two live incarnations of one instance in fence mode (a partitioned or crashed agent's
//!   pods count as live until they are fenced or die);
//! - no volume set deleted while an instance or its retention owns it, and none reused after;
//! - incarnation numbers of an instance only grow (also across a service's delete and re-create);
//! - a cluster-scoped maintenance job never runs twice at once.
//!
//! Convergence and "no relaunch without a cause" are checked by the world once faults stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tend_api::Assignment;
use tend_server::records::{InstanceRecord, VolumeRecord, VolumeRecordState};
use tend_store::StateStore;

use crate::world::World;

/// (service, instance).
type Key = (String, String);

/// Invariant bookkeeping of one run.
#[derive(Default)]
pub struct Checks {
    violations: Mutex<Vec<String>>,
    max_incarnation: Mutex<BTreeMap<(String, String), u64>>,
    pub count: AtomicU64,
}

impl Checks {
    pub fn violate(&self, w: &World, msg: String) {
        let mut v = self.violations.lock().unwrap_or_else(|e| e.into_inner());
        if !v.contains(&msg) {
            w.trace.log(format!("VIOLATION: {msg}"));
            v.push(msg);
        }
    }

    /// The first violation seen, if any.
    pub fn first(&self) -> Option<String> {
        self.violations.lock().unwrap_or_else(|e| e.into_inner()).first().cloned()
    }

    /// An agent launches an incarnation: its volume set must not be one it deleted.
    pub fn on_launch(&self, agent: &str, a: &Assignment, deleted: &std::collections::BTreeSet<String>) {
        if !a.volume_id.is_empty() && deleted.contains(&a.volume_id) {
            let msg = format!(
                "agent {agent} launches {}/{}#{} on volume set {} which it deleted before",
                a.service, a.instance, a.incarnation, a.volume_id
            );
            self.violations.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }
    }

    /// An agent is about to delete a released volume set: the store must say it is being deleted
    /// (retention over or a user asked) and no instance may own it.
    pub async fn on_volume_delete(&self, w: &World, agent: &str, id: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let rec: Option<VolumeRecord> = match w.mem.get(&tend_server::records::volume_key(id)).await {
            Ok(Some(kv)) => serde_json::from_slice(&kv.value).ok(),
            _ => None,
        };
        match rec {
            Some(r) if r.state == VolumeRecordState::Deleting => {}
            Some(r) => self
                .violate(w, format!("agent {agent} deletes volume set {id} whose record is {:?}", r.state)),
            // Gone already: a late release of a confirmed deletion is harmless only if nothing owns it.
            None => {}
        }
        for kv in w.mem.range("services/").await.map(|r| r.kvs).unwrap_or_default() {
            if !kv.key.contains("/instances/") {
                continue;
            }
            if let Ok(i) = serde_json::from_slice::<InstanceRecord>(&kv.value) {
                if i.volume_id.as_deref() == Some(id) {
                    self.violate(w, format!("agent {agent} deletes volume set {id} owned by {}", kv.key));
                }
            }
        }
    }

    /// Two live incarnations of one fence-mode instance; a job running twice.
    pub fn check_agents(&self, w: &World) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut live: BTreeMap<Key, Vec<(String, u64, bool)>> = BTreeMap::new();
        let mut jobs: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        for ag in &w.agents {
            for (k, inc, fence) in ag.live() {
                live.entry(k).or_default().push((ag.id.clone(), inc, fence));
            }
            for r in ag.running_jobs() {
                jobs.entry((r.service.clone(), r.job.clone()))
                    .or_default()
                    .push(format!("{}@{}", r.run_id, ag.id));
            }
        }
        for ((svc, inst), v) in live {
            if v.len() > 1 && v.iter().any(|(_, _, fence)| *fence) {
                let who: Vec<String> = v.iter().map(|(a, i, _)| format!("#{i} on {a}")).collect();
                self.violate(
                    w,
                    format!("two live incarnations of fence-mode {svc}/{inst}: {}", who.join(", ")),
                );
            }
        }
        for ((svc, job), v) in jobs {
            if v.len() > 1 {
                self.violate(w, format!("job {svc}/{job} runs {} times at once: {}", v.len(), v.join(", ")));
            }
        }
    }

    /// Incarnation numbers only grow.
    pub async fn check_store(&self, w: &World) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let kvs = w.mem.range("services/").await.map(|r| r.kvs).unwrap_or_default();
        let mut seen = self.max_incarnation.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for kv in kvs {
            let Some((svc, rest)) = kv.key.trim_start_matches("services/").split_once('/') else { continue };
            let Some(inst) = rest.strip_prefix("instances/") else { continue };
            let Ok(rec) = serde_json::from_slice::<InstanceRecord>(&kv.value) else { continue };
            if rec.incarnation == 0 {
                continue; // Not launched yet (e.g. waiting for placement): no number to compare.
            }
            let key = (svc.to_string(), inst.to_string());
            let max = seen.entry(key).or_insert(0);
            if rec.incarnation < *max {
                let msg =
                    format!("incarnation of {svc}/{inst} went back from {} to {}", *max, rec.incarnation);
                self.violate(w, msg);
            }
            *max = (*max).max(rec.incarnation);
        }
        *self.max_incarnation.lock().unwrap_or_else(|e| e.into_inner()) = seen;
    }
}
