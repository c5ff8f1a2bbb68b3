//! `tend-sim`: runs seeded simulations of the control plane (the same as `tend sim`).

use clap::Parser;

/// mimalloc: the control plane allocates small objects by the million (a third of the time in
/// glibc's allocator at 100,000 instances).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tend-sim", about = "Deterministic simulation of the tend control plane")]
struct Cli {
    #[command(flatten)]
    args: tend_sim::cli::Args,
}

fn main() -> std::process::ExitCode {
    tend_sim::cli::main(Cli::parse().args)
}
