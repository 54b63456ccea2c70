//! Privileged tests of the inter-node datapath (`datapath::node`), run as root: two node
//! namespaces on a veth underlay with one pod each (see `common_node`). `node::apply` runs in
//! each node through a netlink socket opened in its namespace.

#[allow(dead_code)] // each test file uses a different part of the scaffolding
mod common_node;

use std::net::IpAddr;

use anyhow::{Context, Result, ensure};
use common_node::{Cluster, Connection, Netns, Node, seen_from};
use ferrite_agent::datapath::node::{self, NODE_ROUTE_PROTOCOL, Report, Tunnel};
use ferrite_agent::netns;
use ferrite_agent::routing::{Mode, Peer, VXLAN_DEVICE, vtep_mac};
use serde_json::{Value, json};

const VNI: u32 = 4242;
const PORT: u16 = 8472;
const VXLAN: Mode = Mode::Vxlan {
    vni: VNI,
    port: PORT,
};

fn tunnel(node: &Node) -> Tunnel {
    Tunnel {
        vni: VNI,
        port: PORT,
        local: node.ip,
    }
}

/// Applies the state for `peers` in `node`, then checks that applying it again changes nothing.
async fn apply(node: &Node, mode: Mode, peers: &[Peer]) -> Result<Report> {
    let host = netns::handle_in(node.ns.fd())?;
    let desired = node.desired(mode, peers);
    let report = node::apply(&host, &desired, Some(&tunnel(node)))
        .await
        .with_context(|| format!("apply {mode:?} in {}", node.ns.name))?;
    let again = node::apply(&host, &desired, Some(&tunnel(node))).await?;
    ensure!(
        again.changes() == 0 && again.unchanged > 0,
        "a second apply in {} still changed something: {again:?}",
        node.ns.name
    );
    Ok(report)
}

/// Both nodes, each knowing the other.
async fn converge(c: &Cluster, mode: Mode) -> Result<()> {
    apply(&c.node1, mode, &[c.node2.as_peer()]).await?;
    apply(&c.node2, mode, &[c.node1.as_peer()]).await?;
    Ok(())
}

/// `ip route show proto 254` (the main table).
fn node_routes(ns: &Netns) -> Result<Vec<Value>> {
    let proto = NODE_ROUTE_PROTOCOL.to_string();
    let routes = ns.ip_json(&["route", "show", "proto", &proto])?;
    Ok(routes.as_array().cloned().unwrap_or_default())
}

/// `(dst, gateway, dev, onlink)` of each route.
fn route_summary(routes: &[Value]) -> Vec<(String, String, String, bool)> {
    routes
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            let onlink = r["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("onlink")));
            (s("dst"), s("gateway"), s("dev"), onlink)
        })
        .collect()
}

fn route(dst: &str, gw: &str, dev: &str, onlink: bool) -> (String, String, String, bool) {
    (dst.into(), gw.into(), dev.into(), onlink)
}

/// `ip -d link show ferrite.vxlan`, or None.
fn vxlan_device(ns: &Netns) -> Result<Option<Value>> {
    let links = ns.ip_json(&["-d", "link", "show"])?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["ifname"] == VXLAN_DEVICE)
        .cloned())
}

fn permanent_neighbours(ns: &Netns) -> Result<Value> {
    ns.ip_json(&["neigh", "show", "dev", VXLAN_DEVICE, "nud", "permanent"])
}

fn fdb(ns: &Netns) -> Result<Value> {
    let out = ns.exec(&["bridge", "-j", "fdb", "show", "dev", VXLAN_DEVICE])?;
    Ok(serde_json::from_str(&out)?)
}

fn mac(ip: IpAddr) -> String {
    vtep_mac(ip)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test]
async fn switching_native_vxlan_native_keeps_pods_connected_without_nat() -> Result<()> {
    let c = Cluster::new("switch")?;
    let (pod1, pod2) = (&c.node1.pod, &c.node2.pod);
    let pod2_ip = IpAddr::V4(pod2.ip);

    converge(&c, Mode::Native).await?;
    ensure!(vxlan_device(&c.node1.ns)?.is_none());
    ensure!(
        route_summary(&node_routes(&c.node1.ns)?)
            == [route("10.201.2.0/26", "192.168.77.2", "ul0", false)],
        "{:?}",
        node_routes(&c.node1.ns)?
    );
    let mut long_lived = Connection::open(&pod1.ns, &pod2.ns, pod2_ip)?;
    ensure!(
        long_lived.peer.ip() == IpAddr::V4(pod1.ip),
        "pod2 sees {} instead of pod1's own address",
        long_lived.peer
    );

    converge(&c, VXLAN).await?;
    for (node, peer) in [(&c.node1, &c.node2), (&c.node2, &c.node1)] {
        let dev = vxlan_device(&node.ns)?.context("no vxlan device after switching to VXLAN")?;
        let data = &dev["linkinfo"]["info_data"];
        ensure!(dev["linkinfo"]["info_kind"] == "vxlan", "{dev}");
        ensure!(data["id"] == VNI && data["port"] == PORT, "{data}");
        ensure!(
            data["local"] == node.ip.to_string() && data["link"] == "ul0",
            "{data}"
        );
        ensure!(data["learning"] == false, "{data}");
        ensure!(dev["mtu"] == 1450, "1500-byte underlay minus 50: {dev}");
        ensure!(dev["address"] == mac(node.ip), "{dev}");
        ensure!(
            dev["flags"]
                .as_array()
                .is_some_and(|f| f.contains(&json!("UP")))
        );
        let gw = format!("10.201.{}.0", if node.ip == c.node1.ip { 2 } else { 1 });
        let block = format!("{gw}/26");
        ensure!(
            route_summary(&node_routes(&node.ns)?) == [route(&block, &gw, VXLAN_DEVICE, true)],
            "{:?}",
            node_routes(&node.ns)?
        );
        ensure!(
            permanent_neighbours(&node.ns)?
                == json!([{"dst": gw, "lladdr": mac(peer.ip), "state": ["PERMANENT"]}]),
            "{}",
            permanent_neighbours(&node.ns)?
        );
        let entries = fdb(&node.ns)?;
        ensure!(
            entries.as_array().map(Vec::len) == Some(1)
                && entries[0]["mac"] == mac(peer.ip)
                && entries[0]["dst"] == peer.ip.to_string(),
            "{entries}"
        );
    }
    long_lived
        .exchange()
        .context("the connection opened in Native mode broke when switching to VXLAN")?;
    ensure!(seen_from(&pod1.ns, &pod2.ns, pod2_ip)? == IpAddr::V4(pod1.ip));

    converge(&c, Mode::Native).await?;
    ensure!(vxlan_device(&c.node1.ns)?.is_none() && vxlan_device(&c.node2.ns)?.is_none());
    ensure!(
        route_summary(&node_routes(&c.node1.ns)?)
            == [route("10.201.2.0/26", "192.168.77.2", "ul0", false)]
    );
    ensure!(
        route_summary(&node_routes(&c.node2.ns)?)
            == [route("10.201.1.0/26", "192.168.77.1", "ul0", false)]
    );
    long_lived
        .exchange()
        .context("the connection broke when switching back to Native")?;
    ensure!(seen_from(&pod1.ns, &pod2.ns, pod2_ip)? == IpAddr::V4(pod1.ip));
    Ok(())
}

#[tokio::test]
async fn a_peer_that_leaves_loses_its_routes_and_remove_all_uninstalls_only_ours() -> Result<()> {
    let c = Cluster::new("leave")?;
    let ghost = Peer {
        name: "node3".into(),
        node_ip: "192.168.77.3".parse()?,
        tunnel_endpoint: None,
        blocks: vec!["10.201.3.0/26".parse()?],
    };
    apply(&c.node1, VXLAN, &[c.node2.as_peer(), ghost.clone()]).await?;
    apply(&c.node2, VXLAN, &[c.node1.as_peer()]).await?;
    let n1 = &c.node1.ns;
    ensure!(
        route_summary(&node_routes(n1)?)
            == [
                route("10.201.2.0/26", "10.201.2.0", VXLAN_DEVICE, true),
                route("10.201.3.0/26", "10.201.3.0", VXLAN_DEVICE, true),
            ]
    );
    ensure!(fdb(n1)?.as_array().map(Vec::len) == Some(2));

    let report = apply(&c.node1, VXLAN, &[c.node2.as_peer()]).await?;
    ensure!(
        (report.added, report.changed, report.removed) == (0, 0, 3),
        "route, neighbour and FDB entry of the leaving peer: {report:?}"
    );
    ensure!(
        route_summary(&node_routes(n1)?)
            == [route("10.201.2.0/26", "10.201.2.0", VXLAN_DEVICE, true)]
    );
    ensure!(permanent_neighbours(n1)?.as_array().map(Vec::len) == Some(1));
    ensure!(fdb(n1)?.as_array().map(Vec::len) == Some(1));
    let pod2_ip = IpAddr::V4(c.node2.pod.ip);
    ensure!(seen_from(&c.node1.pod.ns, &c.node2.pod.ns, pod2_ip)? == IpAddr::V4(c.node1.pod.ip));

    // Somebody else's route must survive the uninstall.
    n1.ip(&["route", "add", "10.99.0.0/24", "via", "192.168.77.2"])?;
    let host = netns::handle_in(n1.fd())?;
    node::remove_all(&host).await?;
    ensure!(node_routes(n1)?.is_empty(), "{:?}", node_routes(n1)?);
    ensure!(vxlan_device(n1)?.is_none());
    ensure!(
        n1.ip_json(&["route", "show", "10.99.0.0/24"])?
            .as_array()
            .map(Vec::len)
            == Some(1),
        "remove_all deleted a route it does not own"
    );
    node::remove_all(&host)
        .await
        .context("a second remove_all")?;
    Ok(())
}

#[tokio::test]
async fn a_peer_block_held_by_a_foreign_route_is_reported_and_left_alone() -> Result<()> {
    let c = Cluster::new("foreign")?;
    let n1 = &c.node1.ns;
    n1.ip(&[
        "route",
        "add",
        "10.201.2.0/26",
        "via",
        "192.168.77.2",
        "proto",
        "static",
    ])?;
    let host = netns::handle_in(n1.fd())?;
    let desired = c.node1.desired(Mode::Native, &[c.node2.as_peer()]);
    let report = node::apply(&host, &desired, None).await?;
    ensure!(
        report.foreign == ["10.201.2.0/26".parse()?] && report.changes() == 0,
        "{report:?}"
    );
    let held = n1.ip_json(&["route", "show", "10.201.2.0/26"])?;
    ensure!(held[0]["protocol"] == "static", "{held}");
    ensure!(node_routes(n1)?.is_empty());
    Ok(())
}
