//! Who may do what, end to end with the real binary: named tokens with roles (viewer,
//! operator, admin) and an optional service, stored hashed, listed and revoked; refused calls
//! change nothing, and every mutating call is an audit event with the token's name.

use crate::common;

use std::time::Duration;

use common::Cluster;
use serde_json::Value;

const WEB: &str = "version: 1
name: web
pods:
  web:
    tasks:
      server: { cmd: 'exec sleep 600' }
";

fn create(c: &Cluster, name: &str, role: &str, service: Option<&str>) -> String {
    let mut args = vec!["token", "create", name, "--role", role];
    if let Some(s) = service {
        args.extend(["--service", s]);
    }
    let v = c.api(&args).unwrap();
    assert_eq!(v["name"], name, "{v}");
    v["token"].as_str().unwrap().to_string()
}

fn generation(c: &Cluster, service: &str) -> u64 {
    c.api(&["service", "status", service]).unwrap()["generation"].as_u64().unwrap_or(0)
}

#[test]
fn roles_limit_what_each_token_can_do_and_every_change_is_audited() {
    let c = Cluster::start();
    let spec = c.write_spec("web.yml", WEB);
    c.deploy(&spec, true).unwrap();
    let db_spec = c.write_spec("db.yml", &WEB.replace("name: web", "name: db"));
    c.deploy(&db_spec, true).unwrap();
    let viewer = create(&c, "watcher", "viewer", None);
    let operator = create(&c, "oncall", "operator", None);
    let web_admin = create(&c, "web-owner", "admin", Some("web"));
    let db_gen = generation(&c, "db");

    // A viewer reads everything and changes nothing.
    assert_eq!(c.api_as(&viewer, &["service", "list"]).unwrap().as_array().unwrap().len(), 2);
    for args in [
        vec!["plan", "interrupt", "deploy", "--service", "web"],
        vec!["pod", "restart", "web-0", "--service", "web"],
        vec!["service", "deploy", spec.to_str().unwrap(), "--no-wait"],
        vec!["token", "create", "mine", "--role", "admin"],
    ] {
        let e = c.api_as(&viewer, &args).expect_err("a viewer changes nothing");
        assert!(e.contains("forbidden") || e.contains("needs"), "{args:?}: {e}");
    }
    // An operator runs plans and pods, but changes no spec and makes no token.
    c.api_as(&operator, &["plan", "interrupt", "deploy", "--service", "web"]).unwrap();
    c.api_as(&operator, &["plan", "continue", "deploy", "--service", "web"]).unwrap();
    let e = c.api_as(&operator, &["service", "deploy", spec.to_str().unwrap(), "--no-wait"]).unwrap_err();
    assert!(e.contains("needs admin"), "{e}");
    // An admin of `web` changes web, and nothing of db's or the cluster's.
    c.api_as(&web_admin, &["service", "deploy", spec.to_str().unwrap(), "--no-wait"]).unwrap();
    let e = c.api_as(&web_admin, &["service", "deploy", db_spec.to_str().unwrap(), "--no-wait"]).unwrap_err();
    assert!(e.contains("limited to service `web`"), "{e}");
    let e = c.api_as(&web_admin, &["pod", "list", "--service", "db"]).unwrap_err();
    assert!(e.contains("limited to service `web`"), "{e}");
    assert!(c.api_as(&web_admin, &["token", "list"]).is_err());
    // The refused calls changed nothing: db is at its generation (web's own admin did not bump it).
    assert_eq!(generation(&c, "db"), db_gen);

    // Listed without secrets; stored only as hashes.
    let list = c.api(&["token", "list"]).unwrap();
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["oncall", "watcher", "web-owner"]);
    assert!(!list.to_string().contains(&viewer), "no secret listed");
    let redb = std::fs::read(c.data().join("server.redb")).unwrap();
    assert!(!redb.windows(viewer.len()).any(|w| w == viewer.as_bytes()), "the secret is not in the store");
    // A name is taken once; the bootstrap name is reserved; bad names are refused.
    assert!(c.api(&["token", "create", "watcher", "--role", "viewer"]).unwrap_err().contains("exists"));
    assert!(c.api(&["token", "create", "bootstrap", "--role", "viewer"]).is_err());
    assert!(c.api(&["token", "create", "Bad Name", "--role", "viewer"]).unwrap_err().contains("lowercase"));

    // Revoked: refused at once.
    c.api(&["token", "revoke", "watcher"]).unwrap();
    let e = c.api_as(&viewer, &["service", "list"]).unwrap_err();
    assert!(e.contains("unauthorized") || e.contains("bearer"), "{e}");

    // Every mutating call is in the events with its token's name, refused ones too.
    c.wait_for(Duration::from_secs(5), "audit events", |c| {
        let ev = c.api(&["events"]).unwrap();
        let audit: Vec<&Value> = ev.as_array().unwrap().iter().filter(|e| e["kind"] == "audit").collect();
        let text = serde_json::to_string(&audit).unwrap();
        text.contains("token `oncall` (operator) POST /v1/services/web/plans/deploy/interrupt -> 200")
            && text.contains("token `watcher` (viewer) POST /v1/services/web/plans/deploy/interrupt -> 403")
            && text.contains("token `web-owner` (admin) PUT /v1/services/web")
            && text.contains("token `bootstrap` (admin) DELETE /v1/tokens/watcher -> 200")
    });
}
