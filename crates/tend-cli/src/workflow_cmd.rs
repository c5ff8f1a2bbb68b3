//! `tend workflow run|status`: run a resumable workflow with live progress, or show its progress.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tend_workflow::{Workflow, WorkflowError};

use crate::progress::Progress;

fn load(file: &Path, state_dir: Option<&Path>) -> anyhow::Result<Result<Workflow, ExitCode>> {
    match Workflow::load(file, state_dir) {
        Ok(w) => Ok(Ok(w)),
        Err(WorkflowError::Spec(report)) => {
            eprint!("{}", report.render());
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn run(
    file: &Path,
    replay: usize,
    json: bool,
    state_dir: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let wf = match load(file, state_dir)? {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let labels: BTreeMap<String, String> = wf
        .plan
        .steps
        .iter()
        .filter_map(|n| wf.step(n).and_then(|s| s.description.clone()).map(|d| (n.id.clone(), d)))
        .collect();
    let progress = Progress::new(json, labels);
    let n = wf.plan.steps.len();
    progress.say(&format!("workflow `{}`: {n} steps in {}", wf.spec.name, wf.workdir.display()));
    if replay > 0 {
        progress.say(&format!("replaying the last {replay} step(s)"));
    }
    let t0 = Instant::now();
    let summary = wf.run(replay, &progress).await?;
    let ms = t0.elapsed().as_millis();
    progress.json(serde_json::json!({
        "event": "finished",
        "complete": summary.complete(),
        "applied": summary.applied.iter().map(|s| short(s)).collect::<Vec<_>>(),
        "skipped": summary.skipped.iter().map(|s| short(s)).collect::<Vec<_>>(),
        "failed": summary.failed.iter().map(|(s, _)| short(s)).collect::<Vec<_>>(),
        "blocked": summary.blocked.iter().map(|s| short(s)).collect::<Vec<_>>(),
        "resumed": summary.resumed.iter().map(|s| short(s)).collect::<Vec<_>>(),
        "elapsed_ms": ms,
    }));
    for (_, error) in &summary.failed {
        eprintln!("error: {error}");
    }
    if !summary.resumed.is_empty() {
        progress.say(&format!(
            "resumed where an earlier run stopped: {}",
            summary.resumed.iter().map(|s| short(s)).collect::<Vec<_>>().join(", ")
        ));
    }
    if summary.complete() && summary.applied.is_empty() {
        progress.last(&format!("nothing to do: all {n} steps were already done (checked in {ms} ms)"));
    } else if summary.complete() {
        progress.last(&format!(
            "complete: {} step(s) ran, {} already done, in {ms} ms",
            summary.applied.len(),
            summary.skipped.len()
        ));
    } else {
        progress.last(&format!(
            "incomplete: {} failed, {} not run; fix the cause and run again to resume",
            summary.failed.len(),
            summary.blocked.len() + summary.held.len()
        ));
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn short(id: &str) -> &str {
    id.rsplit_once('/').map_or(id, |(_, s)| s)
}

pub async fn status(file: &Path, json: bool, state_dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let wf = match load(file, state_dir)? {
        Ok(w) => w,
        Err(code) => return Ok(code),
    };
    let view = wf.view().await?;
    let steps: Vec<(String, tend_plan::StepRecord)> = view.phases.into_iter().flat_map(|p| p.steps).collect();
    if json {
        let v: Vec<serde_json::Value> = steps
            .iter()
            .map(|(name, r)| {
                serde_json::json!({ "step": name, "status": r.status().as_str(), "runs": r.applies, "error": r.last_error })
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({ "workflow": wf.spec.name, "status": view.status.as_str(), "steps": v })
        );
    } else {
        outln!("workflow `{}`: {}", wf.spec.name, view.status.as_str());
        for (name, r) in &steps {
            outln!("  {:<20} {:<9} runs {}", name, r.status().as_str(), r.applies);
        }
    }
    Ok(ExitCode::SUCCESS)
}
