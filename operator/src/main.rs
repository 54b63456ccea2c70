//! `ferrite-operator`: thin entry point; the logic lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferrite_operator::agentset::AgentDefaults;
use ferrite_operator::clusternetwork;
use ferrite_operator::metrics::{self, Metrics};
use ferrite_operator::nodenetwork::{self, Settings};
use ferrite_operator::{ippool, lifecycle, telemetry};
use futures::FutureExt as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Ferrite's operator: gives every node a NodeNetwork with its address and a pod address
/// block carved from the IPPools. Logging follows RUST_LOG (default: info).
#[derive(Parser)]
#[command(version = ferrite_operator::VERSION)]
struct Args {
    /// How many nodes are reconciled at once (0: no limit). Bounds the requests in flight
    /// to the apiserver; block choices are serialized regardless.
    #[arg(long, env = "FERRITE_OPERATOR_CONCURRENCY", default_value_t = 32)]
    concurrency: u16,
    /// The operator's namespace: where the agent's DaemonSet and ServiceAccount go.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrite-system")]
    namespace: String,
    /// The agent image when the ClusterNetwork names none.
    #[arg(long, env = "FERRITE_AGENT_IMAGE", default_value_t = default_agent_image())]
    agent_image: String,
    /// This replica's name, for Events (the pod name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Where /metrics (Prometheus), /healthz and /readyz are served.
    #[arg(
        long,
        env = "FERRITE_OPERATOR_METRICS_ADDR",
        default_value = "0.0.0.0:9894"
    )]
    metrics_addr: SocketAddr,
    /// Seconds the agent of a deleted node may stay silent before the node's blocks are
    /// released although it last reported addresses in use (above the agent's 60 s heartbeat).
    #[arg(long, env = "FERRITE_OPERATOR_RELEASE_GRACE_SECONDS", default_value_t = lifecycle::DEFAULT_RELEASE_GRACE.as_secs())]
    release_grace_seconds: u64,
    /// OTLP/HTTP base URL of an OpenTelemetry collector (e.g. http://otel-collector:4318):
    /// traces and metrics are exported to its /v1/traces and /v1/metrics. Unset: nothing.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

fn default_agent_image() -> String {
    format!(
        "ghcr.io/ferrite-dev/ferrite-agent:{}",
        ferrite_operator::VERSION
    )
}

impl Args {
    async fn run(self) -> anyhow::Result<()> {
        let telemetry = telemetry::init(&telemetry::Config::new(
            self.otlp_endpoint.clone(),
            self.instance.clone(),
        ))?;
        info!(
            version = ferrite_operator::VERSION,
            "ferrite-operator starting"
        );

        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let shutdown = async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM: finishing running reconciles, then exiting"),
                _ = interrupt.recv() => info!("SIGINT: finishing running reconciles, then exiting"),
            }
        };

        let client = kube::Client::try_default().await.context(
            "cannot build a Kubernetes client: run in a pod with a service account, or set KUBECONFIG",
        )?;
        let shutdown = shutdown.shared();
        let metrics = Arc::new(Metrics::with_meter(telemetry.meter()));
        let listener = metrics::bind(self.metrics_addr).await?;
        info!(addr = %self.metrics_addr, "serving /metrics, /healthz and /readyz");
        let serving = metrics::serve(listener, metrics::router(metrics.clone()), shutdown.clone());
        tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
        let settings = Settings {
            concurrency: self.concurrency,
            release_grace: Duration::from_secs(self.release_grace_seconds),
        };
        let pool_settings = ippool::Settings {
            concurrency: self.concurrency,
        };
        let cluster_network = clusternetwork::Settings {
            agent: AgentDefaults {
                namespace: self.namespace,
                image: self.agent_image,
            },
            instance: self.instance,
        };
        tokio::join!(
            nodenetwork::run(client.clone(), settings, metrics.clone(), shutdown.clone()),
            ippool::run(
                client.clone(),
                pool_settings,
                metrics.clone(),
                shutdown.clone()
            ),
            clusternetwork::run(client, cluster_network, metrics, shutdown),
        );
        info!("ferrite-operator stopped");
        // Exports the last spans and metrics; blocking, hence off the runtime's threads.
        tokio::task::spawn_blocking(move || telemetry.shutdown())
            .await
            .context("the OpenTelemetry shutdown panicked")??;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Args::parse().run().await
}
