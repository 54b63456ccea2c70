//! The NodeNetwork controller: every Node gets a NodeNetwork of the same name that it owns
//! (so the garbage collector deletes it with the Node), with the node's address and at least
//! one pod address block. A node's agent networks pods only once it has a block.
//!
//! Shape: [`desired_node_network`] is pure (node, current NodeNetwork, a block chooser →
//! [`Plan`]) and carries the logic; `reconcile` reads, plans and hands the plan to `apply`,
//! which writes. There is no cleanup here: the ownerReference lets the garbage collector
//! delete a NodeNetwork with its Node, and the finalizer [`crate::release::FINALIZER`]
//! (set at creation) keeps it, and its blocks taken, until nothing on the node uses them;
//! [`crate::release`] decides when, as a second controller this module starts.
//!
//! Lifecycle: a new node gets one block; a node whose agent reports its blocks nearly full
//! (`status.blocks`) gets another ([`lifecycle::growth`]); blocks are never taken from a
//! live node. Pools that are disabled, being deleted, or refused for an overlap
//! ([`crate::pools::Overlaps`], the IPPool controller's own rule) give no new block.
//!
//! Inputs: Nodes drive the controller; owned NodeNetworks (their agents' reports too)
//! trigger their Node; a change to an IPPool's or the ClusterNetwork's spec reconciles every
//! Node (a node without a block may now get one). IPPools, the ClusterNetwork, all
//! NodeNetworks and all Nodes (their addresses, for overlaps) are also cached, for the block
//! choice. Nothing here writes an IPPool or a ClusterNetwork.
//!
//! # Never one block for two nodes
//!
//! - One NodeNetwork, two writers: writes are optimistic. A NodeNetwork is created with its
//!   block (the create fails if it exists) or updated by a merge patch carrying the
//!   `resourceVersion` it was planned from (refused with 409 Conflict if anything changed).
//!   The node's own NodeNetwork is read from the apiserver, never from the cache, on every
//!   reconcile, so a plan is never built on a stale copy of the object it writes.
//! - Two NodeNetworks, one free block: the block choice is single-writer. Inside the
//!   process, every choice happens under one lock, over the cache of all NodeNetworks plus
//!   the blocks this process has claimed and the cache does not show yet
//!   ([`crate::claims`]); the controller starts only after every cache has finished its
//!   first list. Across processes, leader election ([`crate::leader`]) runs this controller
//!   in one process at a time; a leader that loses its Lease drops the controller at once.
//!   As a tripwire, every reconcile compares the node's blocks with every other
//!   NodeNetwork's and logs an error naming both if any overlap. It does not take a block
//!   away by itself: that would renumber running pods, so a person decides.

use std::future::{Future, ready};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ferrite_crds::clusternetwork::SINGLETON_NAME;
use ferrite_crds::{Cidr, ClusterNetwork, IPPool, IpAddress, NodeNetwork, NodeNetworkSpec};
use futures::channel::mpsc;
use futures::{FutureExt, Stream, StreamExt};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, predicates, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use tracing::{debug, info, warn};

use crate::blocks::{self, Chosen, NoFreeBlock, NodeView, TakenBlocks};
use crate::claims::Claims;
use crate::lifecycle::{self, Growth};
use crate::metrics::{Metrics, controllers};
use crate::pools::{NodeAddresses, Overlaps};
use crate::release;
use crate::telemetry;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "ferrite-operator";

/// `status.addresses[].type` of the address other nodes reach a node at.
pub const INTERNAL_IP: &str = "InternalIP";
/// `status.addresses[].type` used when a node has no InternalIP.
pub const EXTERNAL_IP: &str = "ExternalIP";

/// How often a node whose NodeNetwork is in order is looked at again, as a safety net for a
/// missed watch event.
const RESYNC: Duration = Duration::from_secs(10 * 60);

/// Why a node could not be reconciled. Each message says what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused a request or could not be reached.
    #[error("cannot {verb} NodeNetwork {name}: {source}")]
    Kube {
        /// What was being done: `read`, `create`, `update`.
        verb: &'static str,
        /// The NodeNetwork's (and Node's) name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The NodeNetwork changed (or appeared) between reading and writing it.
    #[error(
        "NodeNetwork {name} changed while it was being written (its agent updating status, or another writer); it is read again and re-planned"
    )]
    Conflict {
        /// The NodeNetwork's name.
        name: String,
    },
    /// The Node has no usable address yet.
    #[error(
        "node {node} has no InternalIP or ExternalIP in status.addresses yet; its NodeNetwork is created once the kubelet (or the cloud controller manager) reports one"
    )]
    NoNodeAddress {
        /// The Node's name.
        node: String,
    },
    /// The Node has no uid, so nothing can name it as owner.
    #[error(
        "node {node} has no metadata.uid, so its NodeNetwork cannot name it as owner; this object did not come from the apiserver"
    )]
    NodeWithoutUid {
        /// The Node's name.
        node: String,
    },
    /// The NodeNetwork was read without a resourceVersion, so it cannot be updated safely.
    #[error(
        "NodeNetwork {name} has no metadata.resourceVersion, so it cannot be updated without risking a lost write; it is read again"
    )]
    Unversioned {
        /// The NodeNetwork's name.
        name: String,
    },
    /// No pool can give the node a block; names every pool and why.
    #[error(transparent)]
    NoFreeBlock(#[from] NoFreeBlock),
}

/// The result type of this controller.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, stable name for logs and the `kind` label of the error metric.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Conflict { .. } => "conflict",
            Self::NoNodeAddress { .. } => "no_node_address",
            Self::NodeWithoutUid { .. } => "node_without_uid",
            Self::Unversioned { .. } => "unversioned",
            Self::NoFreeBlock(_) => "no_free_block",
        }
    }

    /// How long to wait before reconciling the node again.
    pub fn retry_after(&self) -> Duration {
        match self {
            // Re-read at once: the next plan starts from the winner's write.
            Self::Conflict { .. } | Self::Unversioned { .. } => Duration::from_secs(1),
            Self::Kube { .. } => Duration::from_secs(5),
            // A Node update (its address appearing) triggers a reconcile by itself.
            Self::NoNodeAddress { .. } => Duration::from_secs(30),
            // IPPool and ClusterNetwork changes reconcile every node by themselves.
            Self::NoFreeBlock(_) => Duration::from_secs(60),
            Self::NodeWithoutUid { .. } => RESYNC,
        }
    }
}

/// What to write for one node.
#[derive(Clone, Debug)]
pub enum Plan {
    /// The Node is being deleted; the garbage collector deletes its NodeNetwork after it.
    NodeDeleting,
    /// The NodeNetwork is being deleted; a new one is created once it is gone.
    AwaitDeletion,
    /// The NodeNetwork is as it should be.
    UpToDate,
    /// Create this NodeNetwork, with the block chosen for it.
    Create {
        /// The NodeNetwork to create.
        object: NodeNetwork,
        /// The block it carries.
        claimed: Chosen,
    },
    /// Update the NodeNetwork to this; `object.metadata.resourceVersion` is the version the
    /// plan was made from, and the write is refused if the object has changed since.
    Update {
        /// The NodeNetwork as it should be.
        object: NodeNetwork,
        /// The block added: the NodeNetwork had none, or its blocks are nearly full.
        claimed: Option<Chosen>,
    },
}

/// Plans the NodeNetwork of `node`, given its current one (read from the apiserver).
///
/// Existing blocks are kept, whatever pool they came from and even if that pool is now
/// disabled: running pods hold addresses in them. `choose` is called only when the node
/// has no block, or its agent reports its blocks nearly full ([`lifecycle::growth`]), for
/// one block; it is [`blocks::choose_block`] over the pools and every block handed out.
/// A node that needs another block while no pool has one still gets its other changes
/// written; the next reconcile asks again (and fails with [`Error::NoFreeBlock`]).
pub fn desired_node_network(
    node: &Node,
    current: Option<&NodeNetwork>,
    choose: impl FnOnce(NodeView<'_>) -> Result<Chosen, NoFreeBlock>,
) -> Result<Plan> {
    let name = node.name_any();
    if node.meta().deletion_timestamp.is_some() {
        return Ok(Plan::NodeDeleting);
    }
    if current.is_some_and(|nn| nn.meta().deletion_timestamp.is_some()) {
        return Ok(Plan::AwaitDeletion);
    }
    let node_ip =
        IpAddress::from(node_ip(node).ok_or_else(|| Error::NoNodeAddress { node: name.clone() })?);
    let owner =
        owner_reference(node).ok_or_else(|| Error::NodeWithoutUid { node: name.clone() })?;
    let view = NodeView {
        name: &name,
        labels: node.labels(),
    };

    let Some(current) = current else {
        let claimed = choose(view)?;
        let mut object = NodeNetwork::new(
            &name,
            NodeNetworkSpec {
                blocks: vec![Cidr::from(claimed.block)],
                node_ip,
                tunnel_endpoint: None,
            },
        );
        object.metadata.owner_references = Some(vec![owner]);
        object.metadata.finalizers = Some(vec![release::FINALIZER.to_owned()]);
        return Ok(Plan::Create { object, claimed });
    };

    let owner_references = with_owner(current.owner_references(), owner);
    let mut spec = NodeNetworkSpec {
        node_ip,
        // Not computed yet: kept as it is (issue 5 may derive it from the node).
        tunnel_endpoint: current.spec.tunnel_endpoint.clone(),
        blocks: current.spec.blocks.clone(),
    };
    let changed = spec != current.spec || owner_references.as_slice() != current.owner_references();
    let reported = current
        .status
        .as_ref()
        .map_or(&[][..], |s| s.blocks.as_slice());
    let wants_block = spec.blocks.is_empty()
        || matches!(
            lifecycle::growth(&spec.blocks, reported),
            Growth::Needed { .. }
        );
    let mut claimed = None;
    if wants_block {
        match choose(view) {
            Ok(chosen) => {
                spec.blocks.push(Cidr::from(chosen.block));
                claimed = Some(chosen);
            }
            Err(err) if spec.blocks.is_empty() || !changed => return Err(err.into()),
            // The other changes are written first; the next reconcile asks again.
            Err(_) => {}
        }
    }
    if claimed.is_none() && !changed {
        return Ok(Plan::UpToDate);
    }
    let mut object = current.clone();
    object.spec = spec;
    object.metadata.owner_references = Some(owner_references);
    Ok(Plan::Update { object, claimed })
}

/// The address other nodes reach `node` at: its first InternalIP, else its first ExternalIP.
pub fn node_ip(node: &Node) -> Option<IpAddr> {
    let addresses = node.status.as_ref()?.addresses.as_deref()?;
    let first = |type_: &str| {
        addresses
            .iter()
            .filter(|a| a.type_ == type_)
            .find_map(|a| a.address.parse().ok())
    };
    first(INTERNAL_IP).or_else(|| first(EXTERNAL_IP))
}

/// The ownerReference a NodeNetwork carries to its Node: the controller reference, blocking
/// the Node's foreground deletion until the NodeNetwork is gone.
pub fn owner_reference(node: &Node) -> Option<OwnerReference> {
    Some(OwnerReference {
        block_owner_deletion: Some(true),
        ..node.controller_owner_ref(&())?
    })
}

/// `current` with `ours` as the controller reference. A reference to an earlier Node of the
/// same name (another uid) would let the garbage collector delete the NodeNetwork, and only
/// one reference may be the controller, so both kinds go; other references stay, in place.
fn with_owner(current: &[OwnerReference], ours: OwnerReference) -> Vec<OwnerReference> {
    let mut refs = Vec::with_capacity(current.len() + 1);
    let mut placed = false;
    for r in current {
        if r.uid == ours.uid {
            if !placed {
                refs.push(ours.clone());
                placed = true;
            }
        } else if !(is_node(r) || r.controller == Some(true)) {
            refs.push(r.clone());
        }
    }
    if !placed {
        refs.push(ours);
    }
    refs
}

fn is_node(r: &OwnerReference) -> bool {
    r.api_version == "v1" && r.kind == "Node"
}

/// The merge patch that updates a NodeNetwork to `object`. It carries `resourceVersion`,
/// which makes the apiserver refuse it (409 Conflict) if the object changed since it was
/// read; JSON merge patch replaces lists whole, so `blocks` and `ownerReferences` become
/// exactly what is planned.
pub fn update_patch(object: &NodeNetwork) -> Result<UpdatePatch<'_>> {
    let resource_version =
        object
            .metadata
            .resource_version
            .as_deref()
            .ok_or_else(|| Error::Unversioned {
                name: object.name_any(),
            })?;
    Ok(UpdatePatch {
        metadata: PatchMetadata {
            resource_version,
            owner_references: object.owner_references(),
        },
        spec: &object.spec,
    })
}

/// The body of [`update_patch`].
#[derive(Debug, Serialize)]
pub struct UpdatePatch<'a> {
    metadata: PatchMetadata<'a>,
    spec: &'a NodeNetworkSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PatchMetadata<'a> {
    resource_version: &'a str,
    owner_references: &'a [OwnerReference],
}

/// How the controller runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How many nodes are reconciled at once (0: no limit). Block choices are serialized
    /// regardless; this bounds the requests in flight to the apiserver.
    pub concurrency: u16,
    /// How long the agent of a deleted NodeNetwork may stay silent before its blocks are
    /// released although it last reported addresses in use
    /// ([`lifecycle::DEFAULT_RELEASE_GRACE`]; keep it above the agent's 60 s heartbeat).
    pub release_grace: Duration,
}

/// Runs the controller, and the release controller ([`crate::release`]) whose NodeNetwork
/// cache it shares, until `shutdown` resolves; then lets running reconciles finish.
///
/// The caches of IPPools, the ClusterNetwork and NodeNetworks are filled first (Nodes before
/// the first reconcile): no block is chosen before every block already handed out is known.
/// If a cache cannot list (the CRDs are not installed, or RBAC forbids it), this waits and
/// logs why; `/readyz` says the controller is not running meanwhile.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    metrics.controller_starting(controllers::NODE_NETWORK);
    metrics.controller_starting(controllers::NODE_NETWORK_RELEASE);
    let shutdown = shutdown.shared();
    let recorder = Recorder::new(client.clone(), Reporter::from(FIELD_MANAGER));
    let (pools, pools_writer) = reflector::store::<IPPool>();
    let (cluster_networks, cluster_networks_writer) = reflector::store::<ClusterNetwork>();
    // The release controller's cache of every NodeNetwork is the block choice's, too.
    // NB: managed fields are most of a NodeNetwork's size and nothing here reads them; the
    // cache holds one per Node (the 1,000-node benchmark's memory goal).
    let (node_networks, node_networks_writer) = reflector::store::<NodeNetwork>();
    let node_network_events = watcher(
        Api::<NodeNetwork>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|nn| nn.managed_fields_mut().clear())
    .reflect(node_networks_writer)
    .applied_objects();
    let release_controller = Controller::for_stream(node_network_events, node_networks.clone())
        .graceful_shutdown_on(shutdown.clone());
    let release_context = Arc::new(release::Context {
        api: Api::all(client.clone()),
        grace: settings.release_grace,
        now: Timestamp::now,
        recorder: recorder.clone(),
        metrics: metrics.clone(),
    });
    let releasing = {
        let metrics = metrics.clone();
        async move {
            metrics.controller_running(controllers::NODE_NETWORK_RELEASE);
            release::drive(release_controller, release_context).await;
            metrics.controller_stopped(controllers::NODE_NETWORK_RELEASE);
            info!("NodeNetwork release controller stopped");
        }
    };
    // A spec change to a pool or the ClusterNetwork reconciles every node.
    let (spec_changed, spec_changes) = mpsc::unbounded::<()>();

    let pool_events = watcher(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(pools_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let cluster_network_events = watcher(
        Api::<ClusterNetwork>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={SINGLETON_NAME}")),
    )
    .default_backoff()
    .reflect(cluster_networks_writer)
    .applied_objects()
    .predicate_filter(predicates::generation, PredicateConfig::default());
    let caches = futures::future::join(
        forward("IPPool", pool_events, spec_changed.clone()),
        forward("ClusterNetwork", cluster_network_events, spec_changed),
    );

    let controller = {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        async move {
            info!("filling the IPPool, ClusterNetwork and NodeNetwork caches");
            let filled = futures::future::try_join3(
                pools.wait_until_ready(),
                cluster_networks.wait_until_ready(),
                node_networks.wait_until_ready(),
            );
            tokio::select! {
                filled = filled => if filled.is_err() {
                    warn!("a cache stopped before it was filled; not reconciling");
                    return;
                },
                () = shutdown.clone() => return,
            }
            info!(
                pools = pools.len(),
                node_networks = node_networks.len(),
                "caches filled; reconciling nodes"
            );
            // Only what block choice reads is cached of each Node (see `strip_node`).
            let (nodes, nodes_writer) = reflector::store::<Node>();
            let node_events = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .modify(strip_node)
                .reflect(nodes_writer)
                .applied_objects();
            let controller = Controller::for_stream(node_events, nodes);
            let context = Arc::new(Context {
                api: Api::all(client.clone()),
                pools,
                cluster_networks,
                node_networks,
                // Filled before the first reconcile: the controller waits for its cache.
                nodes: controller.store(),
                claims: Mutex::new(Claims::new()),
                recorder,
                metrics: metrics.clone(),
            });
            metrics.controller_running(controllers::NODE_NETWORK);
            controller
                .owns(Api::<NodeNetwork>::all(client), watcher::Config::default())
                .reconcile_all_on(spec_changes)
                .with_config(controller::Config::default().concurrency(settings.concurrency))
                .graceful_shutdown_on(shutdown)
                .run(
                    telemetry::traced(controllers::NODE_NETWORK, reconcile),
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
    // The caches never finish on their own; they stop when the controllers have.
    let running = futures::future::join(controller, releasing);
    tokio::select! {
        _ = running => info!("NodeNetwork controller stopped"),
        _ = caches => warn!("the caches stopped"),
    }
    metrics.controller_stopped(controllers::NODE_NETWORK);
    metrics.controller_stopped(controllers::NODE_NETWORK_RELEASE);
}

/// Keeps of a Node what the NodeNetwork controller reads: its metadata but managed fields
/// and annotations (labels are matched by pools' nodeSelectors) and its addresses. A large
/// cluster's Nodes carry images and conditions that would otherwise fill the cache.
pub(crate) fn strip_node(node: &mut Node) {
    node.managed_fields_mut().clear();
    node.annotations_mut().clear();
    node.spec = None;
    if let Some(status) = node.status.as_mut() {
        *status = k8s_openapi::api::core::v1::NodeStatus {
            addresses: status.addresses.take(),
            ..Default::default()
        };
    }
}

/// Drives a cache's watch, logging its errors, and signals `changed` on every event.
pub(crate) async fn forward<K>(
    kind: &'static str,
    events: impl Stream<Item = Result<K, watcher::Error>>,
    changed: mpsc::UnboundedSender<()>,
) {
    events
        .for_each(|event| {
            match event {
                Ok(_) => {
                    if changed.unbounded_send(()).is_err() {
                        debug!(kind, "controller stopped; change not forwarded");
                    }
                }
                Err(error) => warn!(
                    kind,
                    %error,
                    "cannot watch {kind}s; retrying with backoff. Check that Ferrite's CRDs are installed (kubectl get crds | grep ferrite.dev; install them with kubectl apply -f crds/yaml/all.yaml) and that the operator's RBAC lets it list and watch {kind}s"
                ),
            }
            ready(())
        })
        .await;
}

fn log_outcome(
    result: Result<(ObjectRef<Node>, Action), controller::Error<Error, watcher::Error>>,
) {
    match result {
        Ok((node, _)) => debug!(node = %node.name, "reconciled"),
        // Logged by error_policy, with the node's name.
        Err(controller::Error::ReconcilerFailed(..)) => {}
        // A node deleted while its reconcile was queued: nothing to do.
        Err(error @ controller::Error::ObjectNotFound(_)) => debug!(%error, "skipped"),
        Err(error) => warn!(%error, "controller error"),
    }
}

/// What every reconcile shares.
struct Context {
    api: Api<NodeNetwork>,
    pools: Store<IPPool>,
    cluster_networks: Store<ClusterNetwork>,
    node_networks: Store<NodeNetwork>,
    /// Every Node, for the addresses no pool may contain.
    nodes: Store<Node>,
    /// Held across a whole block choice: see the module docs.
    claims: Mutex<Claims>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
}

impl Context {
    /// Chooses a block for `node` and claims it, under the one allocation lock.
    fn choose_block(&self, node: NodeView<'_>) -> Result<Chosen, NoFreeBlock> {
        // A panic elsewhere while holding the lock leaves the claims consistent (every
        // mutation is a single map operation), so a poisoned lock is still usable.
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.prune(|claimant, block| {
            self.node_networks
                .get(&ObjectRef::new(claimant))
                .is_some_and(|nn| parsed_blocks(&nn).any(|b| b == block))
        });
        let mut taken: TakenBlocks = self
            .node_networks
            .state()
            .iter()
            .flat_map(|nn| parsed_blocks(nn).collect::<Vec<_>>())
            .collect();
        taken.extend(claims.blocks());
        let cluster_network = self.cluster_networks.get(&ObjectRef::new(SINGLETON_NAME));
        let listed = cluster_network
            .as_ref()
            .map(|cn| cn.spec.ip_pools.clone())
            .unwrap_or_default();
        let service_cidr = cluster_network.and_then(|cn| cn.spec.service_cidr.net().ok());
        let nodes: Vec<NodeAddresses> = self
            .nodes
            .state()
            .iter()
            .map(|n| NodeAddresses::of(n))
            .collect();
        let pools = self.pools.state();
        let overlaps = Overlaps::detect(pools.iter().map(Arc::as_ref), service_cidr, &nodes);
        let chosen = blocks::choose_block(
            pools.iter().map(Arc::as_ref),
            &listed,
            &overlaps,
            &taken,
            node,
        )?;
        claims.claim(chosen.block, node.name);
        Ok(chosen)
    }

    /// Ends the claim on a block whose write the apiserver refused: nothing was written.
    /// A write that failed without an answer may have happened, so its claim stays.
    fn settle<T>(&self, claimed: &Chosen, node: &str, written: &Result<T, kube::Error>) {
        if let Err(kube::Error::Api(_)) = written {
            self.claims
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(claimed.block, node);
        }
    }

    /// Logs an error for every block of `current` that another NodeNetwork also holds.
    fn report_overlaps(&self, current: &NodeNetwork) {
        let name = current.name_any();
        let ours: Vec<IpNet> = parsed_blocks(current).collect();
        if ours.is_empty() {
            return;
        }
        let all = self.node_networks.state();
        let others = all.iter().flat_map(|nn| {
            let other = nn.meta().name.as_deref().unwrap_or_default();
            parsed_blocks(nn).map(move |block| (other, block))
        });
        for overlap in blocks::overlaps_with_others(&name, &ours, others) {
            tracing::error!(
                node = %name,
                block = %overlap.block,
                other = %overlap.other,
                other_block = %overlap.other_block,
                "NodeNetworks {name} and {} hold overlapping blocks ({} and {}), so two nodes may hand out the same pod addresses. This happens when more than one operator writes (several processes with --leader-elect=false) or after a hand edit. To fix: drain the node whose pods should move, delete its NodeNetwork, and the operator gives it a new block",
                overlap.other,
                overlap.block,
                overlap.other_block,
            );
        }
    }
}

impl Context {
    /// Counts a block added to `nn` and records an Event on it; a failed Event is logged.
    async fn block_added(&self, nn: &NodeNetwork, chosen: &Chosen) {
        self.metrics.block_added();
        let why = if nn.spec.blocks.len() > 1 {
            "its blocks were nearly full"
        } else {
            "its first block"
        };
        let event = Event {
            type_: EventType::Normal,
            reason: "BlockAdded".to_owned(),
            note: Some(format!(
                "block {} of pool {} assigned to node {} ({why}); it holds {} block(s)",
                chosen.block,
                chosen.pool,
                nn.name_any(),
                nn.spec.blocks.len()
            )),
            action: "Assign".to_owned(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &nn.object_ref(&())).await {
            warn!(node = %nn.name_any(), %error, "cannot record an Event (RBAC: events.k8s.io events create, patch)");
        }
    }
}

/// The blocks of `nn` that parse; the others are logged and ignored (the apiserver refuses
/// them, so only an object written under an older schema has one).
fn parsed_blocks(nn: &NodeNetwork) -> impl Iterator<Item = IpNet> + '_ {
    nn.spec
        .blocks
        .iter()
        .filter_map(move |cidr| match cidr.net() {
            Ok(block) => Some(block),
            Err(error) => {
                warn!(node_network = %nn.name_any(), %error, "ignoring a block that is not a CIDR");
                None
            }
        })
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer(controllers::NODE_NETWORK);
    let name = node.name_any();
    let current = ctx.api.get_opt(&name).await.map_err(|source| Error::Kube {
        verb: "read",
        name: name.clone(),
        source,
    })?;
    if let Some(current) = &current {
        ctx.report_overlaps(current);
    }
    let plan = desired_node_network(&node, current.as_ref(), |view| ctx.choose_block(view))?;
    apply(&ctx, name, plan).await
}

async fn apply(ctx: &Context, name: String, plan: Plan) -> Result<Action> {
    let post = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let patch = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match plan {
        Plan::NodeDeleting | Plan::AwaitDeletion => Ok(Action::await_change()),
        Plan::UpToDate => Ok(Action::requeue(RESYNC)),
        Plan::Create { object, claimed } => {
            let written = ctx.api.create(&post, &object).await;
            ctx.settle(&claimed, &name, &written);
            match written {
                Ok(created) => {
                    info!(node = %name, block = %claimed.block, pool = %claimed.pool, "created NodeNetwork with a pod address block");
                    ctx.block_added(&created, &claimed).await;
                    Ok(Action::requeue(RESYNC))
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => {
                    Err(Error::Conflict { name })
                }
                Err(source) => Err(Error::Kube {
                    verb: "create",
                    name,
                    source,
                }),
            }
        }
        Plan::Update { object, claimed } => {
            let body = update_patch(&object)?;
            let written = ctx.api.patch(&name, &patch, &Patch::Merge(&body)).await;
            if let Some(claimed) = &claimed {
                ctx.settle(claimed, &name, &written);
            }
            match written {
                Ok(updated) => {
                    match &claimed {
                        Some(c) => {
                            info!(node = %name, block = %c.block, pool = %c.pool, blocks = updated.spec.blocks.len(), "added a pod address block to NodeNetwork");
                            ctx.block_added(&updated, c).await;
                        }
                        None => {
                            info!(node = %name, node_ip = %object.spec.node_ip, "updated NodeNetwork");
                        }
                    }
                    Ok(Action::requeue(RESYNC))
                }
                Err(kube::Error::Api(status)) if status.is_conflict() => {
                    Err(Error::Conflict { name })
                }
                Err(source) => Err(Error::Kube {
                    verb: "update",
                    name,
                    source,
                }),
            }
        }
    }
}

fn error_policy(node: Arc<Node>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = node.name_any();
    let label = error.label();
    ctx.metrics
        .reconcile_failed(controllers::NODE_NETWORK, label);
    match error {
        Error::Conflict { .. } => debug!(node = %name, error = label, "{error}"),
        Error::NoNodeAddress { .. } => info!(node = %name, error = label, "{error}"),
        _ => warn!(node = %name, error = label, "{error}"),
    }
    Action::requeue(error.retry_after())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    /// A Node fixture: `TestNode::new("node1").internal_ip("172.30.0.11").build()`.
    struct TestNode(Node);

    impl TestNode {
        fn new(name: &str) -> Self {
            Self(Node {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    uid: Some(format!("uid-{name}")),
                    ..ObjectMeta::default()
                },
                spec: None,
                status: Some(NodeStatus::default()),
            })
        }

        fn address(mut self, type_: &str, address: &str) -> Self {
            let status = self.0.status.get_or_insert_with(NodeStatus::default);
            status
                .addresses
                .get_or_insert_with(Vec::new)
                .push(NodeAddress {
                    type_: type_.into(),
                    address: address.into(),
                });
            self
        }

        fn internal_ip(self, address: &str) -> Self {
            self.address(INTERNAL_IP, address)
        }

        fn label(mut self, key: &str, value: &str) -> Self {
            self.0
                .metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(key.into(), value.into());
            self
        }

        fn uid(mut self, uid: &str) -> Self {
            self.0.metadata.uid = Some(uid.into());
            self
        }

        fn deleting(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
            self
        }

        fn build(self) -> Node {
            self.0
        }
    }

    /// A NodeNetwork as the apiserver returns it, owned by `node`.
    fn current(node: &Node, node_ip: &str, blocks: &[&str]) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            &node.name_any(),
            NodeNetworkSpec {
                blocks: blocks.iter().map(|b| Cidr((*b).into())).collect(),
                node_ip: IpAddress(node_ip.into()),
                tunnel_endpoint: None,
            },
        );
        nn.metadata.resource_version = Some("42".into());
        nn.metadata.uid = Some("nn-uid".into());
        nn.metadata.owner_references = Some(vec![owner_reference(node).unwrap()]);
        nn
    }

    fn pool(name: &str, cidr: &str) -> IPPool {
        crate::testing::pool(name, cidr, 26)
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// Chooses from `pools` with `taken` handed out, as the controller does.
    fn from_pools<'a>(
        pools: &'a [IPPool],
        taken: &'a TakenBlocks,
    ) -> impl FnOnce(NodeView<'_>) -> Result<Chosen, NoFreeBlock> + 'a {
        move |node| blocks::choose_block(pools, &[], &Overlaps::none(), taken, node)
    }

    /// A chooser for plans that must not choose.
    fn never(node: NodeView<'_>) -> Result<Chosen, NoFreeBlock> {
        panic!("no block should be chosen for {}", node.name)
    }

    fn default_pool() -> Vec<IPPool> {
        vec![pool("default-ipv4", "10.244.0.0/16")]
    }

    #[test]
    fn a_new_node_gets_a_node_network_it_owns_with_its_address_and_the_first_free_block() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let pools = default_pool();
        let taken: TakenBlocks = [net("10.244.0.0/26")].into_iter().collect();

        let Plan::Create { object, claimed } =
            desired_node_network(&node, None, from_pools(&pools, &taken)).unwrap()
        else {
            panic!("expected a create");
        };
        assert_eq!(object.name_any(), "node1");
        assert_eq!(object.spec.node_ip, IpAddress("172.30.0.11".into()));
        assert_eq!(object.spec.blocks, [Cidr("10.244.0.64/26".into())]);
        assert_eq!(object.spec.tunnel_endpoint, None);
        assert_eq!(object.finalizers(), [release::FINALIZER]);
        assert_eq!(
            claimed,
            Chosen {
                pool: "default-ipv4".into(),
                block: net("10.244.0.64/26")
            }
        );
        assert_eq!(
            object.owner_references(),
            [OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: "node1".into(),
                uid: "uid-node1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]
        );
    }

    #[test]
    fn the_first_internal_ip_wins_and_an_external_ip_is_the_fallback() {
        let node = TestNode::new("n")
            .address(EXTERNAL_IP, "203.0.113.5")
            .internal_ip("172.30.0.11")
            .internal_ip("fd00::11")
            .build();
        assert_eq!(node_ip(&node), Some("172.30.0.11".parse().unwrap()));
        let external_only = TestNode::new("n")
            .address("Hostname", "n")
            .address(EXTERNAL_IP, "203.0.113.5")
            .build();
        assert_eq!(
            node_ip(&external_only),
            Some("203.0.113.5".parse().unwrap())
        );
    }

    #[test]
    fn a_node_without_an_address_is_an_error_that_says_what_it_waits_for() {
        let node = TestNode::new("node1").address("Hostname", "node1").build();
        let err = desired_node_network(&node, None, never).unwrap_err();
        assert!(matches!(err, Error::NoNodeAddress { .. }), "{err}");
        assert!(err.to_string().contains("once the kubelet"), "{err}");
    }

    #[test]
    fn an_up_to_date_node_network_needs_no_write_and_no_block() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = current(&node, "172.30.0.11", &["10.244.0.0/26"]);
        let plan = desired_node_network(&node, Some(&nn), never).unwrap();
        assert!(matches!(plan, Plan::UpToDate), "{plan:?}");
    }

    #[test]
    fn existing_blocks_are_kept_when_the_node_address_changes() {
        let node = TestNode::new("node1").internal_ip("172.30.0.99").build();
        let nn = current(&node, "172.30.0.11", &["10.244.0.0/26", "10.9.0.0/26"]);
        let Plan::Update { object, claimed } =
            desired_node_network(&node, Some(&nn), never).unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(claimed, None);
        assert_eq!(object.spec.node_ip, IpAddress("172.30.0.99".into()));
        assert_eq!(object.spec.blocks, nn.spec.blocks);
        assert_eq!(object.metadata.resource_version.as_deref(), Some("42"));
    }

    #[test]
    fn a_node_network_without_blocks_gets_one() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = current(&node, "172.30.0.11", &[]);
        let pools = default_pool();
        let taken = TakenBlocks::new();
        let Plan::Update { object, claimed } =
            desired_node_network(&node, Some(&nn), from_pools(&pools, &taken)).unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(object.spec.blocks, [Cidr("10.244.0.0/26".into())]);
        assert_eq!(claimed.map(|c| c.block), Some(net("10.244.0.0/26")));
    }

    /// `nn` with its agent reporting `(block, allocated, capacity)`.
    fn reporting(mut nn: NodeNetwork, reported: &[(&str, u32, u32)]) -> NodeNetwork {
        nn.status = Some(ferrite_crds::NodeNetworkStatus {
            blocks: reported
                .iter()
                .map(|(cidr, allocated, capacity)| ferrite_crds::BlockUsage {
                    cidr: Cidr((*cidr).into()),
                    allocated: *allocated,
                    capacity: *capacity,
                })
                .collect(),
            ..ferrite_crds::NodeNetworkStatus::default()
        });
        nn
    }

    #[test]
    fn a_node_whose_blocks_are_nearly_full_gets_another() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = reporting(
            current(&node, "172.30.0.11", &["10.244.0.0/26"]),
            &[("10.244.0.0/26", 55, 62)],
        );
        let pools = default_pool();
        let taken: TakenBlocks = [net("10.244.0.0/26")].into_iter().collect();
        let Plan::Update { object, claimed } =
            desired_node_network(&node, Some(&nn), from_pools(&pools, &taken)).unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(
            object.spec.blocks,
            [Cidr("10.244.0.0/26".into()), Cidr("10.244.0.64/26".into())]
        );
        assert_eq!(claimed.map(|c| c.block), Some(net("10.244.0.64/26")));
        assert_eq!(object.metadata.resource_version.as_deref(), Some("42"));
    }

    #[test]
    fn a_node_with_room_to_spare_or_an_unreported_block_gets_none() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let roomy = reporting(
            current(&node, "172.30.0.11", &["10.244.0.0/26"]),
            &[("10.244.0.0/26", 54, 62)],
        );
        assert!(matches!(
            desired_node_network(&node, Some(&roomy), never).unwrap(),
            Plan::UpToDate
        ));
        // Full, but the block added last has not been reported yet.
        let waiting = reporting(
            current(&node, "172.30.0.11", &["10.244.0.0/26", "10.244.0.64/26"]),
            &[("10.244.0.0/26", 62, 62)],
        );
        assert!(matches!(
            desired_node_network(&node, Some(&waiting), never).unwrap(),
            Plan::UpToDate
        ));
    }

    #[test]
    fn a_full_node_with_no_free_block_anywhere_still_gets_its_other_changes() {
        let node = TestNode::new("node1").internal_ip("172.30.0.99").build();
        let pools = default_pool();
        let taken: TakenBlocks = [net("10.244.0.0/16")].into_iter().collect();
        let full = reporting(
            current(&node, "172.30.0.11", &["10.244.0.0/26"]),
            &[("10.244.0.0/26", 62, 62)],
        );
        let Plan::Update { object, claimed } =
            desired_node_network(&node, Some(&full), from_pools(&pools, &taken)).unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(claimed, None);
        assert_eq!(object.spec.node_ip, IpAddress("172.30.0.99".into()));
        // Once the address is written, the missing block is an error that names the pool.
        let mut written = full;
        written.spec.node_ip = IpAddress("172.30.0.99".into());
        let err =
            desired_node_network(&node, Some(&written), from_pools(&pools, &taken)).unwrap_err();
        assert!(matches!(err, Error::NoFreeBlock(_)), "{err}");
    }

    #[test]
    fn the_pool_choice_sees_the_node_labels() {
        let node = TestNode::new("node1")
            .internal_ip("172.30.0.11")
            .label("zone", "b")
            .build();
        let mut zone_a = pool("zone-a", "10.1.0.0/16");
        zone_a.spec.node_selector = Some(
            serde_json::from_value(serde_json::json!({"matchLabels": {"zone": "a"}})).unwrap(),
        );
        let pools = [zone_a, pool("zone-any", "10.2.0.0/16")];
        let taken = TakenBlocks::new();
        let Plan::Create { claimed, .. } =
            desired_node_network(&node, None, from_pools(&pools, &taken)).unwrap()
        else {
            panic!("expected a create");
        };
        assert_eq!(claimed.pool, "zone-any");
    }

    #[test]
    fn no_free_block_is_an_error_naming_the_pools_and_nothing_is_created() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let pools = default_pool();
        let taken: TakenBlocks = [net("10.244.0.0/16")].into_iter().collect();
        let err = desired_node_network(&node, None, from_pools(&pools, &taken)).unwrap_err();
        assert!(matches!(err, Error::NoFreeBlock(_)), "{err}");
        assert!(
            err.to_string().contains("pool default-ipv4 is exhausted"),
            "{err}"
        );
    }

    #[test]
    fn an_owner_reference_to_an_earlier_node_of_the_same_name_is_replaced() {
        let old = TestNode::new("node1").uid("old-uid").build();
        let node = TestNode::new("node1")
            .uid("new-uid")
            .internal_ip("172.30.0.11")
            .build();
        let mut nn = current(&old, "172.30.0.11", &["10.244.0.0/26"]);
        let unrelated = OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Audit".into(),
            name: "a".into(),
            uid: "audit-uid".into(),
            controller: None,
            block_owner_deletion: None,
        };
        nn.metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(unrelated.clone());

        let Plan::Update { object, .. } = desired_node_network(&node, Some(&nn), never).unwrap()
        else {
            panic!("expected an update");
        };
        assert_eq!(
            object.owner_references(),
            [unrelated, owner_reference(&node).unwrap()]
        );
        assert_eq!(object.spec.blocks, nn.spec.blocks);
    }

    #[test]
    fn our_owner_reference_keeps_its_place_so_a_reconcile_is_stable() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let mut nn = current(&node, "172.30.0.11", &["10.244.0.0/26"]);
        let other = OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Audit".into(),
            name: "a".into(),
            uid: "audit-uid".into(),
            controller: None,
            block_owner_deletion: None,
        };
        nn.metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(other);
        let plan = desired_node_network(&node, Some(&nn), never).unwrap();
        assert!(matches!(plan, Plan::UpToDate), "{plan:?}");
    }

    #[test]
    fn deleting_nodes_and_node_networks_are_left_to_the_garbage_collector() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11");
        let gone = node.deleting().build();
        assert!(matches!(
            desired_node_network(&gone, None, never).unwrap(),
            Plan::NodeDeleting
        ));
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let mut nn = current(&node, "172.30.0.11", &[]);
        nn.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(matches!(
            desired_node_network(&node, Some(&nn), never).unwrap(),
            Plan::AwaitDeletion
        ));
    }

    #[test]
    fn the_update_patch_carries_the_resource_version_it_was_planned_from() {
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = current(&node, "172.30.0.11", &["10.244.0.0/26"]);
        let body = serde_json::to_value(update_patch(&nn).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "metadata": {
                    "resourceVersion": "42",
                    "ownerReferences": [{
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": "node1",
                        "uid": "uid-node1",
                        "controller": true,
                        "blockOwnerDeletion": true,
                    }],
                },
                "spec": {"blocks": ["10.244.0.0/26"], "nodeIP": "172.30.0.11"},
            })
        );
        let mut unversioned = nn;
        unversioned.metadata.resource_version = None;
        assert!(matches!(
            update_patch(&unversioned),
            Err(Error::Unversioned { .. })
        ));
    }

    /// The controller's context over caches holding `pools`, `node_networks` and `nodes`.
    fn context(
        server: &crate::testing::ApiServer,
        pools: Vec<IPPool>,
        node_networks: Vec<NodeNetwork>,
        nodes: Vec<Node>,
    ) -> Arc<Context> {
        use crate::testing::store;
        let client = server.client();
        Arc::new(Context {
            api: Api::all(client.clone()),
            pools: store(pools),
            cluster_networks: store(vec![]),
            node_networks: store(node_networks),
            nodes: store(nodes),
            claims: Mutex::new(Claims::new()),
            recorder: Recorder::new(client, Reporter::from("ferrite-operator-test")),
            metrics: Arc::new(Metrics::default()),
        })
    }

    const NODE1: &str = "/apis/ferrite.dev/v1alpha1/nodenetworks/node1";

    #[tokio::test]
    async fn a_nearly_full_node_gets_a_block_by_a_versioned_merge_patch_and_an_event() {
        use crate::testing::{ApiServer, Reply};
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = reporting(
            current(&node, "172.30.0.11", &["10.244.0.0/26"]),
            &[("10.244.0.0/26", 60, 62)],
        );
        let mut grown = nn.clone();
        grown.spec.blocks.push(Cidr("10.244.0.64/26".into()));
        let server = ApiServer::new()
            .expect(
                "GET",
                NODE1,
                Reply::Json(200, serde_json::to_value(&nn).unwrap()),
            )
            .expect(
                "PATCH",
                NODE1,
                Reply::Json(200, serde_json::to_value(&grown).unwrap()),
            )
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/default/events",
                Reply::Echo(201),
            );
        let ctx = context(&server, default_pool(), vec![nn], vec![node.clone()]);

        let action = reconcile(Arc::new(node), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        let seen = server.done();
        assert_eq!(
            seen[1].content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(seen[1].body["metadata"]["resourceVersion"], "42");
        assert_eq!(
            seen[1].body["spec"]["blocks"],
            serde_json::json!(["10.244.0.0/26", "10.244.0.64/26"])
        );
        assert_eq!(seen[2].body["reason"], "BlockAdded");
        assert!(
            seen[2].body["note"]
                .as_str()
                .unwrap()
                .contains("block 10.244.0.64/26 of pool default-ipv4"),
            "{}",
            seen[2].body
        );
        // The block stays claimed until the cache shows it.
        assert_eq!(ctx.claims.lock().unwrap().len(), 1);
        assert!(
            ctx.metrics
                .encode()
                .contains("ferrite_operator_node_blocks_added_total 1")
        );
    }

    #[tokio::test]
    async fn a_write_refused_for_a_conflict_drops_its_claim_and_is_retried() {
        use crate::testing::{ApiServer, Reply};
        let node = TestNode::new("node1").internal_ip("172.30.0.11").build();
        let nn = current(&node, "172.30.0.11", &[]);
        let server = ApiServer::new()
            .expect(
                "GET",
                NODE1,
                Reply::Json(200, serde_json::to_value(&nn).unwrap()),
            )
            .expect(
                "PATCH",
                NODE1,
                Reply::Status(409, "the object has been modified"),
            );
        let ctx = context(&server, default_pool(), vec![nn], vec![node.clone()]);

        let err = reconcile(Arc::new(node.clone()), ctx.clone())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Conflict { .. }), "{err}");
        assert!(ctx.claims.lock().unwrap().is_empty());
        assert_eq!(
            error_policy(Arc::new(node), &err, ctx.clone()),
            Action::requeue(Duration::from_secs(1))
        );
        assert!(ctx.metrics.encode().contains(
            r#"ferrite_operator_reconcile_errors_total{controller="nodenetwork",kind="conflict"} 1"#
        ));
        server.done();
    }

    #[tokio::test]
    async fn a_pool_holding_a_node_address_gives_no_block_and_nothing_is_written() {
        use crate::testing::{ApiServer, Reply};
        // The node's own address lies in the only pool: the overlap rule refuses the pool.
        let node = TestNode::new("node1").internal_ip("10.244.7.7").build();
        let server =
            ApiServer::new().expect("GET", NODE1, Reply::Status(404, "nodenetworks not found"));
        let ctx = context(&server, default_pool(), vec![], vec![node.clone()]);

        let err = reconcile(Arc::new(node), ctx).await.unwrap_err();
        assert!(matches!(err, Error::NoFreeBlock(_)), "{err}");
        assert!(
            err.to_string().contains(
                "pool default-ipv4 is refused: it overlaps the address of node node1 (10.244.7.7)"
            ),
            "{err}"
        );
        server.done();
    }

    #[test]
    fn a_lost_write_race_is_retried_at_once() {
        let conflict = Error::Conflict { name: "n".into() };
        assert_eq!(conflict.retry_after(), Duration::from_secs(1));
        assert_eq!(conflict.label(), "conflict");
    }
}
