//! Status conditions every Ferrite controller shares.
//!
//! Condition types and reasons are named constants, never literals scattered through
//! controllers, so `kubectl wait --for=condition=Ready` and Argo CD health checks see
//! the same vocabulary everywhere. [`set_condition`] keeps `lastTransitionTime` stable
//! while a condition's status does not change, as the Kubernetes API conventions require.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod types {
    /// The object is fully reconciled and working.
    pub const READY: &str = "Ready";
    /// A change is being rolled out.
    pub const PROGRESSING: &str = "Progressing";
    /// The object works, but not fully (some nodes lag, some peers are missing).
    pub const DEGRADED: &str = "Degraded";
}

/// Condition reasons (CamelCase, as the API conventions require).
pub mod reasons {
    /// Everything the spec asks for is in place.
    pub const RECONCILED: &str = "Reconciled";
    /// The pool collides with another pool, the service CIDR or node addresses.
    pub const OVERLAP: &str = "Overlap";
    /// The spec is syntactically valid but cannot be realised (explained in the message).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced object does not exist.
    pub const NOT_FOUND: &str = "NotFound";
    /// The pool has no free blocks left.
    pub const EXHAUSTED: &str = "Exhausted";
    /// The pool is disabled; it hands out no new addresses.
    pub const DISABLED: &str = "Disabled";
    /// The object is being deleted, but something still uses it (the message names what);
    /// a finalizer holds the deletion until nothing does.
    pub const IN_USE: &str = "InUse";
    /// A rollout (agent DaemonSet, configuration) is under way.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// One or more node agents are not ready.
    pub const AGENTS_NOT_READY: &str = "AgentsNotReady";
    /// The controller has not yet finished its first reconciliation.
    pub const PENDING: &str = "Pending";
    /// The controller hit an error it will retry; the message says which.
    pub const RECONCILE_ERROR: &str = "ReconcileError";
    /// The ClusterNetwork is being deleted and Ferrite is being removed from the nodes.
    pub const UNINSTALLING: &str = "Uninstalling";
}

/// The status of a condition: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// The controller cannot tell.
    Unknown,
}

impl ConditionStatus {
    /// The wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(holds: bool) -> Self {
        if holds { Self::True } else { Self::False }
    }
}

/// Builds a condition; `now` is its transition time unless [`set_condition`] keeps an older one.
pub fn new_condition(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.as_str().to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation,
        last_transition_time: now,
    }
}

/// Inserts or replaces the condition of `new.type_`. When the status is unchanged the
/// existing `lastTransitionTime` is kept. Returns whether anything a reader would notice
/// (status, reason, message, observedGeneration) changed, so callers can skip a no-op write.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            if old.status == new.status {
                new.last_transition_time = old.last_transition_time.clone();
            }
            let changed = old.status != new.status
                || old.reason != new.reason
                || old.message != new.message
                || old.observed_generation != new.observed_generation;
            *old = new;
            changed
        }
        None => {
            conditions.push(new);
            true
        }
    }
}

/// The condition of the given type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of the given type is present with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).unwrap())
    }

    fn ready(status: ConditionStatus, reason: &str, now: Time) -> Condition {
        new_condition(types::READY, status, reason, "msg", Some(1), now)
    }

    #[test]
    fn adding_a_condition_reports_a_change() {
        let mut conds = vec![];
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::True, reasons::RECONCILED, at(10))
        ));
        assert!(is_true(&conds, types::READY));
    }

    #[test]
    fn same_status_keeps_the_transition_time_and_reports_no_change() {
        let mut conds = vec![ready(ConditionStatus::True, reasons::RECONCILED, at(10))];
        let changed = set_condition(
            &mut conds,
            ready(ConditionStatus::True, reasons::RECONCILED, at(99)),
        );
        assert!(!changed);
        assert_eq!(conds[0].last_transition_time, at(10));
    }

    #[test]
    fn new_reason_with_same_status_is_a_change_but_keeps_the_transition_time() {
        let mut conds = vec![ready(ConditionStatus::False, reasons::PENDING, at(10))];
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::False, reasons::OVERLAP, at(20))
        ));
        assert_eq!(conds[0].reason, reasons::OVERLAP);
        assert_eq!(conds[0].last_transition_time, at(10));
    }

    #[test]
    fn status_flip_moves_the_transition_time() {
        let mut conds = vec![ready(ConditionStatus::False, reasons::PENDING, at(10))];
        assert!(set_condition(
            &mut conds,
            ready(ConditionStatus::True, reasons::RECONCILED, at(20))
        ));
        assert_eq!(conds.len(), 1);
        assert_eq!(conds[0].last_transition_time, at(20));
        assert!(is_true(&conds, types::READY));
    }

    #[test]
    fn other_condition_types_are_left_alone() {
        let mut conds = vec![new_condition(
            types::DEGRADED,
            ConditionStatus::False,
            reasons::RECONCILED,
            "",
            None,
            at(5),
        )];
        set_condition(
            &mut conds,
            ready(ConditionStatus::True, reasons::RECONCILED, at(20)),
        );
        assert_eq!(conds.len(), 2);
        assert!(!is_true(&conds, types::DEGRADED));
    }
}
