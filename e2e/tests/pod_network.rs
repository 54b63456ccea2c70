//! Ferrite as the cluster's CNI: every pod its own address from its node's blocks, no NAT
//! between pods or from nodes, egress masqueraded to the node address, no leaked addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ferrite_crds::NodeNetwork;
use ferrite_e2e::{
    Cluster, NETEXEC_PORT, OutsideServer, TestNamespace, http_get, in_netns, pod_ip,
    running_pod_ips, wait_for,
};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// The outside host (e2e/scripts/env.sh).
const INTERNET_HOST: &str = "198.51.100.10";
/// The agent's health and metrics port (rendered by the operator: operator/src/agentset.rs).
const AGENT_PORT: u16 = 9893;

/// Each node's InternalIP, by node name.
async fn node_ips(cluster: &Cluster) -> Result<BTreeMap<String, IpAddr>> {
    let mut out = BTreeMap::new();
    for node in cluster.nodes().await? {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ip = node
            .status
            .and_then(|s| s.addresses)
            .unwrap_or_default()
            .into_iter()
            .find(|a| a.type_ == "InternalIP")
            .with_context(|| format!("{name} has no InternalIP"))?
            .address
            .parse()?;
        out.insert(name, ip);
    }
    Ok(out)
}

/// Each node's blocks, from its NodeNetwork.
async fn node_blocks(cluster: &Cluster) -> Result<BTreeMap<String, Vec<IpNet>>> {
    let api: Api<NodeNetwork> = Api::all(cluster.client.clone());
    let mut out = BTreeMap::new();
    for nn in api.list(&ListParams::default()).await?.items {
        let name = nn.metadata.name.clone().unwrap_or_default();
        let blocks = nn
            .spec
            .blocks
            .iter()
            .map(|b| b.net())
            .collect::<Result<Vec<_>, _>>()?;
        out.insert(name, blocks);
    }
    Ok(out)
}

/// The addresses the agent on `node_ip` has allocated (its `/ipam` endpoint).
fn allocated(node_ip: IpAddr) -> Result<BTreeSet<IpAddr>> {
    let text = http_get(SocketAddr::new(node_ip, AGENT_PORT), "/ipam")?;
    let v: serde_json::Value = serde_json::from_str(&text).context("the agent's /ipam")?;
    v["allocations"]
        .as_object()
        .context("no allocations in the agent's /ipam")?
        .keys()
        .map(|k| k.parse().context("an allocated address"))
        .collect()
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn every_node_has_its_network_and_a_ready_agent() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ips = node_ips(&cluster).await?;
    let api: Api<NodeNetwork> = Api::all(cluster.client.clone());
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut seen_blocks = BTreeSet::new();
    for (name, ip) in &ips {
        let nn = api
            .get(name)
            .await
            .with_context(|| format!("NodeNetwork {name}"))?;
        let node_uid = nodes.get(name).await?.metadata.uid;
        let owner = nn
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .find(|o| o.kind == "Node");
        ensure!(
            owner.as_ref().map(|o| &o.name) == Some(name)
                && owner.map(|o| Some(o.uid)) == Some(node_uid),
            "NodeNetwork {name} is not owned by Node {name}"
        );
        ensure!(
            nn.spec.node_ip.0 == ip.to_string(),
            "NodeNetwork {name}: nodeIP {} but the Node's InternalIP is {ip}",
            nn.spec.node_ip.0
        );
        ensure!(
            !nn.spec.blocks.is_empty(),
            "NodeNetwork {name} has no blocks"
        );
        for b in &nn.spec.blocks {
            ensure!(
                seen_blocks.insert(b.0.clone()),
                "block {} handed out twice",
                b.0
            );
        }
        let agent = nn.status.and_then(|s| s.agent).unwrap_or_default();
        ensure!(agent.ready, "the agent on {name} has not reported ready");
        let ready = http_get(SocketAddr::new(*ip, AGENT_PORT), "/readyz")?;
        ensure!(ready.starts_with("ready"), "{name} /readyz: {ready}");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn pods_get_addresses_from_their_nodes_blocks_and_nodes_reach_them_without_nat() -> Result<()>
{
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "blocks").await?;
    let blocks = node_blocks(&cluster).await?;
    let ips = node_ips(&cluster).await?;
    for (node, node_ip) in &ips {
        let pod = ns
            .pod(&format!("web-{node}"))
            .on_node(node)
            .create()
            .await?;
        let ip: IpAddr = pod_ip(&pod)?.parse()?;
        let own = blocks.get(node).cloned().unwrap_or_default();
        ensure!(
            own.iter().any(|b| b.contains(&ip)),
            "pod on {node} got {ip}, outside its blocks {own:?}"
        );
        // The node itself (host-network processes, the kubelet's probes) reaches its pods, and
        // the pod sees the node's own address.
        let node_name = node.clone();
        let seen = in_netns(&node_name, move || {
            http_get(SocketAddr::new(ip, NETEXEC_PORT), "/clientip")
        })??;
        ensure!(
            seen.starts_with(&format!("{node_ip}:")),
            "{node} -> its pod {ip}: the pod saw {seen:?}, expected {node_ip}"
        );
        // And every other node reaches it too.
        for other in ips.keys().filter(|o| *o != node) {
            let other_name = other.clone();
            in_netns(&other_name, move || {
                http_get(SocketAddr::new(ip, NETEXEC_PORT), "/hostname")
            })?
            .with_context(|| format!("{other} -> pod {ip} on {node}"))?;
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn egress_to_the_outside_world_leaves_from_the_node_address() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "masq").await?;
    let ips = node_ips(&cluster).await?;
    let server = OutsideServer::start(INTERNET_HOST, 18_080)?;
    for (node, node_ip) in &ips {
        let name = format!("client-{node}");
        ns.pod(&name).on_node(node).create().await?;
        let target = server.addr.to_string();
        let out = ns
            .exec(&name, &["/agnhost", "connect", &target, "--timeout=5s"])
            .await?;
        ensure!(
            out.success,
            "{name} -> {target}: {}{}",
            out.stdout,
            out.stderr
        );
        let peer = server.next_peer(Duration::from_secs(5))?;
        ensure!(
            peer == *node_ip,
            "the outside host saw {peer} for a pod on {node}; expected the node address {node_ip}"
        );
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn a_hundred_pods_get_a_hundred_distinct_addresses_and_give_them_back() -> Result<()> {
    const PODS: usize = 100;
    let cluster = Cluster::connect().await?;
    let ips = node_ips(&cluster).await?;
    let ns = TestNamespace::create(&cluster, "hundred").await?;
    let api = ns.pods();
    for i in 0..PODS {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{i}"), "labels": {"app": "hundred"}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                // Spread over the nodes, as a Deployment's owner would; a node that fills its
                // blocks gets another (disruptive.rs tests that on one node).
                "topologySpreadConstraints": [{
                    "maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": {"matchLabels": {"app": "hundred"}}
                }],
                "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10.1",
                                "imagePullPolicy": "Never",
                                "resources": {"requests": {"cpu": "1m", "memory": "4Mi"}}}]
            }
        }))?;
        api.create(&PostParams::default(), &pod).await?;
    }
    let addresses = wait_for(
        "100 pods to be Running with an address",
        Duration::from_secs(600),
        || async {
            let running = running_pod_ips(&api, "app=hundred").await?;
            Ok((running.len() == PODS).then_some(running))
        },
    )
    .await?;
    let distinct: BTreeSet<&String> = addresses.iter().collect();
    ensure!(
        distinct.len() == PODS,
        "{} distinct addresses among {PODS} pods",
        distinct.len()
    );
    let pool: IpNet = "10.244.0.0/16".parse()?;
    for a in &addresses {
        let ip: IpAddr = a.parse()?;
        ensure!(pool.contains(&ip), "{ip} is outside the default IPPool");
    }
    api.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default().labels("app=hundred"),
    )
    .await?;
    // Every address comes back (containerd calls DEL twice; the second is a no-op).
    let ours: BTreeSet<IpAddr> = addresses
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    wait_for(
        "the agents to release the 100 addresses",
        Duration::from_secs(300),
        || async {
            let mut held = BTreeSet::new();
            for ip in ips.values() {
                held.extend(allocated(*ip)?.intersection(&ours).copied());
            }
            // An error is "last seen" in the timeout message, and polling goes on.
            ensure!(held.is_empty(), "{} still allocated: {held:?}", held.len());
            Ok(Some(()))
        },
    )
    .await
}
