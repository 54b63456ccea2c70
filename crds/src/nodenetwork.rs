//! `NodeNetwork`: one per Node (same name), like `CiliumNode`. The operator writes the
//! spec (the node's blocks and addresses); the node's agent writes the status (its
//! WireGuard public key and heartbeat). Users read it; they do not write it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::net::{Cidr, IpAddress};

/// NodeNetwork is the network identity of one node: its pod address blocks, its address and
/// tunnel endpoint, and its agent's state. Owned by Ferrite; read it, do not edit it.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "NodeNetwork",
    doc = "NodeNetwork is the network identity of one node, owned by Ferrite: read it, do not edit it.",
    plural = "nodenetworks",
    singular = "nodenetwork",
    shortname = "fnn",
    category = "ferrite",
    status = "NodeNetworkStatus",
    printcolumn = r#"{"name":"Node-IP","type":"string","jsonPath":".spec.nodeIP"}"#,
    printcolumn = r#"{"name":"Blocks","type":"string","jsonPath":".spec.blocks"}"#,
    printcolumn = r#"{"name":"Agent-Ready","type":"boolean","jsonPath":".status.agent.ready"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".status.agent.version","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkSpec {
    /// Address blocks (from IPPools) this node allocates pod addresses from.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub blocks: Vec<Cidr>,

    /// The node's primary address (its InternalIP): the next hop for its blocks in Native mode.
    #[serde(rename = "nodeIP")]
    pub node_ip: IpAddress,

    /// Where other nodes send this node's tunnelled traffic (VXLAN or WireGuard).
    /// Absent: `nodeIP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_endpoint: Option<IpAddress>,
}

/// State of a node's agent, written by the agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The agent has programmed the node's datapath for the current configuration.
    #[serde(default)]
    pub ready: bool,
    /// The agent's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub version: Option<String>,
    /// When the agent last reported in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Time>,
    /// The `metadata.generation` of the ClusterNetwork the node's datapath is programmed for:
    /// the operator counts a rollout done when every ready agent reports the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_network_generation: Option<i64>,
    /// The `metadata.uid` of that ClusterNetwork: a ClusterNetwork deleted and created again
    /// starts its generations anew, and a report about the old one must not count.
    #[serde(
        default,
        rename = "clusterNetworkUID",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 64))]
    pub cluster_network_uid: Option<String>,
}

/// How many pod addresses of one block are in use on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlockUsage {
    /// The block, one of `spec.blocks`.
    pub cidr: Cidr,
    /// Addresses held by pods.
    pub allocated: u32,
    /// Addresses the block can hand out (its size less the reserved ones).
    pub capacity: u32,
}

/// Observed state of a node, written by its agent.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStatus {
    /// The node's WireGuard public key (base64). The private key never leaves the node.
    #[serde(
        default,
        rename = "wireGuardPublicKey",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(regex(pattern = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"))]
    pub wireguard_public_key: Option<String>,

    /// State of the node's agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentStatus>,

    /// Address use in each of the node's blocks, written by the agent. The operator adds a
    /// block when they fill up and releases a deleted node's blocks once none is in use.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["cidr".into()]))]
    pub blocks: Vec<BlockUsage>,

    /// `Ready`: the node's datapath is programmed.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
