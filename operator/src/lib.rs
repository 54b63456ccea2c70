//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork, EncryptionPolicy and NodeNetwork: pool
//! validation and overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! Status: the NodeNetwork controller (one NodeNetwork per Node, with its address and at
//! least one pod address block) is implemented: [`nodenetwork`] over the pure [`blocks`]
//! and [`selector`]. Pool conditions and usage, finalizers, the agent DaemonSet and leader
//! election arrive with issue 5.

pub mod blocks;
pub mod claims;
pub mod selector;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
