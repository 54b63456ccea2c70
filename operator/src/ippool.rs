//! The IPPool controller: everything about a pool that the apiserver cannot check on the
//! object alone. It writes the pool's status — `Ready` (reasons `Reconciled`, `Overlap`,
//! `InvalidSpec`, `Disabled`, `Exhausted`, `InUse`), `usage {total, allocated, blocks}` and
//! `observedGeneration` — with server-side apply on `/status` under [`FIELD_MANAGER`], and
//! holds a pool's deletion with the finalizer [`FINALIZER`] while nodes hold blocks of it.
//! It never writes a pool's spec. The rules are pure, in [`crate::pools`]; this file reads
//! the caches, writes, and records Events.
//!
//! Shape (controller-rs): `reconcile` hands the pool to [`kube::runtime::finalizer()`], which
//! adds the finalizer to a new pool and calls `apply` (status) or, once the pool is being
//! deleted and no node holds a block of it any more, `cleanup` (then removes the finalizer).
//! While nodes still hold blocks, `reconcile` writes `Ready=False, reason InUse` naming them
//! and looks again later, without calling `cleanup`.
//!
//! Inputs: the IPPools drive the controller. Every pool is reconciled again when anything
//! its status depends on changes: a pool's range, age or deletion (overlaps), a Node's
//! addresses, the service CIDR, or the blocks and usage in any NodeNetwork. Pools are few,
//! so "reconcile every pool" is cheap; heartbeats and other changes that touch none of
//! these are filtered out ([`crate::changes`]), and bursts are debounced.
//!
//! NB: the NodeNetwork controller refuses a pool that is being deleted or overlaps, from its
//! own caches. A block it chose in the moment before its cache showed the pool's deletion
//! can land after this controller released the finalizer: the block then stays with its
//! node, belonging to no pool, and is never handed out twice (block choice looks at every
//! NodeNetwork's blocks, whatever pool they came from).

use std::future::{Future, ready};
use std::sync::Arc;
use std::time::Duration;

use ferrite_crds::clusternetwork::SINGLETON_NAME;
use ferrite_crds::conditions::{self, types};
use ferrite_crds::{ClusterNetwork, IPPool, IPPoolStatus, NodeNetwork};
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::changes::Changes;
use crate::finalizers::{self, FinalizerError};
use crate::metrics::{Metrics, controllers};
use crate::pools::{self, Assessment, ClusterView, NodeAddresses, PoolState, Transition};
use crate::telemetry;

/// The field manager of the pool status this controller applies.
pub const FIELD_MANAGER: &str = crate::nodenetwork::FIELD_MANAGER;

/// Holds a pool's deletion while nodes hold blocks of it.
pub const FINALIZER: &str = "ferrite.dev/blocks-in-use";

/// How often a pool in order is looked at again, as a safety net for a missed event.
const RESYNC: Duration = Duration::from_secs(5 * 60);
/// How often a held deletion is looked at again (NodeNetwork changes also trigger it).
const HELD_RECHECK: Duration = Duration::from_secs(60);
/// Changes arriving within this long of each other are reconciled once.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// Longest Event note the apiserver accepts (events.k8s.io/v1 `note`).
const MAX_NOTE_BYTES: usize = 1024;

/// Why a pool could not be reconciled. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status write was refused or did not reach the apiserver.
    #[error(
        "cannot write the status of IPPool {name}: {source}. Check that the operator's RBAC allows patch on ippools/status"
    )]
    Status {
        /// The pool.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error(
        "cannot {verb} the finalizer {FINALIZER} of IPPool {name}: {source}. It is retried; the operator's RBAC must allow patch on ippools"
    )]
    Finalizer {
        /// `add` or `remove`.
        verb: &'static str,
        /// The pool.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The finalizer helper refused the object (it has no name): not from an apiserver.
    #[error("cannot handle IPPool {name}: {what}")]
    Unexpected {
        /// The pool.
        name: String,
        /// What the finalizer helper said.
        what: String,
    },
}

/// The result type of this controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable name for logs and the `kind` label of the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Status { .. } => "status_write",
            Self::Finalizer { .. } => "finalizer",
            Self::Unexpected { .. } => "unexpected",
        }
    }

    /// How long to wait before reconciling the pool again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Self::Status { .. } | Self::Finalizer { .. } => Duration::from_secs(5),
            Self::Unexpected { .. } => RESYNC,
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

/// How the controller runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How many pools are reconciled at once (0: no limit).
    pub concurrency: u16,
}

/// Runs the controller until `shutdown` resolves, then lets running reconciles finish.
///
/// The caches of Nodes, NodeNetworks and the ClusterNetwork are filled first, so a pool's
/// first status already accounts for every node and block. If a cache cannot list (CRDs
/// missing, RBAC), this waits and logs why; `/readyz` says the controller is not running.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    metrics.controller_starting(controllers::IP_POOL);
    let shutdown = shutdown.shared();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (node_networks, node_networks_writer) = reflector::store::<NodeNetwork>();
    let (cluster_networks, cluster_networks_writer) = reflector::store::<ClusterNetwork>();
    let (changed, changes) = mpsc::unbounded::<()>();

    let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(strip_node)
        .reflect(nodes_writer);
    let node_network_events = watcher(
        Api::<NodeNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|nn: &mut NodeNetwork| nn.managed_fields_mut().clear())
    .reflect(node_networks_writer);
    let cluster_network_events = watcher(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={SINGLETON_NAME}")),
    )
    .default_backoff()
    .reflect(cluster_networks_writer);
    // Only a trigger: the controller keeps its own cache of pools.
    let pool_events = watcher(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let caches = futures::future::join4(
        forward(
            "Node",
            node_events,
            |n: &Node| NodeAddresses::of(n).addresses,
            changed.clone(),
        ),
        forward(
            "NodeNetwork",
            node_network_events,
            |nn: &NodeNetwork| {
                (
                    nn.spec.blocks.clone(),
                    nn.status.as_ref().map(|s| s.blocks.clone()),
                )
            },
            changed.clone(),
        ),
        forward(
            "ClusterNetwork",
            cluster_network_events,
            |cn: &ClusterNetwork| cn.spec.service_cidr.clone(),
            changed.clone(),
        ),
        forward(
            "IPPool",
            pool_events,
            |p: &IPPool| {
                (
                    p.spec.cidr.clone(),
                    p.metadata.creation_timestamp.clone(),
                    p.metadata.deletion_timestamp.is_some(),
                )
            },
            changed,
        ),
    );

    let controller = {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        async move {
            info!("IPPool controller: filling the Node, NodeNetwork and ClusterNetwork caches");
            let filled = futures::future::try_join3(
                nodes.wait_until_ready(),
                node_networks.wait_until_ready(),
                cluster_networks.wait_until_ready(),
            );
            tokio::select! {
                filled = filled => if filled.is_err() {
                    warn!("IPPool controller: a cache stopped before it was filled; not reconciling");
                    return;
                },
                () = shutdown.clone() => return,
            }
            let controller = Controller::new(
                Api::<IPPool>::all(client.clone()),
                watcher::Config::default(),
            );
            let context = Arc::new(Context {
                api: Api::all(client.clone()),
                pools: controller.store(),
                nodes,
                node_networks,
                cluster_networks,
                recorder: Recorder::new(client, Reporter::from(FIELD_MANAGER)),
                metrics: metrics.clone(),
            });
            metrics.controller_running(controllers::IP_POOL);
            info!("IPPool controller: caches filled; reconciling pools");
            controller
                .reconcile_all_on(changes)
                .with_config(
                    controller::Config::default()
                        .concurrency(settings.concurrency)
                        .debounce(DEBOUNCE),
                )
                .graceful_shutdown_on(shutdown)
                .run(
                    telemetry::traced(controllers::IP_POOL, reconcile),
                    error_policy,
                    context,
                )
                .for_each(|result| {
                    log_outcome(result);
                    ready(())
                })
                .await;
        }
    };
    // The caches never finish on their own; they stop when the controller has.
    tokio::select! {
        () = controller => info!("IPPool controller stopped"),
        _ = caches => warn!("IPPool controller: the caches stopped"),
    }
    metrics.controller_stopped(controllers::IP_POOL);
}

/// Keeps of a Node only what the pool rules read (its name and addresses): a large cluster's
/// Nodes carry images and conditions that would otherwise fill the cache.
fn strip_node(node: &mut Node) {
    crate::nodenetwork::strip_node(node);
    node.labels_mut().clear();
}

/// Drives a cache's watch, logging its errors, and signals `changed` when an event changes
/// what `extract` takes from an object.
async fn forward<K, V>(
    kind: &'static str,
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    extract: impl Fn(&K) -> V,
    changed: mpsc::UnboundedSender<()>,
) where
    K: Resource,
    V: PartialEq,
{
    let mut seen = Changes::new();
    events
        .for_each(|event| {
            match event {
                Ok(event) => {
                    if seen.observe(&event, &extract) && changed.unbounded_send(()).is_err() {
                        debug!(kind, "IPPool controller stopped; change not forwarded");
                    }
                }
                Err(error) => warn!(
                    kind,
                    %error,
                    "IPPool controller cannot watch {kind}s; retrying with backoff. Check that Ferrite's CRDs are installed and that the operator's RBAC lets it list and watch {kind}s"
                ),
            }
            ready(())
        })
        .await;
}

fn log_outcome(
    result: Result<(ObjectRef<IPPool>, Action), controller::Error<Error, watcher::Error>>,
) {
    match result {
        Ok((pool, _)) => debug!(pool = %pool.name, "reconciled"),
        // Logged by error_policy, with the pool's name.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        Err(error @ controller::Error::ObjectNotFound(_)) => debug!(%error, "skipped"),
        Err(error) => warn!(%error, "IPPool controller error"),
    }
}

/// What every reconcile shares.
struct Context {
    api: Api<IPPool>,
    pools: Store<IPPool>,
    nodes: Store<Node>,
    node_networks: Store<NodeNetwork>,
    cluster_networks: Store<ClusterNetwork>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

/// The caches at one moment, which a [`ClusterView`] borrows from.
struct Snapshot {
    pools: Vec<Arc<IPPool>>,
    node_networks: Vec<Arc<NodeNetwork>>,
    nodes: Vec<NodeAddresses>,
    service_cidr: Option<IpNet>,
}

impl Snapshot {
    fn view(&self) -> ClusterView<'_> {
        ClusterView {
            pools: self.pools.iter().map(Arc::as_ref).collect(),
            service_cidr: self.service_cidr,
            nodes: self.nodes.clone(),
            node_networks: self.node_networks.iter().map(Arc::as_ref).collect(),
        }
    }
}

impl Context {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            pools: self.pools.state(),
            node_networks: self.node_networks.state(),
            nodes: self
                .nodes
                .state()
                .iter()
                .map(|n| NodeAddresses::of(n))
                .collect(),
            service_cidr: service_cidr(&self.cluster_networks),
        }
    }

    /// Applies the status `assessment` calls for, unless the pool already shows it, and
    /// records an Event for a transition a user cares about.
    async fn write_status(&self, pool: &IPPool, assessment: &Assessment) -> Result<()> {
        let name = pool.name_any();
        let current = pool.status.as_ref();
        let desired = pools::desired_status(
            current,
            &assessment.state,
            assessment.usage.clone(),
            pool.metadata.generation,
            Time(Timestamp::now()),
        );
        if current == Some(&desired) {
            return Ok(());
        }
        let params = PatchParams::apply(FIELD_MANAGER).force();
        self.api
            .patch_status(&name, &params, &Patch::Apply(status_patch(&desired)))
            .await
            .map_err(|source| Error::Status {
                name: name.clone(),
                source,
            })?;
        let old = current.and_then(|s| conditions::find(&s.conditions, types::READY));
        if let Some(new) = conditions::find(&desired.conditions, types::READY)
            && let Some(transition) = Transition::between(old, new)
        {
            info!(pool = %name, reason = transition.reason(), "{}", new.message);
            self.publish(pool, transition, &new.message).await;
        }
        Ok(())
    }

    /// Records an Event on the pool; a failure is logged, never fails the reconcile.
    async fn publish(&self, pool: &IPPool, transition: Transition, message: &str) {
        let event = Event {
            type_: if transition.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason().to_owned(),
            note: Some(truncate(message, MAX_NOTE_BYTES)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &pool.object_ref(&())).await {
            warn!(pool = %pool.name_any(), %error, "cannot record an Event (RBAC: events.k8s.io events create, patch)");
        }
    }
}

/// `ClusterNetwork default`'s service CIDR, when it exists and parses.
fn service_cidr(cluster_networks: &Store<ClusterNetwork>) -> Option<IpNet> {
    let cn = cluster_networks.get(&ObjectRef::new(SINGLETON_NAME))?;
    match cn.spec.service_cidr.net() {
        Ok(net) => Some(net),
        Err(error) => {
            warn!(%error, "ClusterNetwork {SINGLETON_NAME}: spec.serviceCIDR does not parse; pools are not checked against it");
            None
        }
    }
}

/// The server-side apply body of a pool's status.
pub fn status_patch(status: &IPPoolStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": IPPool::api_version(&()),
        "kind": IPPool::kind(&()),
        "status": status,
    })
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

async fn reconcile(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(controllers::IP_POOL);
    let name = pool.name_any();
    let snapshot = ctx.snapshot();
    let assessment = pools::assess(&pool, &snapshot.view());
    if let PoolState::InUse { nodes } = &assessment.state
        && !nodes.is_empty()
        && pool.finalizers().iter().any(|f| f == FINALIZER)
    {
        ctx.write_status(&pool, &assessment).await?;
        debug!(pool = %name, nodes = nodes.len(), "deletion held: nodes still hold blocks of the pool");
        return Ok(Action::requeue(HELD_RECHECK));
    }
    let (ctx, assessment) = (&ctx, &assessment);
    finalizer(&ctx.api, FINALIZER, pool, |event| async move {
        match event {
            FinalizerEvent::Apply(pool) => apply(&pool, ctx, assessment).await,
            FinalizerEvent::Cleanup(pool) => cleanup(&pool, ctx),
        }
    })
    .await
    .map_err(|e| finalizers::into_error(&name, e))
}

/// Writes the pool's status and gauges.
async fn apply(pool: &IPPool, ctx: &Context, assessment: &Assessment) -> Result<Action> {
    ctx.write_status(pool, assessment).await?;
    ctx.metrics
        .set_pool_usage(&pool.name_any(), &assessment.usage);
    Ok(Action::requeue(RESYNC))
}

/// The pool is being deleted and no node holds a block of it: nothing to undo but its
/// gauges. Copes with `apply` never having run.
fn cleanup(pool: &IPPool, ctx: &Context) -> Result<Action> {
    let name = pool.name_any();
    ctx.metrics.forget_pool(&name);
    info!(pool = %name, "no node holds a block of the pool; letting its deletion finish");
    Ok(Action::await_change())
}

fn error_policy(pool: Arc<IPPool>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_failed(controllers::IP_POOL, error.label());
    warn!(pool = %pool.name_any(), error = error.label(), "{error}");
    Action::requeue(error.retry_after())
}

#[cfg(test)]
mod tests {
    use ferrite_crds::conditions::reasons;
    use ferrite_crds::{Cidr, IpAddress, NodeNetworkSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::testing::{ApiServer, Reply, store};

    const POOLS: &str = "/apis/ferrite.dev/v1alpha1/ippools";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

    /// An IPPool as the apiserver returns it: `TestPool::new("a", "10.244.0.0/16").build()`.
    struct TestPool(IPPool);

    impl TestPool {
        fn new(name: &str, cidr: &str) -> Self {
            let mut pool = crate::testing::pool(name, cidr, 26);
            pool.metadata.uid = Some(format!("uid-{name}"));
            pool.metadata.generation = Some(1);
            pool.metadata.resource_version = Some("1".into());
            pool.metadata.creation_timestamp = Some(Time(Timestamp::from_second(100).unwrap()));
            Self(pool)
        }

        fn created(mut self, second: i64) -> Self {
            self.0.metadata.creation_timestamp =
                Some(Time(Timestamp::from_second(second).unwrap()));
            self
        }

        fn finalized(mut self) -> Self {
            self.0.metadata.finalizers = Some(vec![FINALIZER.into()]);
            self
        }

        fn deleting(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(Timestamp::from_second(500).unwrap()));
            self
        }

        fn with_status(mut self, state: &PoolState) -> Self {
            let usage = ferrite_crds::PoolUsage {
                total: 65536,
                allocated: 0,
                blocks: 0,
            };
            self.0.status = Some(pools::desired_status(
                None,
                state,
                usage,
                Some(1),
                Time(Timestamp::from_second(200).unwrap()),
            ));
            self
        }

        fn build(self) -> IPPool {
            self.0
        }
    }

    fn node_network(name: &str, blocks: &[&str]) -> NodeNetwork {
        NodeNetwork::new(
            name,
            NodeNetworkSpec {
                blocks: blocks.iter().map(|b| Cidr((*b).into())).collect(),
                node_ip: IpAddress("172.30.0.11".into()),
                tunnel_endpoint: None,
            },
        )
    }

    fn context(
        server: &ApiServer,
        pools: Vec<IPPool>,
        node_networks: Vec<NodeNetwork>,
    ) -> Arc<Context> {
        let client = server.client();
        Arc::new(Context {
            api: Api::all(client.clone()),
            pools: store(pools),
            nodes: store(vec![]),
            node_networks: store(node_networks),
            cluster_networks: store(vec![]),
            recorder: Recorder::new(client, Reporter::from("ferrite-operator-test")),
            metrics: Arc::new(Metrics::default()),
        })
    }

    fn json(pool: &IPPool) -> serde_json::Value {
        serde_json::to_value(pool).unwrap()
    }

    #[tokio::test]
    async fn a_new_pool_gets_the_finalizer_before_anything_else() {
        let pool = TestPool::new("a", "10.244.0.0/16").build();
        let server = ApiServer::new().expect(
            "PATCH",
            &format!("{POOLS}/a"),
            Reply::Json(
                200,
                json(&TestPool::new("a", "10.244.0.0/16").finalized().build()),
            ),
        );
        let ctx = context(&server, vec![pool.clone()], vec![]);
        let action = reconcile(Arc::new(pool), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.done();
        assert_eq!(
            seen[0].body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
    }

    #[tokio::test]
    async fn an_overlapping_pool_gets_ready_false_by_server_side_apply_and_a_warning_event() {
        let older = TestPool::new("older", "10.244.0.0/16")
            .created(100)
            .finalized()
            .build();
        let newer = TestPool::new("newer", "10.244.0.0/24")
            .created(200)
            .finalized()
            .build();
        let server = ApiServer::new()
            .expect(
                "PATCH",
                &format!("{POOLS}/newer/status"),
                Reply::Json(200, json(&newer)),
            )
            .expect("POST", EVENTS, Reply::Echo(201));
        let ctx = context(&server, vec![older, newer.clone()], vec![]);
        let action = reconcile(Arc::new(newer), ctx).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));

        let seen = server.done();
        assert!(
            seen[0].query.as_deref().is_some_and(
                |q| q.contains("fieldManager=ferrite-operator") && q.contains("force=true")
            ),
            "{:?}",
            seen[0].query
        );
        assert_eq!(
            seen[0].content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        let status = &seen[0].body["status"];
        assert_eq!(seen[0].body["kind"], "IPPool");
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "False");
        assert_eq!(status["conditions"][0]["reason"], reasons::OVERLAP);
        let message = status["conditions"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with("overlaps pool older (10.244.0.0/16), which is older"),
            "{message}"
        );
        assert_eq!(seen[1].body["type"], "Warning");
        assert_eq!(seen[1].body["reason"], "Overlap");
        assert_eq!(seen[1].body["regarding"]["name"], "newer");
    }

    #[tokio::test]
    async fn a_pool_whose_status_is_current_is_not_written() {
        let state = PoolState::Ready {
            overlapped_by: vec![],
        };
        let pool = TestPool::new("a", "10.244.0.0/16")
            .finalized()
            .with_status(&state)
            .build();
        let server = ApiServer::new();
        let ctx = context(&server, vec![pool.clone()], vec![]);
        let action = reconcile(Arc::new(pool), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        assert!(server.done().is_empty());
        assert!(
            ctx.metrics
                .encode()
                .contains(r#"ferrite_operator_ippool_addresses{pool="a"} 65536"#)
        );
    }

    #[tokio::test]
    async fn deleting_a_pool_nodes_still_use_is_held_with_a_condition_naming_them() {
        let pool = TestPool::new("a", "10.244.0.0/16")
            .finalized()
            .deleting()
            .build();
        let server = ApiServer::new()
            .expect(
                "PATCH",
                &format!("{POOLS}/a/status"),
                Reply::Json(200, json(&pool)),
            )
            .expect("POST", EVENTS, Reply::Echo(201));
        let ctx = context(
            &server,
            vec![pool.clone()],
            vec![
                node_network("node2", &["10.244.0.64/26"]),
                node_network("node1", &["10.244.0.0/26"]),
                node_network("elsewhere", &["10.9.0.0/26"]),
            ],
        );
        let action = reconcile(Arc::new(pool), ctx).await.unwrap();
        assert_eq!(action, Action::requeue(HELD_RECHECK));
        let seen = server.done();
        let condition = &seen[0].body["status"]["conditions"][0];
        assert_eq!(condition["status"], "False");
        assert_eq!(condition["reason"], reasons::IN_USE);
        let message = condition["message"].as_str().unwrap();
        assert!(
            message.contains("nodes node1 and node2 still hold blocks"),
            "{message}"
        );
        assert_eq!(seen[1].body["reason"], "DeletionHeld");
    }

    #[tokio::test]
    async fn deleting_a_pool_no_node_uses_removes_the_finalizer() {
        let pool = TestPool::new("a", "10.244.0.0/16")
            .finalized()
            .deleting()
            .build();
        let server = ApiServer::new().expect(
            "PATCH",
            &format!("{POOLS}/a"),
            Reply::Json(200, json(&pool)),
        );
        let ctx = context(
            &server,
            vec![pool.clone()],
            vec![node_network("elsewhere", &["10.9.0.0/26"])],
        );
        ctx.metrics
            .set_pool_usage("a", &ferrite_crds::PoolUsage::default());
        let action = reconcile(Arc::new(pool), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        let seen = server.done();
        assert_eq!(
            seen[0].body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"},
            ])
        );
        assert!(!ctx.metrics.encode().contains(r#"pool="a""#));
    }

    #[tokio::test]
    async fn a_refused_status_write_is_an_error_with_its_label() {
        let pool = TestPool::new("a", "10.244.0.0/16").finalized().build();
        let server = ApiServer::new().expect(
            "PATCH",
            &format!("{POOLS}/a/status"),
            Reply::Status(403, "forbidden"),
        );
        let ctx = context(&server, vec![pool.clone()], vec![]);
        let error = reconcile(Arc::new(pool.clone()), ctx.clone())
            .await
            .unwrap_err();
        assert_eq!(error.label(), "status_write");
        assert!(error.to_string().contains("ippools/status"), "{error}");
        let _ = error_policy(Arc::new(pool), &error, ctx.clone());
        assert!(ctx.metrics.encode().contains(
            r#"ferrite_operator_reconcile_errors_total{controller="ippool",kind="status_write"} 1"#
        ));
        server.done();
    }

    #[test]
    fn long_event_notes_are_cut_on_a_character_boundary() {
        let text = "é".repeat(600);
        let cut = truncate(&text, MAX_NOTE_BYTES);
        assert!(cut.len() <= MAX_NOTE_BYTES);
        assert_eq!(cut.chars().count(), 512);
        assert_eq!(truncate("short", 10), "short");
    }
}
