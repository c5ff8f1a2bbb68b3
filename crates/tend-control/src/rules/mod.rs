//! The control plane's decisions, pure: snapshot and `now` in, decisions out. No store, clock,
//! runtime, sockets or processes here; the reconcilers gather facts, call these, and act on the
//! result.
//!
//! Each data-safety rule is a named constant with its text, so that tests, docs and status
//! messages speak of the same rule.

pub mod recovery;
pub mod volumes;
