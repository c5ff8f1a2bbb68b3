//! Placement benchmark: 100,000 pod instances onto 1,000 … 10,000 agents, pure and in-process,
//! to show placements per second and how the cost grows with the number of agents.
// A benchmark is an edge: it measures with the real clock.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::time::Instant;

use tend_scheduler::*;

fn cluster(n: usize) -> Cluster {
    let zones = ["a", "b", "c"];
    let agents = (0..n)
        .map(|i| AgentSnapshot {
            id: format!("agent-{i:05}"),
            attributes: [("zone".to_string(), zones[i % 3].to_string())].into(),
            capacity: Resources { cpus_milli: 64_000, memory_mb: 262_144, disk_mb: 4_000_000 },
            reserved: Resources::default(),
            port_range: (20_000, 29_999),
            used_ports: BTreeSet::new(),
            schedulable: true,
        })
        .collect();
    let mut c = Cluster::new(agents);
    for g in 0..100 {
        let rules = match g % 3 {
            0 => Rules::default(),
            1 => Rules {
                attributes: vec![AttributeRule::Matches("zone".into(), regex_lite("a|b"))],
                ..Default::default()
            },
            _ => Rules { unique_per_agent: true, ..Default::default() },
        };
        c.set_rules(&format!("svc-{g}/pod"), rules);
    }
    c
}

fn regex_lite(s: &str) -> regex::Regex {
    regex::Regex::new(&format!("^(?:{s})$")).expect("valid regex")
}

fn main() {
    let instances = 100_000;
    let reqs: Vec<Request> = (0..instances)
        .map(|i| Request {
            instance: format!("svc-{}/pod-{}", i % 100, i / 100),
            group: format!("svc-{}/pod", i % 100),
            needs: Resources { cpus_milli: 500, memory_mb: 1024, disk_mb: 1024 },
            fixed_ports: vec![],
            dynamic_ports: 1,
        })
        .collect();
    println!("placing {instances} pod instances (100 groups: no rules / zone regex / unique per agent)");
    for agents in [1_000usize, 2_000, 5_000, 10_000] {
        let mut c = cluster(agents);
        let t = Instant::now();
        let d = place_all(&mut c, &reqs);
        let secs = t.elapsed().as_secs_f64();
        let placed = d.iter().filter(|x| matches!(x, Decision::Placed { .. })).count();
        let rate = instances as f64 / secs;
        println!(
            "{agents:>6} agents: {placed:>6} placed, {:>6} pending, {:>8.0} placements/s, {:>6.2} µs each ({:.1}x the 50,000/s aim)",
            instances - placed,
            rate,
            secs * 1e6 / instances as f64,
            rate / 50_000.0
        );
    }
}
