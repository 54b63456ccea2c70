//! `ferrite-operator`: thin entry point; the logic lives in the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use ferrite_operator::agentset::AgentDefaults;
use ferrite_operator::leader::{self, Timing};
use ferrite_operator::metrics::{self, Metrics};
use ferrite_operator::{
    clusternetwork, controllers, ippool, lifecycle, nodenetwork, shutdown, telemetry, uninstall,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

/// Ferrite's operator: gives every node a NodeNetwork with its address and pod address blocks
/// carved from the IPPools, keeps the IPPools' status, and runs the node agent from the
/// ClusterNetwork. Logging follows RUST_LOG (default: info).
#[derive(Parser)]
#[command(version = ferrite_operator::VERSION)]
struct Args {
    /// How many nodes are reconciled at once (0: no limit). Bounds the requests in flight
    /// to the apiserver; block choices are serialized regardless.
    #[arg(long, env = "FERRITE_OPERATOR_CONCURRENCY", default_value_t = 32)]
    concurrency: u16,
    /// The operator's namespace: where the agent's DaemonSet and ServiceAccount go.
    #[arg(long, env = "POD_NAMESPACE", default_value = leader::DEFAULT_NAMESPACE)]
    namespace: String,
    /// The agent image when the ClusterNetwork names none.
    #[arg(long, env = "FERRITE_AGENT_IMAGE", default_value_t = default_agent_image())]
    agent_image: String,
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
    #[command(flatten)]
    election: Election,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Delete the ClusterNetwork and wait until the running operator has cleaned every node and
    /// it is gone: what the Helm chart's pre-delete hook runs on `helm uninstall`.
    Uninstall {
        /// Give up after this long (e.g. 10m).
        #[arg(long, default_value = "10m", value_parser = parse_timeout)]
        timeout: Duration,
    },
}

/// `90s`, `10m`: whole seconds or minutes.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 90s or 10m");
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(bad()),
    }
}

fn default_agent_image() -> String {
    format!(
        "ghcr.io/ferrite-dev/ferrite-agent:{}",
        ferrite_operator::VERSION
    )
}

/// Leader election: only the holder of the Lease runs the controllers.
#[derive(clap::Args)]
struct Election {
    /// Run the controllers only while holding the Lease. `false` runs them at once: for
    /// tests and development with ONE process only, since two could hand out a block twice.
    #[arg(
        long,
        env = "FERRITE_LEADER_ELECT",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    leader_elect: bool,
    /// The Lease's namespace: the operator's own.
    #[arg(long, env = "POD_NAMESPACE", default_value = leader::DEFAULT_NAMESPACE)]
    lease_namespace: String,
    /// The Lease's name.
    #[arg(long, env = "FERRITE_LEASE_NAME", default_value = leader::LEASE_NAME)]
    lease_name: String,
    /// This process's identity in the Lease, unique among the replicas (default: the
    /// hostname and the process ID).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long a Lease lasts after its last renewal: a dead leader is replaced after this
    /// long; the leader renews every third of it and stops leading when it could not renew
    /// for four fifths of it. Whole seconds, 3s to 5m.
    #[arg(
        long,
        env = "FERRITE_LEASE_DURATION",
        default_value = leader::DEFAULT_LEASE_DURATION,
        value_parser = leader::parse_duration
    )]
    lease_duration: Duration,
}

impl Election {
    fn settings(&self) -> anyhow::Result<leader::Settings> {
        let identity = match &self.identity {
            Some(identity) => identity.clone(),
            None => {
                let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
                leader::default_identity(hostname.as_deref(), std::process::id())
            }
        };
        Ok(leader::Settings {
            name: self.lease_name.clone(),
            namespace: self.lease_namespace.clone(),
            identity,
            timing: Timing::new(self.lease_duration)?,
        })
    }
}

impl Args {
    async fn run(self) -> anyhow::Result<()> {
        let telemetry = telemetry::init(&telemetry::Config::new(
            self.otlp_endpoint.clone(),
            self.election.identity.clone(),
        ))?;
        info!(
            version = ferrite_operator::VERSION,
            "ferrite-operator starting"
        );

        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let stop = async move {
            tokio::select! {
                _ = terminate.recv() => info!("SIGTERM: finishing running reconciles, then exiting"),
                _ = interrupt.recv() => info!("SIGINT: finishing running reconciles, then exiting"),
            }
        };

        let client = kube::Client::try_default().await.context(
            "cannot build a Kubernetes client: run in a pod with a service account, or set KUBECONFIG",
        )?;
        let metrics = Arc::new(Metrics::with_meter(telemetry.meter()));
        let listener = metrics::bind(self.metrics_addr).await?;
        info!(addr = %self.metrics_addr, "serving /metrics, /healthz and /readyz");
        let (stop_metrics, metrics_stopped) = shutdown::channel();
        let serving = metrics::serve(listener, metrics::router(metrics.clone()), metrics_stopped);
        let serving = tokio::spawn(async move {
            if let Err(error) = serving.await {
                tracing::error!(%error, "the metrics endpoint stopped");
            }
        });
        let settings = controllers::Settings {
            node_network: nodenetwork::Settings {
                concurrency: self.concurrency,
                release_grace: Duration::from_secs(self.release_grace_seconds),
            },
            ip_pool: ippool::Settings {
                concurrency: self.concurrency,
            },
            cluster_network: clusternetwork::Settings {
                agent: AgentDefaults {
                    namespace: self.namespace.clone(),
                    image: self.agent_image.clone(),
                },
                instance: self.election.identity.clone(),
            },
        };
        let result = if self.election.leader_elect {
            let election = self.election.settings()?;
            metrics.standing_by();
            let controllers_client = client.clone();
            leader::run(client, &election, stop, move |shutdown| {
                controllers::run(controllers_client, settings, metrics, shutdown)
            })
            .await
        } else {
            info!("leader election is off (--leader-elect=false): running the controllers now");
            let (trigger, signal) = shutdown::channel();
            let controllers = controllers::run(client, settings, metrics, signal);
            tokio::pin!(controllers);
            tokio::select! {
                () = &mut controllers => {}
                () = stop => {
                    trigger.fire();
                    controllers.await;
                }
            }
            Ok(())
        };
        stop_metrics.fire();
        let _ = serving.await;
        info!("ferrite-operator stopped");
        // Exports the last spans and metrics; blocking, hence off the runtime's threads.
        tokio::task::spawn_blocking(move || telemetry.shutdown())
            .await
            .context("the OpenTelemetry shutdown panicked")??;
        result?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Uninstall { timeout }) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .with_target(false)
                .init();
            let client = kube::Client::try_default().await.context(
                "cannot build a Kubernetes client: run in a pod with a service account, or set KUBECONFIG",
            )?;
            Ok(uninstall::run(client, timeout).await?)
        }
        Some(Command::Run) | None => args.run().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_seconds_or_minutes() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("10m"), Ok(Duration::from_secs(600)));
        for bad in ["10", "m", "", "1h", "-1s", "1.5m"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?}");
        }
    }
}
