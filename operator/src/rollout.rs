//! The ClusterNetwork's status, computed from what the cluster shows: the agent DaemonSet's
//! rollout and every node's agent report (in its NodeNetwork). Pure: no IO, time passed in.
//!
//! - `Ready=True` when every node's agent is ready, runs the current ClusterNetwork
//!   generation and reported within [`HEARTBEAT_STALE`], and the DaemonSet is rolled out.
//! - `Progressing=True` while a change is being rolled out: the DaemonSet is updating, or
//!   agents still run an older generation (a routing-mode switch), or a new node's agent has
//!   not reported yet (for up to [`JOIN_GRACE`]).
//! - `Degraded=True` when an agent reported a failure, went silent, or never came up: the
//!   message names the nodes. Also when applying the node side failed.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrite_crds::ClusterNetworkStatus;
use ferrite_crds::conditions::{self, ConditionStatus, reasons, types};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// An agent that has not reported for this long is considered gone (it reports every minute).
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(180);

/// How long a new node's agent may take to report before the node counts as not ready.
pub const JOIN_GRACE: Duration = Duration::from_secs(300);

/// What a node's NodeNetwork says about its agent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// The agent reported its datapath programmed.
    pub ready: bool,
    /// The ClusterNetwork generation it runs.
    pub generation: Option<i64>,
    /// The uid of that ClusterNetwork (`None` from agents that do not report it).
    pub cluster_uid: Option<String>,
    /// When it last reported.
    pub heartbeat: Option<Timestamp>,
    /// Its message (why it is not ready).
    pub message: Option<String>,
}

/// One node as the ClusterNetwork controller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// When the Node was created (a new node gets [`JOIN_GRACE`]).
    pub created: Option<Timestamp>,
    /// Its agent's report; `None` when it has no NodeNetwork or no report yet.
    pub agent: Option<AgentReport>,
}

/// The agent DaemonSet's rollout, from its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonSetView {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.desiredNumberScheduled`.
    pub desired: i32,
    /// `status.updatedNumberScheduled`.
    pub updated: i32,
    /// `status.numberAvailable`.
    pub available: i32,
}

impl DaemonSetView {
    /// Whether the controller has rolled the current template out to every node.
    pub fn rolled_out(&self) -> bool {
        self.observed_generation >= self.generation
            && self.updated >= self.desired
            && self.available >= self.desired
    }
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The ClusterNetwork's `metadata.generation`.
    pub generation: i64,
    /// Its `metadata.uid`: a report about an earlier ClusterNetwork of the same name (deleted
    /// and created again, e.g. uninstalled and installed) is not current, whatever its
    /// generation.
    pub uid: Option<String>,
    /// `spec.mtu`.
    pub mtu: Option<u32>,
    /// Every node, by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// The agent DaemonSet; `None` before it exists.
    pub daemon_set: Option<DaemonSetView>,
    /// Applying the node side failed with this message.
    pub apply_error: Option<String>,
    /// Now.
    pub now: Timestamp,
}

/// Where one node stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodeState {
    /// Ready with the current generation.
    Current,
    /// Ready with an older generation: the rollout has not reached it.
    Lagging,
    /// Joined recently; its agent has not reported yet.
    Joining,
    /// Not ready: why.
    Failed(String),
}

fn age(now: Timestamp, then: Timestamp) -> Duration {
    now.duration_since(then)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

fn node_state(node: &NodeView, observed: &Observed) -> NodeState {
    let (generation, now) = (observed.generation, observed.now);
    let joining = node.created.is_some_and(|c| age(now, c) < JOIN_GRACE);
    let Some(agent) = &node.agent else {
        return if joining {
            NodeState::Joining
        } else {
            NodeState::Failed("no agent report".into())
        };
    };
    match agent.heartbeat {
        Some(h) if age(now, h) < HEARTBEAT_STALE => {}
        Some(h) => {
            return NodeState::Failed(format!("agent silent for {}s", age(now, h).as_secs()));
        }
        None if joining => return NodeState::Joining,
        None => return NodeState::Failed("no agent report".into()),
    }
    if !agent.ready {
        return NodeState::Failed(
            agent
                .message
                .clone()
                .unwrap_or_else(|| "agent not ready".into()),
        );
    }
    let same_object = agent.cluster_uid.is_none() || agent.cluster_uid == observed.uid;
    if agent.generation == Some(generation) && same_object {
        NodeState::Current
    } else {
        NodeState::Lagging
    }
}

/// `a, b, c and 7 more`: at most `max` names, so a message stays readable on big clusters.
pub fn name_some(names: &[String], max: usize) -> String {
    let shown = names
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > max {
        format!("{shown} and {} more", names.len() - max)
    } else {
        shown
    }
}

fn condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: String,
    generation: i64,
    now: Timestamp,
) -> Condition {
    conditions::new_condition(type_, status, reason, message, Some(generation), Time(now))
}

/// The status `observed` calls for; `previous` keeps each condition's lastTransitionTime
/// while its status holds.
pub fn status(
    observed: &Observed,
    previous: Option<&ClusterNetworkStatus>,
) -> ClusterNetworkStatus {
    let generation = observed.generation;
    let now = observed.now;
    let mut current = 0u32;
    let mut lagging = Vec::new();
    let mut joining = Vec::new();
    let mut failed = Vec::new();
    for (name, node) in &observed.nodes {
        match node_state(node, observed) {
            NodeState::Current => current += 1,
            NodeState::Lagging => lagging.push(name.clone()),
            NodeState::Joining => joining.push(name.clone()),
            NodeState::Failed(why) => failed.push(format!("{name} ({why})")),
        }
    }
    let desired = u32::try_from(observed.nodes.len()).unwrap_or(u32::MAX);
    let ds_rolling = observed.daemon_set.is_none_or(|ds| !ds.rolled_out());

    let ready_message = format!("{current}/{desired} nodes ready");
    let progress_message = {
        let mut parts = Vec::new();
        match observed.daemon_set {
            None => parts.push("creating the agent DaemonSet".to_owned()),
            Some(ds) if !ds.rolled_out() => parts.push(format!(
                "agent DaemonSet rolling out ({}/{} updated, {} available)",
                ds.updated, ds.desired, ds.available
            )),
            Some(_) => {}
        }
        if !lagging.is_empty() {
            parts.push(format!(
                "{} of {desired} agents still run an older generation (waiting for generation {generation}): {}",
                lagging.len(),
                name_some(&lagging, 10)
            ));
        }
        if !joining.is_empty() {
            parts.push(format!(
                "waiting for new nodes' agents: {}",
                name_some(&joining, 10)
            ));
        }
        parts.join("; ")
    };
    let progressing = ds_rolling || !lagging.is_empty() || !joining.is_empty();

    let (ready, degraded) = if let Some(error) = &observed.apply_error {
        let message = format!("applying the agent's objects failed: {error}");
        (
            (
                ConditionStatus::False,
                reasons::RECONCILE_ERROR,
                message.clone(),
            ),
            (ConditionStatus::True, reasons::RECONCILE_ERROR, message),
        )
    } else if !failed.is_empty() {
        let message = format!(
            "{} of {desired} nodes have no working agent: {}",
            failed.len(),
            name_some(&failed, 10)
        );
        (
            (
                ConditionStatus::False,
                reasons::AGENTS_NOT_READY,
                format!("{ready_message}; {message}"),
            ),
            (ConditionStatus::True, reasons::AGENTS_NOT_READY, message),
        )
    } else if progressing {
        (
            (
                ConditionStatus::False,
                reasons::ROLLING_OUT,
                format!("{ready_message}; {progress_message}"),
            ),
            (
                ConditionStatus::False,
                reasons::RECONCILED,
                "no failures".to_owned(),
            ),
        )
    } else {
        (
            (ConditionStatus::True, reasons::RECONCILED, ready_message),
            (
                ConditionStatus::False,
                reasons::RECONCILED,
                "no failures".to_owned(),
            ),
        )
    };
    let progressing = if progressing {
        (
            ConditionStatus::True,
            reasons::ROLLING_OUT,
            progress_message,
        )
    } else {
        (
            ConditionStatus::False,
            reasons::RECONCILED,
            format!("generation {generation} is rolled out"),
        )
    };

    let mut conds = previous.map(|p| p.conditions.clone()).unwrap_or_default();
    for (type_, (status, reason, message)) in [
        (types::READY, ready),
        (types::PROGRESSING, progressing),
        (types::DEGRADED, degraded),
    ] {
        conditions::set_condition(
            &mut conds,
            condition(type_, status, reason, message, generation, now),
        );
    }
    ClusterNetworkStatus {
        conditions: conds,
        nodes_ready: current,
        nodes_desired: desired,
        mtu: observed.mtu,
        observed_generation: Some(generation),
    }
}

/// A change of the ClusterNetwork's state a user wants to hear about (an Event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `Normal` (false) or `Warning` (true).
    pub warning: bool,
    /// The Event's reason.
    pub reason: &'static str,
    /// The Event's note.
    pub note: String,
}

fn holds(status: Option<&ClusterNetworkStatus>, type_: &str) -> bool {
    status
        .and_then(|s| conditions::find(&s.conditions, type_))
        .is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

fn message_of(status: &ClusterNetworkStatus, type_: &str) -> String {
    conditions::find(&status.conditions, type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// The Events that going from `before` to `after` calls for.
pub fn transitions(
    before: Option<&ClusterNetworkStatus>,
    after: &ClusterNetworkStatus,
) -> Vec<Transition> {
    let mut out = Vec::new();
    let now = Some(after);
    if !holds(before, types::PROGRESSING) && holds(now, types::PROGRESSING) {
        out.push(Transition {
            warning: false,
            reason: "RolloutStarted",
            note: message_of(after, types::PROGRESSING),
        });
    }
    if !holds(before, types::DEGRADED) && holds(now, types::DEGRADED) {
        out.push(Transition {
            warning: true,
            reason: "Degraded",
            note: message_of(after, types::DEGRADED),
        });
    }
    if holds(before, types::DEGRADED) && !holds(now, types::DEGRADED) {
        out.push(Transition {
            warning: false,
            reason: "Recovered",
            note: message_of(after, types::READY),
        });
    }
    if !holds(before, types::READY) && holds(now, types::READY) {
        out.push(Transition {
            warning: false,
            reason: "Ready",
            note: message_of(after, types::READY),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn agent(ready: bool, generation: i64, heartbeat: i64) -> Option<AgentReport> {
        Some(AgentReport {
            ready,
            generation: Some(generation),
            cluster_uid: Some(UID.into()),
            heartbeat: Some(at(heartbeat)),
            message: (!ready).then(|| "programming the datapath failed: boom".to_owned()),
        })
    }

    /// The ClusterNetwork's uid in [`observed`].
    const UID: &str = "0c0ffee0-0000-4000-8000-000000000005";

    fn node(agent: Option<AgentReport>) -> NodeView {
        NodeView {
            created: Some(at(-3600)),
            agent,
        }
    }

    fn rolled(desired: i32) -> Option<DaemonSetView> {
        Some(DaemonSetView {
            generation: 2,
            observed_generation: 2,
            desired,
            updated: desired,
            available: desired,
        })
    }

    fn observed(nodes: &[(&str, NodeView)], daemon_set: Option<DaemonSetView>) -> Observed {
        Observed {
            generation: 5,
            uid: Some(UID.into()),
            mtu: None,
            nodes: nodes
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            daemon_set,
            apply_error: None,
            now: at(0),
        }
    }

    fn cond<'a>(s: &'a ClusterNetworkStatus, type_: &str) -> &'a Condition {
        conditions::find(&s.conditions, type_).unwrap()
    }

    #[test]
    fn every_agent_current_is_ready_and_not_progressing() {
        let s = status(
            &observed(
                &[
                    ("a", node(agent(true, 5, -10))),
                    ("b", node(agent(true, 5, -70))),
                ],
                rolled(2),
            ),
            None,
        );
        assert_eq!(cond(&s, types::READY).status, "True");
        assert_eq!(cond(&s, types::READY).message, "2/2 nodes ready");
        assert_eq!(cond(&s, types::PROGRESSING).status, "False");
        assert_eq!(cond(&s, types::DEGRADED).status, "False");
        assert_eq!((s.nodes_ready, s.nodes_desired), (2, 2));
        assert_eq!(s.observed_generation, Some(5));
    }

    #[test]
    fn a_report_about_an_earlier_cluster_network_of_the_same_generation_is_not_current() {
        // Uninstalled and installed again: the new ClusterNetwork starts at generation 1 too.
        let mut old = agent(true, 5, -1);
        if let Some(a) = old.as_mut() {
            a.cluster_uid = Some("an-earlier-uid".into());
        }
        let s = status(
            &observed(
                &[("a", node(agent(true, 5, -1))), ("b", node(old))],
                rolled(2),
            ),
            None,
        );
        assert_eq!(cond(&s, types::READY).status, "False");
        assert!(
            cond(&s, types::PROGRESSING)
                .message
                .contains("1 of 2 agents still run an older generation"),
            "{}",
            cond(&s, types::PROGRESSING).message
        );
        // An agent that reports no uid (an older agent) is judged by the generation alone.
        let mut legacy = agent(true, 5, -1);
        if let Some(a) = legacy.as_mut() {
            a.cluster_uid = None;
        }
        let s = status(&observed(&[("a", node(legacy))], rolled(1)), None);
        assert_eq!(cond(&s, types::READY).status, "True");
    }

    #[test]
    fn agents_on_an_older_generation_are_a_rollout_in_progress() {
        let s = status(
            &observed(
                &[
                    ("a", node(agent(true, 5, -1))),
                    ("b", node(agent(true, 4, -1))),
                ],
                rolled(2),
            ),
            None,
        );
        assert_eq!(cond(&s, types::READY).status, "False");
        assert_eq!(cond(&s, types::READY).reason, reasons::ROLLING_OUT);
        let p = cond(&s, types::PROGRESSING);
        assert_eq!(p.status, "True");
        assert!(
            p.message
                .contains("1 of 2 agents still run an older generation"),
            "{}",
            p.message
        );
        assert!(p.message.contains(": b"), "{}", p.message);
        assert_eq!(cond(&s, types::DEGRADED).status, "False");
        assert_eq!(s.nodes_ready, 1);
    }

    #[test]
    fn a_daemon_set_still_updating_is_progressing() {
        let ds = Some(DaemonSetView {
            generation: 3,
            observed_generation: 3,
            desired: 3,
            updated: 1,
            available: 3,
        });
        let s = status(&observed(&[("a", node(agent(true, 5, -1)))], ds), None);
        assert_eq!(cond(&s, types::PROGRESSING).status, "True");
        assert!(cond(&s, types::PROGRESSING).message.contains("1/3 updated"));
        let s = status(&observed(&[("a", node(agent(true, 5, -1)))], None), None);
        assert!(
            cond(&s, types::PROGRESSING)
                .message
                .contains("creating the agent DaemonSet")
        );
    }

    #[test]
    fn a_failed_or_silent_agent_degrades_and_is_named() {
        let s = status(
            &observed(
                &[
                    ("a", node(agent(true, 5, -1))),
                    ("b", node(agent(false, 5, -1))),
                    ("c", node(agent(true, 5, -600))),
                ],
                rolled(3),
            ),
            None,
        );
        let d = cond(&s, types::DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", reasons::AGENTS_NOT_READY)
        );
        assert!(d.message.contains("2 of 3 nodes"), "{}", d.message);
        assert!(
            d.message
                .contains("b (programming the datapath failed: boom)"),
            "{}",
            d.message
        );
        assert!(
            d.message.contains("c (agent silent for 600s)"),
            "{}",
            d.message
        );
        assert_eq!(cond(&s, types::READY).status, "False");
    }

    #[test]
    fn a_new_node_gets_a_grace_period_before_it_degrades() {
        let new = NodeView {
            created: Some(at(-30)),
            agent: None,
        };
        let s = status(&observed(&[("new", new)], rolled(1)), None);
        assert_eq!(cond(&s, types::DEGRADED).status, "False");
        assert_eq!(cond(&s, types::PROGRESSING).status, "True");
        assert!(cond(&s, types::PROGRESSING).message.contains("new"));
        let old = NodeView {
            created: Some(at(-3600)),
            agent: None,
        };
        let s = status(&observed(&[("old", old)], rolled(1)), None);
        assert_eq!(cond(&s, types::DEGRADED).status, "True");
        assert!(
            cond(&s, types::DEGRADED)
                .message
                .contains("old (no agent report)")
        );
    }

    #[test]
    fn an_apply_failure_degrades_with_its_message() {
        let mut o = observed(&[("a", node(agent(true, 5, -1)))], rolled(1));
        o.apply_error = Some("daemonsets.apps is forbidden".into());
        let s = status(&o, None);
        assert_eq!(cond(&s, types::DEGRADED).reason, reasons::RECONCILE_ERROR);
        assert!(cond(&s, types::DEGRADED).message.contains("forbidden"));
        assert_eq!(cond(&s, types::READY).status, "False");
    }

    #[test]
    fn a_transition_time_is_kept_while_the_condition_holds() {
        let first = status(
            &observed(&[("a", node(agent(true, 5, -1)))], rolled(1)),
            None,
        );
        let mut later = observed(&[("a", node(agent(true, 5, 50)))], rolled(1));
        later.now = at(60);
        let second = status(&later, Some(&first));
        assert_eq!(
            cond(&first, types::READY).last_transition_time,
            cond(&second, types::READY).last_transition_time
        );
    }

    #[test]
    fn transitions_name_what_a_user_cares_about() {
        let ready = status(
            &observed(&[("a", node(agent(true, 5, -1)))], rolled(1)),
            None,
        );
        let rolling = status(
            &observed(&[("a", node(agent(true, 4, -1)))], rolled(1)),
            Some(&ready),
        );
        let started = transitions(Some(&ready), &rolling);
        assert_eq!(
            started.iter().map(|t| t.reason).collect::<Vec<_>>(),
            ["RolloutStarted"]
        );
        let degraded = status(
            &observed(&[("a", node(agent(false, 5, -1)))], rolled(1)),
            Some(&rolling),
        );
        let t = transitions(Some(&rolling), &degraded);
        assert_eq!(
            t.iter().map(|t| (t.reason, t.warning)).collect::<Vec<_>>(),
            [("Degraded", true)]
        );
        let back = status(
            &observed(&[("a", node(agent(true, 5, -1)))], rolled(1)),
            Some(&degraded),
        );
        let t = transitions(Some(&degraded), &back);
        assert_eq!(
            t.iter().map(|t| t.reason).collect::<Vec<_>>(),
            ["Recovered", "Ready"]
        );
        assert!(
            transitions(Some(&back), &back).is_empty(),
            "no change, no event"
        );
    }

    #[test]
    fn long_name_lists_are_cut() {
        let names: Vec<String> = (0..13).map(|i| format!("n{i}")).collect();
        assert_eq!(name_some(&names[..2], 10), "n0, n1");
        assert!(name_some(&names, 10).ends_with("n9 and 3 more"));
    }
}
