//! `tend spec validate|show` through the real binary: exit codes, located reports, normal form.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tend"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn validate_accepts_the_data_store_example() {
    let out = tend()
        .args(["spec", "validate"])
        .arg(root().join("examples/data-store/service.yml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("valid — service `data-store`: 2 pod(s), 5 instance(s)"), "{stdout}");
    assert!(stdout.contains("config sha256:"), "{stdout}");
}

#[test]
fn validate_reports_every_broken_spec_with_its_location() {
    let dir = root().join("crates/tend-spec/testdata/bad");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "yml") {
            continue;
        }
        n += 1;
        let out = tend().args(["spec", "validate"]).arg(&p).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", p.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        let loc = format!("{}:", p.display());
        assert!(stderr.contains(&format!("--> {loc}")), "{}: {stderr}", p.display());
        // JSON form: the same errors, machine-readable.
        let out = tend().args(["spec", "validate", "--json"]).arg(&p).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["valid"], false);
        assert!(v["errors"][0]["line"].as_u64().unwrap() >= 1);
    }
    assert!(n >= 10);
}

#[test]
fn show_fills_in_defaults() {
    let out = tend()
        .args(["spec", "show", "--json"])
        .arg(root().join("examples/data-store/service.yml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pods"]["data"]["count"], 3);
    assert_eq!(v["pods"]["data"]["tasks"]["init"]["goal"], "once");
    assert_eq!(v["pods"]["meta-data"]["tasks"]["server"]["readiness_check"]["max_consecutive_failures"], 3);
    assert_eq!(v["plans"]["deploy"]["phases"]["data"]["pod"], "data");
    let yaml =
        tend().args(["spec", "show"]).arg(root().join("examples/data-store/service.yml")).output().unwrap();
    assert!(yaml.status.success());
    // The normal form is itself a valid spec.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("normal.yml");
    std::fs::write(&f, &yaml.stdout).unwrap();
    let again = tend().args(["spec", "show"]).arg(&f).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(again.stdout, yaml.stdout, "normalising is idempotent");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = tend().args(["spec", "validate", "/nonexistent/spec.yml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/spec.yml"));
}

#[test]
fn a_zero_step_deadline_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("srv");
    let out = tend()
        .args(["server", "--listen", "127.0.0.1:0", "--step-deadline-seconds", "0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--step-deadline-seconds must be at least 1"));
    assert!(!data.exists(), "nothing was created");
}
