//! The agent's view of the cluster: reflectors over `NodeNetwork`s, the `ClusterNetwork` and
//! the `IPPool`s, turned into this node's [`NodeConfig`] whenever any of them changes; and the
//! agent's report back into its own `NodeNetwork`'s status.

use std::pin::Pin;
use std::time::Duration;

use ferrite_crds::conditions::{self, ConditionStatus};
use ferrite_crds::{AgentStatus, ClusterNetwork, IPPool, NodeNetwork};
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::config::{self, ConfigError, NodeConfig};

/// The latest configuration, or why there is none yet.
pub type ConfigState = Option<Result<NodeConfig, ConfigError>>;

/// Field manager of the agent's status writes.
pub const FIELD_MANAGER: &str = "ferrite-agent";

/// Watches the cluster and publishes this node's configuration into `tx` whenever it
/// changes. Runs until the process ends; watch errors are retried with backoff.
pub async fn watch_config(client: Client, node: String, tx: watch::Sender<ConfigState>) {
    let (nns, nn_changes) = reflect(Api::<NodeNetwork>::all(client.clone()));
    let (cns, cn_changes) = reflect(Api::<ClusterNetwork>::all(client.clone()));
    let (pools, pool_changes) = reflect(Api::<IPPool>::all(client));
    let mut changes = futures::stream::select_all([nn_changes, cn_changes, pool_changes]);
    // Every store must have listed once before a configuration means anything.
    let ready = async {
        let _ = nns.wait_until_ready().await;
        let _ = cns.wait_until_ready().await;
        let _ = pools.wait_until_ready().await;
    };
    tokio::pin!(ready);
    loop {
        tokio::select! {
            () = &mut ready => break,
            next = changes.next() => if next.is_none() { return },
        }
    }
    loop {
        publish(&node, &nns, &cns, &pools, &tx);
        if changes.next().await.is_none() {
            return;
        }
        // Coalesce a burst (a list after a reconnect, many NodeNetworks at once).
        tokio::time::sleep(Duration::from_millis(50)).await;
        while let Some(Some(())) = futures::FutureExt::now_or_never(changes.next()) {}
    }
}

fn publish(
    node: &str,
    nns: &Store<NodeNetwork>,
    cns: &Store<ClusterNetwork>,
    pools: &Store<IPPool>,
    tx: &watch::Sender<ConfigState>,
) {
    let nns: Vec<NodeNetwork> = nns.state().iter().map(|o| (**o).clone()).collect();
    let cluster = cns
        .state()
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(ferrite_crds::clusternetwork::SINGLETON_NAME))
        .map(|c| (**c).clone());
    let pools: Vec<IPPool> = pools.state().iter().map(|o| (**o).clone()).collect();
    let next = match config::from_cluster(node, &nns, cluster.as_ref(), &pools) {
        Ok((cfg, warnings)) => {
            for w in warnings {
                tracing::warn!("{w}");
            }
            Ok(cfg)
        }
        Err(e) => Err(e),
    };
    tx.send_if_modified(|current| {
        if current.as_ref() == Some(&next) {
            false
        } else {
            *current = Some(next);
            true
        }
    });
}

type Changes = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// A reflector over `api` and a stream that yields once per change (errors are logged and
/// the watch retried with backoff).
fn reflect<K>(api: Api<K>) -> (Store<K>, Changes)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let kind = K::kind(&()).into_owned();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .filter_map(move |event| {
            let kind = kind.clone();
            async move {
                match event {
                    Ok(watcher::Event::InitApply(_) | watcher::Event::Init) => None,
                    Ok(_) => Some(()),
                    Err(e) => {
                        tracing::warn!("watching {kind}s: {e} (retrying)");
                        None
                    }
                }
            }
        });
    (reader, Box::pin(stream))
}

/// Writes the agent's state into `status` of its NodeNetwork (a merge patch of the status
/// subresource: the spec is the operator's, never touched here).
pub async fn report(
    client: &Client,
    node: &str,
    ready: bool,
    message: &str,
    generation: Option<i64>,
) -> Result<(), kube::Error> {
    let api = Api::<NodeNetwork>::all(client.clone());
    let current = api.get_status(node).await?;
    let mut conds = current
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let (status, reason) = if ready {
        (ConditionStatus::True, conditions::reasons::RECONCILED)
    } else {
        (ConditionStatus::False, conditions::reasons::RECONCILE_ERROR)
    };
    conditions::set_condition(
        &mut conds,
        conditions::new_condition(
            conditions::types::READY,
            status,
            reason,
            message,
            generation,
            Time(jiff::Timestamp::now()),
        ),
    );
    let agent = AgentStatus {
        ready,
        version: Some(crate::VERSION.to_owned()),
        last_heartbeat: Some(Time(jiff::Timestamp::now())),
        cluster_network_generation: None,
    };
    let patch = serde_json::json!({
        "status": {
            "agent": agent,
            "conditions": conds,
            "observedGeneration": generation,
        }
    });
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
