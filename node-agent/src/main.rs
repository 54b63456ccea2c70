//! `ferrite-agent`: thin entry point; the logic lives in the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ferrite_agent::agent::{self, Agent};
use ferrite_agent::config::NodeConfig;
use ferrite_agent::{cluster as k8s, datapath, install, metrics, nat, netns};
use tokio::sync::watch;

/// Ferrite's node agent: serves the CNI plugin and programs this node's datapath.
#[derive(Parser)]
#[command(version = ferrite_agent::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// This node's name (the NodeNetwork to follow). Set from the downward API.
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// Read this node's configuration from a JSON file (re-read when it changes) instead of
    /// the Kubernetes API. For tests and standalone use.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// The socket the plugin talks to.
    #[arg(long, default_value = ferrite_cni::DEFAULT_AGENT_SOCKET, global = true)]
    socket: PathBuf,
    /// Where the IPAM state is kept: a hostPath that survives agent restarts; tmpfs is right
    /// (the state is scoped to the kernel's boot, like the pods it describes).
    #[arg(long, default_value = "/run/ferrite/state", global = true)]
    state_dir: PathBuf,
    /// Where the plugin queues DELs while the agent is down.
    #[arg(long, default_value = ferrite_cni::DEFAULT_SPOOL_DIR, global = true)]
    spool_dir: PathBuf,
    /// `/healthz`, `/readyz` and `/metrics`.
    #[arg(long, default_value = "0.0.0.0:9893", global = true)]
    health_addr: SocketAddr,
    /// Install the plugin binary into this directory (the runtime's CNI bin dir).
    #[arg(long, global = true)]
    cni_bin_dir: Option<PathBuf>,
    /// Write the network configuration into this directory once ready.
    #[arg(long, global = true)]
    cni_conf_dir: Option<PathBuf>,
    /// The plugin binary shipped in the agent's image.
    #[arg(long, default_value = "/usr/local/bin/ferrite", global = true)]
    plugin: PathBuf,
    /// Log filter (tracing env-filter syntax).
    #[arg(long, env = "FERRITE_LOG", default_value = "info", global = true)]
    log: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent (the default).
    Run,
    /// Remove everything the agent programmed on this node (routes, tunnel, nftables table,
    /// CNI configuration and plugin): for uninstalling Ferrite. Pods lose connectivity.
    Cleanup,
    /// Do nothing until SIGTERM: the main container of the operator's cleanup DaemonSet,
    /// whose pod is Ready once `cleanup` (its init container) has cleaned the node.
    Idle,
}

// One thread: an ADD is a chain of short waits (the plugin's request, a dozen netlink answers),
// and on a multi-thread runtime each hop could wake another worker; on this 2-CPU VM that cost
// ~0.3 ms per ADD (docs/benchmarks.md). Nothing here computes for long; blocking work (nft,
// entering namespaces) runs on threads of its own. If the agent ever watches much more of the
// cluster (Services, EndpointSlices), give that its own runtime rather than this one more threads.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&args.log)?)
        .with_target(false)
        .init();
    match args.command {
        Some(Cmd::Cleanup) => cleanup(&args).await,
        Some(Cmd::Idle) => idle().await,
        Some(Cmd::Run) | None => run(args).await,
    }
}

async fn cleanup(args: &Args) -> anyhow::Result<()> {
    let host = netns::handle()?;
    datapath::node::remove_all(&host)
        .await
        .context("removing node routes and the tunnel")?;
    tokio::task::spawn_blocking(nat::remove)
        .await?
        .context("removing the nftables table")?;
    if let Some(dir) = &args.cni_conf_dir {
        remove_if_exists(&dir.join(install::CONFLIST_NAME))?;
    }
    if let Some(dir) = &args.cni_bin_dir {
        remove_if_exists(&dir.join("ferrite"))?;
    }
    tracing::info!("removed Ferrite's datapath from this node");
    Ok(())
}

async fn idle() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r.context("listening for SIGINT")?,
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing::info!(version = ferrite_agent::VERSION, "starting");
    let (tx, rx) = watch::channel(None::<NodeConfig>);
    let client = match &args.config {
        Some(path) => {
            tokio::spawn(watch_file(path.clone(), tx));
            None
        }
        None => {
            let node = args.node_name.clone().context(
                "--node-name (or NODE_NAME) is required unless --config names a configuration file",
            )?;
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            let (state_tx, state_rx) = watch::channel(None);
            tokio::spawn(k8s::watch_config(client.clone(), node.clone(), state_tx));
            tokio::spawn(forward_config(state_rx, tx));
            Some((client, node))
        }
    };

    let host = netns::sockets().context("opening the node's netlink and device sockets")?;
    let agent = Arc::new(Agent::new(args.state_dir.clone(), host, rx.clone())?);
    let view = agent.clone();
    let router = metrics::router(
        agent.metrics.clone(),
        agent.health.clone(),
        Arc::new(move || view.ipam_json()),
    );
    let health_addr = args.health_addr;
    tokio::spawn(async move {
        if let Err(e) = metrics::serve(health_addr, router).await {
            tracing::error!("health endpoint: {e}");
        }
    });
    if let Some(dir) = &args.cni_bin_dir {
        let to = install::install_plugin(&args.plugin, dir)?;
        tracing::info!("installed the CNI plugin as {}", to.display());
    }

    // First configuration → programmed datapath → sweep → serve → ready.
    let mut rx = rx;
    let mut config = loop {
        if let Some(c) = rx.borrow_and_update().clone() {
            break c;
        }
        rx.changed()
            .await
            .context("the configuration source ended")?;
    };
    let mut backoff = Duration::from_millis(200);
    while let Err(e) = agent.reconcile(&config).await {
        tracing::error!("programming the datapath: {e} (retrying in {backoff:?})");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
        if let Some(c) = rx.borrow_and_update().clone() {
            config = c;
        }
    }
    if let Err(e) = agent.sweep().await {
        tracing::warn!("start-up sweep: {e}");
    }
    let listener = bind(&args.socket)?;
    tokio::spawn(agent::serve(agent.clone(), listener));
    agent::replay_spool(&agent, &args.spool_dir).await;
    agent.health.set_ready(true);
    if let Some(dir) = &args.cni_conf_dir {
        let path = install::install_conflist(
            dir,
            args.cni_bin_dir
                .as_deref()
                .unwrap_or(Path::new("/opt/cni/bin")),
            &args.socket,
            &args.spool_dir,
        )?;
        tracing::info!("wrote the CNI configuration {}", path.display());
    }
    tracing::info!(socket = %args.socket.display(), "ready");
    // Every report is also the heartbeat the operator releases a deleted node's blocks by:
    // it comes with each reconcile (at least every resync) and after address use changes.
    // What it says: `state` (ready, message) and `programmed`, the ClusterNetwork (uid,
    // generation) of the configuration last programmed successfully.
    let report = |state: &(bool, String), programmed: &(Option<String>, Option<i64>)| {
        let report = k8s::Report {
            ready: state.0,
            message: state.1.clone(),
            blocks: agent.block_usage(),
            cluster_generation: programmed.1,
            cluster_uid: programmed.0.clone(),
        };
        let client = client.clone();
        async move {
            if let Some((client, node)) = client
                && let Err(e) = k8s::report(&client, &node, &report, None).await
            {
                tracing::warn!("reporting to NodeNetwork {node}: {e}");
            }
        }
    };
    let mut state = (true, "datapath programmed".to_owned());
    let mut programmed = (config.cluster_uid.clone(), config.cluster_generation);
    let mut usage = agent.usage_changes();
    usage.borrow_and_update();
    report(&state, &programmed).await;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut resync = tokio::time::interval(Duration::from_secs(60));
    resync.tick().await;
    loop {
        let mut usage_only = false;
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() { break; }
                if let Some(c) = rx.borrow_and_update().clone() { config = c; }
            }
            _ = resync.tick() => {}
            changed = usage.changed() => {
                if changed.is_err() { break; }
                usage_only = true;
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        if usage_only {
            // A burst of pods starting or stopping becomes one report.
            tokio::time::sleep(USAGE_REPORT_DELAY).await;
        } else {
            match agent.reconcile(&config).await {
                Ok(()) => {
                    agent.health.set_ready(true);
                    state = (true, "datapath programmed".into());
                    programmed = (config.cluster_uid.clone(), config.cluster_generation);
                }
                Err(e) => {
                    tracing::error!("programming the datapath: {e}");
                    agent.health.set_ready(false);
                    state = (false, format!("programming the datapath failed: {e}"));
                }
            }
        }
        usage.borrow_and_update();
        report(&state, &programmed).await;
    }
    // Pods keep their datapath while the agent is away; the plugin queues DELs meanwhile.
    let _ = std::fs::remove_file(&args.socket);
    tracing::info!("stopped");
    Ok(())
}

/// How long a change of address use waits before it is reported, so that a burst of pods
/// starting or stopping becomes one status write.
const USAGE_REPORT_DELAY: Duration = Duration::from_secs(1);

/// Binds the plugin socket, replacing a stale one from a previous run.
fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    remove_if_exists(path)?;
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("binding the plugin socket {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Publishes the configuration in `path`, re-read whenever its modification time changes.
async fn watch_file(path: PathBuf, tx: watch::Sender<Option<NodeConfig>>) {
    let mut seen = None;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != seen {
            seen = modified;
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<NodeConfig>(&b).map_err(|e| e.to_string()))
            {
                Ok(c) => {
                    publish(&tx, c);
                }
                Err(e) => tracing::error!("configuration file {}: {e}", path.display()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes `c`, waking the agent only when it differs from the current configuration.
fn publish(tx: &watch::Sender<Option<NodeConfig>>, c: NodeConfig) {
    tx.send_if_modified(|cur| {
        let changed = cur.as_ref() != Some(&c);
        *cur = Some(c);
        changed
    });
}

/// Passes valid configurations on; logs why there is none.
async fn forward_config(
    mut from: watch::Receiver<k8s::ConfigState>,
    to: watch::Sender<Option<NodeConfig>>,
) {
    while from.changed().await.is_ok() {
        let state = from.borrow_and_update().clone();
        match state {
            Some(Ok(c)) => {
                publish(&to, c);
            }
            Some(Err(e)) => tracing::warn!("no configuration: {e}"),
            None => {}
        }
    }
}
