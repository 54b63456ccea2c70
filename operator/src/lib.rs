//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork, EncryptionPolicy and NodeNetwork: pool
//! validation and overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! Status: the NodeNetwork controller (one NodeNetwork per Node, with its address and at
//! least one pod address block) is implemented: [`nodenetwork`] over the pure [`blocks`]
//! and [`selector`]. Pool conditions and usage, finalizers, the agent DaemonSet and leader
//! election arrive with issue 5.
//!
//! # Running it
//!
//! - One replica, rolled out with `strategy: Recreate`, until issue 5 adds leader election:
//!   block choice is single-writer (see [`nodenetwork`]).
//! - RBAC: `nodes` list, watch; `nodes/finalizers` update (the NodeNetwork's
//!   ownerReference sets `blockOwnerDeletion`, which the OwnerReferencesPermissionEnforcement
//!   admission plugin checks); `nodenetworks.ferrite.dev` get, list, watch, create, patch;
//!   `ippools.ferrite.dev` and `clusternetworks.ferrite.dev` list, watch.
//! - Flags: `--concurrency` (`FERRITE_OPERATOR_CONCURRENCY`, default 32); logs follow
//!   `RUST_LOG` (default `info`). SIGTERM or SIGINT let running reconciles finish, then exit.

pub mod agentset;
pub mod blocks;
pub mod claims;
pub mod clusternetwork;
pub mod nodenetwork;
pub mod rollout;
pub mod selector;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
