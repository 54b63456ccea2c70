//! The agent's Prometheus metrics and its health endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a CNI request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    /// ADD, DEL, CHECK, STATUS, GC.
    pub command: String,
}

/// Labels of a failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The command that failed.
    pub command: String,
    /// What kind of failure (`ipam_exhausted`, `datapath`, `bad_request`, ...).
    pub kind: String,
}

/// Labels of a datapath reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `ok` or `error`.
    pub outcome: String,
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Pod addresses currently allocated on this node.
    pub allocations: Gauge,
    /// Addresses this node's blocks can hand out.
    pub capacity: Gauge,
    /// CNI request latency, by command.
    pub cni_latency: Family<CommandLabels, Histogram>,
    /// CNI requests that failed, by command and kind.
    pub cni_errors: Family<ErrorLabels, Counter>,
    /// Node datapath reconciles, by outcome.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// DEL requests that were queued while the agent was down and replayed.
    pub replayed_dels: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferrite_agent");
        let allocations = Gauge::default();
        let capacity = Gauge::default();
        // 100 µs … ~3.3 s: a warm ADD is about a millisecond, a slow one tens.
        let cni_latency = Family::<CommandLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        let cni_errors = Family::<ErrorLabels, Counter>::default();
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let replayed_dels = Counter::default();
        registry.register(
            "ipam_allocations",
            "Pod addresses allocated on this node",
            allocations.clone(),
        );
        registry.register(
            "ipam_capacity",
            "Pod addresses this node's blocks can hand out",
            capacity.clone(),
        );
        registry.register(
            "cni_request_duration_seconds",
            "CNI requests served by the agent, by command",
            cni_latency.clone(),
        );
        registry.register(
            "cni_errors",
            "CNI requests that failed, by command and kind",
            cni_errors.clone(),
        );
        registry.register(
            "datapath_reconciles",
            "Reconciles of the node's routes, tunnel and egress rules, by outcome",
            reconciles.clone(),
        );
        registry.register(
            "cni_replayed_dels",
            "DEL requests queued by the plugin while the agent was down, replayed",
            replayed_dels.clone(),
        );
        Self {
            registry,
            allocations,
            capacity,
            cni_latency,
            cni_errors,
            reconciles,
            replayed_dels,
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Health as the endpoints report it.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks the agent ready (serving CNI with its datapath programmed) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the agent is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// Renders the IPAM state as JSON, for `/ipam`.
pub type IpamView = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    ipam: IpamView,
}

/// The health and metrics router; `/ipam` lists this node's allocations (address → pod and
/// attachment), like `cilium-dbg ip list`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, ipam: IpamView) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/ipam",
            get(|State(s): State<AppState>| async move { axum::Json((s.ipam)()) }),
        )
        .with_state(AppState {
            metrics,
            health,
            ipam,
        })
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the node's datapath is not programmed yet (see the agent's log)\n",
        )
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Serves the router on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("bind the health endpoint on {addr}: {e}"))
    })?;
    axum::serve(listener, router).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::default();
        m.allocations.set(3);
        m.cni_latency
            .get_or_create(&CommandLabels {
                command: "ADD".into(),
            })
            .observe(0.0012);
        m.cni_errors
            .get_or_create(&ErrorLabels {
                command: "ADD".into(),
                kind: "ipam_exhausted".into(),
            })
            .inc();
        let text = m.encode();
        assert!(text.contains("ferrite_agent_ipam_allocations 3"), "{text}");
        assert!(
            text.contains(r#"ferrite_agent_cni_request_duration_seconds_count{command="ADD"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ferrite_agent_cni_errors_total{command="ADD",kind="ipam_exhausted"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
