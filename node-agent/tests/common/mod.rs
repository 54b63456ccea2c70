//! Privileged test fixtures: throw-away network namespaces, a "node" namespace standing in for
//! the host (the tests never touch the namespace they run in), and TCP between namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferrite_agent::netns;

/// The node namespace's own address (on its `lo`), standing in for the node IP.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// Runs `ip` with `args`; panics with its stderr if it fails. Returns stdout.
pub fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted when dropped, also on panic.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
    fd: OwnedFd,
}

impl Netns {
    /// Creates `fet-<pid>-<test>-<label>`. Fails the test loudly if it cannot: these tests
    /// need root and must never pass by skipping.
    pub fn new(test: &str, label: &str) -> Netns {
        let name = format!("fet-{}-{test}-{label}", std::process::id());
        // A leftover from a crashed run with a recycled pid would make `add` fail.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run `ip netns add` (is iproute2 installed?)");
        assert!(
            out.status.success(),
            "cannot create network namespace {name} (these tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fd = netns::open(&Path::new("/run/netns").join(&name))
            .unwrap_or_else(|e| panic!("open namespace {name}: {e}"));
        Netns { name, fd }
    }

    /// The namespace as a descriptor, as the plugin passes it.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A fresh namespace set up as a node: `lo` up with [`NODE_IP`], IPv4 forwarding on.
pub fn node(test: &str) -> Netns {
    let ns = Netns::new(test, "node");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    enable_forwarding(&ns);
    ns
}

/// Turns on `net.ipv4.ip_forward` in `ns` by writing `/proc/sys` from a thread inside it.
///
/// `/proc/sys/net` resolves through the network namespace of the *thread* that looks a file
/// up (the sysctl set is chosen per `current` task), not that of the process or of the
/// `/proc` mount, so no `ip netns exec` is needed — the test
/// `proc_sys_net_follows_the_calling_threads_namespace` demonstrates it. As a guard against
/// ever writing the host's sysctl, the thread first checks that it sees the fresh
/// namespace's interface list (`all`, `default`, `lo` only).
pub fn enable_forwarding(ns: &Netns) {
    netns::run_in(ns.fd(), || {
        let mut seen: Vec<String> = std::fs::read_dir("/proc/sys/net/ipv4/conf")
            .expect("list /proc/sys/net/ipv4/conf")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            ["all", "default", "lo"],
            "this thread does not see the fresh namespace's sysctls; not writing them"
        );
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("enable ip_forward");
    })
    .expect("enter the node namespace");
}

/// A listener bound inside `ns` (the socket keeps the namespace it was made in).
pub fn listen(ns: &Netns, addr: Ipv4Addr, port: u16) -> TcpListener {
    netns::run_in(ns.fd(), || TcpListener::bind((addr, port)))
        .expect("enter the namespace")
        .unwrap_or_else(|e| panic!("bind {addr}:{port} in {}: {e}", ns.name))
}

/// Connects from `client` to `server_addr:port` in `server`, sends a line, reads the echo,
/// and returns the client address the server saw.
pub fn tcp_exchange(server: &Netns, server_addr: Ipv4Addr, client: &Netns) -> SocketAddr {
    let port = 7000;
    let listener = listen(server, server_addr, port);
    listener.set_nonblocking(true).expect("nonblocking");
    let accept = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    stream.set_nonblocking(false).expect("blocking");
                    let mut buf = [0; 5];
                    stream.read_exact(&mut buf).expect("server read");
                    stream.write_all(&buf).expect("server write");
                    return Some(peer);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
    });
    let to = SocketAddr::V4(SocketAddrV4::new(server_addr, port));
    let connected = netns::run_in(client.fd(), || {
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .expect("enter the client namespace");
    let mut stream =
        connected.unwrap_or_else(|e| panic!("connect from {} to {to}: {e}", client.name));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(b"hello").expect("client write");
    let mut echo = [0; 5];
    stream.read_exact(&mut echo).expect("client read");
    assert_eq!(&echo, b"hello");
    accept
        .join()
        .expect("server thread")
        .unwrap_or_else(|| panic!("{to} in {} never accepted", server.name))
}
