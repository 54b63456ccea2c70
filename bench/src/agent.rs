//! A real `ferrite-agent` running inside a node namespace with a static configuration file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ferrite_agent::config::{Egress, NodeConfig, PeerConfig, Routing};
use ferrite_agent::ipam::Block;

use crate::sys::{self, Daemon, Netns};

/// The agent's health address, inside its node namespace (each node has its own loopback).
pub const HEALTH_ADDR: &str = "127.0.0.1:19893";

/// One agent process and the files it uses.
pub struct Agent {
    daemon: Daemon,
    node: String,
    ns: Netns,
    health: SocketAddr,
    /// The plugin socket.
    pub socket: PathBuf,
    /// The DEL spool.
    pub spool: PathBuf,
    config_path: PathBuf,
}

/// A node's configuration: one block, the given routing, the given peers, no masquerade.
pub fn node_config(
    node_ip: IpAddr,
    block: &str,
    routing: Routing,
    peers: &[(&str, IpAddr, &str)],
) -> Result<NodeConfig> {
    Ok(NodeConfig {
        node_ip,
        tunnel_endpoint: None,
        blocks: vec![Block {
            cidr: block.parse().with_context(|| format!("block {block}"))?,
            pool: "bench".into(),
        }],
        reserved: Vec::new(),
        routing,
        mtu: None,
        peers: peers
            .iter()
            .map(|(name, ip, block)| {
                Ok(PeerConfig {
                    name: (*name).to_owned(),
                    node_ip: *ip,
                    tunnel_endpoint: None,
                    blocks: vec![block.parse().with_context(|| format!("block {block}"))?],
                })
            })
            .collect::<Result<_>>()?,
        egress: Egress::default(),
        cluster_generation: None,
        cluster_uid: None,
    })
}

impl Agent {
    /// Starts `ferrite-agent` inside `node` (`ip netns exec`) with `config`, its files under
    /// `dir` and its IPAM state in `state_dir`, and waits until `/readyz` answers 200.
    pub fn start(
        binary: &Path,
        node: &Netns,
        dir: &Path,
        state_dir: &Path,
        config: &NodeConfig,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config_path = dir.join("node.json");
        write_config(&config_path, config)?;
        let socket = dir.join("agent.sock");
        let spool = dir.join("spool");
        let mut cmd = node.exec(binary);
        cmd.arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--spool-dir")
            .arg(&spool)
            .args(["--health-addr", HEALTH_ADDR, "--log", "info"])
            .env_remove("NODE_NAME")
            .env_remove("FERRITE_LOG");
        let daemon = Daemon::spawn(&mut cmd, &dir.join("agent.log"))?;
        let ns = node.share()?;
        let mut agent = Self {
            daemon,
            node: node.name().to_owned(),
            ns,
            health: HEALTH_ADDR.parse().context("the health address")?,
            socket,
            spool,
            config_path,
        };
        agent.wait_ready(Duration::from_secs(60))?;
        Ok(agent)
    }

    /// Waits until `/readyz` answers 200 (and the plugin socket exists).
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let what = format!("the agent in {} to be ready", self.node);
        let health = self.health;
        let result = sys::wait_for(&what, limit, Duration::from_millis(25), || {
            self.daemon.ensure_running()?;
            Ok(matches!(self.ns.http_get(health, "/readyz"), Ok((200, _))) && self.socket.exists())
        });
        result.map_err(|e| e.context(format!("agent log:\n{}", self.daemon.log_tail(15))))
    }

    /// Replaces the configuration file; the agent re-reads it when its mtime changes.
    pub fn reconfigure(&mut self, config: &NodeConfig) -> Result<()> {
        write_config(&self.config_path, config)
    }

    /// Fails with the end of the agent's log if it has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.daemon.ensure_running()
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        self.daemon.log_tail(n)
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (code, body) = self.ns.http_get(self.health, "/metrics")?;
        if code != 200 {
            bail!("GET /metrics answered {code}: {body}");
        }
        Ok(body)
    }

    /// The addresses `/ipam` lists as allocated.
    pub fn allocations(&self) -> Result<Vec<String>> {
        let (code, body) = self.ns.http_get(self.health, "/ipam")?;
        if code != 200 {
            bail!("GET /ipam answered {code}: {body}");
        }
        let v: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("GET /ipam: not JSON: {body}"))?;
        let allocations = v
            .get("allocations")
            .and_then(serde_json::Value::as_object)
            .with_context(|| format!("GET /ipam: no \"allocations\" object in {body}"))?;
        Ok(allocations.keys().cloned().collect())
    }
}

/// `sum` and `count` of the agent's CNI latency histogram for `command` (ADD, DEL).
pub fn cni_histogram(metrics: &str, command: &str) -> Option<(f64, u64)> {
    let value = |suffix: &str| {
        let prefix = format!(
            "ferrite_agent_cni_request_duration_seconds_{suffix}{{command=\"{command}\"}} "
        );
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::trim)
    };
    Some((value("sum")?.parse().ok()?, value("count")?.parse().ok()?))
}

fn write_config(path: &Path, config: &NodeConfig) -> Result<()> {
    let json = serde_json::to_vec_pretty(config).context("serialising the node configuration")?;
    sys::write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_sum_and_count() {
        let text = r#"# HELP ferrite_agent_cni_request_duration_seconds CNI requests served by the agent, by command.
# TYPE ferrite_agent_cni_request_duration_seconds histogram
ferrite_agent_cni_request_duration_seconds_sum{command="ADD"} 0.25
ferrite_agent_cni_request_duration_seconds_count{command="ADD"} 100
ferrite_agent_cni_request_duration_seconds_bucket{le="0.0001",command="ADD"} 0
ferrite_agent_cni_request_duration_seconds_sum{command="DEL"} 1.5
ferrite_agent_cni_request_duration_seconds_count{command="DEL"} 99
# EOF
"#;
        assert_eq!(cni_histogram(text, "ADD"), Some((0.25, 100)));
        assert_eq!(cni_histogram(text, "DEL"), Some((1.5, 99)));
        assert_eq!(cni_histogram(text, "CHECK"), None);
    }
}
