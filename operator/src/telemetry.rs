//! The operator's logs, traces and OpenTelemetry metrics: [`init`] installs the global
//! `tracing` subscriber — always the log lines on stderr (filtered by `RUST_LOG`, default
//! `info`), and, when an OTLP endpoint is configured, a layer that exports the spans over
//! OTLP/HTTP (protobuf) — and returns a [`Guard`] owning the OpenTelemetry providers, whose
//! [`Guard::meter`] feeds [`crate::metrics::Metrics::with_meter`].
//!
//! Endpoints follow the OTLP exporter specification: the configured endpoint
//! (`--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`) is a base URL to which `/v1/traces`
//! and `/v1/metrics` are appended; `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` and
//! `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, when set, are used as they are. Without an
//! endpoint nothing is exported and no background thread or task is started.
//!
//! What is exported:
//! - spans: every `reconcile` span ([`reconcile_span`], attributes `controller` and
//!   `object`) with the spans under it, at `info` and above, plus `kube_client`'s `debug`
//!   spans (one per apiserver request) — independent of `RUST_LOG`, which filters the logs;
//! - metrics: those [`crate::metrics`] lists under "OpenTelemetry", every
//!   [`Config::metrics_interval`] (default 10 s) and once more at shutdown;
//! - resource: `service.name=ferrite-operator`, `service.version`, and
//!   `service.instance.id` (the pod name) when known.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{ExporterBuildError, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The `service.name` of the operator's telemetry.
pub const SERVICE_NAME: &str = "ferrite-operator";
/// The instrumentation scope of the operator's spans and metrics.
pub const SCOPE: &str = "ferrite-operator";
/// How often metrics are exported unless configured otherwise.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
/// The name of every controller's reconcile span.
pub const RECONCILE_SPAN: &str = "reconcile";

/// The signal-specific endpoint variables of the OTLP specification, used as they are.
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const TRACES_PATH: &str = "/v1/traces";
const METRICS_PATH: &str = "/v1/metrics";

/// Failures to set up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not an http(s) URL.
    #[error(
        "the OTLP endpoint {endpoint:?} is not an http:// or https:// URL; set --otlp-endpoint \
         (OTEL_EXPORTER_OTLP_ENDPOINT) to the collector's OTLP/HTTP base URL, e.g. \
         http://otel-collector:4318, or leave it empty to export nothing"
    )]
    Endpoint {
        /// The configured value.
        endpoint: String,
    },
    /// The OTLP exporter of one signal could not be built.
    #[error("cannot build the OTLP {signal} exporter for {endpoint}: {source}")]
    Exporter {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// The signal's URL.
        endpoint: String,
        /// Why.
        #[source]
        source: ExporterBuildError,
    },
    /// The exporter's private Tokio runtime could not be started.
    #[error("cannot start the runtime of the OTLP {signal} exporter: {source}")]
    Runtime {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another global `tracing` subscriber was installed first.
    #[error("cannot install the tracing subscriber: {source}")]
    Subscriber {
        /// Why.
        #[source]
        source: tracing_subscriber::util::TryInitError,
    },
    /// Flushing or shutting down a provider failed (the last spans or metrics may be lost).
    #[error("cannot flush the OTLP {signal} exporter at shutdown: {source}")]
    Shutdown {
        /// `traces` or `metrics`.
        signal: &'static str,
        /// Why.
        #[source]
        source: OTelSdkError,
    },
}

/// What to export, and as whom.
#[derive(Clone, Debug)]
pub struct Config {
    /// The OTLP/HTTP base URL; `None` (or empty): export nothing.
    pub endpoint: Option<String>,
    /// `service.instance.id`: the pod name.
    pub instance: Option<String>,
    /// How often metrics are exported.
    pub metrics_interval: Duration,
}

impl Config {
    /// Exports to `endpoint` (if any) as `instance`, metrics every 10 s.
    pub fn new(endpoint: Option<String>, instance: Option<String>) -> Self {
        Self {
            endpoint,
            instance,
            metrics_interval: DEFAULT_METRICS_INTERVAL,
        }
    }
}

/// The URLs the spans and the metrics go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Where spans are POSTed.
    pub traces: String,
    /// Where metrics are POSTed.
    pub metrics: String,
}

/// The signal URLs of the base `endpoint` per the OTLP exporter specification: the base
/// gets `/v1/traces` and `/v1/metrics` appended; a signal-specific URL (from its
/// `OTEL_EXPORTER_OTLP_*_ENDPOINT` variable) is used as it is. `None` when no base is set.
pub fn endpoints(
    endpoint: Option<&str>,
    traces: Option<&str>,
    metrics: Option<&str>,
) -> Result<Option<Endpoints>, Error> {
    let Some(base) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    let url = |specific: Option<&str>, path: &str| -> Result<String, Error> {
        let url = match specific.map(str::trim).filter(|e| !e.is_empty()) {
            Some(specific) => specific.to_owned(),
            None => format!("{}{path}", base.trim_end_matches('/')),
        };
        if url.starts_with("http://") || url.starts_with("https://") {
            Ok(url)
        } else {
            Err(Error::Endpoint { endpoint: url })
        }
    };
    Ok(Some(Endpoints {
        traces: url(traces, TRACES_PATH)?,
        metrics: url(metrics, METRICS_PATH)?,
    }))
}

/// The resource every span and metric carries.
pub fn resource(instance: Option<&str>) -> Resource {
    let mut builder = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", crate::VERSION));
    if let Some(instance) = instance.filter(|i| !i.is_empty()) {
        builder = builder.with_attribute(KeyValue::new("service.instance.id", instance.to_owned()));
    }
    builder.build()
}

/// The span one reconcile of `object` by `controller` runs in (see [`RECONCILE_SPAN`]).
pub fn reconcile_span(controller: &str, object: &str) -> tracing::Span {
    tracing::info_span!("reconcile", controller, object)
}

/// Runs `reconcile` in the [`reconcile_span`] of `controller` and `object`.
pub fn in_reconcile_span<F: Future>(
    controller: &str,
    object: &str,
    reconcile: F,
) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(reconcile, reconcile_span(controller, object))
}

/// Wraps a controller's `reconcile` so that each call runs in the [`reconcile_span`] of
/// `controller` and the object's name: `.run(traced(controllers::IP_POOL, reconcile), ..)`.
pub fn traced<K, C, F>(
    controller: &'static str,
    reconcile: impl Fn(Arc<K>, Arc<C>) -> F,
) -> impl FnMut(Arc<K>, Arc<C>) -> tracing::instrument::Instrumented<F>
where
    K: kube::Resource,
    F: Future,
{
    move |object, context| {
        let name = kube::ResourceExt::name_any(object.as_ref());
        in_reconcile_span(controller, &name, reconcile(object, context))
    }
}

/// The OpenTelemetry providers while exporting; shuts them down (flushing what is left)
/// when dropped or on [`Guard::shutdown`].
#[derive(Debug, Default)]
pub struct Guard {
    providers: Option<Providers>,
}

#[derive(Debug)]
struct Providers {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl Guard {
    /// Whether anything is exported.
    pub fn is_exporting(&self) -> bool {
        self.providers.is_some()
    }

    /// The operator's meter when exporting, for [`crate::metrics::Metrics::with_meter`].
    pub fn meter(&self) -> Option<Meter> {
        self.providers.as_ref().map(|p| p.meter.meter(SCOPE))
    }

    /// The layer exporting spans, when exporting (`None` is a layer that does nothing).
    pub fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S> + use<S>>
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    {
        self.providers.as_ref().map(|p| {
            // NB: a fixed filter, not RUST_LOG: traces want kube's per-request spans even
            // when the logs stay at info.
            let spans = Targets::new()
                .with_default(LevelFilter::INFO)
                .with_target("kube_client", LevelFilter::DEBUG)
                // The export's own machinery is never traced into itself.
                .with_target("opentelemetry", LevelFilter::OFF)
                .with_target("hyper", LevelFilter::OFF)
                .with_target("reqwest", LevelFilter::OFF);
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer.tracer(SCOPE))
                .with_filter(spans)
        })
    }

    /// Exports what is left and stops the exporters. Blocks until done (bounded by the
    /// export timeout): from async code call it on a blocking thread.
    pub fn shutdown(mut self) -> Result<(), Error> {
        match self.providers.take() {
            Some(providers) => providers.shutdown(),
            None => Ok(()),
        }
    }
}

impl Providers {
    fn shutdown(self) -> Result<(), Error> {
        // Both are shut down even when the first fails.
        let traces = self.tracer.shutdown().map_err(|source| Error::Shutdown {
            signal: "traces",
            source,
        });
        let metrics = self.meter.shutdown().map_err(|source| Error::Shutdown {
            signal: "metrics",
            source,
        });
        traces.and(metrics)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(providers) = self.providers.take()
            && let Err(error) = providers.shutdown()
        {
            tracing::warn!(%error, "OpenTelemetry shutdown");
        }
    }
}

/// Builds the providers of `config` without installing anything globally; a guard that
/// exports nothing (and started nothing) when no endpoint is configured.
pub fn providers(config: &Config) -> Result<Guard, Error> {
    let env = |name: &str| std::env::var(name).ok();
    let Some(endpoints) = endpoints(
        config.endpoint.as_deref(),
        env(TRACES_ENDPOINT_VAR).as_deref(),
        env(METRICS_ENDPOINT_VAR).as_deref(),
    )?
    else {
        return Ok(Guard::default());
    };
    let resource = resource(config.instance.as_deref());

    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoints.traces.clone())
        .build()
        .map_err(|source| Error::Exporter {
            signal: "traces",
            endpoint: endpoints.traces.clone(),
            source,
        })?;
    let tracer = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(OnOwnRuntime::new("traces", spans)?)
        .build();

    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(endpoints.metrics.clone())
        .build()
        .map_err(|source| Error::Exporter {
            signal: "metrics",
            endpoint: endpoints.metrics.clone(),
            source,
        })?;
    let reader = PeriodicReader::builder(OnOwnRuntime::new("metrics", metrics)?)
        .with_interval(config.metrics_interval)
        .build();
    let meter = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();

    Ok(Guard {
        providers: Some(Providers { tracer, meter }),
    })
}

/// Installs the global subscriber (logs per `RUST_LOG`, default `info`; spans exported when
/// `config` has an endpoint) and the global OpenTelemetry providers. Once per process.
pub fn init(config: &Config) -> Result<Guard, Error> {
    let guard = providers(config)?;
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(logs))
        .with(guard.layer())
        .try_init()
        .map_err(|source| Error::Subscriber { source })?;
    if let Some(providers) = &guard.providers {
        opentelemetry::global::set_tracer_provider(providers.tracer.clone());
        opentelemetry::global::set_meter_provider(providers.meter.clone());
    }
    Ok(guard)
}

/// An exporter run on a private current-thread Tokio runtime.
///
/// NB: the SDK's `BatchSpanProcessor` and `PeriodicReader` export from their own threads
/// with a plain `block_on`, but the OTLP exporter's HTTP client (async `reqwest`) needs a
/// Tokio reactor; the SDK's Tokio-driven processors are behind experimental features. A
/// runtime driven by the exporting thread itself also keeps shutdown from deadlocking when
/// it is called on the operator's runtime.
#[derive(Debug)]
struct OnOwnRuntime<E> {
    inner: E,
    /// `Some` until dropped (see `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl<E> OnOwnRuntime<E> {
    fn new(signal: &'static str, inner: E) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Runtime { signal, source })?;
        Ok(Self {
            inner,
            runtime: Some(runtime),
        })
    }

    fn block_on(&self, work: impl Future<Output = OTelSdkResult>) -> OTelSdkResult {
        if tokio::runtime::Handle::try_current().is_ok() {
            // The SDK exports from its own threads; a runtime cannot block inside another.
            return Err(OTelSdkError::InternalFailure(
                "the OTLP export was called on a Tokio runtime thread".to_owned(),
            ));
        }
        match &self.runtime {
            Some(runtime) => runtime.block_on(work),
            None => Err(OTelSdkError::AlreadyShutdown),
        }
    }
}

impl<E> Drop for OnOwnRuntime<E> {
    fn drop(&mut self) {
        // The last owner may be dropped on the operator's runtime, where a blocking
        // runtime shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl<E: SpanExporter> SpanExporter for OnOwnRuntime<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.block_on(self.inner.export(batch)))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for OnOwnRuntime<E> {
    fn export(&self, metrics: &ResourceMetrics) -> impl Future<Output = OTelSdkResult> + Send {
        std::future::ready(self.block_on(self.inner.export(metrics)))
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_endpoint_gets_the_signal_paths_appended() {
        let expected = Endpoints {
            traces: "http://collector:4318/v1/traces".to_owned(),
            metrics: "http://collector:4318/v1/metrics".to_owned(),
        };
        for base in ["http://collector:4318", "http://collector:4318/"] {
            assert_eq!(
                endpoints(Some(base), None, None).unwrap(),
                Some(expected.clone())
            );
        }
        assert_eq!(
            endpoints(Some("https://otel.example/prefix"), None, None)
                .unwrap()
                .unwrap()
                .metrics,
            "https://otel.example/prefix/v1/metrics"
        );
    }

    #[test]
    fn a_signal_specific_endpoint_is_used_as_it_is() {
        let endpoints = endpoints(
            Some("http://collector:4318"),
            Some("http://traces.example:4318/custom"),
            Some(""),
        )
        .unwrap()
        .unwrap();
        assert_eq!(endpoints.traces, "http://traces.example:4318/custom");
        assert_eq!(endpoints.metrics, "http://collector:4318/v1/metrics");
    }

    #[test]
    fn no_or_an_empty_endpoint_exports_nothing() {
        assert_eq!(endpoints(None, None, None).unwrap(), None);
        assert_eq!(endpoints(Some("  "), None, None).unwrap(), None);
    }

    #[test]
    fn an_endpoint_without_a_scheme_is_rejected_with_what_to_set() {
        let error = endpoints(Some("collector:4318"), None, None).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("collector:4318/v1/traces"), "{message}");
        assert!(message.contains("--otlp-endpoint"), "{message}");
    }

    #[test]
    fn without_an_endpoint_no_provider_is_started() {
        let guard = providers(&Config::new(None, Some("operator-0".to_owned()))).unwrap();
        assert!(!guard.is_exporting());
        assert!(guard.meter().is_none());
        assert!(guard.layer::<tracing_subscriber::Registry>().is_none());
        guard.shutdown().unwrap();
    }

    #[test]
    fn the_resource_names_the_service_its_version_and_the_pod() {
        let get = |r: &Resource, key: &'static str| r.get(&key.into()).map(|v| v.to_string());
        let r = resource(Some("ferrite-operator-7d9f-abcde"));
        assert_eq!(get(&r, "service.name").as_deref(), Some(SERVICE_NAME));
        assert_eq!(get(&r, "service.version").as_deref(), Some(crate::VERSION));
        assert_eq!(
            get(&r, "service.instance.id").as_deref(),
            Some("ferrite-operator-7d9f-abcde")
        );
        assert_eq!(get(&resource(None), "service.instance.id"), None);
    }
}
