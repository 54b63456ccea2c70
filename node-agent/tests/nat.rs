//! Privileged tests of the egress masquerade (`nat`), run as root: the two-node topology of
//! `common_node` plus an "internet" host behind node1 that has no route to the pods.
//! `nat::apply`/`nat::remove` run on a thread inside node1's namespace, so the `nft` they start
//! works there.

#[allow(dead_code)] // each test file uses a different part of the scaffolding
mod common_node;

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use common_node::{Cluster, INTERNET_IP, NODE1_UPLINK_IP, Netns, seen_from};
use ferrite_agent::datapath::node;
use ferrite_agent::nat::{self, Masquerade};
use ferrite_agent::netns;
use ferrite_agent::routing::Mode;
use ipnet::Ipv4Net;

fn nets(list: &[&str]) -> Result<Vec<Ipv4Net>> {
    Ok(list.iter().map(|s| s.parse()).collect::<Result<_, _>>()?)
}

/// Pools 10.201.0.0/16 masqueraded; pods and Services exempt, plus `extra`.
fn masquerade(extra: &[&str]) -> Result<Masquerade> {
    let mut exempt = nets(&["10.201.0.0/16", "10.96.0.0/12"])?;
    exempt.extend(nets(extra)?);
    Ok(Masquerade {
        sources: nets(&["10.201.0.0/16"])?,
        exempt,
    })
}

fn apply_in(ns: &Netns, m: &Masquerade) -> Result<()> {
    netns::run_in(ns.fd(), || nat::apply(m))?.with_context(|| format!("nat::apply in {}", ns.name))
}

fn remove_in(ns: &Netns) -> Result<()> {
    netns::run_in(ns.fd(), nat::remove)?.with_context(|| format!("nat::remove in {}", ns.name))
}

/// A cluster with Native routes between the nodes and the internet host behind node1.
async fn cluster(tag: &str) -> Result<Cluster> {
    let c = Cluster::with_internet(tag)?;
    for (node, peer) in [(&c.node1, &c.node2), (&c.node2, &c.node1)] {
        let host = netns::handle_in(node.ns.fd())?;
        node::apply(&host, &node.desired(Mode::Native, &[peer.as_peer()]), None).await?;
    }
    Ok(c)
}

/// The packets counted by the masquerade rule.
fn masqueraded_packets(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["nft", "-j", "list", "table", "ip", nat::TABLE])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["expr"].as_array())
        .flatten()
        .find_map(|e| e["counter"]["packets"].as_u64())
        .context("no counter in table ip ferrite")
}

fn tables(ns: &Netns) -> Result<String> {
    ns.exec(&["nft", "list", "tables"])
}

#[tokio::test]
async fn pod_egress_leaves_with_the_node_address_but_pod_to_pod_keeps_the_pod_address() -> Result<()>
{
    let c = cluster("masq").await?;
    let (pod1, pod2) = (&c.node1.pod, &c.node2.pod);
    let internet = c.internet()?;
    apply_in(&c.node1.ns, &masquerade(&[])?)?;
    // Re-applying replaces the table atomically and changes nothing.
    apply_in(&c.node1.ns, &masquerade(&[])?)?;

    let seen = seen_from(&pod1.ns, internet, IpAddr::V4(INTERNET_IP))?;
    ensure!(
        seen == IpAddr::V4(NODE1_UPLINK_IP),
        "the internet host sees {seen}, not node1's address"
    );
    ensure!(masqueraded_packets(&c.node1.ns)? > 0);

    let seen = seen_from(&pod1.ns, &pod2.ns, IpAddr::V4(pod2.ip))?;
    ensure!(
        seen == IpAddr::V4(pod1.ip),
        "pod-to-pod traffic was masqueraded: pod2 sees {seen}"
    );
    Ok(())
}

#[tokio::test]
async fn a_non_masquerade_cidr_keeps_the_pod_address() -> Result<()> {
    let c = cluster("nomasq").await?;
    let internet = c.internet()?;
    // Without NAT the internet host must route pod addresses back through node1.
    let via = NODE1_UPLINK_IP.to_string();
    internet.ip(&["route", "add", "10.201.0.0/16", "via", &via])?;
    apply_in(&c.node1.ns, &masquerade(&["198.51.100.0/24"])?)?;
    let seen = seen_from(&c.node1.pod.ns, internet, IpAddr::V4(INTERNET_IP))?;
    ensure!(
        seen == IpAddr::V4(c.node1.pod.ip),
        "traffic to a nonMasqueradeCIDR was masqueraded: the host sees {seen}"
    );
    Ok(())
}

#[tokio::test]
async fn without_sources_nothing_hooks_and_remove_is_idempotent() -> Result<()> {
    let c = cluster("remove").await?;
    let n1 = &c.node1.ns;
    remove_in(n1).context("remove before anything was applied")?;

    apply_in(
        n1,
        &Masquerade {
            sources: vec![],
            exempt: nets(&["10.96.0.0/12"])?,
        },
    )?;
    let table = n1.exec(&["nft", "list", "table", "ip", nat::TABLE])?;
    ensure!(table.contains(nat::EXEMPT_SET), "{table}");
    ensure!(!table.contains("chain"), "no sources, no chain: {table}");

    apply_in(n1, &masquerade(&[])?)?;
    ensure!(tables(n1)?.contains("table ip ferrite"));
    remove_in(n1)?;
    ensure!(
        !tables(n1)?.contains("ferrite"),
        "the table is still there: {}",
        tables(n1)?
    );
    remove_in(n1).context("a second remove")?;
    Ok(())
}
