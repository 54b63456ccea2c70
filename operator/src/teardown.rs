//! Uninstalling Ferrite from the nodes when the ClusterNetwork is deleted. Pure: the next step
//! from what the cluster shows; the ClusterNetwork controller carries it out.
//!
//! The ClusterNetwork carries the finalizer [`FINALIZER`]. Once it is deleted (Helm's
//! pre-delete hook does it on `helm uninstall`), each reconcile takes one step:
//!
//! 1. The agent DaemonSet is deleted (foreground: the object stays until its pods are gone), so
//!    no agent programs again what the cleanup removes.
//! 2. Once it is gone, the cleanup DaemonSet (`agentset::render_cleanup`) runs
//!    `ferrite-agent cleanup` on every node; a cleanup pod is Ready once its node is clean.
//! 3. When every scheduled cleanup pod is Ready, the finalizer is removed and the deletion
//!    finishes; the cleanup DaemonSet goes with the ClusterNetwork (owner reference).
//!
//! A node that never gets clean (down, unreachable) must not hold an uninstall forever: after
//! [`TIMEOUT`] the deletion finishes anyway, with a Warning Event saying how many nodes were
//! not cleaned.

use std::time::Duration;

/// The ClusterNetwork's finalizer: the nodes are cleaned before it is gone.
pub const FINALIZER: &str = "ferrite.dev/clean-nodes";

/// How long the cleanup may hold the ClusterNetwork's deletion.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// The cleanup DaemonSet's progress, from its status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// `status.desiredNumberScheduled`: the nodes to clean.
    pub desired: i32,
    /// `status.numberReady`: the nodes cleaned.
    pub ready: i32,
}

impl Cleanup {
    /// Every node it was scheduled to is clean (and the counters describe this DaemonSet).
    pub fn done(&self) -> bool {
        self.observed_generation >= self.generation
            && self.generation > 0
            && self.ready >= self.desired
    }
}

/// What the controller sees while the ClusterNetwork is being deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// The agent DaemonSet, if it still exists: whether its deletion has started.
    pub agent: Option<Deleting>,
    /// The cleanup DaemonSet, if it exists.
    pub cleanup: Option<Cleanup>,
    /// How long ago the ClusterNetwork's deletion was requested.
    pub deleting_for: Duration,
}

/// Whether an object's deletion has been requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deleting(pub bool);

/// The next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Delete the agent DaemonSet (foreground).
    DeleteAgent,
    /// Its pods are still terminating.
    AwaitAgentGone,
    /// Apply the cleanup DaemonSet.
    StartCleanup,
    /// Cleaning: `cleaned` of `nodes` so far.
    AwaitCleanup {
        /// Nodes whose cleanup pod is Ready.
        cleaned: i32,
        /// Nodes it runs on.
        nodes: i32,
    },
    /// Every node is clean: remove the finalizer.
    Finish,
    /// [`TIMEOUT`] passed: remove the finalizer anyway, with a Warning. The counts are those of
    /// the cleanup DaemonSet, `None` if it never started (the agents never went away).
    GiveUp {
        /// Nodes whose cleanup pod is Ready, and nodes it runs on.
        cleaned: Option<(i32, i32)>,
    },
}

/// The next step of the teardown.
pub fn next(view: &View) -> Step {
    let waiting = match (view.agent, view.cleanup) {
        (Some(Deleting(false)), _) => return Step::DeleteAgent,
        (Some(Deleting(true)), _) => Step::AwaitAgentGone,
        (None, None) => return Step::StartCleanup,
        (None, Some(c)) if c.done() => return Step::Finish,
        (None, Some(c)) => Step::AwaitCleanup {
            cleaned: c.ready,
            nodes: c.desired,
        },
    };
    if view.deleting_for < TIMEOUT {
        return waiting;
    }
    Step::GiveUp {
        cleaned: view.cleanup.map(|c| (c.ready, c.desired)),
    }
}

/// What the `Ready` condition says while the teardown runs.
pub fn message(step: Step) -> String {
    match step {
        Step::DeleteAgent | Step::AwaitAgentGone => {
            "uninstalling: stopping the agents before the nodes are cleaned".into()
        }
        Step::StartCleanup => "uninstalling: starting the cleanup on every node".into(),
        Step::AwaitCleanup { cleaned, nodes } => {
            format!("uninstalling: {cleaned} of {nodes} nodes cleaned")
        }
        Step::Finish => "uninstalled: every node is clean".into(),
        Step::GiveUp { cleaned } => give_up_note(cleaned),
    }
}

/// The Warning Event's note when the teardown gives up.
pub fn give_up_note(cleaned: Option<(i32, i32)>) -> String {
    let secs = TIMEOUT.as_secs();
    match cleaned {
        Some((cleaned, nodes)) => format!(
            "{} of {nodes} nodes were not cleaned within {secs} s (a node down or unreachable?); \
             the uninstall goes on. Run `ferrite-agent cleanup` on them (see docs/install.md) or \
             reprovision them",
            nodes - cleaned
        ),
        None => format!(
            "the agents did not stop within {secs} s (pods stuck terminating on a node that is \
             down?), so no node was cleaned; the uninstall goes on. Run `ferrite-agent cleanup` \
             on every node (see docs/install.md) or reprovision them"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(agent: Option<bool>, cleanup: Option<Cleanup>, secs: u64) -> View {
        View {
            agent: agent.map(Deleting),
            cleanup,
            deleting_for: Duration::from_secs(secs),
        }
    }

    fn cleanup(observed: i64, desired: i32, ready: i32) -> Cleanup {
        Cleanup {
            generation: 1,
            observed_generation: observed,
            desired,
            ready,
        }
    }

    #[test]
    fn the_agents_stop_before_the_nodes_are_cleaned() {
        assert_eq!(next(&view(Some(false), None, 0)), Step::DeleteAgent);
        assert_eq!(next(&view(Some(true), None, 10)), Step::AwaitAgentGone);
        // Even a cleanup left from an earlier attempt waits for the agents to be gone.
        assert_eq!(
            next(&view(Some(true), Some(cleanup(1, 3, 3)), 10)),
            Step::AwaitAgentGone
        );
        assert_eq!(next(&view(None, None, 20)), Step::StartCleanup);
    }

    #[test]
    fn the_deletion_finishes_once_every_node_is_clean() {
        assert_eq!(
            next(&view(None, Some(cleanup(1, 3, 2)), 30)),
            Step::AwaitCleanup {
                cleaned: 2,
                nodes: 3
            }
        );
        assert_eq!(next(&view(None, Some(cleanup(1, 3, 3)), 30)), Step::Finish);
        // A cluster without nodes has nothing to clean.
        assert_eq!(next(&view(None, Some(cleanup(1, 0, 0)), 30)), Step::Finish);
    }

    #[test]
    fn a_fresh_cleanup_status_is_not_taken_for_done() {
        // Just created: the DaemonSet controller has not counted the nodes yet.
        assert_eq!(
            next(&view(None, Some(cleanup(0, 0, 0)), 5)),
            Step::AwaitCleanup {
                cleaned: 0,
                nodes: 0
            }
        );
        assert!(!Cleanup::default().done());
    }

    #[test]
    fn a_node_that_never_gets_clean_holds_the_deletion_only_until_the_timeout() {
        let stuck = Some(cleanup(1, 3, 2));
        let before = TIMEOUT.as_secs() - 1;
        assert!(matches!(
            next(&view(None, stuck, before)),
            Step::AwaitCleanup { .. }
        ));
        let after = TIMEOUT.as_secs();
        assert_eq!(
            next(&view(None, stuck, after)),
            Step::GiveUp {
                cleaned: Some((2, 3))
            }
        );
        assert_eq!(
            next(&view(Some(true), None, after)),
            Step::GiveUp { cleaned: None }
        );
        // Steps that act are never skipped by the timeout.
        assert_eq!(next(&view(Some(false), None, after)), Step::DeleteAgent);
        assert_eq!(next(&view(None, None, after)), Step::StartCleanup);
    }

    #[test]
    fn messages_say_where_the_uninstall_is() {
        assert_eq!(
            message(Step::AwaitCleanup {
                cleaned: 1,
                nodes: 3
            }),
            "uninstalling: 1 of 3 nodes cleaned"
        );
        let note = give_up_note(Some((1, 3)));
        assert!(note.starts_with("2 of 3 nodes were not cleaned"), "{note}");
        assert!(note.contains("ferrite-agent cleanup"), "{note}");
        assert!(give_up_note(None).contains("did not stop"));
    }
}
