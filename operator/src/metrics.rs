//! The operator's Prometheus metrics and health endpoints: `/metrics`, `/healthz` (the
//! process answers) and `/readyz` (every controller started in this process is running).
//!
//! Every metric is prefixed `ferrite_operator_`:
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `reconcile_duration_seconds` | histogram | `controller` |
//! | `reconcile_errors_total` | counter | `controller`, `kind` (the error's label) |
//! | `controller_running` | gauge (0/1) | `controller` |
//! | `ippool_addresses` | gauge | `pool` (addresses outside reserved ranges) |
//! | `ippool_allocated_addresses` | gauge | `pool` |
//! | `ippool_blocks` | gauge | `pool` (blocks assigned to nodes) |
//! | `node_blocks_added_total` | counter | |
//! | `node_blocks_released_total` | counter | (NodeNetworks whose blocks went back) |
//!
//! # OpenTelemetry
//!
//! Built [`Metrics::with_meter`] (when [`crate::telemetry`] exports over OTLP), the same
//! reconciles and pools are also recorded through OpenTelemetry instruments:
//!
//! | instrument | type | unit | attributes |
//! |---|---|---|---|
//! | `ferrite.operator.reconcile.duration` | histogram | `s` | `controller` |
//! | `ferrite.operator.reconcile.errors` | counter | `{error}` | `controller`, `kind` |
//! | `ferrite.operator.ippool.size` | gauge | `{address}` | `pool` |
//! | `ferrite.operator.ippool.allocated` | gauge | `{address}` | `pool` |
//! | `ferrite.operator.ippool.blocks` | gauge | `{block}` | `pool` |

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter as OtelCounter, Histogram as OtelHistogram, Meter};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use ferrite_crds::PoolUsage;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `controller` label of each controller.
pub mod controllers {
    /// Nodes → NodeNetworks (blocks, growth).
    pub const NODE_NETWORK: &str = "nodenetwork";
    /// Deleted NodeNetworks → blocks released.
    pub const NODE_NETWORK_RELEASE: &str = "nodenetwork-release";
    /// IPPool status, overlap, deletion hold.
    pub const IP_POOL: &str = "ippool";
    /// ClusterNetwork rollout (issue 5, item 3).
    pub const CLUSTER_NETWORK: &str = "clusternetwork";
}

/// Labels of a controller's metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// One of [`controllers`].
    pub controller: String,
}

/// Labels of a failed reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// One of [`controllers`].
    pub controller: String,
    /// The error's short name (`kube`, `conflict`, `no_free_block`, ...).
    pub kind: String,
}

/// Labels of a pool's gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The IPPool's name.
    pub pool: String,
}

/// The OpenTelemetry names of the metrics (see the module docs).
pub mod otel {
    /// Reconcile duration histogram (s), attribute `controller`.
    pub const RECONCILE_DURATION: &str = "ferrite.operator.reconcile.duration";
    /// Failed reconciles, attributes `controller` and `kind`.
    pub const RECONCILE_ERRORS: &str = "ferrite.operator.reconcile.errors";
    /// Addresses of a pool outside its reserved ranges, attribute `pool`.
    pub const POOL_SIZE: &str = "ferrite.operator.ippool.size";
    /// Addresses of a pool allocated to pods, attribute `pool`.
    pub const POOL_ALLOCATED: &str = "ferrite.operator.ippool.allocated";
    /// Blocks of a pool assigned to nodes, attribute `pool`.
    pub const POOL_BLOCKS: &str = "ferrite.operator.ippool.blocks";
}

/// Histogram buckets of a reconcile, in seconds: 1 ms … ~33 s (a reconcile is a read and
/// maybe a write, milliseconds each).
fn reconcile_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 16).collect()
}

/// One OpenTelemetry gauge of every pool's usage.
struct PoolGauge {
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    value: fn(&PoolUsage) -> u64,
}

const POOL_GAUGES: [PoolGauge; 3] = [
    PoolGauge {
        name: otel::POOL_SIZE,
        description: "Addresses in the pool outside its reserved ranges",
        unit: "{address}",
        value: |u| u.total,
    },
    PoolGauge {
        name: otel::POOL_ALLOCATED,
        description: "Addresses of the pool allocated to pods, as the node agents report them",
        unit: "{address}",
        value: |u| u.allocated,
    },
    PoolGauge {
        name: otel::POOL_BLOCKS,
        description: "Blocks of the pool assigned to nodes",
        unit: "{block}",
        value: |u| u.blocks,
    },
];

/// The OpenTelemetry instruments recorded besides the Prometheus metrics.
struct OtelInstruments {
    reconcile_duration: OtelHistogram<f64>,
    reconcile_errors: OtelCounter<u64>,
}

/// Every metric the operator exports, and which controllers are running.
pub struct Metrics {
    registry: Registry,
    otel: Option<OtelInstruments>,
    /// The last usage of every pool, read by the OpenTelemetry gauges' callbacks.
    pools: Arc<Mutex<BTreeMap<String, PoolUsage>>>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    controller_running: Family<ControllerLabels, Gauge>,
    pool_addresses: Family<PoolLabels, Gauge>,
    pool_allocated: Family<PoolLabels, Gauge>,
    pool_blocks: Family<PoolLabels, Gauge>,
    blocks_added: Counter,
    blocks_released: Counter,
    /// Controller → running; a controller is listed from the moment it starts.
    running: Mutex<BTreeMap<&'static str, bool>>,
    /// A follower waiting for the Lease: ready (it can take over) with no controller started.
    standby: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ferrite_operator");
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(reconcile_buckets())
            });
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let controller_running = Family::<ControllerLabels, Gauge>::default();
        let pool_addresses = Family::<PoolLabels, Gauge>::default();
        let pool_allocated = Family::<PoolLabels, Gauge>::default();
        let pool_blocks = Family::<PoolLabels, Gauge>::default();
        let blocks_added = Counter::default();
        let blocks_released = Counter::default();
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile took, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed (and are retried), by controller and kind of error",
            reconcile_errors.clone(),
        );
        registry.register(
            "controller_running",
            "1 while the controller runs in this process (caches filled), else 0",
            controller_running.clone(),
        );
        registry.register(
            "ippool_addresses",
            "Addresses in the pool outside its reserved ranges (saturates at 2^63-1)",
            pool_addresses.clone(),
        );
        registry.register(
            "ippool_allocated_addresses",
            "Addresses of the pool allocated to pods, as the node agents report them",
            pool_allocated.clone(),
        );
        registry.register(
            "ippool_blocks",
            "Blocks of the pool assigned to nodes",
            pool_blocks.clone(),
        );
        registry.register(
            "node_blocks_added",
            "Blocks added to nodes whose blocks were nearly full, or to nodes without one",
            blocks_added.clone(),
        );
        registry.register(
            "node_blocks_released",
            "Deleted NodeNetworks whose blocks went back to the pools",
            blocks_released.clone(),
        );
        Self {
            registry,
            otel: None,
            pools: Arc::new(Mutex::new(BTreeMap::new())),
            reconcile_duration,
            reconcile_errors,
            controller_running,
            pool_addresses,
            pool_allocated,
            pool_blocks,
            blocks_added,
            blocks_released,
            running: Mutex::new(BTreeMap::new()),
            standby: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let seconds = self.started.elapsed().as_secs_f64();
        self.metrics
            .reconcile_duration
            .get_or_create(&ControllerLabels {
                controller: self.controller.to_owned(),
            })
            .observe(seconds);
        if let Some(otel) = &self.metrics.otel {
            otel.reconcile_duration
                .record(seconds, &[KeyValue::new("controller", self.controller)]);
        }
    }
}

impl Metrics {
    /// The Prometheus metrics, also recorded through OpenTelemetry instruments of `meter`
    /// when given (see the module docs).
    pub fn with_meter(meter: Option<Meter>) -> Self {
        let mut metrics = Self::default();
        let Some(meter) = meter else {
            return metrics;
        };
        let reconcile_duration = meter
            .f64_histogram(otel::RECONCILE_DURATION)
            .with_description("Time one reconcile took, by controller")
            .with_unit("s")
            .with_boundaries(reconcile_buckets())
            .build();
        let reconcile_errors = meter
            .u64_counter(otel::RECONCILE_ERRORS)
            .with_description(
                "Reconciles that failed (and are retried), by controller and kind of error",
            )
            .with_unit("{error}")
            .build();
        for PoolGauge {
            name,
            description,
            unit,
            value,
        } in POOL_GAUGES
        {
            let pools = metrics.pools.clone();
            // The meter provider keeps the callback registered; the handle is not needed.
            let _gauge = meter
                .u64_observable_gauge(name)
                .with_description(description)
                .with_unit(unit)
                .with_callback(move |observer| {
                    let pools = pools.lock().unwrap_or_else(PoisonError::into_inner);
                    for (pool, usage) in pools.iter() {
                        observer.observe(value(usage), &[KeyValue::new("pool", pool.clone())]);
                    }
                })
                .build();
        }
        metrics.otel = Some(OtelInstruments {
            reconcile_duration,
            reconcile_errors,
        });
        metrics
    }

    /// Starts timing one reconcile of `controller`; the time is recorded when the result is
    /// dropped, however the reconcile ends.
    pub fn reconcile_timer(&self, controller: &'static str) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            controller,
            started: Instant::now(),
        }
    }

    /// Counts a failed reconcile of `controller`.
    pub fn reconcile_failed(&self, controller: &'static str, kind: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
        if let Some(otel) = &self.otel {
            otel.reconcile_errors.add(
                1,
                &[
                    KeyValue::new("controller", controller),
                    KeyValue::new("kind", kind.to_owned()),
                ],
            );
        }
    }

    /// Sets the gauges of `pool`.
    pub fn set_pool_usage(&self, pool: &str, usage: &PoolUsage) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pool.to_owned(), usage.clone());
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.pool_addresses
            .get_or_create(&labels)
            .set(gauge(usage.total));
        self.pool_allocated
            .get_or_create(&labels)
            .set(gauge(usage.allocated));
        self.pool_blocks
            .get_or_create(&labels)
            .set(gauge(usage.blocks));
    }

    /// Drops the gauges of a deleted pool.
    pub fn forget_pool(&self, pool: &str) {
        self.pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pool);
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        self.pool_addresses.remove(&labels);
        self.pool_allocated.remove(&labels);
        self.pool_blocks.remove(&labels);
    }

    /// Counts a block added to a node.
    pub fn block_added(&self) {
        self.blocks_added.inc();
    }

    /// Counts a deleted NodeNetwork whose blocks were released.
    pub fn blocks_released(&self) {
        self.blocks_released.inc();
    }

    /// Records that `controller` has started (it is not ready until [`Self::controller_running`]).
    pub fn controller_starting(&self, controller: &'static str) {
        self.set_running(controller, false);
    }

    /// Records that `controller` runs: its caches are filled and it reconciles.
    pub fn controller_running(&self, controller: &'static str) {
        self.set_running(controller, true);
    }

    /// Records that `controller` has stopped.
    pub fn controller_stopped(&self, controller: &'static str) {
        self.set_running(controller, false);
    }

    fn set_running(&self, controller: &'static str, running: bool) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(controller, running);
        self.controller_running
            .get_or_create(&ControllerLabels {
                controller: controller.to_owned(),
            })
            .set(i64::from(running));
    }

    /// Records that this process waits for the Lease before it starts its controllers.
    pub fn standing_by(&self) {
        self.standby
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Ok` when every started controller runs and at least one was started (or, for a
    /// follower waiting for the Lease, none was); otherwise the reason, for `/readyz`.
    pub fn readiness(&self) -> Result<(), String> {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if running.is_empty() {
            if self.standby.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            return Err("no controller has started yet".to_owned());
        }
        let waiting: Vec<&str> = running
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(name, _)| *name)
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "controllers not running: {} (filling their caches, or stopped; see the operator's log)",
                waiting.join(", ")
            ))
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The router of `/healthz`, `/readyz` and `/metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(metrics)
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

/// Binds the metrics endpoint (before the controllers start, so a taken port fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot bind the metrics endpoint on {addr}: {e}; choose another with --metrics-addr"
            ),
        )
    })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric_with_its_labels() {
        let m = Metrics::default();
        drop(m.reconcile_timer(controllers::IP_POOL));
        m.reconcile_failed(controllers::NODE_NETWORK, "no_free_block");
        m.set_pool_usage(
            "default-ipv4",
            &PoolUsage {
                total: 65280,
                allocated: 12,
                blocks: 3,
            },
        );
        m.block_added();
        m.blocks_released();
        m.controller_running(controllers::IP_POOL);
        let text = m.encode();
        for expected in [
            r#"ferrite_operator_reconcile_duration_seconds_count{controller="ippool"} 1"#,
            r#"ferrite_operator_reconcile_errors_total{controller="nodenetwork",kind="no_free_block"} 1"#,
            r#"ferrite_operator_controller_running{controller="ippool"} 1"#,
            r#"ferrite_operator_ippool_addresses{pool="default-ipv4"} 65280"#,
            r#"ferrite_operator_ippool_allocated_addresses{pool="default-ipv4"} 12"#,
            r#"ferrite_operator_ippool_blocks{pool="default-ipv4"} 3"#,
            "ferrite_operator_node_blocks_added_total 1",
            "ferrite_operator_node_blocks_released_total 1",
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_deleted_pool_leaves_no_gauges_behind() {
        let m = Metrics::default();
        m.set_pool_usage("gone", &PoolUsage::default());
        m.forget_pool("gone");
        assert!(!m.encode().contains(r#"pool="gone""#));
    }

    #[test]
    fn ready_only_when_every_started_controller_runs() {
        let m = Metrics::default();
        assert!(m.readiness().is_err());
        m.controller_starting(controllers::NODE_NETWORK);
        m.controller_running(controllers::IP_POOL);
        let why = m.readiness().unwrap_err();
        assert!(why.contains("nodenetwork"), "{why}");
        m.controller_running(controllers::NODE_NETWORK);
        assert_eq!(m.readiness(), Ok(()));
        m.controller_stopped(controllers::IP_POOL);
        assert!(m.readiness().is_err());
    }

    #[test]
    fn a_follower_waiting_for_the_lease_is_ready_until_it_leads() {
        let m = Metrics::default();
        m.standing_by();
        assert_eq!(m.readiness(), Ok(()), "it can take over: it is available");
        m.controller_starting(controllers::CLUSTER_NETWORK);
        assert!(m.readiness().is_err(), "leading, its controllers must run");
    }

    /// GET `path` over a real loopback connection; the status code and the body. (Plain
    /// std IO on a blocking thread: the crate's Tokio has no io-util.)
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let request = format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n");
        let reply = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            reply
        })
        .await
        .unwrap();
        let status = reply[9..12].parse().unwrap();
        let body = reply.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn the_endpoints_answer_over_http() {
        let metrics = Arc::new(Metrics::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(
            listener,
            router(metrics.clone()),
            std::future::pending(),
        ));

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("no controller has started"), "{body}");
        metrics.controller_running(controllers::IP_POOL);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains(r#"ferrite_operator_controller_running{controller="ippool"} 1"#),
            "{body}"
        );
        server.abort();
    }
}
