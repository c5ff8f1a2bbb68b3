//! The command line of the simulator (`tend sim` and `tend-sim`): runs seeds, prints a summary
//! per seed, or the replay command and trace of each failing one.

use crate::{run, Faults, SimConfig};

/// Deterministic simulation of the tend control plane.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// First seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of seeds to run (seed, seed+1, …).
    #[arg(long, default_value_t = 1)]
    pub seeds: u64,
    #[arg(long, default_value_t = 5)]
    pub agents: usize,
    /// Pod instances deployed at the start (spread over two services).
    #[arg(long, default_value_t = 6)]
    pub instances: usize,
    /// `all`, `none`, or a comma-separated list (agent-crash, agent-loss, partition, messages,
    /// control-plane-crash, task-crash, slow-store, clock-drift, bad-config).
    #[arg(long, default_value = "all")]
    pub faults: Faults,
    /// Simulated seconds of workload and faults.
    #[arg(long, default_value_t = 120)]
    pub duration: u64,
    /// Print the whole trace to stderr.
    #[arg(long)]
    pub trace: bool,
    /// One JSON line per seed.
    #[arg(long)]
    pub json: bool,
}

/// Runs the seeds `args` asks for; failure when any seed failed.
pub fn main(a: Args) -> std::process::ExitCode {
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
