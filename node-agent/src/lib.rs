//! Ferrite's node agent: owns one node's datapath — IPAM from its blocks, pod veths and routes,
//! tunnels, Services, NetworkPolicy, WireGuard, SNAT and flows.
//!
//! Status: [`ipam`] (the allocator and its crash-safe store) and [`routing`] (desired
//! inter-node state per routing mode) are implemented and unit-tested; the
//! rest arrives with issue 4 and later. The binary says so and exits non-zero.

pub mod agent;
pub mod config;
pub mod datapath;
pub mod install;
pub mod ipam;
pub mod cluster;
pub mod metrics;
pub mod nat;
pub mod netns;
pub mod routing;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
