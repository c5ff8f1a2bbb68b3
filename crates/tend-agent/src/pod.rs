//! One incarnation of a pod instance on this agent: sandbox, volumes, artifacts, tasks as real
//! processes in their own process groups, readiness and health checks, and killing.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tend_api::{Assignment, TaskLaunch, TaskState, TaskStatus};
use tokio::sync::{watch, Notify};

use crate::artifacts::Fetcher;
use crate::checks::probe;
pub use crate::process::{die_with_agent, proc_start_time, Proc};
use crate::process::{kill, spawn};

/// Largest log file before the agent rotates it (copy to `.1`, truncate).
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;

/// Milliseconds since the epoch (the agent is an edge: it reads the clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Statuses of every task on this agent, and a signal when one changes.
#[derive(Default)]
pub struct Board {
    statuses: Mutex<BTreeMap<(String, String, String), TaskStatus>>,
    pub changed: Notify,
}

impl Board {
    pub fn set(&self, s: TaskStatus) {
        let key = (s.service.clone(), s.instance.clone(), s.task.clone());
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        let differs = m.get(&key).is_none_or(|old| {
            old.state != s.state
                || old.ready != s.ready
                || old.incarnation != s.incarnation
                || old.healthy != s.healthy
        });
        m.insert(key, s);
        drop(m);
        if differs {
            self.changed.notify_one();
        }
    }
    pub fn update(&self, service: &str, instance: &str, task: &str, f: impl FnOnce(&mut TaskStatus)) {
        let key = (service.to_string(), instance.to_string(), task.to_string());
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = m.get_mut(&key) {
            let before = (s.state, s.ready, s.healthy);
            f(s);
            let changed = before != (s.state, s.ready, s.healthy);
            drop(m);
            if changed {
                self.changed.notify_one();
            }
        }
    }
    pub fn snapshot(&self) -> Vec<TaskStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
    /// Forgets the tasks of an instance that is gone from this agent.
    pub fn forget(&self, service: &str, instance: &str) {
        let mut m = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|(s, i, _), _| !(s == service && i == instance));
        drop(m);
        self.changed.notify_one();
    }
}

/// What every pod run shares.
pub struct PodCtx {
    pub data_dir: PathBuf,
    pub fetcher: Fetcher,
    pub board: Arc<Board>,
    pub checkpoints: crate::checkpoint::Checkpoints,
}

impl PodCtx {
    pub fn sandbox(&self, a: &Assignment) -> PathBuf {
        self.sandbox_dir(&a.service, &a.instance, a.incarnation)
    }
    /// The sandbox of one incarnation: `sandboxes/<service>/<instance>/<incarnation>`.
    pub fn sandbox_dir(&self, service: &str, instance: &str, incarnation: u64) -> PathBuf {
        self.data_dir.join("sandboxes").join(service).join(instance).join(incarnation.to_string())
    }
    /// A volume of the instance: `volumes/<volume id>/<name>`. Ids are never reused, so a new
    /// instance or service never sees another's data.
    pub fn volume(&self, a: &Assignment, name: &str) -> Option<PathBuf> {
        if let (true, Some(generation)) = (a.volume_id.is_empty(), a.legacy_volume_generation) {
            // Placed before volume ids: the old layout, which holds its data.
            let valid = |s: &str| !s.is_empty() && !s.contains('/') && s != ".." && s != ".";
            if !valid(&a.service) || !valid(&a.instance) {
                return None;
            }
            let dir = self.data_dir.join("volumes").join(&a.service).join(&a.instance);
            return Some(dir.join(generation.to_string()).join(name));
        }
        Some(self.volume_set_dir(&a.volume_id)?.join(name))
    }
    /// All volumes of one volume set: `volume-sets/<id>` (None: not a valid volume id). Apart
    /// from the old layout `volumes/<service>/…`, so that no service name can collide with an id.
    pub fn volume_set_dir(&self, id: &str) -> Option<PathBuf> {
        tend_model::VolumeId::parse(id).map(|id| self.data_dir.join("volume-sets").join(id.as_str()))
    }
}

fn status(a: &Assignment, t: &TaskLaunch, state: TaskState, message: Option<String>) -> TaskStatus {
    TaskStatus::of(a, &t.name, state, message, now_ms())
}

/// Environment of a task: pod env, tend's variables, ports, volumes, then the task's own.
pub fn task_env(ctx: &PodCtx, a: &Assignment, t: &TaskLaunch, sandbox: &Path) -> BTreeMap<String, String> {
    let mut env = a.env.clone();
    env.insert("TEND_SERVICE".into(), a.service.clone());
    env.insert("TEND_POD".into(), a.pod.clone());
    env.insert("TEND_POD_INDEX".into(), a.pod_index.to_string());
    env.insert("TEND_INSTANCE".into(), a.instance.clone());
    env.insert("TEND_TASK".into(), t.name.clone());
    env.insert("TEND_INCARNATION".into(), a.incarnation.to_string());
    env.insert("TEND_SANDBOX".into(), sandbox.display().to_string());
    for (name, port) in &a.ports {
        env.insert(format!("PORT_{}", name.to_ascii_uppercase().replace('-', "_")), port.to_string());
    }
    for v in &a.volumes {
        let Some(dir) = ctx.volume(a, &v.name) else { continue };
        env.insert(
            format!("TEND_VOLUME_{}", v.name.to_ascii_uppercase().replace('-', "_")),
            dir.display().to_string(),
        );
    }
    env.extend(t.env.clone());
    env
}

/// Prepares the sandbox: directories, volume links, artifacts. A sandbox left by an earlier
/// life of the same name (a deleted service) is cleared first: a launch starts clean.
async fn prepare(ctx: &PodCtx, a: &Assignment) -> Result<PathBuf, String> {
    let sandbox = ctx.sandbox(a);
    if tokio::fs::symlink_metadata(&sandbox).await.is_ok() {
        tokio::fs::remove_dir_all(&sandbox)
            .await
            .map_err(|e| format!("cannot clear the old sandbox {}: {e}", sandbox.display()))?;
    }
    tokio::fs::create_dir_all(&sandbox)
        .await
        .map_err(|e| format!("cannot create sandbox {}: {e}", sandbox.display()))?;
    for v in &a.volumes {
        let dir = ctx
            .volume(a, &v.name)
            .ok_or_else(|| format!("invalid volume id `{}` for volume {}", a.volume_id, v.name))?;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("cannot create volume {}: {e}", dir.display()))?;
        let link = sandbox.join(&v.path);
        if let Some(parent) = link.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(|e| e.to_string())?;
        }
        if tokio::fs::symlink_metadata(&link).await.is_err() {
            tokio::fs::symlink(&dir, &link)
                .await
                .map_err(|e| format!("cannot link volume {}: {e}", v.name))?;
        }
    }
    for art in &a.artifacts {
        ctx.fetcher.provide(art, &sandbox).await.map_err(|e| e.to_string())?;
    }
    Ok(sandbox)
}

/// Rotates a task's log files past the cap: the last `LOG_CAP_BYTES` are copied to `.1`, then
/// the file is truncated (the task appends). A task that wrote gigabytes between two checks
/// leaves at most twice the cap on disk.
pub(crate) fn rotate_logs(sandbox: &Path, task: &str) {
    for stream in ["stdout", "stderr"] {
        let p = sandbox.join(format!("{task}.{stream}"));
        if std::fs::metadata(&p).map(|m| m.len() > LOG_CAP_BYTES).unwrap_or(false) {
            let _ = keep_tail(&p, &sandbox.join(format!("{task}.{stream}.1")));
            if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                let _ = f.set_len(0);
            }
        }
    }
}

/// Copies the last `LOG_CAP_BYTES` of `from` to `to` (through a temporary file, renamed).
fn keep_tail(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek};
    let mut src = std::fs::File::open(from)?;
    let len = src.metadata()?.len();
    src.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_CAP_BYTES)))?;
    let tmp = to.with_extension("1.part");
    let mut out = std::fs::File::create(&tmp)?;
    std::io::copy(&mut src.take(LOG_CAP_BYTES), &mut out)?;
    std::fs::rename(&tmp, to)
}

/// Runs one incarnation until it ends or `cancel` turns true.
/// Re-adopts an incarnation found in a checkpoint after an agent restart: live processes are
/// watched again, processes that ended while the agent was down are reported and restarted in
/// place. Nothing that still runs is launched twice.
pub async fn run_adopted(
    ctx: Arc<PodCtx>,
    a: Assignment,
    ck: crate::checkpoint::Checkpoint,
    cancel: watch::Receiver<bool>,
) {
    let sandbox = ctx.sandbox(&a);
    // Tasks that finished before the restart are reported as they ended (a plan may wait on them).
    for t in a.tasks.iter().filter(|t| t.goal != tend_api::TaskGoal::Running) {
        let code = if t.skip { Some(0) } else { ck.finished.get(&t.name).copied().flatten() };
        let mut s = status(&a, t, TaskState::Exited, Some("finished before the agent restarted".into()));
        s.exit_code = code;
        ctx.board.set(s);
    }
    supervise_running(&ctx, &a, &sandbox, &cancel, |t| {
        let adopt = ck.tasks.get(&t.name).and_then(|c| {
            (proc_start_time(c.pid) == Some(c.start_time)).then(|| {
                (Proc::Adopted { pid: Pid::from_raw(c.pid as i32), start_time: c.start_time }, c.restarts)
            })
        });
        if adopt.is_none() {
            let mut s = status(
                &a,
                t,
                TaskState::Exited,
                Some("exited while the agent was down; restarting in place".into()),
            );
            s.restarts = ck.tasks.get(&t.name).map_or(0, |c| c.restarts);
            ctx.board.set(s);
        }
        adopt
    })
    .await;
}

/// Supervises every long-running task of an incarnation side by side, until they all end;
/// `adopt` may hand over a process found running for a task.
async fn supervise_running(
    ctx: &Arc<PodCtx>,
    a: &Assignment,
    sandbox: &Path,
    cancel: &watch::Receiver<bool>,
    mut adopt: impl FnMut(&TaskLaunch) -> Option<(Proc, u32)>,
) {
    let mut running = Vec::new();
    // Bumped when an essential task stops: its siblings restart with it.
    let essential_stops = Arc::new(watch::channel(0u64).0);
    for t in a.tasks.iter().filter(|t| t.goal == tend_api::TaskGoal::Running) {
        let env = task_env(ctx, a, t, sandbox);
        let adopted = adopt(t);
        let sup = Supervised {
            ctx: ctx.clone(),
            a: a.clone(),
            t: t.clone(),
            sandbox: sandbox.to_path_buf(),
            env,
            essential_stops: essential_stops.clone(),
        };
        running.push(tokio::spawn(supervise(sup, adopted, cancel.clone())));
    }
    for h in running {
        let _ = h.await;
    }
}

pub async fn run_pod(ctx: Arc<PodCtx>, a: Assignment, mut cancel: watch::Receiver<bool>) {
    let board = ctx.board.clone();
    for t in &a.tasks {
        board.set(status(&a, t, TaskState::Starting, Some("preparing sandbox".into())));
    }
    let sandbox = tokio::select! {
        r = prepare(&ctx, &a) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(service = %a.service, instance = %a.instance, error = %e, "sandbox preparation failed");
                for t in &a.tasks {
                    board.set(status(&a, t, TaskState::Failed, Some(e.clone())));
                }
                return;
            }
        },
        _ = cancel.changed() => return,
    };
    // Tasks that must finish first (goal once / finish), one after the other.
    for t in a.tasks.iter().filter(|t| t.goal != tend_api::TaskGoal::Running) {
        if t.skip {
            let mut s = status(&a, t, TaskState::Exited, Some("completed in an earlier incarnation".into()));
            s.exit_code = Some(0);
            board.set(s);
            continue;
        }
        let env = task_env(&ctx, &a, t, &sandbox);
        let mut p = match spawn(&sandbox, t, &env, a.fence_after_ms.is_some()).await {
            Ok(p) => p,
            Err(e) => {
                board.set(status(&a, t, TaskState::Failed, Some(format!("cannot start: {e}"))));
                fail_rest(&board, &a, t);
                return;
            }
        };
        if let Some(pid) = p.pid() {
            checkpoint_started(&ctx, &a, &t.name, pid, 0).await;
        }
        let mut s = status(&a, t, TaskState::Running, None);
        s.pid = p.pid();
        board.set(s);
        let code = tokio::select! {
            c = p.wait() => c,
            _ = cancel.changed() => {
                let code = kill(&mut p, Duration::from_secs(t.kill_grace_period_seconds)).await;
                board.update(&a.service, &a.instance, &t.name, |s| { s.state = TaskState::Killed; s.exit_code = code; s.since_ms = now_ms(); });
                return;
            }
        };
        let _ = killpg(p.pgid(), Signal::SIGKILL);
        ctx.checkpoints.record_finished(&a, &t.name, code);
        board.update(&a.service, &a.instance, &t.name, |s| {
            s.state = TaskState::Exited;
            s.exit_code = code;
            s.pid = None;
            s.since_ms = now_ms();
        });
        if code != Some(0) {
            fail_rest(&board, &a, t);
            return;
        }
    }
    // Long-running tasks, side by side, each restarted in place when it stops.
    supervise_running(&ctx, &a, &sandbox, &cancel, |_| None).await;
}

/// Records a started task in its instance's checkpoint, off the async workers (the file is
/// replaced through a new one, and creating a file can block on the filesystem).
async fn checkpoint_started(ctx: &Arc<PodCtx>, a: &Assignment, task: &str, pid: u32, restarts: u32) {
    let (ctx, a, task) = (ctx.clone(), a.clone(), task.to_string());
    let _ = tokio::task::spawn_blocking(move || ctx.checkpoints.record(&a, &task, pid, restarts)).await;
}

fn fail_rest(board: &Board, a: &Assignment, failed: &TaskLaunch) {
    for t in a.tasks.iter().filter(|t| t.goal == tend_api::TaskGoal::Running) {
        board.set(status(
            a,
            t,
            TaskState::Failed,
            Some(format!("not started: task `{}` did not succeed", failed.name)),
        ));
    }
}

/// A cheap jitter sample in [0, 1) (no crate needed; quality does not matter here).
fn jitter() -> f64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let x = (n as u64 ^ (std::process::id() as u64).rotate_left(17)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Keeps one long-running task up: spawn, watch (exit, readiness, health, cancellation, log
/// rotation), and on exit restart it in place after the crash-loop backoff — the agent's own
/// decision inside the incarnation, reported afterwards.
/// One long-running task of an incarnation and what it shares with its siblings.
struct Supervised {
    ctx: Arc<PodCtx>,
    a: Assignment,
    t: TaskLaunch,
    sandbox: PathBuf,
    env: BTreeMap<String, String>,
    essential_stops: Arc<watch::Sender<u64>>,
}

/// Why a watched task stopped.
struct Stopped {
    code: Option<i32>,
    how: String,
    /// Stopped because an essential sibling stopped (not a crash of its own).
    with_sibling: bool,
}

async fn supervise(sup: Supervised, mut adopt: Option<(Proc, u32)>, mut cancel: watch::Receiver<bool>) {
    let Supervised { ctx, a, t, sandbox, env, essential_stops } = sup;
    let mut sibling = essential_stops.subscribe();
    let board = ctx.board.clone();
    let backoff = tend_scheduler::recovery::RestartBackoff {
        initial_ms: a.backoff.initial_ms,
        max_ms: a.backoff.max_ms,
        reset_after_ms: a.backoff.reset_after_ms,
    };
    let mut crash = tend_scheduler::recovery::CrashLoop::default();
    let mut restarts = 0u32;
    let mut last_stop: Option<String> = None;
    loop {
        let (p, adopted) = match adopt.take() {
            Some((p, r)) => {
                restarts = r;
                (p, true)
            }
            None => match spawn(&sandbox, &t, &env, a.fence_after_ms.is_some()).await {
                Ok(p) => (p, false),
                Err(e) => {
                    board.set(status(&a, &t, TaskState::Failed, Some(format!("cannot start: {e}"))));
                    return;
                }
            },
        };
        if let Some(pid) = p.pid() {
            checkpoint_started(&ctx, &a, &t.name, pid, restarts).await;
        }
        let mut s = status(&a, &t, TaskState::Running, None);
        s.pid = p.pid();
        s.restarts = restarts;
        s.crash_loop = crash.consecutive;
        s.message = if adopted {
            Some("re-adopted after an agent restart".into())
        } else {
            last_stop.as_ref().map(|m| format!("restarted in place after: {m}"))
        };
        board.set(s);
        let started = tokio::time::Instant::now();
        sibling.borrow_and_update();
        let Some(Stopped { code, how, with_sibling }) =
            watch_task(&board, (&a, &t), &sandbox, &env, p, &mut cancel, &mut sibling).await
        else {
            return; // cancelled: no longer desired (reported by watch_task)
        };
        if t.essential && !with_sibling {
            // An essential task's own stop restarts the instance's other tasks too (a stop
            // caused by a sibling does not: two essential tasks never restart each other).
            essential_stops.send_modify(|g| *g += 1);
        }
        let ran_ms = started.elapsed().as_millis() as u64;
        let (n, delay) = if with_sibling {
            (crash.consecutive, 0)
        } else {
            let n = crash.on_exit(ran_ms, &backoff);
            (n, backoff.delay_ms(n, jitter()))
        };
        last_stop = Some(how.clone());
        let next = now_ms() + delay;
        board.update(&a.service, &a.instance, &t.name, |s| {
            s.state = TaskState::Exited;
            s.exit_code = code;
            s.ready = false;
            s.pid = None;
            s.since_ms = now_ms();
            s.next_restart_ms = Some(next);
            s.message = Some(if n > 1 {
                format!("{how}; crash loop ({n} quick exits): restarting in {delay} ms")
            } else {
                format!("{how}; restarting in place")
            });
        });
        tracing::info!(service = %a.service, instance = %a.instance, task = %t.name, ran_ms, delay_ms = delay, "task stopped; restarting in place");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(delay)) => {}
            _ = cancel.changed() => {
                board.update(&a.service, &a.instance, &t.name, |s| {
                    s.state = TaskState::Killed; s.next_restart_ms = None; s.since_ms = now_ms();
                    s.message = Some("stopped: no longer desired".into());
                });
                return;
            }
        }
        restarts += 1;
    }
}

/// Watches a running process. Some((exit code, why)) when it stopped (exited, or killed as
/// unhealthy); None when it was cancelled (already reported).
async fn watch_task(
    board: &Board,
    (a, t): (&Assignment, &TaskLaunch),
    sandbox: &Path,
    env: &BTreeMap<String, String>,
    mut p: Proc,
    cancel: &mut watch::Receiver<bool>,
    sibling: &mut watch::Receiver<u64>,
) -> Option<Stopped> {
    let started = tokio::time::Instant::now();
    let ready_every = t.readiness_check.as_ref().map(|c| Duration::from_secs(c.interval_seconds.max(1)));
    let health_every = t.health_check.as_ref().map(|c| Duration::from_secs(c.interval_seconds.max(1)));
    let mut ready_tick = tokio::time::interval(ready_every.unwrap_or(Duration::from_secs(3600)));
    let mut health_tick = tokio::time::interval(health_every.unwrap_or(Duration::from_secs(3600)));
    let mut rotate_tick = tokio::time::interval(Duration::from_secs(5));
    let mut health_failures = 0u32;
    if t.readiness_check.is_none() {
        board.update(&a.service, &a.instance, &t.name, |s| s.ready = true);
    }
    let grace = Duration::from_secs(t.kill_grace_period_seconds);
    loop {
        tokio::select! {
            code = p.wait() => {
                let _ = killpg(p.pgid(), Signal::SIGKILL);
                let how = match code {
                    Some(c) => format!("exited with code {c}"),
                    None => "killed by a signal".to_string(),
                };
                return Some(Stopped { code, how, with_sibling: false });
            }
            Ok(()) = sibling.changed() => {
                let code = kill(&mut p, grace).await;
                return Some(Stopped { code, how: "stopped with an essential task of its instance".into(), with_sibling: true });
            }
            _ = cancel.changed() => {
                let code = kill(&mut p, grace).await;
                board.update(&a.service, &a.instance, &t.name, |s| {
                    s.state = TaskState::Killed; s.exit_code = code; s.ready = false; s.pid = None; s.since_ms = now_ms();
                    s.message = Some("killed: no longer desired".into());
                });
                return None;
            }
            _ = ready_tick.tick(), if ready_every.is_some() => {
                if let Some(c) = &t.readiness_check {
                    let ok = probe(c, sandbox, env).await;
                    board.update(&a.service, &a.instance, &t.name, |s| s.ready = ok);
                }
            }
            _ = health_tick.tick(), if health_every.is_some() => {
                let Some(c) = &t.health_check else { continue };
                if started.elapsed() < Duration::from_secs(c.grace_period_seconds) {
                    continue;
                }
                if probe(c, sandbox, env).await {
                    health_failures = 0;
                    board.update(&a.service, &a.instance, &t.name, |s| s.healthy = Some(true));
                } else {
                    health_failures += 1;
                    if health_failures >= c.max_consecutive_failures {
                        let code = kill(&mut p, grace).await;
                        let n = health_failures;
                        board.update(&a.service, &a.instance, &t.name, |s| s.healthy = Some(false));
                        let how = format!("unhealthy: health check failed {n} times in a row");
                        return Some(Stopped { code, how, with_sibling: false });
                    }
                }
            }
            _ = rotate_tick.tick() => rotate_logs(sandbox, &t.name),
        }
    }
}

/// Running incarnations on this agent, by (service, instance).
#[derive(Default)]
pub struct Pods {
    pub running: Mutex<HashMap<(String, String), PodHandle>>,
}

/// A running incarnation and how to stop it.
pub struct PodHandle {
    pub incarnation: u64,
    pub cancel: watch::Sender<bool>,
    pub join: tokio::task::JoinHandle<()>,
    /// Fence mode: kill after this long without contact with the control plane.
    pub fence_after_ms: Option<u64>,
    pub volume_id: String,
    /// What this incarnation runs (job runs use its sandbox and environment).
    pub assignment: Assignment,
}
