//! `tend spec validate|show`: load a service spec, report errors, print it normalised.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tend_spec::{pod_config_identity, ServiceSpec};

/// Loads a spec; Err(code) after printing the report.
fn load(file: &Path, json: bool) -> anyhow::Result<Result<ServiceSpec, ExitCode>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    match tend_spec::load_service(&file.display().to_string(), &text) {
        Ok(s) => Ok(Ok(s)),
        Err(report) => {
            if json {
                let errors: Vec<serde_json::Value> = report
                    .diagnostics
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "code": d.code, "message": d.message, "file": report.file,
                            "line": d.pos.line, "column": d.pos.col, "hint": d.hint,
                        })
                    })
                    .collect();
                outln!("{}", serde_json::json!({ "valid": false, "errors": errors }));
            } else {
                eprint!("{}", report.render());
            }
            Ok(Err(ExitCode::from(1)))
        }
    }
}

/// Digests of local artifact files (relative to the spec), for config identity.
fn local_artifact_digests(file: &Path, spec: &ServiceSpec) -> BTreeMap<String, String> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = BTreeMap::new();
    for a in spec.pods.iter().flat_map(|p| p.artifacts.iter()) {
        if a.sha256.is_some() || a.uri.contains("://") && !a.uri.starts_with("file://") {
            continue;
        }
        let path = match a.uri.strip_prefix("file://") {
            Some(p) => Path::new(p).to_path_buf(),
            None => base.join(&a.uri),
        };
        if let Ok(bytes) = std::fs::read(&path) {
            out.insert(a.uri.clone(), hex::encode(Sha256::digest(&bytes)));
        }
    }
    out
}

pub fn validate(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let spec = match load(file, json)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let digests = local_artifact_digests(file, &spec);
    let instances: u32 = spec.pods.iter().map(|p| p.count).sum();
    if json {
        let pods: Vec<serde_json::Value> = spec
            .pods
            .iter()
            .map(|p| serde_json::json!({ "name": p.name, "count": p.count, "config_identity": pod_config_identity(p, &digests) }))
            .collect();
        outln!(
            "{}",
            serde_json::json!({ "valid": true, "service": spec.name, "pods": pods, "plans": spec.plans.iter().map(|p| &p.name).collect::<Vec<_>>() })
        );
    } else {
        outln!(
            "{}: valid — service `{}`: {} pod(s), {} instance(s), plans: {}",
            file.display(),
            spec.name,
            spec.pods.len(),
            instances,
            spec.plans.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
        );
        for p in &spec.pods {
            outln!("  pod {:<12} count {:<3} config {}", p.name, p.count, pod_config_identity(p, &digests));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(file: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let spec = match load(file, false)? {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    if json {
        outln!("{}", serde_json::to_string_pretty(&spec)?);
    } else {
        out!("{}", serde_saphyr::to_string(&spec).context("cannot write YAML")?);
    }
    Ok(ExitCode::SUCCESS)
}
