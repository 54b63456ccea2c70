//! Releasing a deleted node's blocks: a controller over NodeNetworks that keeps the
//! finalizer [`FINALIZER`] on each, and removes it from a NodeNetwork being deleted once
//! nothing uses its blocks ([`lifecycle::release`]: the agent reports none in use, or has
//! been silent for the grace period). Until then the NodeNetwork stays, and block choice,
//! which counts every NodeNetwork's blocks including those being deleted, keeps its blocks
//! taken; once it is gone they are free.
//!
//! Shape (controller-rs): `reconcile` hands the NodeNetwork to
//! [`kube::runtime::finalizer()`], which adds the finalizer to NodeNetworks created before it
//! existed (the NodeNetwork controller creates new ones with it), and on deletion removes
//! it (cleanup has nothing to undo) — but only once the blocks may go: while they may not,
//! `reconcile` looks again when the agent would count as silent, or sooner when the
//! NodeNetwork changes.
//!
//! Started by [`crate::nodenetwork::run`], whose block choice reads this controller's cache.

use std::sync::Arc;
use std::time::Duration;

use ferrite_crds::NodeNetwork;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::finalizers::{self, FinalizerError};
use crate::lifecycle::{self, Release, ReleaseReason};
use crate::metrics::{Metrics, controllers};
use crate::telemetry;

/// Keeps a NodeNetwork, and so its blocks, until nothing on its node uses them.
pub const FINALIZER: &str = "ferrite.dev/release-blocks";

/// Why a NodeNetwork's finalizer could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Adding or removing the finalizer failed.
    #[error(
        "cannot {verb} the finalizer {FINALIZER} of NodeNetwork {name}: {source}. It is retried; the operator's RBAC must allow patch on nodenetworks"
    )]
    Finalizer {
        /// `add` or `remove`.
        verb: &'static str,
        /// The NodeNetwork.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper refused the object (it has no name): not from an apiserver.
    #[error("cannot handle NodeNetwork {name}: {what}")]
    Unexpected {
        /// The NodeNetwork.
        name: String,
        /// What the finalizer helper said.
        what: String,
    },
}

impl Error {
    /// A short, stable name for logs and the `kind` label of the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Finalizer { .. } => "finalizer",
            Self::Unexpected { .. } => "unexpected",
        }
    }
}

impl FinalizerError for Error {
    fn finalizer(verb: &'static str, name: &str, source: kube::Error) -> Self {
        Self::Finalizer {
            verb,
            name: name.to_owned(),
            source,
        }
    }

    fn unexpected(name: &str, what: String) -> Self {
        Self::Unexpected {
            name: name.to_owned(),
            what,
        }
    }
}

/// What every reconcile shares.
pub(crate) struct Context {
    pub(crate) api: Api<NodeNetwork>,
    /// How long a deleted node's agent may stay silent before its blocks go anyway.
    pub(crate) grace: Duration,
    /// The clock (`Timestamp::now`; fixed in tests).
    pub(crate) now: fn() -> Timestamp,
    pub(crate) recorder: Recorder,
    pub(crate) metrics: Arc<Metrics>,
}

/// Runs `controller` (over every NodeNetwork) until its graceful shutdown.
pub(crate) async fn drive(controller: Controller<NodeNetwork>, context: Arc<Context>) {
    use futures::StreamExt as _;
    controller
        .run(
            telemetry::traced(controllers::NODE_NETWORK_RELEASE, reconcile),
            error_policy,
            context,
        )
        .for_each(|result| {
            log_outcome(result);
            std::future::ready(())
        })
        .await;
}

fn log_outcome(
    result: Result<(ObjectRef<NodeNetwork>, Action), controller::Error<Error, watcher::Error>>,
) {
    match result {
        Ok((nn, _)) => debug!(node_network = %nn.name, "release: reconciled"),
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(error @ controller::Error::ObjectNotFound(_)) => debug!(%error, "skipped"),
        Err(error) => warn!(%error, "NodeNetwork release controller error"),
    }
}

async fn reconcile(nn: Arc<NodeNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx
        .metrics
        .reconcile_timer(controllers::NODE_NETWORK_RELEASE);
    let name = nn.name_any();
    let mut reason = None;
    if nn.meta().deletion_timestamp.is_some() && nn.finalizers().iter().any(|f| f == FINALIZER) {
        match lifecycle::release(&nn, (ctx.now)(), ctx.grace) {
            Release::Hold {
                allocated,
                since_heartbeat,
                recheck_after,
            } => {
                debug!(
                    node_network = %name,
                    allocated,
                    since_heartbeat_seconds = since_heartbeat.as_secs(),
                    "NodeNetwork is being deleted; its blocks stay taken while its agent reports addresses in use"
                );
                return Ok(Action::requeue(recheck_after));
            }
            Release::Now(why) => reason = Some(why),
        }
    }
    let action = finalizer(&ctx.api, FINALIZER, nn.clone(), |event| async move {
        match event {
            FinalizerEvent::Apply(_) => Ok(Action::await_change()),
            // Nothing to undo: the NodeNetwork going away is what frees its blocks.
            FinalizerEvent::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await
    .map_err(|e| finalizers::into_error(&name, e))?;
    // The helper cleans up (and removes the finalizer) exactly for a NodeNetwork being
    // deleted that has it, the one `reason` was decided for above; said only once it is done.
    if let Some(reason) = reason {
        released(&nn, &ctx, reason).await;
    }
    Ok(action)
}

/// The blocks went back to the pools: say so (log, Event, metric).
async fn released(nn: &NodeNetwork, ctx: &Context, reason: ReleaseReason) {
    let name = nn.name_any();
    let blocks: Vec<String> = nn.spec.blocks.iter().map(ToString::to_string).collect();
    let note = format!(
        "blocks {} of node {name} went back to their pools: {reason}",
        blocks.join(", ")
    );
    info!(node_network = %name, "{note}");
    ctx.metrics.blocks_released();
    let event = Event {
        type_: EventType::Normal,
        reason: "BlocksReleased".to_owned(),
        note: Some(note.chars().take(1000).collect()),
        action: "Release".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &nn.object_ref(&())).await {
        warn!(node_network = %name, %error, "cannot record an Event (RBAC: events.k8s.io events create, patch)");
    }
}

fn error_policy(nn: Arc<NodeNetwork>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failed(controllers::NODE_NETWORK_RELEASE, error.label());
    warn!(node_network = %nn.name_any(), error = error.label(), "{error}");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use ferrite_crds::{
        AgentStatus, BlockUsage, Cidr, IpAddress, NodeNetworkSpec, NodeNetworkStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::events::Reporter;
    use serde_json::json;

    use super::*;
    use crate::testing::{ApiServer, Reply};

    const NODE_NETWORKS: &str = "/apis/ferrite.dev/v1alpha1/nodenetworks";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

    /// The tests' "now".
    const NOW: i64 = 1_000_000;

    fn now() -> Timestamp {
        Timestamp::from_second(NOW).unwrap()
    }

    /// A NodeNetwork of a deleted node, its agent having reported `allocated` in its one
    /// block `seconds_ago`.
    fn deleted(allocated: u32, seconds_ago: i64) -> NodeNetwork {
        let now = NOW;
        let mut nn = NodeNetwork::new(
            "node1",
            NodeNetworkSpec {
                blocks: vec![Cidr("10.244.0.0/26".into())],
                node_ip: IpAddress("172.30.0.11".into()),
                tunnel_endpoint: None,
            },
        );
        nn.metadata.uid = Some("nn-uid".into());
        nn.metadata.finalizers = Some(vec![FINALIZER.into()]);
        nn.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(now - 5).unwrap()));
        nn.status = Some(NodeNetworkStatus {
            agent: Some(AgentStatus {
                ready: true,
                version: None,
                last_heartbeat: Some(Time(Timestamp::from_second(now - seconds_ago).unwrap())),
                ..AgentStatus::default()
            }),
            blocks: vec![BlockUsage {
                cidr: Cidr("10.244.0.0/26".into()),
                allocated,
                capacity: 62,
            }],
            ..NodeNetworkStatus::default()
        });
        nn
    }

    fn context(server: &ApiServer) -> Arc<Context> {
        let client = server.client();
        Arc::new(Context {
            api: Api::all(client.clone()),
            grace: Duration::from_secs(120),
            now,
            recorder: Recorder::new(client, Reporter::from("ferrite-operator-test")),
            metrics: Arc::new(Metrics::default()),
        })
    }

    #[tokio::test]
    async fn blocks_a_live_agent_reports_in_use_are_held_without_a_write() {
        let server = ApiServer::new();
        let action = reconcile(Arc::new(deleted(3, 10)), context(&server))
            .await
            .unwrap();
        // Looked at again when the agent would count as silent: 120 s after its heartbeat.
        assert_eq!(action, Action::requeue(Duration::from_secs(110)));
        assert!(server.done().is_empty());
    }

    #[tokio::test]
    async fn blocks_nothing_uses_are_released_with_an_event() {
        let nn = deleted(0, 10);
        let server = ApiServer::new()
            .expect(
                "PATCH",
                &format!("{NODE_NETWORKS}/node1"),
                Reply::Json(200, serde_json::to_value(&nn).unwrap()),
            )
            .expect("POST", EVENTS, Reply::Echo(201));
        let ctx = context(&server);
        let action = reconcile(Arc::new(nn), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.done();
        assert_eq!(
            seen[0].body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ])
        );
        assert_eq!(seen[1].body["reason"], "BlocksReleased");
        let note = seen[1].body["note"].as_str().unwrap();
        assert!(
            note.contains("10.244.0.0/26") && note.contains("no pod address in use"),
            "{note}"
        );
        assert!(
            ctx.metrics
                .encode()
                .contains("ferrite_operator_node_blocks_released_total 1")
        );
    }

    #[tokio::test]
    async fn blocks_of_a_silent_agent_are_released_after_the_grace_period() {
        let nn = deleted(5, 300);
        let server = ApiServer::new()
            .expect(
                "PATCH",
                &format!("{NODE_NETWORKS}/node1"),
                Reply::Json(200, serde_json::to_value(&nn).unwrap()),
            )
            .expect("POST", EVENTS, Reply::Echo(201));
        reconcile(Arc::new(nn), context(&server)).await.unwrap();
        let seen = server.done();
        let note = seen[1].body["note"].as_str().unwrap();
        assert!(note.contains("has not reported for 300s"), "{note}");
    }

    #[tokio::test]
    async fn a_node_network_without_the_finalizer_gets_it() {
        let mut nn = deleted(0, 0);
        nn.metadata.deletion_timestamp = None;
        nn.metadata.finalizers = None;
        let server = ApiServer::new().expect(
            "PATCH",
            &format!("{NODE_NETWORKS}/node1"),
            Reply::Json(200, serde_json::to_value(&nn).unwrap()),
        );
        let action = reconcile(Arc::new(nn), context(&server)).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.done();
        assert_eq!(
            seen[0].content_type.as_deref(),
            Some("application/json-patch+json")
        );
        assert_eq!(seen[0].body[1]["value"], json!([FINALIZER]));
    }

    #[tokio::test]
    async fn a_refused_finalizer_removal_is_an_error_retried_and_counted() {
        let nn = deleted(0, 10);
        let server = ApiServer::new().expect(
            "PATCH",
            &format!("{NODE_NETWORKS}/node1"),
            Reply::Status(422, "test operation failed"),
        );
        let ctx = context(&server);
        let error = reconcile(Arc::new(nn.clone()), ctx.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Finalizer { verb: "remove", .. }),
            "{error}"
        );
        assert_eq!(
            error_policy(Arc::new(nn), &error, ctx.clone()),
            Action::requeue(Duration::from_secs(5))
        );
        assert!(ctx.metrics.encode().contains(
            r#"ferrite_operator_reconcile_errors_total{controller="nodenetwork-release",kind="finalizer"} 1"#
        ));
        server.done();
    }
}
