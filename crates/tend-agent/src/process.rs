//! Task processes: spawning one in its own process group (with a parent-death signal in fence
//! mode), re-adopting one by pid and start time after an agent restart, waiting for it, and
//! stopping it (SIGTERM, then SIGKILL after the grace period).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tend_api::TaskLaunch;

/// A spawned task process.
/// A task process: our child, or one re-adopted after an agent restart (not our child: it is
/// watched through /proc, its exit code is unknown).
pub enum Proc {
    Child { child: tokio::process::Child, pgid: Pid },
    Adopted { pid: Pid, start_time: u64 },
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat), which tells
/// a process from a later one that reuses its pid.
pub fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Proc::Child { child, .. } => child.id(),
            Proc::Adopted { pid, .. } => Some(pid.as_raw() as u32),
        }
    }
    pub(crate) fn pgid(&self) -> Pid {
        match self {
            Proc::Child { pgid, .. } => *pgid,
            Proc::Adopted { pid, .. } => *pid,
        }
    }
    /// Waits for the process to end; its exit code if known.
    pub(crate) async fn wait(&mut self) -> Option<i32> {
        match self {
            Proc::Child { child, .. } => child.wait().await.ok().and_then(|s| s.code()),
            Proc::Adopted { pid, start_time } => loop {
                if proc_start_time(pid.as_raw() as u32) != Some(*start_time) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            },
        }
    }
}

/// Makes the process about to run die with this agent (SIGKILL when the thread that spawned it
/// ends, i.e. when the agent dies). Fence mode needs it: the agent that would fence a task is gone,
/// and the control plane replaces the instance after the fence time. Only the direct child gets it
/// (`sh -c CMD` execs a simple command; other processes of a compound command survive).
pub fn die_with_agent(c: &mut tokio::process::Command) {
    let parent = std::process::id() as i32;
    // SAFETY: the closure runs in the forked child before exec and only makes the prctl and
    // getppid system calls, which are async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            if nix::unistd::getppid().as_raw() != parent {
                return Err(std::io::Error::other("the agent died while starting the task"));
            }
            Ok(())
        });
    }
}

pub(crate) fn spawn(
    sandbox: &Path,
    t: &TaskLaunch,
    env: &BTreeMap<String, String>,
    fenced: bool,
) -> std::io::Result<Proc> {
    let open = |suffix: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(sandbox.join(format!("{}.{suffix}", t.name)))
    };
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(&t.cmd)
        .current_dir(sandbox)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(open("stdout")?)
        .stderr(open("stderr")?)
        .process_group(0);
    if fenced {
        die_with_agent(&mut c);
    }
    let child = c.spawn()?;
    let pid = child.id().ok_or_else(|| std::io::Error::other("process exited at once"))?;
    Ok(Proc::Child { child, pgid: Pid::from_raw(pid as i32) })
}

/// SIGTERM to the group, SIGKILL after the grace period. Returns the exit code if any.
pub(crate) async fn kill(p: &mut Proc, grace: Duration) -> Option<i32> {
    let pgid = p.pgid();
    let _ = killpg(pgid, Signal::SIGTERM);
    let code = match tokio::time::timeout(grace, p.wait()).await {
        Ok(c) => c,
        Err(_) => {
            let _ = killpg(pgid, Signal::SIGKILL);
            p.wait().await
        }
    };
    let _ = killpg(pgid, Signal::SIGKILL);
    code
}
