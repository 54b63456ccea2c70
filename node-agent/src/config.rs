//! What one node's agent must program, derived from the cluster's objects.
//!
//! [`NodeConfig`] is everything the datapath needs: this node's blocks, the routing mode, the
//! peers, the egress rules. [`from_cluster`] computes it from `NodeNetwork`s, the `default`
//! `ClusterNetwork` and the `IPPool`s — a pure function, so every rule about which pool counts
//! for what is unit-tested here rather than discovered on a cluster. The agent can also read a
//! `NodeConfig` from a JSON file (`--config`), which is how the privileged tests drive real
//! agents without an apiserver.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ferrite_crds::{ClusterNetwork, IPPool, NodeNetwork, RoutingMode};
use ipnet::IpNet;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

use crate::ipam::Block;
use crate::routing::{Mode, Peer};

/// Default uplink MTU when the agent cannot see its uplink (tests, odd setups).
pub const FALLBACK_UPLINK_MTU: u32 = 1500;

/// Masquerading of pod traffic leaving the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Egress {
    /// Source ranges that are masqueraded (pools with `natOutgoing`). Empty: no masquerade.
    pub sources: Vec<IpNet>,
    /// Destinations never masqueraded: every pool, the service CIDR, `nonMasqueradeCIDRs`.
    pub exempt: Vec<IpNet>,
}

/// Routing mode as configured (serialisable mirror of [`Mode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode")]
pub enum Routing {
    /// Plain routes via node IPs.
    Native,
    /// VXLAN encapsulation.
    #[serde(rename = "VXLAN")]
    Vxlan {
        /// VXLAN network identifier.
        vni: u32,
        /// UDP port.
        port: u16,
    },
}

impl From<Routing> for Mode {
    fn from(r: Routing) -> Self {
        match r {
            Routing::Native => Mode::Native,
            Routing::Vxlan { vni, port } => Mode::Vxlan { vni, port },
        }
    }
}

/// A peer node (serialisable mirror of [`Peer`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerConfig {
    /// Node name.
    pub name: String,
    /// Its address.
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
    /// Its tunnel endpoint, when not its node IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<IpAddr>,
    /// Its blocks.
    pub blocks: Vec<IpNet>,
}

impl From<&PeerConfig> for Peer {
    fn from(p: &PeerConfig) -> Self {
        Peer {
            name: p.name.clone(),
            node_ip: p.node_ip,
            tunnel_endpoint: p.tunnel_endpoint,
            blocks: p.blocks.clone(),
        }
    }
}

/// Everything this node's datapath is programmed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    /// This node's address (the VXLAN local endpoint, the masquerade address).
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddr,
    /// Where peers send this node's tunnelled traffic; `node_ip` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<IpAddr>,
    /// This node's pod address blocks.
    pub blocks: Vec<Block>,
    /// Ranges of those blocks' pools never handed out.
    #[serde(default)]
    pub reserved: Vec<IpNet>,
    /// How pod traffic reaches other nodes.
    pub routing: Routing,
    /// `ClusterNetwork.spec.mtu`: the pod MTU, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The other nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Egress masquerade.
    #[serde(default)]
    pub egress: Egress,
    /// The ClusterNetwork's `metadata.generation` this configuration comes from, reported
    /// back once programmed so the operator knows the rollout reached this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_generation: Option<i64>,
    /// That ClusterNetwork's `metadata.uid`, reported with the generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_uid: Option<String>,
}

impl NodeConfig {
    /// This node's tunnel endpoint.
    pub fn endpoint(&self) -> IpAddr {
        self.tunnel_endpoint.unwrap_or(self.node_ip)
    }

    /// The block CIDRs.
    pub fn block_cidrs(&self) -> Vec<IpNet> {
        self.blocks.iter().map(|b| b.cidr).collect()
    }

    /// The peers as the routing computation takes them.
    pub fn routing_peers(&self) -> Vec<Peer> {
        self.peers.iter().map(Peer::from).collect()
    }
}

/// Why no configuration can be derived yet. Each says what is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The operator has not created this node's NodeNetwork.
    #[error(
        "NodeNetwork {0} does not exist yet: ferrite-operator creates it for every Node (is the operator running?)"
    )]
    NoNodeNetwork(String),
    /// The singleton ClusterNetwork is missing.
    #[error(
        "ClusterNetwork 'default' does not exist: apply one (see docs/examples/clusternetwork.yaml or the Helm chart's values)"
    )]
    NoClusterNetwork,
    /// A field of our NodeNetwork does not parse (the CRD's validation should prevent this).
    #[error("NodeNetwork {node}: {what}")]
    Invalid {
        /// The node.
        node: String,
        /// What is wrong.
        what: String,
    },
}

/// Derives this node's configuration. `node` is this node's name; `node_networks` are all of
/// them (this node's and its peers'); a peer whose NodeNetwork does not parse is skipped
/// (and named in the returned warnings) rather than stopping the whole node.
pub fn from_cluster(
    node: &str,
    node_networks: &[NodeNetwork],
    cluster: Option<&ClusterNetwork>,
    pools: &[IPPool],
) -> Result<(NodeConfig, Vec<String>), ConfigError> {
    let cluster = cluster.ok_or(ConfigError::NoClusterNetwork)?;
    let own = node_networks
        .iter()
        .find(|nn| nn.name_any() == node)
        .ok_or_else(|| ConfigError::NoNodeNetwork(node.to_owned()))?;
    let invalid = |what: String| ConfigError::Invalid {
        node: node.to_owned(),
        what,
    };
    let node_ip = own
        .spec
        .node_ip
        .ip()
        .map_err(|e| invalid(format!("spec.nodeIP: {e}")))?;
    let tunnel_endpoint = match &own.spec.tunnel_endpoint {
        Some(t) => Some(
            t.ip()
                .map_err(|e| invalid(format!("spec.tunnelEndpoint: {e}")))?,
        ),
        None => None,
    };

    let pool_nets: BTreeMap<String, IpNet> = pools
        .iter()
        .filter_map(|p| Some((p.name_any(), p.spec.cidr.net().ok()?)))
        .collect();
    let mut blocks = Vec::new();
    let mut reserved = Vec::new();
    for cidr in &own.spec.blocks {
        let net = cidr
            .net()
            .map_err(|e| invalid(format!("spec.blocks: {e}")))?;
        // The pool a block came from: the one whose range contains it (named in IPAM errors).
        let pool = pools.iter().find(|p| {
            pool_nets
                .get(&p.name_any())
                .is_some_and(|n| n.contains(&net))
        });
        if let Some(pool) = pool {
            reserved.extend(
                pool.spec
                    .reserved_ranges
                    .iter()
                    .filter_map(|r| r.net().ok()),
            );
        }
        blocks.push(Block {
            cidr: net,
            pool: pool.map_or_else(|| "(no pool contains it)".to_owned(), |p| p.name_any()),
        });
    }
    reserved.sort();
    reserved.dedup();

    let mut warnings = Vec::new();
    let mut peers = Vec::new();
    for nn in node_networks {
        let name = nn.name_any();
        if name == node {
            continue;
        }
        let parsed = (|| -> Result<PeerConfig, String> {
            let node_ip = nn
                .spec
                .node_ip
                .ip()
                .map_err(|e| format!("spec.nodeIP: {e}"))?;
            let tunnel_endpoint = match &nn.spec.tunnel_endpoint {
                Some(t) => Some(t.ip().map_err(|e| format!("spec.tunnelEndpoint: {e}"))?),
                None => None,
            };
            let blocks = nn
                .spec
                .blocks
                .iter()
                .map(|b| b.net().map_err(|e| format!("spec.blocks: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PeerConfig {
                name: name.clone(),
                node_ip,
                tunnel_endpoint,
                blocks,
            })
        })();
        match parsed {
            Ok(p) => peers.push(p),
            Err(e) => warnings.push(format!("peer NodeNetwork {name} skipped: {e}")),
        }
    }
    peers.sort_by(|a, b| a.name.cmp(&b.name));

    let spec = &cluster.spec;
    let routing = match spec.routing_mode {
        RoutingMode::Native => Routing::Native,
        RoutingMode::Vxlan => Routing::Vxlan {
            vni: spec.vxlan.vni,
            port: spec.vxlan.port,
        },
    };
    let egress = egress(cluster, pools);
    Ok((
        NodeConfig {
            node_ip,
            tunnel_endpoint,
            blocks,
            reserved,
            routing,
            mtu: spec.mtu,
            peers,
            egress,
            cluster_generation: cluster.metadata.generation,
            cluster_uid: cluster.metadata.uid.clone(),
        },
        warnings,
    ))
}

/// The masquerade rules: sources are the pools with `natOutgoing` (when the cluster enables
/// masquerading at all); every pool, the service CIDR and `nonMasqueradeCIDRs` are exempt, so
/// traffic between pods and to Services is never NATed.
pub fn egress(cluster: &ClusterNetwork, pools: &[IPPool]) -> Egress {
    let spec = &cluster.spec;
    let mut exempt: Vec<IpNet> = pools
        .iter()
        .filter_map(|p| p.spec.cidr.net().ok())
        .collect();
    exempt.extend(spec.service_cidr.net().ok());
    exempt.extend(
        spec.masquerade
            .non_masquerade_cidrs
            .iter()
            .filter_map(|c| c.net().ok()),
    );
    let mut sources: Vec<IpNet> = if spec.masquerade.enabled {
        pools
            .iter()
            .filter(|p| p.spec.nat_outgoing)
            .filter_map(|p| p.spec.cidr.net().ok())
            .collect()
    } else {
        Vec::new()
    };
    sources.sort();
    sources.dedup();
    exempt.sort();
    exempt.dedup();
    Egress { sources, exempt }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_crds::{ClusterNetworkSpec, IPPoolSpec, NodeNetworkSpec};

    /// A spec from JSON, with the CRD types' serde defaults (as objects from the apiserver).
    fn json<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_str(s).unwrap()
    }

    fn pool(name: &str, cidr: &str, nat: bool, reserved: &[&str]) -> IPPool {
        let spec: IPPoolSpec = json(&format!(
            r#"{{"cidr":"{cidr}","natOutgoing":{nat},"reservedRanges":{}}}"#,
            serde_json::to_string(reserved).unwrap()
        ));
        IPPool::new(name, spec)
    }

    fn nn(name: &str, ip: &str, blocks: &[&str]) -> NodeNetwork {
        let spec: NodeNetworkSpec = json(&format!(
            r#"{{"nodeIP":"{ip}","blocks":{}}}"#,
            serde_json::to_string(blocks).unwrap()
        ));
        NodeNetwork::new(name, spec)
    }

    fn cluster(spec_json: &str) -> ClusterNetwork {
        let spec: ClusterNetworkSpec = json(spec_json);
        ClusterNetwork::new("default", spec)
    }

    #[test]
    fn own_blocks_peers_and_defaults() {
        let pools = [pool("main", "10.244.0.0/16", true, &["10.244.1.0/28"])];
        let nns = [
            nn("node2", "172.30.0.12", &["10.244.2.0/26"]),
            nn("node1", "172.30.0.11", &["10.244.1.0/26"]),
        ];
        let (cfg, warnings) = from_cluster("node1", &nns, Some(&cluster("{}")), &pools).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(cfg.node_ip.to_string(), "172.30.0.11");
        assert_eq!(
            cfg.blocks,
            vec![Block {
                cidr: "10.244.1.0/26".parse().unwrap(),
                pool: "main".into()
            }]
        );
        assert_eq!(
            cfg.reserved,
            vec!["10.244.1.0/28".parse::<IpNet>().unwrap()]
        );
        // VXLAN is the default mode, with the CRD's default port and VNI.
        assert_eq!(cfg.routing, Routing::Vxlan { vni: 1, port: 8472 });
        assert_eq!(cfg.peers.len(), 1);
        assert_eq!(cfg.peers[0].name, "node2");
        assert_eq!(
            cfg.peers[0].blocks,
            vec!["10.244.2.0/26".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn missing_objects_say_what_to_do() {
        let nns = [nn("node1", "172.30.0.11", &[])];
        let err = from_cluster("node1", &nns, None, &[]).unwrap_err();
        assert!(err.to_string().contains("apply one"), "{err}");
        let err = from_cluster("node9", &nns, Some(&cluster("{}")), &[]).unwrap_err();
        assert!(err.to_string().contains("node9"), "{err}");
        assert!(err.to_string().contains("operator"), "{err}");
    }

    #[test]
    fn a_broken_peer_is_skipped_and_named() {
        let nns = [
            nn("node1", "172.30.0.11", &["10.244.1.0/26"]),
            nn("node3", "not-an-ip", &[]),
        ];
        let (cfg, warnings) = from_cluster(
            "node1",
            &nns,
            Some(&cluster(r#"{"routingMode":"Native"}"#)),
            &[],
        )
        .unwrap();
        assert!(cfg.peers.is_empty());
        assert_eq!(cfg.routing, Routing::Native);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("node3"), "{warnings:?}");
        // A block no pool contains is still used, and says so when named.
        assert_eq!(cfg.blocks[0].pool, "(no pool contains it)");
    }

    #[test]
    fn egress_masquerades_nat_pools_and_exempts_cluster_destinations() {
        let pools = [
            pool("a", "10.244.0.0/16", true, &[]),
            pool("b", "10.250.0.0/16", false, &[]),
        ];
        let c = cluster(r#"{"masquerade":{"nonMasqueradeCIDRs":["192.168.0.0/16"]}}"#);
        let e = egress(&c, &pools);
        let nets = |v: &[&str]| v.iter().map(|s| s.parse().unwrap()).collect::<Vec<IpNet>>();
        assert_eq!(e.sources, nets(&["10.244.0.0/16"]));
        assert_eq!(
            e.exempt,
            nets(&[
                "10.96.0.0/12",
                "10.244.0.0/16",
                "10.250.0.0/16",
                "192.168.0.0/16"
            ])
        );
        let off = cluster(r#"{"masquerade":{"enabled":false}}"#);
        assert!(egress(&off, &pools).sources.is_empty());
    }

    #[test]
    fn static_config_round_trips_as_json() {
        let pools = [pool("main", "10.244.0.0/16", true, &[])];
        let nns = [
            nn("node1", "172.30.0.11", &["10.244.1.0/26"]),
            nn("node2", "172.30.0.12", &["10.244.2.0/26"]),
        ];
        let (cfg, _) = from_cluster("node1", &nns, Some(&cluster("{}")), &pools).unwrap();
        let json = serde_json::to_string(&cfg).unwrap();
        assert_eq!(serde_json::from_str::<NodeConfig>(&json).unwrap(), cfg);
    }
}
