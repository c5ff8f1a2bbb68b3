//! Hash maps and sets with a fixed hasher, for the control plane's decisions.
//!
//! std's `RandomState` seeds each process differently, so two runs that insert the same keys
//! iterate them in different orders; a decision taken in iteration order (which instance to wake
//! first, which to judge first) then differs between runs, and the simulator's promise (the same
//! seed gives the same trace) breaks. These aliases hash with foldhash's fixed state: the same
//! insertions iterate in the same order in every process. Keys are names the control plane
//! already bounds (services, instances, agents), and a map never decides what is right, only
//! in which order equal work is done.

/// foldhash's hasher with its fixed seed.
pub type FixedState = foldhash::fast::FixedState;
/// A `HashMap` that iterates alike in every process.
pub type HashMap<K, V> = std::collections::HashMap<K, V, FixedState>;
/// A `HashSet` that iterates alike in every process.
pub type HashSet<T> = std::collections::HashSet<T, FixedState>;
