//! Ferrite's node agent.
//!
//! Owns one node's datapath: IPAM from its blocks, pod veths and routes, tunnels, Services, NetworkPolicy, WireGuard, SNAT and flows.
//!
//! Nothing is implemented yet: issue 4 and later builds it. The binary says so and exits non-zero.

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
