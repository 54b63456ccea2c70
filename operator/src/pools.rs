//! IPPool rules that no single object can be checked for: overlap between pools, with the
//! service CIDR and with node addresses; which pool a block belongs to; a pool's usage and
//! its `Ready` condition. Pure: the inputs are objects (from the controllers' caches), the
//! outputs values; no IO, no clock (the time is passed in).
//!
//! [`Overlaps::detect`] is the one overlap rule: the IPPool controller reports it in the
//! pool's status, and the NodeNetwork controller's block choice ([`crate::blocks`]) refuses
//! every pool it refuses, so a bad pool never allocates even before its status is written.
//!
//! # Which pool wins an overlap
//!
//! Of two overlapping pools, the older (earlier `metadata.creationTimestamp`; the same
//! second: the smaller name) keeps its range: it stays Ready and goes on allocating. The
//! newer one is refused — `Ready=False`, reason `Overlap`, the message naming the older
//! pool — whatever the older pool's own state. So a pool's verdict depends only on pools
//! created before it: creating a pool never changes an existing one, and deleting one can
//! only make newer pools Ready. (Refusing only pools that overlap an *accepted* pool would let
//! a deletion flip a third pool from Ready to refused while its nodes hold blocks of it.)
//!
//! A pool that overlaps the service CIDR (`spec.serviceCIDR` of ClusterNetwork `default`)
//! or contains any node's `InternalIP` or `ExternalIP` is refused whatever its age. Without
//! a ClusterNetwork the service CIDR is not checked: the cluster's real range is unknown.
//! Blocks a pool handed out before it was refused stay with their nodes: taking them back
//! would renumber running pods.
//!
//! # Which pool a block belongs to
//!
//! NodeNetworks list blocks, not pools. A block belongs to the oldest pool whose range
//! contains it, which is the pool that carved it, since the older pool wins. Usage and the
//! deletion hold count each block once, in that pool; a refused pool that merely shares a
//! range is not held by another pool's blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ferrite_crds::conditions::{self, ConditionStatus, reasons, types};
use ferrite_crds::{AllowedUse, IPPool, IPPoolStatus, NodeNetwork, PoolUsage};
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::blocks::{self, TakenBlocks};
use crate::nodenetwork::{EXTERNAL_IP, INTERNAL_IP};
use crate::selector;

/// How many names a message lists before it says "and N more".
pub const NAMES_IN_MESSAGE: usize = 10;

/// A node's addresses, which no pool may contain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddresses {
    /// The Node's name.
    pub node: String,
    /// Every `InternalIP` and `ExternalIP` of the node that parses.
    pub addresses: Vec<IpAddr>,
}

impl NodeAddresses {
    /// The addresses of `node` that pools must keep clear of.
    pub fn of(node: &Node) -> Self {
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|a| a.type_ == INTERNAL_IP || a.type_ == EXTERNAL_IP)
            .filter_map(|a| a.address.parse().ok())
            .collect();
        Self {
            node: node.name_any(),
            addresses,
        }
    }
}

/// Something a pool's range collides with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Collision {
    /// An older pool, which keeps the range.
    OlderPool {
        /// The older pool's name.
        name: String,
        /// Its range.
        cidr: IpNet,
    },
    /// The cluster's service CIDR.
    ServiceCidr(IpNet),
    /// A node's address lies inside the pool.
    Node {
        /// The Node's name.
        name: String,
        /// The address.
        address: IpAddr,
    },
}

/// The overlap verdict of every pool: which are refused, and why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overlaps {
    refused: BTreeMap<String, Vec<Collision>>,
    overlapped_by: BTreeMap<String, Vec<String>>,
}

impl Overlaps {
    /// No pool refused (for callers and tests that have no overlap to consider).
    pub fn none() -> Self {
        Self::default()
    }

    /// Checks every pool against the older pools, the service CIDR and every node address.
    /// Pools whose `spec.cidr` does not parse are left out (they are refused as invalid).
    pub fn detect<'a>(
        pools: impl IntoIterator<Item = &'a IPPool>,
        service_cidr: Option<IpNet>,
        nodes: &[NodeAddresses],
    ) -> Self {
        let ranges: Vec<(String, IpNet)> = by_age(pools)
            .into_iter()
            .filter_map(|p| Some((p.name_any(), p.spec.cidr.net().ok()?)))
            .collect();
        let mut overlaps = Self::default();
        for (i, (name, cidr)) in ranges.iter().enumerate() {
            let mut found = Vec::new();
            for (older, older_cidr) in &ranges[..i] {
                if nets_overlap(*cidr, *older_cidr) {
                    found.push(Collision::OlderPool {
                        name: older.clone(),
                        cidr: *older_cidr,
                    });
                    overlaps
                        .overlapped_by
                        .entry(older.clone())
                        .or_default()
                        .push(name.clone());
                }
            }
            if let Some(service) = service_cidr
                && nets_overlap(*cidr, service)
            {
                found.push(Collision::ServiceCidr(service));
            }
            for node in nodes {
                found.extend(
                    node.addresses
                        .iter()
                        .filter(|a| cidr.contains(*a))
                        .map(|address| Collision::Node {
                            name: node.node.clone(),
                            address: *address,
                        }),
                );
            }
            if !found.is_empty() {
                overlaps.refused.insert(name.clone(), found);
            }
        }
        overlaps
    }

    /// What refuses `pool`; empty when nothing does.
    pub fn collisions(&self, pool: &str) -> &[Collision] {
        self.refused
            .get(pool)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Whether `pool` is refused.
    pub fn is_refused(&self, pool: &str) -> bool {
        self.refused.contains_key(pool)
    }

    /// The newer pools that overlap `pool` (and are refused for it), in age order.
    pub fn newer_overlapping(&self, pool: &str) -> &[String] {
        self.overlapped_by
            .get(pool)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Describes `collisions` for a message: "overlaps pool a (10.244.0.0/16), which is older
/// and keeps the range; the service CIDR 10.96.0.0/12; the address of node n1 (10.244.3.4)".
pub fn describe(collisions: &[Collision]) -> String {
    let mut parts = Vec::new();
    let older: Vec<String> = collisions
        .iter()
        .filter_map(|c| match c {
            Collision::OlderPool { name, cidr } => Some(format!("{name} ({cidr})")),
            _ => None,
        })
        .collect();
    if !older.is_empty() {
        let (noun, verb) = if older.len() == 1 {
            ("pool", "is older and keeps its range")
        } else {
            ("pools", "are older and keep their ranges")
        };
        parts.push(format!("{noun} {}, which {verb}", list(&older)));
    }
    for c in collisions {
        if let Collision::ServiceCidr(service) = c {
            parts.push(format!(
                "the service CIDR {service} (ClusterNetwork default's spec.serviceCIDR)"
            ));
        }
    }
    let nodes: Vec<String> = collisions
        .iter()
        .filter_map(|c| match c {
            Collision::Node { name, address } => Some(format!("{name} ({address})")),
            _ => None,
        })
        .collect();
    if !nodes.is_empty() {
        let noun = if nodes.len() == 1 {
            "the address of node"
        } else {
            "the addresses of nodes"
        };
        parts.push(format!("{noun} {}", list(&nodes)));
    }
    format!("overlaps {}", parts.join("; "))
}

/// "a", "a and b", "a, b and c", or the first [`NAMES_IN_MESSAGE`] then "and N more".
pub fn list(names: &[String]) -> String {
    let shown = names.len().min(NAMES_IN_MESSAGE);
    let mut out = String::new();
    for (i, name) in names[..shown].iter().enumerate() {
        if i > 0 {
            out.push_str(if i + 1 == shown && shown == names.len() {
                " and "
            } else {
                ", "
            });
        }
        out.push_str(name);
    }
    if names.len() > shown {
        // Writing into a String cannot fail.
        let _ = write!(out, " and {} more", names.len() - shown);
    }
    out
}

/// `pools` from oldest to newest: creation time, then name; a pool without a creation time
/// (never stored by an apiserver) counts as newest.
pub fn by_age<'a>(pools: impl IntoIterator<Item = &'a IPPool>) -> Vec<&'a IPPool> {
    let mut pools: Vec<&IPPool> = pools.into_iter().collect();
    pools.sort_by(|a, b| {
        let key = |p: &'a IPPool| {
            let created = p.metadata.creation_timestamp.as_ref();
            (created.is_none(), created, p.metadata.name.as_deref())
        };
        key(a).cmp(&key(b))
    });
    pools
}

/// Maps a block to the pool it belongs to: the oldest pool whose range contains it.
#[derive(Clone, Debug, Default)]
pub struct BlockOwners {
    /// Oldest first.
    ranges: Vec<(IpNet, String)>,
}

impl BlockOwners {
    /// The owners among `pools` (pools whose `spec.cidr` does not parse own nothing).
    pub fn new<'a>(pools: impl IntoIterator<Item = &'a IPPool>) -> Self {
        Self {
            ranges: by_age(pools)
                .into_iter()
                .filter_map(|p| Some((p.spec.cidr.net().ok()?, p.name_any())))
                .collect(),
        }
    }

    /// The pool `block` belongs to, if any pool contains it.
    pub fn owner_of(&self, block: IpNet) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(cidr, _)| cidr.contains(&block))
            .map(|(_, name)| name.as_str())
    }
}

/// What NodeNetworks hold of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Blocks of the pool in NodeNetwork specs (also of NodeNetworks being deleted: their
    /// blocks stay taken until released).
    pub blocks: u64,
    /// Addresses allocated in those blocks, as the agents report them.
    pub allocated: u64,
    /// The NodeNetworks (nodes) holding them.
    pub nodes: BTreeSet<String>,
}

/// What every NodeNetwork holds, per pool. Blocks that no pool contains (their pool was
/// deleted) are not counted anywhere; blocks that do not parse are skipped.
pub fn holdings<'a>(
    owners: &BlockOwners,
    node_networks: impl IntoIterator<Item = &'a NodeNetwork>,
) -> BTreeMap<String, Holdings> {
    let mut by_pool: BTreeMap<String, Holdings> = BTreeMap::new();
    for nn in node_networks {
        let node = nn.name_any();
        for block in nn.spec.blocks.iter().filter_map(|b| b.net().ok()) {
            if let Some(pool) = owners.owner_of(block) {
                let held = by_pool.entry(pool.to_owned()).or_default();
                held.blocks += 1;
                held.nodes.insert(node.clone());
            }
        }
        for reported in nn.status.iter().flat_map(|s| &s.blocks) {
            if let Some(pool) = reported.cidr.net().ok().and_then(|b| owners.owner_of(b)) {
                by_pool.entry(pool.to_owned()).or_default().allocated +=
                    u64::from(reported.allocated);
            }
        }
    }
    by_pool
}

/// Addresses in `cidr` outside `reserved` (ranges of other families, or outside `cidr`,
/// count for nothing). Saturates at 2^63-1, the largest integer the API carries.
pub fn total_addresses(cidr: IpNet, reserved: &[IpNet]) -> u64 {
    let cidr = cidr.trunc();
    let (start, end) = blocks::bounds(cidr);
    let mut ranges: Vec<(u128, u128)> = reserved
        .iter()
        .filter(|r| r.max_prefix_len() == cidr.max_prefix_len())
        .map(|r| blocks::bounds(r.trunc()))
        .filter(|(s, e)| *s <= end && *e >= start)
        .map(|(s, e)| (s.max(start), e.min(end)))
        .collect();
    ranges.sort_unstable();
    let mut covered: u128 = 0;
    let mut reach: Option<u128> = None;
    for (s, e) in ranges {
        let s = match reach {
            Some(r) if r >= e => continue,
            Some(r) if r >= s => r + 1,
            _ => s,
        };
        covered = covered.saturating_add((e - s).saturating_add(1));
        reach = Some(e);
    }
    let size = (end - start).saturating_add(1);
    let total = size.saturating_sub(covered);
    u64::try_from(total.min(i64::MAX as u128)).unwrap_or(i64::MAX as u64)
}

/// Whether two ranges share an address (ranges of different families never do).
pub fn nets_overlap(a: IpNet, b: IpNet) -> bool {
    a.max_prefix_len() == b.max_prefix_len()
        && (a.contains(&b.network()) || b.contains(&a.network()))
}

/// A pool's state as its `Ready` condition reports it, most pressing first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolState {
    /// Being deleted while these nodes hold blocks of it: the finalizer holds the deletion.
    InUse {
        /// The nodes, sorted.
        nodes: Vec<String>,
    },
    /// Refused: it collides with these.
    Overlap(Vec<Collision>),
    /// The spec cannot be used (written under an older schema); the text says why.
    Invalid(String),
    /// `spec.disabled`: no new blocks, existing ones stay.
    Disabled,
    /// Usable, but every block is handed out or reserved.
    Exhausted,
    /// Usable.
    Ready {
        /// Newer pools refused because they overlap this one.
        overlapped_by: Vec<String>,
    },
}

/// The facts about one pool that decide its state.
#[derive(Clone, Copy, Debug)]
pub struct PoolFacts<'a> {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The nodes holding blocks of the pool, sorted.
    pub holders: &'a BTreeSet<String>,
    /// What the pool collides with (empty: nothing).
    pub collisions: &'a [Collision],
    /// Newer pools that overlap it.
    pub overlapped_by: &'a [String],
    /// Why the spec is unusable, if it is.
    pub invalid: Option<&'a str>,
    /// `spec.disabled`.
    pub disabled: bool,
    /// Pods may use it and it has no free block left.
    pub exhausted: bool,
}

impl PoolState {
    /// The state the facts add up to.
    pub fn of(facts: PoolFacts<'_>) -> Self {
        if facts.deleting {
            Self::InUse {
                nodes: facts.holders.iter().cloned().collect(),
            }
        } else if !facts.collisions.is_empty() {
            Self::Overlap(facts.collisions.to_vec())
        } else if let Some(why) = facts.invalid {
            Self::Invalid(why.to_owned())
        } else if facts.disabled {
            Self::Disabled
        } else if facts.exhausted {
            Self::Exhausted
        } else {
            Self::Ready {
                overlapped_by: facts.overlapped_by.to_vec(),
            }
        }
    }

    /// Whether the pool may be used (for blocks already handed out, at least).
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Disabled | Self::Exhausted | Self::Ready { .. })
    }

    /// The `Ready` condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InUse { .. } => reasons::IN_USE,
            Self::Overlap(_) => reasons::OVERLAP,
            Self::Invalid(_) => reasons::INVALID_SPEC,
            Self::Disabled => reasons::DISABLED,
            Self::Exhausted => reasons::EXHAUSTED,
            Self::Ready { .. } => reasons::RECONCILED,
        }
    }

    /// The `Ready` condition's message: what is the case and, when something is wrong, what
    /// to do about it.
    pub fn message(&self, usage: &PoolUsage) -> String {
        let in_use = format!(
            "{} blocks assigned to nodes, {} of {} addresses allocated",
            usage.blocks, usage.allocated, usage.total
        );
        match self {
            Self::InUse { nodes } if nodes.is_empty() => {
                "being deleted; no node holds a block of it any more".to_owned()
            }
            Self::InUse { nodes } => format!(
                "being deleted, but nodes {} still hold blocks of it, so the deletion waits (it hands out no new blocks meanwhile). A node's blocks are released when its NodeNetwork is deleted (with the Node, or by hand after draining it) and no pod on it holds an address from them",
                list(nodes)
            ),
            Self::Overlap(collisions) => format!(
                "{}. It hands out no new blocks. spec.cidr is immutable: create a pool with a range that overlaps none of these, then delete this one",
                describe(collisions)
            ),
            Self::Invalid(why) => {
                format!("unusable: {why}. It hands out no new blocks; fix the spec")
            }
            Self::Disabled => format!(
                "disabled (spec.disabled: true): hands out no new blocks; blocks nodes already hold stay theirs ({in_use})"
            ),
            Self::Exhausted => format!(
                "every block is assigned or reserved: nodes that need another block get none from this pool; add a pool ({in_use})"
            ),
            Self::Ready { overlapped_by } if overlapped_by.is_empty() => {
                format!("ready: {in_use}")
            }
            Self::Ready { overlapped_by } => format!(
                "ready: {in_use}. Newer pools {} overlap this range and are refused",
                list(overlapped_by)
            ),
        }
    }
}

/// The cluster as the pool rules see it (a snapshot of the caches).
#[derive(Clone, Debug, Default)]
pub struct ClusterView<'a> {
    /// Every IPPool.
    pub pools: Vec<&'a IPPool>,
    /// `spec.serviceCIDR` of ClusterNetwork `default`, when it exists and parses.
    pub service_cidr: Option<IpNet>,
    /// Every Node's addresses.
    pub nodes: Vec<NodeAddresses>,
    /// Every NodeNetwork (also those being deleted).
    pub node_networks: Vec<&'a NodeNetwork>,
}

/// A pool's state and usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assessment {
    /// What its `Ready` condition says.
    pub state: PoolState,
    /// Its `status.usage`.
    pub usage: PoolUsage,
}

/// Assesses `pool`, which must be one of `view.pools` (its age decides overlaps).
pub fn assess(pool: &IPPool, view: &ClusterView<'_>) -> Assessment {
    let name = pool.name_any();
    let overlaps = Overlaps::detect(view.pools.iter().copied(), view.service_cidr, &view.nodes);
    let owners = BlockOwners::new(view.pools.iter().copied());
    let held = holdings(&owners, view.node_networks.iter().copied())
        .remove(&name)
        .unwrap_or_default();

    let carving = blocks::pool_carving(pool);
    let selector_error = pool.spec.node_selector.as_ref().and_then(|s| {
        selector::matches(s, &BTreeMap::new())
            .err()
            .map(|e| format!("spec.nodeSelector: {e}"))
    });
    let invalid = carving.as_ref().err().cloned().or(selector_error);
    let total = match &carving {
        Ok(carving) => {
            let reserved: Vec<IpNet> = pool
                .spec
                .reserved_ranges
                .iter()
                .filter_map(|r| r.net().ok())
                .collect();
            total_addresses(carving.cidr(), &reserved)
        }
        Err(_) => 0,
    };
    let exhausted = pool.spec.allowed_uses.contains(&AllowedUse::Pod)
        && carving.as_ref().is_ok_and(|carving| {
            let taken: TakenBlocks = view
                .node_networks
                .iter()
                .flat_map(|nn| nn.spec.blocks.iter().filter_map(|b| b.net().ok()))
                .collect();
            carving.first_free(&taken).is_none()
        });
    let state = PoolState::of(PoolFacts {
        deleting: pool.metadata.deletion_timestamp.is_some(),
        holders: &held.nodes,
        collisions: overlaps.collisions(&name),
        overlapped_by: overlaps.newer_overlapping(&name),
        invalid: invalid.as_deref(),
        disabled: pool.spec.disabled,
        exhausted,
    });
    Assessment {
        state,
        usage: PoolUsage {
            total,
            allocated: held.allocated,
            blocks: held.blocks,
        },
    }
}

/// The status to write: `current` with the `Ready` condition for `state` (its
/// `lastTransitionTime` kept while its status holds), `usage` and `observedGeneration`.
pub fn desired_status(
    current: Option<&IPPoolStatus>,
    state: &PoolState,
    usage: PoolUsage,
    generation: Option<i64>,
    now: Time,
) -> IPPoolStatus {
    let mut status = current.cloned().unwrap_or_default();
    conditions::set_condition(
        &mut status.conditions,
        conditions::new_condition(
            types::READY,
            ConditionStatus::from(state.is_ready()),
            state.reason(),
            state.message(&usage),
            generation,
            now,
        ),
    );
    status.usage = Some(usage);
    status.observed_generation = generation;
    status
}

/// A change of a pool's `Ready` condition worth an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The pool became refused for an overlap.
    Overlapped,
    /// It was refused for an overlap and is usable again.
    OverlapResolved,
    /// Its deletion is held by nodes holding its blocks.
    DeletionHeld,
}

impl Transition {
    /// The transition from `old` to `new` Ready conditions, if it is one a user cares about.
    pub fn between(old: Option<&Condition>, new: &Condition) -> Option<Self> {
        let was = old.map(|c| c.reason.as_str());
        let is = new.reason.as_str();
        if was == Some(is) {
            return None;
        }
        match is {
            reasons::OVERLAP => Some(Self::Overlapped),
            reasons::IN_USE => Some(Self::DeletionHeld),
            _ if was == Some(reasons::OVERLAP) && new.status == ConditionStatus::True.as_str() => {
                Some(Self::OverlapResolved)
            }
            _ => None,
        }
    }

    /// The Event's reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Overlapped => "Overlap",
            Self::OverlapResolved => "OverlapResolved",
            Self::DeletionHeld => "DeletionHeld",
        }
    }

    /// Whether the Event is a warning.
    pub fn is_warning(self) -> bool {
        !matches!(self, Self::OverlapResolved)
    }
}

#[cfg(test)]
mod tests {
    use ferrite_crds::{BlockUsage, Cidr, NodeNetworkSpec, NodeNetworkStatus};
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    /// A pool created at `created` (seconds since the epoch).
    fn pool(name: &str, cidr: &str, created: i64) -> IPPool {
        let mut p = crate::testing::pool(name, cidr, 26);
        p.metadata.creation_timestamp = Some(at(created));
        p
    }

    fn node(name: &str, addresses: &[&str]) -> NodeAddresses {
        NodeAddresses {
            node: name.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn node_network(name: &str, blocks: &[&str], reported: &[(&str, u32)]) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            name,
            NodeNetworkSpec {
                blocks: blocks.iter().map(|b| Cidr((*b).into())).collect(),
                node_ip: ferrite_crds::IpAddress("172.30.0.11".into()),
                tunnel_endpoint: None,
            },
        );
        nn.status = Some(NodeNetworkStatus {
            blocks: reported
                .iter()
                .map(|(cidr, allocated)| BlockUsage {
                    cidr: Cidr((*cidr).into()),
                    allocated: *allocated,
                    capacity: 62,
                })
                .collect(),
            ..NodeNetworkStatus::default()
        });
        nn
    }

    #[test]
    fn of_two_overlapping_pools_the_older_keeps_its_range_and_the_newer_is_refused() {
        let pools = [
            pool("newer", "10.244.128.0/17", 200),
            pool("older", "10.244.0.0/16", 100),
        ];
        let overlaps = Overlaps::detect(&pools, None, &[]);
        assert!(!overlaps.is_refused("older"));
        assert_eq!(
            overlaps.collisions("newer"),
            [Collision::OlderPool {
                name: "older".into(),
                cidr: net("10.244.0.0/16")
            }]
        );
        assert_eq!(overlaps.newer_overlapping("older"), ["newer"]);
    }

    #[test]
    fn pools_created_in_the_same_second_are_ordered_by_name() {
        let pools = [
            pool("b", "10.244.0.0/16", 100),
            pool("a", "10.244.0.0/16", 100),
        ];
        let overlaps = Overlaps::detect(&pools, None, &[]);
        assert!(!overlaps.is_refused("a"));
        assert!(overlaps.is_refused("b"));
    }

    #[test]
    fn a_pool_overlapping_only_a_refused_pool_is_still_refused() {
        // a (oldest) overlaps b; b overlaps c; a and c are disjoint. c loses to b although b
        // itself is refused, so deleting a can never flip c from Ready to refused.
        let pools = [
            pool("a", "10.0.0.0/24", 100),
            pool("b", "10.0.0.0/23", 200),
            pool("c", "10.0.1.0/24", 300),
        ];
        let overlaps = Overlaps::detect(&pools, None, &[]);
        assert!(!overlaps.is_refused("a"));
        assert!(overlaps.is_refused("b"));
        assert_eq!(
            overlaps.collisions("c"),
            [Collision::OlderPool {
                name: "b".into(),
                cidr: net("10.0.0.0/23")
            }]
        );
        let without_a = Overlaps::detect(&pools[1..], None, &[]);
        assert!(!without_a.is_refused("b"));
        assert!(without_a.is_refused("c"));
    }

    #[test]
    fn disjoint_and_adjacent_pools_do_not_overlap() {
        let pools = [
            pool("a", "10.244.0.0/24", 100),
            pool("b", "10.244.1.0/24", 200),
            pool("v6", "fd00:10:244::/56", 300),
        ];
        assert_eq!(Overlaps::detect(&pools, None, &[]), Overlaps::none());
    }

    #[test]
    fn a_pool_overlapping_the_service_cidr_is_refused_whatever_its_age() {
        let pools = [pool("old", "10.96.0.0/16", 1)];
        let overlaps = Overlaps::detect(&pools, Some(net("10.96.0.0/12")), &[]);
        assert_eq!(
            overlaps.collisions("old"),
            [Collision::ServiceCidr(net("10.96.0.0/12"))]
        );
        let message =
            PoolState::Overlap(overlaps.collisions("old").to_vec()).message(&PoolUsage::default());
        assert!(
            message.starts_with("overlaps the service CIDR 10.96.0.0/12"),
            "{message}"
        );
    }

    #[test]
    fn a_pool_containing_node_addresses_is_refused_and_names_the_nodes() {
        let pools = [pool("nodes", "172.30.0.0/24", 1)];
        let nodes = [
            node("node1", &["172.30.0.11", "fd00::11"]),
            node("node2", &["172.30.0.12"]),
            node("elsewhere", &["192.168.1.5"]),
        ];
        let overlaps = Overlaps::detect(&pools, None, &nodes);
        assert_eq!(
            overlaps.collisions("nodes"),
            [
                Collision::Node {
                    name: "node1".into(),
                    address: "172.30.0.11".parse().unwrap()
                },
                Collision::Node {
                    name: "node2".into(),
                    address: "172.30.0.12".parse().unwrap()
                },
            ]
        );
        assert_eq!(
            describe(overlaps.collisions("nodes")),
            "overlaps the addresses of nodes node1 (172.30.0.11) and node2 (172.30.0.12)"
        );
    }

    #[test]
    fn ipv6_pools_overlap_ipv6_pools_service_ranges_and_node_addresses() {
        let pools = [
            pool("old", "fd00:10:244::/56", 1),
            pool("new", "fd00:10:244:80::/57", 2),
            pool("svc", "fd00:10:96::/112", 3),
            pool("node", "fd00:172:30::/64", 4),
        ];
        let overlaps = Overlaps::detect(
            &pools,
            Some(net("fd00:10:96::/108")),
            &[node("node1", &["172.30.0.11", "fd00:172:30::11"])],
        );
        assert!(!overlaps.is_refused("old"));
        assert!(matches!(
            overlaps.collisions("new"),
            [Collision::OlderPool { name, .. }] if name == "old"
        ));
        assert_eq!(
            overlaps.collisions("svc"),
            [Collision::ServiceCidr(net("fd00:10:96::/108"))]
        );
        assert!(matches!(
            overlaps.collisions("node"),
            [Collision::Node { name, .. }] if name == "node1"
        ));
    }

    #[test]
    fn an_ipv4_service_cidr_never_collides_with_an_ipv6_pool() {
        // ::a60:0/108 has the integer value of 10.96.0.0.
        let pools = [pool("v6", "::a60:0/108", 1)];
        let overlaps = Overlaps::detect(&pools, Some(net("10.96.0.0/12")), &[]);
        assert!(!overlaps.is_refused("v6"));
    }

    #[test]
    fn the_message_lists_ten_nodes_and_counts_the_rest() {
        let names: Vec<String> = (1..=13).map(|i| format!("n{i}")).collect();
        assert_eq!(
            list(&names),
            "n1, n2, n3, n4, n5, n6, n7, n8, n9, n10 and 3 more"
        );
        assert_eq!(list(&names[..3]), "n1, n2 and n3");
        assert_eq!(list(&names[..1]), "n1");
        assert_eq!(list(&[]), "");
    }

    #[test]
    fn the_overlap_message_names_the_older_pool_the_service_cidr_and_the_nodes() {
        let collisions = [
            Collision::OlderPool {
                name: "default-ipv4".into(),
                cidr: net("10.0.0.0/8"),
            },
            Collision::ServiceCidr(net("10.96.0.0/12")),
            Collision::Node {
                name: "node1".into(),
                address: "10.0.0.5".parse().unwrap(),
            },
        ];
        assert_eq!(
            describe(&collisions),
            "overlaps pool default-ipv4 (10.0.0.0/8), which is older and keeps its range; the service CIDR 10.96.0.0/12 (ClusterNetwork default's spec.serviceCIDR); the address of node node1 (10.0.0.5)"
        );
    }

    #[test]
    fn node_addresses_are_the_internal_and_external_ones() {
        let n = Node {
            metadata: kube::api::ObjectMeta {
                name: Some("node1".into()),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                addresses: Some(
                    [
                        ("Hostname", "node1"),
                        (INTERNAL_IP, "172.30.0.11"),
                        (EXTERNAL_IP, "203.0.113.5"),
                        (INTERNAL_IP, "not-an-ip"),
                    ]
                    .map(|(t, a)| NodeAddress {
                        type_: t.into(),
                        address: a.into(),
                    })
                    .to_vec(),
                ),
                ..NodeStatus::default()
            }),
        };
        assert_eq!(
            NodeAddresses::of(&n),
            node("node1", &["172.30.0.11", "203.0.113.5"])
        );
    }

    #[test]
    fn a_block_belongs_to_the_oldest_pool_that_contains_it() {
        let pools = [
            pool("refused", "10.244.0.0/24", 200),
            pool("owner", "10.244.0.0/16", 100),
        ];
        let owners = BlockOwners::new(&pools);
        assert_eq!(owners.owner_of(net("10.244.0.64/26")), Some("owner"));
        assert_eq!(owners.owner_of(net("10.9.0.0/26")), None);
    }

    #[test]
    fn usage_counts_blocks_in_specs_and_allocations_the_agents_report() {
        let pools = [pool("a", "10.244.0.0/16", 1), pool("b", "10.245.0.0/16", 2)];
        let owners = BlockOwners::new(&pools);
        let nns = [
            node_network(
                "node1",
                &["10.244.0.0/26", "10.244.0.64/26"],
                &[("10.244.0.0/26", 60), ("10.244.0.64/26", 3)],
            ),
            // The agent has not reported its block yet.
            node_network("node2", &["10.244.0.128/26"], &[]),
            node_network("node3", &["10.245.0.0/26"], &[("10.245.0.0/26", 7)]),
            // A block no pool contains any more (its pool was deleted).
            node_network("node4", &["10.9.0.0/26"], &[("10.9.0.0/26", 1)]),
        ];
        let held = holdings(&owners, &nns);
        assert_eq!(
            held["a"],
            Holdings {
                blocks: 3,
                allocated: 63,
                nodes: ["node1".to_owned(), "node2".to_owned()].into(),
            }
        );
        assert_eq!(held["b"].blocks, 1);
        assert_eq!(held["b"].allocated, 7);
        assert_eq!(held.len(), 2);
    }

    #[test]
    fn total_addresses_leave_out_reserved_ranges_counted_once() {
        assert_eq!(total_addresses(net("10.244.0.0/16"), &[]), 65536);
        assert_eq!(
            total_addresses(net("10.244.0.0/16"), &[net("10.244.255.0/24")]),
            65536 - 256
        );
        // Overlapping, nested, outside and foreign-family ranges.
        let reserved = [
            net("10.244.0.0/24"),
            net("10.244.0.128/25"),
            net("10.244.0.0/23"),
            net("10.0.0.0/24"),
            net("fd00::/120"),
        ];
        assert_eq!(
            total_addresses(net("10.244.0.0/16"), &reserved),
            65536 - 512
        );
        // A range larger than the pool covers all of it.
        assert_eq!(
            total_addresses(net("10.244.0.0/24"), &[net("10.0.0.0/8")]),
            0
        );
    }

    #[test]
    fn huge_ipv6_pools_saturate_at_the_largest_api_integer() {
        assert_eq!(total_addresses(net("fd00::/64"), &[]), i64::MAX as u64);
        assert_eq!(total_addresses(net("::/0"), &[]), i64::MAX as u64);
        assert_eq!(total_addresses(net("fd00:10:244::/120"), &[]), 256);
    }

    #[test]
    fn assessing_a_pool_combines_overlap_usage_and_spec() {
        let mut older = pool("older", "10.244.0.0/16", 100);
        older.spec.reserved_ranges = vec![Cidr("10.244.255.0/24".into())];
        let newer = pool("newer", "10.244.0.0/24", 200);
        let nns = [node_network(
            "node1",
            &["10.244.0.0/26"],
            &[("10.244.0.0/26", 5)],
        )];
        let view = ClusterView {
            pools: vec![&older, &newer],
            service_cidr: Some(net("10.96.0.0/12")),
            nodes: vec![node("node1", &["172.30.0.11"])],
            node_networks: nns.iter().collect(),
        };
        assert_eq!(
            assess(&older, &view),
            Assessment {
                state: PoolState::Ready {
                    overlapped_by: vec!["newer".into()]
                },
                usage: PoolUsage {
                    total: 65536 - 256,
                    allocated: 5,
                    blocks: 1
                },
            }
        );
        let refused = assess(&newer, &view);
        assert_eq!(refused.state.reason(), reasons::OVERLAP);
        // The block is the older pool's, not the refused one's.
        assert_eq!(refused.usage.blocks, 0);
    }

    #[test]
    fn a_pool_with_every_block_assigned_is_exhausted_but_ready() {
        let small = pool("small", "10.244.0.0/25", 1);
        let nns = [node_network(
            "node1",
            &["10.244.0.0/26", "10.244.0.64/26"],
            &[],
        )];
        let view = ClusterView {
            pools: vec![&small],
            node_networks: nns.iter().collect(),
            ..ClusterView::default()
        };
        let assessed = assess(&small, &view);
        assert_eq!(assessed.state, PoolState::Exhausted);
        assert!(assessed.state.is_ready());
    }

    #[test]
    fn a_pool_with_a_broken_selector_is_invalid_and_says_which_key() {
        let mut broken = pool("broken", "10.244.0.0/16", 1);
        broken.spec.node_selector = Some(
            serde_json::from_value(serde_json::json!({
                "matchExpressions": [{"key": "zone", "operator": "Near"}]
            }))
            .unwrap(),
        );
        let view = ClusterView {
            pools: vec![&broken],
            ..ClusterView::default()
        };
        let assessed = assess(&broken, &view);
        assert_eq!(assessed.state.reason(), reasons::INVALID_SPEC);
        let message = assessed.state.message(&assessed.usage);
        assert!(
            message.contains("spec.nodeSelector") && message.contains("zone"),
            "{message}"
        );
    }

    fn facts<'a>(holders: &'a BTreeSet<String>) -> PoolFacts<'a> {
        PoolFacts {
            deleting: false,
            holders,
            collisions: &[],
            overlapped_by: &[],
            invalid: None,
            disabled: false,
            exhausted: false,
        }
    }

    #[test]
    fn a_deleting_pool_is_in_use_before_anything_else_and_names_the_holders() {
        let holders: BTreeSet<String> = ["node2".to_owned(), "node1".to_owned()].into();
        let collisions = [Collision::ServiceCidr(net("10.96.0.0/12"))];
        let state = PoolState::of(PoolFacts {
            deleting: true,
            collisions: &collisions,
            ..facts(&holders)
        });
        assert_eq!(
            state,
            PoolState::InUse {
                nodes: vec!["node1".into(), "node2".into()]
            }
        );
        assert!(!state.is_ready());
        assert_eq!(state.reason(), reasons::IN_USE);
        assert!(
            state
                .message(&PoolUsage::default())
                .contains("nodes node1 and node2 still hold blocks"),
            "{}",
            state.message(&PoolUsage::default())
        );
    }

    #[test]
    fn a_disabled_pool_stays_ready_and_says_it_hands_out_no_new_blocks() {
        let holders = BTreeSet::new();
        let state = PoolState::of(PoolFacts {
            disabled: true,
            exhausted: true,
            ..facts(&holders)
        });
        assert_eq!(state, PoolState::Disabled);
        assert!(state.is_ready());
        assert_eq!(state.reason(), reasons::DISABLED);
        let usage = PoolUsage {
            total: 65536,
            allocated: 5,
            blocks: 2,
        };
        assert_eq!(
            state.message(&usage),
            "disabled (spec.disabled: true): hands out no new blocks; blocks nodes already hold stay theirs (2 blocks assigned to nodes, 5 of 65536 addresses allocated)"
        );
    }

    #[test]
    fn overlap_outranks_an_invalid_spec_and_disabled() {
        let holders = BTreeSet::new();
        let collisions = [Collision::ServiceCidr(net("10.96.0.0/12"))];
        let state = PoolState::of(PoolFacts {
            collisions: &collisions,
            invalid: Some("bad"),
            disabled: true,
            ..facts(&holders)
        });
        assert_eq!(state.reason(), reasons::OVERLAP);
        assert!(!state.is_ready());
    }

    #[test]
    fn the_ready_condition_keeps_its_transition_time_while_its_status_holds() {
        let holders = BTreeSet::new();
        let ready = PoolState::of(facts(&holders));
        let first = desired_status(None, &ready, PoolUsage::default(), Some(1), at(10));
        let ready_condition = |s: &IPPoolStatus| {
            conditions::find(&s.conditions, types::READY)
                .unwrap()
                .clone()
        };
        assert_eq!(ready_condition(&first).last_transition_time, at(10));
        assert_eq!(first.observed_generation, Some(1));

        // More usage, still Ready: the time stays, the message moves.
        let usage = PoolUsage {
            total: 100,
            allocated: 1,
            blocks: 1,
        };
        let second = desired_status(Some(&first), &ready, usage.clone(), Some(1), at(20));
        assert_eq!(ready_condition(&second).last_transition_time, at(10));
        assert_eq!(second.usage, Some(usage.clone()));

        // Unchanged inputs give an identical status: nothing to write.
        let again = desired_status(Some(&second), &ready, usage.clone(), Some(1), at(30));
        assert_eq!(again, second);

        // Disabled is still Ready=True: the time stays.
        let disabled = desired_status(
            Some(&second),
            &PoolState::Disabled,
            usage.clone(),
            Some(2),
            at(40),
        );
        assert_eq!(ready_condition(&disabled).last_transition_time, at(10));
        assert_eq!(ready_condition(&disabled).reason, reasons::DISABLED);
        assert_eq!(ready_condition(&disabled).observed_generation, Some(2));

        // Overlap flips it to False: the time moves.
        let overlap = PoolState::Overlap(vec![Collision::ServiceCidr(net("10.96.0.0/12"))]);
        let refused = desired_status(Some(&disabled), &overlap, usage, Some(2), at(50));
        let condition = ready_condition(&refused);
        assert_eq!(condition.status, "False");
        assert_eq!(condition.last_transition_time, at(50));
        assert_eq!(refused.conditions.len(), 1);
    }

    #[test]
    fn events_mark_overlap_its_resolution_and_a_held_deletion_once_each() {
        let condition = |state: &PoolState| {
            conditions::new_condition(
                types::READY,
                ConditionStatus::from(state.is_ready()),
                state.reason(),
                "",
                None,
                at(0),
            )
        };
        let ready = condition(&PoolState::Ready {
            overlapped_by: vec![],
        });
        let overlap = condition(&PoolState::Overlap(vec![]));
        let in_use = condition(&PoolState::InUse { nodes: vec![] });
        let disabled = condition(&PoolState::Disabled);

        assert_eq!(Transition::between(None, &ready), None);
        assert_eq!(
            Transition::between(None, &overlap),
            Some(Transition::Overlapped)
        );
        assert_eq!(
            Transition::between(Some(&ready), &overlap),
            Some(Transition::Overlapped)
        );
        assert_eq!(Transition::between(Some(&overlap), &overlap), None);
        assert_eq!(
            Transition::between(Some(&overlap), &ready),
            Some(Transition::OverlapResolved)
        );
        assert_eq!(
            Transition::between(Some(&overlap), &disabled),
            Some(Transition::OverlapResolved)
        );
        assert_eq!(
            Transition::between(Some(&ready), &in_use),
            Some(Transition::DeletionHeld)
        );
        assert_eq!(Transition::between(Some(&in_use), &in_use), None);
        assert!(!Transition::OverlapResolved.is_warning());
    }
}
