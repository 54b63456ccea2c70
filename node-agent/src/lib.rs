//! Ferrite's node agent: owns one node's datapath — IPAM from its blocks, pod veths and routes,
//! tunnels, Services, NetworkPolicy, WireGuard, SNAT and flows.
//!
//! - [`agent`]: serves the CNI plugin's requests and reconciles the node ([`Agent`](agent::Agent));
//! - [`config`]: this node's configuration, derived purely from the cluster's objects
//!   ([`cluster`] watches them and reports back into the NodeNetwork's status);
//! - [`ipam`]: the allocator and its crash-safe store;
//! - [`routing`]: the desired inter-node state per routing mode (pure);
//! - [`datapath`]: pod veths ([`datapath::pod`]) and routes/VXLAN ([`datapath::node`]) over netlink;
//! - [`nat`]: egress masquerade in nftables;
//! - [`install`]: the plugin binary and its CNI configuration on the node;
//! - [`metrics`]: Prometheus metrics and the health endpoints;
//! - [`netns`]: network-namespace plumbing (never `setns` on a tokio worker).
//!
//! Services, NetworkPolicy, WireGuard and flows arrive with later issues.

pub mod agent;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod install;
pub mod ipam;
pub mod metrics;
pub mod nat;
pub mod netns;
pub mod routing;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
