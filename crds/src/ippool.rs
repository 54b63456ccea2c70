//! `IPPool`: a range of addresses that pods (or LoadBalancer Services) get their IPs from.
//!
//! The operator carves a pool into fixed-size blocks (`blockSize`) and hands blocks to nodes
//! through their `NodeNetwork`; each node's agent allocates single addresses from its blocks.
//! Overlap between pools (or with the service CIDR and node addresses) is detected by the
//! operator and reported as `Ready=False, reason=Overlap`; everything that can be checked
//! on one object alone is refused by the apiserver.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::net::Cidr;

/// Block size used when `spec.blockSize` is omitted: 64 addresses (IPv4), as in Calico.
pub const DEFAULT_BLOCK_SIZE: u8 = 26;

/// What a pool's addresses may be used for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum AllowedUse {
    /// Pod addresses, allocated by the node agents.
    Pod,
    /// Addresses for Services of type LoadBalancer.
    LoadBalancer,
}

/// An IPPool is a range of addresses from which Ferrite assigns pod (or LoadBalancer) IPs.
/// The operator splits it into blocks of `blockSize` and gives each node the blocks it needs.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "IPPool",
    doc = "An IPPool is a range of addresses from which Ferrite assigns pod (or LoadBalancer) IPs.",
    plural = "ippools",
    singular = "ippool",
    shortname = "fipp",
    category = "ferrite",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Block","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"Allocated","type":"integer","jsonPath":".status.usage.allocated"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!isCIDR(self.cidr) || self.blockSize >= cidr(self.cidr).prefixLength()"
).message("spec.blockSize must be at least the prefix length of spec.cidr: a block cannot be larger than its pool"))]
#[x_kube(validation = Rule::new(
    "!isCIDR(self.cidr) || (cidr(self.cidr).ip().family() == 4 ? (self.blockSize >= 20 && self.blockSize <= 32) : (self.blockSize >= 116 && self.blockSize <= 128))"
).message("spec.blockSize must be 20-32 for an IPv4 pool (26 is typical) or 116-128 for an IPv6 pool (122 is typical)"))]
#[x_kube(validation = Rule::new(
    "!isCIDR(self.cidr) || self.reservedRanges.all(r, !isCIDR(r) || cidr(self.cidr).containsCIDR(r))"
).message("every spec.reservedRanges entry must lie inside spec.cidr"))]
#[x_kube(validation = Rule::new(
    "self.reservedRanges.all(a, self.reservedRanges.all(b, a == b || !isCIDR(a) || !isCIDR(b) || (!cidr(a).containsIP(cidr(b).ip()) && !cidr(b).containsIP(cidr(a).ip()))))"
).message("spec.reservedRanges entries must not overlap each other: merge overlapping ranges into one"))]
pub struct IPPoolSpec {
    /// The pool's range, in network form (e.g. `10.244.0.0/16`). Immutable: to move pods to
    /// another range, create a new pool and set `disabled: true` on this one.
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.cidr is immutable: create a new IPPool with the new range and set disabled: true on this one"
    ))]
    pub cidr: Cidr,

    /// Prefix length of the blocks handed to nodes (26 = 64 IPv4 addresses per block).
    /// IPv4: 20-32; IPv6: 116-128; never shorter than the pool's own prefix. Immutable.
    #[serde(default = "default_block_size")]
    #[schemars(range(min = 0, max = 128))]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.blockSize is immutable: create a new IPPool with the new block size and disable this one"
    ))]
    pub block_size: u8,

    /// Nodes that may get blocks from this pool. Absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// Namespaces whose pods may get addresses from this pool. Absent: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// What the addresses may be used for: `Pod` (default) and/or `LoadBalancer`.
    #[serde(default = "default_allowed_uses")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_uses: Vec<AllowedUse>,

    /// Masquerade (SNAT to the node's address) traffic from these pods to destinations
    /// outside every pool and the service CIDR. Default: true.
    #[serde(default = "default_true")]
    pub nat_outgoing: bool,

    /// A disabled pool hands out no new addresses; addresses already in use stay valid.
    #[serde(default)]
    pub disabled: bool,

    /// Ranges inside `cidr` that are never handed out (e.g. addresses used by hardware on the
    /// same network). Each is a CIDR inside the pool; they must not overlap. At most 32.
    #[serde(default)]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub reserved_ranges: Vec<Cidr>,
}

fn default_block_size() -> u8 {
    DEFAULT_BLOCK_SIZE
}

fn default_allowed_uses() -> Vec<AllowedUse> {
    vec![AllowedUse::Pod]
}

pub(crate) fn default_true() -> bool {
    true
}

/// How much of a pool is in use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolUsage {
    /// Addresses in the pool, minus reserved ranges (saturates at 2^63-1 for huge IPv6 pools).
    pub total: u64,
    /// Addresses allocated to pods or Services.
    pub allocated: u64,
    /// Blocks handed to nodes.
    pub blocks: u64,
}

/// Observed state of an IPPool, written by the operator.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// `Ready` is True when the pool is valid and usable; reason `Overlap` when it collides
    /// with another pool, the service CIDR or node addresses.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Usage of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<PoolUsage>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
