//! Label selectors (`metav1.LabelSelector`) evaluated against a set of labels, as the
//! apiserver would: `matchLabels` and every `matchExpressions` entry must all hold.
//!
//! NB: a LabelSelector inside a custom resource is not validated by the apiserver the way it
//! is in built-in kinds (the CRD schema only checks its shape), so an unknown operator, or
//! `In` without values, can reach us. Those are errors that name the key and say what to
//! write, never a silent "does not match".

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// The operators a `matchExpressions` entry may use.
pub mod operators {
    /// The label is present and its value is one of `values`.
    pub const IN: &str = "In";
    /// The label is absent, or its value is none of `values`.
    pub const NOT_IN: &str = "NotIn";
    /// The label is present (any value).
    pub const EXISTS: &str = "Exists";
    /// The label is absent.
    pub const DOES_NOT_EXIST: &str = "DoesNotExist";
}

/// A selector that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// `operator` is not one of the four Kubernetes defines.
    #[error(
        "matchExpressions entry for key {key:?} has operator {operator:?}: use In, NotIn, Exists or DoesNotExist"
    )]
    UnknownOperator {
        /// The label key of the entry.
        key: String,
        /// The operator as written.
        operator: String,
    },
    /// `In` or `NotIn` without values.
    #[error(
        "matchExpressions entry for key {key:?} uses {operator} without values: list at least one value"
    )]
    MissingValues {
        /// The label key of the entry.
        key: String,
        /// `In` or `NotIn`.
        operator: String,
    },
    /// `Exists` or `DoesNotExist` with values.
    #[error(
        "matchExpressions entry for key {key:?} uses {operator} with values: remove the values (they are not allowed with {operator})"
    )]
    UnexpectedValues {
        /// The label key of the entry.
        key: String,
        /// `Exists` or `DoesNotExist`.
        operator: String,
    },
}

/// Whether `selector` selects an object with `labels`. An empty selector selects everything.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let labels_hold = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    // Every expression is checked even when matchLabels already failed, so a broken
    // selector is reported however the node happens to be labelled.
    let mut expressions_hold = true;
    for requirement in selector.match_expressions.iter().flatten() {
        expressions_hold &= requirement_holds(requirement, labels)?;
    }
    Ok(labels_hold && expressions_hold)
}

fn requirement_holds(
    requirement: &LabelSelectorRequirement,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let key = &requirement.key;
    let values = requirement.values.as_deref().unwrap_or_default();
    let value = labels.get(key);
    let operator = requirement.operator.as_str();
    let needs_values = |holds: bool| {
        if values.is_empty() {
            Err(SelectorError::MissingValues {
                key: key.clone(),
                operator: operator.to_owned(),
            })
        } else {
            Ok(holds)
        }
    };
    let refuses_values = |holds: bool| {
        if values.is_empty() {
            Ok(holds)
        } else {
            Err(SelectorError::UnexpectedValues {
                key: key.clone(),
                operator: operator.to_owned(),
            })
        }
    };
    match operator {
        operators::IN => needs_values(value.is_some_and(|v| values.contains(v))),
        operators::NOT_IN => needs_values(value.is_none_or(|v| !values.contains(v))),
        operators::EXISTS => refuses_values(value.is_some()),
        operators::DOES_NOT_EXIST => refuses_values(value.is_none()),
        _ => Err(SelectorError::UnknownOperator {
            key: key.clone(),
            operator: operator.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expression(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn with_expressions(expressions: Vec<LabelSelectorRequirement>) -> LabelSelector {
        LabelSelector {
            match_expressions: Some(expressions),
            match_labels: None,
        }
    }

    fn zone_a_worker() -> BTreeMap<String, String> {
        labels(&[("zone", "a"), ("node-role.kubernetes.io/worker", "")])
    }

    #[test]
    fn empty_selector_selects_every_node() {
        assert_eq!(matches(&LabelSelector::default(), &labels(&[])), Ok(true));
        assert_eq!(
            matches(&LabelSelector::default(), &zone_a_worker()),
            Ok(true)
        );
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("zone", "a"), ("disk", "ssd")])),
            match_expressions: None,
        };
        assert_eq!(matches(&selector, &zone_a_worker()), Ok(false));
        let mut node = zone_a_worker();
        node.insert("disk".into(), "ssd".into());
        assert_eq!(matches(&selector, &node), Ok(true));
    }

    #[test]
    fn in_needs_the_label_with_one_of_the_values() {
        let selector = with_expressions(vec![expression("zone", operators::IN, &["a", "b"])]);
        assert_eq!(matches(&selector, &zone_a_worker()), Ok(true));
        assert_eq!(matches(&selector, &labels(&[("zone", "c")])), Ok(false));
        assert_eq!(matches(&selector, &labels(&[])), Ok(false));
    }

    #[test]
    fn not_in_holds_for_other_values_and_for_an_absent_label() {
        let selector = with_expressions(vec![expression("zone", operators::NOT_IN, &["a"])]);
        assert_eq!(matches(&selector, &zone_a_worker()), Ok(false));
        assert_eq!(matches(&selector, &labels(&[("zone", "b")])), Ok(true));
        assert_eq!(matches(&selector, &labels(&[])), Ok(true));
    }

    #[test]
    fn exists_and_does_not_exist_look_only_at_the_key() {
        let exists = with_expressions(vec![expression(
            "node-role.kubernetes.io/worker",
            operators::EXISTS,
            &[],
        )]);
        let absent = with_expressions(vec![expression(
            "node-role.kubernetes.io/worker",
            operators::DOES_NOT_EXIST,
            &[],
        )]);
        assert_eq!(matches(&exists, &zone_a_worker()), Ok(true));
        assert_eq!(matches(&absent, &zone_a_worker()), Ok(false));
        assert_eq!(matches(&exists, &labels(&[("zone", "a")])), Ok(false));
        assert_eq!(matches(&absent, &labels(&[("zone", "a")])), Ok(true));
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("zone", "a")])),
            match_expressions: Some(vec![expression("gpu", operators::DOES_NOT_EXIST, &[])]),
        };
        assert_eq!(matches(&selector, &zone_a_worker()), Ok(true));
        let mut gpu_node = zone_a_worker();
        gpu_node.insert("gpu".into(), "true".into());
        assert_eq!(matches(&selector, &gpu_node), Ok(false));
    }

    #[test]
    fn unknown_operator_is_an_error_naming_the_key() {
        let selector = with_expressions(vec![expression("zone", "Equals", &["a"])]);
        let err = matches(&selector, &zone_a_worker()).unwrap_err();
        assert!(
            matches!(&err, SelectorError::UnknownOperator { key, .. } if key == "zone"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("use In, NotIn, Exists or DoesNotExist")
        );
    }

    #[test]
    fn in_without_values_and_exists_with_values_are_errors() {
        let in_empty = with_expressions(vec![expression("zone", operators::IN, &[])]);
        assert!(matches!(
            matches(&in_empty, &zone_a_worker()),
            Err(SelectorError::MissingValues { .. })
        ));
        let exists_valued = with_expressions(vec![expression("zone", operators::EXISTS, &["a"])]);
        assert!(matches!(
            matches(&exists_valued, &zone_a_worker()),
            Err(SelectorError::UnexpectedValues { .. })
        ));
    }

    #[test]
    fn a_broken_expression_is_reported_even_when_match_labels_already_fail() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("zone", "z")])),
            match_expressions: Some(vec![expression("disk", "Has", &[])]),
        };
        assert!(matches(&selector, &zone_a_worker()).is_err());
    }
}
