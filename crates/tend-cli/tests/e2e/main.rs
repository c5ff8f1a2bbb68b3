//! End-to-end tests of the `tend` binary: real control planes, agents, tasks, etcd, TLS and a
//! browser, each test on its own cluster. One test binary (linked once) whose harness runs the
//! tests side by side: they mostly wait on processes, so `.cargo/config.toml` gives test
//! binaries more threads than cores. Clusters of one run never share ports ([`common::port_block`]).

mod common;

mod access;
mod cluster;
mod dashboard;
mod ha;
mod identity;
mod limits;
mod metrics;
mod partition;
mod safety;
mod schemathesis;
mod spec_cli;
mod stream;
mod tidy;
mod update;
mod workflow_cli;
