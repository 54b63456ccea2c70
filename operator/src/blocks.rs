//! Block assignment: carving IPPools into fixed-size blocks and choosing the next free one
//! for a node. Pure: the inputs are the pools, the blocks already handed out and the node;
//! no IO, no clock.
//!
//! The order is deterministic so that every replica, and every restart, makes the same
//! choice from the same inputs: pools in `ClusterNetwork.spec.ipPools` order when that list
//! is set (only those pools), otherwise every pool in name order; inside a pool, blocks in
//! address order. A pool that [`Overlaps`] refuses (it overlaps an older pool, the service
//! CIDR or a node address: see [`crate::pools`]) gives no block, like a disabled one. A block is skipped when it overlaps any block already handed out (from
//! any pool, so even overlapping pools never yield overlapping blocks) or when reserved
//! ranges cover all of it. A block reserved only in part is handed out: the agent's IPAM
//! skips reserved addresses itself (`node-agent/src/ipam`).
//!
//! Cost: handed-out blocks are kept as merged address intervals in a [`BTreeMap`], so a
//! choice jumps over every contiguous run of taken (or reserved) blocks in one `O(log n)`
//! step. Choosing a block for each of 1,000 nodes, rebuilding the index from all
//! NodeNetworks every time as the controller does, takes milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrite_crds::clusternetwork::SINGLETON_NAME;
use ferrite_crds::{AllowedUse, IPPool};
use ipnet::IpNet;
use kube::ResourceExt;

use crate::pools::{self, Overlaps};
use crate::selector::{self, SelectorError};

/// A node, as far as block choice is concerned.
#[derive(Clone, Copy, Debug)]
pub struct NodeView<'a> {
    /// The Node's name.
    pub name: &'a str,
    /// The Node's labels, matched against each pool's `spec.nodeSelector`.
    pub labels: &'a BTreeMap<String, String>,
}

/// A block chosen for a node, and the pool it was carved from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chosen {
    /// The IPPool's name.
    pub pool: String,
    /// The block.
    pub block: IpNet,
}

/// Every block already handed out (in any NodeNetwork, or claimed and not yet visible there),
/// indexed for "does this block overlap one of them" queries.
#[derive(Clone, Debug, Default)]
pub struct TakenBlocks {
    v4: Intervals,
    v6: Intervals,
}

impl TakenBlocks {
    /// No block taken.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `block` as taken. Host bits, if any, are ignored.
    pub fn insert(&mut self, block: IpNet) {
        let (start, end) = bounds(block);
        self.family_mut(block).insert(start, end);
    }

    /// Whether `block` overlaps (contains, lies in, or equals) a taken block.
    pub fn overlaps(&self, block: IpNet) -> bool {
        let (start, end) = bounds(block);
        self.family(block).overlapping(start, end).is_some()
    }

    fn family(&self, net: IpNet) -> &Intervals {
        match net {
            IpNet::V4(_) => &self.v4,
            IpNet::V6(_) => &self.v6,
        }
    }

    fn family_mut(&mut self, net: IpNet) -> &mut Intervals {
        match net {
            IpNet::V4(_) => &mut self.v4,
            IpNet::V6(_) => &mut self.v6,
        }
    }
}

impl Extend<IpNet> for TakenBlocks {
    fn extend<I: IntoIterator<Item = IpNet>>(&mut self, blocks: I) {
        for block in blocks {
            self.insert(block);
        }
    }
}

impl FromIterator<IpNet> for TakenBlocks {
    fn from_iter<I: IntoIterator<Item = IpNet>>(blocks: I) -> Self {
        let mut taken = Self::new();
        taken.extend(blocks);
        taken
    }
}

/// A pool's range, checked and ready to carve into blocks.
#[derive(Clone, Debug)]
pub struct Carving {
    cidr: IpNet,
    block_prefix: u8,
    /// Reserved ranges, merged, in the same address family as `cidr`.
    reserved: Intervals,
}

impl Carving {
    /// Checks that blocks of `/block_prefix` can be carved from `cidr` and that every
    /// reserved range is of the pool's address family. The apiserver's CEL rules refuse all
    /// of these already; an object written under an older schema gets a message instead.
    pub fn new(cidr: IpNet, block_prefix: u8, reserved: &[IpNet]) -> Result<Self, CarvingError> {
        let cidr = cidr.trunc();
        let max = cidr.max_prefix_len();
        if block_prefix < cidr.prefix_len() {
            return Err(CarvingError::BlockLargerThanPool { cidr, block_prefix });
        }
        // NB: a /0 block would hold 2^128 IPv6 addresses, one more than u128 can count.
        if block_prefix > max || block_prefix == 0 {
            return Err(CarvingError::BlockSizeOutOfRange { cidr, block_prefix });
        }
        let mut merged = Intervals::default();
        for range in reserved {
            if range.max_prefix_len() != max {
                return Err(CarvingError::ReservedRangeFamily {
                    range: *range,
                    cidr,
                });
            }
            let (start, end) = bounds(*range);
            merged.insert(start, end);
        }
        Ok(Self {
            cidr,
            block_prefix,
            reserved: merged,
        })
    }

    /// The pool's range.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// The prefix length of its blocks.
    pub fn block_prefix(&self) -> u8 {
        self.block_prefix
    }

    /// The first block, in address order, that overlaps no taken block and is not wholly
    /// reserved; `None` when the pool is exhausted.
    pub fn first_free(&self, taken: &TakenBlocks) -> Option<IpNet> {
        let taken = taken.family(self.cidr);
        let size = 1u128 << (self.cidr.max_prefix_len() - self.block_prefix);
        let (mut at, end) = bounds(self.cidr);
        // Each pass either returns or jumps past a whole taken or reserved interval, so the
        // loop runs at most (taken intervals + reserved intervals + 1) times.
        while at <= end {
            // Cannot overflow: `at` is block-aligned inside the pool, and the pool's last
            // address is at least `at + size - 1`.
            let last = at + (size - 1);
            if let Some((_, taken_end)) = taken.overlapping(at, last) {
                at = next_aligned(taken_end, size)?;
                continue;
            }
            if let Some((reserved_start, reserved_end)) = self.reserved.overlapping(at, last)
                && reserved_start <= at
                && reserved_end >= last
            {
                // Round down, not up: the block holding the first unreserved address is
                // only partly reserved, so it is still a candidate.
                at = reserved_end.checked_add(1)? / size * size;
                continue;
            }
            return net_at(self.cidr, at, self.block_prefix);
        }
        None
    }
}

/// A pool whose range cannot be carved into blocks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CarvingError {
    /// `spec.blockSize` is shorter than the pool's own prefix.
    #[error(
        "spec.blockSize {block_prefix} is shorter than the prefix of spec.cidr {cidr}: a block cannot be larger than its pool"
    )]
    BlockLargerThanPool {
        /// The pool's range.
        cidr: IpNet,
        /// The block prefix length as written.
        block_prefix: u8,
    },
    /// `spec.blockSize` is not a prefix length of the pool's address family.
    #[error(
        "spec.blockSize {block_prefix} is not a prefix length for blocks of {cidr}: use 20-32 for IPv4 or 116-128 for IPv6"
    )]
    BlockSizeOutOfRange {
        /// The pool's range.
        cidr: IpNet,
        /// The block prefix length as written.
        block_prefix: u8,
    },
    /// A reserved range is IPv6 in an IPv4 pool, or the reverse.
    #[error(
        "spec.reservedRanges entry {range} is not of the same address family as spec.cidr {cidr}"
    )]
    ReservedRangeFamily {
        /// The reserved range.
        range: IpNet,
        /// The pool's range.
        cidr: IpNet,
    },
}

/// Why a pool gave no block to a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ineligible {
    /// Listed in `ClusterNetwork.spec.ipPools`, but no IPPool of that name exists.
    Missing,
    /// `ClusterNetwork.spec.ipPools` is set and does not list the pool.
    NotListed,
    /// `spec.disabled` is true.
    Disabled,
    /// The pool is being deleted.
    Deleting,
    /// `spec.allowedUses` does not include `Pod`.
    NotForPods,
    /// The pool is refused for an overlap; the text names what it overlaps.
    Overlap(String),
    /// `spec.nodeSelector` does not select the node.
    NotSelected,
    /// `spec.nodeSelector` cannot be evaluated.
    InvalidSelector(SelectorError),
    /// The pool's range or block size cannot be carved (written under an older schema).
    InvalidSpec(String),
    /// Every block is handed out or reserved.
    Exhausted {
        /// The pool's range.
        cidr: IpNet,
        /// The prefix length of its blocks.
        block_prefix: u8,
    },
}

/// One pool and why it gave no block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolVerdict {
    /// The IPPool's name.
    pub pool: String,
    /// Why it gave no block.
    pub reason: Ineligible,
}

impl fmt::Display for PoolVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pool = &self.pool;
        match &self.reason {
            Ineligible::Missing => write!(
                f,
                "pool {pool} is listed in ClusterNetwork {SINGLETON_NAME}'s spec.ipPools but does not exist"
            ),
            Ineligible::NotListed => write!(
                f,
                "pool {pool} is not listed in ClusterNetwork {SINGLETON_NAME}'s spec.ipPools"
            ),
            Ineligible::Disabled => write!(f, "pool {pool} is disabled (spec.disabled: true)"),
            Ineligible::Deleting => write!(f, "pool {pool} is being deleted"),
            Ineligible::NotForPods => {
                write!(f, "pool {pool} does not allow Pod in spec.allowedUses")
            }
            Ineligible::Overlap(what) => write!(f, "pool {pool} is refused: it {what}"),
            Ineligible::NotSelected => {
                write!(
                    f,
                    "pool {pool}'s spec.nodeSelector does not select this node"
                )
            }
            Ineligible::InvalidSelector(err) => {
                write!(f, "pool {pool}'s spec.nodeSelector is invalid: {err}")
            }
            Ineligible::InvalidSpec(why) => write!(f, "pool {pool} is unusable: {why}"),
            Ineligible::Exhausted { cidr, block_prefix } => write!(
                f,
                "pool {pool} is exhausted: every /{block_prefix} block of {cidr} is assigned or reserved"
            ),
        }
    }
}

/// No pool can give the node a block. Names every pool and why it could not.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct NoFreeBlock {
    /// The node that needs a block.
    pub node: String,
    /// Every pool considered (and every pool left out), with its reason.
    pub pools: Vec<PoolVerdict>,
}

impl fmt::Display for NoFreeBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no free address block for node {}: ", self.node)?;
        if self.pools.is_empty() {
            return f.write_str(
                "no IPPool exists; create one (see docs/examples/ippool.yaml) and the node gets a block from it",
            );
        }
        for (i, verdict) in self.pools.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{verdict}")?;
        }
        write!(
            f,
            ". To fix: add (or enlarge) an IPPool that allows Pod and selects this node, listing it in ClusterNetwork {SINGLETON_NAME}'s spec.ipPools if that list is set, or re-enable a disabled one"
        )
    }
}

/// Chooses the next free block for `node`.
///
/// `listed` is `ClusterNetwork.spec.ipPools`: when not empty, only those pools are used, in
/// that order; when empty, every pool is, in name order. Disabled pools, pools being
/// deleted, pools that do not allow `Pod`, pools `overlaps` refuses and pools whose
/// `nodeSelector` does not select the node give no block.
pub fn choose_block<'a>(
    pools: impl IntoIterator<Item = &'a IPPool>,
    listed: &[String],
    overlaps: &Overlaps,
    taken: &TakenBlocks,
    node: NodeView<'_>,
) -> Result<Chosen, NoFreeBlock> {
    let by_name: BTreeMap<String, &IPPool> = pools.into_iter().map(|p| (p.name_any(), p)).collect();
    let order: Vec<(&str, Option<&IPPool>)> = if listed.is_empty() {
        by_name
            .iter()
            .map(|(n, p)| (n.as_str(), Some(*p)))
            .collect()
    } else {
        let mut seen = BTreeSet::new();
        listed
            .iter()
            .filter(|name| seen.insert(name.as_str()))
            .map(|name| (name.as_str(), by_name.get(name).copied()))
            .collect()
    };

    let mut verdicts = Vec::new();
    for (name, pool) in &order {
        let reason = match pool.map(|p| carving_for(p, overlaps, node)) {
            None => Ineligible::Missing,
            Some(Err(reason)) => reason,
            Some(Ok(carving)) => match carving.first_free(taken) {
                Some(block) => {
                    return Ok(Chosen {
                        pool: (*name).to_owned(),
                        block,
                    });
                }
                None => Ineligible::Exhausted {
                    cidr: carving.cidr(),
                    block_prefix: carving.block_prefix(),
                },
            },
        };
        verdicts.push(PoolVerdict {
            pool: (*name).to_owned(),
            reason,
        });
    }
    if !listed.is_empty() {
        verdicts.extend(
            by_name
                .keys()
                .filter(|name| !listed.contains(name))
                .map(|name| PoolVerdict {
                    pool: name.clone(),
                    reason: Ineligible::NotListed,
                }),
        );
    }
    Err(NoFreeBlock {
        node: node.name.to_owned(),
        pools: verdicts,
    })
}

/// The pool's carving if it may give `node` a block, or why it may not.
pub fn carving_for(
    pool: &IPPool,
    overlaps: &Overlaps,
    node: NodeView<'_>,
) -> Result<Carving, Ineligible> {
    let spec = &pool.spec;
    if pool.metadata.deletion_timestamp.is_some() {
        return Err(Ineligible::Deleting);
    }
    if spec.disabled {
        return Err(Ineligible::Disabled);
    }
    if !spec.allowed_uses.contains(&AllowedUse::Pod) {
        return Err(Ineligible::NotForPods);
    }
    let collisions = overlaps.collisions(&pool.name_any());
    if !collisions.is_empty() {
        return Err(Ineligible::Overlap(pools::describe(collisions)));
    }
    let carving = pool_carving(pool).map_err(Ineligible::InvalidSpec)?;
    if let Some(node_selector) = &spec.node_selector {
        match selector::matches(node_selector, node.labels) {
            Ok(true) => {}
            Ok(false) => return Err(Ineligible::NotSelected),
            Err(e) => return Err(Ineligible::InvalidSelector(e)),
        }
    }
    Ok(carving)
}

/// The pool's range, block size and reserved ranges, checked; or why they cannot be carved
/// (the apiserver refuses all of these, so only an object written under an older schema
/// has one).
pub fn pool_carving(pool: &IPPool) -> Result<Carving, String> {
    let spec = &pool.spec;
    let cidr = spec.cidr.net().map_err(|e| format!("spec.cidr: {e}"))?;
    let reserved = spec
        .reserved_ranges
        .iter()
        .map(|r| r.net())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("spec.reservedRanges: {e}"))?;
    Carving::new(cidr, spec.block_size, &reserved).map_err(|e| e.to_string())
}

/// A block of one NodeNetwork that overlaps a block of another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// This NodeNetwork's block.
    pub block: IpNet,
    /// The other NodeNetwork's name.
    pub other: String,
    /// The other NodeNetwork's block.
    pub other_block: IpNet,
}

/// Every overlap between `ours` (the blocks of NodeNetwork `name`) and the blocks of the
/// other NodeNetworks. Blocks listed under `name` itself among `all` are skipped.
pub fn overlaps_with_others<'a>(
    name: &str,
    ours: &[IpNet],
    all: impl IntoIterator<Item = (&'a str, IpNet)>,
) -> Vec<Overlap> {
    all.into_iter()
        .filter(|(other, _)| *other != name)
        .flat_map(|(other, other_block)| {
            ours.iter()
                .filter(move |block| pools::nets_overlap(**block, other_block))
                .map(move |block| Overlap {
                    block: *block,
                    other: other.to_owned(),
                    other_block,
                })
        })
        .collect()
}

/// Disjoint inclusive address ranges (`start -> end`), merged whenever two overlap or touch.
/// Merging is what lets [`Carving::first_free`] skip a contiguous run in one step, and it
/// makes the neighbour-below lookup in [`Intervals::overlapping`] exact.
#[derive(Clone, Debug, Default)]
struct Intervals(BTreeMap<u128, u128>);

impl Intervals {
    fn insert(&mut self, mut start: u128, mut end: u128) {
        if let Some((&below_start, &below_end)) = self.0.range(..=start).next_back()
            && below_end.checked_add(1).is_none_or(|after| after >= start)
        {
            self.0.remove(&below_start);
            start = below_start;
            end = end.max(below_end);
        }
        while let Some((&above_start, &above_end)) = self.0.range(start..).next()
            && end.checked_add(1).is_none_or(|after| above_start <= after)
        {
            self.0.remove(&above_start);
            end = end.max(above_end);
        }
        self.0.insert(start, end);
    }

    /// The interval overlapping `[start, end]`, if any. Intervals are disjoint and merged, so
    /// only the one starting last at or before `end` can.
    fn overlapping(&self, start: u128, end: u128) -> Option<(u128, u128)> {
        self.0
            .range(..=end)
            .next_back()
            .filter(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
    }
}

/// First and last address of `net`, as integers.
pub(crate) fn bounds(net: IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The first block start (a multiple of `size`) after `end` whose block does not contain
/// `end`; `None` past the end of the address space.
fn next_aligned(end: u128, size: u128) -> Option<u128> {
    end.checked_add(1)?.div_ceil(size).checked_mul(size)
}

/// The network at integer address `at` in `family`'s address family.
fn net_at(family: IpNet, at: u128, prefix: u8) -> Option<IpNet> {
    let addr = match family {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(u32::try_from(at).ok()?)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(at)),
    };
    IpNet::new(addr, prefix).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ferrite_crds::Cidr;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// An IPPool fixture, built up with the methods below.
    struct Pool(IPPool);

    impl Pool {
        fn new(name: &str, cidr: &str, block_size: u8) -> Self {
            Self(crate::testing::pool(name, cidr, block_size))
        }

        fn reserved(mut self, ranges: &[&str]) -> Self {
            self.0.spec.reserved_ranges = ranges.iter().map(|r| Cidr((*r).into())).collect();
            self
        }

        fn disabled(mut self) -> Self {
            self.0.spec.disabled = true;
            self
        }

        fn selecting(mut self, key: &str, value: &str) -> Self {
            self.0.spec.node_selector = Some(LabelSelector {
                match_labels: Some([(key.to_owned(), value.to_owned())].into()),
                match_expressions: None,
            });
            self
        }

        fn load_balancer_only(mut self) -> Self {
            self.0.spec.allowed_uses = vec![AllowedUse::LoadBalancer];
            self
        }

        fn deleting(mut self) -> Self {
            self.0.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
            self
        }

        fn build(self) -> IPPool {
            self.0
        }
    }

    fn no_labels() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn node<'a>(name: &'a str, labels: &'a BTreeMap<String, String>) -> NodeView<'a> {
        NodeView { name, labels }
    }

    fn choose(pools: &[IPPool], taken: &TakenBlocks) -> Result<Chosen, NoFreeBlock> {
        choose_block(
            pools,
            &[],
            &Overlaps::none(),
            taken,
            node("node1", &no_labels()),
        )
    }

    fn carving(cidr: &str, block: u8, reserved: &[&str]) -> Carving {
        let reserved: Vec<IpNet> = reserved.iter().map(|r| net(r)).collect();
        Carving::new(net(cidr), block, &reserved).unwrap()
    }

    #[test]
    fn first_block_of_an_empty_pool_is_its_first_address() {
        let free = carving("10.244.0.0/16", 26, &[]).first_free(&TakenBlocks::new());
        assert_eq!(free, Some(net("10.244.0.0/26")));
    }

    #[test]
    fn taken_blocks_are_skipped_in_address_order() {
        let taken: TakenBlocks = [net("10.244.0.0/26"), net("10.244.0.128/26")]
            .into_iter()
            .collect();
        let pool = carving("10.244.0.0/16", 26, &[]);
        assert_eq!(pool.first_free(&taken), Some(net("10.244.0.64/26")));
    }

    #[test]
    fn a_block_overlapping_a_differently_sized_taken_block_is_skipped() {
        // A /28 from an overlapping pool sits inside the first /26; a /24 covers the next four.
        let taken: TakenBlocks = [net("10.244.0.16/28"), net("10.244.1.0/24")]
            .into_iter()
            .collect();
        let pool = carving("10.244.0.0/16", 26, &[]);
        assert_eq!(pool.first_free(&taken), Some(net("10.244.0.64/26")));
        let taken: TakenBlocks = [net("10.244.0.0/24"), net("10.244.1.0/24")]
            .into_iter()
            .collect();
        assert_eq!(pool.first_free(&taken), Some(net("10.244.2.0/26")));
    }

    #[test]
    fn a_wholly_reserved_block_is_skipped_but_a_partly_reserved_one_is_not() {
        // The two ranges touch, so they merge into .0-.79, which ends inside .64/26.
        let pool = carving("10.244.0.0/24", 26, &["10.244.0.0/26", "10.244.0.64/28"]);
        // .0/26 is wholly reserved; .64/26 only in part: the agent skips .64-.79 itself.
        assert_eq!(
            pool.first_free(&TakenBlocks::new()),
            Some(net("10.244.0.64/26"))
        );
    }

    #[test]
    fn adjacent_reserved_ranges_that_together_cover_a_block_skip_it() {
        let pool = carving("10.244.0.0/24", 26, &["10.244.0.0/27", "10.244.0.32/27"]);
        assert_eq!(
            pool.first_free(&TakenBlocks::new()),
            Some(net("10.244.0.64/26"))
        );
    }

    #[test]
    fn a_pool_with_every_block_taken_or_reserved_has_none_free() {
        let pool = carving("10.244.0.0/24", 26, &["10.244.0.192/26"]);
        let taken: TakenBlocks = ["10.244.0.0/26", "10.244.0.64/26", "10.244.0.128/26"]
            .into_iter()
            .map(net)
            .collect();
        assert_eq!(pool.first_free(&taken), None);
    }

    #[test]
    fn a_pool_at_the_top_of_the_address_space_ends_without_overflow() {
        let v4 = carving("255.255.255.0/24", 26, &[]);
        let taken: TakenBlocks = [net("255.255.255.0/24")].into_iter().collect();
        assert_eq!(v4.first_free(&taken), None);
        let v6 = carving("ffff:ffff:ffff:ffff:ffff:ffff:ffff:f000/116", 120, &[]);
        let taken: TakenBlocks = [net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:f000/116")]
            .into_iter()
            .collect();
        assert_eq!(v6.first_free(&taken), None);
    }

    #[test]
    fn ipv6_pools_are_carved_the_same_way() {
        let taken: TakenBlocks = [net("fd00:10:244::/122")].into_iter().collect();
        let pool = carving("fd00:10:244::/56", 122, &[]);
        assert_eq!(pool.first_free(&taken), Some(net("fd00:10:244::40/122")));
    }

    #[test]
    fn a_huge_reserved_ipv6_range_is_skipped_in_one_step() {
        // 2^63 single-address blocks reserved: walking them one by one would never end.
        let pool = carving("fd00::/64", 128, &["fd00::/65"]);
        let started = Instant::now();
        assert_eq!(
            pool.first_free(&TakenBlocks::new()),
            Some(net("fd00::8000:0:0:0/128"))
        );
        assert!(started.elapsed().as_secs() < 1);
    }

    #[test]
    fn taken_blocks_of_one_family_do_not_hide_the_other() {
        // ::a00:0/120 has the same integer value as 10.0.0.0/24.
        let taken: TakenBlocks = [net("10.0.0.0/24")].into_iter().collect();
        assert!(!taken.overlaps(net("::a00:0/120")));
        assert!(taken.overlaps(net("10.0.0.64/26")));
        assert!(taken.overlaps(net("10.0.0.0/16")));
    }

    #[test]
    fn carving_refuses_a_block_larger_than_its_pool_and_a_foreign_family_reservation() {
        let err = Carving::new(net("10.244.0.0/16"), 12, &[]).unwrap_err();
        assert!(matches!(err, CarvingError::BlockLargerThanPool { .. }));
        assert!(
            err.to_string().contains("cannot be larger than its pool"),
            "{err}"
        );
        let err = Carving::new(net("10.244.0.0/16"), 33, &[]).unwrap_err();
        assert!(err.to_string().contains("20-32"), "{err}");
        let err = Carving::new(net("10.244.0.0/16"), 26, &[net("fd00::/120")]).unwrap_err();
        assert!(matches!(err, CarvingError::ReservedRangeFamily { .. }));
    }

    #[test]
    fn pools_are_tried_in_name_order_when_cluster_network_lists_none() {
        let pools = [
            Pool::new("b-pool", "10.2.0.0/24", 26).build(),
            Pool::new("a-pool", "10.1.0.0/24", 26).build(),
        ];
        let chosen = choose(&pools, &TakenBlocks::new()).unwrap();
        assert_eq!(chosen.pool, "a-pool");
        assert_eq!(chosen.block, net("10.1.0.0/26"));
    }

    #[test]
    fn listed_pools_are_used_in_list_order_and_others_never() {
        let pools = [
            Pool::new("a-pool", "10.1.0.0/24", 26).build(),
            Pool::new("b-pool", "10.2.0.0/24", 26).build(),
            Pool::new("c-pool", "10.3.0.0/24", 26).build(),
        ];
        let listed = ["c-pool".to_owned(), "b-pool".to_owned()];
        let labels = no_labels();
        let chosen = choose_block(
            &pools,
            &listed,
            &Overlaps::none(),
            &TakenBlocks::new(),
            node("n", &labels),
        )
        .unwrap();
        assert_eq!(chosen.pool, "c-pool");

        let full: TakenBlocks = [net("10.2.0.0/24"), net("10.3.0.0/24")]
            .into_iter()
            .collect();
        let err = choose_block(
            &pools,
            &listed,
            &Overlaps::none(),
            &full,
            node("n", &labels),
        )
        .unwrap_err();
        assert_eq!(
            err.pools
                .iter()
                .map(|v| (v.pool.as_str(), &v.reason))
                .collect::<Vec<_>>(),
            [
                (
                    "c-pool",
                    &Ineligible::Exhausted {
                        cidr: net("10.3.0.0/24"),
                        block_prefix: 26
                    }
                ),
                (
                    "b-pool",
                    &Ineligible::Exhausted {
                        cidr: net("10.2.0.0/24"),
                        block_prefix: 26
                    }
                ),
                ("a-pool", &Ineligible::NotListed),
            ]
        );
    }

    #[test]
    fn a_listed_pool_that_does_not_exist_is_named() {
        let listed = ["gone".to_owned()];
        let labels = no_labels();
        let err = choose_block(
            [],
            &listed,
            &Overlaps::none(),
            &TakenBlocks::new(),
            node("n", &labels),
        )
        .unwrap_err();
        assert_eq!(err.pools[0].reason, Ineligible::Missing);
        assert!(err.to_string().contains("pool gone is listed"), "{err}");
    }

    #[test]
    fn disabled_deleting_and_load_balancer_pools_give_no_block() {
        let pools = [
            Pool::new("a", "10.1.0.0/24", 26).disabled().build(),
            Pool::new("b", "10.2.0.0/24", 26).deleting().build(),
            Pool::new("c", "10.3.0.0/24", 26)
                .load_balancer_only()
                .build(),
            Pool::new("d", "10.4.0.0/24", 26).build(),
        ];
        let chosen = choose(&pools, &TakenBlocks::new()).unwrap();
        assert_eq!(chosen.pool, "d");
        let err = choose(&pools[..3], &TakenBlocks::new()).unwrap_err();
        let reasons: Vec<_> = err.pools.iter().map(|v| v.reason.clone()).collect();
        assert_eq!(
            reasons,
            [
                Ineligible::Disabled,
                Ineligible::Deleting,
                Ineligible::NotForPods
            ]
        );
    }

    #[test]
    fn a_pool_refused_for_an_overlap_gives_no_block_and_the_error_says_why() {
        let pools = [
            Pool::new("services", "10.96.0.0/16", 26).build(),
            Pool::new("pods", "10.244.0.0/16", 26).build(),
        ];
        let overlaps = Overlaps::detect(&pools, Some(net("10.96.0.0/12")), &[]);
        let labels = no_labels();
        let chosen = choose_block(
            &pools,
            &[],
            &overlaps,
            &TakenBlocks::new(),
            node("n", &labels),
        )
        .unwrap();
        assert_eq!(chosen.pool, "pods");
        let err = choose_block(
            &pools[..1],
            &[],
            &overlaps,
            &TakenBlocks::new(),
            node("n", &labels),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("pool services is refused: it overlaps the service CIDR 10.96.0.0/12"),
            "{err}"
        );
    }

    #[test]
    fn a_pool_gives_blocks_only_to_nodes_its_selector_selects() {
        let pools = [
            Pool::new("zone-a", "10.1.0.0/24", 26)
                .selecting("zone", "a")
                .build(),
            Pool::new("zone-b", "10.2.0.0/24", 26)
                .selecting("zone", "b")
                .build(),
        ];
        let zone_b: BTreeMap<String, String> = [("zone".to_owned(), "b".to_owned())].into();
        let chosen = choose_block(
            &pools,
            &[],
            &Overlaps::none(),
            &TakenBlocks::new(),
            node("n", &zone_b),
        )
        .unwrap();
        assert_eq!(chosen.pool, "zone-b");
        let err = choose(&pools, &TakenBlocks::new()).unwrap_err();
        assert!(
            err.pools
                .iter()
                .all(|v| v.reason == Ineligible::NotSelected),
            "{err}"
        );
    }

    #[test]
    fn the_error_names_every_pool_with_its_reason_and_says_what_to_do() {
        let pools = [
            Pool::new("full", "10.1.0.0/26", 26).build(),
            Pool::new("off", "10.2.0.0/24", 26).disabled().build(),
        ];
        let taken: TakenBlocks = [net("10.1.0.0/26")].into_iter().collect();
        let message = choose(&pools, &taken).unwrap_err().to_string();
        assert!(message.starts_with("no free address block for node node1: "));
        assert!(
            message.contains("pool full is exhausted: every /26 block of 10.1.0.0/26"),
            "{message}"
        );
        assert!(message.contains("pool off is disabled"), "{message}");
        assert!(
            message.contains("To fix: add (or enlarge) an IPPool"),
            "{message}"
        );
    }

    #[test]
    fn with_no_pool_at_all_the_error_says_to_create_one() {
        let message = choose(&[], &TakenBlocks::new()).unwrap_err().to_string();
        assert!(
            message.contains("no IPPool exists; create one"),
            "{message}"
        );
    }

    #[test]
    fn an_invalid_pool_is_reported_and_the_next_one_used() {
        let pools = [
            Pool::new("bad", "10.1.0.1/24", 26).build(),
            Pool::new("good", "10.2.0.0/24", 26).build(),
        ];
        assert_eq!(choose(&pools, &TakenBlocks::new()).unwrap().pool, "good");
        let err = choose(&pools[..1], &TakenBlocks::new()).unwrap_err();
        assert!(
            matches!(&err.pools[0].reason, Ineligible::InvalidSpec(why) if why.contains("host bits")),
            "{err}"
        );
    }

    #[test]
    fn an_ipv6_pool_gives_blocks_like_an_ipv4_one() {
        let pools = [Pool::new("v6", "fd00:10:244::/56", 122).build()];
        let taken: TakenBlocks = [net("fd00:10:244::/122")].into_iter().collect();
        let chosen = choose(&pools, &taken).unwrap();
        assert_eq!(chosen.block, net("fd00:10:244::40/122"));
    }

    #[test]
    fn a_thousand_nodes_get_distinct_blocks_of_a_slash_16_quickly() {
        // The issue-5 benchmark's shape: 1,000 nodes, /26 blocks, the docs' example pool with
        // its reserved /24 (four blocks). The index is rebuilt from every assigned block
        // before each choice, as the controller does from its NodeNetwork cache.
        let pools = [Pool::new("default-ipv4", "10.244.0.0/16", 26)
            .reserved(&["10.244.255.0/24"])
            .build()];
        let labels = no_labels();
        let names: Vec<String> = (0..1000).map(|i| format!("node-{i:04}")).collect();
        let mut assigned: Vec<IpNet> = Vec::with_capacity(names.len());
        let started = Instant::now();
        for name in &names {
            let taken: TakenBlocks = assigned.iter().copied().collect();
            let chosen =
                choose_block(&pools, &[], &Overlaps::none(), &taken, node(name, &labels)).unwrap();
            assigned.push(chosen.block);
        }
        let elapsed = started.elapsed();
        println!("1,000 blocks chosen in {elapsed:?}");
        assert!(elapsed.as_secs() < 5, "took {elapsed:?}");

        let distinct: BTreeSet<IpNet> = assigned.iter().copied().collect();
        assert_eq!(distinct.len(), 1000);
        let pool = net("10.244.0.0/16");
        assert!(
            assigned
                .iter()
                .all(|b| pool.contains(b) && b.prefix_len() == 26)
        );
        assert!(!assigned.iter().any(|b| net("10.244.255.0/24").contains(b)));
        // Address order: the 1,000th block is the 1,000th of the pool.
        assert_eq!(assigned[999], net("10.244.249.192/26"));

        // 1,020 usable blocks: twenty more nodes fit, the twenty-first does not.
        for i in 0..20 {
            let taken: TakenBlocks = assigned.iter().copied().collect();
            let extra = format!("extra-{i}");
            assigned.push(
                choose_block(
                    &pools,
                    &[],
                    &Overlaps::none(),
                    &taken,
                    node(&extra, &labels),
                )
                .unwrap()
                .block,
            );
        }
        let taken: TakenBlocks = assigned.iter().copied().collect();
        let err = choose_block(
            &pools,
            &[],
            &Overlaps::none(),
            &taken,
            node("one-too-many", &labels),
        )
        .unwrap_err();
        assert!(matches!(err.pools[0].reason, Ineligible::Exhausted { .. }));
    }

    #[test]
    fn blocks_freed_in_the_middle_are_reused_first() {
        let pool = carving("10.244.0.0/24", 26, &[]);
        let taken: TakenBlocks = ["10.244.0.0/26", "10.244.0.128/26"]
            .into_iter()
            .map(net)
            .collect();
        assert_eq!(pool.first_free(&taken), Some(net("10.244.0.64/26")));
    }

    #[test]
    fn overlaps_name_the_other_node_network() {
        let ours = [net("10.244.0.0/26"), net("10.244.0.64/26")];
        let all = [
            ("node1", net("10.244.0.0/26")),
            ("node2", net("10.244.0.0/26")),
            ("node3", net("10.244.0.64/28")),
            ("node4", net("10.244.1.0/26")),
        ];
        let overlaps = overlaps_with_others("node1", &ours, all);
        assert_eq!(
            overlaps,
            [
                Overlap {
                    block: net("10.244.0.0/26"),
                    other: "node2".into(),
                    other_block: net("10.244.0.0/26"),
                },
                Overlap {
                    block: net("10.244.0.64/26"),
                    other: "node3".into(),
                    other_block: net("10.244.0.64/28"),
                },
            ]
        );
    }

    #[test]
    fn intervals_merge_overlapping_and_adjacent_ranges() {
        let mut set = Intervals::default();
        set.insert(10, 19);
        set.insert(30, 39);
        set.insert(20, 29);
        assert_eq!(set.0.into_iter().collect::<Vec<_>>(), [(10, 39)]);
        let mut set = Intervals::default();
        set.insert(0, 100);
        set.insert(10, 20);
        assert_eq!(set.overlapping(50, 60), Some((0, 100)));
        set.insert(u128::MAX - 1, u128::MAX);
        set.insert(200, u128::MAX - 2);
        assert_eq!(
            set.0.into_iter().collect::<Vec<_>>(),
            [(0, 100), (200, u128::MAX)]
        );
    }
}
