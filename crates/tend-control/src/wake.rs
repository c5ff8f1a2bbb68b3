//! Which agents' desired state may have changed: a long-polling agent wakes when one of its own
//! instances (or volumes) changed, or when something every agent sees changed, not on every
//! change in the cluster. With 10,000 agents, a launch wakes the agents it launched on, not all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tend_model::hash::HashMap;

use tokio::sync::watch;

/// An instance of one service: (service, instance).
pub type InstanceId = (String, String);

/// Per-agent change numbers, from one sequence shared with the changes every agent sees.
pub struct AgentWake {
    seq: AtomicU64,
    /// The last change every agent sees.
    all: watch::Sender<u64>,
    /// The agents, and the last change every assignment may show (a spec or its configs
    /// replaced): no difference reaches across it. Numbers of both are taken under this lock,
    /// so a reader that saw number N finds every change up to N logged.
    agents: Mutex<Lanes>,
}

#[derive(Default)]
struct Lanes {
    lanes: HashMap<String, Lane>,
    reset: u64,
}

/// One agent: its change number, and which instances changed after `floor` (complete above it).
struct Lane {
    tx: watch::Sender<u64>,
    log: Vec<(u64, InstanceId)>,
    floor: u64,
    /// The agent asked for a difference since the lane began: a log is worth keeping.
    asks: bool,
}

/// An agent that has not asked for a while keeps no longer a log than this: past it, its next
/// answer is a full one.
const LOG_MAX: usize = 256;

impl Lane {
    fn new(n: u64, floor: u64) -> Lane {
        Lane { tx: watch::channel(n).0, log: Vec::new(), floor, asks: false }
    }
}

impl AgentWake {
    /// Numbers start at `base` (the start time of this control plane, in ms), above any number
    /// an earlier one handed out, so that an agent's old number never hides a change.
    pub fn new(base: u64) -> AgentWake {
        AgentWake {
            seq: AtomicU64::new(base),
            all: watch::channel(base).0,
            agents: Mutex::new(Lanes { lanes: HashMap::default(), reset: base }),
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.agents.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, agent: &str) -> watch::Receiver<u64> {
        let mut lanes = self.lanes();
        let floor = self.seq.load(Ordering::SeqCst);
        lanes.lanes.entry(agent.to_string()).or_insert_with(|| Lane::new(0, floor)).tx.subscribe()
    }

    /// Something every agent's desired state shows changed, besides assignments (job runs,
    /// volume releases).
    pub fn all(&self) {
        let n = self.next();
        self.all.send_modify(|v| *v = (*v).max(n));
    }

    /// Something any assignment may show changed (a spec or its configs): every agent's next
    /// answer is a full one.
    pub fn reset(&self) {
        let n = {
            let mut lanes = self.lanes();
            let n = self.next();
            lanes.reset = n;
            n
        };
        self.all.send_modify(|v| *v = (*v).max(n));
    }

    /// Something the desired state of these agents shows changed (no assignment in particular).
    pub fn agents<'a>(&self, agents: impl IntoIterator<Item = &'a str>) {
        self.changes(agents.into_iter().map(|a| (a, None)));
    }

    /// The desired state of these agents changed: with an instance, that instance's assignment.
    pub fn changes<'a>(&self, changes: impl IntoIterator<Item = (&'a str, Option<(&'a str, &'a str)>)>) {
        let mut lanes = self.lanes();
        let n = self.next();
        let mut woken: Vec<&str> = Vec::new();
        for (a, inst) in changes {
            let lane = match lanes.lanes.get_mut(a) {
                Some(l) => l,
                None => lanes.lanes.entry(a.to_string()).or_insert_with(|| Lane::new(n, n)),
            };
            match inst {
                Some((svc, i)) if lane.asks && lane.log.len() < LOG_MAX => {
                    lane.log.push((n, (svc.to_string(), i.to_string())));
                }
                Some(_) => {
                    lane.log.clear();
                    lane.floor = n;
                }
                None => {}
            }
            if woken.last() != Some(&a) {
                woken.push(a);
            }
        }
        for a in woken {
            if let Some(l) = lanes.lanes.get(a) {
                l.tx.send_modify(|v| *v = (*v).max(n));
            }
        }
    }

    /// The instances whose assignment on `agent` changed after change number `since`; None:
    /// not known (a change every assignment may show, or a history not kept): answer with
    /// everything. What is at or below `since` is forgotten (the agent holds it).
    pub fn changed_since(&self, agent: &str, since: u64) -> Option<Vec<InstanceId>> {
        let mut guard = self.lanes();
        let lanes = &mut *guard;
        let lane = lanes.lanes.get_mut(agent)?;
        lane.asks = true;
        let known = since >= lanes.reset && since >= lane.floor && since <= self.seq.load(Ordering::SeqCst);
        if !known {
            return None;
        }
        lane.log.retain(|(n, _)| *n > since);
        lane.floor = since;
        let mut keys: Vec<InstanceId> = lane.log.iter().map(|(_, k)| k.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        Some(keys)
    }

    /// The change number `agent` is at now.
    pub fn current(&self, agent: &str) -> u64 {
        let own = self.lanes().lanes.get(agent).map_or(0, |l| *l.tx.borrow());
        own.max(*self.all.borrow())
    }

    /// Waits until `agent`'s change number passes `index`, or `wait` passed; returns it.
    pub async fn wait(&self, agent: &str, index: u64, wait: Duration) -> u64 {
        let mut own = self.channel(agent);
        let mut all = self.all.subscribe();
        let now = self.current(agent);
        if index > now {
            // Handed out by another control plane: not comparable, answer at once.
            return now;
        }
        let _ = tokio::time::timeout(wait, async {
            loop {
                if (*own.borrow_and_update()).max(*all.borrow_and_update()) > index {
                    return;
                }
                tokio::select! {
                    r = own.changed() => if r.is_err() { return },
                    r = all.changed() => if r.is_err() { return },
                }
            }
        })
        .await;
        self.current(agent)
    }
}

/// Waiters on the reported tasks of one instance each: a report wakes the steps of the
/// instances it changed, not every step waiting on the same agent.
#[derive(Default)]
pub struct InstanceWake {
    waiters: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    by_service: HashMap<String, HashMap<String, watch::Sender<u64>>>,
    subscribed: u64,
}

impl InstanceWake {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees a change once a report changed what is known of the instance.
    pub fn subscribe(&self, service: &str, instance: &str) -> watch::Receiver<u64> {
        let mut w = self.lock();
        w.subscribed += 1;
        if w.subscribed.is_multiple_of(4096) {
            // Waiters gone whose instance no report named since: dropped.
            for m in w.by_service.values_mut() {
                m.retain(|_, tx| tx.receiver_count() > 0);
            }
            w.by_service.retain(|_, m| !m.is_empty());
        }
        let by_inst = w.by_service.entry(service.to_string()).or_default();
        match by_inst.get(instance) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                by_inst.insert(instance.to_string(), tx);
                rx
            }
        }
    }

    /// A report changed what is known of these instances (service, instance).
    pub fn notify<'a>(&self, instances: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let mut w = self.lock();
        for (svc, inst) in instances {
            let Some(by_inst) = w.by_service.get_mut(svc) else { continue };
            let Some(tx) = by_inst.get(inst) else { continue };
            if tx.receiver_count() == 0 {
                by_inst.remove(inst);
            } else {
                tx.send_modify(|v| *v += 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_agent_wakes_for_its_own_changes_and_for_everyone_s() {
        let w = std::sync::Arc::new(AgentWake::new(100));
        let at = w.current("a");
        assert_eq!(at, 100);
        // Another agent's change: `a` sleeps through it, to the timeout.
        w.agents(["b"]);
        assert_eq!(w.wait("a", at, Duration::from_millis(50)).await, at);
        // Its own change wakes it, and so does one for all.
        let w2 = w.clone();
        let h = tokio::spawn(async move { w2.wait("a", at, Duration::from_secs(60)).await });
        tokio::task::yield_now().await;
        w.agents(["a", "c"]);
        let n = h.await.unwrap();
        assert!(n > at);
        w.all();
        assert!(w.wait("a", n, Duration::from_secs(60)).await > n);
        // A number from an earlier control plane (below `base`) is passed at once, and so is one
        // above anything this one handed out.
        assert!(AgentWake::new(1_000).current("z") >= 1_000);
        assert_eq!(w.wait("a", u64::MAX, Duration::from_secs(60)).await, w.current("a"));
    }
    #[test]
    fn an_agent_learns_which_instances_changed_since_its_last_answer() {
        let w = AgentWake::new(100);
        let key = |i: &str| ("s".to_string(), i.to_string());
        // Until the agent asks for a difference, nothing is logged: its first answer is full.
        w.changes([("a", Some(("s", "w-0")))]);
        assert_eq!(w.changed_since("a", 100), None);
        let at = w.current("a");
        w.changes([("a", Some(("s", "w-1"))), ("b", Some(("s", "w-9")))]);
        w.changes([("a", Some(("s", "w-2"))), ("a", None)]);
        w.changes([("a", Some(("s", "w-1")))]);
        assert_eq!(w.changed_since("a", at), Some(vec![key("w-1"), key("w-2")]));
        // Asked again from a later index: only what came after it.
        let at2 = w.current("a");
        assert_eq!(w.changed_since("a", at2), Some(vec![]));
        w.changes([("a", Some(("s", "w-3")))]);
        assert_eq!(w.changed_since("a", at2), Some(vec![key("w-3")]));
        // An index below what was forgotten, or from another control plane: not known.
        assert_eq!(w.changed_since("a", at), None);
        assert_eq!(w.changed_since("a", u64::MAX), None);
        // A change every assignment may show: no difference reaches across it.
        let at3 = w.current("a");
        w.reset();
        assert_eq!(w.changed_since("a", at3), None);
        assert!(w.current("a") > at3, "and the agent wakes for it");
        let at4 = w.current("a");
        assert_eq!(w.changed_since("a", at4), Some(vec![]));
        // An agent that stops asking keeps a bounded log; past it, its next answer is full.
        for _ in 0..=LOG_MAX {
            w.changes([("a", Some(("s", "w-0")))]);
        }
        assert_eq!(w.changed_since("a", at4), None);
    }

    #[tokio::test]
    async fn a_step_wakes_for_reports_on_its_own_instance_only() {
        let w = InstanceWake::default();
        let mut rx = w.subscribe("s", "w-0");
        w.notify([("s", "w-1"), ("t", "w-0")]);
        assert!(!rx.has_changed().unwrap());
        w.notify([("s", "w-0")]);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // Dropped waiters are forgotten when their instance is next named.
        drop(rx);
        w.notify([("s", "w-0")]);
        assert!(w.lock().by_service.get("s").is_none_or(|m| m.is_empty()));
    }
}
