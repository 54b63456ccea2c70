//! The generated CRDs carry what the apiserver and `kubectl` need: validations, printer
//! columns, the status subresource, short names, the category and a description on every field.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use ferrite_crds::{CATEGORY, GROUP, VERSION, all_crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};

fn crd(kind: &str) -> CustomResourceDefinition {
    all_crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .expect(kind)
}

fn schema(kind: &str) -> JSONSchemaProps {
    let crd = crd(kind);
    let v = &crd.spec.versions[0];
    v.schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .clone()
        .unwrap()
}

fn prop<'a>(s: &'a JSONSchemaProps, path: &str) -> &'a JSONSchemaProps {
    path.split('.').fold(s, |s, name| {
        let s = s.items.as_ref().map_or(s, |items| match items {
            JSONSchemaPropsOrArray::Schema(s) => s,
            _ => panic!("array schemas are not used"),
        });
        s.properties
            .as_ref()
            .and_then(|p| p.get(name))
            .unwrap_or_else(|| panic!("no property {path}"))
    })
}

fn rules(s: &JSONSchemaProps) -> Vec<String> {
    s.x_kubernetes_validations
        .iter()
        .flatten()
        .map(|r| r.rule.clone())
        .collect()
}

#[test]
fn every_kind_is_cluster_scoped_in_group_ferrite_dev_with_status_and_category() {
    let crds = all_crds();
    assert_eq!(crds.len(), 4);
    for crd in crds {
        let kind = &crd.spec.names.kind;
        assert_eq!(crd.spec.group, GROUP, "{kind}");
        assert_eq!(crd.spec.scope, "Cluster", "{kind}");
        assert_eq!(crd.spec.versions.len(), 1, "{kind}");
        let v = &crd.spec.versions[0];
        assert_eq!(v.name, VERSION, "{kind}");
        assert!(v.served && v.storage, "{kind}");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{kind} has no status subresource"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&[CATEGORY.to_owned()][..]),
            "{kind}"
        );
    }
}

#[test]
fn short_names_are_unique_and_avoid_calico_cilium_and_antrea() {
    // Short names those projects register (checked against their CRDs).
    let taken = [
        "ippool", "ippools", "lbippool", "cpip", "eip", "eg", "anp", "acnp", "tf", "cnp", "ccnp",
        "cep",
    ];
    let mut seen = Vec::new();
    for crd in all_crds() {
        let short = crd.spec.names.short_names.clone().unwrap_or_default();
        assert!(
            !short.is_empty(),
            "{} has no short name",
            crd.spec.names.kind
        );
        for s in short {
            assert!(
                !taken.contains(&s.as_str()),
                "{s} collides with another CNI's short name"
            );
            assert!(!seen.contains(&s), "{s} used twice");
            seen.push(s);
        }
    }
}

#[test]
fn printer_columns_show_what_kubectl_get_users_look_for() {
    let cols = |kind: &str| -> Vec<(String, String)> {
        crd(kind).spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.name, c.json_path))
            .collect()
    };
    let ippool = cols("IPPool");
    for (name, path) in [
        ("CIDR", ".spec.cidr"),
        ("Block", ".spec.blockSize"),
        ("Allocated", ".status.usage.allocated"),
        ("Ready", ".status.conditions[?(@.type==\"Ready\")].status"),
        ("Age", ".metadata.creationTimestamp"),
    ] {
        assert!(
            ippool.contains(&(name.into(), path.into())),
            "IPPool lacks column {name}"
        );
    }
    for kind in ["ClusterNetwork", "EncryptionPolicy"] {
        assert!(
            cols(kind).iter().any(|(n, _)| n == "Ready"),
            "{kind} lacks a Ready column"
        );
    }
    assert!(
        cols("NodeNetwork")
            .iter()
            .any(|(n, p)| n == "Node-IP" && p == ".spec.nodeIP")
    );
}

/// Walks every property below `s` and reports those without a description.
fn undocumented(s: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    for (name, p) in s.properties.iter().flatten() {
        let here = format!("{path}.{name}");
        if p.description.as_deref().unwrap_or("").trim().is_empty() {
            out.push(here.clone());
        }
        undocumented(p, &here, out);
        if let Some(JSONSchemaPropsOrArray::Schema(items)) = &p.items {
            undocumented(items, &format!("{here}[]"), out);
        }
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    for crd in all_crds() {
        let s = crd.spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap();
        let mut missing = Vec::new();
        for part in ["spec", "status"] {
            undocumented(prop(&s, part), part, &mut missing);
        }
        assert!(
            missing.is_empty(),
            "{}: fields without description: {missing:?}",
            crd.spec.names.kind
        );
    }
}

#[test]
fn ippool_schema_carries_cidr_block_size_and_immutability_rules() {
    let s = schema("IPPool");
    let cidr = rules(prop(&s, "spec.cidr"));
    assert!(cidr.contains(&"isCIDR(self)".into()), "{cidr:?}");
    assert!(
        cidr.iter().any(|r| r.contains("cidr(self).masked()")),
        "{cidr:?}"
    );
    assert!(cidr.contains(&"self == oldSelf".into()), "{cidr:?}");
    assert!(rules(prop(&s, "spec.blockSize")).contains(&"self == oldSelf".into()));
    let spec = rules(prop(&s, "spec"));
    assert!(
        spec.iter().any(|r| r.contains("prefixLength()")),
        "{spec:?}"
    );
    assert!(spec.iter().any(|r| r.contains("containsCIDR")), "{spec:?}");
    assert!(spec.iter().any(|r| r.contains("containsIP")), "{spec:?}");
    let reserved = prop(&s, "spec.reservedRanges");
    assert_eq!(reserved.x_kubernetes_list_type.as_deref(), Some("set"));
    assert_eq!(
        reserved.max_items,
        Some(32),
        "CEL cost estimation needs a bound"
    );
    let Some(JSONSchemaPropsOrArray::Schema(item)) = &reserved.items else {
        panic!("no items")
    };
    assert!(
        rules(item).contains(&"isCIDR(self)".into()),
        "each reserved range is a CIDR"
    );
}

#[test]
fn enums_are_closed_lists_in_the_schema() {
    let values = |s: &JSONSchemaProps| -> Vec<String> {
        s.enum_
            .iter()
            .flatten()
            .map(|v| v.0.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(
        values(prop(&schema("ClusterNetwork"), "spec.routingMode")),
        ["Native", "VXLAN"]
    );
    assert_eq!(
        values(prop(&schema("EncryptionPolicy"), "spec.mode")),
        ["Disabled", "NodeToNode", "PodToPod"]
    );
    let uses = schema("IPPool");
    let Some(JSONSchemaPropsOrArray::Schema(item)) = &prop(&uses, "spec.allowedUses").items else {
        panic!("no items")
    };
    assert_eq!(values(item), ["Pod", "LoadBalancer"]);
}

#[test]
fn cluster_network_is_a_singleton_named_default() {
    let s = schema("ClusterNetwork");
    assert!(
        rules(&s).contains(&"self.metadata.name == 'default'".into()),
        "{:?}",
        rules(&s)
    );
    assert!(
        rules(prop(&s, "spec.mtu"))
            .iter()
            .any(|r| r.contains("1280") && r.contains("9000"))
    );
}

#[test]
fn conditions_merge_by_type_for_server_side_apply() {
    for kind in [
        "IPPool",
        "ClusterNetwork",
        "EncryptionPolicy",
        "NodeNetwork",
    ] {
        let c = prop(&schema(kind), "status.conditions").clone();
        assert_eq!(c.x_kubernetes_list_type.as_deref(), Some("map"), "{kind}");
        assert_eq!(
            c.x_kubernetes_list_map_keys,
            Some(vec!["type".to_owned()]),
            "{kind}"
        );
    }
}
