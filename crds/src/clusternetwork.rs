//! `ClusterNetwork`: the cluster-wide networking settings, a singleton named `default`
//! (like Calico's `Installation`). The operator renders the agent DaemonSet, the CNI
//! configuration and RBAC from it, and reports rollout progress in its status.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ippool::default_true;
use crate::net::Cidr;

/// The only name a ClusterNetwork may have.
pub const SINGLETON_NAME: &str = "default";
/// Service CIDR used when `spec.serviceCIDR` is omitted (the kube-apiserver default).
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";
/// UDP port of the VXLAN overlay when not set (the Linux/Flannel/Cilium convention).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Smallest MTU accepted for pod interfaces (the IPv6 minimum).
pub const MIN_MTU: u32 = 1280;
/// Largest MTU accepted for pod interfaces (jumbo frames).
pub const MAX_MTU: u32 = 9000;

/// How pod traffic crosses between nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RoutingMode {
    /// Each node's blocks are routed via that node's IP: no encapsulation, but nodes must be
    /// on one L2 network (or the underlying network must route the pod CIDRs).
    Native,
    /// Pod traffic between nodes is encapsulated in VXLAN: works on any IP network.
    #[default]
    #[serde(rename = "VXLAN")]
    Vxlan,
}

/// ClusterNetwork holds the cluster-wide networking settings. Exactly one exists, named
/// `default`; the operator rolls its settings out to every node.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferrite.dev",
    version = "v1alpha1",
    kind = "ClusterNetwork",
    doc = "ClusterNetwork holds the cluster-wide networking settings; exactly one exists, named default.",
    plural = "clusternetworks",
    singular = "clusternetwork",
    shortname = "fcn",
    category = "ferrite",
    status = "ClusterNetworkStatus",
    validation = Rule::new("self.metadata.name == 'default'").message(
        "ClusterNetwork is a singleton: name it 'default' (edit the existing one instead of creating another)"
    ),
    printcolumn = r#"{"name":"Routing","type":"string","jsonPath":".spec.routingMode"}"#,
    printcolumn = r#"{"name":"MTU","type":"integer","jsonPath":".status.mtu"}"#,
    printcolumn = r#"{"name":"Nodes-Ready","type":"integer","jsonPath":".status.nodesReady"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.nodesDesired"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkSpec {
    /// Names of the IPPools pods get addresses from. Empty: every enabled pool that allows `Pod`.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub ip_pools: Vec<String>,

    /// The cluster's Service CIDR; must match kube-apiserver's `--service-cluster-ip-range`.
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: Cidr,

    /// How pod traffic crosses between nodes: `Native` (plain routes, nodes on one L2
    /// network) or `VXLAN` (encapsulated; the default).
    #[serde(default)]
    pub routing_mode: RoutingMode,

    /// MTU of pod interfaces. Absent: computed from the node's uplink minus the overhead of
    /// the routing mode and encryption (VXLAN 50, WireGuard 80); the result is in `status.mtu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1280 && self <= 9000").message(
        "spec.mtu must be between 1280 and 9000; omit it to compute the MTU from each node's uplink"
    ))]
    pub mtu: Option<u32>,

    /// Replace kube-proxy: Ferrite load-balances ClusterIP, NodePort, LoadBalancer and
    /// externalIPs itself. Turn kube-proxy off when enabling this. Default: false.
    #[serde(default)]
    pub kube_proxy_replacement: bool,

    /// Masquerading of pod traffic leaving the cluster.
    #[serde(default)]
    pub masquerade: MasqueradeSpec,

    /// VXLAN settings, used when `routingMode` is `VXLAN`.
    #[serde(default)]
    pub vxlan: VxlanSpec,

    /// Flow visibility: what the agents record and where they send it.
    #[serde(default)]
    pub flows: FlowsSpec,

    /// How the node agent DaemonSet is run.
    #[serde(default)]
    pub agent: AgentSpec,
}

fn default_service_cidr() -> Cidr {
    Cidr(DEFAULT_SERVICE_CIDR.to_owned())
}

/// Masquerading (SNAT to the node address) of pod traffic leaving the cluster.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradeSpec {
    /// Masquerade traffic from pods to destinations outside the pools, the service CIDR and
    /// `nonMasqueradeCIDRs`. Per-pool `natOutgoing: false` opts a pool out. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Destinations reached without masquerading (e.g. a peered VPC that routes pod CIDRs).
    #[serde(default, rename = "nonMasqueradeCIDRs")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub non_masquerade_cidrs: Vec<Cidr>,
}

impl Default for MasqueradeSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            non_masquerade_cidrs: Vec::new(),
        }
    }
}

/// VXLAN overlay settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanSpec {
    /// UDP port of the overlay. Default: 8472.
    #[serde(default = "default_vxlan_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// VXLAN network identifier. Default: 1.
    #[serde(default = "default_vni")]
    #[schemars(range(min = 1, max = 16777215))]
    pub vni: u32,
}

impl Default for VxlanSpec {
    fn default() -> Self {
        Self {
            port: DEFAULT_VXLAN_PORT,
            vni: default_vni(),
        }
    }
}

fn default_vxlan_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

fn default_vni() -> u32 {
    1
}

/// Flow visibility settings.
#[derive(KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsSpec {
    /// Record flows (and policy verdicts) on every node. Default: true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// How many recent flows each agent keeps in memory for the dashboard. Default: 8192.
    #[serde(default = "default_flow_capacity")]
    #[schemars(range(min = 128, max = 1048576))]
    pub capacity: u32,

    /// Also record allowed flows, not only drops. Default: true.
    #[serde(default = "default_true")]
    pub record_allowed: bool,

    /// OTLP endpoint (gRPC, e.g. `http://otel-collector.observability:4317`) the agents export
    /// flow metrics and traces to. Absent: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message(
        "spec.flows.otlpEndpoint must be an http:// or https:// URL, e.g. http://otel-collector:4317"
    ))]
    #[schemars(length(max = 2048))]
    pub otlp_endpoint: Option<String>,
}

impl Default for FlowsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: default_flow_capacity(),
            record_allowed: true,
            otlp_endpoint: None,
        }
    }
}

fn default_flow_capacity() -> u32 {
    8192
}

/// Log verbosity of the node agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Very verbose.
    Trace,
}

/// When the kubelet pulls the agent image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when absent (the default).
    #[default]
    IfNotPresent,
    /// Never pull (images loaded by other means, as in the local cluster).
    Never,
}

/// How the node agent DaemonSet is run.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentSpec {
    /// Agent image. Absent: the image matching the operator's own version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// When the kubelet pulls the agent image. Default: IfNotPresent.
    #[serde(default)]
    pub image_pull_policy: PullPolicy,

    /// CPU and memory requests and limits of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra tolerations. The agent always tolerates every taint, since a node without it has
    /// no pod network; these are kept for clusters that audit tolerations explicitly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Log verbosity: error, warn, info (default), debug or trace.
    #[serde(default)]
    pub log_level: LogLevel,
}

/// Observed state of the ClusterNetwork, written by the operator.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkStatus {
    /// `Ready`: every node's agent runs the current configuration. `Progressing`: a rollout
    /// is under way. `Degraded`: some agents are not ready (the message names them).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Nodes whose agent is ready with the current configuration.
    #[serde(default)]
    pub nodes_ready: u32,

    /// Nodes that should run an agent.
    #[serde(default)]
    pub nodes_desired: u32,

    /// The pod MTU in effect (`spec.mtu`, or the computed one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
