//! Tidy checks over the whole workspace: every Rust file opens with a `//!` doc line.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(files.len() > 10, "found only {} files: wrong root?", files.len());
    let offenders: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            !text.lines().next().is_some_and(|l| l.starts_with("//!") && l.len() > 4)
        })
        .map(|f| f.strip_prefix(&root).unwrap_or(f).display().to_string())
        .collect();
    assert!(offenders.is_empty(), "files without a leading `//!` doc line:\n{}", offenders.join("\n"));
}

/// The `[dependencies]` names of a crate's manifest.
fn dependencies(krate: &str) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("crates").join(krate).join("Cargo.toml")).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
        } else if inside && !line.is_empty() && !line.starts_with('#') {
            if let Some(name) = line.split(['=', '.', ' ']).next() {
                out.push(name.to_string());
            }
        }
    }
    out
}

/// Architecture invariant: the pure crates know no runtime, clock source, database, socket or
/// process crate. (tend-plan and tend-jobs are generic over the store trait; tend-store holds the
/// trait and an in-memory backend, and uses tokio only for its watch channels.)
#[test]
fn pure_crates_depend_on_no_edge() {
    for krate in ["tend-model", "tend-spec", "tend-plan", "tend-scheduler", "tend-jobs"] {
        let bad: Vec<String> =
            dependencies(krate).into_iter().filter(|d| EDGES.contains(&d.as_str())).collect();
        assert!(bad.is_empty(), "{krate} depends on edge crates {bad:?}");
    }
}

const EDGES: [&str; 10] = [
    "tokio",
    "redb",
    "axum",
    "reqwest",
    "nix",
    "tend-store-redb",
    "tend-server",
    "tend-agent",
    "tend-sim",
    "etcd-client",
];

/// Architecture invariant: the control plane's brain (`tend-control`) runs on any store, clock
/// and transport. It uses tokio's tasks, channels and timers, but knows no HTTP, database,
/// files, sockets or processes; and its `rules` are pure (no async, store, wire types or runtime).
#[test]
fn the_control_core_knows_no_edge() {
    let bad: Vec<String> = dependencies("tend-control")
        .into_iter()
        .filter(|d| d != "tokio" && EDGES.contains(&d.as_str()))
        .collect();
    assert!(bad.is_empty(), "tend-control depends on edge crates {bad:?}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crates/tend-control/src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 10, "found only {} files in {}", files.len(), root.display());
    let edge_apis =
        ["std::fs", "std::process", "std::net", "tokio::fs", "tokio::process", "tokio::net", "/dev/"];
    let pure_forbidden =
        ["tokio", "async ", ".await", "tend_store", "tend_api", "crate::Control", "serde_json"];
    let mut offenders = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        for api in edge_apis {
            if text.contains(api) {
                offenders.push(format!("{rel}: {api}"));
            }
        }
        if rel.starts_with("rules/") {
            for word in pure_forbidden {
                if text.contains(word) {
                    offenders.push(format!("{rel} (pure rules): {word}"));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "tend-control reaching an edge:\n{}", offenders.join("\n"));
}

/// Architecture invariant: one domain model. Stored instance and agent records are read and
/// written only through their conversion in `tend-control/src/records.rs`; every other module
/// (reconcilers, API, simulator, benches) reasons on `tend_model::Instance` and `Agent`.
#[test]
fn storage_records_stay_at_the_store_edge() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    assert!(files.len() > 50, "found only {} files", files.len());
    let allowed = ["crates/tend-control/src/records.rs", "crates/tend-control/tests/control/records.rs"];
    let mut offenders = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f).display().to_string();
        if allowed.contains(&rel.as_str()) || rel.ends_with("tests/e2e/tidy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for name in ["InstanceRecord", "AgentRecord"] {
            if text.contains(name) {
                offenders.push(format!("{rel}: {name}"));
            }
        }
    }
    assert!(offenders.is_empty(), "storage records outside the store edge:\n{}", offenders.join("\n"));
}

/// Architecture invariant: only the edges read the system clock. `SystemTime::now` and
/// `Instant::now` may appear in the pure crates' sources only in `tend-model` (which defines
/// `SystemClock` for the edges to construct).
#[test]
fn pure_crates_never_read_the_system_clock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut offenders = Vec::new();
    for krate in ["tend-spec", "tend-plan", "tend-scheduler", "tend-control", "tend-jobs"] {
        let mut files = Vec::new();
        rust_files(&root.join("crates").join(krate).join("src"), &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            if text.contains("SystemTime::now")
                || text.contains("Instant::now")
                || text.contains("SystemClock")
            {
                offenders.push(f.strip_prefix(&root).unwrap_or(&f).display().to_string());
            }
        }
    }
    assert!(offenders.is_empty(), "pure crates reading the clock:\n{}", offenders.join("\n"));
}
