//! The whole node side, for real: `ferrite-agent` processes running in "node" network
//! namespaces this test creates, driven by the real `ferrite` plugin binary exactly as a
//! container runtime drives it, with TCP between "pods" (namespaces) to prove the datapath.
//!
//! Needs root (namespaces, veths, nftables) and the plugin binary next to the agent's (`cargo
//! test --workspace` builds both). Nothing here touches the host's own network namespace.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ferrite_agent::netns;
use serde_json::{Value, json};

const AGENT: &str = env!("CARGO_BIN_EXE_ferrite-agent");
const HEALTH: &str = "127.0.0.1:19893";

fn plugin_binary() -> PathBuf {
    let p = Path::new(AGENT).with_file_name("ferrite");
    assert!(
        p.exists(),
        "the plugin binary {} is missing: build it with `cargo build -p ferrite-cni` (cargo test --workspace does)",
        p.display()
    );
    p
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A network namespace under /run/netns, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!(
            "fes{}-{}{}",
            std::process::id(),
            tag,
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Ns(name)
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = netns::open(&self.path()).unwrap();
        netns::run_in(fd.as_fd(), f).unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A short unique link name (≤ 15 characters).
fn link_name(tag: &str) -> String {
    format!(
        "fs{}{}{}",
        std::process::id() % 100_000,
        tag,
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// Joins `a` and `b` with a veth pair: `a_ip`/24 in `a`, `b_ip`/24 in `b`.
fn wire(a: &Ns, a_ip: &str, b: &Ns, b_ip: &str) {
    let (la, lb) = (link_name("a"), link_name("b"));
    sh(&[
        "ip", "link", "add", &la, "netns", &a.0, "type", "veth", "peer", "name", &lb, "netns", &b.0,
    ]);
    for (ns, l, ip) in [(a, &la, a_ip), (b, &lb, b_ip)] {
        sh(&[
            "ip",
            "-n",
            &ns.0,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            l,
        ]);
        sh(&["ip", "-n", &ns.0, "link", "set", l, "up"]);
    }
}

/// An agent process in a node namespace, stopped on drop.
struct Agent {
    node: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    fn start(node: &Ns, dir: &Path, config: &Value) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        let mut a = Agent {
            node: node.0.clone(),
            dir: dir.to_owned(),
            child: None,
        };
        a.spawn();
        a
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    fn spool(&self) -> PathBuf {
        self.dir.join("spool")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .unwrap();
        let d = &self.dir;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.node, AGENT])
            .arg(format!("--config={}", d.join("config.json").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--state-dir={}", d.join("state").display()))
            .arg(format!("--spool-dir={}", self.spool().display()))
            .arg(format!("--health-addr={HEALTH}"))
            .env("FERRITE_LOG", "debug")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn get(&self, node: &Ns, path: &str) -> Option<String> {
        let path = path.to_owned();
        node.run(move || {
            let mut s =
                TcpStream::connect_timeout(&HEALTH.parse().unwrap(), Duration::from_secs(1))
                    .ok()?;
            write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
            let mut r = String::new();
            s.read_to_string(&mut r).ok()?;
            (r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"))
                .then(|| r.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()))
                .flatten()
        })
    }

    fn wait_ready(&mut self, node: &Ns) {
        let start = Instant::now();
        while self.get(node, "/readyz").is_none() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!(
                    "the agent in {} exited ({status}); its log:\n{}",
                    self.node,
                    self.log()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the agent in {} did not become ready; its log:\n{}",
                self.node,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn allocations(&self, node: &Ns) -> Vec<String> {
        let body = self.get(node, "/ipam").expect("/ipam");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["allocations"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }

    fn reconfigure(&self, config: &Value) {
        // Write-then-rename: the agent never reads half a file.
        let tmp = self.dir.join("config.json.tmp");
        std::fs::write(&tmp, config.to_string()).unwrap();
        std::fs::rename(tmp, self.dir.join("config.json")).unwrap();
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `ip netns exec` execs the agent: the child's pid is the agent's.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the plugin like a runtime: environment, configuration on stdin; returns (ok, stdout).
fn cni(command: &str, socket: &Path, spool: &Path, container: &str, netns: &str) -> (bool, Value) {
    let conf = json!({
        "cniVersion": "1.0.0", "name": "ferrite", "type": "ferrite",
        "agentSocket": socket, "spoolDir": spool,
    });
    let mut child = Command::new(plugin_binary())
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/nonexistent")
        .env(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=test;K8S_POD_NAME=".to_owned() + container,
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let value = if stdout.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or(Value::String(stdout))
    };
    (out.status.success(), value)
}

/// Runs the plugin for `pod` (its namespace's name is the container ID) against `agent`.
fn cni_pod(command: &str, agent: &Agent, pod: &Ns) -> (bool, Value) {
    cni(
        command,
        &agent.socket(),
        &agent.spool(),
        &pod.0,
        &pod.path().to_string_lossy(),
    )
}

/// ADD `pod` on `agent`; returns its address.
fn add(agent: &Agent, pod: &Ns) -> IpAddr {
    let (ok, out) = cni_pod("ADD", agent, pod);
    assert!(ok, "ADD {}: {out}\nagent log:\n{}", pod.0, agent.log());
    let addr = out["ips"][0]["address"].as_str().unwrap();
    addr.split('/').next().unwrap().parse().unwrap()
}

fn del(agent: &Agent, container: &str, netns: &str) {
    let (ok, out) = cni("DEL", &agent.socket(), &agent.spool(), container, netns);
    assert!(ok, "DEL {container}: {out}");
}

/// Opens a TCP connection from `client` to `server_ip:port` in `server` and returns the source
/// address the server saw.
fn tcp_peer(client: &Ns, server: &Ns, server_ip: IpAddr, port: u16) -> Result<IpAddr, String> {
    let addr = SocketAddr::new(server_ip, port);
    let listener = server
        .run(move || TcpListener::bind(addr))
        .map_err(|e| e.to_string())?;
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer.ip()));
    let connected =
        client.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(|_| ()));
    if let Err(e) = connected {
        // Unblock the acceptor.
        let _ = server.run(move || TcpStream::connect(addr));
        let _ = accept.join();
        return Err(format!("connect {addr}: {e}"));
    }
    accept.join().unwrap().map_err(|e| e.to_string())
}

fn config(node_ip: &str, block: &str, routing: Value, peers: Value, egress: Value) -> Value {
    json!({
        "nodeIP": node_ip,
        "blocks": [{"cidr": block, "pool": "test-pool"}],
        "routing": routing,
        "peers": peers,
        "egress": egress,
    })
}

/// A node alone: Native routing, no peers, no masquerade.
fn standalone(node_ip: &str, block: &str) -> Value {
    config(
        node_ip,
        block,
        json!({"mode": "Native"}),
        json!([]),
        json!({"sources": [], "exempt": []}),
    )
}

fn links(ns: &Ns) -> String {
    sh_out(&["ip", "-n", &ns.0, "-o", "link", "show"])
}

/// The veths in `ns` (Ferrite's host sides are named `fe…`).
fn veths(ns: &Ns) -> String {
    sh_out(&["ip", "-n", &ns.0, "-o", "link", "show", "type", "veth"])
}

#[test]
fn two_nodes_native_then_vxlan_restart_and_cleanup() {
    let tmp = tempfile::tempdir().unwrap();
    let (n1, n2) = (Ns::new("n"), Ns::new("n"));
    wire(&n1, "192.168.91.1", &n2, "192.168.91.2");
    let peer = |name: &str, ip: &str, block: &str| json!([{"name": name, "nodeIP": ip, "blocks": [block]}]);
    let native = json!({"mode": "Native"});
    let vxlan = json!({"mode": "VXLAN", "vni": 7, "port": 8472});
    let none = json!({"sources": [], "exempt": []});
    let c1 = |r: &Value| {
        config(
            "192.168.91.1",
            "10.211.1.0/26",
            r.clone(),
            peer("n2", "192.168.91.2", "10.211.2.0/26"),
            none.clone(),
        )
    };
    let c2 = |r: &Value| {
        config(
            "192.168.91.2",
            "10.211.2.0/26",
            r.clone(),
            peer("n1", "192.168.91.1", "10.211.1.0/26"),
            none.clone(),
        )
    };
    let mut a1 = Agent::start(&n1, &tmp.path().join("n1"), &c1(&native));
    let mut a2 = Agent::start(&n2, &tmp.path().join("n2"), &c2(&native));
    a1.wait_ready(&n1);
    a2.wait_ready(&n2);

    let (p1, p3, p2, p4) = (Ns::new("p"), Ns::new("p"), Ns::new("p"), Ns::new("p"));
    let ip1 = add(&a1, &p1);
    let ip3 = add(&a1, &p3);
    let ip2 = add(&a2, &p2);
    let ip4 = add(&a2, &p4);
    assert!(ip1.to_string().starts_with("10.211.1.") && ip2.to_string().starts_with("10.211.2."));
    // A retried ADD of the same attachment gets the same address.
    assert_eq!(add(&a1, &p1), ip1);
    let (ok, out) = cni_pod("CHECK", &a1, &p1);
    assert!(ok, "CHECK: {out}");

    // Native: across nodes and on one node, the server sees the client's pod address.
    assert_eq!(tcp_peer(&p1, &p2, ip2, 5001), Ok(ip1));
    assert_eq!(tcp_peer(&p2, &p1, ip1, 5002), Ok(ip2));
    assert_eq!(tcp_peer(&p1, &p3, ip3, 5003), Ok(ip1));
    // The node reaches its pods (from its own address).
    assert_eq!(
        tcp_peer(&n1, &p1, ip1, 5004),
        Ok("192.168.91.1".parse().unwrap())
    );

    // Switch to VXLAN: the agents see the new configuration and re-program.
    a1.reconfigure(&c1(&vxlan));
    a2.reconfigure(&c2(&vxlan));
    let start = Instant::now();
    while !(links(&n1).contains("ferrite.vxlan") && links(&n2).contains("ferrite.vxlan")) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no vxlan device after 10 s:\n{}",
            a1.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let details = sh_out(&["ip", "-n", &n1.0, "-d", "link", "show", "ferrite.vxlan"]);
    assert!(
        details.contains("vxlan id 7") && details.contains("dstport 8472"),
        "{details}"
    );
    let mut connected = false;
    for _ in 0..40 {
        if tcp_peer(&p1, &p2, ip2, 5005) == Ok(ip1) {
            connected = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(connected, "no pod-to-pod TCP over VXLAN:\n{}", a1.log());

    // The agent on n2 goes away: pods keep talking, a DEL meanwhile is queued by the plugin.
    a2.stop();
    assert_eq!(tcp_peer(&p1, &p2, ip2, 5006), Ok(ip1));
    del(&a2, &p4.0, &p4.path().to_string_lossy());
    assert!(
        std::fs::read_dir(a2.spool()).unwrap().count() == 1,
        "the DEL was not queued"
    );
    drop(p4); // the sandbox goes, as the runtime would remove it
    a2.spawn();
    a2.wait_ready(&n2);
    // Same addresses after the restart; the queued DEL was applied; the pod still works.
    let held = a2.allocations(&n2);
    assert!(held.contains(&ip2.to_string()), "{held:?}");
    assert!(
        !held.contains(&ip4.to_string()),
        "queued DEL not replayed: {held:?}"
    );
    assert_eq!(
        std::fs::read_dir(a2.spool()).unwrap().count(),
        0,
        "spool not emptied"
    );
    assert_eq!(add(&a2, &p2), ip2);
    assert_eq!(tcp_peer(&p1, &p2, ip2, 5007), Ok(ip1));

    // DEL everything, twice (the second time as containerd's: no netns).
    for (agent, pod) in [(&a1, &p1), (&a1, &p3), (&a2, &p2)] {
        del(agent, &pod.0, &pod.path().to_string_lossy());
        del(agent, &pod.0, "");
    }
    assert!(a1.allocations(&n1).is_empty() && a2.allocations(&n2).is_empty());
    let pod_proto = ferrite_agent::datapath::pod::POD_ROUTE_PROTOCOL.to_string();
    for n in [&n1, &n2] {
        let l = veths(n);
        assert!(!l.contains(": fe"), "host veths left behind:\n{l}");
        let routes = sh_out(&["ip", "-n", &n.0, "route", "show", "proto", &pod_proto]);
        assert!(
            routes.trim().is_empty(),
            "pod routes left behind:\n{routes}"
        );
    }

    // Uninstall: `ferrite-agent cleanup` removes the tunnel, the routes and the nft table.
    drop(a1);
    sh(&["ip", "netns", "exec", &n1.0, AGENT, "cleanup"]);
    assert!(!links(&n1).contains("ferrite.vxlan"));
    let routes = sh_out(&["ip", "-n", &n1.0, "route", "show"]);
    assert!(!routes.contains("10.211.2.0/26"), "{routes}");
    let tables = sh_out(&["ip", "netns", "exec", &n1.0, "nft", "list", "tables"]);
    assert!(!tables.contains("ferrite"), "{tables}");
}

#[test]
fn egress_leaves_from_the_node_address_and_pod_traffic_is_not_natted() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, internet) = (Ns::new("n"), Ns::new("i"));
    wire(&node, "198.51.100.1", &internet, "198.51.100.10");
    let egress = json!({"sources": ["10.212.0.0/16"], "exempt": ["10.212.0.0/16", "10.96.0.0/12"]});
    let mut agent = Agent::start(
        &node,
        &tmp.path().join("n"),
        &config(
            "198.51.100.1",
            "10.212.1.0/26",
            json!({"mode": "Native"}),
            json!([]),
            egress,
        ),
    );
    agent.wait_ready(&node);
    let (p1, p2) = (Ns::new("p"), Ns::new("p"));
    let (ip1, ip2) = (add(&agent, &p1), add(&agent, &p2));
    // The outside host has no route to the pods: only a masqueraded connection succeeds.
    assert_eq!(
        tcp_peer(&p1, &internet, "198.51.100.10".parse().unwrap(), 6001),
        Ok("198.51.100.1".parse().unwrap())
    );
    assert_eq!(tcp_peer(&p1, &p2, ip2, 6002), Ok(ip1));
    let ruleset = sh_out(&[
        "ip", "netns", "exec", &node.0, "nft", "list", "table", "ip", "ferrite",
    ]);
    assert!(ruleset.contains("masquerade"), "{ruleset}");
}

#[test]
fn bad_requests_get_cni_errors_and_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Ns::new("n");
    // A /29: six usable addresses once the first and last are skipped.
    let mut agent = Agent::start(
        &node,
        &tmp.path().join("n"),
        &standalone("192.168.92.1", "10.213.1.0/29"),
    );
    agent.wait_ready(&node);

    let (ok, out) = cni(
        "ADD",
        &agent.socket(),
        &agent.spool(),
        "c-missing",
        "/run/netns/does-not-exist",
    );
    assert!(!ok);
    assert_eq!(out["code"], 4, "{out}");
    assert!(
        out["msg"].as_str().unwrap().contains("does-not-exist"),
        "{out}"
    );

    // A pod whose eth0 already exists: the attach fails at that step and is rolled back.
    let busy = Ns::new("p");
    sh(&[
        "ip", "-n", &busy.0, "link", "add", "eth0", "type", "veth", "peer", "name", "x0",
    ]);
    let (ok, out) = cni_pod("ADD", &agent, &busy);
    assert!(!ok);
    assert_eq!(out["code"], 101, "{out}");
    assert!(
        agent.allocations(&node).is_empty(),
        "address not given back"
    );
    assert!(
        !veths(&node).contains(": fe"),
        "half-made veth left:\n{}",
        veths(&node)
    );

    // Exhaustion names the pool.
    let pods: Vec<Ns> = (0..6).map(|_| Ns::new("p")).collect();
    for p in &pods {
        add(&agent, p);
    }
    let extra = Ns::new("p");
    let (ok, out) = cni_pod("ADD", &agent, &extra);
    assert!(!ok);
    assert_eq!(out["code"], 100, "{out}");
    assert!(out["msg"].as_str().unwrap().contains("test-pool"), "{out}");
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Ns::new("n");
    let mut agent = Agent::start(
        &node,
        &tmp.path().join("n"),
        &standalone("192.168.93.1", "10.214.0.0/24"),
    );
    agent.wait_ready(&node);
    let pods: Vec<Ns> = (0..30).map(|_| Ns::new("p")).collect();
    let ips: Vec<IpAddr> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|p| s.spawn(|| add(&agent, p))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: std::collections::BTreeSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), pods.len(), "{ips:?}");
}
