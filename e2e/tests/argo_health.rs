//! Ferrite's Argo CD health checks (`charts/ferrite/argocd/*.lua`), run the way Argo CD runs
//! them ([`ferrite_e2e::argo`]).
//!
//! - Against objects shaped exactly as the apiserver returns them (`e2e/testdata/argo/`, one
//!   per state; `e2e/scripts/capture-argo-fixtures.sh` adds `live-*.json` from the running
//!   cluster): every branch of both scripts. These need no cluster.
//! - Against the live cluster (`#[ignore]`d, `make e2e`): the ClusterNetwork `default` and the
//!   IPPools are Healthy once the operator reports Ready, and a pool that overlaps another
//!   turns Degraded naming it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferrite_crds::conditions::{self, reasons, types};
use ferrite_crds::{ClusterNetwork, IPPool};
use ferrite_e2e::argo::{self, Health, HealthScript, HealthStatus};
use ferrite_e2e::{Cluster, wait_for};
use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

const CLUSTER_NETWORK: &str = "ClusterNetwork";
const IP_POOL: &str = "IPPool";

fn fixture(name: &str) -> Result<Value> {
    Ok(argo::read_object(&argo::testdata_dir().join(name))?)
}

fn health_of(object: &Value) -> Result<Health> {
    let kind = object["kind"].as_str().unwrap_or_default();
    Ok(HealthScript::for_kind(kind)?.evaluate(object)?)
}

fn health(name: &str) -> Result<Health> {
    health_of(&fixture(name)?)
}

/// The condition of `type_` in the object's status, for editing a fixture into a variant.
fn condition_mut<'a>(object: &'a mut Value, type_: &str) -> Result<&'a mut Value> {
    object["status"]["conditions"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["type"] == type_))
        .with_context(|| format!("no {type_} condition"))
}

fn expect(health: &Health, status: HealthStatus, message: &str) {
    assert_eq!(
        (health.status, health.message.as_str()),
        (status, message),
        "{health}"
    );
}

// ---- ClusterNetwork ----

#[test]
fn a_fresh_cluster_network_is_progressing_until_the_operator_observes_it() -> Result<()> {
    expect(
        &health("clusternetwork-fresh.json")?,
        HealthStatus::Progressing,
        "waiting for the operator to observe generation 1",
    );
    Ok(())
}

#[test]
fn a_cluster_network_whose_status_describes_an_older_generation_is_progressing() -> Result<()> {
    // Its Ready=True is about generation 2; the user's edit (generation 3) is not rolled out.
    expect(
        &health("clusternetwork-stale.json")?,
        HealthStatus::Progressing,
        "waiting for the operator to observe generation 3",
    );
    Ok(())
}

#[test]
fn a_ready_cluster_network_is_healthy_and_counts_its_nodes() -> Result<()> {
    expect(
        &health("clusternetwork-ready.json")?,
        HealthStatus::Healthy,
        "3/3 nodes ready (VXLAN, MTU 1450)",
    );
    Ok(())
}

#[test]
fn a_routing_mode_rollout_is_progressing_with_the_operators_message() -> Result<()> {
    expect(
        &health("clusternetwork-rollout.json")?,
        HealthStatus::Progressing,
        "switching routingMode from VXLAN to Native: 1/3 agents run generation 3",
    );
    Ok(())
}

#[test]
fn a_degraded_cluster_network_is_degraded_with_reason_and_message() -> Result<()> {
    expect(
        &health("clusternetwork-degraded.json")?,
        HealthStatus::Degraded,
        "AgentsNotReady: the agent on node3 has not been ready for 5m: CrashLoopBackOff",
    );
    Ok(())
}

#[test]
fn a_cluster_network_that_is_not_ready_with_no_rollout_under_way_is_degraded() -> Result<()> {
    let h = health("clusternetwork-reconcile-error.json")?;
    assert_eq!(h.status, HealthStatus::Degraded, "{h}");
    assert!(
        h.message
            .starts_with("ReconcileError: applying DaemonSet ferrite-system/ferrite-agent"),
        "{h}"
    );
    Ok(())
}

#[test]
fn degraded_wins_over_a_rollout_under_way() -> Result<()> {
    let mut object = fixture("clusternetwork-rollout.json")?;
    let degraded = condition_mut(&mut object, types::DEGRADED)?;
    degraded["status"] = json!("True");
    degraded["reason"] = json!(reasons::AGENTS_NOT_READY);
    degraded["message"] = json!("the agent on node2 fails to start: no VXLAN support");
    expect(
        &health_of(&object)?,
        HealthStatus::Degraded,
        "AgentsNotReady: the agent on node2 fails to start: no VXLAN support",
    );
    Ok(())
}

#[test]
fn a_cluster_network_before_its_first_reconcile_finished_is_progressing() -> Result<()> {
    for (status, reason) in [("False", reasons::PENDING), ("Unknown", reasons::PENDING)] {
        let mut object = fixture("clusternetwork-ready.json")?;
        let ready = condition_mut(&mut object, types::READY)?;
        ready["status"] = json!(status);
        ready["reason"] = json!(reason);
        ready["message"] = json!("waiting for the agents to report");
        expect(
            &health_of(&object)?,
            HealthStatus::Progressing,
            "Pending: waiting for the agents to report",
        );
    }
    Ok(())
}

#[test]
fn a_cluster_network_without_a_ready_condition_is_progressing() -> Result<()> {
    let mut object = fixture("clusternetwork-ready.json")?;
    object["status"]["conditions"] = json!([]);
    expect(
        &health_of(&object)?,
        HealthStatus::Progressing,
        "waiting for the operator to report the Ready condition",
    );
    Ok(())
}

#[test]
fn a_ready_cluster_network_without_an_mtu_yet_still_counts_its_nodes() -> Result<()> {
    let mut object = fixture("clusternetwork-ready.json")?;
    object["status"]
        .as_object_mut()
        .context("status is not an object")?
        .remove("mtu");
    expect(
        &health_of(&object)?,
        HealthStatus::Healthy,
        "3/3 nodes ready (VXLAN)",
    );
    Ok(())
}

// ---- IPPool ----

#[test]
fn a_fresh_pool_is_progressing_until_the_operator_observes_it() -> Result<()> {
    expect(
        &health("ippool-fresh.json")?,
        HealthStatus::Progressing,
        "waiting for the operator to observe generation 1",
    );
    Ok(())
}

#[test]
fn a_pool_whose_status_describes_an_older_generation_is_progressing() -> Result<()> {
    expect(
        &health("ippool-stale.json")?,
        HealthStatus::Progressing,
        "waiting for the operator to observe generation 2",
    );
    Ok(())
}

#[test]
fn a_ready_pool_is_healthy_and_reports_its_usage() -> Result<()> {
    expect(
        &health("ippool-ready.json")?,
        HealthStatus::Healthy,
        "14/65536 addresses in 3 blocks",
    );
    Ok(())
}

#[test]
fn an_overlapping_pool_is_degraded_naming_the_pool_it_overlaps() -> Result<()> {
    let h = health("ippool-overlap.json")?;
    expect(
        &h,
        HealthStatus::Degraded,
        "Overlap: 10.244.128.0/20 overlaps IPPool default (10.244.0.0/16): this pool hands out no addresses until the overlap is removed",
    );
    Ok(())
}

#[test]
fn an_overlapping_pool_is_degraded_even_while_something_else_progresses() -> Result<()> {
    let mut object = fixture("ippool-overlap.json")?;
    object["status"]["conditions"]
        .as_array_mut()
        .context("no conditions")?
        .push(json!({
            "lastTransitionTime": "2025-06-02T13:20:44Z",
            "message": "carving blocks",
            "observedGeneration": 1,
            "reason": reasons::ROLLING_OUT,
            "status": "True",
            "type": types::PROGRESSING,
        }));
    assert_eq!(health_of(&object)?.status, HealthStatus::Degraded);
    Ok(())
}

#[test]
fn a_pool_being_deleted_while_nodes_use_it_is_progressing_naming_the_nodes() -> Result<()> {
    let h = health("ippool-deleting.json")?;
    expect(
        &h,
        HealthStatus::Progressing,
        "being deleted, held by ferrite.dev/ippool-in-use: InUse: deletion waits for 2 blocks still in use on node1, node3 (5 addresses allocated)",
    );
    Ok(())
}

#[test]
fn a_deleting_pool_takes_the_in_use_message_from_whichever_condition_carries_it() -> Result<()> {
    let mut object = fixture("ippool-deleting.json")?;
    let in_use = condition_mut(&mut object, types::READY)?.clone();
    let conditions = object["status"]["conditions"]
        .as_array_mut()
        .context("no conditions")?;
    conditions[0]["reason"] = json!(reasons::RECONCILED);
    conditions[0]["message"] = json!("1 block assigned");
    let mut progressing = in_use;
    progressing["type"] = json!(types::PROGRESSING);
    progressing["status"] = json!("True");
    conditions.push(progressing);
    let h = health_of(&object)?;
    assert_eq!(h.status, HealthStatus::Progressing, "{h}");
    assert!(h.message.contains("in use on node1, node3"), "{h}");
    Ok(())
}

#[test]
fn a_deleting_pool_without_conditions_names_its_finalizer() -> Result<()> {
    let mut object = fixture("ippool-deleting.json")?;
    object
        .as_object_mut()
        .context("not an object")?
        .remove("status");
    expect(
        &health_of(&object)?,
        HealthStatus::Progressing,
        "being deleted, held by ferrite.dev/ippool-in-use",
    );
    Ok(())
}

#[test]
fn an_exhausted_pool_is_degraded() -> Result<()> {
    let mut object = fixture("ippool-ready.json")?;
    let ready = condition_mut(&mut object, types::READY)?;
    ready["status"] = json!("False");
    ready["reason"] = json!(reasons::EXHAUSTED);
    ready["message"] = json!("no free /26 block left for node4");
    expect(
        &health_of(&object)?,
        HealthStatus::Degraded,
        "Exhausted: no free /26 block left for node4",
    );
    Ok(())
}

#[test]
fn a_pool_with_degraded_true_is_degraded() -> Result<()> {
    let mut object = fixture("ippool-ready.json")?;
    object["status"]["conditions"]
        .as_array_mut()
        .context("no conditions")?
        .push(json!({
            "lastTransitionTime": "2025-06-02T13:00:00Z",
            "message": "block 10.244.3.0/26 is claimed by two NodeNetworks: node1, node2",
            "observedGeneration": 1,
            "reason": reasons::RECONCILE_ERROR,
            "status": "True",
            "type": types::DEGRADED,
        }));
    expect(
        &health_of(&object)?,
        HealthStatus::Degraded,
        "ReconcileError: block 10.244.3.0/26 is claimed by two NodeNetworks: node1, node2",
    );
    Ok(())
}

#[test]
fn a_pool_that_is_still_carving_blocks_is_progressing() -> Result<()> {
    let mut object = fixture("ippool-ready.json")?;
    let ready = condition_mut(&mut object, types::READY)?;
    ready["status"] = json!("False");
    ready["reason"] = json!(reasons::ROLLING_OUT);
    object["status"]["conditions"]
        .as_array_mut()
        .context("no conditions")?
        .push(json!({
            "lastTransitionTime": "2025-06-02T13:00:00Z",
            "message": "assigning blocks to 2 new nodes",
            "observedGeneration": 1,
            "reason": reasons::ROLLING_OUT,
            "status": "True",
            "type": types::PROGRESSING,
        }));
    expect(
        &health_of(&object)?,
        HealthStatus::Progressing,
        "assigning blocks to 2 new nodes",
    );
    Ok(())
}

#[test]
fn a_disabled_pool_is_healthy_and_says_it_hands_out_nothing() -> Result<()> {
    let mut by_spec = fixture("ippool-ready.json")?;
    by_spec["spec"]["disabled"] = json!(true);
    let mut by_reason = fixture("ippool-ready.json")?;
    let ready = condition_mut(&mut by_reason, types::READY)?;
    ready["status"] = json!("False");
    ready["reason"] = json!(reasons::DISABLED);
    for object in [by_spec, by_reason] {
        expect(
            &health_of(&object)?,
            HealthStatus::Healthy,
            "14/65536 addresses in 3 blocks; disabled: hands out no new addresses",
        );
    }
    Ok(())
}

#[test]
fn a_disabled_pool_that_fails_for_another_reason_is_still_degraded() -> Result<()> {
    let mut object = fixture("ippool-ready.json")?;
    object["spec"]["disabled"] = json!(true);
    let ready = condition_mut(&mut object, types::READY)?;
    ready["status"] = json!("False");
    ready["reason"] = json!(reasons::RECONCILE_ERROR);
    ready["message"] = json!("listing NodeNetworks: forbidden");
    expect(
        &health_of(&object)?,
        HealthStatus::Degraded,
        "ReconcileError: listing NodeNetworks: forbidden",
    );
    Ok(())
}

#[test]
fn a_ready_pool_without_usage_yet_says_so() -> Result<()> {
    let mut object = fixture("ippool-ready.json")?;
    object["status"]
        .as_object_mut()
        .context("status is not an object")?
        .remove("usage");
    expect(
        &health_of(&object)?,
        HealthStatus::Healthy,
        "no usage reported yet",
    );
    Ok(())
}

// ---- The fixtures and the scripts themselves ----

fn fixture_files() -> Result<Vec<PathBuf>> {
    let dir = argo::testdata_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .with_context(|| format!("listing {}", dir.display()))?;
    files.retain(|p| p.extension().is_some_and(|e| e == "json"));
    files.sort();
    Ok(files)
}

#[test]
fn every_fixture_round_trips_through_the_rust_types_unchanged() -> Result<()> {
    // The apiserver defaults every field the CRD defaults, so a faithful fixture carries
    // exactly what the Rust types serialize: nothing missing, nothing misspelled.
    let files = fixture_files()?;
    assert!(files.len() >= 11, "fixtures went missing: {files:?}");
    for path in files {
        let object = argo::read_object(&path)?;
        let typed = match object["kind"].as_str() {
            Some(CLUSTER_NETWORK) => {
                serde_json::from_value::<ClusterNetwork>(object.clone()).map(|o| json!(o))
            }
            Some(IP_POOL) => serde_json::from_value::<IPPool>(object.clone()).map(|o| json!(o)),
            other => bail!("{}: unexpected kind {other:?}", path.display()),
        }
        .with_context(|| format!("{} does not fit the Rust types", path.display()))?;
        for part in ["spec", "status"] {
            assert_eq!(typed[part], object[part], "{}: {part}", path.display());
        }
    }
    Ok(())
}

#[test]
fn every_fixture_including_captured_live_ones_gets_a_known_health_with_a_message() -> Result<()> {
    let files = fixture_files()?;
    assert!(files.len() >= 11, "fixtures went missing: {files:?}");
    for path in files {
        let object = argo::read_object(&path)?;
        let h = health_of(&object)?;
        assert_ne!(h.status, HealthStatus::Unknown, "{}: {h}", path.display());
        assert!(!h.message.is_empty(), "{}: {h}", path.display());
    }
    Ok(())
}

#[test]
fn the_written_fixtures_use_only_condition_types_and_reasons_that_the_crds_define() -> Result<()> {
    // Captured objects (live-*.json) show what the operator really writes; these are the ones
    // written by hand, which must not invent a vocabulary the operator does not share.
    let known_types = [types::READY, types::PROGRESSING, types::DEGRADED];
    let written = fixture_files()?.into_iter().filter(|p| {
        !p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("live-"))
    });
    for path in written {
        let object = argo::read_object(&path)?;
        let conditions = object["status"]["conditions"].as_array().cloned();
        for c in conditions.unwrap_or_default() {
            let c: Condition = serde_json::from_value(c)
                .with_context(|| format!("{}: condition", path.display()))?;
            assert!(known_types.contains(&c.type_.as_str()), "{}", c.type_);
            assert!(known_reasons().contains(c.reason.as_str()), "{}", c.reason);
            assert!(["True", "False", "Unknown"].contains(&c.status.as_str()));
            assert!(c.observed_generation.is_some(), "{}", path.display());
        }
    }
    Ok(())
}

fn known_reasons() -> BTreeSet<&'static str> {
    BTreeSet::from([
        reasons::RECONCILED,
        reasons::OVERLAP,
        reasons::INVALID_SPEC,
        reasons::NOT_FOUND,
        reasons::EXHAUSTED,
        reasons::DISABLED,
        reasons::ROLLING_OUT,
        reasons::AGENTS_NOT_READY,
        reasons::PENDING,
        reasons::RECONCILE_ERROR,
        reasons::IN_USE,
    ])
}

/// The double-quoted literals of a Lua source, comments left out.
fn string_literals(source: &str) -> Vec<String> {
    let mut literals = Vec::new();
    for line in source.lines() {
        let code = line.split("--").next().unwrap_or_default();
        let mut parts = code.split('"');
        parts.next();
        while let Some(literal) = parts.next() {
            literals.push(literal.to_owned());
            parts.next();
        }
    }
    literals
}

#[test]
fn the_scripts_spell_condition_types_reasons_and_states_as_the_rust_constants_do() -> Result<()> {
    for kind in [CLUSTER_NETWORK, IP_POOL] {
        let script = HealthScript::for_kind(kind)?;
        let words: Vec<String> = string_literals(script.source())
            .into_iter()
            .filter(|l| {
                l.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                    && l.chars().all(|c| c.is_ascii_alphanumeric())
            })
            .collect();
        assert!(words.len() > 5, "{kind}: found only {words:?}");
        for word in words {
            let known = [types::READY, types::PROGRESSING, types::DEGRADED]
                .contains(&word.as_str())
                || known_reasons().contains(word.as_str())
                || HealthStatus::parse(&word).is_some()
                || [
                    conditions::ConditionStatus::True.as_str(),
                    conditions::ConditionStatus::False.as_str(),
                    conditions::ConditionStatus::Unknown.as_str(),
                ]
                .contains(&word.as_str());
            assert!(
                known,
                "{kind}: {word:?} is not a constant of crds/src/conditions.rs"
            );
        }
    }
    Ok(())
}

#[test]
fn the_scripts_use_nothing_argo_cds_lua_lacks() -> Result<()> {
    // Argo CD runs argocd-cm scripts in gopher-lua (Lua 5.1) with the base and table
    // libraries only. The sandbox catches a missing library on the branches a test runs;
    // this catches it on every branch.
    for kind in [CLUSTER_NETWORK, IP_POOL] {
        let script = HealthScript::for_kind(kind)?;
        for (number, line) in script.source().lines().enumerate() {
            let code = line.split("--").next().unwrap_or_default();
            for banned in [
                "string.",
                "math.",
                "io.",
                "utf8.",
                "coroutine.",
                "debug.",
                "goto ",
                "//",
                "<const>",
                "<close>",
                ":format",
                ":sub",
                ":find",
                ":match",
                ":gsub",
                ":lower",
                ":upper",
                ":len",
                ":rep",
            ] {
                assert!(
                    !code.contains(banned),
                    "{}:{}: uses {banned:?}, which Argo CD's Lua lacks",
                    script.name(),
                    number + 1
                );
            }
        }
    }
    Ok(())
}

// ---- Against the live cluster ----

/// Time the operator gets to report Ready for the live objects after `make up`.
const LIVE_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Time the operator gets to judge a pool the test created.
const POOL_TIMEOUT: Duration = Duration::from_secs(60);
/// Label of every pool this test creates.
const E2E_LABEL: &str = "ferrite.dev/e2e";
/// A node label no node carries: the test's pools never hand out a block.
const NO_NODE_LABEL: &str = "ferrite.dev/e2e-no-such-node";

fn api<K: kube::Resource<DynamicType = ()>>(cluster: &Cluster) -> Api<DynamicObject> {
    Api::all_with(cluster.client.clone(), &ApiResource::erase::<K>(&()))
}

/// The object as Argo CD's cache holds it: what `kubectl get -o json` prints.
fn as_argo_sees_it(object: DynamicObject) -> Result<Value> {
    let mut value = serde_json::to_value(object)?;
    if let Some(meta) = value["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    Ok(value)
}

/// Whether the operator reports Ready=True for the object's current generation.
fn reports_ready(generation: Option<i64>, observed: Option<i64>, conds: &[Condition]) -> bool {
    observed.is_some() && observed >= generation && conditions::is_true(conds, types::READY)
}

/// Waits until the operator reports the live object Ready; returns it as Argo CD sees it.
async fn ready_object<K>(cluster: &Cluster, name: &str, timeout: Duration) -> Result<Value>
where
    K: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned,
    K: HasConditions,
{
    let api = api::<K>(cluster);
    let what = format!(
        "{} {name} to report Ready=True for its generation",
        K::kind(&())
    );
    wait_for(&what, timeout, || async {
        let object = as_argo_sees_it(api.get(name).await?)?;
        let typed: K = serde_json::from_value(object.clone())?;
        let (observed, conds) = typed.observed();
        let generation = object["metadata"]["generation"].as_i64();
        if reports_ready(generation, observed, &conds) {
            return Ok(Some(object));
        }
        bail!(
            "generation {generation:?}, observedGeneration {observed:?}, conditions {:?}",
            conds
                .iter()
                .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                .collect::<Vec<_>>()
        )
    })
    .await
}

/// Reads `status.observedGeneration` and the conditions of a typed Ferrite object.
trait HasConditions {
    fn observed(&self) -> (Option<i64>, Vec<Condition>);
}

impl HasConditions for ClusterNetwork {
    fn observed(&self) -> (Option<i64>, Vec<Condition>) {
        self.status
            .as_ref()
            .map(|s| (s.observed_generation, s.conditions.clone()))
            .unwrap_or_default()
    }
}

impl HasConditions for IPPool {
    fn observed(&self) -> (Option<i64>, Vec<Condition>) {
        self.status
            .as_ref()
            .map(|s| (s.observed_generation, s.conditions.clone()))
            .unwrap_or_default()
    }
}

/// An IPPool the test created, deleted when dropped (even when the test fails).
struct TestPool {
    name: String,
}

impl TestPool {
    /// Creates `e2e-argo-<prefix>-<random>` over `cidr`, selecting no node.
    async fn create(cluster: &Cluster, prefix: &str, cidr: &IpNet) -> Result<Self> {
        let block_size = if cidr.addr().is_ipv4() { 28 } else { 124 };
        let pool: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("{}/{}", ferrite_crds::GROUP, ferrite_crds::VERSION),
            "kind": IP_POOL,
            "metadata": {
                "generateName": format!("e2e-argo-{prefix}-"),
                "labels": {E2E_LABEL: "true"},
            },
            "spec": {
                "cidr": cidr.to_string(),
                "blockSize": block_size.max(cidr.prefix_len()),
                "nodeSelector": {"matchLabels": {NO_NODE_LABEL: "true"}},
            },
        }))?;
        let created = api::<IPPool>(cluster)
            .create(&PostParams::default(), &pool)
            .await
            .with_context(|| format!("creating IPPool e2e-argo-{prefix}-* over {cidr}"))?;
        let name = created
            .metadata
            .name
            .context("the apiserver named the pool")?;
        Ok(Self { name })
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        ferrite_e2e::delete_from_drop::<IPPool>(&self.name, "IPPool");
    }
}

fn is_test_pool(name: &str) -> bool {
    // This test's pools and the CRD validation test's examples (e2e-example-*), which other
    // tests running alongside create and delete.
    name.starts_with("e2e-")
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn the_live_cluster_network_and_pools_are_healthy_once_the_operator_reports_ready()
-> Result<()> {
    let cluster = Cluster::connect().await?;
    let network = ready_object::<ClusterNetwork>(
        &cluster,
        ferrite_crds::clusternetwork::SINGLETON_NAME,
        LIVE_READY_TIMEOUT,
    )
    .await?;
    let h = HealthScript::for_kind(CLUSTER_NETWORK)?.evaluate(&network)?;
    ensure!(
        h.status == HealthStatus::Healthy,
        "ClusterNetwork default reports Ready but its Argo CD health is {h}"
    );
    ensure!(
        h.message.contains(" nodes ready"),
        "ClusterNetwork default: {h}"
    );

    let pools: Vec<String> = api::<IPPool>(&cluster)
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .filter(|n| !is_test_pool(n))
        .collect();
    ensure!(!pools.is_empty(), "the cluster has no IPPool of its own");
    let script = HealthScript::for_kind(IP_POOL)?;
    for name in pools {
        let pool = ready_object::<IPPool>(&cluster, &name, LIVE_READY_TIMEOUT).await?;
        let h = script.evaluate(&pool)?;
        ensure!(
            h.status == HealthStatus::Healthy,
            "IPPool {name} reports Ready but its Argo CD health is {h}"
        );
    }
    Ok(())
}

/// A /24 (IPv4) that overlaps no pool, the service CIDR nor any node address.
async fn free_range(cluster: &Cluster) -> Result<IpNet> {
    let mut taken: Vec<IpNet> = Vec::new();
    for pool in api::<IPPool>(cluster)
        .list(&Default::default())
        .await?
        .items
    {
        if let Some(cidr) = pool.data["spec"]["cidr"].as_str() {
            taken.push(cidr.parse().with_context(|| format!("pool CIDR {cidr}"))?);
        }
    }
    let network = api::<ClusterNetwork>(cluster)
        .get(ferrite_crds::clusternetwork::SINGLETON_NAME)
        .await?;
    if let Some(cidr) = network.data["spec"]["serviceCIDR"].as_str() {
        taken.push(
            cidr.parse()
                .with_context(|| format!("service CIDR {cidr}"))?,
        );
    }
    for node in cluster.nodes().await? {
        for address in node.status.and_then(|s| s.addresses).unwrap_or_default() {
            if let Ok(ip) = address.address.parse::<std::net::IpAddr>() {
                taken.push(IpNet::from(ip));
            }
        }
    }
    let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    for third in 0..=255u8 {
        let candidate: IpNet = format!("10.201.{third}.0/24").parse()?;
        if !taken.iter().any(|t| overlaps(&candidate, t)) {
            return Ok(candidate);
        }
    }
    bail!("no free /24 in 10.201.0.0/16 for the test's pools; taken: {taken:?}")
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn an_overlapping_pool_turns_degraded_naming_the_pool_it_overlaps() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let script = HealthScript::for_kind(IP_POOL)?;
    let range = free_range(&cluster).await?;

    // A valid pool first, judged by the operator before the overlapping one exists.
    let base = TestPool::create(&cluster, "base", &range).await?;
    let object = ready_object::<IPPool>(&cluster, &base.name, POOL_TIMEOUT).await?;
    let h = script.evaluate(&object)?;
    ensure!(
        h.status == HealthStatus::Healthy,
        "the new valid pool {} reports Ready but its Argo CD health is {h}",
        base.name
    );

    let half: IpNet = format!("{}/25", range.addr()).parse()?;
    let overlapping = TestPool::create(&cluster, "overlap", &half).await?;
    let api = api::<IPPool>(&cluster);
    let what = format!(
        "IPPool {} ({half}, inside {} {range}) to turn Degraded in Argo CD's health",
        overlapping.name, base.name
    );
    let (object, h) = wait_for(&what, POOL_TIMEOUT, || async {
        let object = as_argo_sees_it(api.get(&overlapping.name).await?)?;
        let h = script.evaluate(&object)?;
        if h.status == HealthStatus::Degraded {
            return Ok(Some((object, h)));
        }
        bail!("health {h}")
    })
    .await?;
    ensure!(
        h.message.contains(&base.name),
        "{}: the Degraded message does not name the overlapped pool {}: {h}",
        overlapping.name,
        base.name
    );
    let typed: IPPool = serde_json::from_value(object)?;
    let (_, conds) = typed.observed();
    let ready = conditions::find(&conds, types::READY).context("no Ready condition")?;
    ensure!(
        ready.status == conditions::ConditionStatus::False.as_str()
            && ready.reason == reasons::OVERLAP,
        "{}: expected Ready=False reason {}, found {}={} {}",
        overlapping.name,
        reasons::OVERLAP,
        ready.type_,
        ready.status,
        ready.reason
    );
    drop(overlapping);
    drop(base);
    Ok(())
}
