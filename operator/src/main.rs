//! `ferrite-operator`: thin entry point; the logic lives in the library.

use anyhow::Context as _;
use clap::Parser;
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
        nodenetwork::run(client, settings, shutdown).await;
        info!("ferrite-operator stopped");
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Args::parse().run().await
}
