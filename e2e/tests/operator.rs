//! The operator on the real cluster: the ClusterNetwork reports the network ready the way a
//! user waits for it (`kubectl wait`), and the agent's objects are the operator's.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use ferrite_crds::ClusterNetwork;
use ferrite_crds::conditions::{self, types};
use ferrite_e2e::{Cluster, repo_root};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;

/// Runs `kubectl` with the cluster's admin kubeconfig (the binaries `make up` built).
fn kubectl(args: &[&str]) -> Result<std::process::Output> {
    let env = repo_root().join("e2e/scripts/env.sh");
    let script = format!(". {} && kc \"$@\"", env.display());
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .arg("kubectl")
        .args(args)
        .output()
        .context("running kubectl")
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn kubectl_wait_for_a_ready_cluster_network_succeeds() -> Result<()> {
    // Connecting first checks that the cluster's address is on this machine.
    let cluster = Cluster::connect().await?;
    let out = kubectl(&[
        "wait",
        "--for=condition=Ready",
        "clusternetwork/default",
        "--timeout=180s",
    ])?;
    ensure!(
        out.status.success(),
        "kubectl wait failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = cluster.node_names().await?;
    let cn = Api::<ClusterNetwork>::all(cluster.client.clone())
        .get("default")
        .await?;
    let status = cn.status.context("no status")?;
    ensure!(
        status.observed_generation == cn.metadata.generation,
        "status describes generation {:?}, the object is at {:?}",
        status.observed_generation,
        cn.metadata.generation
    );
    ensure!(
        status.nodes_ready as usize == nodes.len() && status.nodes_desired as usize == nodes.len(),
        "{}/{} nodes ready, the cluster has {}",
        status.nodes_ready,
        status.nodes_desired,
        nodes.len()
    );
    for type_ in [types::PROGRESSING, types::DEGRADED] {
        let c = conditions::find(&status.conditions, type_)
            .with_context(|| format!("no {type_} condition"))?;
        ensure!(
            c.status == "False",
            "{type_} is {}: {}",
            c.status,
            c.message
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn the_agent_daemon_set_and_role_belong_to_the_cluster_network() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let cn = Api::<ClusterNetwork>::all(cluster.client.clone())
        .get("default")
        .await?;
    let uid = cn.metadata.uid.context("no uid")?;
    let ds = Api::<DaemonSet>::namespaced(cluster.client.clone(), "ferrite-system")
        .get("ferrite-agent")
        .await?;
    let role = Api::<ClusterRole>::all(cluster.client.clone())
        .get("ferrite-agent")
        .await?;
    for (what, meta) in [("daemonset", &ds.metadata), ("clusterrole", &role.metadata)] {
        let owned = meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        ensure!(
            owned,
            "{what} ferrite-agent is not controlled by clusternetwork/default"
        );
        let managers: Vec<_> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        ensure!(
            managers.iter().any(|m| m == "ferrite-operator"),
            "{what} ferrite-agent is not applied by the operator (managers: {managers:?})"
        );
    }
    for rule in role.rules.unwrap_or_default() {
        let words: Vec<&String> = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .collect();
        ensure!(
            !words.iter().any(|w| *w == "*" || w.contains("secret")),
            "the agent's role is not least privilege: {rule:?}"
        );
    }
    Ok(())
}
