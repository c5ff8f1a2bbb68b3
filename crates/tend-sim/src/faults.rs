//! Faults drawn from the seeded generator: agent crash and restart, agent lost for good,
//! partitions (one or both directions), control-plane crash and restart from the store, task
//! crashes and crash loops. Messy messages (delay, duplication, reordering), slow store calls and
//! clock drift are set up with the world and stay on during the fault phase.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use crate::checks::Cause;
use crate::world::World;

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub agent_crash: bool,
    pub agent_loss: bool,
    pub partition: bool,
    pub messages: bool,
    pub control_plane_crash: bool,
    pub task_crash: bool,
    pub slow_store: bool,
    pub clock_drift: bool,
    pub bad_config: bool,
}

const NAMES: [&str; 9] = [
    "agent-crash",
    "agent-loss",
    "partition",
    "messages",
    "control-plane-crash",
    "task-crash",
    "slow-store",
    "clock-drift",
    "bad-config",
];

impl Faults {
    pub fn all() -> Faults {
        Faults {
            agent_crash: true,
            agent_loss: true,
            partition: true,
            messages: true,
            control_plane_crash: true,
            task_crash: true,
            slow_store: true,
            clock_drift: true,
            bad_config: true,
        }
    }

    fn flag(&mut self, name: &str) -> Option<&mut bool> {
        Some(match name {
            "agent-crash" => &mut self.agent_crash,
            "agent-loss" => &mut self.agent_loss,
            "partition" => &mut self.partition,
            "messages" => &mut self.messages,
            "control-plane-crash" => &mut self.control_plane_crash,
            "task-crash" => &mut self.task_crash,
            "slow-store" => &mut self.slow_store,
            "clock-drift" => &mut self.clock_drift,
            "bad-config" => &mut self.bad_config,
            _ => return None,
        })
    }

    /// The faults as the `--faults` value that selects them.
    pub fn to_arg(&self) -> String {
        let mut me = *self;
        let on: Vec<&str> = NAMES.iter().copied().filter(|n| me.flag(n).is_some_and(|f| *f)).collect();
        match on.len() {
            0 => "none".into(),
            9 => "all".into(),
            _ => on.join(","),
        }
    }
}

impl FromStr for Faults {
    type Err = String;
    /// `all`, `none`, or a comma-separated list of fault names.
    fn from_str(s: &str) -> Result<Faults, String> {
        match s.trim() {
            "all" => return Ok(Faults::all()),
            "none" | "" => return Ok(Faults::default()),
            _ => {}
        }
        let mut f = Faults::default();
        for name in s.split(',').map(str::trim) {
            match f.flag(name) {
                Some(flag) => *flag = true,
                None => {
                    return Err(format!("unknown fault `{name}`; known: all, none, {}", NAMES.join(", ")))
                }
            }
        }
        Ok(f)
    }
}

/// Injects one fault now (one of those enabled), returning false when none applied.
pub async fn inject(w: &Arc<World>) -> bool {
    let f = w.faults;
    let kind = w.rng(|r| r.below(6));
    let n = w.agents.len() as u64;
    let ag = w.agents[w.rng(|r| r.below(n)) as usize].clone();
    match kind {
        0 if f.agent_crash => {
            if !ag.lock().alive {
                return false;
            }
            ag.crash();
            let down = w.rng(|r| r.range(300, 15_000));
            let now = w.clock.elapsed_ms();
            w.checks.cause(Cause::Agent(&ag.id), now, now + down);
            w.fault("agent-crash", format!("agent {} crashes for {down} ms", ag.id));
            let (w2, ag2) = (w.clone(), ag.clone());
            w.spawn(async move {
                tokio::time::sleep(Duration::from_millis(down)).await;
                if !ag2.lock().alive {
                    w2.trace.log(format!("agent {} restarts", ag2.id));
                    ag2.start(&w2);
                }
            });
        }
        1 if f.agent_loss => {
            let lost = w.agents.iter().filter(|a| !a.lock().machine_up).count();
            if (lost + 1) * 4 > w.agents.len() || !ag.lock().machine_up {
                return false;
            }
            ag.lose();
            w.checks.cause(Cause::Agent(&ag.id), w.clock.elapsed_ms(), u64::MAX);
            w.fault("agent-loss", format!("agent {} is lost for good", ag.id));
        }
        2 if f.partition => {
            let (up, down) = match w.rng(|r| r.below(3)) {
                0 => (true, true),
                1 => (true, false),
                _ => (false, true),
            };
            let ms = w.rng(|r| r.range(500, 30_000));
            w.net.cut(&ag.id, up, down, ms);
            let now = w.clock.elapsed_ms();
            w.checks.cause(Cause::Agent(&ag.id), now, now + ms);
            w.fault(
                "partition",
                format!("agent {} cut off (requests lost: {up}, answers lost: {down}) for {ms} ms", ag.id),
            );
        }
        3 if f.control_plane_crash => {
            if w.net.server().is_none() {
                return false;
            }
            w.crash_control_plane();
            let down = w.rng(|r| r.range(100, 6_000));
            w.fault("control-plane-crash", format!("control plane crashes for {down} ms"));
            let w2 = w.clone();
            w.spawn(async move {
                tokio::time::sleep(Duration::from_millis(down)).await;
                w2.start_control_plane().await;
            });
        }
        4 | 5 if f.task_crash => {
            let loop_ms = if w.rng(|r| r.chance(0.3)) { w.rng(|r| r.range(3_000, 40_000)) } else { 0 };
            let what = w.rng(|r| ag.crash_task(r, loop_ms));
            let Some((svc, inst, what)) = what else { return false };
            let now = w.clock.elapsed_ms();
            w.checks.cause(Cause::Instance(&svc, &inst), now, now + loop_ms);
            let how = if loop_ms > 0 { format!("crash-loops for {loop_ms} ms") } else { "crashes".into() };
            w.fault("task-crash", format!("on agent {}: {what} {how}", ag.id));
        }
        _ => return false,
    }
    true
}

/// Agents whose machines are up but whose process is down.
pub fn crashed(w: &World) -> BTreeSet<String> {
    w.agents
        .iter()
        .filter(|a| {
            let st = a.lock();
            st.machine_up && !st.alive
        })
        .map(|a| a.id.clone())
        .collect()
}
