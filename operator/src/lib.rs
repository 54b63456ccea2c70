//! Ferrite's operator.
//!
//! Owns the controllers of IPPool, ClusterNetwork and NodeNetwork: pool validation and
//! overlap, per-node blocks, the agent DaemonSet rollout, conditions.
//!
//! - [`nodenetwork`]: one NodeNetwork per Node, with its address and pod address blocks
//!   (more when its agent reports them nearly full), over the pure [`blocks`], [`selector`]
//!   and [`lifecycle`]; with [`release`], which keeps a deleted node's blocks taken until
//!   nothing uses them;
//! - [`ippool`]: pool status (overlap, usage, disabled, exhausted) and the deletion hold,
//!   over the pure [`pools`];
//! - [`clusternetwork`]: renders the agent's DaemonSet and RBAC ([`agentset`]), applies them
//!   with server-side apply, and reports the rollout ([`rollout`]);
//! - [`controllers`] starts them together; [`leader`] runs them only in the process that
//!   holds the Lease; [`metrics`] serves Prometheus metrics, `/healthz` and `/readyz`;
//!   [`telemetry`]: logs, and OpenTelemetry traces (a `reconcile` span per object) and
//!   metrics exported over OTLP/HTTP when an endpoint is configured.
//!
//! # Running it
//!
//! - Any number of replicas: only the leader (the holder of Lease `ferrite-operator` in the
//!   operator's namespace) runs the controllers, so block choice stays single-writer (see
//!   [`nodenetwork`] and [`leader`]). A replica that loses the Lease exits non-zero and is
//!   restarted as a follower.
//! - RBAC: docs/operator.md lists every rule (the chart, charts/ferrite, grants them).
//! - Flags (each with an environment variable, see `--help` and docs/operator.md). Logs
//!   follow `RUST_LOG` (default `info`). SIGTERM or SIGINT let running reconciles finish and
//!   release the Lease, then exit.
//! - Finalizers: `ferrite.dev/release-blocks` on every NodeNetwork, `ferrite.dev/blocks-in-use`
//!   on every IPPool. Uninstalling the operator while those objects remain leaves them
//!   undeletable until the finalizers are removed by hand.

pub mod agentset;
pub mod blocks;
pub mod changes;
pub mod claims;
pub mod clusternetwork;
pub mod controllers;
mod finalizers;
pub mod ippool;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod nodenetwork;
pub mod pools;
pub mod release;
pub mod rollout;
pub mod selector;
pub mod shutdown;
pub mod teardown;
pub mod telemetry;
#[cfg(test)]
mod testing;
pub mod uninstall;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
