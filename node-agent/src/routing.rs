//! How pod traffic reaches other nodes: the desired routes, VXLAN forwarding entries and pod MTU
//! for the routing mode, computed from the peers' `NodeNetwork`s. Pure; the netlink side applies
//! the difference between this and what the kernel has.
//!
//! - `Native`: each peer block is routed via the peer's node IP (nodes share an L2 network).
//! - `VXLAN`: one kernel vxlan device; each peer block is routed `onlink` via a gateway address
//!   (the block's network address, as Flannel does) on that device, with a permanent neighbour
//!   entry gateway → peer VTEP MAC and an FDB entry peer VTEP MAC → peer tunnel endpoint. The
//!   MAC is derived from the peer's endpoint address, so no MAC has to be published anywhere.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Encapsulation overhead of VXLAN over IPv4 (outer IP 20 + UDP 8 + VXLAN 8 + inner Ethernet 14).
pub const VXLAN_OVERHEAD: u32 = 50;
/// Name of the vxlan device the agent owns.
pub const VXLAN_DEVICE: &str = "ferrite.vxlan";

/// How pod traffic crosses between nodes (mirrors `ClusterNetwork.spec.routingMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain routes via the peers' node IPs.
    Native,
    /// The kernel vxlan device.
    Vxlan {
        /// VXLAN network identifier.
        vni: u32,
        /// UDP port.
        port: u16,
    },
}

/// What the agent knows of another node (from its NodeNetwork).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The node's address.
    pub node_ip: IpAddr,
    /// Where its tunnelled traffic goes; `node_ip` when absent.
    pub tunnel_endpoint: Option<IpAddr>,
    /// Its pod address blocks.
    pub blocks: Vec<IpNet>,
}

impl Peer {
    fn endpoint(&self) -> IpAddr {
        self.tunnel_endpoint.unwrap_or(self.node_ip)
    }
}

/// A route to a peer's block.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// The peer block.
    pub dst: IpNet,
    /// Next hop.
    pub via: IpAddr,
    /// Through the vxlan device (`onlink`), or the uplink.
    pub dev: Dev,
}

/// Which device a route leaves through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dev {
    /// The node's uplink (the interface holding the node IP).
    Uplink,
    /// [`VXLAN_DEVICE`].
    Vxlan,
}

/// A permanent neighbour entry on the vxlan device: gateway address → peer VTEP MAC.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Neighbour {
    /// The gateway address routes use for the peer's block.
    pub ip: IpAddr,
    /// The peer's VTEP MAC.
    pub mac: [u8; 6],
}

/// An FDB entry on the vxlan device: peer VTEP MAC → the peer's tunnel endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Fdb {
    /// The peer's VTEP MAC.
    pub mac: [u8; 6],
    /// The peer's tunnel endpoint.
    pub dst: IpAddr,
}

/// Everything the kernel should hold for inter-node pod traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Routes to peer blocks.
    pub routes: Vec<Route>,
    /// Neighbour entries (VXLAN only).
    pub neighbours: Vec<Neighbour>,
    /// FDB entries (VXLAN only).
    pub fdb: Vec<Fdb>,
    /// Whether the vxlan device should exist, and its own MAC.
    pub vxlan_mac: Option<[u8; 6]>,
    /// MTU for pod interfaces.
    pub pod_mtu: u32,
}

/// A peer's block that overlaps one of ours; it is left out and reported, never routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The peer.
    pub peer: String,
    /// Its block.
    pub block: IpNet,
}

/// The VTEP MAC of the node whose tunnel endpoint is `endpoint`: locally administered, unicast,
/// `0e:fe:` followed by the IPv4 address (IPv6: its last four bytes).
pub fn vtep_mac(endpoint: IpAddr) -> [u8; 6] {
    let tail = match endpoint {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            [o[12], o[13], o[14], o[15]]
        }
    };
    [0x0e, 0xfe, tail[0], tail[1], tail[2], tail[3]]
}

/// The desired inter-node state for this node.
///
/// `local_ip` is this node's tunnel endpoint, `local_blocks` its own blocks (a peer block
/// overlapping one of them is a conflict, not a route), `uplink_mtu` the MTU of the uplink
/// and `mtu_override` `ClusterNetwork.spec.mtu`.
pub fn desired(
    mode: Mode,
    local_ip: IpAddr,
    local_blocks: &[IpNet],
    peers: &[Peer],
    uplink_mtu: u32,
    mtu_override: Option<u32>,
) -> (Desired, Vec<Conflict>) {
    let mut out = Desired::default();
    let mut conflicts = Vec::new();
    for peer in peers {
        if peer.endpoint() == local_ip {
            continue; // ourselves, listed among the NodeNetworks
        }
        let mut routed_any = false;
        for block in &peer.blocks {
            if local_blocks
                .iter()
                .any(|l| l.contains(block) || block.contains(l))
            {
                conflicts.push(Conflict {
                    peer: peer.name.clone(),
                    block: *block,
                });
                continue;
            }
            routed_any = true;
            out.routes.push(match mode {
                Mode::Native => Route {
                    dst: *block,
                    via: peer.node_ip,
                    dev: Dev::Uplink,
                },
                Mode::Vxlan { .. } => {
                    let gw = block.network();
                    out.neighbours.push(Neighbour {
                        ip: gw,
                        mac: vtep_mac(peer.endpoint()),
                    });
                    Route {
                        dst: *block,
                        via: gw,
                        dev: Dev::Vxlan,
                    }
                }
            });
        }
        if routed_any && matches!(mode, Mode::Vxlan { .. }) {
            out.fdb.push(Fdb {
                mac: vtep_mac(peer.endpoint()),
                dst: peer.endpoint(),
            });
        }
    }
    out.routes.sort();
    out.neighbours.sort();
    out.fdb.sort();
    let overhead = match mode {
        Mode::Native => 0,
        Mode::Vxlan { .. } => VXLAN_OVERHEAD + if local_ip.is_ipv6() { 20 } else { 0 },
    };
    if matches!(mode, Mode::Vxlan { .. }) {
        out.vxlan_mac = Some(vtep_mac(local_ip));
    }
    out.pod_mtu = mtu_override.unwrap_or(uplink_mtu.saturating_sub(overhead));
    (out, conflicts)
}

/// The link-local gateway every pod's default route points at (its host-side veth answers for
/// it), as Calico and Cilium do: the same address on every node, never routed.
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peers() -> Vec<Peer> {
        vec![
            Peer {
                name: "node1".into(),
                node_ip: ip("172.30.0.11"),
                tunnel_endpoint: None,
                blocks: vec![net("10.244.0.0/26")],
            },
            Peer {
                name: "node2".into(),
                node_ip: ip("172.30.0.12"),
                tunnel_endpoint: None,
                blocks: vec![net("10.244.0.64/26"), net("10.244.1.0/26")],
            },
            Peer {
                name: "node3".into(),
                node_ip: ip("172.30.0.13"),
                tunnel_endpoint: Some(ip("192.0.2.13")),
                blocks: vec![],
            },
        ]
    }

    #[test]
    fn native_routes_each_peer_block_via_its_node_ip_and_skips_ourselves() {
        let (d, conflicts) = desired(
            Mode::Native,
            ip("172.30.0.11"),
            &[net("10.244.0.0/26")],
            &peers(),
            1400,
            None,
        );
        assert!(conflicts.is_empty());
        assert_eq!(
            d.routes,
            vec![
                Route {
                    dst: net("10.244.0.64/26"),
                    via: ip("172.30.0.12"),
                    dev: Dev::Uplink
                },
                Route {
                    dst: net("10.244.1.0/26"),
                    via: ip("172.30.0.12"),
                    dev: Dev::Uplink
                },
            ]
        );
        assert!(d.fdb.is_empty() && d.neighbours.is_empty() && d.vxlan_mac.is_none());
        assert_eq!(d.pod_mtu, 1400);
    }

    #[test]
    fn vxlan_routes_onlink_via_the_block_gateway_with_neighbour_and_fdb_entries() {
        let mode = Mode::Vxlan { vni: 1, port: 8472 };
        let (d, _) = desired(
            mode,
            ip("172.30.0.11"),
            &[net("10.244.0.0/26")],
            &peers(),
            1400,
            None,
        );
        assert_eq!(
            d.routes[0],
            Route {
                dst: net("10.244.0.64/26"),
                via: ip("10.244.0.64"),
                dev: Dev::Vxlan
            }
        );
        let mac2 = vtep_mac(ip("172.30.0.12"));
        assert_eq!(
            d.neighbours,
            vec![
                Neighbour {
                    ip: ip("10.244.0.64"),
                    mac: mac2
                },
                Neighbour {
                    ip: ip("10.244.1.0"),
                    mac: mac2
                },
            ]
        );
        assert_eq!(
            d.fdb,
            vec![Fdb {
                mac: mac2,
                dst: ip("172.30.0.12")
            }],
            "one FDB entry per peer with blocks"
        );
        assert_eq!(d.vxlan_mac, Some(vtep_mac(ip("172.30.0.11"))));
        assert_eq!(d.pod_mtu, 1350, "1400 uplink minus 50");
    }

    #[test]
    fn vxlan_uses_the_tunnel_endpoint_when_one_is_set() {
        let mut p = peers();
        p[2].blocks = vec![net("10.244.2.0/26")];
        let (d, _) = desired(
            Mode::Vxlan { vni: 1, port: 8472 },
            ip("172.30.0.11"),
            &[],
            &p,
            1500,
            None,
        );
        assert!(d.fdb.contains(&Fdb {
            mac: vtep_mac(ip("192.0.2.13")),
            dst: ip("192.0.2.13")
        }));
    }

    #[test]
    fn a_peer_block_overlapping_ours_is_a_conflict_not_a_route() {
        let mut p = peers();
        p[1].blocks.push(net("10.244.0.0/26"));
        let (d, conflicts) = desired(
            Mode::Native,
            ip("172.30.0.11"),
            &[net("10.244.0.0/26")],
            &p,
            1400,
            None,
        );
        assert_eq!(
            conflicts,
            vec![Conflict {
                peer: "node2".into(),
                block: net("10.244.0.0/26")
            }]
        );
        assert!(d.routes.iter().all(|r| r.dst != net("10.244.0.0/26")));
    }

    #[test]
    fn an_explicit_mtu_wins() {
        let (d, _) = desired(
            Mode::Vxlan { vni: 1, port: 8472 },
            ip("172.30.0.11"),
            &[],
            &peers(),
            1400,
            Some(1280),
        );
        assert_eq!(d.pod_mtu, 1280);
    }

    #[test]
    fn vtep_macs_are_locally_administered_unicast_and_distinct() {
        let a = vtep_mac(ip("172.30.0.11"));
        let b = vtep_mac(ip("172.30.0.12"));
        assert_ne!(a, b);
        assert_eq!(a[0] & 0b11, 0b10, "locally administered, unicast");
    }

    #[test]
    fn the_result_does_not_depend_on_peer_order() {
        let mut reversed = peers();
        reversed.reverse();
        let mode = Mode::Vxlan { vni: 1, port: 8472 };
        let a = desired(mode, ip("172.30.0.13"), &[], &peers(), 1400, None).0;
        let b = desired(mode, ip("172.30.0.13"), &[], &reversed, 1400, None).0;
        assert_eq!(a, b);
    }
}
