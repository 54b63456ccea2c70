//! Smoke tests of the local cluster itself: what every later feature test stands on.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use ferrite_e2e::{Cluster, NETEXEC_PORT, TestNamespace, pod_ip, wait_for};

/// The Kubernetes version the cluster is built at (e2e/scripts/versions.env).
const K8S_VERSION: &str = "v1.34.10";
/// The address of the "internet host" outside the cluster (e2e/scripts/env.sh).
const INTERNET_HOST: &str = "198.51.100.10";

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn three_nodes_are_ready_at_the_pinned_version() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let nodes = cluster.nodes().await?;
    ensure!(nodes.len() == 3, "expected 3 nodes, found {}", nodes.len());
    for node in nodes {
        let name = node.metadata.name.unwrap_or_default();
        let status = node.status.unwrap_or_default();
        let version = status
            .node_info
            .map(|i| i.kubelet_version)
            .unwrap_or_default();
        ensure!(
            version == K8S_VERSION,
            "{name} runs kubelet {version}, expected {K8S_VERSION}"
        );
        let ready = status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ensure!(ready, "{name} is not Ready");
        let unschedulable = node.spec.and_then(|s| s.unschedulable).unwrap_or(false);
        ensure!(!unschedulable, "{name} is cordoned");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn pods_on_every_node_reach_each_other() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "mesh").await?;
    let nodes = cluster.node_names().await?;
    let mut pods = Vec::new();
    for node in &nodes {
        let pod = ns
            .pod(&format!("netexec-{node}"))
            .on_node(node)
            .create()
            .await?;
        pods.push((format!("netexec-{node}"), pod_ip(&pod)?));
    }
    let distinct: BTreeSet<&String> = pods.iter().map(|(_, ip)| ip).collect();
    ensure!(distinct.len() == pods.len(), "pod IPs collide: {pods:?}");
    for (from, from_ip) in &pods {
        for (to, ip) in &pods {
            ns.connect(from, ip, NETEXEC_PORT).await?;
            // The peer sees our own address, not a NATed one: netexec echoes the client address.
            let url = format!("http://{ip}:{NETEXEC_PORT}/clientip");
            let out = ns.exec(from, &["curl", "-s", "-m", "5", &url]).await?;
            ensure!(
                out.stdout.starts_with(&format!("{from_ip}:")),
                "{from} -> {to}: peer saw {:?}, expected {from_ip}",
                out.stdout
            );
        }
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn a_pod_resolves_kubernetes_default_through_cluster_dns() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "dns").await?;
    // NB: agnhost's Debian nslookup applies the pod's search domains; busybox's (>= 1.29) does not.
    ns.pod("client").create().await?;
    let answer = wait_for(
        "nslookup kubernetes.default to answer",
        Duration::from_secs(60),
        || async {
            let out = ns
                .exec("client", &["nslookup", "kubernetes.default"])
                .await?;
            ensure!(out.success, "nslookup failed: {}{}", out.stdout, out.stderr);
            Ok(Some(out.stdout))
        },
    )
    .await?;
    // The answer section: "Name: kubernetes.default.svc.cluster.local" then "Address: 10.96.0.1".
    let after_name = answer
        .split_once("Name:\tkubernetes.default.svc.cluster.local")
        .map(|(_, rest)| rest)
        .ok_or_else(|| {
            anyhow::anyhow!("no answer for kubernetes.default.svc.cluster.local in {answer}")
        })?;
    let address = after_name
        .lines()
        .find_map(|l| l.strip_prefix("Address: "))
        .map(str::trim);
    ensure!(
        address == Some("10.96.0.1"),
        "kubernetes.default resolved to {address:?}: {answer}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn a_pod_reaches_the_apiserver_through_the_kubernetes_service() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "svc").await?;
    ns.pod("client").create().await?;
    ns.connect("client", "10.96.0.1", 443).await
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn a_pod_reaches_the_host_outside_the_cluster() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "egress").await?;
    ns.pod("client").create().await?;
    let out = ns
        .exec("client", &["ping", "-c", "1", "-W", "3", INTERNET_HOST])
        .await?;
    ensure!(
        out.success,
        "ping {INTERNET_HOST} failed: {}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn ferrites_own_images_are_on_every_node_and_run() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let ns = TestNamespace::create(&cluster, "images").await?;
    for node in cluster.node_names().await? {
        for image in ["ferrite-agent", "ferrite-operator", "ferrite-web"] {
            let logs = ns
                .pod(&format!("{image}-{node}"))
                .on_node(&node)
                .image(&format!("localhost/{image}:dev"), &["--version"])
                .run_to_completion()
                .await?;
            ensure!(
                logs.contains(env!("CARGO_PKG_VERSION")),
                "{image} on {node} printed {logs:?}"
            );
        }
    }
    Ok(())
}
