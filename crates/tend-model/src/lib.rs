//! Domain types shared by every layer of tend: time passed in as a value and the clocks that make
//! it, typed ids, instances with their reservation and incarnation, agents, volumes.
//!
//! The pure crates (spec, plan, scheduler) never read the system clock. They take a `&dyn Clock`
//! or a plain `now_ms` value; the edge crates inject [`SystemClock`], tests inject [`ManualClock`].

pub mod hash;
pub mod ids;
pub mod instance;
pub mod volume;

pub use ids::{InstanceId, VolumeId};
pub use instance::{
    Agent, Incarnation, Instance, InstanceVolumes, Ready, RecoveryMarks, ReplacedFrom, Reservation, Resources,
};
pub use volume::{Retention, Volume, VolumeState};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch (wall time) — the only notion of time the core knows.
pub type Millis = u64;

/// A source of the current time. Implementations must be cheap and thread-safe.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;
}

/// The real clock. Only edge crates construct it.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: the test double for time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A manual clock starting at `start_ms`.
    pub fn new(start_ms: Millis) -> Self {
        Self { now: Arc::new(AtomicU64::new(start_ms)) }
    }
    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance_ms(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }
    /// Sets the clock to an absolute time.
    pub fn set_ms(&self, ms: Millis) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// A shared, dynamically typed clock handle.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance_ms(250);
        assert_eq!(c.now_ms(), 1_250);
        c.set_ms(5);
        assert_eq!(c.now_ms(), 5);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
