//! The operator's telemetry exported over real OTLP/HTTP to an in-process receiver on
//! loopback that decodes the protobuf requests as a collector would.
//!
//! One test per file: it installs the process-wide tracing subscriber.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use ferrite_crds::PoolUsage;
use ferrite_operator::metrics::{Metrics, controllers, otel};
use ferrite_operator::telemetry;
use k8s_openapi::api::core::v1::Node;
use kube::api::ObjectMeta;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use tracing::Instrument as _;

/// What the receiver got.
#[derive(Default)]
struct Received {
    traces: Vec<ExportTraceServiceRequest>,
    metrics: Vec<ExportMetricsServiceRequest>,
    content_types: Vec<String>,
}

type Shared = Arc<Mutex<Received>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Received> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

fn protobuf(
    status: StatusCode,
    body: Vec<u8>,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    (
        status,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        body,
    )
}

async fn traces(
    State(received): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            let mut received = lock(&received);
            received.content_types.push(content_type(&headers));
            received.traces.push(request);
            protobuf(
                StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(error) => protobuf(StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
    }
}

async fn metrics(
    State(received): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    match ExportMetricsServiceRequest::decode(body) {
        Ok(request) => {
            let mut received = lock(&received);
            received.content_types.push(content_type(&headers));
            received.metrics.push(request);
            protobuf(
                StatusCode::OK,
                ExportMetricsServiceResponse::default().encode_to_vec(),
            )
        }
        Err(error) => protobuf(StatusCode::BAD_REQUEST, error.to_string().into_bytes()),
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1; its address and what it received.
async fn receiver() -> (SocketAddr, Shared, tokio::task::JoinHandle<()>) {
    let received = Shared::default();
    let router = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, received, server)
}

fn string(value: &Option<AnyValue>) -> Option<&str> {
    match value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string(&kv.value))
}

fn service_name(resource: &Option<Resource>) -> Option<&str> {
    attribute(&resource.as_ref()?.attributes, "service.name")
}

fn node(name: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_spans_and_metrics_reach_the_collector_when_the_operator_shuts_down() {
    let (addr, received, server) = receiver().await;
    let config = telemetry::Config {
        // A trailing slash, as users write it: the paths are appended per the spec.
        endpoint: Some(format!("http://{addr}/")),
        instance: Some("ferrite-operator-0".to_owned()),
        // Longer than the test: what arrives was flushed by the shutdown.
        metrics_interval: Duration::from_secs(3600),
    };
    let guard = telemetry::init(&config).unwrap();
    assert!(guard.is_exporting());
    let metrics = Arc::new(Metrics::with_meter(guard.meter()));

    let mut reconcile = telemetry::traced(
        controllers::NODE_NETWORK,
        |_node: Arc<Node>, metrics: Arc<Metrics>| async move {
            let _timer = metrics.reconcile_timer(controllers::NODE_NETWORK);
            // Like kube's per-request span, under the reconcile.
            let request = tracing::debug_span!(target: "kube_client", "HTTP");
            tokio::time::sleep(Duration::from_millis(5))
                .instrument(request)
                .await;
            // Below the exported level: not sent.
            tracing::debug_span!("too_detailed").in_scope(|| {});
            metrics.reconcile_failed(controllers::NODE_NETWORK, "conflict");
        },
    );
    reconcile(Arc::new(node("node-a")), metrics.clone()).await;
    metrics.set_pool_usage(
        "default-ipv4",
        &PoolUsage {
            total: 65280,
            allocated: 12,
            blocks: 3,
        },
    );

    tokio::task::spawn_blocking(move || guard.shutdown())
        .await
        .unwrap()
        .unwrap();

    let received = lock(&received);
    assert!(
        received
            .content_types
            .iter()
            .all(|c| c == "application/x-protobuf"),
        "{:?}",
        received.content_types
    );

    // Spans.
    let spans: Vec<(&Option<Resource>, &Span)> = received
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(move |ss| ss.spans.iter().map(move |s| (&rs.resource, s)))
        })
        .collect();
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let (resource, reconcile) = spans
        .iter()
        .find(|(_, s)| s.name == telemetry::RECONCILE_SPAN)
        .unwrap_or_else(|| panic!("no reconcile span among {names:?}"));
    assert_eq!(
        attribute(&reconcile.attributes, "controller"),
        Some(controllers::NODE_NETWORK)
    );
    assert_eq!(attribute(&reconcile.attributes, "object"), Some("node-a"));
    assert_eq!(service_name(resource), Some(telemetry::SERVICE_NAME));
    let resource_attributes = &resource.as_ref().unwrap().attributes;
    assert_eq!(
        attribute(resource_attributes, "service.instance.id"),
        Some("ferrite-operator-0")
    );
    assert_eq!(
        attribute(resource_attributes, "service.version"),
        Some(ferrite_operator::VERSION)
    );
    let (_, request) = spans
        .iter()
        .find(|(_, s)| s.name == "HTTP")
        .unwrap_or_else(|| panic!("no kube_client span among {names:?}"));
    assert_eq!(request.parent_span_id, reconcile.span_id);
    assert_eq!(request.trace_id, reconcile.trace_id);
    assert!(!names.contains(&"too_detailed"), "{names:?}");

    // Metrics.
    let metrics: Vec<(&Option<Resource>, &Metric)> = received
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| {
            rm.scope_metrics
                .iter()
                .flat_map(move |sm| sm.metrics.iter().map(move |m| (&rm.resource, m)))
        })
        .collect();
    let names: Vec<&str> = metrics.iter().map(|(_, m)| m.name.as_str()).collect();
    let metric = |name: &str| -> &Metric {
        let (resource, metric) = metrics
            .iter()
            .find(|(_, m)| m.name == name)
            .unwrap_or_else(|| panic!("no {name} among {names:?}"));
        assert_eq!(service_name(resource), Some(telemetry::SERVICE_NAME));
        metric
    };

    let duration = metric(otel::RECONCILE_DURATION);
    assert_eq!(duration.unit, "s");
    let Some(metric::Data::Histogram(histogram)) = &duration.data else {
        panic!(
            "{} is not a histogram: {duration:?}",
            otel::RECONCILE_DURATION
        );
    };
    let [point] = histogram.data_points.as_slice() else {
        panic!("one data point expected: {histogram:?}");
    };
    assert_eq!(point.count, 1);
    assert!(point.sum.unwrap_or(0.0) >= 0.005, "{point:?}");
    assert_eq!(
        attribute(&point.attributes, "controller"),
        Some(controllers::NODE_NETWORK)
    );

    let errors = metric(otel::RECONCILE_ERRORS);
    let Some(metric::Data::Sum(sum)) = &errors.data else {
        panic!("{} is not a sum: {errors:?}", otel::RECONCILE_ERRORS);
    };
    assert!(sum.is_monotonic);
    let [point] = sum.data_points.as_slice() else {
        panic!("one data point expected: {sum:?}");
    };
    assert_eq!(
        point.value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
    );
    assert_eq!(
        attribute(&point.attributes, "controller"),
        Some(controllers::NODE_NETWORK)
    );
    assert_eq!(attribute(&point.attributes, "kind"), Some("conflict"));

    for (name, expected) in [
        (otel::POOL_SIZE, 65280),
        (otel::POOL_ALLOCATED, 12),
        (otel::POOL_BLOCKS, 3),
    ] {
        let gauge = metric(name);
        let Some(metric::Data::Gauge(gauge)) = &gauge.data else {
            panic!("{name} is not a gauge: {gauge:?}");
        };
        let [point] = gauge.data_points.as_slice() else {
            panic!("one data point expected: {gauge:?}");
        };
        assert_eq!(
            point.value,
            Some(
                opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(expected)
            ),
            "{name}"
        );
        assert_eq!(attribute(&point.attributes, "pool"), Some("default-ipv4"));
    }
    drop(received);
    server.abort();
}
