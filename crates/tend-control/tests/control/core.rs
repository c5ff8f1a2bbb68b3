//! The control plane in-process on the memory store and a manual clock: start-up on a store
//! (cluster id kept), bounded events, serialised spec changes with expected generations.

use std::sync::Arc;

use tend_control::services::submit;
use tend_control::{Control, ControlConfig};
use tend_model::{Clock, ManualClock, SharedClock};
use tend_store::memory::MemoryStore;
use tend_store::StateStore;

use crate::common;
use common::{register_req, submission};

const SPEC: &str = "version: 1\nname: s\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\n";

async fn server(store: Arc<dyn StateStore>, events_keep: usize) -> Control {
    let clock: SharedClock = Arc::new(ManualClock::new(1_700_000_000_000));
    let cfg = ControlConfig { events_keep, ..Default::default() };
    Control::new(cfg, store, clock).await.unwrap()
}

#[tokio::test]
async fn the_cluster_id_is_created_once_and_kept_by_the_store() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let a = server(store.clone(), 100).await.inner.cluster_id.clone();
    let b = server(store, 100).await.inner.cluster_id.clone();
    assert_eq!(a, b);
    let other: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    assert_ne!(server(other, 100).await.inner.cluster_id, a, "an empty store is a new cluster");
}

#[tokio::test]
async fn events_are_kept_to_their_bound_oldest_first() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let s = server(store.clone(), 10).await;
    for i in 0..40 {
        s.event(None, tend_api::EventKind::Other, format!("event {i}")).await;
    }
    assert!(s.trim_events().await.unwrap() >= 30);
    let left = store.range("events/").await.unwrap().kvs;
    assert_eq!(left.len(), 10);
    assert!(String::from_utf8_lossy(&left[9].value).contains("event 39"), "the newest are kept");
}

#[tokio::test]
async fn events_older_than_their_age_bound_go() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let clock = ManualClock::new(1_700_000_000_000);
    let cfg = ControlConfig { events_keep_ms: 60_000, ..Default::default() };
    let s = Control::new(cfg, store.clone(), Arc::new(clock.clone())).await.unwrap();
    s.event(None, tend_api::EventKind::Other, "old".into()).await;
    clock.advance_ms(120_000);
    s.event(None, tend_api::EventKind::Other, "new".into()).await;
    s.trim_events().await.unwrap();
    let left: Vec<String> = store
        .range("events/")
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect();
    assert!(left.iter().all(|e| !e.contains("\"old\"")), "{left:?}");
    assert!(left.iter().any(|e| e.contains("\"new\"")), "{left:?}");
}

#[tokio::test]
async fn spec_changes_are_serialised_and_a_stale_expected_generation_is_refused() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let s = server(store.clone(), 100).await;
    let (_, g1, existed) = submit(&s, submission(SPEC, Some(0))).await.unwrap();
    assert_eq!((g1, existed), (1, false));
    // 12 concurrent updates: each acknowledged one is its own generation.
    let mut handles = Vec::new();
    for i in 0..12 {
        let s = s.clone();
        let text = SPEC.replace("600", &format!("60{i}"));
        handles.push(tokio::spawn(async move { submit(&s, submission(&text, None)).await }));
    }
    let mut gens = Vec::new();
    for h in handles {
        gens.push(h.await.unwrap().unwrap().1);
    }
    gens.sort();
    assert_eq!(gens, (2..=13).collect::<Vec<_>>());
    let err = submit(&s, submission(SPEC, Some(5))).await.unwrap_err();
    assert_eq!((err.0, err.1), (409, "stale_generation"));
    let stored = store.get("services/s/spec").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&stored.value).contains("\"generation\":13"));
}

/// `agent`'s desired state, long-polled (a bounded number of times) until it lists something.
async fn desired_once_launched(s: &Control, agent: &str) -> tend_api::DesiredState {
    use tend_control::agents::AgentProtocol;
    let mut desired = s.desired(agent, 0, std::time::Duration::from_secs(5), None).await.unwrap();
    for _ in 0..50 {
        if !desired.assignments.is_empty() {
            break;
        }
        desired = s.desired(agent, desired.index, std::time::Duration::from_secs(1), None).await.unwrap();
    }
    desired
}

/// The whole control plane driven in-process through the agent protocol (no sockets): an agent
/// joins, a service with a volume is deployed, the agent reports its task running, the plan
/// completes; an agent of another cluster is refused.
#[tokio::test]
async fn an_in_process_agent_deploys_a_service_through_the_protocol() {
    use tend_control::agents::AgentProtocol;
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let clock = ManualClock::new(1_700_000_000_000);
    let s = Control::new(ControlConfig::default(), store, Arc::new(clock.clone())).await.unwrap();
    let reg = s.register(register_req("a1", None)).await.unwrap();
    assert_eq!(reg.cluster_id, s.inner.cluster_id);
    assert!(reg.delta_reports);
    let err = s.register(register_req("a2", Some("c-elsewhere"))).await.unwrap_err();
    assert_eq!((err.0, err.1), (409, "cluster_mismatch"));
    // An agent of this cluster that obeyed a newer store (this one restored from an older copy).
    let mut ahead = register_req("a3", Some(&s.inner.cluster_id.clone()));
    ahead.revision = Some(1_000_000);
    let err = s.register(ahead).await.unwrap_err();
    assert_eq!((err.0, err.1), (409, "store_behind"));
    let text = "version: 1\nname: s\npods:\n  w:\n    volumes: [ { name: d, path: d, size_mb: 1 } ]\n    tasks: { t: { cmd: 'exec sleep 600' } }\n";
    submit(&s, submission(text, None)).await.unwrap();
    // The agent long-polls until the intent is written.
    let desired = desired_once_launched(&s, "a1").await;
    let a = desired.assignments.first().expect("an assignment").clone();
    assert_eq!((a.instance.as_str(), a.incarnation), ("w-0", 1));
    assert!(tend_model::VolumeId::parse(&a.volume_id).is_some(), "{}", a.volume_id);
    assert_eq!(desired.cluster_id, s.inner.cluster_id);
    // It reports the task running (for 2 s by the manual clock): the plan completes.
    let status = tend_api::TaskStatus {
        service: "s".into(),
        instance: "w-0".into(),
        incarnation: 1,
        task: "t".into(),
        state: tend_api::TaskState::Running,
        ready: true,
        healthy: None,
        exit_code: None,
        pid: Some(42),
        message: None,
        since_ms: clock.now_ms() - 2_000,
        restarts: 0,
        next_restart_ms: None,
        crash_loop: 0,
    };
    let report = |seq| tend_api::StatusReport {
        seq,
        tasks: vec![status.clone()],
        released_volumes: Vec::new(),
        job_results: Vec::new(),
        conflict: None,
        revision: None,
        base_seq: None,
        gone: Vec::new(),
    };
    let mut complete = false;
    for seq in 1..100 {
        s.status("a1", report(seq)).await.unwrap();
        let rt = s.service("s").unwrap();
        let plan = rt.lock().unwrap().plans.get("deploy").cloned().unwrap();
        let view = tend_control::deploy::engine(&s, "s").view(&plan).await.unwrap();
        if view.status.as_str() == "complete" {
            complete = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(complete, "the deploy plan did not complete");
    assert!(s.status("nobody", report(1)).await.is_err(), "an unknown agent's report is refused");

    // Reports by difference: offered at registration, applied on the report they build on.
    let seen = |s: &Control| s.inner.agents.read().unwrap().get("a1").and_then(|a| a.last_seen_ms);
    let tasks = |s: &Control| s.inner.agents.read().unwrap().get("a1").map(|a| a.tasks.all().to_vec());
    let last = report(200);
    s.status("a1", last.clone()).await.unwrap();
    let mut restarted = status.clone();
    restarted.restarts = 1;
    let delta = |seq, base| tend_api::StatusReport {
        seq,
        tasks: vec![restarted.clone()],
        base_seq: Some(base),
        gone: Vec::new(),
        ..last.clone()
    };
    // On another base (a report it does not hold): nothing applied, not even as contact.
    let before = seen(&s);
    clock.advance_ms(1_000);
    let ack = s.status("a1", delta(202, 150)).await.unwrap();
    assert!(ack.full_needed, "{ack:?}");
    assert_eq!(seen(&s), before, "a refused delta is no contact");
    let obeyed = |s: &Control| s.inner.agents.read().unwrap().get("a1").and_then(|a| a.revision);
    let newer = tend_api::StatusReport { revision: Some(1 << 40), ..delta(202, 150) };
    assert!(s.status("a1", newer).await.unwrap().full_needed);
    assert_ne!(obeyed(&s), Some(1 << 40), "with stale tasks, a newer revision would read as obeyed");
    assert_eq!(tasks(&s), Some(vec![status.clone()]));
    // On the last report: applied, and the restart it shows is an event.
    let mut events = s.inner.events.subscribe();
    let ack = s.status("a1", delta(201, 200)).await.unwrap();
    assert!(!ack.full_needed, "{ack:?}");
    assert_eq!(tasks(&s), Some(vec![restarted.clone()]));
    assert!(seen(&s) > before);
    let event = events.try_recv().expect("an event");
    assert!(event.message.contains("restarted in place"), "{event:?}");
    // A task gone.
    let gone = tend_api::StatusReport {
        seq: 203,
        tasks: Vec::new(),
        base_seq: Some(201),
        gone: vec![tend_api::TaskKey::of(&restarted)],
        ..last.clone()
    };
    assert!(!s.status("a1", gone).await.unwrap().full_needed);
    assert_eq!(tasks(&s), Some(Vec::new()));
    // Keys of tasks it never reported: nothing to take away, nothing changes.
    let mut stranger = tend_api::TaskKey::of(&restarted);
    stranger.instance = "w-99".into();
    let unknown_gone = tend_api::StatusReport {
        seq: 204,
        tasks: Vec::new(),
        base_seq: Some(203),
        gone: vec![stranger],
        ..last.clone()
    };
    assert!(!s.status("a1", unknown_gone).await.unwrap().full_needed);
    assert_eq!(tasks(&s), Some(Vec::new()));
    // A registration starts over: the next delta is refused.
    s.register(register_req("a1", None)).await.unwrap();
    assert!(s.status("a1", delta(205, 204)).await.unwrap().full_needed);
}

/// A volume is kept for the longer of the retention it was created with and its service's
/// current one: raising `retain_volumes_seconds` protects volumes that already exist.
#[tokio::test]
async fn retention_is_the_longer_of_creation_and_the_current_spec() {
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let clock = ManualClock::new(1_700_000_000_000);
    let s = Control::new(ControlConfig::default(), store.clone(), Arc::new(clock.clone())).await.unwrap();
    let text = "version: 1\nname: s\npods:\n  w:\n    tasks: { t: { cmd: 'exec sleep 600' } }\nrecovery: { retain_volumes_seconds: 3600 }\n";
    submit(&s, submission(text, None)).await.unwrap();
    let rec = tend_control::records::VolumeRecord {
        id: "v000099".into(),
        service: "s".into(),
        instance: "w-0".into(),
        agent: "a1".into(),
        names: vec![("d".into(), 1)],
        created_ms: 0,
        retain_ms: Some(10_000),
        state: tend_control::records::VolumeRecordState::Active,
        since_ms: 0,
        until_ms: None,
        reason: String::new(),
    };
    store.put("volumes/v000099", &serde_json::to_vec(&rec).unwrap()).await.unwrap();
    let op = tend_control::volumes::retain_op(&s, "v000099", "test").await.unwrap().unwrap();
    store.txn(tend_store::Txn::new().then(op)).await.unwrap();
    let kv = store.get("volumes/v000099").await.unwrap().unwrap();
    let got: tend_control::records::VolumeRecord = serde_json::from_slice(&kv.value).unwrap();
    assert_eq!(got.state, tend_control::records::VolumeRecordState::Retained);
    assert_eq!(got.until_ms, Some(clock.now_ms() + 3_600_000), "{got:?}");
}

/// A replacement placed only after its fence wait is still a replacement: the agent that gets
/// it is told so (`TEND_REPLACING`, the old agent, the `on_replace` hook first), as it is told
/// of one placed at once.
#[tokio::test]
async fn a_replacement_placed_after_its_fence_wait_is_still_a_replacement() {
    use tend_control::agents::AgentProtocol;
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let clock = ManualClock::new(1_700_000_000_000);
    let s = Control::new(ControlConfig::default(), store, Arc::new(clock.clone())).await.unwrap();
    s.register(register_req("a1", None)).await.unwrap();
    let text = "version: 1\nname: s\npods:\n  w:\n    on_replace: 'echo replacing'\n    tasks: { t: { cmd: 'exec sleep 600' } }\nrecovery: { on_partition: fence, fence_after_seconds: 1 }\n";
    submit(&s, submission(text, None)).await.unwrap();
    let desired = desired_once_launched(&s, "a1").await;
    assert_eq!(desired.assignments.len(), 1, "launched on a1");
    assert!(!desired.assignments[0].env.contains_key("TEND_REPLACING"));
    s.register(register_req("a2", None)).await.unwrap();
    let msg = tend_control::recovery::replace(&s, "s", "w-0", "test").await.unwrap();
    assert!(msg.contains("fence"), "{msg}");
    // a1 stays silent past the fence time (plus the margin): the replacement is placed.
    clock.advance_ms(3_100);
    let empty = tend_api::StatusReport {
        seq: 1,
        tasks: Vec::new(),
        released_volumes: Vec::new(),
        job_results: Vec::new(),
        conflict: None,
        revision: None,
        base_seq: None,
        gone: Vec::new(),
    };
    s.status("a2", empty).await.unwrap();
    tend_control::recovery::tick(&s).await.unwrap();
    let (_, inst) = s.instances("s").await.unwrap().into_iter().next().expect("w-0");
    let agent = inst.agent().expect("placed after the fence wait").to_string();
    let desired = s.desired(&agent, 0, std::time::Duration::ZERO, None).await.unwrap();
    let a = desired.assignments.iter().find(|a| a.instance == "w-0").expect("w-0 desired");
    assert_eq!(a.env.get("TEND_REPLACING").map(String::as_str), Some("1"));
    assert_eq!(a.env.get("TEND_REPLACED_AGENT").map(String::as_str), Some("a1"));
    assert_eq!(a.tasks.first().map(|t| t.name.as_str()), Some("on-replace"));
    s.stop();
}

/// Volume ids come in blocks (one counter write per block), are never handed out twice — by
/// two control planes on one store, or across a restart — and a block's unused rest is skipped.
#[tokio::test]
async fn volume_ids_are_drawn_in_blocks_and_never_handed_out_twice() {
    use tend_control::volumes::{next_id, VOLUME_ID_BLOCK};
    let store: Arc<dyn StateStore> = MemoryStore::new(Arc::new(ManualClock::new(0)));
    let (a, b) = (server(store.clone(), 100).await, server(store.clone(), 100).await);
    let counter = || async {
        let kv = store.get(tend_control::records::VOLUME_SEQ_KEY).await.unwrap();
        kv.map(|kv| (String::from_utf8_lossy(&kv.value).to_string(), kv.version))
    };
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..VOLUME_ID_BLOCK + 3 {
        for s in [&a, &b] {
            let id = next_id(s).await.unwrap();
            assert!(seen.insert(id.clone()), "{id} handed out twice");
        }
    }
    // Each control plane reserved two blocks: four counter writes for 262 ids.
    assert_eq!(counter().await, Some(((4 * VOLUME_ID_BLOCK).to_string(), 4)));
    // A restarted control plane starts past every block reserved, used or not.
    let c = server(store.clone(), 100).await;
    let first = next_id(&c).await.unwrap();
    assert_eq!(first, tend_model::VolumeId::from_seq(4 * VOLUME_ID_BLOCK + 1));
    assert!(!seen.contains(&first));
}
