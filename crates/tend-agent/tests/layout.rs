//! Where an agent keeps a pod instance's volumes: under the volume set's id (never reused), or,
//! for an instance placed before volume ids, in the old layout that holds its data.

use std::path::Path;
use std::sync::Arc;

use tend_agent::artifacts::Fetcher;
use tend_agent::pod::{Board, PodCtx};
use tend_api::Assignment;

fn ctx(dir: &Path) -> PodCtx {
    PodCtx {
        data_dir: dir.to_path_buf(),
        fetcher: Fetcher {
            cache_dir: dir.join("cache"),
            servers: std::sync::Arc::new(tend_agent::servers::Servers::parse("http://127.0.0.1:1")),
            token: "t".into(),
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tend_tls::plain_client_config().unwrap())
                .build()
                .unwrap(),
            web: reqwest::Client::builder()
                .use_preconfigured_tls(tend_tls::plain_client_config().unwrap())
                .build()
                .unwrap(),
        },
        board: Arc::new(Board::default()),
        checkpoints: tend_agent::checkpoint::Checkpoints::new(dir),
    }
}

fn assignment(volume_id: &str, legacy: Option<u64>, instance: &str) -> Assignment {
    let json = serde_json::json!({
        "service": "db", "pod": "db", "pod_index": 0, "instance": instance, "incarnation": 3,
        "config": "c", "ports": {}, "env": {}, "artifacts": [], "volumes": [], "tasks": [],
        "volume_id": volume_id, "legacy_volume_generation": legacy,
    });
    serde_json::from_value(json).unwrap()
}

#[test]
fn volumes_live_under_their_id_or_in_the_old_layout() {
    let dir = tempfile::tempdir().unwrap();
    let c = ctx(dir.path());
    let d = dir.path();
    let check =
        |a: Assignment, expected: Option<std::path::PathBuf>| assert_eq!(c.volume(&a, "data"), expected);
    check(assignment("v000007", None, "db-0"), Some(d.join("volume-sets/v000007/data")));
    check(assignment("", Some(2), "db-0"), Some(d.join("volumes/db/db-0/2/data")));
    // An id that is not one, or a name that would climb out, gives no path at all.
    check(assignment("../v1", None, "db-0"), None);
    check(assignment("", None, "db-0"), None);
    check(assignment("", Some(2), ".."), None);
}
