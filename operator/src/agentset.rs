//! What the node side needs, rendered from the `ClusterNetwork`: the agent's DaemonSet, its
//! ServiceAccount, ClusterRole and ClusterRoleBinding. Pure: the same inputs give the same
//! objects, byte for byte (golden files in `operator/testdata/`), so server-side apply of an
//! unchanged ClusterNetwork changes nothing and a GitOps tool sees no drift in them.
//!
//! Every object carries a controller owner reference to the ClusterNetwork, so the node side
//! goes with it; before it goes, the ClusterNetwork's finalizer has the operator clean the
//! nodes with [`render_cleanup`]'s DaemonSet (see `teardown`).
//!
//! The agent installs the CNI plugin binary and its configuration itself (into the hostPaths
//! mounted at `/host/...`), as Cilium's and Calico's agents do, once its datapath is ready.

use std::collections::BTreeMap;

use ferrite_crds::ClusterNetwork;
use ferrite_crds::clusternetwork::{LogLevel, PullPolicy};
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HostPathVolumeSource,
    ObjectFieldSelector, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecurityContext,
    ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;

/// Name of the agent's DaemonSet, ServiceAccount, ClusterRole and ClusterRoleBinding.
pub const AGENT_NAME: &str = "ferrite-agent";

/// Name of the DaemonSet that cleans every node when Ferrite is uninstalled ([`render_cleanup`]).
pub const CLEANUP_NAME: &str = "ferrite-cleanup";

/// The agent's health port (`/healthz`, `/readyz`, `/metrics`).
pub const AGENT_HEALTH_PORT: i32 = 9893;

/// Where the operator runs and what it deploys when the ClusterNetwork does not say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentDefaults {
    /// Namespace of the agent's DaemonSet and ServiceAccount (the operator's own).
    pub namespace: String,
    /// The agent image when `spec.agent.image` is absent: the operator's own version.
    pub image: String,
}

/// The objects the node side needs, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentObjects {
    /// The agent's identity.
    pub service_account: ServiceAccount,
    /// What the agent may do: read the network objects, write its NodeNetwork's status.
    pub cluster_role: ClusterRole,
    /// Binds the role to the ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// One agent per node.
    pub daemon_set: DaemonSet,
}

/// The ClusterNetwork lacks what an owner reference needs (it was not read from the apiserver).
#[derive(Debug, thiserror::Error)]
#[error("the ClusterNetwork has no {0}: render from an object read from the apiserver")]
pub struct MissingMetadata(&'static str);

fn labels() -> BTreeMap<String, String> {
    labels_of(AGENT_NAME)
}

fn labels_of(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), name.into()),
        ("app.kubernetes.io/part-of".into(), "ferrite".into()),
        (
            "app.kubernetes.io/managed-by".into(),
            "ferrite-operator".into(),
        ),
    ])
}

fn selector_labels() -> BTreeMap<String, String> {
    selector_labels_of(AGENT_NAME)
}

fn selector_labels_of(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app.kubernetes.io/name".into(), name.into())])
}

fn owner(cn: &ClusterNetwork) -> Result<OwnerReference, MissingMetadata> {
    Ok(OwnerReference {
        api_version: ClusterNetwork::api_version(&()).into_owned(),
        kind: ClusterNetwork::kind(&()).into_owned(),
        name: cn.metadata.name.clone().ok_or(MissingMetadata("name"))?,
        uid: cn.metadata.uid.clone().ok_or(MissingMetadata("uid"))?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn meta(name: &str, namespace: Option<&str>, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        // Each object is labelled with its own name: the agent's four and the cleanup's one.
        labels: Some(labels_of(name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

fn rule(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec!["ferrite.dev".into()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The agent's rules: least privilege, no wildcards, nothing outside Ferrite's own kinds.
pub fn agent_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["nodenetworks", "clusternetworks", "ippools"],
            &["get", "list", "watch"],
        ),
        rule(&["nodenetworks/status"], &["get", "patch"]),
    ]
}

fn log_filter(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

fn pull_policy(policy: PullPolicy) -> &'static str {
    match policy {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

fn host_path(name: &str, path: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource {
            path: path.into(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

fn http_probe(path: &str, period: i32, failures: Option<i32>) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(AGENT_HEALTH_PORT),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: failures,
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("50m".into())),
            ("memory".into(), Quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".into(),
            Quantity("256Mi".into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// The agent container.
fn container(cn: &ClusterNetwork, defaults: &AgentDefaults) -> Container {
    let agent = &cn.spec.agent;
    let image = agent
        .image
        .clone()
        .unwrap_or_else(|| defaults.image.clone());
    Container {
        name: "agent".into(),
        image: Some(image),
        image_pull_policy: Some(pull_policy(agent.image_pull_policy).into()),
        args: Some(
            CNI_DIR_ARGS
                .into_iter()
                .chain([
                    "--socket=/run/ferrite/cni.sock",
                    // tmpfs on purpose: the IPAM state lives as long as the boot, like the pods.
                    "--state-dir=/run/ferrite/state",
                    "--spool-dir=/var/lib/cni/ferrite/pending-del",
                ])
                .map(Into::into)
                .chain([format!("--health-addr=0.0.0.0:{AGENT_HEALTH_PORT}")])
                .collect(),
        ),
        env: Some(vec![
            EnvVar {
                name: "NODE_NAME".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "spec.nodeName".into(),
                        ..ObjectFieldSelector::default()
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
            EnvVar {
                name: "FERRITE_LOG".into(),
                value: Some(log_filter(agent.log_level).into()),
                ..EnvVar::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("health".into()),
            container_port: AGENT_HEALTH_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        readiness_probe: Some(http_probe("/readyz", 2, None)),
        liveness_probe: Some(http_probe("/healthz", 10, Some(6))),
        resources: Some(agent.resources.clone().unwrap_or_else(default_resources)),
        // NB: privileged, as every CNI agent: it creates interfaces in pods' namespaces,
        // programs routes and nftables on the node, and writes the CNI directories.
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("cni-bin", "/host/opt/cni/bin"),
            mount("cni-conf", "/host/etc/cni/net.d"),
            mount("run", "/run/ferrite"),
            mount("spool", "/var/lib/cni/ferrite"),
        ]),
        ..Container::default()
    }
}

/// The agent runs on every node whatever its taints: a node without it has no pod network.
fn tolerations(cn: &ClusterNetwork) -> Vec<Toleration> {
    let mut all = vec![Toleration {
        operator: Some("Exists".into()),
        ..Toleration::default()
    }];
    all.extend(cn.spec.agent.tolerations.iter().cloned());
    all
}

/// The host paths the agent writes and the cleanup removes from.
fn cni_volumes() -> [Volume; 2] {
    [
        host_path("cni-bin", "/opt/cni/bin"),
        host_path("cni-conf", "/etc/cni/net.d"),
    ]
}

/// The arguments naming the CNI directories as the containers see them.
const CNI_DIR_ARGS: [&str; 2] = [
    "--cni-bin-dir=/host/opt/cni/bin",
    "--cni-conf-dir=/host/etc/cni/net.d",
];

/// Renders the node side of `cn`.
pub fn render(
    cn: &ClusterNetwork,
    defaults: &AgentDefaults,
) -> Result<AgentObjects, MissingMetadata> {
    let owner = owner(cn)?;
    let ns = defaults.namespace.as_str();
    let service_account = ServiceAccount {
        metadata: meta(AGENT_NAME, Some(ns), &owner),
        ..ServiceAccount::default()
    };
    let cluster_role = ClusterRole {
        metadata: meta(AGENT_NAME, None, &owner),
        rules: Some(agent_rules()),
        ..ClusterRole::default()
    };
    let cluster_role_binding = ClusterRoleBinding {
        metadata: meta(AGENT_NAME, None, &owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: AGENT_NAME.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: AGENT_NAME.into(),
            namespace: Some(ns.into()),
            ..Subject::default()
        }]),
    };
    let daemon_set = DaemonSet {
        metadata: meta(AGENT_NAME, Some(ns), &owner),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels()),
                ..LabelSelector::default()
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..RollingUpdateDaemonSet::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels()),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(AGENT_NAME.into()),
                    host_network: Some(true),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(tolerations(cn)),
                    termination_grace_period_seconds: Some(10),
                    containers: vec![container(cn, defaults)],
                    volumes: Some(
                        cni_volumes()
                            .into_iter()
                            .chain([
                                host_path("run", "/run/ferrite"),
                                host_path("spool", "/var/lib/cni/ferrite"),
                            ])
                            .collect(),
                    ),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    };
    Ok(AgentObjects {
        service_account,
        cluster_role,
        cluster_role_binding,
        daemon_set,
    })
}

/// The DaemonSet that uninstalls Ferrite from every node, started once the agents are gone
/// (see `teardown`): its init container runs `ferrite-agent cleanup` (node routes, the
/// tunnel device, the nftables table, the CNI configuration and plugin; pods' own interfaces
/// and the IPAM state stay with the pods still running), then `ferrite-agent idle` keeps the
/// pod Ready, which is how the operator counts the nodes cleaned. Owned by the ClusterNetwork,
/// so it goes when the deletion finishes. Same image, tolerations and host paths as the agent;
/// no API access.
pub fn render_cleanup(
    cn: &ClusterNetwork,
    defaults: &AgentDefaults,
) -> Result<DaemonSet, MissingMetadata> {
    let owner = owner(cn)?;
    let agent = container(cn, defaults);
    let base = Container {
        image: agent.image,
        image_pull_policy: agent.image_pull_policy,
        env: Some(vec![EnvVar {
            name: "FERRITE_LOG".into(),
            value: Some(log_filter(cn.spec.agent.log_level).into()),
            ..EnvVar::default()
        }]),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity("64Mi".into()))])),
            ..ResourceRequirements::default()
        }),
        ..Container::default()
    };
    let cleanup = Container {
        name: "cleanup".into(),
        args: Some(
            ["cleanup"]
                .into_iter()
                .chain(CNI_DIR_ARGS)
                .map(Into::into)
                .collect(),
        ),
        // NB: privileged: it deletes routes, a device and an nftables table on the node.
        security_context: agent.security_context,
        volume_mounts: Some(vec![
            mount("cni-bin", "/host/opt/cni/bin"),
            mount("cni-conf", "/host/etc/cni/net.d"),
        ]),
        ..base.clone()
    };
    let idle = Container {
        name: "done".into(),
        args: Some(vec!["idle".into()]),
        ..base
    };
    Ok(DaemonSet {
        metadata: meta(CLEANUP_NAME, Some(&defaults.namespace), &owner),
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels_of(CLEANUP_NAME)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels_of(CLEANUP_NAME)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    host_network: Some(true),
                    priority_class_name: Some("system-node-critical".into()),
                    tolerations: Some(tolerations(cn)),
                    termination_grace_period_seconds: Some(2),
                    init_containers: Some(vec![cleanup]),
                    containers: vec![idle],
                    volumes: Some(cni_volumes().into()),
                    ..PodSpec::default()
                }),
            },
            ..DaemonSetSpec::default()
        }),
        ..DaemonSet::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_crds::ClusterNetworkSpec;

    fn cluster_network(yaml: &str) -> ClusterNetwork {
        let spec: ClusterNetworkSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut cn = ClusterNetwork::new("default", spec);
        cn.metadata.uid = Some("6b1f1e0c-2f5e-4f1b-9d3a-0c0ffee00001".into());
        cn.metadata.generation = Some(1);
        cn
    }

    fn defaults() -> AgentDefaults {
        AgentDefaults {
            namespace: "ferrite-system".into(),
            image: "ghcr.io/ferrite-dev/ferrite-agent:0.1.0".into(),
        }
    }

    /// Compares `objects` with `operator/testdata/<name>`; `UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, objects: &AgentObjects) {
        golden_yaml(
            name,
            &[
                serde_json::to_value(&objects.service_account).unwrap(),
                serde_json::to_value(&objects.cluster_role).unwrap(),
                serde_json::to_value(&objects.cluster_role_binding).unwrap(),
                serde_json::to_value(&objects.daemon_set).unwrap(),
            ],
        );
    }

    /// Compares `docs` as a YAML stream with `operator/testdata/<name>`.
    fn golden_yaml(name: &str, docs: &[serde_json::Value]) {
        let rendered = docs
            .iter()
            .map(|d| serde_saphyr::to_string(d).unwrap())
            .collect::<Vec<_>>()
            .join("---\n");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &rendered).unwrap();
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (UPDATE_GOLDEN=1 cargo test -p ferrite-operator writes it)",
                path.display()
            )
        });
        pretty_assertions::assert_eq!(rendered, expected, "{} is stale", path.display());
    }

    #[test]
    fn the_defaults_render_the_golden_agent() {
        let cn = cluster_network("serviceCIDR: 10.96.0.0/12\n");
        golden("agent-defaults.yaml", &render(&cn, &defaults()).unwrap());
    }

    #[test]
    fn the_agent_spec_reaches_the_daemon_set() {
        let cn = cluster_network(
            r#"
serviceCIDR: 10.96.0.0/12
agent:
  image: registry.example/ferrite-agent:1.2.3
  imagePullPolicy: Never
  logLevel: debug
  resources:
    requests: {cpu: 100m, memory: 64Mi}
  tolerations:
    - {key: dedicated, operator: Equal, value: network, effect: NoSchedule}
"#,
        );
        golden("agent-custom.yaml", &render(&cn, &defaults()).unwrap());
    }

    #[test]
    fn every_object_is_owned_by_the_cluster_network() {
        let cn = cluster_network("serviceCIDR: 10.96.0.0/12\n");
        let objects = render(&cn, &defaults()).unwrap();
        for meta in [
            &objects.service_account.metadata,
            &objects.cluster_role.metadata,
            &objects.cluster_role_binding.metadata,
            &objects.daemon_set.metadata,
        ] {
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].kind, "ClusterNetwork");
            assert_eq!(owners[0].uid, "6b1f1e0c-2f5e-4f1b-9d3a-0c0ffee00001");
            assert_eq!(owners[0].controller, Some(true));
        }
    }

    #[test]
    fn the_agent_role_has_no_wildcards_and_no_secrets() {
        for rule in agent_rules() {
            let words = rule
                .verbs
                .iter()
                .chain(rule.resources.iter().flatten())
                .chain(rule.api_groups.iter().flatten());
            for w in words {
                assert_ne!(w, "*", "{rule:?}");
                assert!(!w.contains("secret"), "{rule:?}");
            }
            assert!(
                !rule.verbs.iter().any(|v| v == "delete" || v == "create"),
                "the agent creates and deletes nothing: {rule:?}"
            );
        }
    }

    #[test]
    fn the_cleanup_daemon_set_matches_its_golden_file() {
        let cn = cluster_network("serviceCIDR: 10.96.0.0/12\n");
        let ds = render_cleanup(&cn, &defaults()).unwrap();
        golden_yaml(
            "cleanup-defaults.yaml",
            &[serde_json::to_value(&ds).unwrap()],
        );
        let spec = ds.spec.unwrap().template.spec.unwrap();
        let init = &spec.init_containers.unwrap()[0];
        assert_eq!(init.args.as_ref().unwrap()[0], "cleanup");
        assert_eq!(spec.containers[0].args.as_ref().unwrap(), &["idle"]);
        // It runs where the agent ran: on every node, whatever its taints.
        assert_eq!(
            spec.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        assert_eq!(
            ds.metadata.owner_references.unwrap()[0].kind,
            "ClusterNetwork"
        );
    }

    #[test]
    fn rendering_twice_gives_the_same_objects() {
        let cn = cluster_network("serviceCIDR: 10.96.0.0/12\n");
        assert_eq!(
            render(&cn, &defaults()).unwrap(),
            render(&cn, &defaults()).unwrap()
        );
    }

    #[test]
    fn an_object_not_read_from_the_apiserver_is_refused() {
        let mut cn = cluster_network("serviceCIDR: 10.96.0.0/12\n");
        cn.metadata.uid = None;
        let err = render(&cn, &defaults()).unwrap_err();
        assert!(err.to_string().contains("uid"), "{err}");
    }
}
