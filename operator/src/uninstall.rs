//! `ferrite-operator uninstall`: what the Helm chart's pre-delete hook runs. Deletes the
//! ClusterNetwork and waits until it is gone, which is when the running operator has cleaned
//! every node (see [`crate::teardown`]); the rest of the release is deleted after it.

use std::time::{Duration, Instant};

use ferrite_crds::ClusterNetwork;
use ferrite_crds::clusternetwork::SINGLETON_NAME;
use ferrite_crds::conditions::{self, types};
use kube::api::DeleteParams;
use kube::{Api, Client};
use tracing::info;

/// How often the deletion is looked at.
const POLL: Duration = Duration::from_secs(2);

/// Why the uninstall did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the apiserver failed.
    #[error("{what} clusternetwork/{SINGLETON_NAME}: {source}")]
    Api {
        /// What was being done.
        what: &'static str,
        /// The apiserver's answer.
        #[source]
        source: kube::Error,
    },
    /// The ClusterNetwork was still there at the deadline.
    #[error(
        "clusternetwork/{SINGLETON_NAME} was not gone within {timeout:?} (last: {last}); is the \
         operator running? `kubectl get clusternetwork {SINGLETON_NAME} -o yaml` and the operator's \
         logs say why"
    )]
    Timeout {
        /// The deadline.
        timeout: Duration,
        /// What its Ready condition said last.
        last: String,
    },
}

/// Deletes the ClusterNetwork (if there is one) and waits until it is gone.
pub async fn run(client: Client, timeout: Duration) -> Result<(), Error> {
    let api = Api::<ClusterNetwork>::all(client);
    match api.delete(SINGLETON_NAME, &DeleteParams::default()).await {
        Ok(_) => info!("deleting clusternetwork/{SINGLETON_NAME}: the operator cleans every node"),
        Err(kube::Error::Api(e)) if e.code == 404 => {
            info!(
                "there is no clusternetwork/{SINGLETON_NAME}: nothing to uninstall from the nodes"
            );
            return Ok(());
        }
        Err(source) => {
            return Err(Error::Api {
                what: "deleting",
                source,
            });
        }
    }
    let started = Instant::now();
    let mut last = String::from("no status yet");
    loop {
        let Some(cn) = api
            .get_opt(SINGLETON_NAME)
            .await
            .map_err(|source| Error::Api {
                what: "reading",
                source,
            })?
        else {
            info!("clusternetwork/{SINGLETON_NAME} is gone: every node is clean");
            return Ok(());
        };
        if let Some(ready) = cn
            .status
            .as_ref()
            .and_then(|s| conditions::find(&s.conditions, types::READY))
            && ready.message != last
        {
            last.clone_from(&ready.message);
            info!("{last}");
        }
        if started.elapsed() >= timeout {
            return Err(Error::Timeout { timeout, last });
        }
        tokio::time::sleep(POLL).await;
    }
}
