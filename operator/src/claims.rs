//! Blocks this process has handed out that its NodeNetwork cache may not show yet.
//!
//! The controller chooses blocks from its watch cache of NodeNetworks, and reconciles of
//! different nodes run concurrently. Between writing a NodeNetwork and the watch event
//! reaching the cache, the block would look free to the next choice. So every choice is made
//! under one lock that also records it here, and a choice treats claimed blocks as taken.
//! A claim ends when the cache shows the claimant's NodeNetwork holding the block, or at
//! once when the apiserver refused the write.
//!
//! NB: when a write fails without an answer (a timeout, a dropped connection), the write may
//! have happened, so the claim stays. At worst such a claim keeps one block unused until the
//! operator restarts; dropping it could hand the block out twice.

use std::collections::BTreeMap;

use ipnet::IpNet;

/// Blocks claimed by this process and not yet confirmed by the cache, with their nodes.
#[derive(Clone, Debug, Default)]
pub struct Claims {
    by_block: BTreeMap<IpNet, String>,
}

impl Claims {
    /// No claims.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `block` is being written into the NodeNetwork of `node`.
    pub fn claim(&mut self, block: IpNet, node: &str) {
        self.by_block.insert(block, node.to_owned());
    }

    /// Drops the claim on `block` if `node` holds it: its write was refused.
    pub fn release(&mut self, block: IpNet, node: &str) {
        if self.by_block.get(&block).is_some_and(|n| n == node) {
            self.by_block.remove(&block);
        }
    }

    /// Drops every claim `confirmed(node, block)` says the cache now shows.
    pub fn prune(&mut self, mut confirmed: impl FnMut(&str, IpNet) -> bool) {
        self.by_block
            .retain(|block, node| !confirmed(node.as_str(), *block));
    }

    /// The claimed blocks.
    pub fn blocks(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.by_block.keys().copied()
    }

    /// How many claims are open.
    pub fn len(&self) -> usize {
        self.by_block.len()
    }

    /// Whether no claim is open.
    pub fn is_empty(&self) -> bool {
        self.by_block.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_claim_stays_until_the_cache_shows_its_node_holding_the_block() {
        let mut claims = Claims::new();
        claims.claim(net("10.244.0.0/26"), "node1");
        claims.claim(net("10.244.0.64/26"), "node2");
        claims.prune(|node, block| node == "node1" && block == net("10.244.0.0/26"));
        assert_eq!(claims.blocks().collect::<Vec<_>>(), [net("10.244.0.64/26")]);
    }

    #[test]
    fn only_the_claimant_releases_a_claim() {
        let mut claims = Claims::new();
        claims.claim(net("10.244.0.0/26"), "node1");
        claims.release(net("10.244.0.0/26"), "node2");
        assert_eq!(claims.len(), 1);
        claims.release(net("10.244.0.0/26"), "node1");
        assert!(claims.is_empty());
    }
}
