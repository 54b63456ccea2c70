//! The agent's view of the cluster: reflectors over `NodeNetwork`s, the `ClusterNetwork` and
//! the `IPPool`s, turned into this node's [`NodeConfig`] whenever any of them changes; and the
//! agent's report back into its own `NodeNetwork`'s status: readiness, heartbeat and the
//! address use of each block ([`status_patch`]), which the operator grows the node's blocks
//! from and releases a deleted node's blocks by.

use std::pin::Pin;
use std::time::Duration;

use ferrite_crds::conditions::{self, ConditionStatus};
use ferrite_crds::{AgentStatus, BlockUsage, Cidr, ClusterNetwork, IPPool, NodeNetwork};
use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use crate::config::{self, ConfigError, NodeConfig};
use crate::ipam::BlockUse;

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

/// What the agent reports about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// The node's datapath is programmed.
    pub ready: bool,
    /// Why (not) ready, for the `Ready` condition.
    pub message: String,
    /// Address use per block.
    pub blocks: Vec<BlockUse>,
    /// The ClusterNetwork generation the programmed datapath comes from.
    pub cluster_generation: Option<i64>,
    /// That ClusterNetwork's uid.
    pub cluster_uid: Option<String>,
}

/// Writes `report` into `status` of the node's NodeNetwork (a merge patch of the status
/// subresource: the spec is the operator's, never touched here). Every write is also a
/// heartbeat.
pub async fn report(
    client: &Client,
    node: &str,
    report: &Report,
    generation: Option<i64>,
) -> Result<(), kube::Error> {
    let api = Api::<NodeNetwork>::all(client.clone());
    let current = api.get_status(node).await?;
    let conditions = current
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let patch = status_patch(conditions, report, generation, Time(jiff::Timestamp::now()));
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// The merge patch of the status `report` asks for, given the current `conditions` (the
/// `Ready` condition keeps its `lastTransitionTime` while its status holds). `blocks` is a
/// list, which a merge patch replaces whole: blocks the node no longer has drop out.
pub fn status_patch(
    mut conditions: Vec<Condition>,
    report: &Report,
    generation: Option<i64>,
    now: Time,
) -> serde_json::Value {
    let (status, reason) = if report.ready {
        (ConditionStatus::True, conditions::reasons::RECONCILED)
    } else {
        (ConditionStatus::False, conditions::reasons::RECONCILE_ERROR)
    };
    conditions::set_condition(
        &mut conditions,
        conditions::new_condition(
            conditions::types::READY,
            status,
            reason,
            report.message.clone(),
            generation,
            now.clone(),
        ),
    );
    let agent = AgentStatus {
        ready: report.ready,
        version: Some(crate::VERSION.to_owned()),
        last_heartbeat: Some(now),
        cluster_network_generation: report.cluster_generation,
        cluster_network_uid: report.cluster_uid.clone(),
    };
    let blocks: Vec<BlockUsage> = report.blocks.iter().map(block_usage).collect();
    serde_json::json!({
        "status": {
            "agent": agent,
            "blocks": blocks,
            "conditions": conditions,
            "observedGeneration": generation,
        }
    })
}

fn block_usage(used: &BlockUse) -> BlockUsage {
    BlockUsage {
        cidr: Cidr::from(used.cidr),
        allocated: used.allocated,
        capacity: used.capacity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(jiff::Timestamp::from_second(seconds).unwrap())
    }

    fn report(ready: bool) -> Report {
        Report {
            ready,
            message: "datapath programmed".into(),
            blocks: vec![BlockUse {
                cidr: "10.244.0.0/26".parse().unwrap(),
                allocated: 5,
                capacity: 62,
            }],
            cluster_generation: Some(7),
            cluster_uid: Some("c0ffee".into()),
        }
    }

    #[test]
    fn the_status_carries_the_heartbeat_and_each_blocks_use() {
        let patch = status_patch(vec![], &report(true), None, at(1_700_000_000));
        let status = &patch["status"];
        assert_eq!(status["agent"]["ready"], true);
        assert_eq!(status["agent"]["lastHeartbeat"], "2023-11-14T22:13:20Z");
        assert_eq!(status["agent"]["clusterNetworkGeneration"], 7);
        assert_eq!(status["agent"]["clusterNetworkUID"], "c0ffee");
        assert_eq!(
            status["blocks"],
            serde_json::json!([{"cidr": "10.244.0.0/26", "allocated": 5, "capacity": 62}])
        );
        assert_eq!(status["conditions"][0]["reason"], "Reconciled");
    }

    #[test]
    fn a_node_without_blocks_reports_an_empty_list_so_stale_entries_go() {
        let mut empty = report(true);
        empty.blocks.clear();
        let patch = status_patch(vec![], &empty, None, at(0));
        assert_eq!(patch["status"]["blocks"], serde_json::json!([]));
    }

    #[test]
    fn the_ready_condition_keeps_its_transition_time_across_heartbeats() {
        let first = status_patch(vec![], &report(true), None, at(10));
        let conditions: Vec<Condition> =
            serde_json::from_value(first["status"]["conditions"].clone()).unwrap();
        let second = status_patch(conditions.clone(), &report(true), None, at(70));
        assert_eq!(
            second["status"]["conditions"][0]["lastTransitionTime"],
            first["status"]["conditions"][0]["lastTransitionTime"]
        );
        assert_eq!(
            second["status"]["agent"]["lastHeartbeat"],
            "1970-01-01T00:01:10Z"
        );
        let failed = status_patch(conditions, &report(false), None, at(80));
        assert_eq!(failed["status"]["conditions"][0]["status"], "False");
        assert_eq!(
            failed["status"]["conditions"][0]["lastTransitionTime"],
            "1970-01-01T00:01:20Z"
        );
    }
}
