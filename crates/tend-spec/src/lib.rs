//! The specs users write: ServiceSpec v1 (pods, tasks, plans, recovery) and WorkflowSpec v1
//! (resumable shell workflows). Pure: text in, a normalised model or a located error report out.
//!
//! Parsing goes YAML → located [`node::Node`] tree (serde-saphyr, under a budget that rejects
//! YAML bombs) → typed model, collecting every problem of the file in one pass.

pub mod decode;
pub mod diag;
pub mod identity;
pub mod node;
pub mod service;
pub mod update;
pub mod workflow;

pub use diag::{Diagnostic, Report};
pub use identity::pod_config_identity;
pub use service::*;
pub use update::{HealthGate, UpdatePolicy};
pub use workflow::{WorkflowSpec, WorkflowStep};

fn load<T>(
    file: &str,
    text: &str,
    decode: impl FnOnce(&node::Node, &mut decode::Ctx) -> Option<T>,
) -> Result<T, Report> {
    let report = |diagnostics| Report { file: file.to_string(), source: text.to_string(), diagnostics };
    let root = match node::parse(text) {
        Ok(n) => n,
        Err(e) => {
            let pos = e.pos.unwrap_or(node::Pos { line: 1, col: 1 });
            let budget = e.message.to_lowercase().contains("budget");
            return Err(report(vec![Diagnostic {
                code: if budget { "yaml-budget" } else { "yaml-syntax" },
                message: e.message,
                pos,
                width: 1,
                hint: Some(if budget {
                    "the document is too large or expands too much (anchors/aliases); write it out plainly"
                        .into()
                } else {
                    "fix the YAML syntax at this place".into()
                }),
            }]));
        }
    };
    let mut cx = decode::Ctx::default();
    let out = decode(&root, &mut cx);
    let mut diags = cx.diags;
    match out {
        Some(v) if diags.is_empty() => Ok(v),
        _ => {
            diags.sort_by_key(|d| d.pos);
            if diags.is_empty() {
                diags.push(Diagnostic {
                    code: "invalid",
                    message: "the document is not a valid spec".into(),
                    pos: root.pos,
                    width: 1,
                    hint: None,
                });
            }
            Err(report(diags))
        }
    }
}

/// Parses and validates a service spec. `file` is only used to label locations.
pub fn load_service(file: &str, text: &str) -> Result<ServiceSpec, Report> {
    load(file, text, service::decode_service)
}

/// Parses and validates a workflow spec.
pub fn load_workflow(file: &str, text: &str) -> Result<WorkflowSpec, Report> {
    load(file, text, workflow::decode_workflow)
}
