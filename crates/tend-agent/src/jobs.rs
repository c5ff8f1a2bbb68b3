//! Maintenance job runs on this agent: each run (by id) executes once, in the sandbox and
//! environment of its pod instance's current incarnation, with a timeout; its result is reported
//! until the control plane stops listing the run.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tend_api::{Assignment, JobResult, JobRun, TaskLaunch};
use tokio::io::AsyncReadExt;

use crate::pod::{now_ms, task_env, PodCtx};

/// Bytes of output kept per run.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Job runs known to this agent.
#[derive(Default)]
pub struct JobRunner {
    results: Mutex<BTreeMap<String, JobResult>>,
    /// Process groups of runs under way, by run id.
    groups: Mutex<BTreeMap<String, i32>>,
}

impl JobRunner {
    pub fn results(&self) -> Vec<JobResult> {
        self.results.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Starts desired runs not seen before; forgets runs no longer desired.
    pub fn sync(
        self: &Arc<Self>,
        ctx: &Arc<PodCtx>,
        runs: &[JobRun],
        find: impl Fn(&str, &str) -> Option<Assignment>,
    ) {
        let mut results = self.results.lock().unwrap_or_else(|e| e.into_inner());
        results.retain(|id, _| runs.iter().any(|r| &r.run_id == id));
        // A run the control plane no longer lists (its lease lost, or the control plane restarted
        // without it) is killed: a job never runs twice at once.
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|id, pgid| {
            let keep = runs.iter().any(|r| &r.run_id == id);
            if !keep {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(*pgid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            keep
        });
        drop(groups);
        for r in runs {
            if results.contains_key(&r.run_id) {
                continue;
            }
            let started = now_ms();
            let Some(a) = find(&r.service, &r.instance) else {
                results.insert(
                    r.run_id.clone(),
                    JobResult {
                        run_id: r.run_id.clone(),
                        state: tend_api::RunState::Failed,
                        exit_code: None,
                        output_tail: format!("{} does not run on this agent", r.instance),
                        started_ms: started,
                        ended_ms: Some(started),
                    },
                );
                continue;
            };
            results.insert(
                r.run_id.clone(),
                JobResult {
                    run_id: r.run_id.clone(),
                    state: tend_api::RunState::Running,
                    exit_code: None,
                    output_tail: String::new(),
                    started_ms: started,
                    ended_ms: None,
                },
            );
            let me = self.clone();
            let ctx = ctx.clone();
            let run = r.clone();
            tokio::spawn(async move {
                let res = execute(&ctx, &a, &run, &me).await;
                me.groups.lock().unwrap_or_else(|e| e.into_inner()).remove(&run.run_id);
                let mut results = me.results.lock().unwrap_or_else(|e| e.into_inner());
                // Only while still desired: a run killed as undesired is not reported back.
                if results.contains_key(&run.run_id) {
                    results.insert(run.run_id.clone(), JobResult { started_ms: started, ..res });
                }
                drop(results);
                ctx.board.changed.notify_one();
            });
        }
    }
}

async fn execute(ctx: &PodCtx, a: &Assignment, r: &JobRun, runner: &JobRunner) -> JobResult {
    let sandbox = ctx.sandbox(a);
    let stub = TaskLaunch {
        name: format!("job-{}", r.job),
        goal: tend_api::TaskGoal::Finish,
        cmd: r.cmd.clone(),
        env: BTreeMap::new(),
        memory_mb: 0,
        kill_grace_period_seconds: 5,
        essential: false,
        health_check: None,
        readiness_check: None,
        skip: false,
    };
    let mut env = task_env(ctx, a, &stub, &sandbox);
    env.insert("TEND_JOB".into(), r.job.clone());
    env.insert("TEND_JOB_RUN".into(), r.run_id.clone());
    let done = |state: tend_api::RunState, code: Option<i32>, out: String| JobResult {
        run_id: r.run_id.clone(),
        state,
        exit_code: code,
        output_tail: out,
        started_ms: 0,
        ended_ms: Some(now_ms()),
    };
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(&r.cmd)
        .current_dir(&sandbox)
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // A run dies with its agent: a restarted agent does not know it, and the control plane may
    // start the job again elsewhere once its lease ends (a job never runs twice at once).
    crate::pod::die_with_agent(&mut c);
    let mut child = match c.spawn() {
        Ok(ch) => ch,
        Err(e) => return done(tend_api::RunState::Failed, None, format!("cannot start: {e}")),
    };
    let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
    if let Some(pg) = pgid {
        runner.groups.lock().unwrap_or_else(|e| e.into_inner()).insert(r.run_id.clone(), pg.as_raw());
    }
    let (out, err) = (child.stdout.take(), child.stderr.take());
    // Both pipes drained at once (a full stderr pipe would block the run forever otherwise),
    // keeping only their tails.
    let collect = async move {
        let (mut o, e) = tokio::join!(tail_of(out), tail_of(err));
        o.extend(e);
        o
    };
    let work = async { tokio::join!(child.wait(), collect) };
    match tokio::time::timeout(Duration::from_secs(r.timeout_seconds.max(1)), work).await {
        Ok((status, buf)) => {
            let tail =
                String::from_utf8_lossy(&buf[buf.len().saturating_sub(OUTPUT_TAIL_BYTES)..]).into_owned();
            let code = status.ok().and_then(|s| s.code());
            if let Some(pg) = pgid {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            }
            done(
                if code == Some(0) { tend_api::RunState::Succeeded } else { tend_api::RunState::Failed },
                code,
                tail,
            )
        }
        Err(_) => {
            if let Some(pg) = pgid {
                let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            }
            done(
                tend_api::RunState::TimedOut,
                None,
                format!("killed after its timeout of {} s", r.timeout_seconds),
            )
        }
    }
}

/// Reads a pipe to its end, keeping its last `OUTPUT_TAIL_BYTES` bytes.
async fn tail_of<R: tokio::io::AsyncRead + Unpin>(pipe: Option<R>) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let (mut keep, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return keep,
            Ok(n) => {
                keep.extend_from_slice(&chunk[..n]);
                if keep.len() > 2 * OUTPUT_TAIL_BYTES {
                    keep.drain(..keep.len() - OUTPUT_TAIL_BYTES);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 200 KB on stderr (more than a pipe holds) before the last line on stdout: both pipes are
    /// drained at once, so the run ends, and only the tails are kept.
    #[tokio::test]
    async fn a_run_flooding_stderr_ends_and_keeps_tails() {
        let mut child = tokio::process::Command::new("/bin/sh")
            .args(["-c", "yes e | head -c 200000 >&2; echo done"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let both = async { tokio::join!(child.wait(), tail_of(out), tail_of(err)) };
        let (status, out, err) = tokio::time::timeout(Duration::from_secs(20), both)
            .await
            .expect("the run ends (no full pipe blocks it)");
        assert!(status.unwrap().success());
        assert_eq!(out, b"done\n");
        assert!(err.len() <= 2 * OUTPUT_TAIL_BYTES && err.len() >= OUTPUT_TAIL_BYTES, "{}", err.len());
        assert!(err.iter().all(|b| *b == b'e' || *b == b'\n'));
    }
}
