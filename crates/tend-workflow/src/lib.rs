//! Standalone resumable workflows (`tend workflow run`): each step's `check` and `run` are shell
//! commands run in the workflow's directory; the plan engine decides what to run and persists
//! progress in a redb store under `.tend/` beside the spec.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tend_model::SystemClock;
use tend_plan::{
    Applied, ApplyReason, CheckResult, Engine, Observer, Plan, PlanDef, RunSummary, StepDef, StepNode,
    StepWork, Target,
};
use tend_spec::{WorkflowSpec, WorkflowStep};
use tend_store::StateStore;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Lines of output kept to show when a step fails.
pub const TAIL_LINES: usize = 20;

/// What can go wrong running a workflow (not a step: those are in the summary).
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Spec(#[from] tend_spec::Report),
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: String },
    #[error("workdir {path} does not exist or is not a directory")]
    Workdir { path: String },
    #[error("{0}")]
    Plan(#[from] tend_plan::PlanError),
    #[error("{0}")]
    Engine(#[from] tend_plan::EngineError),
    #[error("cannot open the workflow state in {path}: {error}")]
    Store { path: String, error: String },
    #[error("--replay {asked}: the workflow has only {steps} steps")]
    Replay { asked: usize, steps: usize },
}

/// A loaded workflow, ready to run.
pub struct Workflow {
    pub spec: WorkflowSpec,
    /// Directory the commands run in.
    pub workdir: PathBuf,
    pub plan: Plan,
    engine: Engine,
    _store: Arc<dyn StateStore>,
}

/// How a command ended.
#[derive(Debug)]
struct CmdOutcome {
    code: Option<i32>,
    timed_out: bool,
    tail: VecDeque<String>,
}

impl Workflow {
    /// Loads the workflow in `file`; its state lives in `state_dir` (default: `.tend` beside it).
    pub fn load(file: &Path, state_dir: Option<&Path>) -> Result<Workflow, WorkflowError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| WorkflowError::Read { path: file.display().to_string(), error: e.to_string() })?;
        let spec = tend_spec::load_workflow(&file.display().to_string(), &text)?;
        let base = file.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        let workdir = base.join(&spec.workdir);
        if !workdir.is_dir() {
            return Err(WorkflowError::Workdir { path: workdir.display().to_string() });
        }
        let plan = Plan::compile(PlanDef {
            name: spec.name.clone(),
            strategy: tend_plan::Strategy::Serial,
            phases: vec![tend_plan::PhaseDef {
                name: "steps".into(),
                strategy: tend_plan::Strategy::Dependency,
                depends_on: vec![],
                steps: spec
                    .steps
                    .iter()
                    .map(|s| StepDef { name: s.name.clone(), needs: s.needs.clone() })
                    .collect(),
            }],
        })?;
        let state_dir = state_dir.map(Path::to_path_buf).unwrap_or_else(|| base.join(".tend"));
        std::fs::create_dir_all(&state_dir).map_err(|e| WorkflowError::Store {
            path: state_dir.display().to_string(),
            error: e.to_string(),
        })?;
        let store_path = state_dir.join("workflows.redb");
        let store: Arc<dyn StateStore> =
            tend_store_redb::RedbStore::open(&store_path, Arc::new(SystemClock)).map_err(|e| {
                WorkflowError::Store { path: store_path.display().to_string(), error: e.to_string() }
            })?;
        let engine = Engine::new(store.clone(), Arc::new(SystemClock), format!("workflows/{}", spec.name));
        Ok(Workflow { spec, workdir, plan, engine, _store: store })
    }

    /// The spec of a step by plan step id.
    pub fn step(&self, node: &StepNode) -> Option<&WorkflowStep> {
        self.spec.steps.iter().find(|s| s.name == node.name)
    }

    /// Runs the workflow; `replay` forces the last N steps (in dependency order) to run again.
    pub async fn run(&self, replay: usize, observer: &dyn Observer) -> Result<RunSummary, WorkflowError> {
        if replay > self.plan.steps.len() {
            return Err(WorkflowError::Replay { asked: replay, steps: self.plan.steps.len() });
        }
        for node in self.plan.steps.iter().rev().take(replay) {
            self.engine.restart(&self.plan, &Target::Step(node.id.clone())).await?;
        }
        let work = ShellWork { wf: self };
        Ok(self.engine.run(&self.plan, &work, observer).await?)
    }

    /// The persisted view of the workflow's progress.
    pub async fn view(&self) -> Result<tend_plan::PlanView, WorkflowError> {
        Ok(self.engine.view(&self.plan).await?)
    }

    async fn sh(&self, step: &WorkflowStep, what: &str, cmd: &str) -> std::io::Result<CmdOutcome> {
        let mut c = tokio::process::Command::new(&self.spec.shell);
        c.arg("-c")
            .arg(cmd)
            .current_dir(&self.workdir)
            .env("TEND_WORKFLOW", &self.spec.name)
            .env("TEND_STEP", &step.name)
            .env("TEND_PHASE", what)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = c.spawn()?;
        let pgid = child.id().map(|p| nix::unistd::Pid::from_raw(p as i32));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let _ = tx.send(l);
                }
            });
        }
        drop(tx);
        let limit =
            step.timeout_seconds.map(Duration::from_secs).unwrap_or(Duration::from_secs(365 * 86_400));
        let (status, timed_out) = match tokio::time::timeout(limit, child.wait()).await {
            Ok(s) => (Some(s?), false),
            Err(_) => {
                if let Some(pg) = pgid {
                    let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.wait().await;
                (None, true)
            }
        };
        // Whatever the group left running is ours to end.
        if let Some(pg) = pgid {
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
        }
        let mut tail = VecDeque::new();
        while let Some(l) = rx.recv().await {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(l);
        }
        Ok(CmdOutcome { code: status.and_then(|s| s.code()), timed_out, tail })
    }
}

/// Steps as shell commands.
struct ShellWork<'a> {
    wf: &'a Workflow,
}

fn describe_failure(step: &str, what: &str, cmd: &str, o: &CmdOutcome, timeout: Option<u64>) -> String {
    let how = if o.timed_out {
        format!("was killed after its timeout of {} s", timeout.unwrap_or(0))
    } else {
        match o.code {
            Some(c) => format!("exited with code {c}"),
            None => "was killed by a signal".into(),
        }
    };
    let mut s = format!("step `{step}`: {what} command {how}\n  command: {cmd}");
    if o.tail.is_empty() {
        s.push_str("\n  (no output)");
    } else {
        s.push_str(&format!("\n  last {} line(s) of output:", o.tail.len()));
        for l in &o.tail {
            s.push_str("\n  | ");
            s.push_str(l);
        }
    }
    s
}

#[async_trait]
impl StepWork for ShellWork<'_> {
    async fn check(&self, node: &StepNode) -> Result<CheckResult, String> {
        let step = self.wf.step(node).ok_or_else(|| format!("no step {}", node.id))?;
        let Some(check) = &step.check else { return Ok(CheckResult::NoCheck) };
        let o = self.wf.sh(step, "check", check).await.map_err(|e| format!("cannot start the check: {e}"))?;
        if o.timed_out {
            return Err(describe_failure(&step.name, "check", check, &o, step.timeout_seconds));
        }
        Ok(if o.code == Some(0) { CheckResult::Done } else { CheckResult::Needed })
    }

    async fn apply(&self, node: &StepNode, _reason: &ApplyReason) -> Result<Applied, String> {
        let step = self.wf.step(node).ok_or_else(|| format!("no step {}", node.id))?;
        let o = self
            .wf
            .sh(step, "run", &step.run)
            .await
            .map_err(|e| format!("cannot start `{}`: {e}", step.run))?;
        if o.code == Some(0) && !o.timed_out {
            Ok(Applied::Done)
        } else {
            Err(describe_failure(&step.name, "run", &step.run, &o, step.timeout_seconds))
        }
    }

    async fn fingerprint(&self, node: &StepNode) -> Result<Option<String>, String> {
        let step = self.wf.step(node).ok_or_else(|| format!("no step {}", node.id))?;
        if step.outputs.is_empty() {
            return Ok(None);
        }
        let mut h = Sha256::new();
        for o in &step.outputs {
            h.update(o.as_bytes());
            h.update([0]);
            match tokio::fs::read(self.wf.workdir.join(o)).await {
                Ok(bytes) => h.update(Sha256::digest(&bytes)),
                Err(_) => h.update(b"<missing>"),
            }
        }
        Ok(Some(format!("sha256:{}", &hex::encode(h.finalize())[..32])))
    }
}
