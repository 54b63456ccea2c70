//! Ferrite's API: the custom resources of group `ferrite.dev`, version `v1alpha1`.
//!
//! These Rust types are the one source of truth. `make crds` renders them into
//! `crds/yaml/*.yaml`, the Helm chart's `crds/` and the reference in `docs/crds.md`.
//! Validation that the apiserver enforces (OpenAPI constraints and CEL
//! `x-kubernetes-validations`) is declared next to each field, so a bad object is
//! refused at `kubectl apply` time with a message that says what to fix.
//!
//! Every kind is cluster-scoped:
//! - [`IPPool`]: a range of addresses pods (or LoadBalancer Services) get their IPs from.
//! - [`ClusterNetwork`]: the singleton `default` holding cluster-wide networking settings.
//! - [`EncryptionPolicy`]: WireGuard encryption between nodes or pods.
//! - [`NodeNetwork`]: one per Node, owned by the operator and that node's agent.

#[cfg(feature = "catalog")]
pub mod catalog;
pub mod clusternetwork;
pub mod conditions;
pub mod encryption;
pub mod ippool;
pub mod net;
pub mod nodenetwork;

pub use clusternetwork::{ClusterNetwork, ClusterNetworkSpec, ClusterNetworkStatus, RoutingMode};
pub use encryption::{
    EncryptionMode, EncryptionPolicy, EncryptionPolicySpec, EncryptionPolicyStatus,
};
pub use ippool::{AllowedUse, IPPool, IPPoolSpec, IPPoolStatus, PoolUsage};
pub use net::{Cidr, IpAddress};
pub use nodenetwork::{AgentStatus, BlockUsage, NodeNetwork, NodeNetworkSpec, NodeNetworkStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Ferrite resource.
pub const GROUP: &str = "ferrite.dev";
/// The API version of every Ferrite resource.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get ferrite` category every Ferrite kind belongs to.
pub const CATEGORY: &str = "ferrite";

/// Every Ferrite CRD, in a stable order (the order `make crds` writes them in).
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        ClusterNetwork::crd(),
        EncryptionPolicy::crd(),
        NodeNetwork::crd(),
    ]
}
