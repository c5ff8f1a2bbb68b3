//! Which agents' desired state may have changed: a long-polling agent wakes when one of its own
//! instances (or volumes) changed, or when something every agent sees changed, not on every
//! change in the cluster. With 10,000 agents, a launch wakes the agents it launched on, not all.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Per-agent change numbers, from one sequence shared with the changes every agent sees.
pub struct AgentWake {
    seq: AtomicU64,
    /// The last change every agent sees.
    all: watch::Sender<u64>,
    /// The last change each agent sees alone.
    agents: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl AgentWake {
    /// Numbers start at `base` (the start time of this control plane, in ms), above any number
    /// an earlier one handed out, so that an agent's old number never hides a change.
    pub fn new(base: u64) -> AgentWake {
        AgentWake {
            seq: AtomicU64::new(base),
            all: watch::channel(base).0,
            agents: Mutex::new(HashMap::new()),
        }
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn channel(&self, agent: &str) -> watch::Receiver<u64> {
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        match agents.get(agent) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = watch::channel(0);
                agents.insert(agent.to_string(), tx);
                rx
            }
        }
    }

    /// Something every agent's desired state shows changed.
    pub fn all(&self) {
        let n = self.next();
        self.all.send_modify(|v| *v = (*v).max(n));
    }

    /// Something the desired state of these agents shows changed.
    pub fn agents<'a>(&self, agents: impl IntoIterator<Item = &'a str>) {
        let n = self.next();
        let mut map = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        for a in agents {
            match map.get(a) {
                Some(tx) => tx.send_modify(|v| *v = (*v).max(n)),
                None => {
                    map.insert(a.to_string(), watch::channel(n).0);
                }
            }
        }
    }

    /// The change number `agent` is at now.
    pub fn current(&self, agent: &str) -> u64 {
        let own =
            self.agents.lock().unwrap_or_else(|e| e.into_inner()).get(agent).map_or(0, |tx| *tx.borrow());
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
}
