//! Benchmark 3: how long the operator takes, from a cold start, to give 1,000 Nodes their
//! pod address blocks, and its peak memory doing it.
//!
//! On a private etcd + kube-apiserver (`ferrite_e2e::controlplane`; no kubelets, the Nodes
//! are objects shaped like what a kubelet registers): the default IPPool and ClusterNetwork
//! and the Nodes exist first, then the release build of `ferrite-operator` starts, as its
//! service account with the RBAC of the Helm chart's and leader election on, and a
//! watch on NodeNetworks times it until every Node has one with a block. Then every block
//! is checked to be distinct and inside the pool.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use ferrite_crds::{Cidr, IpAddress, NodeNetwork, NodeNetworkSpec};
use ferrite_e2e::controlplane::{
    self, BlockWatch, ControlPlane, DEFAULT_BLOCK_SIZE, DEFAULT_POOL, Identity, Options,
};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::Resource as _;
use kube::api::{Api, DeleteParams, PostParams};

use crate::report::{Milestone, OperatorReport};
use crate::{Binaries, progress, sys};

/// How the benchmark runs.
pub struct Settings {
    /// How many Nodes.
    pub nodes: usize,
    /// The operator's `--concurrency`; `None`: its default.
    pub concurrency: Option<u16>,
}

/// The longest the operator may take before the run is called failed.
const TIMEOUT: Duration = Duration::from_secs(180);
/// Nodes created at once while setting up.
const CREATE_CONCURRENCY: usize = 32;

/// Runs the benchmark.
pub fn run(bins: &Binaries, s: &Settings) -> Result<OperatorReport> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the benchmark's runtime")?
        .block_on(run_async(&bins.operator, s))
}

async fn run_async(operator: &Path, s: &Settings) -> Result<OperatorReport> {
    progress("operator: starting etcd and kube-apiserver");
    let cp = ControlPlane::start(Options::default()).await?;
    cp.apply_operator_rbac(&controlplane::chart_manifest(cp.dir())?)?;
    controlplane::apply_default_network(&cp.client, DEFAULT_POOL, DEFAULT_BLOCK_SIZE).await?;
    sys::check_interrupted()?;

    progress(&format!("operator: creating {} Nodes", s.nodes));
    let created = Instant::now();
    let nodes = (0..s.nodes).map(bench_node).collect::<Result<Vec<_>>>()?;
    controlplane::create_nodes(&cp.client, nodes, CREATE_CONCURRENCY).await?;
    let create_nodes = created.elapsed();
    sys::check_interrupted()?;

    warm_up(&cp).await?;

    // Established (its first list done) before the operator starts: nothing can be missed.
    let mut watch = BlockWatch::start(&cp.client).await?;
    ensure!(
        watch.count() == 0,
        "NodeNetworks with blocks exist before the operator started"
    );

    progress("operator: starting ferrite-operator (cold) and timing it");
    let mut args = vec![
        "--identity=bench-operator".to_owned(),
        "--metrics-addr=127.0.0.1:0".to_owned(),
    ];
    if let Some(c) = s.concurrency {
        args.push(format!("--concurrency={c}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let control_plane_cpu = || -> Result<[Duration; 2]> {
        let cpu = |name: &str| {
            cp.process(name)
                .with_context(|| format!("no {name} process"))?
                .cpu_time()
        };
        Ok([cpu("kube-apiserver")?, cpu("etcd")?])
    };
    let cpu_before = control_plane_cpu()?;
    let wall_start = SystemTime::now();
    let start = Instant::now();
    let mut process = cp.spawn("ferrite-operator", operator, &args, Identity::Operator)?;

    let marks = milestones(s.nodes);
    let mut reached = Vec::new();
    while watch.count() < s.nodes {
        sys::check_interrupted()?;
        if let Some(status) = process.try_wait()? {
            bail!(
                "ferrite-operator exited ({status}) after {} of {} Nodes; its log ends:\n{}",
                watch.count(),
                s.nodes,
                process.log_tail(20)
            );
        }
        if start.elapsed() > TIMEOUT {
            bail!(
                "only {} of {} Nodes had a block after {TIMEOUT:?}; the operator's log ends:\n{}",
                watch.count(),
                s.nodes,
                process.log_tail(20)
            );
        }
        // Short waits, so an interrupt or the operator's exit is noticed.
        if watch.next(Duration::from_millis(500)).await?.is_some() && marks.contains(&watch.count())
        {
            reached.push(Milestone {
                nodes: watch.count(),
                after: start.elapsed(),
            });
        }
    }
    let to_all_blocks = start.elapsed();
    let peak_rss_bytes = process.peak_rss_bytes()?;
    let cpu = process.cpu_time()?;
    let cpu_after = control_plane_cpu()?;
    drop(watch);

    progress("operator: checking the blocks, stopping the operator");
    let api: Api<NodeNetwork> = Api::all(cp.client.clone());
    let all = api.list(&Default::default()).await?.items;
    let pool = DEFAULT_POOL.parse().context("the default pool parses")?;
    let blocks = controlplane::distinct_blocks_in(pool, &all)?;
    ensure!(
        blocks.len() == s.nodes && blocks.values().all(|b| b.len() == 1),
        "expected {} NodeNetworks with one block each, found {}",
        s.nodes,
        blocks.len()
    );
    let log = process.log();
    ensure!(
        !log.contains("overlapping blocks"),
        "the operator reported overlapping blocks:\n{}",
        process.log_tail(20)
    );
    process.terminate()?;
    let status = process.wait_exit(Duration::from_secs(15)).await?;
    ensure!(
        status.success(),
        "ferrite-operator exited with {status} on SIGTERM"
    );

    let since_start = |needle: &str| phase(&log, needle, wall_start);
    Ok(OperatorReport {
        nodes: s.nodes,
        pool: DEFAULT_POOL.to_owned(),
        block_size: DEFAULT_BLOCK_SIZE,
        concurrency: s.concurrency,
        kubernetes: kubernetes_version(),
        create_nodes,
        to_leader: since_start("became the leader"),
        to_caches: since_start("caches filled"),
        milestones: reached,
        to_all_blocks,
        peak_rss_bytes,
        cpu,
        apiserver_cpu: cpu_after[0].saturating_sub(cpu_before[0]),
        etcd_cpu: cpu_after[1].saturating_sub(cpu_before[1]),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        distinct_blocks: blocks.len(),
    })
}

/// Writes and deletes one NodeNetwork the way the operator writes them (as its service
/// account, owned by a Node), so that the first-use costs of a freshly started apiserver
/// (seen: a first create stalled 2 s right after the CRDs and RBAC were applied) are not
/// counted against the operator. A real cluster's apiserver is long warm.
async fn warm_up(cp: &ControlPlane) -> Result<()> {
    let client = cp.client_as(Identity::Operator).await?;
    let nodes: Api<Node> = Api::all(cp.client.clone());
    let node = nodes.get("bench-node-0000").await?;
    let api: Api<NodeNetwork> = Api::all(client);
    let mut nn = NodeNetwork::new(
        "bench-warm-up",
        NodeNetworkSpec {
            blocks: vec![Cidr("10.244.255.192/26".into())],
            node_ip: IpAddress("198.18.255.255".into()),
            tunnel_endpoint: None,
        },
    );
    nn.metadata.owner_references = Some(vec![OwnerReference {
        block_owner_deletion: Some(true),
        controller: Some(true),
        ..node
            .controller_owner_ref(&())
            .context("the Node has a name and uid")?
    }]);
    api.create(&PostParams::default(), &nn)
        .await
        .context("warming the apiserver up")?;
    api.delete("bench-warm-up", &DeleteParams::default())
        .await?;
    let start = Instant::now();
    while api.get_opt("bench-warm-up").await?.is_some() {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the warm-up NodeNetwork is not gone after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The counts at which the time is noted: the first block, each quarter, the last.
fn milestones(nodes: usize) -> BTreeSet<usize> {
    [1, nodes / 4, nodes / 2, nodes * 3 / 4, nodes]
        .into_iter()
        .filter(|n| *n > 0)
        .collect()
}

/// When the operator logged `needle` first, counted from `start` (its log lines begin with
/// an RFC 3339 timestamp).
fn phase(log: &str, needle: &str, start: SystemTime) -> Option<Duration> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let at: Timestamp = line.split_whitespace().next()?.parse().ok()?;
    SystemTime::from(at).duration_since(start).ok()
}

/// Node `i`, shaped like what a kubelet registers (labels, addresses, capacity, conditions,
/// node info, a list of images), so the operator's caches hold what they would hold in a
/// real cluster. 198.18.0.0/15 addresses: reserved for benchmarks, never routed.
fn bench_node(i: usize) -> Result<Node> {
    let name = format!("bench-node-{i:04}");
    let [_, _, a, b] = (0xc612_0000_u32 + u32::try_from(i)?).to_be_bytes();
    let ip = IpAddr::V4(Ipv4Addr::new(198, 18, a, b));
    let condition = |type_: &str, status: &str, reason: &str| {
        serde_json::json!({
            "type": type_, "status": status, "reason": reason,
            "message": format!("kubelet reports {type_} is {status}"),
            "lastHeartbeatTime": "2026-01-01T00:00:00Z",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        })
    };
    let images: Vec<_> = (0..10)
        .map(|k| {
            serde_json::json!({
                "names": [
                    format!("registry.example/team-{k}/app@sha256:{:064x}", k * 7919 + i),
                    format!("registry.example/team-{k}/app:v1.{k}.0"),
                ],
                "sizeBytes": 50_000_000 + k * 1_000_000,
            })
        })
        .collect();
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                "node.kubernetes.io/instance-type": "standard-4",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"providerID": format!("bench://{name}")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
            "capacity": {"cpu": "4", "memory": "16393072Ki", "pods": "110", "ephemeral-storage": "102687672Ki"},
            "allocatable": {"cpu": "4", "memory": "16290672Ki", "pods": "110", "ephemeral-storage": "94636958491"},
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
                condition("Ready", "True", "KubeletReady"),
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": format!("{:032x}", i), "systemUUID": format!("{:032x}", i + 1),
                "bootID": format!("{:032x}", i + 2), "kernelVersion": "6.1.0-bench",
                "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.34.10", "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": images,
        },
    });
    Ok(serde_json::from_value(node)?)
}

/// `kube-apiserver --version`, or `unknown`.
fn kubernetes_version() -> String {
    controlplane::k8s_bin_dir()
        .ok()
        .and_then(|bin| {
            sys::run(std::process::Command::new(bin.join("kube-apiserver")).arg("--version")).ok()
        })
        .map(|v| v.trim().trim_start_matches("Kubernetes ").to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use kube::ResourceExt as _;

    use super::*;

    #[test]
    fn milestones_are_the_first_node_each_quarter_and_the_last() {
        assert_eq!(
            milestones(1000).into_iter().collect::<Vec<_>>(),
            [1, 250, 500, 750, 1000]
        );
        assert_eq!(milestones(2).into_iter().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_phase_is_timed_from_the_operators_log_timestamps() {
        let log = "2026-11-22T18:00:01.500000Z  INFO ferrite_operator::leader: became the leader; starting the controllers identity=x\n";
        let start = SystemTime::from("2026-11-22T18:00:01Z".parse::<Timestamp>().unwrap());
        assert_eq!(
            phase(log, "became the leader", start),
            Some(Duration::from_millis(500))
        );
        assert_eq!(phase(log, "caches filled", start), None);
    }

    #[test]
    fn bench_nodes_are_valid_nodes_with_distinct_internal_ips() {
        let a = bench_node(0).unwrap();
        let b = bench_node(999).unwrap();
        let ip = |n: &Node| {
            n.status.as_ref().unwrap().addresses.as_ref().unwrap()[0]
                .address
                .clone()
        };
        assert_eq!(ip(&a), "198.18.0.0");
        assert_eq!(ip(&b), "198.18.3.231");
        assert_eq!(a.name_any(), "bench-node-0000");
        assert_eq!(a.status.unwrap().images.unwrap().len(), 10);
    }
}
