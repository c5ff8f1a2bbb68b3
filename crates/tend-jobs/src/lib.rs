//! Maintenance jobs (the ecChronos model) for any service tend runs, pure: deterministic
//! priorities and the run queue ([`schedule`]), run policies with time windows ([`window`]),
//! statuses and alarms ([`schedule::status`]), and — over the [`tend_store::StateStore`] trait —
//! leases with slots and fencing tokens ([`lease`]) and the run history ([`history`]).
//!
//! Time is a value (milliseconds since the epoch) passed in; nothing here reads a clock.

pub mod history;
pub mod lease;
pub mod schedule;
pub mod window;
