//! Checkpoints: what an agent runs, written to disk at every launch, so that a restarted agent
//! re-adopts its running tasks (verified by pid and process start time) instead of launching them
//! a second time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tend_api::Assignment;

/// One task process of a checkpointed incarnation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskCk {
    pub pid: u32,
    /// From /proc/PID/stat: tells the process from a later one reusing its pid.
    pub start_time: u64,
    pub restarts: u32,
}

/// An incarnation as last launched on this agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Checkpoint {
    pub assignment: Assignment,
    pub tasks: BTreeMap<String, TaskCk>,
    /// `once`/`finish` tasks that ended, with their exit code: a re-adopted incarnation reports
    /// them, so that no plan waits on a state that cannot come.
    #[serde(default)]
    pub finished: BTreeMap<String, Option<i32>>,
}

impl Checkpoint {
    /// Whether every task that must finish before the long-running ones did, successfully: only
    /// then can the incarnation be re-adopted as it is.
    pub fn prelude_done(&self) -> bool {
        // Long-running tasks start only after the prelude succeeded: one recorded proves it
        // (checkpoints written before `finished` existed have only those).
        let running = |n: &String| {
            self.assignment.tasks.iter().any(|t| &t.name == n && t.goal == tend_api::TaskGoal::Running)
        };
        if self.tasks.keys().any(running) {
            return true;
        }
        self.assignment
            .tasks
            .iter()
            .filter(|t| t.goal != tend_api::TaskGoal::Running && !t.skip)
            .all(|t| self.finished.get(&t.name) == Some(&Some(0)))
    }
}

/// The checkpoint files of an agent (one per instance).
pub struct Checkpoints {
    dir: PathBuf,
    /// A change reads, edits and replaces an instance's file under its stripe's lock: instances
    /// in different stripes are written side by side.
    locks: Vec<Mutex<()>>,
}

const STRIPES: usize = 32;

impl Checkpoints {
    pub fn new(data_dir: &Path) -> Checkpoints {
        Checkpoints {
            dir: data_dir.join("checkpoints"),
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn lock(&self, service: &str, instance: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (service, instance).hash(&mut h);
        let stripe = &self.locks[h.finish() as usize % STRIPES];
        stripe.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn path(&self, a: &Assignment) -> PathBuf {
        self.dir.join(&a.service).join(format!("{}.json", a.instance))
    }

    /// Records that `task` of `a` now runs as `pid`.
    pub fn record(&self, a: &Assignment, task: &str, pid: u32, restarts: u32) {
        let Some(start_time) = crate::pod::proc_start_time(pid) else { return };
        self.change(a, |ck| {
            ck.tasks.insert(task.to_string(), TaskCk { pid, start_time, restarts });
        });
    }

    /// Records that a `once`/`finish` task of `a` ended with `code`.
    pub fn record_finished(&self, a: &Assignment, task: &str, code: Option<i32>) {
        self.change(a, |ck| {
            ck.tasks.remove(task);
            ck.finished.insert(task.to_string(), code);
        });
    }

    fn change(&self, a: &Assignment, f: impl FnOnce(&mut Checkpoint)) {
        let _g = self.lock(&a.service, &a.instance);
        let path = self.path(a);
        let mut ck = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
            .filter(|c| c.assignment.incarnation == a.incarnation)
            .unwrap_or_else(|| Checkpoint {
                assignment: a.clone(),
                tasks: BTreeMap::new(),
                finished: BTreeMap::new(),
            });
        f(&mut ck);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
            // Checkpoints hold the tasks' env (secrets too): the owner's only.
            let _ = std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        }
        let tmp = path.with_extension("json.part");
        if let Ok(bytes) = serde_json::to_vec(&ck) {
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes));
            if written.is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
    }

    /// Forgets an instance (its incarnation was stopped on purpose).
    pub fn remove(&self, service: &str, instance: &str) {
        let _g = self.lock(service, instance);
        let _ = std::fs::remove_file(self.dir.join(service).join(format!("{instance}.json")));
    }

    /// Every checkpoint on disk (unreadable ones are skipped with a warning).
    pub fn load_all(&self) -> Vec<Checkpoint> {
        let mut out = Vec::new();
        let Ok(services) = std::fs::read_dir(&self.dir) else { return out };
        for s in services.flatten() {
            let Ok(files) = std::fs::read_dir(s.path()) else { continue };
            for f in files.flatten() {
                if f.path().extension().is_none_or(|e| e != "json") {
                    continue;
                }
                match std::fs::read(f.path()).ok().and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok())
                {
                    Some(c) => out.push(c),
                    None => tracing::warn!(file = %f.path().display(), "unreadable checkpoint skipped"),
                }
            }
        }
        out
    }
}
