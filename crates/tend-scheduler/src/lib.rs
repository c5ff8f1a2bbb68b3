//! Pure scheduling decisions of the control plane: placement (this crate), later recovery and
//! job priorities. State and events in, decisions out; no I/O, no clock.

pub mod placement;
pub mod recovery;

pub use placement::{place_all, AgentSnapshot, AttributeRule, Cluster, Decision, Request, Resources, Rules};
