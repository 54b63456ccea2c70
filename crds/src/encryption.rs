//! `EncryptionPolicy`: WireGuard encryption of traffic between nodes or between pods.
//!
//! Each agent creates its key pair locally (the private key never leaves the node) and
//! publishes the public key in its `NodeNetwork`; the operator reports per-node state here.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What is encrypted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum EncryptionMode {
    /// Nothing is encrypted (the default).
    #[default]
    Disabled,
    /// All traffic between nodes (pods and host-network) goes through WireGuard.
    NodeToNode,
    /// Traffic between pods on different nodes goes through WireGuard; with a
    /// `namespaceSelector`, only pods of the selected namespaces.
    PodToPod,
}

/// An EncryptionPolicy turns on WireGuard encryption between nodes or between pods.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "EncryptionPolicy",
    doc = "An EncryptionPolicy turns on WireGuard encryption between nodes or between pods.",
    plural = "encryptionpolicies",
    singular = "encryptionpolicy",
    shortname = "fencp",
    category = "ferrite",
    status = "EncryptionPolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Strict","type":"boolean","jsonPath":".spec.strict"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.namespaceSelector) || self.mode == 'PodToPod'").message(
    "spec.namespaceSelector only applies to mode PodToPod: remove it or set mode: PodToPod"
))]
#[x_kube(validation = Rule::new("!self.strict || self.mode != 'Disabled'").message(
    "spec.strict needs encryption: set mode to NodeToNode or PodToPod, or strict: false"
))]
pub struct EncryptionPolicySpec {
    /// What is encrypted: `Disabled`, `NodeToNode` or `PodToPod`.
    pub mode: EncryptionMode,

    /// Drop traffic between nodes that should be encrypted but cannot be (peer key missing,
    /// tunnel down) instead of sending it in the clear. Default: false.
    #[serde(default)]
    pub strict: bool,

    /// With mode `PodToPod`: only pods in these namespaces are encrypted. Absent: all pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// How often each node replaces its WireGuard key pair, as a duration such as `720h`
    /// (at least `1h`). Absent: keys are kept until the agent's key file is removed.
    /// (WireGuard renews its session keys every two minutes regardless.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$')").message(
        "spec.keyRotationInterval must be a duration such as 720h, 90m or 1h30m"
    ))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(\\\\.[0-9]+)?(h|m|s))+$') || duration(self) >= duration('1h')").message(
        "spec.keyRotationInterval must be at least 1h"
    ))]
    pub key_rotation_interval: Option<String>,
}

/// Encryption state of one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NodeEncryptionState {
    /// The node has not published a key yet.
    #[default]
    Pending,
    /// The node's tunnel is up with every peer.
    Encrypted,
    /// Some peers are missing (the node's entry says how many are up).
    Partial,
    /// The node cannot encrypt (the message says why).
    Failed,
}

/// Encryption status of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEncryptionStatus {
    /// Node name.
    pub node: String,
    /// Encryption state of the node.
    pub state: NodeEncryptionState,
    /// Peers the node has a working tunnel to.
    #[serde(default)]
    pub peers_up: u32,
    /// Peers the node should have a tunnel to.
    #[serde(default)]
    pub peers_desired: u32,
    /// When the node's current key pair was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created: Option<Time>,
    /// Why the node is not `Encrypted`, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Observed state of an EncryptionPolicy, written by the operator.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionPolicyStatus {
    /// `Ready`: every node encrypts as the policy asks. `Degraded`: some do not.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Per-node encryption state.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["node".into()]))]
    pub nodes: Vec<NodeEncryptionStatus>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
