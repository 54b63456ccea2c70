//! `helm uninstall` removes Ferrite from every node, and installing again brings the pod
//! network back. A test binary of its own (cargo runs test binaries one after another), so
//! nothing else runs while Ferrite is uninstalled; if the test fails midway, Ferrite is
//! installed again before it returns.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use ferrite_crds::{ClusterNetwork, IPPool};
use ferrite_e2e::{Cluster, NETEXEC_PORT, TestNamespace, pod_ip, repo_root, tool_ok, wait_for};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};

/// The release `make up` installs.
const RELEASE: &str = "ferrite";
const NAMESPACE: &str = "ferrite-system";

/// A host path of `node` as the node sees it (`/etc/cni/net.d` ...), on the machine: `make up`
/// bind-mounts per-node directories (e2e/scripts/node-init.sh).
fn node_path(node: &str, path: &str) -> PathBuf {
    repo_root()
        .join(".ferrite/cluster/nodes")
        .join(node)
        .join("fs")
        .join(path.trim_start_matches('/').replace('/', "-"))
}

/// Whether `cmd` run in `node`'s network namespace succeeds (and prints something, if `output`).
fn in_node(node: &str, cmd: &[&str], output: bool) -> Result<bool> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("fe-{node}")])
        .args(cmd)
        .output()
        .with_context(|| format!("running {cmd:?} on {node}"))?;
    Ok(out.status.success() && (!output || !out.stdout.is_empty()))
}

/// What of Ferrite is on `node`: the CNI configuration and plugin, the nftables table, the
/// tunnel device, routes to other nodes' blocks.
fn ferrite_on(node: &str) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for (dir, file) in [
        ("/etc/cni/net.d", "05-ferrite.conflist"),
        ("/opt/cni/bin", "ferrite"),
    ] {
        if node_path(node, dir).join(file).exists() {
            found.push(format!("{dir}/{file}"));
        }
    }
    if in_node(node, &["nft", "list", "table", "ip", "ferrite"], false)? {
        found.push("nftables table ip ferrite".into());
    }
    if in_node(node, &["ip", "link", "show", "ferrite.vxlan"], false)? {
        found.push("device ferrite.vxlan".into());
    }
    // Routes to the other nodes' blocks carry the agent's protocol number (0xfe).
    if in_node(node, &["ip", "route", "show", "proto", "254"], true)? {
        found.push("routes with proto 254".into());
    }
    Ok(found)
}

/// Installs Ferrite again the way `make up` does, unless disarmed: also when the test fails.
struct Reinstall {
    routing: String,
    replicas: String,
    armed: bool,
}

impl Reinstall {
    fn run(&mut self) -> Result<()> {
        self.armed = false;
        let script = repo_root().join("e2e/scripts/install-ferrite.sh");
        let out = Command::new(&script)
            .env("FERRITE_ROUTING", &self.routing)
            .env("FERRITE_OPERATOR_REPLICAS", &self.replicas)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                script.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Reinstall {
    #[expect(
        clippy::print_stderr,
        reason = "a failed test's clean-up has nowhere else to say it failed"
    )]
    fn drop(&mut self) {
        if self.armed
            && let Err(e) = self.run()
        {
            eprintln!("installing Ferrite again after the failed test: {e}");
        }
    }
}

#[tokio::test]
#[ignore = "needs the local cluster: `make up`, then `make e2e`"]
async fn helm_uninstall_cleans_every_node_and_installing_again_restores_the_network() -> Result<()>
{
    let cluster = Cluster::connect().await?;
    let client = cluster.client.clone();
    let nodes = cluster.node_names().await?;
    let networks: Api<ClusterNetwork> = Api::all(client.clone());
    let routing = serde_json::to_value(networks.get("default").await?.spec.routing_mode)?
        .as_str()
        .context("routingMode")?
        .to_owned();
    let replicas = Api::<Deployment>::namespaced(client.clone(), NAMESPACE)
        .get("ferrite-operator")
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .to_string();

    // What the cleanup must remove is there to begin with (so "gone" means removed).
    for node in &nodes {
        let found = ferrite_on(node)?;
        let expected = if routing == "VXLAN" { 5 } else { 4 };
        ensure!(
            found.len() == expected,
            "before uninstalling, {node} has only {found:?}"
        );
    }

    let mut reinstall = Reinstall {
        routing,
        replicas,
        armed: true,
    };
    // The pre-delete hook deletes the ClusterNetwork and waits while the operator cleans the
    // nodes; then Helm deletes the rest.
    tool_ok(
        "helm",
        &[
            "uninstall",
            RELEASE,
            "--namespace",
            NAMESPACE,
            "--wait",
            "--timeout",
            "5m",
        ],
        "",
    )?;

    ensure!(
        networks.get_opt("default").await?.is_none(),
        "clusternetwork/default is still there after helm uninstall"
    );
    let daemon_sets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    for name in ["ferrite-agent", "ferrite-cleanup"] {
        wait_for(
            &format!("daemonset/{name} to be gone"),
            Duration::from_secs(60),
            || async { Ok(daemon_sets.get_opt(name).await?.is_none().then_some(())) },
        )
        .await?;
    }
    for node in &nodes {
        let left = ferrite_on(node)?;
        ensure!(left.is_empty(), "helm uninstall left on {node}: {left:?}");
    }
    let events: Api<Event> = Api::all(client.clone());
    let cleaned = events
        .list(&ListParams::default().fields("reason=NodesCleaned"))
        .await?;
    ensure!(
        cleaned.items.iter().any(|e| e
            .regarding
            .as_ref()
            .is_some_and(|r| r.kind.as_deref() == Some("ClusterNetwork"))),
        "no NodesCleaned event on the ClusterNetwork"
    );
    // The pool stays (resource-policy keep), with the blocks the nodes hold.
    ensure!(
        Api::<IPPool>::all(client.clone())
            .get_opt("default")
            .await?
            .is_some(),
        "ippool/default was deleted by helm uninstall; it is meant to be kept"
    );

    // Installing again (as make up does) brings the network back on every node.
    reinstall.run()?;
    for node in &nodes {
        let found = ferrite_on(node)?;
        ensure!(
            found.len() >= 4,
            "after installing again, {node} has only {found:?}"
        );
    }
    let ns = TestNamespace::create(&cluster, "reinstall").await?;
    let (n1, n2) = (&nodes[0], &nodes[nodes.len() - 1]);
    ns.pod("a").on_node(n1).create().await?;
    let b = pod_ip(&ns.pod("b").on_node(n2).create().await?)?;
    let url = format!("http://{b}:{NETEXEC_PORT}/hostname");
    let out = ns.exec("a", &["curl", "-s", "-m", "5", &url]).await?;
    ensure!(
        out.success && out.stdout.trim() == "b",
        "a on {n1} does not reach b on {n2} after installing again: {out:?}"
    );
    Ok(())
}
