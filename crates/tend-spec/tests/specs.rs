//! Spec tests: the example validates, broken specs give located errors (snapshot files),
//! config identity is stable and sensitive, and no input makes the parser panic.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use tend_spec::{load_service, load_workflow, pod_config_identity, Goal, Strategy};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn data_store_example_validates() {
    let path = root().join("examples/data-store/service.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let spec = load_service("service.yml", &text).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(spec.name, "data-store");
    let counts: Vec<(&str, u32)> = spec.pods.iter().map(|p| (p.name.as_str(), p.count)).collect();
    assert_eq!(counts, vec![("meta-data", 2), ("data", 3)]);
    let data = spec.pod("data").unwrap();
    assert_eq!(data.tasks[0].goal, Goal::Once);
    assert!(!data.tasks[0].essential);
    assert_eq!(data.volumes[0].size_mb, 256);
    let deploy = spec.plan("deploy").unwrap();
    assert_eq!(
        deploy.phases.iter().map(|p| p.strategy).collect::<Vec<_>>(),
        vec![Strategy::Parallel, Strategy::Serial]
    );
    assert_eq!(spec.recovery.failure_timeout_seconds, Some(300));
}

#[test]
fn workflow_example_validates() {
    let text = std::fs::read_to_string(root().join("examples/workflow/workflow.yml")).unwrap();
    let wf = load_workflow("workflow.yml", &text).unwrap_or_else(|r| panic!("{r}"));
    assert_eq!(wf.steps.len(), 8);
}

/// Compares `actual` with the snapshot file; UPDATE_SNAPSHOTS=1 rewrites it instead.
fn check_snapshot(path: &Path, actual: &str) -> Result<(), String> {
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, actual).unwrap();
        return Ok(());
    }
    let expected =
        std::fs::read_to_string(path).map_err(|_| format!("missing snapshot {}", path.display()))?;
    if expected != actual {
        return Err(format!("{} differs:\n--- expected\n{expected}\n--- actual\n{actual}", path.display()));
    }
    Ok(())
}

#[test]
fn broken_specs_give_located_errors() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/bad");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let mut failures = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&f).unwrap();
        let report = match load_service(&name, &text) {
            Ok(_) => {
                failures.push(format!("{name}: accepted, but it is broken"));
                continue;
            }
            Err(r) => r,
        };
        for d in &report.diagnostics {
            assert!(d.pos.line >= 1 && d.pos.col >= 1, "{name}: diagnostic without a place: {d:?}");
        }
        if let Err(e) = check_snapshot(&f.with_extension("expected"), &report.render()) {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// (what is changed, text replaced, replacement, identity must change?)
#[test]
fn config_identity_is_stable_and_sensitive() {
    let text = std::fs::read_to_string(root().join("examples/data-store/service.yml")).unwrap();
    let ident = |t: &str, digests: &BTreeMap<String, String>| {
        let s = load_service("s.yml", t).unwrap_or_else(|r| panic!("{r}"));
        pod_config_identity(s.pod("data").unwrap(), digests)
    };
    let none = BTreeMap::new();
    let base = ident(&text, &none);
    assert!(base.starts_with("sha256:") && base.len() == 71);
    assert_eq!(base, ident(&text, &none), "same spec, same identity");
    let cases: &[(&str, &str, &str, bool)] = &[
        ("comment only", "# The seed's", "# A comment. The seed's", false),
        ("count", "count: 3", "count: 5", false),
        ("placement", "regex: \"a|b|c\"", "regex: \"a|b\"", false),
        ("command", "--role data --data-dir", "--role data  --data-dir", true),
        ("memory", "memory_mb: 128", "memory_mb: 256", true),
        ("pod env", "ROLE: data\n", "ROLE: data2\n", true),
        (
            "default made explicit",
            "kill_grace_period_seconds: 5\n\nplans",
            "kill_grace_period_seconds: 5\n        essential: true\n\nplans",
            false,
        ),
    ];
    for (what, from, to, changes) in cases {
        assert!(text.contains(from), "{what}: pattern not in example");
        let changed = ident(&text.replacen(from, to, 1), &none);
        assert_eq!(changed != base, *changes, "{what}");
    }
    let mut digests = BTreeMap::new();
    digests.insert("./node.py".to_string(), "0".repeat(64));
    assert_ne!(ident(&text, &digests), base, "artifact content is part of the identity");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = load_service("fuzz.yml", &text).map_err(|r| r.render());
        let _ = load_workflow("fuzz.yml", &text).map_err(|r| r.render());
    }

    #[test]
    fn mutated_example_never_panics(cuts in proptest::collection::vec((0usize..4000, 0usize..40, any::<u8>()), 1..6)) {
        let mut text = include_str!("../../../examples/data-store/service.yml").as_bytes().to_vec();
        for (at, len, byte) in cuts {
            let at = at % (text.len() + 1);
            let end = (at + len).min(text.len());
            text.splice(at..end, [byte]);
        }
        let text = String::from_utf8_lossy(&text);
        if let Err(r) = load_service("fuzz.yml", &text) {
            let out = r.render();
            prop_assert!(out.contains("fuzz.yml:"));
        }
    }
}

#[test]
fn jobs_parse_with_defaults() {
    let text = "version: 1\nname: s\npods:\n  data:\n    tasks: { t: { cmd: ./t } }\njobs:\n  repair:\n    pod: data\n    cmd: ./repair.sh\n    interval_seconds: 3600\n  backup:\n    pod: data\n    cmd: ./backup.sh\n    interval_seconds: 60\n    weight: highest\n    pacing_ratio: 0.5\n    concurrency: [ { scope: cluster, slots: 2 }, { scope: 'attribute:zone', slots: 1 } ]\n";
    let s = load_service("s.yml", text).unwrap_or_else(|r| panic!("{r}"));
    let repair = &s.jobs[0];
    assert_eq!(
        (repair.name.as_str(), repair.weight.as_str(), repair.warn_after_seconds, repair.error_after_seconds),
        ("repair", "low", 8 * 3600, 10 * 3600)
    );
    assert_eq!(repair.concurrency, vec![tend_spec::ConcurrencySpec { scope: "cluster".into(), slots: 1 }]);
    let backup = &s.jobs[1];
    assert_eq!((backup.weight.as_str(), backup.pacing_ratio, backup.concurrency.len()), ("highest", 0.5, 2));
}

/// The `update` section: defaults, service-wide values, and a pod's overrides on top of them.
#[test]
fn update_section_has_defaults_and_pod_overrides() {
    let text = "version: 1\nname: s\nupdate:\n  max_parallel: 2\n  min_healthy_seconds: 5\n  health_gate: { pod: data, cmd: ./healthy.sh }\npods:\n  data:\n    count: 3\n    tasks: { t: { cmd: ./t } }\n  web:\n    update: { max_parallel: 4, auto_rollback: false, canary: 1 }\n    tasks: { t: { cmd: ./t } }\n";
    let s = load_service("s.yml", text).unwrap_or_else(|r| panic!("{r}"));
    let gate = tend_spec::HealthGate { pod: "data".into(), cmd: "./healthy.sh".into(), timeout_seconds: 30 };
    let data = &s.pod("data").unwrap().update;
    assert_eq!(
        (
            data.max_parallel,
            data.min_healthy_seconds,
            data.progress_deadline_seconds,
            data.auto_rollback,
            data.canary
        ),
        (2, 5, 600, true, 0)
    );
    assert_eq!(data.health_gate.as_ref(), Some(&gate));
    let web = &s.pod("web").unwrap().update;
    assert_eq!((web.max_parallel, web.min_healthy_seconds, web.auto_rollback, web.canary), (4, 5, false, 1));
    assert_eq!(web.health_gate.as_ref(), Some(&gate), "inherited from the service");
    let plain =
        load_service("p.yml", "version: 1\nname: p\npods:\n  a:\n    tasks: { t: { cmd: ./t } }\n").unwrap();
    assert_eq!(plain.update, tend_spec::UpdatePolicy::default());
    assert_eq!(plain.pods[0].update, tend_spec::UpdatePolicy::default());
}
