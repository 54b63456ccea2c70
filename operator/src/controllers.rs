//! Every controller of the operator, started together: the one place a new controller is
//! added (an IPPool controller, a ClusterNetwork controller, ...).
//!
//! Each controller is a future that runs until the shared [`Shutdown`] resolves, then lets
//! its running reconciles finish. With leader election ([`crate::leader`]) this whole set
//! runs only while the process holds the Lease; losing it drops the set at once.

use kube::Client;

use crate::nodenetwork;
use crate::shutdown::Shutdown;

/// The settings of every controller.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The NodeNetwork controller's.
    pub node_network: nodenetwork::Settings,
}

/// Runs every controller until `shutdown` resolves and each has finished its running
/// reconciles.
pub async fn run(client: Client, settings: Settings, shutdown: Shutdown) {
    // NB: add a controller here as one more future of the join, given a clone of the client
    // and of `shutdown`; keep each controller's own setup inside its `run`.
    tokio::join!(nodenetwork::run(client, settings.node_network, shutdown));
}
