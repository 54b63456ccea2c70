//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork, EncryptionPolicy and NodeNetwork: pool
//! validation and overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! Status: implemented are
//! - [`nodenetwork`]: one NodeNetwork per Node, with its address and pod address blocks
//!   (more when its agent reports them nearly full), over the pure [`blocks`],
//!   [`selector`] and [`lifecycle`]; with [`release`], which keeps a deleted node's blocks
//!   taken until nothing uses them;
//! - [`ippool`]: pool status (overlap, usage, disabled, exhausted) and the deletion hold,
//!   over the pure [`pools`];
//! - [`metrics`]: Prometheus metrics, `/healthz`, `/readyz`;
//! - [`telemetry`]: logs, and OpenTelemetry traces (a `reconcile` span per object) and
//!   metrics exported over OTLP/HTTP when an endpoint is configured.
//!
//! Leader election arrives with the rest of issue 5.
//!
//! # Running it
//!
//! - One replica, rolled out with `strategy: Recreate`, until leader election lands: block
//!   choice is single-writer (see [`nodenetwork`]).
//! - RBAC: `nodes` get, list, watch; `nodes/finalizers` update (the NodeNetwork's
//!   ownerReference sets `blockOwnerDeletion`, which the OwnerReferencesPermissionEnforcement
//!   admission plugin checks); `nodenetworks.ferrite.dev` get, list, watch, create, patch;
//!   `ippools.ferrite.dev` get, list, watch, patch (its finalizer) and `ippools/status`
//!   patch; `clusternetworks.ferrite.dev` list, watch; `events.events.k8s.io` create, patch
//!   (Events of cluster-scoped objects go to namespace `default`).
//! - Flags: `--concurrency` (`FERRITE_OPERATOR_CONCURRENCY`, default 32),
//!   `--metrics-addr` (`FERRITE_OPERATOR_METRICS_ADDR`, default `0.0.0.0:9894`),
//!   `--release-grace-seconds` (`FERRITE_OPERATOR_RELEASE_GRACE_SECONDS`, default 120),
//!   `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`, default: export nothing);
//!   logs follow `RUST_LOG` (default `info`). SIGTERM or SIGINT let running reconciles
//!   finish, then exit.
//! - Finalizers: `ferrite.dev/release-blocks` on every NodeNetwork, `ferrite.dev/blocks-in-use`
//!   on every IPPool. Uninstalling the operator while those objects remain leaves them
//!   undeletable until the finalizers are removed by hand.

pub mod agentset;
pub mod blocks;
pub mod changes;
pub mod claims;
pub mod clusternetwork;
pub mod ippool;
pub mod lifecycle;
pub mod metrics;
pub mod nodenetwork;
pub mod pools;
pub mod release;
pub mod rollout;
pub mod selector;
pub mod telemetry;
#[cfg(test)]
mod testing;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
