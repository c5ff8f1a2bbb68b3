//! `tend workflow run` on the example, through the real binary doing real file work: idempotent
//! re-runs, replay, removed outputs, propagation of a changed file, resume after SIGKILL, and
//! a failing step's report.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A fresh copy of examples/workflow in a temporary directory.
struct Demo {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Demo {
    fn new() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/workflow");
        let path = dir.path().join("workflow");
        std::fs::create_dir(&path).unwrap();
        for f in ["workflow.yml", "app.zip"] {
            std::fs::copy(src.join(f), path.join(f)).unwrap();
        }
        Demo { _dir: dir, path }
    }
    fn spec(&self) -> PathBuf {
        self.path.join("workflow.yml")
    }
    fn edit_spec(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.spec()).unwrap();
        assert!(text.contains(from), "spec lacks {from:?}");
        std::fs::write(self.spec(), text.replacen(from, to, 1)).unwrap();
    }
    /// Runs `tend workflow run --json`; returns (exit code, events, stderr).
    fn run(&self, extra: &[&str]) -> (i32, Vec<Value>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_tend"))
            .args(["workflow", "run", "--json"])
            .arg(self.spec())
            .args(extra)
            .output()
            .unwrap();
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect();
        (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn finished(events: &[Value]) -> &Value {
    events.iter().find(|e| e["event"] == "finished").expect("a finished event")
}

fn names(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

const ALL: [&str; 8] = [
    "upload-app",
    "create-db",
    "download-app",
    "link-app-db",
    "run-app",
    "allocate-domain",
    "attach-domain",
    "notify",
];

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn set(items: &[&str]) -> Vec<String> {
    sorted(items.iter().map(|s| s.to_string()).collect())
}

#[test]
fn first_run_does_everything_second_run_nothing() {
    let d = Demo::new();
    let (code, ev, err) = d.run(&[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(sorted(names(&finished(&ev)["applied"])), set(&ALL));
    assert!(d.path.join("remote/dns/attached").is_file());
    assert_eq!(
        std::fs::read_to_string(d.path.join("notifications.log")).unwrap(),
        "deployed demo-app.example.test\n"
    );
    let (code, ev, _) = d.run(&[]);
    assert_eq!(code, 0);
    let f = finished(&ev);
    assert!(names(&f["applied"]).is_empty(), "second run did work: {f}");
    assert_eq!(sorted(names(&f["skipped"])), set(&ALL));
    assert_eq!(std::fs::read_to_string(d.path.join("notifications.log")).unwrap().lines().count(), 1);
    // In plain mode it says so.
    let out =
        Command::new(env!("CARGO_BIN_EXE_tend")).args(["workflow", "run"]).arg(d.spec()).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do: all 8 steps were already done"));
}

#[test]
fn replay_and_removed_outputs_rerun_only_the_last_steps() {
    let d = Demo::new();
    assert_eq!(d.run(&[]).0, 0);
    let (code, ev, _) = d.run(&["--replay", "2"]);
    assert_eq!(code, 0);
    assert_eq!(sorted(names(&finished(&ev)["applied"])), set(&["attach-domain", "notify"]));
    // Remove the last two steps' outputs: only they run again.
    std::fs::remove_file(d.path.join("remote/dns/attached")).unwrap();
    std::fs::remove_file(d.path.join("host/notified")).unwrap();
    let (code, ev, _) = d.run(&[]);
    assert_eq!(code, 0);
    assert_eq!(sorted(names(&finished(&ev)["applied"])), set(&["attach-domain", "notify"]));
    // Bad input changes nothing.
    let (code, _, err) = d.run(&["--replay", "9"]);
    assert_eq!(code, 2);
    assert!(err.contains("--replay 9: the workflow has only 8 steps"), "{err}");
}

#[test]
fn a_changed_app_reruns_download_and_what_follows() {
    let d = Demo::new();
    assert_eq!(d.run(&[]).0, 0);
    let st = Command::new("sh")
        .args(["-c", "printf 'a new release of the app' | gzip -n > app.zip"])
        .current_dir(&d.path)
        .status()
        .unwrap();
    assert!(st.success());
    let (code, ev, _) = d.run(&[]);
    assert_eq!(code, 0);
    let f = finished(&ev);
    assert_eq!(
        sorted(names(&f["applied"])),
        set(&["upload-app", "download-app", "link-app-db", "run-app", "attach-domain", "notify"])
    );
    assert_eq!(sorted(names(&f["skipped"])), set(&["create-db", "allocate-domain"]));
    assert_eq!(std::fs::read_to_string(d.path.join("host/app/app.txt")).unwrap(), "a new release of the app");
}

#[test]
fn sigkill_halfway_then_resume_at_the_interrupted_step() {
    let d = Demo::new();
    // Make run-app slow and record its shell's pid so the test can clean up after the kill.
    d.edit_spec("mkdir -p host/run &&", "echo $$ > run-app.pid && sleep 30 && mkdir -p host/run &&");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tend"))
        .args(["workflow", "run", "--json"])
        .arg(d.spec())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "applying" && v["step"] == "run-app" {
            seen = true;
            break;
        }
    }
    assert!(seen, "run-app never started");
    // Wait for the step's shell to be up, then kill tend outright.
    let pidfile = d.path.join("run-app.pid");
    for _ in 0..500 {
        if std::fs::read_to_string(&pidfile).is_ok_and(|s| !s.trim().is_empty()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    if let Ok(s) = std::fs::read_to_string(&pidfile) {
        if let Ok(p) = s.trim().parse::<i32>() {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
    }
    assert!(!d.path.join("host/run/state").exists(), "run-app did not finish before the kill");
    // Undo the slowness and run again: it resumes at run-app.
    d.edit_spec("echo $$ > run-app.pid && sleep 30 && mkdir -p host/run &&", "mkdir -p host/run &&");
    let (code, ev, err) = d.run(&[]);
    assert_eq!(code, 0, "{err}");
    let f = finished(&ev);
    assert_eq!(names(&f["resumed"]), vec!["run-app"]);
    assert_eq!(sorted(names(&f["applied"])), set(&["run-app", "attach-domain", "notify"]));
    assert_eq!(sorted(names(&f["skipped"])).len(), 5);
}

#[test]
fn a_failing_step_says_which_command_failed_how_and_its_output() {
    let d = Demo::new();
    d.edit_spec(
        "run: mkdir -p remote/db && printf",
        "run: echo creating the database; echo 'disk quota exceeded' >&2; exit 3; printf",
    );
    let (code, ev, err) = d.run(&[]);
    assert_eq!(code, 1);
    assert!(err.contains("step `create-db`: run command exited with code 3"), "{err}");
    assert!(err.contains("command: echo creating the database;"), "{err}");
    assert!(err.contains("| creating the database") && err.contains("| disk quota exceeded"), "{err}");
    let f = finished(&ev);
    assert_eq!(names(&f["failed"]), vec!["create-db"]);
    assert_eq!(sorted(names(&f["blocked"])), set(&["link-app-db", "run-app", "attach-domain", "notify"]));
    assert!(names(&f["applied"]).contains(&"download-app".to_string()), "independent steps still ran");
    // A broken workflow file is refused with its location, nothing runs.
    std::fs::write(d.spec(), "version: 1\nname: x\nsteps:\n  a: { run: 'true', needs: [b] }\n").unwrap();
    let (code, ev, err) = d.run(&[]);
    assert_eq!(code, 1);
    assert!(ev.is_empty());
    assert!(err.contains("step `a` needs unknown step `b`") && err.contains("workflow.yml:4:"), "{err}");
}
