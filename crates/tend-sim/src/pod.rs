//! A simulated pod incarnation on an agent: its tasks as state (start, run for a drawn time, exit
//! with a code, become ready after a delay), restarted in place with the agent's real backoff
//! (`tend_scheduler::recovery`), and reported as the real agent reports them.
//!
//! A task's behaviour comes from its `cmd`: `sim-crash` exits with code 1 soon after each start
//! (a bad config), `sim-fail` (a `once`/`finish` task) fails, anything else serves (running
//! tasks) or succeeds (others). Faults make a serving task crash once or crash-loop for a while.

use tend_api::{Assignment, TaskGoal, TaskLaunch, TaskState, TaskStatus};
use tend_scheduler::recovery::{CrashLoop, RestartBackoff};

use crate::rng::Rng;

/// One task of an incarnation.
#[derive(Clone, Debug)]
pub struct SimTask {
    pub launch: TaskLaunch,
    pub status: TaskStatus,
    crash: CrashLoop,
    started: u64,
    ready_at: Option<u64>,
    exit_at: Option<(u64, i32)>,
    restart_at: Option<u64>,
}

/// Where an incarnation is in its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Fetching artifacts, making the sandbox and volumes.
    Preparing { until: u64 },
    /// Running its `idx`th once/finish task, which ends at `until` with `code`.
    Prelude { idx: usize, until: u64, code: i32 },
    /// Long-running tasks up (each restarted in place when it stops).
    Running,
    /// A prelude task failed: nothing more starts.
    Failed,
}

/// One incarnation running on a simulated agent.
#[derive(Clone, Debug)]
pub struct SimPod {
    pub a: std::sync::Arc<Assignment>,
    pub phase: Phase,
    pub tasks: Vec<SimTask>,
    /// Tasks started before this time crash soon after (a crash-loop fault).
    pub crash_until: u64,
    /// Stopped with its agent before its long-running tasks started: nothing of it runs.
    pub dead: bool,
    /// The agent's report generation at which a task status of this pod last changed (`u64::MAX`:
    /// not stamped, compared in every report): see `DeltaReporter::report_stamped`.
    pub changed_gen: u64,
}

fn status(a: &Assignment, t: &TaskLaunch, state: TaskState, now: u64, msg: Option<&str>) -> TaskStatus {
    TaskStatus::of(a, &t.name, state, msg.map(str::to_string), now)
}

fn backoff(a: &Assignment) -> RestartBackoff {
    RestartBackoff {
        initial_ms: a.backoff.initial_ms,
        max_ms: a.backoff.max_ms,
        reset_after_ms: a.backoff.reset_after_ms,
    }
}

impl SimPod {
    /// A fresh launch: every task starting while the sandbox is prepared.
    pub fn launch(a: std::sync::Arc<Assignment>, now: u64, rng: &mut Rng) -> SimPod {
        let tasks = a
            .tasks
            .iter()
            .map(|t| SimTask {
                launch: t.clone(),
                status: status(&a, t, TaskState::Starting, now, Some("preparing sandbox")),
                crash: CrashLoop::default(),
                started: now,
                ready_at: None,
                exit_at: None,
                restart_at: None,
            })
            .collect();
        SimPod {
            a,
            phase: Phase::Preparing { until: now + rng.range(5, 200) },
            tasks,
            crash_until: 0,
            dead: false,
            changed_gen: u64::MAX,
        }
    }

    /// Every prelude task has finished with success.
    pub fn prelude_done(&self) -> bool {
        self.phase == Phase::Running
    }

    pub fn statuses(&self) -> Vec<TaskStatus> {
        self.tasks.iter().map(|t| t.status.clone()).collect()
    }

    /// Whether every long-running task runs and is ready.
    pub fn all_ready(&self) -> bool {
        self.phase == Phase::Running
            && self
                .tasks
                .iter()
                .filter(|t| t.launch.goal == TaskGoal::Running)
                .all(|t| t.status.state == TaskState::Running && t.status.ready)
    }

    /// Out of any crash loop: every long-running task has run past the backoff's reset window
    /// since its last quick exit (until then a recovered task may still count as down).
    pub fn settled(&self, now: u64) -> bool {
        let reset = self.a.backoff.reset_after_ms;
        self.tasks
            .iter()
            .filter(|t| t.launch.goal == TaskGoal::Running)
            .all(|t| t.crash.consecutive < 2 || now.saturating_sub(t.started) >= reset)
    }

    /// How many times its tasks were started (first starts and restarts in place).
    pub fn starts(&self) -> u64 {
        self.tasks
            .iter()
            .filter(|t| t.launch.goal == TaskGoal::Running && t.status.state != TaskState::Starting)
            .map(|t| t.status.restarts as u64 + 1)
            .sum()
    }

    fn start_running(&mut self, i: usize, now: u64, rng: &mut Rng, msg: Option<String>) {
        let crash_until = self.crash_until;
        let t = &mut self.tasks[i];
        t.started = now;
        t.restart_at = None;
        t.status.state = TaskState::Running;
        t.status.since_ms = now;
        t.status.ready = false;
        t.status.exit_code = None;
        t.status.next_restart_ms = None;
        t.status.crash_loop = t.crash.consecutive;
        t.status.message = msg;
        t.status.pid = Some(1000 + (rng.next_u64() % 60_000) as u32);
        let bad = t.launch.cmd.contains("sim-crash");
        t.exit_at = if bad || now < crash_until { Some((now + rng.range(30, 400), 1)) } else { None };
        t.ready_at = Some(now + rng.range(20, 600));
    }

    /// Whether `advance(now)` has anything to do: exactly its conditions, so that a pod with
    /// nothing due is not touched (and draws nothing from the agent's random numbers).
    pub fn due(&self, now: u64) -> bool {
        match self.phase {
            Phase::Preparing { until } | Phase::Prelude { until, .. } => now >= until,
            Phase::Failed => false,
            Phase::Running => {
                self.tasks.iter().filter(|t| t.launch.goal == TaskGoal::Running).any(|t| {
                    match t.status.state {
                        TaskState::Starting => true,
                        TaskState::Running => {
                            t.exit_at.is_some_and(|(at, _)| now >= at)
                                || (t.ready_at.is_some_and(|r| now >= r) && !t.status.ready)
                        }
                        TaskState::Exited | TaskState::Killed => t.restart_at.is_some_and(|r| now >= r),
                        _ => false,
                    }
                })
            }
        }
    }

    /// Moves the incarnation on to `now`; returns what happened, for the trace.
    pub fn advance(&mut self, now: u64, rng: &mut Rng) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.phase {
                Phase::Preparing { until } if now >= until => self.next_prelude(0, now, rng),
                Phase::Prelude { idx, until, code } if now >= until => {
                    let t = &mut self.tasks[idx];
                    t.status.state = TaskState::Exited;
                    t.status.exit_code = Some(code);
                    t.status.pid = None;
                    t.status.since_ms = now;
                    if code != 0 {
                        out.push(format!("task {} failed with code {code}", t.launch.name));
                        self.fail_rest(idx, now);
                        self.phase = Phase::Failed;
                    } else {
                        self.next_prelude(idx + 1, now, rng);
                    }
                }
                _ => break,
            }
        }
        if self.phase != Phase::Running {
            return out;
        }
        for i in 0..self.tasks.len() {
            if self.tasks[i].launch.goal != TaskGoal::Running {
                continue;
            }
            let t = &mut self.tasks[i];
            match t.status.state {
                TaskState::Starting => self.start_running(i, now, rng, None),
                TaskState::Running => {
                    if let Some((at, code)) = t.exit_at.filter(|(at, _)| now >= *at) {
                        let _ = at;
                        let b = backoff(&self.a);
                        let n = t.crash.on_exit(now.saturating_sub(t.started), &b);
                        let delay = b.delay_ms(n, rng.unit());
                        t.exit_at = None;
                        t.restart_at = Some(now + delay);
                        t.status.state = TaskState::Exited;
                        t.status.exit_code = Some(code);
                        t.status.ready = false;
                        t.status.pid = None;
                        t.status.since_ms = now;
                        t.status.next_restart_ms = Some(now + delay);
                        t.status.message = Some(if n > 1 {
                            format!("exited with code {code}; crash loop ({n} quick exits): restarting in {delay} ms")
                        } else {
                            format!("exited with code {code}; restarting in place")
                        });
                        out.push(format!("task {} exited {code}, restart in {delay} ms", t.launch.name));
                    } else if t.ready_at.is_some_and(|r| now >= r) && !t.status.ready {
                        t.status.ready = true;
                        t.ready_at = None;
                    }
                }
                TaskState::Exited | TaskState::Killed if t.restart_at.is_some_and(|r| now >= r) => {
                    t.status.restarts += 1;
                    let msg = t.status.message.clone().map(|m| format!("restarted in place after: {m}"));
                    self.start_running(i, now, rng, msg);
                    out.push(format!("task {} restarted in place", self.tasks[i].launch.name));
                }
                _ => {}
            }
        }
        out
    }

    fn next_prelude(&mut self, from: usize, now: u64, rng: &mut Rng) {
        for idx in from..self.tasks.len() {
            let t = &mut self.tasks[idx];
            if t.launch.goal == TaskGoal::Running {
                continue;
            }
            if t.launch.skip {
                t.status = status(
                    &self.a,
                    &t.launch,
                    TaskState::Exited,
                    now,
                    Some("completed in an earlier incarnation"),
                );
                t.status.exit_code = Some(0);
                continue;
            }
            t.status.state = TaskState::Running;
            t.status.since_ms = now;
            t.status.message = None;
            let code = if t.launch.cmd.contains("sim-fail") { 1 } else { 0 };
            self.phase = Phase::Prelude { idx, until: now + rng.range(10, 300), code };
            return;
        }
        self.phase = Phase::Running;
    }

    fn fail_rest(&mut self, failed: usize, now: u64) {
        let name = self.tasks[failed].launch.name.clone();
        let a = self.a.clone();
        for t in self.tasks.iter_mut().filter(|t| t.launch.goal == TaskGoal::Running) {
            let msg = format!("not started: task `{name}` did not succeed");
            t.status = status(&a, &t.launch, TaskState::Failed, now, Some(&msg));
        }
    }

    /// A fault: one serving task exits now (it is restarted in place).
    pub fn crash_one(&mut self, rng: &mut Rng, now: u64) -> Option<String> {
        let running: Vec<usize> = (0..self.tasks.len())
            .filter(|i| {
                self.tasks[*i].status.state == TaskState::Running
                    && self.tasks[*i].launch.goal == TaskGoal::Running
            })
            .collect();
        let i = *rng.pick(&running)?;
        self.tasks[i].exit_at = Some((now, 137));
        Some(self.tasks[i].launch.name.clone())
    }

    /// Taken over by a restarted agent: tasks whose process ended meanwhile restart in place.
    pub fn adopt(&mut self, now: u64) {
        for t in self.tasks.iter_mut().filter(|t| t.launch.goal == TaskGoal::Running) {
            let dead = t.status.state == TaskState::Running && t.exit_at.is_some_and(|(at, _)| at <= now);
            if dead {
                t.status.state = TaskState::Exited;
                t.status.ready = false;
                t.status.message = Some("exited while the agent was down; restarting in place".into());
                t.exit_at = None;
                t.restart_at = Some(now);
            } else if t.status.state == TaskState::Running {
                t.status.message = Some("re-adopted after an agent restart".into());
            }
        }
    }

    /// Its agent died: the sandbox preparation (the agent's own work) stops; with `all` (fence
    /// mode: tasks die with their agent) every process dies too. A restarted agent re-adopts
    /// what ran past its prelude (restarting dead tasks in place) and relaunches the rest.
    pub fn agent_died(&mut self, now: u64, all: bool) {
        match self.phase {
            Phase::Preparing { .. } => self.dead = true,
            Phase::Prelude { .. } if all => self.dead = true,
            Phase::Running if all => self.die(now),
            _ => {}
        }
    }

    /// Its processes die (with their agent, in fence mode); a restarted agent restarts them.
    pub fn die(&mut self, now: u64) {
        for t in self.tasks.iter_mut().filter(|t| t.launch.goal == TaskGoal::Running) {
            if t.status.state == TaskState::Running {
                t.exit_at = Some((now, 137));
            }
        }
    }
}

impl SimPod {
    /// Whether some process of this incarnation runs at `now` (a crashed agent restarts nothing,
    /// so a pod whose processes all ended is not live until its agent is back).
    pub fn processes_alive(&self, now: u64) -> bool {
        if self.dead {
            return false;
        }
        match self.phase {
            Phase::Preparing { .. } | Phase::Prelude { .. } => true,
            Phase::Failed => false,
            Phase::Running => self.tasks.iter().any(|t| {
                t.launch.goal == TaskGoal::Running
                    && t.status.state == TaskState::Running
                    && t.exit_at.is_none_or(|(at, _)| at > now)
            }),
        }
    }
}
