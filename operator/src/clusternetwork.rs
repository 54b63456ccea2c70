//! The ClusterNetwork controller: applies the node side ([`agentset`]) with server-side apply
//! and reports the rollout ([`rollout`]) in the singleton's status.
//!
//! Reconciles `clusternetwork/default` when it changes, when the agent DaemonSet changes,
//! when any NodeNetwork (an agent's report) or Node changes, and every [`RESYNC`] (an agent
//! that stops reporting changes nothing to watch). Writes only objects it owns and the
//! ClusterNetwork's status and finalizer, never its spec. While the ClusterNetwork is being
//! deleted it uninstalls Ferrite from the nodes ([`teardown`]) before letting it go.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrite_crds::clusternetwork::SINGLETON_NAME;
use ferrite_crds::conditions;
use ferrite_crds::{ClusterNetwork, NodeNetwork};
use futures::channel::mpsc;
use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::agentset::{self, AGENT_NAME, AgentDefaults, CLEANUP_NAME};
use crate::metrics::{Metrics, controllers};
use crate::nodenetwork::forward;
use crate::rollout::{self, AgentReport, DaemonSetView, NodeView, Observed};
use crate::teardown::{self, FINALIZER, Step};
use crate::telemetry;

/// Field manager of every write of this controller.
pub const FIELD_MANAGER: &str = "ferrite-operator";

/// Reconcile this often even when nothing changes: agents that go silent are noticed.
pub const RESYNC: Duration = Duration::from_secs(30);

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the ClusterNetwork's status failed.
    #[error("writing the status of clusternetwork/{SINGLETON_NAME}: {0}")]
    Status(#[source] kube::Error),
    /// The object was not read from the apiserver.
    #[error(transparent)]
    Render(#[from] agentset::MissingMetadata),
    /// Adding or removing the finalizer failed.
    #[error(
        "cannot {verb} the finalizer {FINALIZER} of clusternetwork/{SINGLETON_NAME}: {source}. It is \
         retried; the operator's RBAC must allow patch on clusternetworks"
    )]
    Finalizer {
        /// `add` or `remove`.
        verb: &'static str,
        /// The apiserver's answer.
        #[source]
        source: kube::Error,
    },
    /// A step of the uninstall (deleting the agents, starting the cleanup) failed.
    #[error("uninstalling from the nodes: {0}. It is retried")]
    Teardown(String),
}

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the agent runs and which image it gets by default.
    pub agent: AgentDefaults,
    /// Who publishes Events (the operator's pod name).
    pub instance: Option<String>,
}

struct Context {
    client: Client,
    settings: Settings,
    nodes: Store<Node>,
    node_networks: Store<NodeNetwork>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// What was applied last: the ClusterNetwork's uid and generation, and when.
    applied: std::sync::Mutex<Option<(String, i64, std::time::Instant)>>,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    metrics.controller_starting(controllers::CLUSTER_NETWORK);
    let shutdown = shutdown.shared();
    let (nodes, nodes_writer) = reflector::store::<Node>();
    let (node_networks, node_networks_writer) = reflector::store::<NodeNetwork>();
    let (changed, changes) = mpsc::unbounded::<()>();
    let node_events = watcher(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    // NB: only names and creation times are read; the cache holds one Node per node.
    .modify(|node: &mut Node| {
        node.metadata.managed_fields = None;
        node.metadata.annotations = None;
        node.metadata.labels = None;
        node.spec = None;
        node.status = None;
    })
    .reflect(nodes_writer)
    .touched_objects();
    let node_network_events = watcher(
        Api::<NodeNetwork>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    // NB: only the agent's report is read.
    .modify(|nn: &mut NodeNetwork| nn.metadata.managed_fields = None)
    .reflect(node_networks_writer)
    .touched_objects();
    let caches = futures::future::join(
        forward("Node", node_events, changed.clone()),
        forward("NodeNetwork", node_network_events, changed),
    );

    let namespace = settings.agent.namespace.clone();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "ferrite-operator".into(),
            instance: settings.instance.clone(),
        },
    );
    let controller = {
        let shutdown = shutdown.clone();
        let client = client.clone();
        let metrics = metrics.clone();
        async move {
            let filled = futures::future::try_join(
                nodes.wait_until_ready(),
                node_networks.wait_until_ready(),
            );
            tokio::select! {
                filled = filled => if filled.is_err() {
                    warn!("a cache stopped before it was filled; not reconciling the ClusterNetwork");
                    return;
                },
                () = shutdown.clone() => return,
            }
            let context = Arc::new(Context {
                client: client.clone(),
                settings,
                nodes,
                node_networks,
                recorder,
                metrics: metrics.clone(),
                applied: std::sync::Mutex::new(None),
            });
            metrics.controller_running(controllers::CLUSTER_NETWORK);
            Controller::new(
                Api::<ClusterNetwork>::all(client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={SINGLETON_NAME}")),
            )
            .owns(
                Api::<DaemonSet>::namespaced(client, &namespace),
                watcher::Config::default().labels(&format!("app.kubernetes.io/name={AGENT_NAME}")),
            )
            .reconcile_all_on(changes)
            // Many agents report at once during a rollout: one status write for the burst.
            .with_config(controller::Config::default().debounce(Duration::from_millis(500)))
            .graceful_shutdown_on(shutdown)
            .run(
                telemetry::traced(controllers::CLUSTER_NETWORK, reconcile),
                error_policy,
                context,
            )
            .for_each(|result| {
                match result {
                    Ok((object, _)) => debug!(name = %object.name, "reconciled"),
                    Err(e) => debug!("{e}"),
                }
                futures::future::ready(())
            })
            .await;
        }
    };
    tokio::select! {
        () = controller => info!("ClusterNetwork controller stopped"),
        _ = caches => warn!("the Node and NodeNetwork caches stopped"),
    }
    metrics.controller_stopped(controllers::CLUSTER_NETWORK);
}

async fn apply<K>(api: Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Applies the node side and remembers it for [`needs_apply`]; the DaemonSet as the
/// apiserver returned it.
async fn apply_agent(ctx: &Context, cn: &ClusterNetwork) -> Result<DaemonSet, String> {
    let objects = agentset::render(cn, &ctx.settings.agent).map_err(|e| e.to_string())?;
    let ns = ctx.settings.agent.namespace.as_str();
    let client = &ctx.client;
    let named = |what: &str, e: kube::Error| format!("{what}: {e}");
    apply(
        Api::<ServiceAccount>::namespaced(client.clone(), ns),
        &objects.service_account,
    )
    .await
    .map_err(|e| named("serviceaccount", e))?;
    apply(
        Api::<ClusterRole>::all(client.clone()),
        &objects.cluster_role,
    )
    .await
    .map_err(|e| named("clusterrole", e))?;
    apply(
        Api::<ClusterRoleBinding>::all(client.clone()),
        &objects.cluster_role_binding,
    )
    .await
    .map_err(|e| named("clusterrolebinding", e))?;
    let ds = apply(
        Api::<DaemonSet>::namespaced(client.clone(), ns),
        &objects.daemon_set,
    )
    .await
    .map_err(|e| named("daemonset", e))?;
    remember_applied(ctx, cn);
    Ok(ds)
}

fn daemon_set_view(ds: &DaemonSet) -> DaemonSetView {
    let status = ds.status.clone().unwrap_or_default();
    DaemonSetView {
        generation: ds.metadata.generation.unwrap_or(0),
        observed_generation: status.observed_generation.unwrap_or(0),
        desired: status.desired_number_scheduled,
        updated: status.updated_number_scheduled.unwrap_or(0),
        available: status.number_available.unwrap_or(0),
    }
}

fn agent_report(nn: &NodeNetwork) -> Option<AgentReport> {
    let status = nn.status.as_ref()?;
    let agent = status.agent.as_ref()?;
    let message =
        conditions::find(&status.conditions, conditions::types::READY).map(|c| c.message.clone());
    Some(AgentReport {
        ready: agent.ready,
        generation: agent.cluster_network_generation,
        cluster_uid: agent.cluster_network_uid.clone(),
        heartbeat: agent.last_heartbeat.as_ref().map(|t| t.0),
        message,
    })
}

fn observe(ctx: &Context, cn: &ClusterNetwork, ds: Result<DaemonSet, String>) -> Observed {
    let reports: BTreeMap<String, Option<AgentReport>> = ctx
        .node_networks
        .state()
        .iter()
        .map(|nn| (nn.name_any(), agent_report(nn)))
        .collect();
    let nodes = ctx
        .nodes
        .state()
        .iter()
        .map(|node| {
            let name = node.name_any();
            let view = NodeView {
                created: node.metadata.creation_timestamp.as_ref().map(|t| t.0),
                agent: reports.get(&name).cloned().flatten(),
            };
            (name, view)
        })
        .collect();
    let (daemon_set, apply_error) = match ds {
        Ok(ds) => (Some(daemon_set_view(&ds)), None),
        Err(e) => (None, Some(e)),
    };
    Observed {
        generation: cn.metadata.generation.unwrap_or(0),
        uid: cn.metadata.uid.clone(),
        mtu: cn.spec.mtu,
        nodes,
        daemon_set,
        apply_error,
        now: jiff::Timestamp::now(),
    }
}

fn applied_key(cn: &ClusterNetwork) -> (String, i64) {
    (
        cn.metadata.uid.clone().unwrap_or_default(),
        cn.metadata.generation.unwrap_or(0),
    )
}

/// Whether the node side must be applied: the ClusterNetwork changed since the last apply,
/// or [`RESYNC`] has passed (someone may have edited an applied object).
fn needs_apply(ctx: &Context, cn: &ClusterNetwork) -> bool {
    let applied = ctx
        .applied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (uid, generation) = applied_key(cn);
    !applied
        .as_ref()
        .is_some_and(|(u, g, at)| *u == uid && *g == generation && at.elapsed() < RESYNC)
}

fn remember_applied(ctx: &Context, cn: &ClusterNetwork) {
    let (uid, generation) = applied_key(cn);
    *ctx.applied
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((uid, generation, std::time::Instant::now()));
}

async fn reconcile(cn: Arc<ClusterNetwork>, ctx: Arc<Context>) -> Result<Action, Error> {
    if cn.name_any() != SINGLETON_NAME {
        return Ok(Action::await_change());
    }
    let _timer = ctx.metrics.reconcile_timer(controllers::CLUSTER_NETWORK);
    if cn.metadata.deletion_timestamp.is_some() {
        return teardown(&cn, &ctx).await;
    }
    if !cn.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = cn.finalizers().to_vec();
        finalizers.push(FINALIZER.into());
        set_finalizers(&ctx, &cn, finalizers, "add").await?;
        // The write triggers the next reconcile.
        return Ok(Action::await_change());
    }
    let ds = if needs_apply(&ctx, &cn) {
        apply_agent(&ctx, &cn).await
    } else {
        // Agents report every minute: most reconciles only recompute the status. A
        // DaemonSet gone since (deleted by hand) is applied again at once.
        match Api::<DaemonSet>::namespaced(ctx.client.clone(), &ctx.settings.agent.namespace)
            .get_opt(AGENT_NAME)
            .await
        {
            Ok(Some(ds)) => Ok(ds),
            Ok(None) => apply_agent(&ctx, &cn).await,
            Err(e) => Err(format!("daemonset: {e}")),
        }
    };
    if let Err(e) = &ds {
        warn!("applying the agent's objects: {e}");
        ctx.metrics
            .reconcile_failed(controllers::CLUSTER_NETWORK, "apply");
    }
    let observed = observe(&ctx, &cn, ds);
    let previous = cn.status.as_ref();
    let next = rollout::status(&observed, previous);
    // Written only when a reader would see something new.
    if previous != Some(&next) {
        write_status(&ctx, &next).await?;
        for t in rollout::transitions(previous, &next) {
            info!(reason = t.reason, "{}", t.note);
            let type_ = if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(&ctx, &cn, type_, t.reason, &t.note).await;
        }
    }
    Ok(Action::requeue(RESYNC))
}

/// Replaces the finalizer list, if the object has not changed since it was read (its
/// resourceVersion): another writer's finalizer is never lost. `verb` (`add`, `remove`) is
/// for the error.
async fn set_finalizers(
    ctx: &Context,
    cn: &ClusterNetwork,
    finalizers: Vec<String>,
    verb: &'static str,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": cn.resource_version(),
        }
    });
    Api::<ClusterNetwork>::all(ctx.client.clone())
        .patch(
            SINGLETON_NAME,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Finalizer { verb, source })
}

/// How often the teardown looks again while it waits.
const TEARDOWN_POLL: Duration = Duration::from_secs(2);

/// One step of uninstalling from the nodes ([`teardown`]).
async fn teardown(cn: &ClusterNetwork, ctx: &Context) -> Result<Action, Error> {
    if !cn.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let step = teardown::next(&teardown_view(cn, ctx).await?);
    debug!(?step, "uninstalling");
    let daemon_sets =
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ctx.settings.agent.namespace);
    let failed = |what: &str, e: kube::Error| Error::Teardown(format!("{what}: {e}"));
    match step {
        Step::DeleteAgent => {
            match daemon_sets
                .delete(AGENT_NAME, &DeleteParams::foreground())
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(failed("deleting daemonset/ferrite-agent", e)),
            }
            publish(
                ctx,
                cn,
                EventType::Normal,
                "Uninstalling",
                "the ClusterNetwork is being deleted: stopping the agents, then cleaning every node",
            )
            .await;
        }
        Step::StartCleanup => {
            let ds = agentset::render_cleanup(cn, &ctx.settings.agent)?;
            apply(daemon_sets, &ds)
                .await
                .map_err(|e| failed("applying daemonset/ferrite-cleanup", e))?;
        }
        Step::AwaitAgentGone | Step::AwaitCleanup { .. } => {}
        Step::Finish | Step::GiveUp { .. } => {
            let (kind, reason, note) = match step {
                Step::GiveUp { cleaned } => (
                    EventType::Warning,
                    "CleanupIncomplete",
                    teardown::give_up_note(cleaned),
                ),
                _ => (
                    EventType::Normal,
                    "NodesCleaned",
                    "every node is clean; the ClusterNetwork's deletion finishes".to_owned(),
                ),
            };
            info!(reason, "{note}");
            publish(ctx, cn, kind, reason, &note).await;
            let rest = cn
                .finalizers()
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            set_finalizers(ctx, cn, rest, "remove").await?;
            return Ok(Action::await_change());
        }
    }
    write_teardown_status(ctx, cn, step).await?;
    Ok(Action::requeue(TEARDOWN_POLL))
}

/// What the teardown needs to know: the two DaemonSets and how long the deletion has run.
async fn teardown_view(cn: &ClusterNetwork, ctx: &Context) -> Result<teardown::View, Error> {
    let daemon_sets =
        Api::<DaemonSet>::namespaced(ctx.client.clone(), &ctx.settings.agent.namespace);
    let get = |name: &'static str| {
        let api = daemon_sets.clone();
        async move {
            api.get_opt(name)
                .await
                .map_err(|e| Error::Teardown(format!("reading daemonset/{name}: {e}")))
        }
    };
    let agent = get(AGENT_NAME).await?;
    let cleanup = get(CLEANUP_NAME).await?;
    let since = cn
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(Duration::ZERO, |t| {
            let elapsed = jiff::Timestamp::now().duration_since(t.0);
            Duration::try_from(elapsed).unwrap_or(Duration::ZERO)
        });
    Ok(teardown::View {
        agent: agent.map(|ds| teardown::Deleting(ds.metadata.deletion_timestamp.is_some())),
        cleanup: cleanup.map(|ds| {
            let status = ds.status.unwrap_or_default();
            teardown::Cleanup {
                generation: ds.metadata.generation.unwrap_or(0),
                observed_generation: status.observed_generation.unwrap_or(0),
                desired: status.desired_number_scheduled,
                ready: status.number_ready,
            }
        }),
        deleting_for: since,
    })
}

/// `Ready=False`, reason `Uninstalling`, with where the teardown is; written when it changes.
async fn write_teardown_status(
    ctx: &Context,
    cn: &ClusterNetwork,
    step: Step,
) -> Result<(), Error> {
    let mut next = cn.status.clone().unwrap_or_default();
    let condition = conditions::new_condition(
        conditions::types::READY,
        conditions::ConditionStatus::False,
        conditions::reasons::UNINSTALLING,
        teardown::message(step),
        cn.metadata.generation,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    if !conditions::set_condition(&mut next.conditions, condition) {
        return Ok(());
    }
    write_status(ctx, &next).await
}

async fn write_status(
    ctx: &Context,
    status: &ferrite_crds::ClusterNetworkStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": ClusterNetwork::api_version(&()),
        "kind": ClusterNetwork::kind(&()),
        "status": status,
    });
    Api::<ClusterNetwork>::all(ctx.client.clone())
        .patch_status(
            SINGLETON_NAME,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map(|_| ())
        .map_err(Error::Status)
}

/// Publishes an Event on the ClusterNetwork; a failure is only logged.
async fn publish(ctx: &Context, cn: &ClusterNetwork, type_: EventType, reason: &str, note: &str) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &cn.object_ref(&())).await {
        warn!("publishing the {reason} event: {e}");
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn error_policy(_cn: Arc<ClusterNetwork>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!("{error} (retrying in 5s)");
    let kind = match error {
        Error::Status(_) => "status",
        Error::Render(_) => "render",
        Error::Finalizer { .. } => "finalizer",
        Error::Teardown(_) => "teardown",
    };
    ctx.metrics
        .reconcile_failed(controllers::CLUSTER_NETWORK, kind);
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }

    #[test]
    fn the_daemon_set_view_reads_the_rollout_counters() {
        let ds: DaemonSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "ferrite-agent", "generation": 4},
            "status": {
                "observedGeneration": 4, "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 2, "numberAvailable": 3,
                "currentNumberScheduled": 3, "numberMisscheduled": 0, "numberReady": 3
            }
        }))
        .unwrap();
        let view = daemon_set_view(&ds);
        assert_eq!((view.desired, view.updated, view.available), (3, 2, 3));
        assert!(!view.rolled_out());
    }
}
