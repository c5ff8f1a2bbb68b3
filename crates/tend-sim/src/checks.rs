//! The invariants, checked after every simulated step against the agents' real state and the
//! store (a god's-eye view the control plane does not have):
//!
//! - never two live incarnations of one instance in fence mode (a partitioned or crashed agent's
//!   pods count as live until they are fenced or die);
//! - no volume set deleted while an instance or its retention owns it, and none reused after;
//! - incarnation numbers of an instance only grow (also across a service's delete and re-create);
//! - a cluster-scoped maintenance job never runs twice at once;
//! - no relaunch without a cause: a new incarnation of an instance needs a user operation on it
//!   or its service, or a fault of its agent or its tasks, since the previous one (a control-plane
//!   crash, slow store calls or messy messages are no cause).
//!
//! Convergence and "no relaunch without a cause" are checked by the world once faults stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tend_api::Assignment;
use tend_control::records::{decode_instance, VolumeRecord, VolumeRecordState};
use tend_store::StateStore;

use crate::world::World;

/// (service, instance).
type Key = (String, String);

/// Invariant bookkeeping of one run.
#[derive(Default)]
pub struct Checks {
    violations: Mutex<Vec<String>>,
    /// Per instance: the highest incarnation seen, since when (sim ms), on which agent, with
    /// which config.
    seen: Mutex<BTreeMap<Key, Seen>>,
    causes: Mutex<Causes>,
    /// The user operation under way (one at a time), a cause until it returns.
    open: Mutex<Option<CauseHandle>>,
    pub count: AtomicU64,
}

/// The last launched incarnation of an instance as the checks saw it.
#[derive(Clone)]
struct Seen {
    incarnation: u64,
    since_ms: u64,
    agent: Option<String>,
    config: String,
}

/// What may justify a relaunch: intervals of simulated time (ms).
#[derive(Default)]
struct Causes {
    service: BTreeMap<String, Vec<(u64, u64)>>,
    instance: BTreeMap<Key, Vec<(u64, u64)>>,
    agent: BTreeMap<String, Vec<(u64, u64)>>,
}

/// A recorded cause, to end later.
pub struct CauseHandle {
    key: (u8, String, String),
    index: usize,
}

/// What a cause concerns.
pub enum Cause<'a> {
    Service(&'a str),
    Instance(&'a str, &'a str),
    Agent(&'a str),
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

    /// Records a cause from `from_ms` to `to_ms` (simulated ms since the start); returns a handle
    /// for [`Checks::end_cause`] (an operation is a cause from its start until it returns).
    pub fn cause(&self, c: Cause<'_>, from_ms: u64, to_ms: u64) -> CauseHandle {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let (list, key) = match c {
            Cause::Service(s) => {
                (causes.service.entry(s.to_string()).or_default(), (0, s.to_string(), String::new()))
            }
            Cause::Instance(s, i) => (
                causes.instance.entry((s.to_string(), i.to_string())).or_default(),
                (1, s.to_string(), i.to_string()),
            ),
            Cause::Agent(a) => {
                (causes.agent.entry(a.to_string()).or_default(), (2, a.to_string(), String::new()))
            }
        };
        list.push((from_ms, to_ms));
        CauseHandle { key, index: list.len() - 1 }
    }

    /// A user operation starts: a cause until [`Checks::close`] (or the end of the fault phase).
    pub fn open(&self, c: Cause<'_>, from_ms: u64) {
        let h = self.cause(c, from_ms, u64::MAX);
        if let Some(old) = self.open.lock().unwrap_or_else(|e| e.into_inner()).replace(h) {
            self.end_cause(old, from_ms);
        }
    }

    /// The user operation under way (if any) ended at `to_ms`.
    pub fn close(&self, to_ms: u64) {
        if let Some(h) = self.open.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.end_cause(h, to_ms);
        }
    }

    /// Ends a cause recorded as open (at `to_ms`).
    pub fn end_cause(&self, h: CauseHandle, to_ms: u64) {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let list = match h.key.0 {
            0 => causes.service.get_mut(&h.key.1),
            1 => causes.instance.get_mut(&(h.key.1.clone(), h.key.2.clone())),
            _ => causes.agent.get_mut(&h.key.1),
        };
        if let Some(c) = list.and_then(|l| l.get_mut(h.index)) {
            c.1 = to_ms;
        }
    }

    /// Whether something justifies relaunching `key` (on `agent`) between `since` and `now`. An
    /// agent's fault counts until its next report can have arrived (a healed partition is still
    /// silence to the control plane until then): 5 s after the fault ended.
    fn justified(&self, key: &Key, agent: Option<&str>, since: u64, now: u64) -> bool {
        const AFTERMATH_MS: u64 = 5_000;
        let causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let hit = |v: Option<&Vec<(u64, u64)>>, slack: u64| {
            v.is_some_and(|v| v.iter().any(|(a, b)| *a <= now && b.saturating_add(slack) >= since))
        };
        hit(causes.service.get(&key.0), 0)
            || hit(causes.instance.get(key), 0)
            || agent.is_some_and(|a| hit(causes.agent.get(a), AFTERMATH_MS))
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
        let rec: Option<VolumeRecord> = match w.mem.get(&tend_control::records::volume_key(id)).await {
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
            if let Ok(i) = decode_instance(&kv.value) {
                if i.volumes.set.as_ref().is_some_and(|v| v.as_str() == id) {
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

    /// Incarnation numbers only grow, and never without a cause.
    pub async fn check_store(&self, w: &World) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = w.clock.elapsed_ms();
        let kvs = w.mem.range("services/").await.map(|r| r.kvs).unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for kv in kvs {
            let Some((svc, rest)) = kv.key.trim_start_matches("services/").split_once('/') else { continue };
            let Some(inst) = rest.strip_prefix("instances/") else { continue };
            let Ok(rec) = decode_instance(&kv.value) else { continue };
            let Some(inc) = rec.incarnation.as_ref() else {
                continue; // Not launched yet (e.g. waiting for placement): no number to compare.
            };
            let key = (svc.to_string(), inst.to_string());
            let last = seen.get(&key).cloned();
            if let Some(l) = last.as_ref().filter(|l| inc.number < l.incarnation) {
                let msg =
                    format!("incarnation of {svc}/{inst} went back from {} to {}", l.incarnation, inc.number);
                self.violate(w, msg);
                continue;
            }
            // Released, waiting to be placed (a replacement in fence mode): it gets the number
            // it launches with.
            if rec.reservation.is_none() || last.as_ref().is_some_and(|l| l.incarnation == inc.number) {
                continue;
            }
            // A relaunch onto a new config is the spec change's doing (a rolling update reaches
            // each instance in turn); any other needs a cause since the previous incarnation.
            if let Some(l) = last.filter(|l| l.config == inc.config) {
                if !self.justified(&key, l.agent.as_deref(), l.since_ms, now) {
                    let msg = format!(
                        "relaunch of {svc}/{inst} (#{} -> #{}) without a cause since {:.1} s",
                        l.incarnation,
                        inc.number,
                        l.since_ms as f64 / 1000.0
                    );
                    self.violate(w, msg);
                }
            }
            let s = Seen {
                incarnation: inc.number,
                since_ms: now,
                agent: rec.agent().map(str::to_string),
                config: inc.config.clone(),
            };
            seen.insert(key, s);
        }
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = seen;
    }
}
