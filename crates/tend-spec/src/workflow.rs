//! WorkflowSpec v1: standalone resumable workflows of shell steps (`tend workflow run`).

use serde::Serialize;

use crate::decode::{find_cycle, valid_name, Ctx};
use crate::diag::did_you_mean;
use crate::node::Node;
use crate::service::SPEC_VERSION;

/// A workflow: named steps with check/run commands and dependencies.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowSpec {
    pub version: u32,
    pub name: String,
    /// Directory the commands run in, relative to the spec file.
    pub workdir: String,
    pub shell: String,
    pub steps: Vec<WorkflowStep>,
}

/// One step: `check` says whether the work is done; `run` does it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WorkflowStep {
    pub name: String,
    pub description: Option<String>,
    /// Exit 0: the desired state is reached. Absent: the persisted record decides.
    pub check: Option<String>,
    pub run: String,
    pub needs: Vec<String>,
    /// Files whose content is this step's fingerprint: when it changes, dependants re-run.
    pub outputs: Vec<String>,
    pub timeout_seconds: Option<u64>,
}

/// Decodes a workflow spec, collecting every problem; None if there was any.
pub fn decode_workflow(root: &Node, cx: &mut Ctx) -> Option<WorkflowSpec> {
    let before = cx.diags.len();
    let f = cx.fields(root, "the workflow", &["version", "name", "workdir", "shell", "steps"])?;
    let version = cx.require(&f, "version", "the workflow", "1").and_then(|n| {
        let v = cx.int(n, "version", 0, u32::MAX as i128)?;
        if v as u32 != SPEC_VERSION {
            cx.at(
                "unsupported-version",
                n,
                format!("workflow version {v} is not supported"),
                Some(format!("this tend reads `version: {SPEC_VERSION}`")),
            );
            return None;
        }
        Some(SPEC_VERSION)
    });
    let name = cx.require(&f, "name", "the workflow", "deploy-app").and_then(|n| {
        let s = cx.nonempty_string(n, "the workflow name")?;
        if !valid_name(&s) {
            cx.at("invalid-name", n, format!("`{s}` is not a valid workflow name"), None);
            return None;
        }
        Some(s)
    });
    let workdir =
        f.get("workdir").and_then(|n| cx.nonempty_string(n, "workdir")).unwrap_or_else(|| ".".into());
    let shell =
        f.get("shell").and_then(|n| cx.nonempty_string(n, "shell")).unwrap_or_else(|| "/bin/sh".into());
    let mut steps: Vec<WorkflowStep> = Vec::new();
    let mut needs_pos = Vec::new();
    if let Some(n) = cx.require(&f, "steps", "the workflow", "{ build: { run: make } }") {
        for (sname, _, snode) in cx.named(n, "`steps`", "step") {
            let what = format!("step `{sname}`");
            let Some(sf) = cx.fields(
                snode,
                &what,
                &["description", "check", "run", "needs", "outputs", "timeout_seconds"],
            ) else {
                continue;
            };
            let description = sf.get("description").and_then(|n| cx.string(n, "description"));
            let check = sf.get("check").and_then(|n| cx.nonempty_string(n, "check"));
            let run = cx.require(&sf, "run", &what, "./do-it.sh").and_then(|n| cx.nonempty_string(n, "run"));
            let needs = sf.get("needs").map(|n| cx.string_list(n, "needs")).unwrap_or_default();
            let outputs = sf.get("outputs").map(|n| cx.string_list(n, "outputs")).unwrap_or_default();
            for (o, pos) in &outputs {
                if o.starts_with('/') || o.split('/').any(|c| c == "..") {
                    cx.error(
                        "invalid-path",
                        *pos,
                        o.len(),
                        format!("output `{o}` must be a path inside the workdir"),
                        Some("use a relative path without `..`".into()),
                    );
                }
            }
            let timeout_seconds = sf
                .get("timeout_seconds")
                .and_then(|n| cx.int(n, "timeout_seconds", 1, 7 * 86_400))
                .map(|v| v as u64);
            needs_pos.push((sname.clone(), needs.clone()));
            if let Some(run) = run {
                steps.push(WorkflowStep {
                    name: sname,
                    description,
                    check,
                    run,
                    needs: needs.into_iter().map(|(s, _)| s).collect(),
                    outputs: outputs.into_iter().map(|(s, _)| s).collect(),
                    timeout_seconds,
                });
            }
        }
    }
    let names: Vec<&str> = needs_pos.iter().map(|(n, _)| n.as_str()).collect();
    let mut graph = Vec::new();
    for (sname, needs) in &needs_pos {
        let mut known = Vec::new();
        for (d, pos) in needs {
            if names.contains(&d.as_str()) {
                known.push(d.clone());
            } else {
                let hint = match did_you_mean(d, names.iter().copied()) {
                    Some(m) => format!("did you mean `{m}`?"),
                    None => format!("the steps are: {}", names.join(", ")),
                };
                cx.error(
                    "unknown-step",
                    *pos,
                    d.len(),
                    format!("step `{sname}` needs unknown step `{d}`"),
                    Some(hint),
                );
            }
        }
        graph.push((sname.clone(), known));
    }
    if let Some(cycle) = find_cycle(&graph) {
        let pos = needs_pos
            .iter()
            .find(|(n, _)| *n == cycle[0])
            .and_then(|(_, d)| d.first().map(|(_, p)| *p))
            .unwrap_or(root.pos);
        cx.error(
            "cyclic-dependency",
            pos,
            1,
            format!("steps need each other in a cycle: {}", cycle.join(" → ")),
            Some("remove one of these `needs` entries".into()),
        );
    }
    if cx.diags.len() > before {
        return None;
    }
    Some(WorkflowSpec { version: version?, name: name?, workdir, shell, steps })
}
