//! Tests of the control core in-process (memory store, manual clock): one test binary, linked
//! once, for the core's ticks, its answers to agents, fencing, stored records and the rules.

mod common;

mod core;
mod desired_delta;
mod fencing;
mod records;
mod rules;
