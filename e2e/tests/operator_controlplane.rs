//! The operator against a real kube-apiserver (and etcd), without a cluster: Nodes are bare
//! objects (no kubelets), the operator runs as a child process with the RBAC that
//! the Helm chart's grants its service account. See `ferrite_e2e::controlplane`.
//!
//! Run (needs the Kubernetes binaries `make up` builds, `e2e/scripts/build-k8s.sh`; no
//! cluster, no root; each test starts its own control plane on free loopback ports):
//!
//! ```sh
//! cargo test --locked -p ferrite-e2e --test operator_controlplane -- --ignored --test-threads=1
//! ```
//!
//! The tests build the operator themselves (`cargo build -p ferrite-operator`), so they never
//! run a stale one.
//!
//! NB: two operators with `--leader-elect=false` racing is not a supported configuration
//! (block choice is single-writer per process), so nothing here tests it as safe.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use ferrite_crds::NodeNetwork;
use ferrite_e2e::controlplane::{
    self, ControlPlane, DEFAULT_BLOCK_SIZE, DEFAULT_POOL, Identity, Options, Process,
};
use ferrite_e2e::wait_for;
use futures::future::try_join_all;
use ipnet::IpNet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rustix::process::Signal;

const LEASE_NAMESPACE: &str = "ferrite-system";
const LEASE_NAME: &str = "ferrite-operator";
/// How long the operator may take to give a new Node its NodeNetwork.
const NODE_NETWORK_TIMEOUT: Duration = Duration::from_secs(60);

fn pool() -> IpNet {
    // A constant that parses.
    DEFAULT_POOL.parse().unwrap_or_else(|_| unreachable!())
}

/// A control plane with Ferrite's CRDs, the operator's RBAC from the Helm chart and the
/// default IPPool and ClusterNetwork.
async fn control_plane(options: Options) -> Result<ControlPlane> {
    let cp = ControlPlane::start(options).await?;
    cp.apply_operator_rbac(&controlplane::chart_manifest(cp.dir())?)?;
    controlplane::apply_default_network(&cp.client, DEFAULT_POOL, DEFAULT_BLOCK_SIZE).await?;
    Ok(cp)
}

/// Starts an operator called `name` (its identity in the Lease too) as its service account.
fn operator(cp: &ControlPlane, binary: &Path, name: &str, extra: &[&str]) -> Result<Process> {
    let identity = format!("--identity={name}");
    // Several operators share this host's network: each serves its metrics on a free port.
    let mut args = vec![identity.as_str(), "--metrics-addr=127.0.0.1:0"];
    args.extend_from_slice(extra);
    cp.spawn(name, binary, &args, Identity::Operator)
}

fn node_ip(i: u32) -> IpAddr {
    // 198.18.0.0/15: addresses for benchmarks, never routed.
    let [_, _, a, b] = (0xc612_0000_u32 + i).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(198, 18, a, b))
}

async fn create_node(client: &Client, name: &str, ip: IpAddr) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let created = nodes
        .create(&PostParams::default(), &controlplane::node(name, ip))
        .await
        .with_context(|| format!("creating Node {name}"))?;
    ensure!(
        ferrite_operator_node_ip(&created) == Some(ip),
        "the apiserver dropped Node {name}'s status.addresses on create: {created:?}"
    );
    Ok(created)
}

/// The InternalIP the operator reads (status.addresses).
fn ferrite_operator_node_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()
}

/// Waits for the NodeNetwork of `name` to have a block; says what the operators logged if not.
async fn node_network_with_block(
    client: &Client,
    name: &str,
    operators: &[&Process],
) -> Result<NodeNetwork> {
    let api: Api<NodeNetwork> = Api::all(client.clone());
    wait_for(
        &format!("NodeNetwork {name} with a block"),
        NODE_NETWORK_TIMEOUT,
        || async {
            Ok(api
                .get_opt(name)
                .await?
                .filter(|nn| !nn.spec.blocks.is_empty()))
        },
    )
    .await
    .with_context(|| logs(operators))
}

fn logs(operators: &[&Process]) -> String {
    operators
        .iter()
        .map(|p| format!("--- {} log ends:\n{}", p.name(), p.log_tail(30)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn single_block(nn: &NodeNetwork) -> Result<IpNet> {
    let [block] = nn.spec.blocks.as_slice() else {
        bail!(
            "NodeNetwork {} should hold one block, holds {:?}",
            nn.name_any(),
            nn.spec.blocks
        );
    };
    Ok(block.net()?)
}

async fn lease_holder(client: &Client) -> Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    Ok(leases
        .get_opt(LEASE_NAME)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Waits until the Lease names one of `candidates`, and returns it.
async fn wait_for_leader(
    client: &Client,
    candidates: &[&Process],
    timeout: Duration,
) -> Result<String> {
    let names: Vec<&str> = candidates.iter().map(|p| p.name()).collect();
    wait_for(
        &format!("one of {names:?} to hold Lease {LEASE_NAMESPACE}/{LEASE_NAME}"),
        timeout,
        || async {
            Ok(lease_holder(client)
                .await?
                .filter(|h| names.contains(&h.as_str())))
        },
    )
    .await
    .with_context(|| logs(candidates))
}

const BECAME_LEADER: &str = "became the leader; starting the controllers";

#[tokio::test]
#[ignore = "needs the Kubernetes binaries (e2e/scripts/build-k8s.sh); starts its own apiserver"]
async fn a_node_gets_an_owned_node_network_and_a_deleted_nodes_block_goes_to_the_next_node()
-> Result<()> {
    let binary = controlplane::operator_binary(false)?;
    // The garbage collector deletes a deleted Node's NodeNetwork through its ownerReference,
    // as in a real cluster: this proves the reference is right, not just present.
    let cp = control_plane(Options {
        garbage_collector: true,
    })
    .await?;
    // A minute of grace: within this test only the agent's report releases the blocks.
    let op = operator(&cp, &binary, "operator-a", &["--release-grace-seconds=60"])?;

    let a = create_node(&cp.client, "node-a", node_ip(1)).await?;
    let nn_a = node_network_with_block(&cp.client, "node-a", &[&op]).await?;
    let block_a = single_block(&nn_a)?;
    ensure!(
        pool().contains(&block_a),
        "{block_a} is outside {DEFAULT_POOL}"
    );
    ensure!(
        nn_a.spec.node_ip.0 == node_ip(1).to_string(),
        "nodeIP {:?}, expected {}",
        nn_a.spec.node_ip,
        node_ip(1)
    );
    let owners = nn_a.owner_references();
    ensure!(
        owners.len() == 1
            && owners[0].kind == "Node"
            && owners[0].api_version == "v1"
            && owners[0].name == "node-a"
            && Some(&owners[0].uid) == a.metadata.uid.as_ref()
            && owners[0].controller == Some(true)
            && owners[0].block_owner_deletion == Some(true),
        "NodeNetwork node-a should be owned by Node node-a (uid {:?}) as its controller: {owners:?}",
        a.metadata.uid
    );

    create_node(&cp.client, "node-b", node_ip(2)).await?;
    let block_b = single_block(&node_network_with_block(&cp.client, "node-b", &[&op]).await?)?;
    ensure!(block_a != block_b, "node-a and node-b both got {block_a}");

    // node-a's agent reports three pods on its block, then the Node is deleted: the
    // NodeNetwork (deleted by the garbage collector) is held while the pods hold addresses.
    let node_networks: Api<NodeNetwork> = Api::all(cp.client.clone());
    let report = |allocated: u32| {
        serde_json::json!({"status": {
            "agent": {"ready": true, "lastHeartbeat": k8s_openapi::jiff::Timestamp::now().to_string()},
            "blocks": [{"cidr": block_a.to_string(), "allocated": allocated, "capacity": 62}],
        }})
    };
    node_networks
        .patch_status("node-a", &PatchParams::default(), &Patch::Merge(&report(3)))
        .await?;
    let nodes: Api<Node> = Api::all(cp.client.clone());
    nodes.delete("node-a", &DeleteParams::default()).await?;
    wait_for(
        "the garbage collector to start deleting NodeNetwork node-a",
        Duration::from_secs(90),
        || async {
            let nn = node_networks.get_opt("node-a").await?;
            ensure!(
                nn.is_some(),
                "NodeNetwork node-a went while its agent reported 3 pods"
            );
            Ok(nn.and_then(|nn| nn.metadata.deletion_timestamp).map(|_| ()))
        },
    )
    .await
    .with_context(|| cp.log_tail("kube-controller-manager", 20))?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = node_networks.get_opt("node-a").await?;
    ensure!(
        held.is_some(),
        "NodeNetwork node-a was released while its agent reported addresses in use"
    );
    node_networks
        .patch_status("node-a", &PatchParams::default(), &Patch::Merge(&report(0)))
        .await?;
    wait_for(
        "NodeNetwork node-a to be released once its agent reports no address in use",
        Duration::from_secs(90),
        || async {
            Ok(node_networks
                .get_opt("node-a")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await
    .with_context(|| cp.log_tail("kube-controller-manager", 20))?;

    // Blocks are handed out lowest first, so the next Node gets node-a's freed block.
    create_node(&cp.client, "node-c", node_ip(3)).await?;
    let block_c = single_block(&node_network_with_block(&cp.client, "node-c", &[&op]).await?)?;
    ensure!(
        block_c == block_a,
        "node-c got {block_c}, expected node-a's freed block {block_a}"
    );
    let all = node_networks.list(&Default::default()).await?.items;
    controlplane::distinct_blocks_in(pool(), &all)?;
    ensure!(
        !op.log().contains("overlapping blocks"),
        "the operator reported overlapping blocks:\n{}",
        op.log()
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the Kubernetes binaries (e2e/scripts/build-k8s.sh); starts its own apiserver"]
async fn fifty_nodes_with_two_operators_get_distinct_blocks_from_one_leader_and_a_killed_leader_is_replaced()
-> Result<()> {
    // Short, so the takeover after SIGKILL is quick to wait for.
    const LEASE: Duration = Duration::from_secs(6);
    let binary = controlplane::operator_binary(false)?;
    let cp = control_plane(Options::default()).await?;
    let lease_flag = format!("--lease-duration={}s", LEASE.as_secs());
    let mut first = operator(&cp, &binary, "operator-1", &[&lease_flag])?;
    let mut second = operator(&cp, &binary, "operator-2", &[&lease_flag])?;
    let leader_name =
        wait_for_leader(&cp.client, &[&first, &second], Duration::from_secs(30)).await?;
    let (leader, follower) = if leader_name == first.name() {
        (&mut first, &mut second)
    } else {
        (&mut second, &mut first)
    };

    // All at once.
    let created = try_join_all((0..50).map(|i| {
        let client = cp.client.clone();
        async move { create_node(&client, &format!("node-{i:02}"), node_ip(i + 10)).await }
    }))
    .await?;
    ensure!(created.len() == 50);
    let node_networks: Api<NodeNetwork> = Api::all(cp.client.clone());
    let all = wait_for(
        "all 50 Nodes to have a NodeNetwork with a block",
        NODE_NETWORK_TIMEOUT,
        || async {
            let items = node_networks.list(&Default::default()).await?.items;
            let done = items.iter().filter(|nn| !nn.spec.blocks.is_empty()).count();
            Ok((done == 50).then_some(items))
        },
    )
    .await
    .with_context(|| logs(&[&*leader, &*follower]))?;
    let blocks = controlplane::distinct_blocks_in(pool(), &all)?;
    ensure!(blocks.len() == 50 && blocks.values().all(|b| b.len() == 1));
    for nn in &all {
        let i: u32 = nn.name_any()["node-".len()..].parse()?;
        ensure!(
            nn.spec.node_ip.0 == node_ip(i + 10).to_string(),
            "NodeNetwork {} has nodeIP {:?}",
            nn.name_any(),
            nn.spec.node_ip
        );
    }
    // Exactly one leader: only it started the controllers and wrote.
    ensure!(
        leader.log().contains(BECAME_LEADER),
        "the Lease holder {} never said it leads:\n{}",
        leader.name(),
        leader.log_tail(30)
    );
    let follower_log = follower.log();
    ensure!(
        follower_log.contains("waiting to become the leader")
            && !follower_log.contains(BECAME_LEADER)
            && !follower_log.contains("created NodeNetwork"),
        "the follower {} should only wait:\n{follower_log}",
        follower.name()
    );
    ensure!(lease_holder(&cp.client).await?.as_deref() == Some(leader.name()));

    // The leader dies without releasing the Lease: the follower takes over once it expires,
    // which is a lease duration after the leader's last renewal (before the kill) plus the
    // lease manager's random 0.1-1 s back-off, and some slack for a loaded machine.
    leader.signal(Signal::KILL)?;
    let killed = Instant::now();
    leader.wait_exit(Duration::from_secs(5)).await?;
    let follower_name = follower.name().to_owned();
    wait_for(
        &format!("{follower_name} to take the Lease over"),
        LEASE + Duration::from_secs(4),
        || async {
            Ok(lease_holder(&cp.client)
                .await?
                .filter(|h| *h == follower_name))
        },
    )
    .await
    .with_context(|| logs(&[&*follower]))?;
    let takeover = killed.elapsed();
    ensure!(
        takeover <= LEASE + Duration::from_secs(4),
        "the takeover took {takeover:?}"
    );
    wait_for(
        "the new leader to start its controllers",
        Duration::from_secs(10),
        || async { Ok(follower.log().contains(BECAME_LEADER).then_some(())) },
    )
    .await?;

    // The new leader starts from what the old one wrote: a new Node gets a fresh block.
    create_node(&cp.client, "node-late", node_ip(99)).await?;
    let late = node_network_with_block(&cp.client, "node-late", &[&*follower]).await?;
    let late_block = single_block(&late)?;
    let all = node_networks.list(&Default::default()).await?.items;
    let blocks = controlplane::distinct_blocks_in(pool(), &all)?;
    ensure!(
        blocks.len() == 51,
        "expected 51 NodeNetworks, found {}",
        blocks.len()
    );
    ensure!(
        blocks
            .iter()
            .filter(|(n, _)| *n != "node-late")
            .all(|(_, b)| !b.contains(&late_block)),
        "node-late's block {late_block} was handed out before"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the Kubernetes binaries (e2e/scripts/build-k8s.sh); starts its own apiserver"]
async fn a_leader_stopped_with_sigterm_releases_the_lease_and_a_follower_takes_over_at_once()
-> Result<()> {
    let binary = controlplane::operator_binary(false)?;
    let cp = control_plane(Options::default()).await?;
    // The default lease duration, 15 s: a takeover well under it proves the release.
    let mut first = operator(&cp, &binary, "operator-1", &[])?;
    wait_for_leader(&cp.client, &[&first], Duration::from_secs(30)).await?;
    let second = operator(&cp, &binary, "operator-2", &[])?;
    wait_for(
        "operator-2 to wait for the Lease",
        Duration::from_secs(30),
        || async {
            Ok(second
                .log()
                .contains("waiting to become the leader")
                .then_some(()))
        },
    )
    .await
    .with_context(|| logs(&[&second]))?;

    first.signal(Signal::TERM)?;
    let stopped = Instant::now();
    let status = first.wait_exit(Duration::from_secs(10)).await?;
    ensure!(
        status.success(),
        "a stopped leader exits 0, got {status}:\n{}",
        first.log_tail(20)
    );
    ensure!(
        first.log().contains("released the Lease"),
        "{}",
        first.log_tail(20)
    );
    wait_for_leader(&cp.client, &[&second], Duration::from_secs(5)).await?;
    let takeover = stopped.elapsed();
    ensure!(
        takeover < Duration::from_secs(5),
        "the takeover took {takeover:?}"
    );
    create_node(&cp.client, "node-a", node_ip(1)).await?;
    node_network_with_block(&cp.client, "node-a", &[&second]).await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the Kubernetes binaries (e2e/scripts/build-k8s.sh); starts its own apiserver"]
async fn a_leader_that_loses_the_lease_stops_and_exits_non_zero() -> Result<()> {
    const LEASE: Duration = Duration::from_secs(6);
    let binary = controlplane::operator_binary(false)?;
    let cp = control_plane(Options::default()).await?;
    let lease_flag = format!("--lease-duration={}s", LEASE.as_secs());
    let leases: Api<Lease> = Api::namespaced(cp.client.clone(), LEASE_NAMESPACE);

    // Another holder appears (someone forced the Lease over): the leader stops at once.
    let mut first = operator(&cp, &binary, "operator-1", &[&lease_flag])?;
    wait_for_leader(&cp.client, &[&first], Duration::from_secs(30)).await?;
    let intruder = serde_json::json!({"spec": {"holderIdentity": "intruder"}});
    leases
        .patch(
            LEASE_NAME,
            &PatchParams::default(),
            &Patch::Merge(&intruder),
        )
        .await?;
    let status = first.wait_exit(Duration::from_secs(5)).await?;
    ensure!(
        !status.success(),
        "a leader that lost the Lease must exit non-zero, got {status}"
    );
    ensure!(
        first.log().contains("the Lease is now held by intruder"),
        "{}",
        first.log_tail(20)
    );

    // Renewals fail (the operator's lease permission is revoked): the leader stops before
    // its Lease expires.
    let free = serde_json::json!({"spec": {"holderIdentity": null, "renewTime": null, "acquireTime": null}});
    leases
        .patch(LEASE_NAME, &PatchParams::default(), &Patch::Merge(&free))
        .await?;
    let mut second = operator(&cp, &binary, "operator-2", &[&lease_flag])?;
    wait_for_leader(&cp.client, &[&second], Duration::from_secs(30)).await?;
    wait_for(
        "operator-2 to start its controllers",
        Duration::from_secs(10),
        || async { Ok(second.log().contains(BECAME_LEADER).then_some(())) },
    )
    .await?;
    // The chart's RoleBinding in the operator's namespace grants the Lease (and the agent's
    // DaemonSet and ServiceAccount).
    let bindings: Api<RoleBinding> = Api::namespaced(cp.client.clone(), LEASE_NAMESPACE);
    let revoked = Instant::now();
    bindings
        .delete("ferrite-operator", &DeleteParams::default())
        .await
        .context("revoking the operator's lease permission")?;
    let status = second.wait_exit(LEASE + Duration::from_secs(2)).await?;
    let stopped_after = revoked.elapsed();
    ensure!(
        !status.success(),
        "a leader that cannot renew must exit non-zero, got {status}"
    );
    let log = second.log();
    ensure!(
        log.contains("no renewal was seen before"),
        "{}",
        second.log_tail(20)
    );
    // It stopped before its Lease could expire and a follower take over.
    ensure!(
        stopped_after < LEASE,
        "stopped {stopped_after:?} after the revocation, the lease lasts {LEASE:?}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs the Kubernetes binaries `make up` builds (no cluster): see the module docs"]
async fn a_node_whose_agent_reports_its_blocks_nearly_full_gets_another_block() -> Result<()> {
    let binary = controlplane::operator_binary(false)?;
    let cp = control_plane(Options::default()).await?;
    let op = operator(&cp, &binary, "operator-a", &[])?;
    create_node(&cp.client, "node-a", node_ip(1)).await?;
    let first = single_block(&node_network_with_block(&cp.client, "node-a", &[&op]).await?)?;
    let node_networks: Api<NodeNetwork> = Api::all(cp.client.clone());
    // The agent's report, as the agent writes it (a merge patch of the status subresource).
    let report = |allocated: u32| {
        serde_json::json!({"status": {
            "agent": {"ready": true, "lastHeartbeat": k8s_openapi::jiff::Timestamp::now().to_string()},
            "blocks": [{"cidr": first.to_string(), "allocated": allocated, "capacity": 62}],
        }})
    };
    // Plenty free: the node keeps one block.
    node_networks
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(&report(20)),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let nn = node_networks.get("node-a").await?;
    ensure!(
        nn.spec.blocks.len() == 1,
        "node-a got a block with 42 of 62 addresses free: {:?}",
        nn.spec.blocks
    );
    // 58 of 62 in use (fewer than 8 free): a second block, distinct and inside the pool.
    node_networks
        .patch_status(
            "node-a",
            &PatchParams::default(),
            &Patch::Merge(&report(58)),
        )
        .await?;
    let grown = wait_for(
        "node-a to get a second block",
        NODE_NETWORK_TIMEOUT,
        || async {
            let nn = node_networks.get("node-a").await?;
            Ok((nn.spec.blocks.len() == 2).then_some(nn))
        },
    )
    .await
    .with_context(|| logs(&[&op]))?;
    let blocks = grown
        .spec
        .blocks
        .iter()
        .map(|b| b.net())
        .collect::<Result<Vec<IpNet>, _>>()?;
    ensure!(blocks[0] == first, "the first block changed: {blocks:?}");
    ensure!(
        blocks[1] != first && pool().contains(&blocks[1]),
        "the second block {} is not a new block of {DEFAULT_POOL}",
        blocks[1]
    );
    Ok(())
}
