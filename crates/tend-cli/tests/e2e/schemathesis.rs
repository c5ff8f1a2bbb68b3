//! Schemathesis (from PyPI; `scripts/test` installs it and sets `TEND_SCHEMATHESIS`) against the
//! OpenAPI document a running control plane serves, with every check: no 5xx, every answer
//! conforms to its schema (status, content type, headers, body), invalid input is refused,
//! valid input is not, missing auth is refused — and, through `schemathesis/tend_hooks.py`,
//! nothing a user can see changes when a call is refused.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;

const SPEC: &str = "version: 1
name: web
pods:
  w:
    count: 2
    volumes: [{ name: data, path: data, size_mb: 1 }]
    tasks: { t: { cmd: 'exec sleep 600' } }
jobs:
  check:
    pod: w
    cmd: 'echo checked'
    interval_seconds: 3600
";

fn schemathesis() -> Result<PathBuf, String> {
    let Some(st) = std::env::var_os("TEND_SCHEMATHESIS").map(PathBuf::from) else {
        return Err("TEND_SCHEMATHESIS is not set (scripts/test installs schemathesis and sets it)".into());
    };
    if !st.exists() {
        return Err(format!("{} does not exist", st.display()));
    }
    Ok(st)
}

#[test]
fn the_api_conforms_to_its_openapi_document() {
    let st = match schemathesis() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED the_api_conforms_to_its_openapi_document: {why}");
            return;
        }
    };
    let c = Cluster::start();
    c.deploy(&c.write_spec("web.yml", SPEC), true).unwrap();
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis");
    let report = std::env::var_os("TEND_SCHEMATHESIS_REPORT")
        .map(PathBuf::from)
        .unwrap_or_else(|| c.dir.path().join("report"));
    let examples = std::env::var("TEND_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "10".into());
    let mut child = Command::new(&st)
        .arg("--config-file")
        .arg(hooks.join("schemathesis.toml"))
        .args(["run", &format!("{}/v1/openapi.json", c.url()), "--checks", "all"])
        .args(["--tls-verify", c.ca().to_str().unwrap()])
        .args(["-H", &format!("Authorization: Bearer {}", c.token())])
        .args(["--max-examples", &examples, "--seed", "1", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing", "--generation-database", "none"])
        // The event stream never ends (schemathesis reads it until its timeout): tests/stream.rs.
        .args(["--exclude-path", "/v1/events/stream"])
        .args(["--suppress-health-check", "all", "--report", "junit", "--report-dir"])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "tend_hooks")
        .env("PYTHONPATH", &hooks)
        .env("TEND_URL", c.url())
        .env("TEND_TOKEN", c.token())
        .env("TEND_CA", c.ca())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    // Bounded: killed by its pid after 10 minutes.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish in 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "{}",
        text.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    assert!(
        status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really ran the operations (a document with no paths would pass vacuously).
    let tested = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Tested: "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(tested >= 40, "only {tested} operations tested:\n{text}");
    // The control plane survived it all, and never panicked (every call with the admin token:
    // schemathesis may well have deleted the service, as it may).
    let (code, _) = c.raw("GET", "/v1/health", None, None);
    assert_eq!(code, 200);
    let log = c.server_log();
    assert!(!log.contains("panicked"), "the control plane panicked:\n{log}");
}
