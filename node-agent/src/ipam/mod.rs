//! IPAM on one node: hands out single addresses from the node's blocks (assigned by the operator
//! in its `NodeNetwork`) to pod attachments, and takes them back.
//!
//! The logic is pure ([`Allocator`] over [`State`]); persistence is behind [`Store`], with
//! [`FileStore`] writing the whole state atomically (temp file, rename; one file per boot of the
//! kernel) before an address is handed out, so a crash or restart never hands out an address a
//! running pod holds.
//!
//! Allocation is idempotent per attachment (container ID + interface), so a retried ADD gets
//! the same address; release is idempotent, so containerd's double DEL is harmless. New
//! addresses are taken round-robin after the last one handed out, so a just-released address
//! is not reused at once (stale conntrack entries and neighbour caches have time to expire).

mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use store::{FileStore, MemoryStore, Store, StoreError};

/// A block of pod addresses and the pool it was carved from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The block's CIDR.
    pub cidr: IpNet,
    /// The IPPool it belongs to (named in errors).
    pub pool: String,
}

/// One pod attachment: the runtime's container (sandbox) ID and the interface in it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// The sandbox's container ID.
    pub container_id: String,
    /// The interface name inside the sandbox.
    pub ifname: String,
}

/// What is recorded with an allocated address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Who holds the address.
    pub owner: Owner,
    /// `namespace/name` of the pod, for people reading the state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// The persisted state: every allocated address, and where round-robin continues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Allocated addresses.
    pub allocations: BTreeMap<IpAddr, Allocation>,
    /// The last address handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<IpAddr>,
}

/// Address use in one block: what the agent reports in its NodeNetwork's `status.blocks`,
/// from which the operator decides when the node needs another block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUse {
    /// The block.
    pub cidr: IpNet,
    /// Addresses of the block held by pods.
    pub allocated: u32,
    /// Addresses of the block pods may get (reserved ranges and skipped addresses excluded).
    pub capacity: u32,
}

/// The use of each of `blocks`, in their order: allocations inside the block, and the
/// addresses it can hand out outside `reserved`. Allocations outside every block (a block
/// taken away while a pod still holds an address of it) count nowhere.
pub fn block_usage(
    blocks: &[Block],
    reserved: &[IpNet],
    allocations: &BTreeMap<IpAddr, Allocation>,
) -> Vec<BlockUse> {
    blocks
        .iter()
        .map(|block| {
            let (first, last) = match block.cidr {
                IpNet::V4(n) => (IpAddr::V4(n.network()), IpAddr::V4(n.broadcast())),
                IpNet::V6(n) => (IpAddr::V6(n.network()), IpAddr::V6(n.broadcast())),
            };
            let allocated = allocations.range(first..=last).count();
            let capacity = usable(block.cidr)
                .filter(|ip| !reserved.iter().any(|r| r.contains(ip)))
                .count();
            BlockUse {
                cidr: block.cidr,
                allocated: u32::try_from(allocated).unwrap_or(u32::MAX),
                capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

/// Why an allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the node's blocks is in use.
    #[error(
        "no free address on this node: blocks {blocks} of pool(s) {pools} are full ({allocated} addresses in use); the operator adds a block when one is available in the pool"
    )]
    Exhausted {
        /// The blocks, comma-separated.
        blocks: String,
        /// The pools they come from.
        pools: String,
        /// How many addresses are in use.
        allocated: usize,
    },
    /// The node has no blocks yet.
    #[error(
        "this node has no address blocks yet: the operator assigns them in its NodeNetwork (is ferrite-operator running?)"
    )]
    NoBlocks,
    /// The state could not be persisted; nothing was handed out.
    #[error("cannot persist the IPAM state, so no address was handed out")]
    Store(#[from] StoreError),
}

/// Allocates addresses from a node's blocks.
pub struct Allocator<S: Store> {
    blocks: Vec<Block>,
    reserved: Vec<IpNet>,
    state: State,
    store: S,
}

impl<S: Store> Allocator<S> {
    /// Loads the state from `store`. `reserved` ranges are never handed out.
    pub fn open(blocks: Vec<Block>, reserved: Vec<IpNet>, store: S) -> Result<Self, StoreError> {
        let state = store.load()?;
        Ok(Self {
            blocks,
            reserved,
            state,
            store,
        })
    }

    /// The current state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Replaces the node's blocks (the operator added or removed one). Allocations outside the
    /// new blocks stay until released: a running pod keeps its address.
    pub fn set_blocks(&mut self, blocks: Vec<Block>) {
        self.blocks = blocks;
    }

    /// Replaces the ranges never handed out (a pool's `reservedRanges` changed).
    pub fn set_reserved(&mut self, reserved: Vec<IpNet>) {
        self.reserved = reserved;
    }

    /// How many addresses the blocks can hand out (reserved ranges excluded).
    pub fn capacity(&self) -> usize {
        self.candidates().count()
    }

    /// Address use per block, for the NodeNetwork's status.
    pub fn usage(&self) -> Vec<BlockUse> {
        block_usage(&self.blocks, &self.reserved, &self.state.allocations)
    }

    /// The address of `owner`, allocating one if it has none. Persisted before it is returned.
    pub fn allocate(&mut self, owner: &Owner, pod: Option<String>) -> Result<IpAddr, IpamError> {
        if let Some(ip) = self.address_of(owner) {
            return Ok(ip);
        }
        if self.blocks.is_empty() {
            return Err(IpamError::NoBlocks);
        }
        let ip = self.next_free().ok_or_else(|| self.exhausted())?;
        let mut next = self.state.clone();
        next.allocations.insert(
            ip,
            Allocation {
                owner: owner.clone(),
                pod,
            },
        );
        next.last = Some(ip);
        self.store.save(&next)?;
        self.state = next;
        Ok(ip)
    }

    /// Releases `owner`'s address, if it has one. Idempotent.
    pub fn release(&mut self, owner: &Owner) -> Result<Option<IpAddr>, StoreError> {
        let Some(ip) = self.address_of(owner) else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        next.allocations.remove(&ip);
        self.store.save(&next)?;
        self.state = next;
        Ok(Some(ip))
    }

    /// Releases every address whose owner is not in `valid` (CNI GC, and the agent's start-up
    /// sweep against the runtime's sandboxes). Returns what was released.
    pub fn retain(&mut self, valid: &BTreeSet<Owner>) -> Result<Vec<IpAddr>, StoreError> {
        let stale: Vec<IpAddr> = self
            .state
            .allocations
            .iter()
            .filter(|(_, a)| !valid.contains(&a.owner))
            .map(|(ip, _)| *ip)
            .collect();
        if stale.is_empty() {
            return Ok(stale);
        }
        let mut next = self.state.clone();
        for ip in &stale {
            next.allocations.remove(ip);
        }
        self.store.save(&next)?;
        self.state = next;
        Ok(stale)
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &Owner) -> Option<IpAddr> {
        self.state
            .allocations
            .iter()
            .find(|(_, a)| &a.owner == owner)
            .map(|(ip, _)| *ip)
    }

    /// Every usable address of the blocks, in order.
    fn candidates(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.blocks
            .iter()
            .flat_map(|b| usable(b.cidr))
            .filter(|ip| !self.reserved.iter().any(|r| r.contains(ip)))
    }

    /// The first free address after `last`, wrapping around.
    fn next_free(&self) -> Option<IpAddr> {
        let free = |ip: &IpAddr| !self.state.allocations.contains_key(ip);
        let after_last = self.state.last.and_then(|last| {
            self.candidates()
                .skip_while(move |ip| *ip != last)
                .skip(1)
                .find(free)
        });
        after_last.or_else(|| self.candidates().find(free))
    }

    fn exhausted(&self) -> IpamError {
        let blocks: Vec<String> = self.blocks.iter().map(|b| b.cidr.to_string()).collect();
        let pools: BTreeSet<&str> = self.blocks.iter().map(|b| b.pool.as_str()).collect();
        IpamError::Exhausted {
            blocks: blocks.join(", "),
            pools: pools.into_iter().collect::<Vec<_>>().join(", "),
            allocated: self.state.allocations.len(),
        }
    }
}

/// The addresses of a block pods may get. The block is routed as a whole, so every address
/// would work; the first and last of an IPv4 block are skipped anyway, because software that
/// assumes a /24 treats .0 and .255 as special, as host-local does.
fn usable(block: IpNet) -> Box<dyn Iterator<Item = IpAddr>> {
    match block {
        IpNet::V4(net) if net.prefix_len() < 31 => {
            let (first, last) = (net.network(), net.broadcast());
            Box::new(
                net.hosts()
                    .map(IpAddr::V4)
                    .filter(move |ip| *ip != first && *ip != last),
            )
        }
        IpNet::V4(net) => Box::new(net.hosts().map(IpAddr::V4)),
        // The subnet-router anycast address (all zeros) is skipped, as the kernel may answer it.
        IpNet::V6(net) => Box::new(
            net.hosts()
                .map(IpAddr::V6)
                .filter(move |ip| *ip != IpAddr::V6(net.network())),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(cidr: &str) -> Block {
        Block {
            cidr: cidr.parse().unwrap(),
            pool: "default-ipv4".into(),
        }
    }

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn allocator(blocks: &[&str], reserved: &[&str]) -> Allocator<MemoryStore> {
        Allocator::open(
            blocks.iter().map(|b| block(b)).collect(),
            reserved.iter().map(|r| r.parse().unwrap()).collect(),
            MemoryStore::default(),
        )
        .unwrap()
    }

    #[test]
    fn first_address_skips_the_network_address() {
        let mut a = allocator(&["10.244.0.0/26"], &[]);
        assert_eq!(
            a.allocate(&owner("a"), None).unwrap().to_string(),
            "10.244.0.1"
        );
    }

    #[test]
    fn a_retried_add_gets_the_same_address() {
        let mut a = allocator(&["10.244.0.0/26"], &[]);
        let first = a.allocate(&owner("a"), None).unwrap();
        assert_eq!(a.allocate(&owner("a"), None).unwrap(), first);
        assert_eq!(a.state().allocations.len(), 1);
    }

    #[test]
    fn reserved_ranges_are_never_handed_out() {
        // .0 and .7 are skipped, .0-.3 reserved: .4, .5 and .6 remain.
        let mut a = allocator(&["10.244.0.0/29"], &["10.244.0.0/30"]);
        let got: Vec<String> = (0..3)
            .map(|i| {
                a.allocate(&owner(&i.to_string()), None)
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(got, ["10.244.0.4", "10.244.0.5", "10.244.0.6"]);
        assert!(matches!(
            a.allocate(&owner("x"), None),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn exhaustion_names_the_blocks_and_the_pool() {
        let mut a = allocator(&["10.244.0.0/30"], &[]);
        a.allocate(&owner("a"), None).unwrap();
        a.allocate(&owner("b"), None).unwrap();
        let err = a.allocate(&owner("c"), None).unwrap_err().to_string();
        assert!(
            err.contains("10.244.0.0/30") && err.contains("default-ipv4"),
            "{err}"
        );
    }

    #[test]
    fn no_blocks_says_the_operator_assigns_them() {
        let mut a = allocator(&[], &[]);
        assert!(
            a.allocate(&owner("a"), None)
                .unwrap_err()
                .to_string()
                .contains("NodeNetwork")
        );
    }

    #[test]
    fn release_is_idempotent_and_the_address_is_not_reused_at_once() {
        let mut a = allocator(&["10.244.0.0/28"], &[]);
        let first = a.allocate(&owner("a"), None).unwrap();
        assert_eq!(a.release(&owner("a")).unwrap(), Some(first));
        assert_eq!(a.release(&owner("a")).unwrap(), None);
        let next = a.allocate(&owner("b"), None).unwrap();
        assert_ne!(next, first, "round-robin continues after the last address");
    }

    #[test]
    fn round_robin_wraps_to_freed_addresses() {
        let mut a = allocator(&["10.244.0.0/30"], &[]);
        let x = a.allocate(&owner("a"), None).unwrap();
        a.allocate(&owner("b"), None).unwrap();
        a.release(&owner("a")).unwrap();
        assert_eq!(a.allocate(&owner("c"), None).unwrap(), x);
    }

    #[test]
    fn blocks_are_used_in_order_and_every_address_is_distinct() {
        let mut a = allocator(&["10.244.0.0/29", "10.244.0.64/29"], &[]);
        let ips: BTreeSet<IpAddr> = (0..12)
            .map(|i| a.allocate(&owner(&format!("c{i}")), None).unwrap())
            .collect();
        assert_eq!(ips.len(), 12);
        assert!(
            a.allocate(&owner("one-more"), None).is_err(),
            "2 blocks of 6 usable addresses"
        );
    }

    #[test]
    fn retain_releases_what_the_runtime_no_longer_holds() {
        let mut a = allocator(&["10.244.0.0/28"], &[]);
        for id in ["a", "b", "c"] {
            a.allocate(&owner(id), None).unwrap();
        }
        let released = a.retain(&BTreeSet::from([owner("b")])).unwrap();
        assert_eq!(released.len(), 2);
        assert!(a.address_of(&owner("b")).is_some());
        assert!(a.address_of(&owner("a")).is_none());
    }

    #[test]
    fn ipv6_blocks_skip_the_subnet_router_anycast_address() {
        let mut a = allocator(&["fd00:10:244::/122"], &[]);
        assert_eq!(
            a.allocate(&owner("a"), None).unwrap().to_string(),
            "fd00:10:244::1"
        );
    }

    #[test]
    fn usage_counts_each_blocks_allocations_and_what_it_can_hand_out() {
        // /29: 8 addresses, .0 and .7 skipped, .0-.3 reserved in the first block.
        let mut a = allocator(&["10.244.0.0/29", "10.244.0.8/29"], &["10.244.0.0/30"]);
        for id in ["a", "b", "c", "d"] {
            a.allocate(&owner(id), None).unwrap();
        }
        let cidr = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            a.usage(),
            [
                BlockUse {
                    cidr: cidr("10.244.0.0/29"),
                    allocated: 3,
                    capacity: 3
                },
                BlockUse {
                    cidr: cidr("10.244.0.8/29"),
                    allocated: 1,
                    capacity: 6
                },
            ]
        );
    }

    #[test]
    fn usage_leaves_out_addresses_of_blocks_the_node_no_longer_has() {
        let allocations: BTreeMap<IpAddr, Allocation> = ["10.244.0.1", "10.9.0.1", "fd00::1"]
            .into_iter()
            .map(|ip| {
                (
                    ip.parse().unwrap(),
                    Allocation {
                        owner: owner(ip),
                        pod: None,
                    },
                )
            })
            .collect();
        let usage = block_usage(
            &[block("10.244.0.0/26"), block("fd00::/122")],
            &[],
            &allocations,
        );
        assert_eq!(
            usage
                .iter()
                .map(|u| (u.allocated, u.capacity))
                .collect::<Vec<_>>(),
            // IPv4: 64 less network and broadcast; IPv6: 64 less the subnet-router anycast.
            [(1, 62), (1, 63)]
        );
    }

    #[test]
    fn a_node_without_blocks_reports_no_usage() {
        assert!(allocator(&[], &[]).usage().is_empty());
    }

    #[test]
    fn a_failed_save_hands_nothing_out() {
        let mut a =
            Allocator::open(vec![block("10.244.0.0/28")], vec![], MemoryStore::failing()).unwrap();
        assert!(matches!(
            a.allocate(&owner("a"), None),
            Err(IpamError::Store(_))
        ));
        assert!(a.state().allocations.is_empty());
    }
}
