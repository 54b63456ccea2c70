//! CEL rules checked without an apiserver (kube-cel implements Kubernetes' CEL libraries,
//! including IP/CIDR): every example in `docs/examples/` passes, and every `by: cel` entry
//! of the bad-object catalog in `crds/testdata/invalid/` is refused with its expected message.
//! The real proof is the apiserver test in `e2e/`, which applies the same files.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use ferrite_crds::catalog::{self, Case};
use ferrite_crds::{ClusterNetwork, EncryptionPolicy, IPPool, NodeNetwork, all_crds};
use serde_json::Value;

/// What the apiserver stores: the object with the schema's defaults applied. The serde
/// defaults of the Rust types are the schema's defaults (both come from the same attributes).
fn defaulted(object: &Value) -> Value {
    fn round<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Value {
        serde_json::to_value(serde_json::from_value::<T>(v.clone()).expect("decodes")).unwrap()
    }
    match object["kind"].as_str().unwrap() {
        "IPPool" => round::<IPPool>(object),
        "ClusterNetwork" => round::<ClusterNetwork>(object),
        "EncryptionPolicy" => round::<EncryptionPolicy>(object),
        "NodeNetwork" => round::<NodeNetwork>(object),
        other => panic!("unknown kind {other}"),
    }
}

fn validate(object: &Value, old: Option<&Value>) -> Result<(), Vec<String>> {
    let kind = object["kind"].as_str().unwrap();
    let crd = all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap();
    let schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    kube::core::cel::Validator::new()
        .validate(&schema, &defaulted(object), old.map(defaulted).as_ref())
        .map_err(|errs| {
            errs.iter()
                .map(|e| format!("{}: {}", e.field_path, e.message))
                .collect()
        })
}

#[test]
fn every_documented_example_passes_the_cel_rules() {
    let examples = catalog::examples().unwrap();
    assert_eq!(examples.len(), 4, "one example per kind");
    for (path, object) in examples {
        validate(&object, None).unwrap_or_else(|e| panic!("{} is refused: {e:?}", path.display()));
    }
}

#[test]
fn every_cel_entry_of_the_bad_object_catalog_is_refused_with_its_message() {
    let cases: Vec<Case> = catalog::invalid_cases()
        .unwrap()
        .into_iter()
        .filter(|c| c.by == "cel")
        .collect();
    assert!(cases.len() >= 15, "catalog shrank to {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let old = case
            .update_of
            .as_ref()
            .map(|f| catalog::example(f).unwrap());
        match validate(&case.object, old.as_ref()) {
            Ok(()) => failures.push(format!("{}: accepted", case.file.display())),
            Err(errs) if !errs.iter().any(|e| e.contains(&case.expect)) => {
                failures.push(format!(
                    "{}: expected {:?}, got {errs:?}",
                    case.file.display(),
                    case.expect
                ));
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn catalog_entries_name_a_layer_and_their_base_exists() {
    for case in catalog::invalid_cases().unwrap() {
        assert!(
            ["cel", "openapi"].contains(&case.by.as_str()),
            "{}: by {}",
            case.file.display(),
            case.by
        );
        if let Some(base) = &case.update_of {
            assert!(
                catalog::example(base).is_ok(),
                "{}: no example {base}",
                case.file.display()
            );
        }
    }
}

#[test]
fn updates_that_keep_immutable_fields_pass() {
    let pool = catalog::example("ippool.yaml").unwrap();
    let mut changed = pool.clone();
    changed["spec"]["disabled"] = Value::Bool(true);
    validate(&changed, Some(&pool)).unwrap();
}

#[test]
fn mtu_bounds_are_inclusive() {
    let cn = catalog::example("clusternetwork.yaml").unwrap();
    for (mtu, ok) in [(1279, false), (1280, true), (9000, true), (9001, false)] {
        let mut o = cn.clone();
        o["spec"]["mtu"] = mtu.into();
        assert_eq!(validate(&o, None).is_ok(), ok, "mtu {mtu}");
    }
}
