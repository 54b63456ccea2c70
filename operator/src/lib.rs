//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork, EncryptionPolicy and NodeNetwork: pool
//! validation and overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! Status: the NodeNetwork controller (one NodeNetwork per Node, with its address and at
//! least one pod address block) is implemented: [`nodenetwork`] over the pure [`blocks`]
//! and [`selector`]; [`controllers`] starts every controller together, and [`leader`] runs
//! them only in the process that holds the Lease. Pool conditions and usage, finalizers and
//! the agent DaemonSet arrive with issue 5.
//!
//! # Running it
//!
//! - Any number of replicas: only the leader (the holder of Lease `ferrite-operator` in the
//!   operator's namespace) runs the controllers, so block choice stays single-writer (see
//!   [`nodenetwork`] and [`leader`]). A replica that loses the Lease exits non-zero and is
//!   restarted as a follower.
//! - RBAC: `nodes` list, watch; `nodes/finalizers` update (the NodeNetwork's
//!   ownerReference sets `blockOwnerDeletion`, which the OwnerReferencesPermissionEnforcement
//!   admission plugin checks); `nodenetworks.ferrite.dev` get, list, watch, create, patch;
//!   `ippools.ferrite.dev` and `clusternetworks.ferrite.dev` list, watch; in its own
//!   namespace, `coordination.k8s.io` `leases` get, list, watch, create, update, patch.
//! - Flags (each with an environment variable, see `--help`): `--concurrency`,
//!   `--leader-elect` (default true; false runs the controllers at once, for tests and
//!   development only: two such processes may hand out one block twice),
//!   `--lease-namespace` (`POD_NAMESPACE`), `--identity` (`POD_NAME`), `--lease-duration`
//!   (default 15s). Logs follow `RUST_LOG` (default `info`). SIGTERM or SIGINT let running
//!   reconciles finish and release the Lease, then exit.

pub mod blocks;
pub mod claims;
pub mod controllers;
pub mod leader;
pub mod nodenetwork;
pub mod selector;
pub mod shutdown;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
