//! `ferrite-operator`: thin entry point; the logic lives in the library.

use anyhow::Context as _;
use clap::Parser;
use ferrite_operator::agentset::AgentDefaults;
use ferrite_operator::clusternetwork;
use ferrite_operator::nodenetwork::{self, Settings};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;
use tracing_subscriber::EnvFilter;

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
}

fn default_agent_image() -> String {
    format!(
        "ghcr.io/ferrite-dev/ferrite-agent:{}",
        ferrite_operator::VERSION
    )
}

impl Args {
    async fn run(self) -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
            )
            .init();
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
        let settings = Settings {
            concurrency: self.concurrency,
        };
        let cluster_network = clusternetwork::Settings {
            agent: AgentDefaults {
                namespace: self.namespace,
                image: self.agent_image,
            },
            instance: self.instance,
        };
        let shutdown = futures::FutureExt::shared(shutdown);
        tokio::join!(
            nodenetwork::run(client.clone(), settings, shutdown.clone()),
            clusternetwork::run(client, cluster_network, shutdown),
        );
        info!("ferrite-operator stopped");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Args::parse().run().await
}
