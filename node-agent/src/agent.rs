//! The agent proper: serves the plugin's requests ([`Agent::handle`]) and keeps the node's
//! datapath in step with its configuration ([`Agent::reconcile`]).
//!
//! Ownership of state: the IPAM store is the record of which attachment holds which address;
//! a pod's host-side veth exists exactly as long as its sandbox's network namespace does (the
//! kernel destroys the pair with the namespace). The start-up sweep reconciles the two: an
//! allocation without its veth is a sandbox that went away while the agent was down, a veth
//! without an allocation is a leftover of an ADD that never completed.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ferrite_cni::proto::{Request, Response};
use ferrite_cni::spec::{self, CniError, CniResult, Command, ErrorCode};
use ipnet::IpNet;
use tokio::sync::watch;

use crate::config::{self, NodeConfig};
use crate::datapath::{node, pod};
use crate::ipam::{Allocator, BlockUse, FileStore, IpamError, Owner};
use crate::metrics::{CommandLabels, ErrorLabels, Health, Metrics, ReconcileLabels};
use crate::nat;
use crate::routing::{self, POD_GATEWAY};

/// The agent's shared state.
pub struct Agent {
    ipam: Mutex<Allocator<FileStore>>,
    host: crate::netns::Sockets,
    config: watch::Receiver<Option<NodeConfig>>,
    /// MTU of new pod interfaces, from the last reconcile (0: not reconciled yet).
    pod_mtu: std::sync::atomic::AtomicU32,
    /// Address use per block, as last computed; changes wake [`Agent::usage_changes`].
    usage: watch::Sender<Vec<BlockUse>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Health.
    pub health: Arc<Health>,
}

/// A failure that becomes a CNI error.
fn cni_error(code: ErrorCode, msg: impl Into<String>) -> CniError {
    CniError::new(code, msg)
}

fn kind_of(e: &CniError) -> &'static str {
    match e.code {
        100 => "ipam_exhausted",
        101 => "datapath",
        11 => "not_ready",
        4 | 6 | 7 => "bad_request",
        5 => "io",
        _ => "other",
    }
}

impl Agent {
    /// Opens this boot's IPAM state in `state_dir` and builds the agent. Nothing is programmed yet.
    pub fn new(
        state_dir: PathBuf,
        host: crate::netns::Sockets,
        config: watch::Receiver<Option<NodeConfig>>,
    ) -> anyhow::Result<Self> {
        let store = FileStore::for_this_boot(&state_dir)?;
        let ipam = Allocator::open(Vec::new(), Vec::new(), store)?;
        Ok(Self {
            ipam: Mutex::new(ipam),
            host,
            config,
            pod_mtu: std::sync::atomic::AtomicU32::new(0),
            usage: watch::Sender::new(Vec::new()),
            metrics: Arc::new(Metrics::default()),
            health: Arc::new(Health::default()),
        })
    }

    /// Address use per block, as of the last request or reconcile.
    pub fn block_usage(&self) -> Vec<BlockUse> {
        self.usage.borrow().clone()
    }

    /// Wakes whenever the address use of the node's blocks changes (a pod got or gave back
    /// an address, a block was added), for the report into the NodeNetwork.
    pub fn usage_changes(&self) -> watch::Receiver<Vec<BlockUse>> {
        self.usage.subscribe()
    }

    /// Recomputes the address use and wakes the subscribers if it changed.
    fn publish_usage(&self) {
        let usage = self.ipam().usage();
        self.usage.send_if_modified(|current| {
            if *current == usage {
                false
            } else {
                *current = usage;
                true
            }
        });
    }

    fn ipam(&self) -> MutexGuard<'_, Allocator<FileStore>> {
        // A panic while holding the lock leaves the allocator as it was: every change is
        // persisted before the in-memory state moves, so the data is still consistent.
        self.ipam.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Serves one plugin request.
    pub async fn handle(&self, request: Request, netns: Option<OwnedFd>) -> Response {
        let started = Instant::now();
        let command = request.command;
        let outcome = match command {
            Command::Add => self.add(&request, netns).await.map(Response::Added),
            Command::Del => self.del(&request).await.map(|()| Response::Done),
            Command::Check => self.check(&request, netns).await.map(|()| Response::Done),
            Command::Status => self.status().map(|()| Response::Done),
            Command::Gc => self.gc(&request).await.map(|()| Response::Done),
            Command::Version => Err(cni_error(
                ErrorCode::InvalidEnvironment,
                "VERSION is answered by the plugin itself, not the agent",
            )),
        };
        let name = format!("{command:?}").to_uppercase();
        self.metrics
            .cni_latency
            .get_or_create(&CommandLabels {
                command: name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .allocations
            .set(i64::try_from(self.ipam().state().allocations.len()).unwrap_or(i64::MAX));
        if matches!(command, Command::Add | Command::Del | Command::Gc) {
            self.publish_usage();
        }
        match outcome {
            Ok(r) => r,
            Err(mut e) => {
                self.metrics
                    .cni_errors
                    .get_or_create(&ErrorLabels {
                        command: name.clone(),
                        kind: kind_of(&e).to_owned(),
                    })
                    .inc();
                tracing::warn!(
                    command = %name,
                    container = %request.container_id,
                    pod = ?request.pod,
                    code = e.code,
                    "{}: {}", e.msg, e.details
                );
                e.cni_version = request.cni_version.clone();
                Response::Error(e)
            }
        }
    }

    fn current_config(&self) -> Result<NodeConfig, CniError> {
        self.config.borrow().clone().ok_or_else(|| {
            cni_error(
                ErrorCode::TryAgainLater,
                "the Ferrite agent on this node has no configuration yet (its NodeNetwork or the ClusterNetwork is missing); see the ferrite-agent log",
            )
        })
    }

    fn owner(request: &Request) -> Owner {
        Owner {
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
        }
    }

    async fn add(&self, request: &Request, netns: Option<OwnedFd>) -> Result<CniResult, CniError> {
        let _config = self.current_config()?;
        let mtu = self.pod_mtu.load(std::sync::atomic::Ordering::SeqCst);
        if mtu == 0 || !self.health.is_ready() {
            return Err(cni_error(
                ErrorCode::TryAgainLater,
                "the Ferrite agent on this node has not programmed its datapath yet; the runtime retries",
            ));
        }
        let netns = netns.ok_or_else(|| {
            cni_error(
                ErrorCode::InvalidEnvironment,
                "ADD needs the pod's network namespace (CNI_NETNS) and none was passed",
            )
        })?;
        let owner = Self::owner(request);
        let pod_name = match (&request.pod.namespace, &request.pod.name) {
            (Some(ns), Some(n)) => Some(format!("{ns}/{n}")),
            _ => None,
        };
        let ip = self
            .ipam()
            .allocate(&owner, pod_name)
            .map_err(|e| match e {
                IpamError::Exhausted { .. } => {
                    cni_error(ErrorCode::AddressesExhausted, e.to_string())
                }
                IpamError::NoBlocks => cni_error(ErrorCode::TryAgainLater, e.to_string()),
                IpamError::Store(ref s) => {
                    cni_error(ErrorCode::Io, e.to_string()).details(s.to_string())
                }
            })?;
        let IpAddr::V4(v4) = ip else {
            self.release_quietly(&owner);
            return Err(cni_error(
                ErrorCode::InvalidConfig,
                format!("{ip}: IPv6 pod addresses are not supported yet"),
            ));
        };
        let interface = pod::PodInterface {
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            address: v4,
            mtu,
        };
        match pod::attach(&self.host, netns.as_fd(), &interface).await {
            Ok(attached) => Ok(add_result(request, &attached, v4, mtu)),
            Err(e) => {
                // Never a half-configured pod: attach removed what it made; give the address back.
                self.release_quietly(&owner);
                Err(cni_error(ErrorCode::Datapath, e.to_string()))
            }
        }
    }

    fn release_quietly(&self, owner: &Owner) {
        if let Err(e) = self.ipam().release(owner) {
            tracing::error!(container = %owner.container_id, "releasing the address after a failed ADD: {e}");
        }
    }

    /// DEL: idempotent, needs neither the namespace nor a previous result.
    async fn del(&self, request: &Request) -> Result<(), CniError> {
        let host_ifname = pod::host_ifname(&request.container_id, &request.ifname);
        pod::detach(&self.host.netlink, &host_ifname)
            .await
            .map_err(|e| cni_error(ErrorCode::Datapath, e.to_string()))?;
        let released = self
            .ipam()
            .release(&Self::owner(request))
            .map_err(|e| cni_error(ErrorCode::Io, e.to_string()))?;
        if request.replayed {
            self.metrics.replayed_dels.inc();
        }
        tracing::debug!(container = %request.container_id, ?released, replayed = request.replayed, "DEL");
        Ok(())
    }

    async fn check(&self, request: &Request, netns: Option<OwnedFd>) -> Result<(), CniError> {
        let owner = Self::owner(request);
        let ip = self.ipam().address_of(&owner).ok_or_else(|| {
            cni_error(
                ErrorCode::UnknownContainer,
                format!(
                    "container {} ({}) holds no address on this node",
                    request.container_id, request.ifname
                ),
            )
        })?;
        if let Some(prev) = &request.prev_result {
            let expected = format!("{ip}/32");
            if !prev.ips.iter().any(|c| c.address == expected) {
                return Err(cni_error(
                    ErrorCode::Datapath,
                    format!(
                        "the runtime's previous result does not list {expected}, the address this attachment holds"
                    ),
                ));
            }
        }
        let IpAddr::V4(v4) = ip else {
            return Err(cni_error(
                ErrorCode::InvalidConfig,
                "IPv6 is not supported yet",
            ));
        };
        let netns = netns.ok_or_else(|| {
            cni_error(
                ErrorCode::InvalidEnvironment,
                "CHECK needs the pod's network namespace (CNI_NETNS) and none was passed",
            )
        })?;
        let mtu = self.pod_mtu.load(std::sync::atomic::Ordering::SeqCst);
        let interface = pod::PodInterface {
            container_id: request.container_id.clone(),
            ifname: request.ifname.clone(),
            address: v4,
            mtu,
        };
        pod::check(&self.host.netlink, netns.as_fd(), &interface)
            .await
            .map_err(|e| cni_error(ErrorCode::Datapath, e.to_string()))
    }

    fn status(&self) -> Result<(), CniError> {
        if self.health.is_ready() {
            Ok(())
        } else {
            Err(cni_error(
                ErrorCode::PluginNotAvailable,
                "the Ferrite agent on this node is not ready (datapath not programmed yet)",
            ))
        }
    }

    /// GC: releases every address and interface the runtime no longer holds.
    async fn gc(&self, request: &Request) -> Result<(), CniError> {
        // No list at all is not "nothing is valid": collecting on it would detach every pod.
        let Some(listed) = &request.valid_attachments else {
            tracing::warn!("GC without cni.dev/valid-attachments: nothing collected");
            return Ok(());
        };
        let valid: BTreeSet<Owner> = listed
            .iter()
            .map(|a| Owner {
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
            })
            .collect();
        self.collect(&valid)
            .await
            .map_err(|e| cni_error(ErrorCode::Datapath, e))
    }

    /// Releases allocations not in `valid` and deletes host interfaces of attachments that no
    /// longer hold an address. Shared by GC and the start-up sweep.
    async fn collect(&self, valid: &BTreeSet<Owner>) -> Result<(), String> {
        let released = self.ipam().retain(valid).map_err(|e| e.to_string())?;
        let keep: BTreeSet<String> = self
            .ipam()
            .state()
            .allocations
            .values()
            .map(|a| pod::host_ifname(&a.owner.container_id, &a.owner.ifname))
            .collect();
        let mut removed = 0;
        for name in pod::host_interfaces(&self.host.netlink)
            .await
            .map_err(|e| e.to_string())?
        {
            if !keep.contains(&name) {
                pod::detach(&self.host.netlink, &name)
                    .await
                    .map_err(|e| e.to_string())?;
                removed += 1;
            }
        }
        if !released.is_empty() || removed > 0 {
            tracing::info!(
                released = released.len(),
                interfaces_removed = removed,
                "garbage-collected attachments"
            );
        }
        Ok(())
    }

    /// Start-up sweep: an allocation whose host veth is gone belongs to a sandbox that went
    /// away while the agent was down; a Ferrite veth without an allocation is a leftover.
    pub async fn sweep(&self) -> Result<(), String> {
        let present: BTreeSet<String> = pod::host_interfaces(&self.host.netlink)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let valid: BTreeSet<Owner> = self
            .ipam()
            .state()
            .allocations
            .values()
            .map(|a| a.owner.clone())
            .filter(|o| present.contains(&pod::host_ifname(&o.container_id, &o.ifname)))
            .collect();
        let collected = self.collect(&valid).await;
        self.publish_usage();
        collected
    }

    /// Programs the node for `config`: IPAM blocks, routes or tunnel towards the peers, egress
    /// masquerade. Idempotent; called on every configuration change and periodically.
    pub async fn reconcile(&self, config: &NodeConfig) -> Result<(), String> {
        let result = self.reconcile_inner(config).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .reconciles
            .get_or_create(&ReconcileLabels {
                outcome: outcome.into(),
            })
            .inc();
        result
    }

    async fn reconcile_inner(&self, config: &NodeConfig) -> Result<(), String> {
        enable_forwarding()?;
        {
            let mut ipam = self.ipam();
            ipam.set_blocks(config.blocks.clone());
            ipam.set_reserved(config.reserved.clone());
            self.metrics
                .capacity
                .set(i64::try_from(ipam.capacity()).unwrap_or(i64::MAX));
        }
        self.publish_usage();
        let uplink_mtu = node::uplink_mtu(&self.host.netlink, config.node_ip)
            .await
            .unwrap_or(config::FALLBACK_UPLINK_MTU);
        let (desired, conflicts) = routing::desired(
            config.routing.into(),
            config.endpoint(),
            &config.block_cidrs(),
            &config.routing_peers(),
            uplink_mtu,
            config.mtu,
        );
        for c in conflicts {
            tracing::error!(peer = %c.peer, block = %c.block, "a peer's block overlaps this node's blocks: not routed (the operator must not hand out overlapping blocks)");
        }
        let tunnel = match config.routing {
            config::Routing::Vxlan { vni, port } => Some(node::Tunnel {
                vni,
                port,
                local: config.endpoint(),
            }),
            config::Routing::Native => None,
        };
        // New pods get the new mode's MTU from now on: a pod created during the switch with the
        // smaller of the two is harmless, one with the larger would not fit the tunnel.
        let previous_mtu = self
            .pod_mtu
            .swap(desired.pod_mtu, std::sync::atomic::Ordering::SeqCst);
        if previous_mtu != 0 && previous_mtu != desired.pod_mtu {
            tracing::info!(from = previous_mtu, to = desired.pod_mtu, routing = ?config.routing, "pod MTU changes with the routing mode");
        }
        let report = node::apply(&self.host.netlink, &desired, tunnel.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        if report.changes() > 0 {
            tracing::info!(?report, routing = ?config.routing, "node routes and tunnel reconciled");
        }
        let masquerade = masquerade(&config.egress);
        tokio::task::spawn_blocking(move || nat::apply(&masquerade))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if config.blocks.is_empty() {
            return Err("no address blocks assigned to this node yet: ferrite-operator assigns them in its NodeNetwork".into());
        }
        Ok(())
    }

    /// The IPAM state as JSON (blocks and allocations), for `/ipam`.
    pub fn ipam_json(&self) -> serde_json::Value {
        let ipam = self.ipam();
        serde_json::json!({
            "allocations": ipam.state().allocations,
            "capacity": ipam.capacity(),
        })
    }
}

/// Pods are routed through the node: IPv4 forwarding must be on (it is per network namespace;
/// `/proc/sys/net` shows the namespace of the process reading it).
fn enable_forwarding() -> Result<(), String> {
    const PATH: &str = "/proc/sys/net/ipv4/ip_forward";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => Ok(()),
        _ => std::fs::write(PATH, "1").map_err(|e| {
            format!("enabling IPv4 forwarding ({PATH}): {e}; the agent must run privileged")
        }),
    }
}

/// The nftables masquerade rules for `egress` (IPv4; IPv6 pools arrive with dual-stack).
pub fn masquerade(egress: &config::Egress) -> nat::Masquerade {
    let v4 = |nets: &[IpNet]| {
        nets.iter()
            .filter_map(|n| match n {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            })
            .collect()
    };
    nat::Masquerade {
        sources: v4(&egress.sources),
        exempt: v4(&egress.exempt),
    }
}

/// The ADD result: the host veth, the pod interface (in its sandbox), the /32 and the
/// default route via the link-local gateway.
fn add_result(request: &Request, attached: &pod::Attached, ip: Ipv4Addr, mtu: u32) -> CniResult {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    CniResult {
        cni_version: request.cni_version.clone(),
        interfaces: vec![
            spec::Interface {
                name: attached.host_ifname.clone(),
                mac: mac(attached.host_mac),
                mtu: Some(mtu),
                sandbox: String::new(),
            },
            spec::Interface {
                name: request.ifname.clone(),
                mac: mac(attached.pod_mac),
                mtu: Some(mtu),
                sandbox: request.netns_path.clone(),
            },
        ],
        ips: vec![spec::IpConfig {
            address: format!("{ip}/32"),
            gateway: Some(POD_GATEWAY.to_string()),
            interface: Some(1),
        }],
        routes: vec![spec::Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(POD_GATEWAY.to_string()),
        }],
        dns: serde_json::json!({}),
    }
}

/// Replays DELs the plugin queued while the agent was down.
pub async fn replay_spool(agent: &Agent, dir: &std::path::Path) {
    let pending = match ferrite_cni::spool::pending(dir) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("reading the DEL spool {}: {e}", dir.display());
            return;
        }
    };
    for (path, reason) in pending.corrupt {
        match ferrite_cni::spool::quarantine(&path) {
            Ok(to) => tracing::warn!(
                "queued DEL {} is unreadable ({reason}): moved to {}",
                path.display(),
                to.display()
            ),
            Err(e) => tracing::warn!(
                "queued DEL {} is unreadable ({reason}) and cannot be moved aside: {e}",
                path.display()
            ),
        }
    }
    for (path, mut request) in pending.requests {
        request.replayed = true;
        match agent.handle(request, None).await {
            Response::Error(e) => {
                tracing::warn!(
                    "replaying queued DEL {}: {} (kept for the next start)",
                    path.display(),
                    e.msg
                );
            }
            _ => {
                if let Err(e) = ferrite_cni::spool::done(&path) {
                    tracing::warn!("removing replayed DEL {}: {e}", path.display());
                }
            }
        }
    }
}

/// Accepts plugin connections on `listener`, one task per request.
pub async fn serve(agent: Arc<Agent>, listener: tokio::net::UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::error!("accepting a plugin connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            // A plugin that connects and never finishes its request must not hold a task forever.
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                ferrite_cni::server::read_request(&stream),
            );
            let response = match read.await {
                Ok(Ok((request, netns))) => agent.handle(request, netns).await,
                Ok(Err(e)) => ferrite_cni::server::error_response(&e),
                Err(_) => {
                    tracing::warn!("a plugin connection sent no complete request within 10 s");
                    return;
                }
            };
            if let Err(e) = ferrite_cni::server::write_response(&stream, &response).await {
                tracing::warn!("answering the plugin: {e}");
            }
        });
    }
}
