//! `tend-sim`: runs seeded simulations of the control plane and prints a summary per seed (or
//! the replay command and trace of the first failing seed).

use clap::Parser;
use tend_sim::{run, Faults, SimConfig};

/// Deterministic simulation of the tend control plane.
#[derive(Parser)]
#[command(name = "tend-sim")]
struct Args {
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of seeds to run (seed, seed+1, …).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    #[arg(long, default_value_t = 5)]
    agents: usize,
    /// Pod instances deployed at the start (spread over two services).
    #[arg(long, default_value_t = 6)]
    instances: usize,
    /// `all`, `none`, or a comma-separated list (agent-crash, agent-loss, partition, messages,
    /// control-plane-crash, task-crash, slow-store, clock-drift, bad-config).
    #[arg(long, default_value = "all")]
    faults: Faults,
    /// Simulated seconds of workload and faults.
    #[arg(long, default_value_t = 120)]
    duration: u64,
    /// Print the whole trace to stderr.
    #[arg(long)]
    trace: bool,
    /// One JSON line per seed.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    let a = Args::parse();
    let mut failed = 0;
    for seed in a.seed..a.seed.saturating_add(a.seeds) {
        let mut cfg = SimConfig::new(seed);
        cfg.agents = a.agents.max(1);
        cfg.instances = a.instances.max(1);
        cfg.faults = a.faults;
        cfg.duration_s = a.duration;
        cfg.echo = a.trace;
        let wall = std::time::Instant::now();
        match run(cfg) {
            Ok(r) => {
                let wall_ms = wall.elapsed().as_millis();
                let faults: u64 = r.faults.values().sum();
                let ops: u64 = r.ops.values().sum();
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "seed": r.seed, "ok": true, "sim_ms": r.sim_ms, "wall_ms": wall_ms as u64,
                            "steps": r.steps, "checks": r.checks, "faults": r.faults, "ops": r.ops,
                            "plans_converged": r.plans_converged, "converge_ms": r.converge_ms,
                            "digest": r.digest,
                        })
                    );
                } else {
                    println!(
                        "seed {seed}: ok — {:.0} s simulated in {wall_ms} ms; {} steps, {} invariant checks, {faults} faults {:?}, {ops} operations, {} plans converged {:.1} s after faults stopped; trace {}",
                        r.sim_ms as f64 / 1000.0,
                        r.steps,
                        r.checks,
                        r.faults,
                        r.plans_converged,
                        r.converge_ms as f64 / 1000.0,
                        &r.digest[..16]
                    );
                }
            }
            Err(f) => {
                failed += 1;
                if a.json {
                    println!(
                        "{}",
                        serde_json::json!({"seed": seed, "ok": false, "message": f.message, "replay": f.replay})
                    );
                }
                eprintln!("seed {seed}: {f}");
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} seed(s) failed", a.seeds);
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
