//! Placement tests: the data-store example on three zones, pending reasons, spread, ports,
//! existing reservations, and properties (capacity and rules never violated).

use std::collections::{BTreeMap, BTreeSet};
use tend_model::hash::HashMap;

use proptest::prelude::*;
use tend_scheduler::*;

fn agent(id: &str, zone: &str, cpus: f64, mem: u64) -> AgentSnapshot {
    AgentSnapshot {
        id: id.into(),
        attributes: [("zone".to_string(), zone.to_string())].into(),
        capacity: Resources { cpus_milli: (cpus * 1000.0) as u64, memory_mb: mem, disk_mb: 100_000 },
        reserved: Resources::default(),
        port_range: (20000, 20099),
        used_ports: BTreeSet::new(),
        schedulable: true,
    }
}

fn req(instance: &str, group: &str, cpus: f64, mem: u64) -> Request {
    Request {
        instance: instance.into(),
        group: group.into(),
        needs: Resources { cpus_milli: (cpus * 1000.0) as u64, memory_mb: mem, disk_mb: 10 },
        fixed_ports: vec![],
        dynamic_ports: 1,
    }
}

fn three_zones() -> Vec<AgentSnapshot> {
    vec![agent("a1", "a", 4.0, 4096), agent("b1", "b", 4.0, 4096), agent("c1", "c", 4.0, 4096)]
}

fn placed(d: &[Decision]) -> Vec<(String, String)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Placed { instance, agent, .. } => Some((instance.clone(), agent.clone())),
            _ => None,
        })
        .collect()
}

fn pending(d: &[Decision]) -> Vec<String> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Pending { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn data_store_example_places_on_three_zones() {
    let text = include_str!("../../../examples/data-store/service.yml");
    let spec = tend_spec::load_service("s.yml", text).unwrap();
    let mut c = Cluster::new(three_zones());
    let mut reqs = Vec::new();
    for p in &spec.pods {
        c.set_rules(&p.name, Rules::from_spec(&p.placement));
        for i in 0..p.count {
            reqs.push(req(&format!("{}-{i}", p.name), &p.name, 0.5, 128));
        }
    }
    let d = place_all(&mut c, &reqs);
    assert!(pending(&d).is_empty(), "{d:?}");
    let p = placed(&d);
    let meta: BTreeSet<&str> =
        p.iter().filter(|(i, _)| i.starts_with("meta")).map(|(_, a)| a.as_str()).collect();
    let data: BTreeSet<&str> =
        p.iter().filter(|(i, _)| i.starts_with("data")).map(|(_, a)| a.as_str()).collect();
    assert_eq!(meta.len(), 2, "meta-data: one per agent and zone");
    assert_eq!(data.len(), 3, "data: unique per agent");
}

/// (case, agents, rules, requests, expected placed count, expected pending reason fragments)
#[test]
fn pending_reasons() {
    type Case = (&'static str, Vec<AgentSnapshot>, Rules, Vec<Request>, usize, Vec<&'static str>);
    let unique = Rules { unique_per_agent: true, ..Default::default() };
    let zone1 = Rules { max_per_attribute: [("zone".to_string(), 1)].into(), ..Default::default() };
    let only_d =
        Rules { attributes: vec![AttributeRule::Equals("zone".into(), "d".into())], ..Default::default() };
    let cases: Vec<Case> = vec![
        (
            "not enough cpus anywhere",
            three_zones(),
            Rules::default(),
            vec![req("big-0", "big", 6.0, 128)],
            0,
            vec!["no agent fits (3 agents)", "3 agent(s) lack cpus (need 6.0, most free 4.0)"],
        ),
        (
            "unique per agent, 4 instances on 3 agents",
            three_zones(),
            unique.clone(),
            (0..4).map(|i| req(&format!("u-{i}"), "u", 0.1, 10)).collect(),
            3,
            vec!["3 excluded by unique_per_agent"],
        ),
        (
            "one per zone",
            vec![agent("a1", "a", 4.0, 4096), agent("a2", "a", 4.0, 4096)],
            zone1,
            (0..2).map(|i| req(&format!("z-{i}"), "z", 0.1, 10)).collect(),
            1,
            vec!["2 excluded by max_per_attribute zone=1"],
        ),
        (
            "attribute mismatch",
            three_zones(),
            only_d,
            vec![req("d-0", "d", 0.1, 10)],
            0,
            vec!["3 do not match the attribute rules"],
        ),
        (
            "memory",
            three_zones(),
            Rules::default(),
            vec![req("m-0", "m", 0.1, 8192)],
            0,
            vec!["3 lack memory (need 8192 MB, most free 4096 MB)"],
        ),
        (
            "no agents",
            vec![],
            Rules::default(),
            vec![req("x-0", "x", 0.1, 1)],
            0,
            vec!["no agents are registered"],
        ),
    ];
    for (what, agents, rules, reqs, want_placed, fragments) in cases {
        let mut c = Cluster::new(agents);
        c.set_rules(&reqs[0].group, rules);
        let d = place_all(&mut c, &reqs);
        assert_eq!(placed(&d).len(), want_placed, "{what}: {d:?}");
        let reasons = pending(&d).join(" | ");
        for f in fragments {
            assert!(reasons.contains(f), "{what}: {reasons:?} lacks {f:?}");
        }
    }
}

#[test]
fn spreads_and_reserves_ports() {
    let mut c = Cluster::new(three_zones());
    let reqs: Vec<Request> = (0..30).map(|i| req(&format!("s-{i}"), "s", 0.1, 10)).collect();
    let d = place_all(&mut c, &reqs);
    let mut per: HashMap<String, usize> = HashMap::default();
    let mut ports: HashMap<String, BTreeSet<u16>> = HashMap::default();
    for x in &d {
        if let Decision::Placed { agent, ports: p, .. } = x {
            *per.entry(agent.clone()).or_default() += 1;
            for port in p {
                assert!(
                    ports.entry(agent.clone()).or_default().insert(*port),
                    "port {port} handed out twice"
                );
                assert!((20000..=20099).contains(port));
            }
        }
    }
    assert_eq!(per.values().copied().collect::<BTreeSet<_>>(), [10].into(), "{per:?}");
    // Fixed ports clash on a single agent.
    let mut c = Cluster::new(vec![agent("a1", "a", 4.0, 4096)]);
    let mut r = req("f-0", "f", 0.1, 10);
    r.fixed_ports = vec![8080];
    r.dynamic_ports = 0;
    let mut r2 = r.clone();
    r2.instance = "f-1".into();
    let d = place_all(&mut c, &[r, r2]);
    assert_eq!(placed(&d).len(), 1);
    assert!(pending(&d)[0].contains("1 lack free ports"));
}

#[test]
fn existing_reservations_count() {
    let mut agents = three_zones();
    agents[0].reserved = Resources { cpus_milli: 4000, memory_mb: 0, disk_mb: 0 };
    let mut c = Cluster::new(agents);
    c.set_rules("u", Rules { unique_per_agent: true, ..Default::default() });
    c.count_existing("u", "b1");
    let d = place_all(&mut c, &[req("u-1", "u", 1.0, 10), req("u-2", "u", 1.0, 10)]);
    assert_eq!(placed(&d), vec![("u-1".to_string(), "c1".to_string())]);
    let reason = &pending(&d)[0];
    assert!(
        reason.contains("1 agent(s) lack cpus") && reason.contains("2 excluded by unique_per_agent"),
        "{reason}"
    );
}

proptest! {
    #[test]
    fn never_over_capacity_nor_against_rules(
        n_agents in 1usize..12,
        reqs in proptest::collection::vec((0u8..3, 1u64..3000, 1u64..2000), 1..60),
        unique in any::<bool>(),
        per_zone in proptest::option::of(1u32..3),
    ) {
        let zones = ["a", "b", "c"];
        let agents: Vec<AgentSnapshot> =
            (0..n_agents).map(|i| agent(&format!("n{i}"), zones[i % 3], 4.0, 4096)).collect();
        let mut c = Cluster::new(agents.clone());
        let mut rules = Rules { unique_per_agent: unique, ..Default::default() };
        if let Some(m) = per_zone {
            rules.max_per_attribute.insert("zone".into(), m);
        }
        c.set_rules("g", rules);
        let rs: Vec<Request> = reqs
            .iter()
            .enumerate()
            .map(|(i, (_, cpu, mem))| Request {
                instance: format!("g-{i}"),
                group: "g".into(),
                needs: Resources { cpus_milli: *cpu, memory_mb: *mem, disk_mb: 1 },
                fixed_ports: vec![],
                dynamic_ports: 1,
            })
            .collect();
        let d = place_all(&mut c, &rs);
        let mut used: HashMap<String, Resources> = HashMap::default();
        let mut count: HashMap<String, u32> = HashMap::default();
        let mut zone_count: BTreeMap<String, u32> = BTreeMap::new();
        for (x, r) in d.iter().zip(rs.iter()) {
            if let Decision::Placed { agent, .. } = x {
                let u = used.entry(agent.clone()).or_default();
                *u = u.plus(&r.needs);
                *count.entry(agent.clone()).or_default() += 1;
                let zone = agents.iter().find(|a| &a.id == agent).unwrap().attributes["zone"].clone();
                *zone_count.entry(zone).or_default() += 1;
            }
        }
        for (a, u) in &used {
            prop_assert!(u.fits_in(&Resources { cpus_milli: 4000, memory_mb: 4096, disk_mb: 100_000 }), "{a} over capacity");
        }
        if unique {
            prop_assert!(count.values().all(|c| *c <= 1));
        }
        if let Some(m) = per_zone {
            prop_assert!(zone_count.values().all(|c| *c <= m));
        }
        // Every pending instance really had no room: the cluster state agrees (placing it again fails too).
        for (x, r) in d.iter().zip(rs.iter()) {
            if let Decision::Pending { .. } = x {
                let mut again = r.clone();
                again.instance.push_str("-again");
                let still_pending = matches!(c.place(&again), Decision::Pending { .. });
                prop_assert!(still_pending, "a pending instance fits after all");
            }
        }
    }
}
