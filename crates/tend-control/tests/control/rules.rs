//! The control plane's data-safety rules as data: facts + now → expected decision; proptests
//! over random event sequences for the volume lifecycle.

use std::collections::BTreeSet;

use proptest::prelude::*;
use tend_control::rules::recovery::*;
use tend_control::rules::volumes::*;
use tend_model::{InstanceId, Retention, Volume, VolumeId, VolumeState};
use tend_scheduler::recovery::Health;

fn facts(config: &str, ready: Option<&str>, down: Option<u64>, observed: Observed) -> InstanceFacts {
    InstanceFacts {
        incarnation: 2,
        config: config.into(),
        ready_config: ready.map(str::to_string),
        ready_incarnation: if ready.is_some() { 2 } else { 0 },
        down_since_ms: down,
        unreachable_since_ms: None,
        observed,
        up_since_ms: Some(0),
    }
}

fn check(f: InstanceFacts, now: u64, health: Health, blocked: bool, down: Option<u64>, mark_ready: bool) {
    let a = assess(&f, now);
    assert_eq!(a.health, health, "{f:?}");
    assert_eq!(a.blocked.is_some(), blocked, "{f:?}");
    assert_eq!(a.down_since_ms, down, "{f:?}");
    assert_eq!(a.mark_ready, mark_ready, "{f:?}");
}

#[test]
fn a_failed_update_is_blocked_not_replaced() {
    // New config B never became ready (A did): blocked, with the down time still shown.
    check(
        facts("B", Some("A"), None, Observed::TaskDown { since_ms: 900 }),
        5_000,
        Health::Stopped { since_ms: 900 },
        true,
        Some(900),
        false,
    );
    // A first deploy that never became ready is not replaced either.
    check(
        facts("A", None, None, Observed::TaskDown { since_ms: 900 }),
        5_000,
        Health::Stopped { since_ms: 900 },
        true,
        Some(900),
        false,
    );
    // The config that ran healthy and then stopped: a candidate for replacement.
    check(
        facts("A", Some("A"), None, Observed::TaskDown { since_ms: 900 }),
        5_000,
        Health::Stopped { since_ms: 900 },
        false,
        Some(900),
        false,
    );
}

#[test]
fn a_lost_agent_is_unreachable_from_its_last_report_or_from_now() {
    let silent = |last_seen_ms, persisted: Option<u64>| {
        let mut f = facts("A", Some("A"), None, Observed::AgentSilent { last_seen_ms });
        f.unreachable_since_ms = persisted;
        f
    };
    let check = |f: InstanceFacts, now: u64, since: u64| {
        let a = assess(&f, now);
        assert_eq!(a.health, Health::Unreachable { since_ms: since }, "{f:?}");
        assert_eq!((a.unreachable_since_ms, a.down_since_ms, a.blocked), (Some(since), None, None), "{f:?}");
    };
    // Seen by this control plane: from the last report received.
    check(silent(Some(1_000), None), 9_000, 1_000);
    // A restarted control plane that never heard the agent: from its own time, not the launch.
    check(silent(None, None), 9_000, 9_000);
    // ...unless the store holds an earlier unreachable-since (persisted by the previous leader).
    check(silent(None, Some(4_000)), 9_000, 4_000);
}

#[test]
fn a_silent_agent_counts_from_its_last_report_never_from_an_earlier_task_stop() {
    // A task stopped at 0 (crash loop); the agent went silent after its report at 55 s.
    let f = facts("A", Some("A"), Some(0), Observed::AgentSilent { last_seen_ms: Some(55_000) });
    let a = assess(&f, 58_000);
    assert_eq!(a.health, Health::Unreachable { since_ms: 55_000 });
    assert_eq!((a.down_since_ms, a.unreachable_since_ms), (Some(0), Some(55_000)));
    // After a control-plane restart: the persisted unreachable-since, else its own time.
    let mut f = facts("A", Some("A"), Some(0), Observed::AgentSilent { last_seen_ms: None });
    assert_eq!(assess(&f, 60_000).health, Health::Unreachable { since_ms: 60_000 });
    f.unreachable_since_ms = Some(55_000);
    assert_eq!(assess(&f, 60_000).health, Health::Unreachable { since_ms: 55_000 });
    // An agent clock ahead of ours cannot put a stop in our future.
    let f = facts("A", Some("A"), None, Observed::TaskDown { since_ms: 99_000 });
    assert_eq!(assess(&f, 60_000).health, Health::Stopped { since_ms: 60_000 });
}

#[test]
fn down_since_survives_a_task_caught_starting_and_clears_only_when_up() {
    check(
        facts("A", Some("A"), Some(1_000), Observed::Starting),
        3_000,
        Health::Stopped { since_ms: 1_000 },
        false,
        Some(1_000),
        false,
    );
    check(
        facts("A", Some("A"), Some(1_000), Observed::TaskDown { since_ms: 2_500 }),
        3_000,
        Health::Stopped { since_ms: 1_000 },
        false,
        Some(1_000),
        false,
    );
    check(facts("A", Some("A"), Some(1_000), Observed::Up), 3_000, Health::Up, false, None, false);
    check(facts("A", None, None, Observed::Starting), 3_000, Health::Up, false, None, false);
}

#[test]
fn an_instance_up_on_a_new_config_marks_it_ready() {
    // (Up since 0, judged at 20 s: past the stability window.)
    check(facts("B", Some("A"), None, Observed::Up), 20_000, Health::Up, false, None, true);
    let mut f = facts("A", Some("A"), None, Observed::Up);
    f.ready_incarnation = 1; // a later incarnation of the same config
    check(f, 20_000, Health::Up, false, None, true);
}

#[test]
fn a_config_ready_for_a_moment_is_not_ready_yet() {
    // Up for 2 s: it may still crash (a config that is ready, then exits, is a failed update).
    let mut f = facts("B", Some("A"), None, Observed::Up);
    f.up_since_ms = Some(1_000);
    check(f.clone(), 3_000, Health::Up, false, None, false);
    // Up past the stability window: its config became ready here.
    check(f, 1_000 + tend_control::rules::recovery::READY_STABLE_MS, Health::Up, false, None, true);
}

#[test]
fn a_replacement_is_under_way_until_its_incarnation_is_ready() {
    assert!(replacing(true, 3, 2));
    assert!(!replacing(true, 3, 3));
    assert!(!replacing(false, 3, 0));
}

fn vol(n: u64, agent: &str, retention: Retention, state: VolumeState) -> Volume {
    Volume {
        id: VolumeId::from_seq(n),
        service: "db".into(),
        instance: InstanceId::new("db", n as u32),
        agent: agent.into(),
        names: vec![("data".into(), 64)],
        created_ms: 0,
        retention,
        state,
    }
}

#[test]
fn volume_lifecycle_decisions() {
    let day = 86_400_000;
    let retained = |until| VolumeState::Retained { since_ms: 0, until_ms: until, reason: "replaced".into() };
    let vols = vec![
        vol(1, "a1", Retention::For(day), VolumeState::Active), // in use
        vol(2, "a1", Retention::For(day), VolumeState::Active), // orphan
        vol(3, "a1", Retention::For(day), retained(Some(day))), // not yet
        vol(4, "a2", Retention::For(day), retained(Some(10))),  // due
        vol(5, "a2", Retention::Forever, retained(None)),       // forever
        vol(6, "a2", Retention::For(day), VolumeState::Deleting { since_ms: 0, reason: "user".into() }),
    ];
    let in_use: BTreeSet<VolumeId> = [VolumeId::from_seq(1)].into();
    let got = decide(&vols, &in_use, 1_000);
    assert_eq!(
        got,
        vec![
            VolumeAction::Retain {
                id: VolumeId::from_seq(2),
                until_ms: Some(1_000 + day),
                reason: RULE_UNUSED_IS_RETAINED.into()
            },
            VolumeAction::Delete { id: VolumeId::from_seq(4), reason: RULE_RETENTION_ENDED.into() },
        ]
    );
    assert_eq!(to_release(&vols, &in_use, "a2"), vec![&VolumeId::from_seq(6)]);
    assert!(to_release(&vols, &in_use, "a1").is_empty());
    assert!(refuse_delete(&vols[0], &in_use).is_some());
    assert!(refuse_delete(&vols[4], &in_use).is_none());
}

/// A small world of instances and volumes driven by random events.
#[derive(Clone, Debug)]
enum Ev {
    Replace(usize),
    DeleteService,
    Advance(u64),
    UserDelete(usize),
    Confirm,
}

fn ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        (0usize..3).prop_map(Ev::Replace),
        Just(Ev::DeleteService),
        (0u64..5_000).prop_map(Ev::Advance),
        (0usize..12).prop_map(Ev::UserDelete),
        Just(Ev::Confirm),
    ]
}

proptest! {
    /// Whatever happens: a volume an instance uses is never released to its agent; a retained
    /// volume is released only after its deadline or on a user's request.
    #[test]
    fn no_used_volume_is_deleted_and_retention_is_honoured(evs in proptest::collection::vec(ev(), 1..60)) {
        let retention = Retention::For(3_000);
        let mut now = 0u64;
        let mut seq = 0u64;
        let mut vols: Vec<Volume> = Vec::new();
        let mut owners: Vec<Option<VolumeId>> = Vec::new();
        let mut requested: BTreeSet<VolumeId> = BTreeSet::new();
        for i in 0..3 {
            seq += 1;
            vols.push(vol(seq, "a1", retention, VolumeState::Active));
            owners.push(Some(VolumeId::from_seq(seq)));
            let _ = i;
        }
        for e in evs {
            match e {
                Ev::Replace(i) => {
                    if owners[i].is_some() {
                        seq += 1;
                        vols.push(vol(seq, "a2", retention, VolumeState::Active));
                        owners[i] = Some(VolumeId::from_seq(seq));
                    }
                }
                Ev::DeleteService => owners.iter_mut().for_each(|o| *o = None),
                Ev::Advance(ms) => now += ms,
                Ev::UserDelete(k) => {
                    let in_use: BTreeSet<VolumeId> = owners.iter().flatten().cloned().collect();
                    if let Some(v) = vols.get_mut(k) {
                        if refuse_delete(v, &in_use).is_none() {
                            v.state = VolumeState::Deleting { since_ms: now, reason: "user".into() };
                            requested.insert(v.id.clone());
                        }
                    }
                }
                Ev::Confirm => {
                    let in_use: BTreeSet<VolumeId> = owners.iter().flatten().cloned().collect();
                    for agent in ["a1", "a2"] {
                        let released: Vec<VolumeId> = to_release(&vols, &in_use, agent).into_iter().cloned().collect();
                        for id in released {
                            prop_assert!(!in_use.contains(&id), "released a used volume {}", id);
                            let v = vols.iter().find(|v| v.id == id).unwrap();
                            let deleting = matches!(v.state, VolumeState::Deleting { .. });
                            prop_assert!(deleting, "released a volume not marked for deletion");
                            vols.retain(|v| v.id != id);
                        }
                    }
                }
            }
            // The reconciler runs after every event, level-triggered.
            let in_use: BTreeSet<VolumeId> = owners.iter().flatten().cloned().collect();
            for a in decide(&vols, &in_use, now) {
                match a {
                    VolumeAction::Retain { id, until_ms, reason } => {
                        let v = vols.iter_mut().find(|v| v.id == id).unwrap();
                        v.state = VolumeState::Retained { since_ms: now, until_ms, reason };
                    }
                    VolumeAction::Delete { id, reason } => {
                        let v = vols.iter_mut().find(|v| v.id == id).unwrap();
                        let VolumeState::Retained { until_ms, .. } = &v.state else { panic!("delete of a non-retained volume") };
                        prop_assert!(until_ms.is_some_and(|u| u <= now), "deleted before its deadline");
                        prop_assert!(!in_use.contains(&id));
                        v.state = VolumeState::Deleting { since_ms: now, reason };
                    }
                }
            }
            // Every volume some instance owns is active.
            for v in &vols {
                if in_use.contains(&v.id) {
                    prop_assert_eq!(&v.state, &VolumeState::Active);
                }
            }
        }
        let _ = requested;
    }
}
