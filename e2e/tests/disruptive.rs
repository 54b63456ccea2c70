//! Changes under running pods: a routing-mode switch and an agent restart. A test binary of
//! its own (cargo runs test binaries one after another), and one test at a time inside it, so
//! nothing else runs while the cluster is being disturbed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferrite_crds::ClusterNetwork;
use ferrite_e2e::{Cluster, NETEXEC_PORT, TestNamespace, http_get, pod_ip, wait_for};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::Mutex;

/// One disruptive test at a time, even under `--test-threads=3`.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The agent's health port (the agent's DaemonSet: deploy/agent.yaml).
const AGENT_PORT: u16 = 9893;

/// Whether the ferrite.vxlan device exists on `node`.
fn has_vxlan_device(node: &str) -> Result<bool> {
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("fe-{node}"), "link", "show", "ferrite.vxlan"])
        .output()
        .context("running ip")?;
    Ok(out.status.success())
}

/// Probes `from` → `to_ip` once through the pod network (curl in the client pod).
async fn probe(ns: &TestNamespace, from: &str, to_ip: &str) -> bool {
    let url = format!("http://{to_ip}:{NETEXEC_PORT}/hostname");
    ns.exec(from, &["curl", "-s", "-m", "1", &url])
        .await
        .is_ok_and(|o| o.success)
}

async fn set_mode(cluster: &Cluster, mode: &str) -> Result<()> {
    let api: Api<ClusterNetwork> = Api::all(cluster.client.clone());
    let patch = serde_json::json!({"spec": {"routingMode": mode}});
    api.patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("switching routingMode to {mode}"))?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn switching_the_routing_mode_keeps_pods_connected() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "mode").await?;
    let nodes = cluster.node_names().await?;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    ns.pod("a").on_node(n1).create().await?;
    let b = pod_ip(&ns.pod("b").on_node(n2).create().await?)?;
    let api: Api<ClusterNetwork> = Api::all(cluster.client.clone());
    let original = api.get("default").await?.spec.routing_mode;
    let original = serde_json::to_value(original)?
        .as_str()
        .unwrap_or("VXLAN")
        .to_owned();
    let other = if original == "Native" {
        "VXLAN"
    } else {
        "Native"
    };

    for (mode, vxlan) in [
        (other, other == "VXLAN"),
        (original.as_str(), original == "VXLAN"),
    ] {
        ensure!(
            probe(&ns, "a", &b).await,
            "a -> b fails before switching to {mode}"
        );
        set_mode(&cluster, mode).await?;
        // Probe continuously until every node has switched; count the failures.
        let start = Instant::now();
        let (mut ok, mut failed) = (0, 0);
        loop {
            if probe(&ns, "a", &b).await {
                ok += 1;
            } else {
                failed += 1;
            }
            let switched = nodes
                .iter()
                .map(|n| has_vxlan_device(n))
                .collect::<Result<Vec<_>>>()?
                .iter()
                .all(|&has| has == vxlan);
            if switched {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the nodes did not switch to {mode} within 60 s"
            );
        }
        // After the switch, connectivity must be back at once and stay.
        for _ in 0..5 {
            ensure!(
                probe(&ns, "a", &b).await,
                "a -> b fails after switching to {mode}"
            );
        }
        eprintln!("switch to {mode}: {ok} probes ok, {failed} failed during the switch");
        ensure!(
            failed <= 2,
            "{failed} probes (of {}) failed while switching to {mode}: more than the switch itself",
            ok + failed
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn an_agent_restart_keeps_pods_connected_and_their_addresses() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "restart").await?;
    let nodes = cluster.node_names().await?;
    let (n1, n2) = (&nodes[0], &nodes[1]);
    ns.pod("a").on_node(n1).create().await?;
    let b = pod_ip(&ns.pod("b").on_node(n2).create().await?)?;
    let doomed = pod_ip(&ns.pod("doomed").on_node(n2).create().await?)?;

    let agents: Api<Pod> = Api::namespaced(cluster.client.clone(), "ferrite-system");
    let lp = ListParams::default()
        .labels("app.kubernetes.io/name=ferrite-agent")
        .fields(&format!("spec.nodeName={n2}"));
    let old = agents.list(&lp).await?.items;
    let old_name = old
        .first()
        .and_then(|p| p.metadata.name.clone())
        .context("no agent pod on the node")?;
    agents.delete(&old_name, &DeleteParams::default()).await?;
    // While the agent is away: a pod on its node is deleted (its DEL is queued by the plugin
    // or served by the new agent), and the running pods keep talking.
    ns.pods()
        .delete("doomed", &DeleteParams::default().grace_period(0))
        .await?;
    for _ in 0..5 {
        ensure!(
            probe(&ns, "a", &b).await,
            "a -> b failed while the agent restarted"
        );
    }
    wait_for(
        "a new agent to be ready",
        Duration::from_secs(120),
        || async {
            let pods = agents.list(&lp).await?.items;
            let ready = pods.iter().any(|p| {
                p.metadata.name.as_deref() != Some(&old_name)
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(ready.then_some(()))
        },
    )
    .await?;
    ensure!(
        probe(&ns, "a", &b).await,
        "a -> b fails after the agent restarted"
    );
    let b_now = pod_ip(&ns.pods().get("b").await?)?;
    ensure!(b_now == b, "b's address changed from {b} to {b_now}");
    // The deleted pod's address was released, the running pod's kept.
    let node_ip = cluster
        .nodes()
        .await?
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(n2.as_str()))
        .and_then(|n| {
            n.status?
                .addresses?
                .into_iter()
                .find(|a| a.type_ == "InternalIP")
        })
        .context("node address")?
        .address;
    let addr: SocketAddr = format!("{node_ip}:{AGENT_PORT}").parse()?;
    wait_for(
        "the deleted pod's address to be released",
        Duration::from_secs(60),
        || async {
            let ipam: serde_json::Value = serde_json::from_str(&http_get(addr, "/ipam")?)?;
            let held = ipam["allocations"].as_object().context("allocations")?;
            ensure!(
                held.contains_key(&b),
                "b's address {b} is no longer allocated"
            );
            ensure!(!held.contains_key(&doomed), "{doomed} still allocated");
            Ok(Some(()))
        },
    )
    .await
}
