//! The store edge: instance and agent records convert to the domain model and back without
//! losing anything the model holds, and records written by earlier versions still read.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tend_control::records::{decode_instance, encode_instance, AgentRecord, InstanceRecord};
use tend_model::{
    Agent, Incarnation, Instance, InstanceId, InstanceVolumes, Ready, RecoveryMarks, ReplacedFrom,
    Reservation, Resources, VolumeId,
};

fn resources() -> impl Strategy<Value = Resources> {
    (0u64..100_000, 0u64..1 << 20, 0u64..1 << 30).prop_map(|(c, m, d)| Resources {
        cpus_milli: c,
        memory_mb: m,
        disk_mb: d,
    })
}

fn ports() -> impl Strategy<Value = BTreeMap<String, u16>> {
    proptest::collection::btree_map("[a-z]{1,6}", 1u16.., 0..3)
}

fn reservation() -> impl Strategy<Value = Reservation> {
    ("[a-z][a-z0-9-]{0,8}", resources(), ports()).prop_map(|(agent, resources, ports)| Reservation {
        agent,
        resources,
        ports,
    })
}

fn incarnation() -> impl Strategy<Value = Incarnation> {
    (1u64..1 << 40, "[0-9a-f]{0,16}", 0u64..1 << 45, proptest::option::of(("[a-z]{1,5}", "[a-z.]{0,9}")))
        .prop_map(|(number, config, launched_ms, from)| Incarnation {
            number,
            config,
            launched_ms,
            replaced_from: from.map(|(agent, host)| ReplacedFrom { agent, host }),
        })
}

fn instance() -> impl Strategy<Value = Instance> {
    let head = ("[a-z][a-z-]{0,8}[a-z]", 0u32..10_000, 0u64..1 << 45);
    let parts = (
        proptest::option::of(reservation()),
        proptest::option::of(incarnation()),
        (proptest::collection::vec("[a-z]{1,5}", 0..3), proptest::option::of(0u64..1_000_000), 0u64..9),
        proptest::option::of("[ -~]{0,20}"),
        proptest::collection::vec("[a-z]{1,5}", 0..3),
        proptest::option::of(("[0-9a-f]{1,8}", 0u64..1 << 40)),
        (proptest::option::of(0u64..1 << 45), proptest::option::of(0u64..1 << 45), 0u64..1 << 45),
    );
    (head, parts).prop_map(|((pod, index, created_ms), (res, inc, vols, pending, once, ready, marks))| {
        Instance {
            id: InstanceId::new(pod, index),
            created_ms,
            reservation: res,
            incarnation: inc,
            volumes: InstanceVolumes {
                names: vols.0,
                set: vols.1.map(VolumeId::from_seq),
                legacy_generation: vols.2,
            },
            pending_reason: pending,
            once_done: once,
            ready: ready.map(|(config, incarnation)| Ready { config, incarnation }),
            recovery: RecoveryMarks {
                down_since_ms: marks.0,
                unreachable_since_ms: marks.1,
                replaced_ms: marks.2,
            },
        }
    })
}

proptest! {
    /// Model → record → model is the identity, through the stored bytes too.
    #[test]
    fn instance_round_trips(i in instance()) {
        prop_assert_eq!(InstanceRecord::from_model(&i).to_model(), Some(i.clone()));
        let bytes = encode_instance(&i).map_err(TestCaseError::fail)?;
        prop_assert_eq!(decode_instance(&bytes).map_err(TestCaseError::fail)?, i);
    }

    #[test]
    fn agent_round_trips(
        (id, host, url) in ("[a-z]{1,8}", "[a-z.]{1,12}", "https://[a-z]{1,8}:[0-9]{2,5}"),
        capacity in resources(),
        (lo, hi) in (1u16..30_000, 30_000u16..),
        registered_ms in 0u64..1 << 45,
    ) {
        let a = Agent { id, host, url, attributes: BTreeMap::from([("zone".into(), "a".into())]), capacity, ports: (lo, hi), registered_ms };
        prop_assert_eq!(AgentRecord::from_model(&a).to_model(), a);
    }
}

/// A record as an earlier version wrote it (no volume ids, no recovery marks, no creation
/// time) reads as an instance on the old volume layout.
#[test]
fn an_old_record_reads() {
    let old = br#"{"pod":"db","index":2,"agent":"a1","cpus_milli":500,"memory_mb":64,"disk_mb":10,
        "ports":{"http":31000},"volumes":["data"],"incarnation":3,"config":"abc","launched_ms":7,
        "volume_generation":2}"#;
    let i = decode_instance(old).expect("reads");
    assert_eq!(i.id, InstanceId::new("db", 2));
    assert_eq!(i.agent(), Some("a1"));
    assert_eq!((i.incarnation_number(), i.config(), i.launched_ms()), (3, "abc", 7));
    assert_eq!((i.volumes.set.clone(), i.volumes.legacy_generation), (None, 2));
    assert_eq!(i.recovery, RecoveryMarks::default());
    assert_eq!(i.ready, None);
}

/// A record whose volume id is not one tend makes cannot be read (it may own data: the state
/// keeps it apart as unreadable rather than guess).
#[test]
fn a_malformed_volume_id_is_refused() {
    let bad = br#"{"pod":"db","index":0,"agent":null,"cpus_milli":0,"memory_mb":0,"disk_mb":0,
        "ports":{},"volumes":[],"incarnation":0,"config":"","volume_id":"../etc"}"#;
    assert!(decode_instance(bad).unwrap_err().contains("volume id"));
}
