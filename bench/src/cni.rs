//! Running a CNI plugin the way a runtime does: fork/exec of the plugin binary with the `CNI_*`
//! environment and the network configuration on stdin, from the node's network namespace.
//!
//! Both plugins are run identically: directly (no wrapper process such as `ip netns exec`)
//! from a thread of the benchmark that has entered the node's namespace with `setns`, the
//! way containerd, running on the node, starts them. The environment is cleared and set to
//! the same variables for both; only the binary and the configuration differ.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sys::Netns;

/// A plugin with its network configuration.
pub struct Plugin {
    /// The binary.
    pub binary: PathBuf,
    /// The network configuration (stdin).
    pub conf: Vec<u8>,
    /// `CNI_PATH`.
    pub cni_path: String,
}

/// One invocation's outcome.
pub struct Outcome {
    /// From just before the fork to the end of the plugin's output.
    pub elapsed: Duration,
    /// The plugin's exit status and output.
    pub output: Output,
}

impl Outcome {
    /// The plugin's result (ADD) or nothing (DEL); its CNI error otherwise.
    pub fn result(&self) -> Result<Option<Value>> {
        let stdout = String::from_utf8_lossy(&self.output.stdout);
        let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
        if !self.output.status.success() {
            let msg = match &parsed {
                Some(v) => format!(
                    "CNI error {}: {} {}",
                    v["code"],
                    v["msg"].as_str().unwrap_or(""),
                    v["details"].as_str().unwrap_or("")
                ),
                None => format!(
                    "{} {}",
                    stdout.trim(),
                    String::from_utf8_lossy(&self.output.stderr).trim()
                ),
            };
            bail!("the plugin failed ({}): {}", self.output.status, msg.trim());
        }
        Ok(parsed)
    }
}

/// The first address of an ADD result (`ips[0].address`, prefix length dropped).
pub fn first_address(result: &Value) -> Result<std::net::IpAddr> {
    let cidr = result["ips"][0]["address"]
        .as_str()
        .with_context(|| format!("the ADD result lists no address: {result}"))?;
    let ip = cidr.split('/').next().unwrap_or(cidr);
    ip.parse()
        .with_context(|| format!("the ADD result's address {cidr:?} does not parse"))
}

impl Plugin {
    /// The command for one invocation (not started).
    fn command(&self, command: &str, container_id: &str, pod: &Netns) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &self.cni_path)
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={container_id}",
                    pod.name()
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `command` (ADD, DEL) for `container_id` with the sandbox `pod`, from inside `node`,
    /// and times it.
    pub fn exec(
        &self,
        node: &Netns,
        command: &str,
        container_id: &str,
        pod: &Netns,
    ) -> Result<Outcome> {
        let mut cmd = self.command(command, container_id, pod);
        let conf = &self.conf;
        node.run(move || -> Result<Outcome> {
            let started = Instant::now();
            let mut child = cmd.spawn().context("starting the plugin")?;
            if let Some(mut stdin) = child.stdin.take() {
                // A plugin may answer without reading its input (bridge's VERSION does, and
                // may exit first): as for a runtime, its exit status and output decide.
                match stdin.write_all(conf) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                        return Err(e).context("writing the network configuration");
                    }
                    _ => {}
                }
            }
            let output = child.wait_with_output().context("waiting for the plugin")?;
            Ok(Outcome {
                elapsed: started.elapsed(),
                output,
            })
        })?
        .with_context(|| format!("{command} {container_id} with {}", self.binary.display()))
    }

    /// Starts `command` for every `(container_id, pod)` at once, from inside `node`, then waits
    /// for all. Returns the wall time from the first fork to the last exit, and each outcome
    /// (its `elapsed` is from its own fork to the moment it was collected).
    pub fn exec_all(
        &self,
        node: &Netns,
        command: &str,
        pods: &[(String, &Netns)],
    ) -> Result<(Duration, Vec<Result<Outcome>>)> {
        let mut cmds: Vec<Command> = pods
            .iter()
            .map(|(id, pod)| self.command(command, id, pod))
            .collect();
        let conf = &self.conf;
        node.run(move || {
            let started = Instant::now();
            let mut children: Vec<(Instant, std::io::Result<std::process::Child>)> = cmds
                .iter_mut()
                .map(|c| (Instant::now(), c.spawn()))
                .collect();
            for (_, child) in &mut children {
                if let Ok(child) = child
                    && let Some(mut stdin) = child.stdin.take()
                {
                    // A plugin that died early closed its stdin: that shows in its output.
                    let _ = stdin.write_all(conf);
                }
            }
            let outcomes = children
                .into_iter()
                .map(|(at, child)| {
                    let output = child
                        .context("starting a plugin")?
                        .wait_with_output()
                        .context("waiting for a plugin")?;
                    Ok(Outcome {
                        elapsed: at.elapsed(),
                        output,
                    })
                })
                .collect();
            (started.elapsed(), outcomes)
        })
    }
}

/// The reference's network configuration: `bridge` with `host-local` IPAM (its state in
/// `data_dir`), no masquerading, the bridge as the pods' gateway.
pub fn reference_conf(bridge: &str, subnet: &str, gateway: &str, data_dir: &Path) -> Vec<u8> {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "febref",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir,
            "ranges": [[{"subnet": subnet, "gateway": gateway}]],
            "routes": [{"dst": "0.0.0.0/0"}]
        }
    })
    .to_string()
    .into_bytes()
}

/// Ferrite's network configuration: the agent's socket, and a spool directory of the run's
/// own (so a DEL that finds the agent down is queued there, not in the host's /var/lib).
pub fn ferrite_conf(socket: &Path, spool: &Path) -> Vec<u8> {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "ferrite",
        "type": "ferrite",
        "agentSocket": socket,
        "spoolDir": spool
    })
    .to_string()
    .into_bytes()
}
