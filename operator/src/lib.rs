//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork, EncryptionPolicy and NodeNetwork: pool validation and overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! Nothing is implemented yet: issue 5 builds it. The binary says so and exits non-zero.

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
