//! Simulated time: every clock reads tokio's paused clock, which jumps to the next timer when
//! all tasks wait, so simulated hours take wall-clock milliseconds. An agent's clock may run at
//! its own rate (clock drift is a fault).

use tend_model::{Clock, Millis};

/// Wall time of the simulation's start (2026-01-01T00:00:00Z): traces print offsets from it.
pub const SIM_EPOCH_MS: Millis = 1_767_225_600_000;

/// A clock on simulated time, optionally drifting by `rate_ppm` parts per million.
#[derive(Clone, Debug)]
pub struct SimClock {
    start: tokio::time::Instant,
    rate_ppm: i64,
}

impl SimClock {
    /// Must be created inside the simulation's runtime, at its start.
    pub fn new(start: tokio::time::Instant, rate_ppm: i64) -> SimClock {
        SimClock { start, rate_ppm }
    }

    /// Milliseconds since the simulation started (true simulated time, no drift).
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

impl Clock for SimClock {
    fn now_ms(&self) -> Millis {
        let e = self.elapsed_ms() as i64;
        SIM_EPOCH_MS + (e + e * self.rate_ppm / 1_000_000).max(0) as u64
    }
}
