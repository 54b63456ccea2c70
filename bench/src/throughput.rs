//! Benchmark 2: cross-node pod-to-pod TCP throughput — raw veth, Ferrite Native, Ferrite VXLAN.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferrite_agent::config::{NodeConfig, Routing};
use ferrite_agent::routing::{VXLAN_DEVICE, VXLAN_OVERHEAD};

use crate::agent::{self, Agent};
use crate::cni::{self, Plugin};
use crate::iperf;
use crate::report::ThroughputReport;
use crate::sys::{self, Netns, ScratchDir};
use crate::{Binaries, progress};

/// The MTU of the veth between the two nodes.
pub const UNDERLAY_MTU: u32 = 1500;

/// How long and how often.
pub struct Settings {
    /// Seconds per iperf3 run.
    pub seconds: u32,
    /// Rounds per mode.
    pub repeats: usize,
}

/// Two node namespaces joined by a veth pair `up0` ↔ `up0`, addresses `a` and `b` (/24).
fn node_pair(prefix: &str, a: IpAddr, b: IpAddr) -> Result<(Netns, Netns)> {
    let n1 = Netns::create(&format!("{prefix}1"))?;
    let n2 = Netns::create(&format!("{prefix}2"))?;
    let mtu = UNDERLAY_MTU.to_string();
    n1.ip(&[
        "link",
        "add",
        "up0",
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        "up0",
        "mtu",
        &mtu,
        "netns",
        n2.name(),
    ])?;
    for (ns, ip) in [(&n1, a), (&n2, b)] {
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "up0"])?;
        ns.ip(&["link", "set", "up0", "up"])?;
    }
    Ok((n1, n2))
}

/// The MTU of `eth0` in a pod.
fn pod_mtu(pod: &Netns) -> Result<u32> {
    let line = pod.ip(&["-o", "link", "show", "eth0"])?;
    parse_mtu(&line).with_context(|| format!("no MTU in {line:?}"))
}

/// The number after `mtu` in `ip -o link show` output.
pub fn parse_mtu(line: &str) -> Option<u32> {
    let mut words = line.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// One pod per node, created through the plugin; deleted (through the plugin) by `delete`.
struct Pods<'a> {
    sides: [(&'a Plugin, &'a Netns, &'a Netns, String, IpAddr); 2],
}

impl<'a> Pods<'a> {
    fn add(sides: [(&'a Plugin, &'a Netns, &'a Netns); 2], label: &str) -> Result<Self> {
        let mut made: Vec<(&Plugin, &Netns, &Netns, String, IpAddr)> = Vec::new();
        for (i, (plugin, node, pod)) in sides.into_iter().enumerate() {
            let id = format!("feb-{label}-pod{}", i + 1);
            let outcome = plugin.exec(node, "ADD", &id, pod)?;
            let result = outcome
                .result()
                .with_context(|| format!("ADD {id} in {}", node.name()))?
                .context("ADD printed no result")?;
            made.push((plugin, node, pod, id, cni::first_address(&result)?));
        }
        let second = made.pop().context("two pods")?;
        let first = made.pop().context("two pods")?;
        Ok(Self {
            sides: [first, second],
        })
    }

    fn ip(&self, i: usize) -> IpAddr {
        self.sides[i].4
    }

    fn delete(self) -> Result<()> {
        for (plugin, node, pod, id, _) in &self.sides {
            plugin
                .exec(node, "DEL", id, pod)?
                .result()
                .with_context(|| format!("DEL {id}"))?;
        }
        Ok(())
    }
}

/// The topology Native mode builds, made by hand with `ip` and no CNI, agent or nftables: a
/// pod per node behind a routed veth (one transmit queue per end, as the agent makes it),
/// `/32` routes to the pods, each node routing the other's pod via its address, a permanent
/// neighbour entry for the pods' link-local gateway. It tells how much of the gap to raw veth
/// is the topology itself (three veth pairs and two forwarding nodes) rather than Ferrite.
struct HandRouted {
    nodes: (Netns, Netns),
    pods: (Netns, Netns),
}

impl HandRouted {
    /// Pods 10.212.0.1 (client) and 10.212.0.2 (server); nodes `a` and `b`.
    fn build(a: IpAddr, b: IpAddr) -> Result<Self> {
        let (n1, n2) = node_pair("th", a, b)?;
        let p1 = Netns::create("thp1")?;
        let p2 = Netns::create("thp2")?;
        let mtu = UNDERLAY_MTU.to_string();
        for (i, node, pod, peer_node) in [(1, &n1, &p1, b), (2, &n2, &p2, a)] {
            node.run(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))?
                .context("enabling forwarding")?;
            let host = format!("thv{i}");
            let mac = format!("ee:00:00:00:00:0{i}");
            node.ip(&[
                "link",
                "add",
                &host,
                "numtxqueues",
                "1",
                "mtu",
                &mtu,
                "address",
                &mac,
                "up",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "numtxqueues",
                "1",
                "mtu",
                &mtu,
                "netns",
                pod.name(),
            ])?;
            let own = format!("{}", Self::pod_ip(i));
            let other = format!("{}", Self::pod_ip(3 - i));
            pod.ip(&["addr", "add", &format!("{own}/32"), "dev", "eth0"])?;
            pod.ip(&["link", "set", "eth0", "up"])?;
            pod.ip(&[
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ])?;
            pod.ip(&[
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ])?;
            pod.ip(&[
                "neigh",
                "replace",
                "169.254.1.1",
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])?;
            node.ip(&[
                "route",
                "add",
                &format!("{own}/32"),
                "dev",
                &host,
                "scope",
                "link",
            ])?;
            node.ip(&[
                "route",
                "add",
                &format!("{other}/32"),
                "via",
                &peer_node.to_string(),
            ])?;
        }
        Ok(Self {
            nodes: (n1, n2),
            pods: (p1, p2),
        })
    }

    fn pod_ip(i: u8) -> IpAddr {
        IpAddr::from([10, 212, 0, i])
    }
}

/// The order of `kinds` runs in round `round`: 0, 1, … rotated by the round.
fn rotation(round: usize, kinds: usize) -> impl Iterator<Item = usize> {
    (0..kinds).map(move |k| (round + k) % kinds)
}

/// What the nodes look like, for an error message.
fn diagnose(nodes: &[&Netns]) -> String {
    let mut out = String::new();
    for n in nodes {
        for args in [&["route"][..], &["-br", "link"][..], &["-br", "addr"][..]] {
            let shown = n.ip(args).unwrap_or_else(|e| format!("{e:#}"));
            out.push_str(&format!(
                "\n$ ip -n {} {}\n{}",
                n.name(),
                args.join(" "),
                shown.trim_end()
            ));
        }
    }
    out
}

/// Runs the benchmark.
pub fn run(bins: &Binaries, scratch: &ScratchDir, s: &Settings) -> Result<ThroughputReport> {
    let dir = scratch.sub("throughput")?;
    let ip = |s: &str| s.parse::<IpAddr>().with_context(|| format!("address {s}"));
    let (raw_a, raw_b) = (ip("172.31.251.1")?, ip("172.31.251.2")?);
    let (node_a, node_b) = (ip("172.31.252.1")?, ip("172.31.252.2")?);
    let (block_a, block_b) = ("10.210.1.0/26", "10.210.2.0/26");
    let configs = |routing: Routing| -> Result<(NodeConfig, NodeConfig)> {
        Ok((
            agent::node_config(node_a, block_a, routing, &[("node2", node_b, block_b)])?,
            agent::node_config(node_b, block_b, routing, &[("node1", node_a, block_a)])?,
        ))
    };

    progress("throughput: node namespaces, iperf3 between the bare nodes");
    let (raw1, raw2) = node_pair("tr", raw_a, raw_b)?;
    let _raw_server = iperf::Server::start(&raw2, raw_b, &dir.join("iperf-raw.log"))?;
    let mut report = ThroughputReport {
        seconds: s.seconds,
        repeats: s.repeats,
        underlay_mtu: UNDERLAY_MTU,
        ..ThroughputReport::default()
    };
    let raw = || -> Result<f64> {
        let sample = iperf::measure(&raw1, raw_b, s.seconds).context("raw veth")?;
        Ok(sample.bits_per_second)
    };

    progress("throughput: two agents, Native routing");
    let (n1, n2) = node_pair("tn", node_a, node_b)?;
    let (c1, c2) = configs(Routing::Native)?;
    let (s1, s2) = (
        scratch.ram_sub("agent1-state")?,
        scratch.ram_sub("agent2-state")?,
    );
    let mut a1 = Agent::start(&bins.agent, &n1, &dir.join("agent1"), &s1, &c1)?;
    let mut a2 = Agent::start(&bins.agent, &n2, &dir.join("agent2"), &s2, &c2)?;
    let p1 = Netns::create("tp1")?;
    let p2 = Netns::create("tp2")?;
    let plugin = |a: &Agent| Plugin {
        binary: bins.plugin.clone(),
        conf: cni::ferrite_conf(&a.socket, &a.spool),
        cni_path: format!("{}:{}", bins.dir.display(), bins.reference_dir.display()),
    };
    let (plugin1, plugin2) = (plugin(&a1), plugin(&a2));
    let sides = [(&plugin1, &n1, &p1), (&plugin2, &n2, &p2)];

    let pods = Pods::add(sides, "native")?;
    for n in [&n1, &n2] {
        if n.interfaces()?.contains_key(VXLAN_DEVICE) {
            bail!("{VXLAN_DEVICE} exists in {} in Native mode", n.name());
        }
    }
    report.native_pod_mtu = pod_mtu(&p1)?;
    progress(&format!(
        "throughput: {} rounds of raw + hand-routed + Native ({} s each), pods {} → {}",
        s.repeats,
        s.seconds,
        pods.ip(0),
        pods.ip(1)
    ));
    let hand = HandRouted::build(ip("172.31.250.1")?, ip("172.31.250.2")?)?;
    {
        let _server = iperf::Server::start(&p2, pods.ip(1), &dir.join("iperf-native.log"))?;
        let server_ip = HandRouted::pod_ip(2);
        let _hand_server =
            iperf::Server::start(&hand.pods.1, server_ip, &dir.join("iperf-hand.log"))?;
        for round in 0..s.repeats {
            // Each kind goes first, second and third in turn, so no kind always follows
            // another (a run can find the CPUs' caches and frequencies as the last left them).
            for kind in rotation(round, 3) {
                match kind {
                    0 => report.native_raw.push(raw()?),
                    1 => {
                        let sample = iperf::measure(&hand.pods.0, server_ip, s.seconds)
                            .with_context(|| {
                                format!(
                                    "hand-routed pod to pod{}",
                                    diagnose(&[&hand.nodes.0, &hand.nodes.1])
                                )
                            })?;
                        report.hand_routed.push(sample.bits_per_second);
                    }
                    _ => {
                        let sample =
                            iperf::measure(&p1, pods.ip(1), s.seconds).with_context(|| {
                                format!("Native pod to pod{}", diagnose(&[&n1, &n2]))
                            })?;
                        report.native.push(sample.bits_per_second);
                    }
                }
            }
        }
    }
    drop(hand);
    pods.delete()?;

    progress("throughput: switching both agents to VXLAN");
    let vxlan = Routing::Vxlan { vni: 1, port: 8472 };
    let (c1, c2) = configs(vxlan)?;
    a1.reconfigure(&c1)?;
    a2.reconfigure(&c2)?;
    sys::wait_for(
        &format!("{VXLAN_DEVICE} in both nodes"),
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            a1.ensure_running()?;
            a2.ensure_running()?;
            Ok(n1.interfaces()?.contains_key(VXLAN_DEVICE)
                && n2.interfaces()?.contains_key(VXLAN_DEVICE))
        },
    )
    .map_err(|e| {
        e.context(format!(
            "agent 1 log:\n{}\nagent 2 log:\n{}",
            a1.log_tail(10),
            a2.log_tail(10)
        ))
    })?;
    a1.wait_ready(Duration::from_secs(30))?;
    a2.wait_ready(Duration::from_secs(30))?;
    // The device appears before the agent stores the new pod MTU: a pod made in between gets
    // the old one. Re-create until both pods have the tunnel's MTU.
    let want = UNDERLAY_MTU - VXLAN_OVERHEAD;
    let mut attempt = 0;
    let pods = loop {
        attempt += 1;
        let pods = Pods::add(sides, &format!("vxlan{attempt}"))?;
        let mtus = (pod_mtu(&p1)?, pod_mtu(&p2)?);
        if mtus == (want, want) {
            break pods;
        }
        pods.delete()?;
        progress(&format!(
            "throughput: pods made right after the switch have MTU {mtus:?}, not {want}: again"
        ));
        if attempt >= 20 {
            bail!("pods created after the switch to VXLAN have MTU {mtus:?}, not {want}");
        }
        sys::sleep(Duration::from_millis(250))?;
    };
    report.vxlan_pod_mtu = want;
    progress(&format!(
        "throughput: {} rounds of raw + VXLAN ({} s each), pods {} → {}",
        s.repeats,
        s.seconds,
        pods.ip(0),
        pods.ip(1)
    ));
    let tunnel_tx =
        || -> Result<u64> { Ok(n1.interfaces()?.get(VXLAN_DEVICE).map_or(0, |c| c.tx_bytes)) };
    let before = tunnel_tx()?;
    {
        let _server = iperf::Server::start(&p2, pods.ip(1), &dir.join("iperf-vxlan.log"))?;
        for round in 0..s.repeats {
            for kind in rotation(round, 2) {
                if kind == 0 {
                    report.vxlan_raw.push(raw()?);
                } else {
                    let sample = iperf::measure(&p1, pods.ip(1), s.seconds)
                        .with_context(|| format!("VXLAN pod to pod{}", diagnose(&[&n1, &n2])))?;
                    report.vxlan.push(sample.bits_per_second);
                }
            }
        }
    }
    report.vxlan_tunnel_bytes = tunnel_tx()?.saturating_sub(before);
    // At least a tenth of what iperf3 says it moved must have gone through the tunnel.
    let moved: f64 = report
        .vxlan
        .iter()
        .map(|b| b / 8.0 * f64::from(s.seconds))
        .sum();
    if (report.vxlan_tunnel_bytes as f64) < moved / 10.0 {
        bail!(
            "only {} bytes went through {VXLAN_DEVICE} while iperf3 moved about {moved:.0}: the VXLAN runs did not use the tunnel{}",
            report.vxlan_tunnel_bytes,
            diagnose(&[&n1, &n2])
        );
    }
    pods.delete()?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_takes_every_place_in_turn() {
        let orders: Vec<Vec<usize>> = (0..3).map(|r| rotation(r, 3).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1]]);
        assert_eq!(rotation(1, 2).collect::<Vec<_>>(), [1, 0]);
    }

    #[test]
    fn mtu_from_ip_link() {
        let line = "2: eth0@if7: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1450 qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 56:ba:3d:06:63:e1 brd ff:ff:ff:ff:ff:ff link-netns feb-1-tn1";
        assert_eq!(parse_mtu(line), Some(1450));
        assert_eq!(parse_mtu("no such thing"), None);
    }
}
