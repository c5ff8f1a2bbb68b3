//! Property: in fence mode there are never two live incarnations of an instance, whatever the
//! partitions (either direction), task crashes, control-plane restarts (memory lost, store kept)
//! and clock-rate differences between the agents. A replacement is placed in two phases: released
//! first, placed once the old agent reported nothing running or stayed silent for the fence time
//! (as `tend-server`'s `launch.rs` does); placing at once finds two live incarnations. A small world of three agents and one instance is driven in
//! 100 ms ticks; the control plane's decisions are the real pure ones (`assess`, `decide`).

use proptest::prelude::*;
use tend_control::rules::recovery::{assess, InstanceFacts, Observed, FENCE_MARGIN_MS};
use tend_scheduler::recovery::{decide, FailureMonitor, InstanceView, RecoveryAction, ReplacementLimits};

const TICK: u64 = 100;
const REPORT_EVERY: u64 = 500;
const LOST_AFTER: u64 = 3_000;

#[derive(Clone, Copy, Debug)]
enum Ev {
    /// Run for n ticks.
    Run(u8),
    /// Cut or heal the links of agent `a`: reports to the control plane, answers back.
    Links { agent: usize, up: bool, down: bool },
    /// The control plane restarts: its memory of reports is gone, the store is kept.
    Restart,
    /// The running task crashes; its agent restarts it in place (seen as a task down while the
    /// control plane hears of it).
    Crash,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => (1u8..60).prop_map(Ev::Run),
        2 => (0usize..3, any::<bool>(), any::<bool>()).prop_map(|(agent, up, down)| Ev::Links { agent, up, down }),
        1 => Just(Ev::Restart),
        1 => Just(Ev::Crash),
    ]
}

struct Agent {
    up_link: bool,
    down_link: bool,
    /// Its clock's rate against true time (its own measure of silence).
    rate: f64,
    /// When the control plane last acknowledged its report (true time).
    last_contact: u64,
    /// The incarnation it runs (live), if any.
    running: Option<u64>,
}

struct World {
    now: u64,
    agents: Vec<Agent>,
    fence_after: u64,
    // The store: the instance record.
    incarnation: u64,
    /// None while a replacement waits for the old incarnation to be surely dead.
    placed_on: Option<usize>,
    pending_from: Option<usize>,
    cp_started: u64,
    /// What each agent's last report said: is the instance running there?
    reported_running: Vec<bool>,
    down_since: Option<u64>,
    unreachable_since: Option<u64>,
    replaced_ms: Option<u64>,
    /// A crash the agent is recovering from (seen as a task down while it lasts).
    crashed_at: Option<u64>,
    // The control plane's memory: last report received per agent.
    last_seen: Vec<Option<u64>>,
}

impl World {
    fn tick(&mut self) -> Result<(), TestCaseError> {
        self.now += TICK;
        let now = self.now;
        for (i, a) in self.agents.iter_mut().enumerate() {
            // Reports (with their acknowledgement) every REPORT_EVERY.
            if now.is_multiple_of(REPORT_EVERY) && a.up_link {
                self.last_seen[i] = Some(now);
                self.reported_running[i] = a.running.is_some();
                if a.down_link {
                    a.last_contact = now;
                }
            }
            // Fencing, by the agent's own clock.
            let silent = ((now - a.last_contact) as f64 * a.rate) as u64;
            if a.running.is_some() && silent > self.fence_after {
                a.running = None;
            }
            // Desired state (needs the link back): run the current incarnation if it is placed
            // here, kill anything else.
            if a.down_link {
                if self.placed_on == Some(i) {
                    if a.running != Some(self.incarnation) {
                        a.running = Some(self.incarnation);
                    }
                } else {
                    a.running = None;
                }
            }
        }
        self.recovery();
        let live = self.agents.iter().filter(|a| a.running.is_some()).count();
        prop_assert!(live <= 1, "two live incarnations at {} ms", now);
        Ok(())
    }

    fn recovery(&mut self) {
        let now = self.now;
        let fence_ms = self.fence_after + FENCE_MARGIN_MS;
        let up = |w: &World, i: usize| w.last_seen[i].is_some_and(|t| now - t <= LOST_AFTER);
        let Some(agent) = self.placed_on else {
            // Two-phase replacement: place only once the old agent confirmed, after the decision,
            // that nothing runs, or after the fence time without contact.
            let old = self.pending_from.unwrap_or(0);
            let confirmed = self.last_seen[old].is_some_and(|t| t > self.replaced_ms.unwrap_or(0))
                && up(self, old)
                && !self.reported_running[old];
            let silent_since = self.last_seen[old].unwrap_or(self.cp_started);
            if confirmed || now >= silent_since + fence_ms {
                if let Some(next) = (1..=3).map(|d| (old + d) % 3).find(|i| up(self, *i)) {
                    self.placed_on = Some(next);
                }
            }
            return;
        };
        let up = self.last_seen[agent].is_some_and(|t| now - t <= LOST_AFTER);
        let observed =
            if up { Observed::Up } else { Observed::AgentSilent { last_seen_ms: self.last_seen[agent] } };
        // Reachable but not yet reported as running counts as starting; running is up; a
        // recent crash is a task down.
        let observed = match observed {
            Observed::Up if self.crashed_at.is_some_and(|c| now < c + 3 * REPORT_EVERY) => {
                Observed::TaskDown { since_ms: self.crashed_at.unwrap_or(now) }
            }
            Observed::Up if self.agents[agent].running != Some(self.incarnation) => Observed::Starting,
            o => o,
        };
        let facts = InstanceFacts {
            incarnation: self.incarnation,
            config: "c".into(),
            ready_config: Some("c".into()),
            ready_incarnation: self.incarnation,
            down_since_ms: self.down_since,
            unreachable_since_ms: self.unreachable_since,
            observed,
            up_since_ms: Some(0),
        };
        let a = assess(&facts, now);
        self.down_since = a.down_since_ms;
        self.unreachable_since = a.unreachable_since_ms;
        let view = InstanceView {
            instance: "db-0".into(),
            health: a.health,
            replacing: false,
            busy: a.blocked.is_some(),
            min_unreachable_ms: self.fence_after + FENCE_MARGIN_MS,
        };
        let monitor = FailureMonitor::Timed { timeout_ms: 1_000 };
        let limits = ReplacementLimits { max_concurrent: 1, min_interval_ms: 1_000 };
        for action in decide(&[view], &monitor, &limits, self.replaced_ms, now) {
            if let RecoveryAction::Replace { .. } = action {
                // Placed on the next agent that is up, new incarnation, intent in the store.
                self.incarnation += 1;
                self.placed_on = None;
                self.pending_from = Some(agent);
                self.down_since = None;
                self.unreachable_since = None;
                self.crashed_at = None;
                self.replaced_ms = Some(now);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn fence_mode_never_runs_two_incarnations(
        evs in proptest::collection::vec(ev(), 1..40),
        fence_after_s in 1u64..8,
        rates in proptest::collection::vec(0.98f64..1.02, 3),
    ) {
        let agents = rates.iter().map(|r| Agent { up_link: true, down_link: true, rate: *r, last_contact: 0, running: None }).collect();
        let mut w = World {
            now: 0,
            agents,
            fence_after: fence_after_s * 1000,
            incarnation: 1,
            placed_on: Some(0),
            pending_from: None,
            cp_started: 0,
            reported_running: vec![false; 3],
            down_since: None,
            unreachable_since: None,
            replaced_ms: None,
            crashed_at: None,
            last_seen: vec![Some(0); 3],
        };
        let mut replaced = 0;
        for e in evs {
            match e {
                Ev::Run(n) => {
                    for _ in 0..n {
                        let before = w.incarnation;
                        w.tick()?;
                        replaced += (w.incarnation != before) as u32;
                    }
                }
                Ev::Links { agent, up, down } => {
                    w.agents[agent].up_link = up;
                    w.agents[agent].down_link = down;
                }
                Ev::Restart => {
                    w.last_seen = vec![None; 3];
                    w.cp_started = w.now;
                }
                // The control plane hears of a crash only over a working link.
                Ev::Crash => {
                    if w.placed_on.is_some_and(|a| w.agents[a].up_link) {
                        w.crashed_at = Some(w.now);
                    }
                }
            }
        }
        // Heal everything: the world converges to one live incarnation.
        for a in &mut w.agents {
            a.up_link = true;
            a.down_link = true;
        }
        for _ in 0..200 {
            w.tick()?;
        }
        let live = w.agents.iter().filter(|a| a.running.is_some()).count();
        prop_assert_eq!(live, 1, "not converged after healing ({} replacements)", replaced);
    }
}
