//! Every controller of the operator, started together: the one place a new controller is
//! added.
//!
//! Each controller is a future that runs until the shared [`Shutdown`] resolves, then lets
//! its running reconciles finish. With leader election ([`crate::leader`]) this whole set
//! runs only while the process holds the Lease; losing it drops the set at once.

use std::sync::Arc;

use kube::Client;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::{clusternetwork, ippool, nodenetwork};

/// The settings of every controller.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The NodeNetwork controller's (and its release controller's).
    pub node_network: nodenetwork::Settings,
    /// The IPPool controller's.
    pub ip_pool: ippool::Settings,
    /// The ClusterNetwork controller's.
    pub cluster_network: clusternetwork::Settings,
}

/// Runs every controller until `shutdown` resolves and each has finished its running
/// reconciles.
pub async fn run(client: Client, settings: Settings, metrics: Arc<Metrics>, shutdown: Shutdown) {
    // NB: add a controller here as one more future of the join, given a clone of the client
    // and of `shutdown`; keep each controller's own setup inside its `run`.
    tokio::join!(
        nodenetwork::run(
            client.clone(),
            settings.node_network,
            metrics.clone(),
            shutdown.clone()
        ),
        ippool::run(
            client.clone(),
            settings.ip_pool,
            metrics.clone(),
            shutdown.clone()
        ),
        clusternetwork::run(client, settings.cluster_network, metrics, shutdown),
    );
}
