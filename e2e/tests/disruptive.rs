//! Changes under running pods: a routing-mode switch and an agent restart. A test binary of
//! its own (cargo runs test binaries one after another), and one test at a time inside it, so
//! nothing else runs while the cluster is being disturbed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferrite_crds::ClusterNetwork;
use ferrite_crds::conditions::{self, types};
use ferrite_e2e::{
    Cluster, NETEXEC_PORT, TestNamespace, http_get, pod_ip, running_pod_ips, wait_for,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use tokio::sync::Mutex;

/// One disruptive test at a time, even under `--test-threads=3`.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// The agent's health port (rendered by the operator: operator/src/agentset.rs).
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

/// The ClusterNetwork is Ready for its current generation and the agent DaemonSet has rolled
/// out its template to every node.
async fn wait_rolled_out(cluster: &Cluster, what: &str) -> Result<()> {
    let cns: Api<ClusterNetwork> = Api::all(cluster.client.clone());
    let dss: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), "ferrite-system");
    wait_for(what, Duration::from_secs(240), || async {
        let cn = cns.get("default").await?;
        let Some(status) = cn.status else {
            return Ok(None);
        };
        let ready = conditions::is_true(&status.conditions, types::READY);
        ensure!(
            !conditions::is_true(&status.conditions, types::DEGRADED),
            "Degraded: {:?}",
            conditions::find(&status.conditions, types::DEGRADED).map(|c| &c.message)
        );
        let ds = dss.get("ferrite-agent").await?;
        let ds_status = ds.status.unwrap_or_default();
        let rolled = ds_status.observed_generation == ds.metadata.generation
            && ds_status.updated_number_scheduled == Some(ds_status.desired_number_scheduled)
            && ds_status.number_available == Some(ds_status.desired_number_scheduled);
        Ok((ready && rolled && status.observed_generation == cn.metadata.generation).then_some(()))
    })
    .await
}

async fn set_agent_log_level(cluster: &Cluster, level: &str) -> Result<()> {
    let api: Api<ClusterNetwork> = Api::all(cluster.client.clone());
    let patch = serde_json::json!({"spec": {"agent": {"logLevel": level}}});
    api.patch("default", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("setting the agent's logLevel to {level}"))?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn killing_the_operator_mid_rollout_resumes_and_converges() -> Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::connect().await?;
    wait_rolled_out(&cluster, "the ClusterNetwork to be Ready before the test").await?;
    let started = k8s_openapi::jiff::Timestamp::now();
    let operators: Api<Pod> = Api::namespaced(cluster.client.clone(), "ferrite-system");
    let lp = ListParams::default().labels("app.kubernetes.io/name=ferrite-operator");
    // A change that rolls every agent pod, then every operator replica killed at once.
    set_agent_log_level(&cluster, "debug").await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for pod in operators.list(&lp).await?.items {
        let name = pod.metadata.name.unwrap_or_default();
        operators
            .delete(&name, &DeleteParams::default().grace_period(0))
            .await
            .with_context(|| format!("killing operator pod {name}"))?;
    }
    let result = async {
        wait_rolled_out(
            &cluster,
            "the rollout to converge after the operator was killed",
        )
        .await?;
        let ds = Api::<DaemonSet>::namespaced(cluster.client.clone(), "ferrite-system")
            .get("ferrite-agent")
            .await?;
        let log = ds
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.env)
            .unwrap_or_default()
            .into_iter()
            .find(|e| e.name == "FERRITE_LOG")
            .and_then(|e| e.value);
        ensure!(
            log.as_deref() == Some("debug"),
            "the agents run FERRITE_LOG={log:?}, not debug"
        );
        // The rollout was reported: an Event on the ClusterNetwork after the change.
        // Core v1 reads the events.k8s.io Events too, and knows involvedObject selectors.
        let events: Api<k8s_openapi::api::core::v1::Event> = Api::all(cluster.client.clone());
        let selector =
            "involvedObject.kind=ClusterNetwork,involvedObject.name=default,reason=RolloutStarted";
        let seen = events
            .list(&ListParams::default().fields(selector))
            .await?
            .items
            .into_iter()
            .any(|e| {
                [
                    e.event_time.map(|t| t.0),
                    e.series.and_then(|s| s.last_observed_time).map(|t| t.0),
                    e.last_timestamp.map(|t| t.0),
                ]
                .into_iter()
                .flatten()
                .any(|t| t >= started)
            });
        ensure!(
            seen,
            "no RolloutStarted event on clusternetwork/default since the change"
        );
        Ok(())
    }
    .await;
    set_agent_log_level(&cluster, "info").await?;
    wait_rolled_out(
        &cluster,
        "the ClusterNetwork to be Ready again after restoring",
    )
    .await?;
    result
}

/// More pods on one node than its first /26 holds (62 addresses): the agent reports the
/// block filling up, the operator adds a block, the agent hands addresses out of it, and the
/// other nodes route to it. Serialized: it fills one node with pods.
#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn a_node_running_more_pods_than_its_block_holds_gets_another_block() -> Result<()> {
    const PODS: usize = 70;
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "grow").await?;
    let nodes = cluster.node_names().await?;
    let (full, other) = (&nodes[0], &nodes[1]);
    let node_networks: Api<ferrite_crds::NodeNetwork> = Api::all(cluster.client.clone());
    let before = node_networks.get(full).await?.spec.blocks;
    let api = ns.pods();
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{i}"), "labels": {"app": "grow"}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "nodeSelector": {"kubernetes.io/hostname": full},
                "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10.1",
                                "imagePullPolicy": "Never",
                                "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}}]
            }
        }))?;
        api.create(&kube::api::PostParams::default(), &pod).await?;
    }
    let addresses = wait_for(
        &format!("{PODS} pods on {full} to be Running with an address"),
        Duration::from_secs(600),
        || async {
            let running = running_pod_ips(&api, "app=grow").await?;
            Ok((running.len() == PODS).then_some(running))
        },
    )
    .await?;
    let distinct: std::collections::BTreeSet<&String> = addresses.iter().collect();
    ensure!(
        distinct.len() == PODS,
        "{} distinct addresses among {PODS} pods",
        distinct.len()
    );
    let after = node_networks.get(full).await?.spec.blocks;
    ensure!(
        after.len() > before.len(),
        "{full} still holds {after:?} with {PODS} more pods (before: {before:?})"
    );
    let new_blocks: Vec<ipnet::IpNet> = after
        .iter()
        .filter(|b| !before.contains(b))
        .map(|b| b.net())
        .collect::<Result<_, _>>()?;
    // A server in a new block, reached from another node: the peers route the new block.
    let server = ns.pod("server").on_node(full).create().await?;
    let server_ip = pod_ip(&server)?;
    let ip: std::net::IpAddr = server_ip.parse()?;
    // The first block is full of the pause pods: the server's address is a new block's.
    ensure!(
        new_blocks.iter().any(|b| b.contains(&ip)),
        "the server got {ip}, not an address of the new blocks {new_blocks:?}"
    );
    ns.pod("client").on_node(other).create().await?;
    wait_for(
        &format!("client on {other} to reach the server at {server_ip}"),
        Duration::from_secs(60),
        || async { Ok(probe(&ns, "client", &server_ip).await.then_some(())) },
    )
    .await?;
    // And the host running the control plane (the apiserver's path to webhooks): `make up`
    // routed the blocks it found one by one, and the new block through the pool's route.
    let addr = SocketAddr::new(ip, NETEXEC_PORT);
    let hostname = wait_for(
        &format!("the host to reach the server at {addr}"),
        Duration::from_secs(30),
        || async move {
            Ok(
                tokio::task::spawn_blocking(move || http_get(addr, "/hostname"))
                    .await?
                    .ok(),
            )
        },
    )
    .await?;
    ensure!(
        hostname.trim() == "server",
        "the host reached {addr} but it answered {hostname:?}, not the server pod"
    );
    api.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().labels("app=grow"),
    )
    .await?;
    Ok(())
}
