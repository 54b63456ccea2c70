//! A node's blocks over its life: when it gets another block, and when the blocks of a
//! deleted NodeNetwork go back to the pools. Pure: the inputs are the NodeNetwork (its
//! `status.blocks` and heartbeat, written by the node's agent) and the time.
//!
//! # Growing
//!
//! A node gets another block when the free addresses across all its blocks fall below
//! [`MIN_FREE`] or [`FREE_PERCENT`] % of their capacity, whichever is larger, and never
//! beyond [`MAX_BLOCKS`] (the CRD's `spec.blocks` maxItems). Until the agent reports every
//! block in `spec.blocks`, nothing is added: the block missing from the report is most likely
//! the one just added, and adding another would hand a node blocks it never asked for.
//!
//! # Releasing
//!
//! A NodeNetwork being deleted (with its Node, by the garbage collector, or by hand) keeps
//! its blocks taken until nothing uses them: until its agent reports zero allocated in every
//! block of `spec.blocks`, or its agent has been silent (`status.agent.lastHeartbeat`) for
//! the grace period, which must exceed the agent's heartbeat interval (60 s). An agent that
//! never reported is measured from the start of the deletion. A node whose agent keeps
//! running pods and reporting them keeps its blocks for as long as it does.

use std::fmt;
use std::time::Duration;

use ferrite_crds::{BlockUsage, Cidr, NodeNetwork};
use k8s_openapi::jiff::Timestamp;

/// Fewest free addresses a node is left with before it gets another block.
pub const MIN_FREE: u64 = 8;
/// Smallest share of its capacity, in percent, a node keeps free before it gets another block.
pub const FREE_PERCENT: u64 = 10;
/// Most blocks one NodeNetwork may hold (`spec.blocks` maxItems in the CRD).
pub const MAX_BLOCKS: usize = 256;
/// How long a deleted node's agent may stay silent before its blocks are released anyway.
pub const DEFAULT_RELEASE_GRACE: Duration = Duration::from_secs(120);

/// Whether a node needs another block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Growth {
    /// Enough addresses are free.
    Enough {
        /// Free addresses across the node's blocks.
        free: u64,
        /// Addresses its blocks can hand out.
        capacity: u64,
    },
    /// The agent has not reported this block of `spec.blocks` yet: wait for it.
    Unreported(Cidr),
    /// Add a block.
    Needed {
        /// Free addresses across the node's blocks.
        free: u64,
        /// Addresses its blocks can hand out.
        capacity: u64,
    },
    /// A block is needed, but the node holds [`MAX_BLOCKS`] already.
    AtLimit {
        /// Free addresses across the node's blocks.
        free: u64,
        /// Addresses its blocks can hand out.
        capacity: u64,
    },
}

/// Whether the node with `blocks` (its `spec.blocks`) needs another, from what its agent
/// reports in `status.blocks`.
pub fn growth(blocks: &[Cidr], reported: &[BlockUsage]) -> Growth {
    let mut capacity: u64 = 0;
    let mut allocated: u64 = 0;
    for block in blocks {
        let Some(usage) = reported.iter().find(|u| u.cidr == *block) else {
            return Growth::Unreported(block.clone());
        };
        capacity += u64::from(usage.capacity);
        allocated += u64::from(usage.allocated);
    }
    let free = capacity.saturating_sub(allocated);
    let threshold = MIN_FREE.max(capacity * FREE_PERCENT / 100);
    if free >= threshold {
        Growth::Enough { free, capacity }
    } else if blocks.len() >= MAX_BLOCKS {
        Growth::AtLimit { free, capacity }
    } else {
        Growth::Needed { free, capacity }
    }
}

/// Why a deleted NodeNetwork's blocks may be released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseReason {
    /// It holds no block.
    NoBlocks,
    /// Its agent reports no address in use in any of its blocks.
    NothingAllocated,
    /// Its agent has not reported for longer than the grace period.
    AgentSilent {
        /// How long it has been silent.
        silent_for: Duration,
        /// The grace period.
        grace: Duration,
    },
}

impl fmt::Display for ReleaseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBlocks => f.write_str("it holds no block"),
            Self::NothingAllocated => {
                f.write_str("its agent reports no pod address in use in any of its blocks")
            }
            Self::AgentSilent { silent_for, grace } => write!(
                f,
                "its agent has not reported for {}s (longer than the {}s grace period), so nothing on the node is taken to use them",
                silent_for.as_secs(),
                grace.as_secs()
            ),
        }
    }
}

/// What to do with a deleted NodeNetwork's blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Release them now.
    Now(ReleaseReason),
    /// Keep them taken; look again after `recheck_after` (when the agent would count as
    /// silent), or sooner if the NodeNetwork changes.
    Hold {
        /// Addresses the agent last reported in use (in the blocks it reported).
        allocated: u64,
        /// How long ago the agent last reported.
        since_heartbeat: Duration,
        /// When to look again.
        recheck_after: Duration,
    },
}

/// Decides whether the blocks of `nn` (being deleted) may go back to the pools at `now`.
pub fn release(nn: &NodeNetwork, now: Timestamp, grace: Duration) -> Release {
    let blocks = &nn.spec.blocks;
    if blocks.is_empty() {
        return Release::Now(ReleaseReason::NoBlocks);
    }
    let reported: &[BlockUsage] = nn.status.as_ref().map_or(&[], |s| s.blocks.as_slice());
    let usage: Vec<Option<&BlockUsage>> = blocks
        .iter()
        .map(|b| reported.iter().find(|u| u.cidr == *b))
        .collect();
    if usage.iter().all(|u| u.is_some_and(|u| u.allocated == 0)) {
        return Release::Now(ReleaseReason::NothingAllocated);
    }
    let allocated = usage.iter().flatten().map(|u| u64::from(u.allocated)).sum();
    let last_sign = nn
        .status
        .as_ref()
        .and_then(|s| s.agent.as_ref())
        .and_then(|a| a.last_heartbeat.as_ref())
        .or(nn.metadata.deletion_timestamp.as_ref())
        .or(nn.metadata.creation_timestamp.as_ref());
    let Some(last_sign) = last_sign else {
        // Never stored by an apiserver: nothing can have reported into it.
        return Release::Now(ReleaseReason::AgentSilent {
            silent_for: grace,
            grace,
        });
    };
    // A heartbeat from the future (clock skew) counts as just now.
    let since = Duration::try_from(now.duration_since(last_sign.0)).unwrap_or(Duration::ZERO);
    if since >= grace {
        Release::Now(ReleaseReason::AgentSilent {
            silent_for: since,
            grace,
        })
    } else {
        Release::Hold {
            allocated,
            since_heartbeat: since,
            recheck_after: (grace - since).max(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use ferrite_crds::{AgentStatus, IpAddress, NodeNetworkSpec, NodeNetworkStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn usage(cidr: &str, allocated: u32, capacity: u32) -> BlockUsage {
        BlockUsage {
            cidr: Cidr(cidr.into()),
            allocated,
            capacity,
        }
    }

    fn cidrs(blocks: &[&str]) -> Vec<Cidr> {
        blocks.iter().map(|b| Cidr((*b).into())).collect()
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn a_node_with_fewer_than_eight_free_addresses_gets_another_block() {
        let blocks = cidrs(&["10.244.0.0/26"]);
        assert_eq!(
            growth(&blocks, &[usage("10.244.0.0/26", 54, 62)]),
            Growth::Enough {
                free: 8,
                capacity: 62
            }
        );
        assert_eq!(
            growth(&blocks, &[usage("10.244.0.0/26", 55, 62)]),
            Growth::Needed {
                free: 7,
                capacity: 62
            }
        );
    }

    #[test]
    fn a_large_node_keeps_ten_percent_of_its_capacity_free() {
        // Four /24s: 4 x 254 = 1016 addresses, so 101 must stay free.
        let blocks = cidrs(&["10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"]);
        let reported = |last: u32| {
            vec![
                usage("10.0.0.0/24", 254, 254),
                usage("10.0.1.0/24", 254, 254),
                usage("10.0.2.0/24", 254, 254),
                usage("10.0.3.0/24", last, 254),
            ]
        };
        assert!(matches!(
            growth(&blocks, &reported(153)),
            Growth::Enough { free: 101, .. }
        ));
        assert!(matches!(
            growth(&blocks, &reported(154)),
            Growth::Needed { free: 100, .. }
        ));
    }

    #[test]
    fn nothing_is_added_until_the_agent_reports_every_block() {
        // The second block was just added; the agent has not seen it yet.
        let blocks = cidrs(&["10.244.0.0/26", "10.244.0.64/26"]);
        assert_eq!(
            growth(&blocks, &[usage("10.244.0.0/26", 62, 62)]),
            Growth::Unreported(Cidr("10.244.0.64/26".into()))
        );
        assert_eq!(
            growth(&blocks, &[]),
            Growth::Unreported(Cidr("10.244.0.0/26".into()))
        );
    }

    #[test]
    fn blocks_the_node_no_longer_holds_do_not_count() {
        let blocks = cidrs(&["10.244.0.0/26"]);
        let reported = [usage("10.244.0.0/26", 0, 62), usage("10.9.0.0/26", 62, 62)];
        assert!(matches!(
            growth(&blocks, &reported),
            Growth::Enough { free: 62, .. }
        ));
    }

    #[test]
    fn a_node_never_gets_more_blocks_than_a_node_network_may_hold() {
        let names: Vec<String> = (0..MAX_BLOCKS)
            .map(|i| format!("fd00::{i:x}/128"))
            .collect();
        let blocks: Vec<Cidr> = names.iter().map(|n| Cidr(n.clone())).collect();
        let reported: Vec<BlockUsage> = names.iter().map(|n| usage(n, 1, 1)).collect();
        assert_eq!(
            growth(&blocks, &reported),
            Growth::AtLimit {
                free: 0,
                capacity: 256
            }
        );
        assert!(matches!(
            growth(&blocks[1..], &reported),
            Growth::Needed { .. }
        ));
    }

    /// A NodeNetwork being deleted since `deleted`, with `blocks` and what its agent reported.
    fn deleting(
        blocks: &[&str],
        reported: &[BlockUsage],
        heartbeat: Option<i64>,
        deleted: i64,
    ) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            "node1",
            NodeNetworkSpec {
                blocks: cidrs(blocks),
                node_ip: IpAddress("172.30.0.11".into()),
                tunnel_endpoint: None,
            },
        );
        nn.metadata.creation_timestamp = Some(Time(at(0)));
        nn.metadata.deletion_timestamp = Some(Time(at(deleted)));
        nn.status = Some(NodeNetworkStatus {
            agent: heartbeat.map(|h| AgentStatus {
                ready: true,
                version: None,
                last_heartbeat: Some(Time(at(h))),
                ..AgentStatus::default()
            }),
            blocks: reported.to_vec(),
            ..NodeNetworkStatus::default()
        });
        nn
    }

    const GRACE: Duration = Duration::from_secs(120);

    #[test]
    fn blocks_are_released_as_soon_as_the_agent_reports_none_in_use() {
        let nn = deleting(
            &["10.244.0.0/26", "10.244.0.64/26"],
            &[
                usage("10.244.0.0/26", 0, 62),
                usage("10.244.0.64/26", 0, 62),
            ],
            Some(1000),
            1000,
        );
        assert_eq!(
            release(&nn, at(1001), GRACE),
            Release::Now(ReleaseReason::NothingAllocated)
        );
    }

    #[test]
    fn blocks_in_use_by_a_live_agent_are_held_until_it_falls_silent() {
        let nn = deleting(
            &["10.244.0.0/26"],
            &[usage("10.244.0.0/26", 3, 62)],
            Some(1000),
            1010,
        );
        assert_eq!(
            release(&nn, at(1030), GRACE),
            Release::Hold {
                allocated: 3,
                since_heartbeat: Duration::from_secs(30),
                recheck_after: Duration::from_secs(90),
            }
        );
        assert_eq!(
            release(&nn, at(1120), GRACE),
            Release::Now(ReleaseReason::AgentSilent {
                silent_for: GRACE,
                grace: GRACE
            })
        );
    }

    #[test]
    fn a_block_the_agent_never_reported_is_taken_to_be_in_use() {
        let nn = deleting(
            &["10.244.0.0/26", "10.244.0.64/26"],
            &[usage("10.244.0.0/26", 0, 62)],
            Some(1000),
            1000,
        );
        assert!(matches!(
            release(&nn, at(1010), GRACE),
            Release::Hold { allocated: 0, .. }
        ));
    }

    #[test]
    fn an_agent_that_never_reported_is_given_the_grace_period_from_the_deletion() {
        let nn = deleting(&["10.244.0.0/26"], &[], None, 5000);
        assert!(matches!(
            release(&nn, at(5060), GRACE),
            Release::Hold { recheck_after, .. } if recheck_after == Duration::from_secs(60)
        ));
        assert!(matches!(
            release(&nn, at(5120), GRACE),
            Release::Now(ReleaseReason::AgentSilent { .. })
        ));
    }

    #[test]
    fn a_heartbeat_from_the_future_counts_as_just_now() {
        let nn = deleting(
            &["10.244.0.0/26"],
            &[usage("10.244.0.0/26", 1, 62)],
            Some(2000),
            1000,
        );
        assert!(matches!(
            release(&nn, at(1500), GRACE),
            Release::Hold { since_heartbeat, recheck_after, .. }
                if since_heartbeat == Duration::ZERO && recheck_after == GRACE
        ));
    }

    #[test]
    fn a_node_network_without_blocks_is_released_at_once() {
        let nn = deleting(&[], &[], Some(1000), 1000);
        assert_eq!(
            release(&nn, at(1000), GRACE),
            Release::Now(ReleaseReason::NoBlocks)
        );
    }

    #[test]
    fn the_release_reason_says_why_in_words() {
        let silent = ReleaseReason::AgentSilent {
            silent_for: Duration::from_secs(300),
            grace: GRACE,
        };
        assert_eq!(
            silent.to_string(),
            "its agent has not reported for 300s (longer than the 120s grace period), so nothing on the node is taken to use them"
        );
    }
}
