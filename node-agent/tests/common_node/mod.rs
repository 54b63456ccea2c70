//! Scaffolding for the privileged node-datapath and NAT tests: a two-node topology in network
//! namespaces, built with `ip` (test setup only; the code under test talks netlink and nft).
//!
//! Needs root. Nothing here touches the host's own namespace: every command runs with
//! `ip -n <ns>` or `ip netns exec <ns>`, and every namespace is named `fen-<pid>-<tag>-<role>`
//! and deleted when its [`Netns`] is dropped, also when the test panics. When a namespace
//! cannot be created the test fails; it never skips.
//!
//! ```text
//!   pod1 (10.201.1.10/32)                              pod2 (10.201.2.10/32)
//!     | eth0 — p1h (169.254.1.1/32)                      | eth0 — p2h (169.254.1.1/32)
//!   node1 ul0 192.168.77.1/24 ——— veth ——— 192.168.77.2/24 ul0 node2
//!     | up0 198.51.100.1/24 (with_internet)
//!   internet eth0 198.51.100.10/24 (no route to the pods)
//! ```

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ferrite_agent::netns;
use ferrite_agent::routing::{self, Mode, Peer};
use ipnet::IpNet;

/// How long a connection attempt may take before the path counts as broken.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `program args`, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program} {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct Netns {
    /// `fen-<pid>-<tag>`.
    pub name: String,
    fd: OwnedFd,
}

impl Netns {
    /// Creates `fen-<pid>-<tag>`; fails (never skips) when that is not possible.
    pub fn new(tag: &str) -> Result<Self> {
        let name = format!("fen-{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name]).with_context(|| {
            format!("create the network namespace {name}: these tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN)")
        })?;
        let path = PathBuf::from("/run/netns").join(&name);
        match netns::open(&path) {
            Ok(fd) => {
                let ns = Self { name, fd };
                ns.ip(&["link", "set", "lo", "up"])?;
                Ok(ns)
            }
            Err(e) => {
                let _ = run("ip", &["netns", "del", &name]);
                Err(e).context("open the new namespace")
            }
        }
    }

    /// The namespace, for [`netns::run_in`] and [`netns::handle_in`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip -j -n <name> <args>`, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["-j"];
        all.extend_from_slice(args);
        let out = self.ip(&all)?;
        if out.trim().is_empty() {
            return Ok(serde_json::Value::Array(vec![]));
        }
        serde_json::from_str(&out).with_context(|| format!("parse `ip -j {}`", args.join(" ")))
    }

    /// `ip netns exec <name> <command>`: for commands that must run in the namespace as a
    /// process (sysctl under /proc/sys/net follows the process, not the thread; nft; bridge).
    pub fn exec(&self, command: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(command);
        run("ip", &all)
    }

    /// Sets a sysctl in the namespace.
    pub fn sysctl(&self, setting: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", setting]).map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veths in it, and with them their peers.
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A pod: its own namespace with `eth0` holding a /32, default route via the link-local
/// gateway the node answers for.
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A node namespace with one pod.
pub struct Node {
    /// The node's namespace.
    pub ns: Netns,
    /// Its underlay address.
    pub ip: IpAddr,
    /// Its pod block.
    pub block: IpNet,
    /// Its one pod.
    pub pod: Pod,
}

impl Node {
    fn new(tag: &str, n: u8) -> Result<Self> {
        let ns = Netns::new(&format!("{tag}-n{n}"))?;
        ns.sysctl("net.ipv4.ip_forward=1")?;
        let pod_ns = Netns::new(&format!("{tag}-p{n}"))?;
        let pod_ip = Ipv4Addr::new(10, 201, n, 10);
        let host_if = format!("p{n}h");
        let pod_cidr = format!("{pod_ip}/32");
        ns.ip(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod_ns.name,
        ])?;
        ns.ip(&["addr", "add", "169.254.1.1/32", "dev", &host_if])?;
        ns.ip(&["link", "set", &host_if, "up"])?;
        ns.ip(&["route", "add", &pod_cidr, "dev", &host_if])?;
        pod_ns.ip(&["addr", "add", &pod_cidr, "dev", "eth0"])?;
        pod_ns.ip(&["link", "set", "eth0", "up"])?;
        pod_ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
            "onlink",
        ])?;
        Ok(Self {
            ns,
            ip: IpAddr::V4(Ipv4Addr::new(192, 168, 77, n)),
            block: format!("10.201.{n}.0/26").parse()?,
            pod: Pod {
                ns: pod_ns,
                ip: pod_ip,
            },
        })
    }

    /// What the other nodes know of this one.
    pub fn as_peer(&self) -> Peer {
        Peer {
            name: self.ns.name.clone(),
            node_ip: self.ip,
            tunnel_endpoint: None,
            blocks: vec![self.block],
        }
    }

    /// The desired inter-node state of this node for `mode` and `peers` (1500-byte underlay).
    pub fn desired(&self, mode: Mode, peers: &[Peer]) -> routing::Desired {
        let (desired, conflicts) =
            routing::desired(mode, self.ip, &[self.block], peers, 1500, None);
        assert!(conflicts.is_empty(), "{conflicts:?}");
        desired
    }
}

/// Two nodes on one underlay, optionally an "internet" host behind node1.
pub struct Cluster {
    /// 192.168.77.1, block 10.201.1.0/26.
    pub node1: Node,
    /// 192.168.77.2, block 10.201.2.0/26.
    pub node2: Node,
    /// 198.51.100.10, reached from node1's `up0` (198.51.100.1); no route to the pods.
    pub internet: Option<Netns>,
}

/// node1's address towards the internet host.
pub const NODE1_UPLINK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The internet host's address.
pub const INTERNET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

impl Cluster {
    /// Builds the two nodes, their pods and the underlay; namespaces are `fen-<pid>-<tag>-*`.
    pub fn new(tag: &str) -> Result<Self> {
        let node1 = Node::new(tag, 1)?;
        let node2 = Node::new(tag, 2)?;
        node1.ns.ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            &node2.ns.name,
        ])?;
        for node in [&node1, &node2] {
            let cidr = format!("{}/24", node.ip);
            node.ns.ip(&["addr", "add", &cidr, "dev", "ul0"])?;
            node.ns.ip(&["link", "set", "ul0", "mtu", "1500", "up"])?;
        }
        Ok(Self {
            node1,
            node2,
            internet: None,
        })
    }

    /// [`Cluster::new`] plus the internet host behind node1.
    pub fn with_internet(tag: &str) -> Result<Self> {
        let mut cluster = Self::new(tag)?;
        let internet = Netns::new(&format!("{tag}-inet"))?;
        let n1 = &cluster.node1.ns;
        n1.ip(&[
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &internet.name,
        ])?;
        n1.ip(&[
            "addr",
            "add",
            &format!("{NODE1_UPLINK_IP}/24"),
            "dev",
            "up0",
        ])?;
        n1.ip(&["link", "set", "up0", "up"])?;
        internet.ip(&["addr", "add", &format!("{INTERNET_IP}/24"), "dev", "eth0"])?;
        internet.ip(&["link", "set", "eth0", "up"])?;
        cluster.internet = Some(internet);
        Ok(cluster)
    }

    /// The internet host's namespace.
    pub fn internet(&self) -> Result<&Netns> {
        self.internet
            .as_ref()
            .context("this cluster was built without the internet host")
    }
}

/// An established TCP connection between two namespaces.
pub struct Connection {
    /// The client's end.
    pub client: TcpStream,
    /// The server's end.
    pub server: TcpStream,
    /// The client's address as the server sees it.
    pub peer: SocketAddr,
}

impl Connection {
    /// Opens a connection from `client` to a listener on `server_ip` in `server`.
    pub fn open(client: &Netns, server: &Netns, server_ip: IpAddr) -> Result<Self> {
        // A socket keeps the namespace it was created in; the threads only create them.
        let listener = netns::run_in(server.fd(), || TcpListener::bind((server_ip, 0)))?
            .with_context(|| format!("listen on {server_ip} in {}", server.name))?;
        let addr = listener.local_addr()?;
        let client_stream =
            netns::run_in(client.fd(), || TcpStream::connect_timeout(&addr, TIMEOUT))?
                .with_context(|| format!("connect from {} to {addr}", client.name))?;
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + TIMEOUT;
        let (server_stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        server_stream.set_nonblocking(false)?;
        for s in [&client_stream, &server_stream] {
            s.set_read_timeout(Some(TIMEOUT))?;
            s.set_write_timeout(Some(TIMEOUT))?;
        }
        let mut connection = Self {
            client: client_stream,
            server: server_stream,
            peer,
        };
        connection.exchange()?;
        Ok(connection)
    }

    /// Sends a few bytes each way; fails when either direction is broken.
    pub fn exchange(&mut self) -> Result<()> {
        let mut buf = [0u8; 4];
        self.client.write_all(b"ping")?;
        self.server
            .read_exact(&mut buf)
            .context("the server did not receive")?;
        ensure!(&buf == b"ping");
        self.server.write_all(b"pong")?;
        self.client
            .read_exact(&mut buf)
            .context("the client did not receive")?;
        ensure!(&buf == b"pong");
        Ok(())
    }
}

/// The client address a server in `server` sees for a fresh connection from `client`.
pub fn seen_from(client: &Netns, server: &Netns, server_ip: IpAddr) -> Result<IpAddr> {
    Ok(Connection::open(client, server, server_ip)?.peer.ip())
}
