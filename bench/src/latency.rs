//! Benchmark 1: CNI ADD/DEL latency of Ferrite and of the reference plugins, side by side, and
//! a burst of concurrent Ferrite ADDs.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use ferrite_agent::config::Routing;

use crate::agent::{self, Agent};
use crate::cni::{self, Plugin};
use crate::report::{Concurrent, LatencyReport, VethCreation};
use crate::stats::Latency;
use crate::sys::{self, Netns, ScratchDir};
use crate::{Binaries, progress};

/// How many cycles, and how many concurrent ADDs.
pub struct Settings {
    /// Counted ADD+DEL cycles per plugin.
    pub cycles: usize,
    /// Uncounted cycles per plugin first.
    pub warmup: usize,
    /// Concurrent ADDs.
    pub concurrent: usize,
}

/// A node namespace with an "uplink": a veth pair inside it, the node address on one end.
fn node(suffix: &str, address: &str) -> Result<Netns> {
    let ns = Netns::create(suffix)?;
    ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"])?;
    ns.ip(&["addr", "add", address, "dev", "up0"])?;
    ns.ip(&["link", "set", "up0", "up"])?;
    ns.ip(&["link", "set", "up1", "up"])?;
    Ok(ns)
}

/// Whether `name` has the shape of a Ferrite host veth (`fe` + 11 hex digits).
pub fn is_ferrite_host_ifname(name: &str) -> bool {
    name.strip_prefix("fe")
        .is_some_and(|hex| hex.len() == 11 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Runs the benchmark.
pub fn run(bins: &Binaries, scratch: &ScratchDir, s: &Settings) -> Result<LatencyReport> {
    let dir = scratch.sub("latency")?;
    progress("latency: node namespaces and the agent");
    let ferrite_node = node("lnf", "172.31.253.1/24")?;
    let reference_node = node("lnr", "172.31.253.1/24")?;
    let config = agent::node_config(
        "172.31.253.1".parse().context("node address")?,
        "10.210.0.0/24",
        Routing::Native,
        &[],
    )?;
    // The IPAM state on a tmpfs, as the agent keeps it on a node (`/run/ferrite/state`).
    let state = scratch.ram_sub("latency-agent-state")?;
    let mut agent = Agent::start(
        &bins.agent,
        &ferrite_node,
        &dir.join("agent"),
        &state,
        &config,
    )?;
    let cni_path = format!("{}:{}", bins.dir.display(), bins.reference_dir.display());
    let ferrite = Plugin {
        binary: bins.plugin.clone(),
        conf: cni::ferrite_conf(&agent.socket, &agent.spool),
        cni_path: cni_path.clone(),
    };
    let reference = Plugin {
        binary: bins.reference_dir.join("bridge"),
        conf: cni::reference_conf(
            "febr0",
            "10.211.0.0/24",
            "10.211.0.1",
            &dir.join("host-local"),
        ),
        cni_path,
    };

    let total = s.warmup + s.cycles;
    progress(&format!("latency: {} pod sandboxes", 2 * total));
    let names = |p: &str| (0..total).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let ferrite_pods = Netns::create_many(&names("lpf"))?;
    let reference_pods = Netns::create_many(&names("lpr"))?;

    progress(&format!(
        "latency: {} warm-up + {} cycles of ADD, DEL per plugin",
        s.warmup, s.cycles
    ));
    let mut f_add = Vec::with_capacity(s.cycles);
    let mut f_del = Vec::with_capacity(s.cycles);
    let mut r_add = Vec::with_capacity(s.cycles);
    let mut r_del = Vec::with_capacity(s.cycles);
    let mut metrics_before = String::new();
    for i in 0..total {
        sys::check_interrupted()?;
        if i == s.warmup {
            metrics_before = agent.metrics()?;
        }
        // Alternate which plugin goes first, so neither always follows the other.
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for is_ferrite in order {
            let (plugin, node, pod, label) = if is_ferrite {
                (&ferrite, &ferrite_node, &ferrite_pods.items()[i], "ferrite")
            } else {
                (
                    &reference,
                    &reference_node,
                    &reference_pods.items()[i],
                    "reference",
                )
            };
            let id = format!("feb-{label}-{i:04}");
            let (add, del) = cycle(plugin, node, pod, &id)
                .with_context(|| format!("{label}, cycle {i} (container {id})"))?;
            if i >= s.warmup {
                let (a, d) = if is_ferrite {
                    (&mut f_add, &mut f_del)
                } else {
                    (&mut r_add, &mut r_del)
                };
                a.push(add);
                d.push(del);
            }
        }
        agent
            .ensure_running()
            .context("the agent ended during the latency cycles")?;
    }
    let metrics_after = agent.metrics()?;
    let agent_mean = |command: &str| {
        let (sum0, n0) = agent::cni_histogram(&metrics_before, command).unwrap_or((0.0, 0));
        let (sum1, n1) = agent::cni_histogram(&metrics_after, command)?;
        let n = n1.checked_sub(n0).filter(|n| *n > 0)?;
        Some(Duration::from_secs_f64(((sum1 - sum0) / n as f64).max(0.0)))
    };
    let (agent_add_mean, agent_del_mean) = (agent_mean("ADD"), agent_mean("DEL"));
    let allocations_after_cycles = agent.allocations()?.len();

    // The floor: fork/exec of each binary doing no work (VERSION answers from the binary).
    progress("latency: VERSION, the exec floor of each plugin");
    let mut f_version = Vec::with_capacity(s.cycles);
    let mut r_version = Vec::with_capacity(s.cycles);
    for i in 0..s.cycles {
        sys::check_interrupted()?;
        let pod = &ferrite_pods.items()[i];
        for (plugin, node, out) in [
            (&ferrite, &ferrite_node, &mut f_version),
            (&reference, &reference_node, &mut r_version),
        ] {
            let v = plugin.exec(node, "VERSION", "feb-version", pod)?;
            v.result().context("VERSION")?;
            out.push(v.elapsed);
        }
    }
    drop(ferrite_pods);
    drop(reference_pods);

    let concurrent = concurrent(&ferrite, &ferrite_node, &mut agent, s.concurrent)?;
    progress("latency: veth pair creation, default queues and one transmit queue");
    let veth_creation = veth_creation(VETH_ROUNDS, VETH_PAIRS)?;
    let summary = |v: &[Duration]| Latency::of(v).context("no samples");
    Ok(LatencyReport {
        cycles: s.cycles,
        warmup: s.warmup,
        ferrite_add: summary(&f_add)?,
        ferrite_del: summary(&f_del)?,
        reference_add: summary(&r_add)?,
        reference_del: summary(&r_del)?,
        ferrite_version: summary(&f_version)?,
        reference_version: summary(&r_version)?,
        agent_add_mean,
        agent_del_mean,
        allocations_after_cycles,
        agent_state_fs: sys::fs_type(&state)?,
        reference_data_fs: sys::fs_type(&dir)?,
        concurrent,
        veth_creation,
    })
}

/// Rounds and pairs per round of [`veth_creation`].
const VETH_ROUNDS: usize = 5;
const VETH_PAIRS: usize = 100;

/// The kernel's cost of the veth pair an ADD makes, with the queue counts the kernel picks by
/// default and with one transmit queue per end (what the agent asks for): `pairs` pairs made
/// by one `ip -batch` into a fresh pair of namespaces, the peer moved into the second, as the
/// agent moves it into the pod's. The two kinds alternate for `rounds` rounds; each number is
/// the batch's wall time divided by `pairs`.
fn veth_creation(rounds: usize, pairs: usize) -> Result<VethCreation> {
    let mut result = VethCreation {
        pairs,
        ..VethCreation::default()
    };
    for round in 0..rounds {
        for one_queue in [round % 2 == 0, round % 2 != 0] {
            sys::check_interrupted()?;
            let node = Netns::create("lvn")?;
            let pod = Netns::create("lvp")?;
            let queues = if one_queue { " numtxqueues 1" } else { "" };
            let script: String = (0..pairs).fold(String::new(), |mut script, i| {
                let _ = writeln!(
                    script,
                    "link add feq{i}{queues} up type veth peer name eth{i}{queues} netns {}",
                    pod.name()
                );
                script
            });
            let started = Instant::now();
            sys::run_with_input(
                Command::new("ip").args(["-n", node.name(), "-batch", "-"]),
                script.as_bytes(),
            )?;
            let per_pair = started.elapsed() / u32::try_from(pairs).context("pairs")?;
            if one_queue {
                result.one_tx_queue.push(per_pair);
            } else {
                result.default_queues.push(per_pair);
            }
        }
    }
    Ok(result)
}

/// One ADD and one DEL, both timed; either failing fails the run (numbers from failed calls
/// would measure something else).
fn cycle(plugin: &Plugin, node: &Netns, pod: &Netns, id: &str) -> Result<(Duration, Duration)> {
    let add = plugin.exec(node, "ADD", id, pod)?;
    let result = add
        .result()
        .context("ADD")?
        .context("ADD printed no result")?;
    cni::first_address(&result)?;
    let del = plugin.exec(node, "DEL", id, pod)?;
    del.result().context("DEL")?;
    Ok((add.elapsed, del.elapsed))
}

/// `n` Ferrite ADDs at once, then `n` DELs at once; counts what failed and what is left.
fn concurrent(ferrite: &Plugin, node: &Netns, agent: &mut Agent, n: usize) -> Result<Concurrent> {
    progress(&format!(
        "latency: {n} concurrent ADDs, then {n} concurrent DELs"
    ));
    let suffixes: Vec<String> = (0..n).map(|i| format!("lpc{i}")).collect();
    let pods = Netns::create_many(&suffixes)?;
    let list: Vec<(String, &Netns)> = pods
        .items()
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("feb-concurrent-{i:04}"), p))
        .collect();
    sys::check_interrupted()?;
    let (add_wall, adds) = ferrite.exec_all(node, "ADD", &list)?;
    let mut add_errors = BTreeSet::new();
    let mut addresses: Vec<IpAddr> = Vec::new();
    for outcome in &adds {
        let address = outcome
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|o| o.result().map_err(|e| format!("{e:#}")))
            .and_then(|r| r.ok_or_else(|| "no result".to_owned()))
            .and_then(|r| cni::first_address(&r).map_err(|e| format!("{e:#}")));
        match address {
            Ok(a) => addresses.push(a),
            Err(e) => {
                add_errors.insert(e);
            }
        }
    }
    let add_failures = n - addresses.len();
    let unique: BTreeSet<&IpAddr> = addresses.iter().collect();
    let duplicate_addresses = addresses.len() - unique.len();
    agent
        .ensure_running()
        .context("the agent ended during the concurrent ADDs")?;

    sys::check_interrupted()?;
    let (del_wall, dels) = ferrite.exec_all(node, "DEL", &list)?;
    let mut del_errors = BTreeSet::new();
    for outcome in &dels {
        if let Err(e) = outcome
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|o| o.result().map(|_| ()).map_err(|e| format!("{e:#}")))
        {
            del_errors.insert(e);
        }
    }
    let del_failures = dels
        .iter()
        .filter(|o| o.as_ref().map_or(true, |o| !o.output.status.success()))
        .count();
    agent
        .ensure_running()
        .context("the agent ended during the concurrent DELs")?;
    let allocations_after = agent.allocations()?.len();
    let leftover_interfaces = node
        .interfaces()?
        .keys()
        .filter(|name| is_ferrite_host_ifname(name))
        .count();
    Ok(Concurrent {
        n,
        add_failures,
        add_errors: add_errors.into_iter().take(5).collect(),
        add_wall,
        duplicate_addresses,
        del_failures,
        del_errors: del_errors.into_iter().take(5).collect(),
        del_wall,
        allocations_after,
        leftover_interfaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ferrite_host_veth_names() {
        assert!(is_ferrite_host_ifname("fe0123456789a"));
        assert!(!is_ferrite_host_ifname("fe0123456789"));
        assert!(!is_ferrite_host_ifname("febr0"));
        assert!(!is_ferrite_host_ifname("up0"));
        assert!(!is_ferrite_host_ifname("ferrite.vxlan"));
    }
}
