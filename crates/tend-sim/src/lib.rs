//! Deterministic simulation of the whole tend control plane.
//!
//! The real control plane (`tend_control::Control`: its deploy drivers, recovery, volume and jobs
//! loops, the same code `tend server` runs) works on the memory store under tokio's paused
//! clock on one thread, so a run is a pure function of its seed. Simulated agents speak the
//! real agent protocol (`AgentProtocol`) through a simulated network. Faults are drawn from the
//! seed; invariants are checked after every step; a failing seed prints the one-line command
//! that replays it and the trace before the failure.

pub mod agent;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod faults;
pub mod net;
pub mod phases;
pub mod pod;
pub mod rng;
pub mod store;
pub mod trace;
pub mod work;
pub mod workload;
pub mod world;

pub use faults::Faults;
pub use world::{run, Failure, Report, SimConfig};
