//! Deploy at scale in simulated time: N simulated agents, one service of M pod instances deployed
//! in parallel by the real control plane (placement, reservations, volume ids, plan engine,
//! desired states, reports) on the memory store. Prints wall-clock time, instances placed and
//! launched per wall-clock second, resident memory per instance once deployed (simulated agents
//! included) and at its peak, and the cost of one recovery pass at that size, against a
//! reference measured in the same run (serde_json encoding and decoding of one instance record,
//! the work a store scan does per instance; it allocates, so it moves with the allocator).
//!
//! `cargo bench -p tend-sim --bench deploy -- [AGENTS INSTANCES]...` (pairs; default
//! 100 1000 1000 10000). The peak is the process's: run one size per process for it.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use tend_sim::{run, Faults, SimConfig};

/// The allocator `tend` and `tend-sim` run with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A line of `/proc/self/status` in KB: `VmRSS` (resident now) or `VmHWM` (the peak so far).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn reference_ns_per_record() -> f64 {
    use tend_control::records::{decode_instance, encode_instance};
    let rec = tend_model::Instance::new(tend_model::InstanceId::new("node", 0), 0);
    let n = 200_000;
    let t = Instant::now();
    let mut sum = 0usize;
    for _ in 0..n {
        let v = encode_instance(&rec).unwrap_or_default();
        sum += decode_instance(&v).map_or(0, |back| back.id.pod.len());
    }
    std::hint::black_box(sum);
    t.elapsed().as_nanos() as f64 / n as f64
}

fn main() {
    let args: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let pairs: Vec<(u64, u64)> = if args.len() >= 2 {
        args.chunks(2).map(|c| (c[0], c[1])).collect()
    } else {
        vec![(100, 1_000), (1_000, 10_000)]
    };
    let reference = reference_ns_per_record();
    println!("reference: {reference:.0} ns to encode and decode one instance record");
    for (agents, instances) in pairs {
        let mut cfg = SimConfig::new(1);
        cfg.agents = agents as usize;
        cfg.instances = instances as usize;
        cfg.faults = Faults::default();
        cfg.bulk = true;
        cfg.tick_ms = 500;
        cfg.converge_s = 3_600;
        cfg.keep_trace = 0;
        cfg.probe = Some(|| status_kb("VmRSS:"));
        let rss0 = status_kb("VmRSS:");
        let t = Instant::now();
        let r = run(cfg);
        let mut wall = t.elapsed().as_secs_f64();
        let hwm1 = status_kb("VmHWM:");
        match r {
            Ok(r) => {
                let p = r.passes_us.unwrap_or_default();
                // Settling and measuring the passes is not part of the deploy.
                wall -= p.spent_wall_us as f64 / 1e6;
                let sim_ms = r.sim_ms - p.spent_sim_ms;
                let per_s = instances as f64 / wall;
                let (full_us, one_us, des_us) = (p.full_us, p.one_report_us, p.desired_us);
                println!(
                    "{agents} agents, {instances} instances: deployed in {:.1} s simulated, {wall:.2} s wall; {per_s:.0} instances placed and launched per wall second ({:.4} per reference op); resident once deployed {:.2} KB per instance (peak {:.2}), simulated agents included; recovery pass: full {:.1} ms, after one agent's report {:.3} ms; one agent's desired state {:.2} ms",
                    sim_ms as f64 / 1000.0,
                    per_s * reference / 1e9,
                    (p.probe.unwrap_or(0).saturating_sub(rss0)) as f64 / instances as f64,
                    (hwm1.saturating_sub(rss0)) as f64 / instances as f64,
                    full_us as f64 / 1000.0,
                    one_us as f64 / 1000.0,
                    des_us as f64 / 1000.0
                );
            }
            Err(f) => println!("{agents} agents, {instances} instances: FAILED: {}", f.message),
        }
    }
}
