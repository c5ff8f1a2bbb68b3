//! Task processes: spawning one in its own process group (with a parent-death signal in fence
//! mode), re-adopting one by pid and start time after an agent restart, waiting for it, and
//! stopping it (SIGTERM, then SIGKILL after the grace period).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

/// Words of the shell's own (keywords, builtins): a command starting with one runs in the shell.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "alias", "bg", "break", "case", "cd", "command", "continue", "do", "done", "echo",
    "elif", "else", "esac", "eval", "exec", "exit", "export", "false", "fc", "fg", "fi", "for", "function",
    "getopts", "hash", "if", "in", "jobs", "kill", "local", "printf", "pwd", "read", "readonly", "return",
    "select", "set", "shift", "source", "test", "then", "time", "times", "trap", "true", "type", "ulimit",
    "umask", "unalias", "unset", "until", "wait", "while",
];

/// The program and arguments of a command that `sh -c` would simply execute: plain words
/// separated by spaces (optionally after `exec`), no quoting, expansion, redirection,
/// assignment or operator, whose first word is a program found on `path` (not a shell word).
/// Such a command is executed directly, without a shell: the same process, arguments and
/// `argv[0]` (the word as written), one exec fewer. Returns the program's path and the words.
/// None: the shell runs it.
pub fn direct_argv<'a>(cmd: &'a str, path: Option<&str>) -> Option<(std::path::PathBuf, Vec<&'a str>)> {
    let plain = |w: &str, first: bool| {
        w.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./,:+@%".contains(&b) || (!first && b == b'='))
    };
    if cmd.bytes().any(|b| !(b == b' ' || b.is_ascii_graphic())) {
        return None; // Tabs, newlines (several commands), anything else: the shell's to read.
    }
    let mut words: Vec<&str> = cmd.split(' ').filter(|w| !w.is_empty()).collect();
    if words.first() == Some(&"exec") {
        words.remove(0);
    }
    let (&prog, args) = words.split_first()?;
    if SHELL_WORDS.contains(&prog) || !plain(prog, true) || !args.iter().all(|w| plain(w, false)) {
        return None;
    }
    let found = if prog.starts_with('/') {
        Some(std::path::PathBuf::from(prog))
    } else if prog.contains('/') {
        None // Relative to the sandbox: left to the shell, which resolves it there.
    } else {
        path.unwrap_or("/usr/bin:/bin")
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| Path::new(d).join(prog))
            .find(|p| is_executable(p))
    }?;
    is_executable(&found).then_some((found, words))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Starts a task. Its log files are opened off the async workers: creating a file can block on
/// the filesystem for milliseconds, and hundreds of tasks start at once.
pub(crate) async fn spawn(
    sandbox: &Path,
    t: &TaskLaunch,
    env: &BTreeMap<String, String>,
    fenced: bool,
) -> std::io::Result<Proc> {
    let (out, err) = (sandbox.join(format!("{}.stdout", t.name)), sandbox.join(format!("{}.stderr", t.name)));
    let open = |p: PathBuf| std::fs::OpenOptions::new().create(true).append(true).open(p);
    let (out, err) = tokio::task::spawn_blocking(move || Ok::<_, std::io::Error>((open(out)?, open(err)?)))
        .await
        .map_err(std::io::Error::other)??;
    let path = env.get("PATH").cloned().or_else(|| std::env::var("PATH").ok());
    let mut c = match direct_argv(&t.cmd, path.as_deref()) {
        Some((prog, words)) if !words.is_empty() => {
            let mut c = tokio::process::Command::new(prog);
            c.args(&words[1..]);
            if let Some(first) = words.first() {
                c.arg0(first);
            }
            c
        }
        _ => {
            let mut c = tokio::process::Command::new("/bin/sh");
            c.arg("-c").arg(&t.cmd);
            c
        }
    };
    c.current_dir(sandbox)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
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

#[cfg(test)]
mod tests {
    use super::direct_argv;

    fn check(cmd: &str, expected: Option<(&str, &[&str])>) {
        let got = direct_argv(cmd, Some("/nonexistent:/usr/bin:/bin"));
        let got = got.as_ref().map(|(p, a)| (p.to_str().unwrap_or(""), &a[1..]));
        // The program is wherever PATH finds it first (/usr/bin or /bin).
        match (got, expected) {
            (Some((p, a)), Some((w, wa))) => {
                assert!(p.ends_with(w), "{cmd}: {p} is not {w}");
                assert_eq!(a, wa, "{cmd}");
            }
            (g, w) => assert_eq!(g.is_some(), w.is_some(), "{cmd}: {g:?}"),
        }
    }

    #[test]
    fn only_plain_commands_skip_the_shell() {
        check("exec sleep 3600", Some(("/sleep", &["3600"])));
        check("sleep  5", Some(("/sleep", &["5"])));
        check("/bin/sleep 5", Some(("/bin/sleep", &["5"])));
        check("env --ignore-environment=x a", Some(("/env", &["--ignore-environment=x", "a"])));
        for shell in [
            "exit 3",
            "true",
            "echo hi",
            "cd /tmp",
            "sleep 1; sleep 2",
            "sleep 1 && true",
            "sleep $T",
            "sleep \"1\"",
            "sleep '1'",
            "sleep 1 > out",
            "FOO=1 sleep 1",
            "sleep ~",
            "ls *",
            "sleep 1 # comment",
            "sleep 1\nsleep 2",
            "sleep\t1",
            "./run.sh",
            "bin/run",
            "no-such-program-anywhere 1",
            "exec",
            "",
            "if true",
            "sleep `date`",
            "sleep 1 &",
            "(sleep 1)",
        ] {
            check(shell, None);
        }
    }
}
