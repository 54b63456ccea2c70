//! Egress masquerade in nftables, in Ferrite's own table `ip ferrite`.
//!
//! Pod traffic from a pool with `natOutgoing` leaving for anywhere that is not a pod, the
//! Service CIDR or a `nonMasqueradeCIDR` gets the node's address:
//!
//! ```text
//! table ip ferrite {
//!     set masq-sources { type ipv4_addr; flags interval; elements = { <sources> } }
//!     set masq-exempt  { type ipv4_addr; flags interval; elements = { <exempt> } }
//!     chain postrouting {
//!         type nat hook postrouting priority srcnat; policy accept;
//!         ip saddr @masq-sources ip daddr != @masq-exempt counter masquerade
//!     }
//! }
//! ```
//!
//! [`ruleset`] renders that as one nftables JSON transaction (pure); [`apply`] and [`remove`]
//! hand a transaction to `nft -j -f -`, which the kernel applies atomically or not at all.
//!
//! With no sources there is nothing to masquerade: the table and both sets still exist (so
//! `nft list table ip ferrite` shows what the agent knows), but the chain is left out, so no NAT
//! hook is registered and no packet is evaluated. [`remove`] is the uninstall.
//!
//! IPv6 will be a second table (`ip6 ferrite`) built by the same code: everything that differs
//! per family is in the private `Family` descriptor.

use std::borrow::Cow;
use std::io::Write;
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use nftables::batch::Batch;
use nftables::expr::{Expression, NamedExpression, Payload, PayloadField, Prefix};
use nftables::schema::{
    Chain, NfListObject, Nftables, Rule, Set, SetFlag, SetType, SetTypeValue, Table,
};
use nftables::stmt::{Counter, Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// The table's name (in family `ip`).
pub const TABLE: &str = "ferrite";
/// The interval set of source ranges that are masqueraded (pools with `natOutgoing`).
pub const SOURCES_SET: &str = "masq-sources";
/// The interval set of destinations that are never masqueraded.
pub const EXEMPT_SET: &str = "masq-exempt";
/// The NAT chain on the postrouting hook.
pub const CHAIN: &str = "postrouting";
/// The `srcnat` priority (`NF_IP_PRI_NAT_SRC`); nft's JSON output spells it as this number.
pub const SRCNAT_PRIORITY: i32 = 100;

/// The `nft` binary, looked up on `PATH`.
const NFT: &str = "nft";

/// What to masquerade (IPv4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Masquerade {
    /// Source ranges whose egress is masqueraded: the pools with `natOutgoing`.
    pub sources: Vec<Ipv4Net>,
    /// Destinations never masqueraded: every pod pool CIDR, the Service CIDR and the
    /// `nonMasqueradeCIDRs`.
    pub exempt: Vec<Ipv4Net>,
}

/// Changing the `ip ferrite` table failed.
#[derive(Debug, thiserror::Error)]
pub enum NatError {
    /// The transaction could not be rendered as JSON.
    #[error(
        "render the nftables JSON to {operation} table ip {TABLE}: {source} (a bug in Ferrite; please report it)"
    )]
    Render {
        /// What was being done to the table (`replace`, `remove`).
        operation: &'static str,
        /// The serializer's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// `nft` could not be started or fed.
    #[error(
        "run `{NFT} -j -f -` to {operation} table ip {TABLE}: {source}; the agent needs the nft binary (nftables 1.0 or later) on its PATH"
    )]
    Spawn {
        /// What was being done to the table.
        operation: &'static str,
        /// Why starting or talking to `nft` failed.
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and refused the transaction; nothing was changed.
    #[error(
        "`{NFT}` refused to {operation} table ip {TABLE} ({status}), nothing was changed: {stderr}; check that the kernel has nf_tables with NAT and masquerade (nft_nat, nft_masq, nft_counter) and that nothing else holds the table"
    )]
    Nft {
        /// What was being done to the table.
        operation: &'static str,
        /// How `nft` exited.
        status: std::process::ExitStatus,
        /// What `nft` said on stderr.
        stderr: String,
    },
}

/// What differs between the `ip` and (later) `ip6` tables.
struct Family {
    nf: NfFamily,
    /// Payload protocol for `saddr`/`daddr` matches.
    payload: &'static str,
    set_type: SetType,
}

const IPV4: Family = Family {
    nf: NfFamily::IP,
    payload: "ip",
    set_type: SetType::Ipv4Addr,
};

/// The transaction that atomically replaces the `ip ferrite` table with the state for `m`:
/// `add table` (so the `delete` cannot fail on a fresh node), `delete table`, then the table,
/// its two interval sets and, when there are sources, the chain with its one rule.
///
/// Set elements are normalised first: nft refuses overlapping elements in an interval set
/// ("conflicting intervals specified"), so both lists are truncated to their networks and
/// merged ([`Ipv4Net::aggregate`]); a `/32` is written as a plain address, as nft lists it.
pub fn ruleset(m: &Masquerade) -> Nftables<'static> {
    let sources = normalise(&m.sources);
    let exempt = normalise(&m.exempt);
    let elements = |nets: &[Ipv4Net]| -> Vec<(String, u8, u8)> {
        nets.iter()
            .map(|n| (n.network().to_string(), n.prefix_len(), n.max_prefix_len()))
            .collect()
    };
    family_ruleset(&IPV4, &elements(&sources), &elements(&exempt))
}

/// Replaces the `ip ferrite` table with the state for `m`, in one transaction.
///
/// `nft` is started from the calling thread and inherits its network namespace: call it
/// from the agent's namespace, or inside another one via [`crate::netns::run_in`]. Blocking
/// (it waits for `nft`); from async code run it on a blocking thread.
pub fn apply(m: &Masquerade) -> Result<(), NatError> {
    run_nft("replace", &ruleset(m))
}

/// Removes the `ip ferrite` table. Succeeds when the table is already gone. Namespace and
/// blocking as for [`apply`].
pub fn remove() -> Result<(), NatError> {
    run_nft("remove", &removal())
}

/// `add table` then `delete table` in one transaction: deletes the table whether or not it
/// exists, so [`remove`] is idempotent without listing first.
fn removal() -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table(&IPV4));
    batch.delete(table(&IPV4));
    batch.to_nftables()
}

/// Sorted, host bits cleared, overlapping and adjacent networks merged.
fn normalise(nets: &[Ipv4Net]) -> Vec<Ipv4Net> {
    Ipv4Net::aggregate(&nets.to_vec())
}

fn table(family: &Family) -> NfListObject<'static> {
    NfListObject::Table(Table {
        family: family.nf,
        name: TABLE.into(),
        handle: None,
    })
}

/// Elements are `(network address, prefix length, address bits)`.
fn family_ruleset(
    family: &Family,
    sources: &[(String, u8, u8)],
    exempt: &[(String, u8, u8)],
) -> Nftables<'static> {
    let mut batch = Batch::new();
    batch.add(table(family));
    batch.delete(table(family));
    batch.add(table(family));
    batch.add(interval_set(family, SOURCES_SET, sources));
    batch.add(interval_set(family, EXEMPT_SET, exempt));
    if !sources.is_empty() {
        batch.add(NfListObject::Chain(Chain {
            family: family.nf,
            table: TABLE.into(),
            name: CHAIN.into(),
            _type: Some(NfChainType::NAT),
            hook: Some(NfHook::Postrouting),
            prio: Some(SRCNAT_PRIORITY),
            policy: Some(NfChainPolicy::Accept),
            ..Chain::default()
        }));
        batch.add(NfListObject::Rule(Rule {
            family: family.nf,
            table: TABLE.into(),
            chain: CHAIN.into(),
            expr: Cow::Owned(vec![
                set_match(family, "saddr", Operator::EQ, SOURCES_SET),
                set_match(family, "daddr", Operator::NEQ, EXEMPT_SET),
                Statement::Counter(Counter::Anonymous(None)),
                Statement::Masquerade(None),
            ]),
            ..Rule::default()
        }));
    }
    batch.to_nftables()
}

fn interval_set(
    family: &Family,
    name: &str,
    elements: &[(String, u8, u8)],
) -> NfListObject<'static> {
    let elem: Vec<Expression<'static>> = elements
        .iter()
        .map(|(addr, len, bits)| {
            if len == bits {
                Expression::String(addr.clone().into())
            } else {
                Expression::Named(NamedExpression::Prefix(Prefix {
                    addr: Box::new(Expression::String(addr.clone().into())),
                    len: u32::from(*len),
                }))
            }
        })
        .collect();
    NfListObject::Set(Box::new(Set {
        family: family.nf,
        table: TABLE.into(),
        name: name.to_owned().into(),
        set_type: SetTypeValue::Single(family.set_type),
        flags: Some([SetFlag::Interval].into_iter().collect()),
        // nft accepts an empty list, but leaving it out reads better in `nft -j` dumps.
        elem: (!elem.is_empty()).then(|| elem.into()),
        ..Set::default()
    }))
}

/// `<family> <field> <op> @<set>`.
fn set_match(family: &Family, field: &'static str, op: Operator, set: &str) -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
            PayloadField {
                protocol: family.payload.into(),
                field: field.into(),
            },
        ))),
        right: Expression::String(format!("@{set}").into()),
        op,
    })
}

/// Feeds `doc` to `nft -j -f -` (one transaction) and waits for it. Unlike
/// `nftables::helper::apply_ruleset`, this keeps nft's stderr for the error.
fn run_nft(operation: &'static str, doc: &Nftables<'_>) -> Result<(), NatError> {
    let json = serde_json::to_vec(doc).map_err(|source| NatError::Render { operation, source })?;
    let spawn = |source| NatError::Spawn { operation, source };
    let mut child = Command::new(NFT)
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        // Dropping stdin at the end of this block closes it, so nft sees the end of input.
        stdin.write_all(&json).map_err(spawn)?;
    }
    let output = child.wait_with_output().map_err(spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NatError::Nft {
            operation,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn rendered(m: &Masquerade) -> Vec<Value> {
        let v = serde_json::to_value(ruleset(m)).unwrap();
        v["nftables"].as_array().unwrap().clone()
    }

    fn cluster() -> Masquerade {
        Masquerade {
            sources: vec![net("10.201.0.0/16")],
            exempt: vec![net("10.201.0.0/16"), net("10.96.0.0/12")],
        }
    }

    fn set_named<'a>(cmds: &'a [Value], name: &str) -> &'a Value {
        cmds.iter()
            .find(|c| c["add"]["set"]["name"] == name)
            .unwrap_or_else(|| panic!("no set {name} in {cmds:?}"))
    }

    #[test]
    fn the_table_is_replaced_in_one_transaction_add_delete_add() {
        let cmds = rendered(&cluster());
        let table = json!({"family": "ip", "name": "ferrite"});
        assert_eq!(cmds[0], json!({"add": {"table": table}}));
        assert_eq!(cmds[1], json!({"delete": {"table": table}}));
        assert_eq!(cmds[2], json!({"add": {"table": table}}));
        assert_eq!(
            cmds.len(),
            7,
            "3 table commands, 2 sets, chain, rule: {cmds:?}"
        );
    }

    #[test]
    fn sets_are_ipv4_interval_sets_with_prefix_elements() {
        let cmds = rendered(&cluster());
        assert_eq!(
            set_named(&cmds, SOURCES_SET)["add"]["set"],
            json!({
                "family": "ip", "table": "ferrite", "name": "masq-sources",
                "type": "ipv4_addr", "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.201.0.0", "len": 16}}]
            })
        );
        assert_eq!(
            set_named(&cmds, EXEMPT_SET)["add"]["set"]["elem"],
            json!([
                {"prefix": {"addr": "10.96.0.0", "len": 12}},
                {"prefix": {"addr": "10.201.0.0", "len": 16}}
            ]),
            "sorted"
        );
    }

    #[test]
    fn the_chain_is_nat_postrouting_at_srcnat_with_the_masquerade_rule() {
        let cmds = rendered(&cluster());
        assert_eq!(
            cmds[5],
            json!({"add": {"chain": {
                "family": "ip", "table": "ferrite", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"
            }}})
        );
        // The shape `nft -j list ruleset` prints for
        // `ip saddr @masq-sources ip daddr != @masq-exempt counter masquerade` (nft 1.0.6).
        assert_eq!(
            cmds[6]["add"]["rule"]["expr"],
            json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@masq-sources"}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@masq-exempt"}},
                {"counter": null},
                {"masquerade": null}
            ])
        );
        assert_eq!(cmds[6]["add"]["rule"]["chain"], "postrouting");
    }

    #[test]
    fn overlapping_and_adjacent_cidrs_are_merged_so_nft_sees_no_conflicting_intervals() {
        let m = Masquerade {
            sources: vec![net("10.1.0.0/16"), net("10.0.0.0/8"), net("10.0.0.0/8")],
            exempt: vec![
                net("192.168.0.0/24"),
                net("192.168.1.0/24"),
                net("192.168.0.128/25"),
            ],
        };
        let cmds = rendered(&m);
        assert_eq!(
            set_named(&cmds, SOURCES_SET)["add"]["set"]["elem"],
            json!([{"prefix": {"addr": "10.0.0.0", "len": 8}}])
        );
        assert_eq!(
            set_named(&cmds, EXEMPT_SET)["add"]["set"]["elem"],
            json!([{"prefix": {"addr": "192.168.0.0", "len": 23}}])
        );
    }

    #[test]
    fn host_bits_are_cleared_and_a_host_route_is_a_plain_address() {
        assert_eq!(
            normalise(&[net("10.201.1.77/16"), net("198.51.100.7/32")]),
            vec![net("10.201.0.0/16"), net("198.51.100.7/32")]
        );
        let m = Masquerade {
            sources: vec![net("10.201.1.77/16")],
            exempt: vec![net("198.51.100.7/32")],
        };
        let cmds = rendered(&m);
        assert_eq!(
            set_named(&cmds, SOURCES_SET)["add"]["set"]["elem"],
            json!([{"prefix": {"addr": "10.201.0.0", "len": 16}}])
        );
        assert_eq!(
            set_named(&cmds, EXEMPT_SET)["add"]["set"]["elem"],
            json!(["198.51.100.7"])
        );
    }

    #[test]
    fn without_sources_the_table_and_sets_exist_but_no_chain_hooks_anything() {
        let m = Masquerade {
            sources: vec![],
            exempt: vec![net("10.96.0.0/12")],
        };
        let cmds = rendered(&m);
        assert_eq!(cmds.len(), 5, "{cmds:?}");
        assert!(cmds.iter().all(|c| c["add"].get("chain").is_none()));
        assert!(cmds.iter().all(|c| c["add"].get("rule").is_none()));
        assert!(
            set_named(&cmds, SOURCES_SET)["add"]["set"]
                .get("elem")
                .is_none(),
            "an empty set has no elem key"
        );
    }

    #[test]
    fn removal_adds_then_deletes_so_an_absent_table_is_no_error() {
        let v = serde_json::to_value(removal()).unwrap();
        let table = json!({"family": "ip", "name": "ferrite"});
        assert_eq!(
            v,
            json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
        );
    }
}
