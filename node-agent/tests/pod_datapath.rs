//! The pod datapath against the real kernel. Needs root: every test makes its own network
//! namespaces — a "node" one standing in for the host (whose handle the agent would hold) and
//! pod ones — and fails, never skips, if it cannot. The namespace the tests run in is never
//! changed.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::{NODE_IP, Netns, node, tcp_exchange};
use ferrite_agent::datapath::DatapathError;
use ferrite_agent::datapath::pod::{
    Attached, POD_ROUTE_PROTOCOL, PodInterface, attach, check, detach, host_ifname, host_interfaces,
};
use ferrite_agent::netns;

const MTU: u32 = 1400;

fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, n)
}

fn pod_interface(n: u8) -> PodInterface {
    PodInterface {
        container_id: format!("{:064x}", u64::from(n) * 0x1234_5678_9abc),
        ifname: "eth0".into(),
        address: pod_ip(n),
        mtu: MTU,
    }
}

fn node_sockets(node: &Netns) -> netns::Sockets {
    netns::sockets_in(node.fd()).expect("netlink and device sockets in the node namespace")
}

/// Everything Ferrite leaves in the node's namespace: `fe*` links and routes with its
/// protocol.
fn ferrite_leftovers(node: &Netns) -> (Vec<String>, String) {
    let links: Vec<String> = node
        .ip(&["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with("fe"))
        .collect();
    let routes = node.ip(&["route", "show", "proto", &POD_ROUTE_PROTOCOL.to_string()]);
    (links, routes)
}

fn assert_node_clean(node: &Netns) {
    let (links, routes) = ferrite_leftovers(node);
    assert!(links.is_empty(), "Ferrite links left behind: {links:?}");
    assert!(
        routes.trim().is_empty(),
        "Ferrite routes left behind: {routes}"
    );
}

#[tokio::test]
async fn three_pods_reach_each_other_and_the_node_without_nat() {
    let node = node("three");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let pods: Vec<Netns> = (1..=3)
        .map(|i| Netns::new("three", &format!("pod{i}")))
        .collect();
    let mut attached: Vec<Attached> = Vec::new();
    for (i, ns) in (1u8..).zip(&pods) {
        let a = attach(&node_sockets, ns.fd(), &pod_interface(i))
            .await
            .unwrap_or_else(|e| panic!("attach pod {i}: {e}"));
        assert_eq!(
            a.host_ifname,
            host_ifname(&pod_interface(i).container_id, "eth0")
        );
        attached.push(a);
    }
    for (i, ns) in (1u8..).zip(&pods) {
        check(&host, ns.fd(), &pod_interface(i))
            .await
            .unwrap_or_else(|e| panic!("check pod {i}: {e}"));
    }

    let mut expected: Vec<String> = attached.iter().map(|a| a.host_ifname.clone()).collect();
    expected.sort();
    assert_eq!(host_interfaces(&host).await.expect("list"), expected);

    // What the kernel holds, seen with iproute2, matches what the CNI result will report.
    let pod1 = &pods[0];
    let link = pod1.ip(&["-o", "link", "show", "eth0"]);
    let mac = attached[0].pod_mac.map(|b| format!("{b:02x}")).join(":");
    assert!(link.contains(&mac) && link.contains("mtu 1400"), "{link}");
    assert!(
        link.starts_with(&format!("{}: eth0@", attached[0].pod_ifindex)),
        "{link}"
    );
    let neigh = pod1.ip(&["neigh", "show", "169.254.1.1"]);
    let host_mac = attached[0].host_mac.map(|b| format!("{b:02x}")).join(":");
    assert!(
        neigh.contains(&host_mac) && neigh.contains("PERMANENT"),
        "{neigh}"
    );
    assert!(
        pod1.ip(&["route", "show", "default"])
            .contains("via 169.254.1.1 dev eth0"),
        "default route"
    );
    let host_route = node.ip(&["route", "show", &pod_ip(1).to_string()]);
    assert!(
        host_route.contains(&format!("dev {} ", attached[0].host_ifname))
            && host_route.contains("proto 253")
            && host_route.contains("scope link"),
        "{host_route}"
    );
    // No proxy_arp: the permanent neighbour entry makes it unnecessary.
    let proxy_arp = std::process::Command::new("ip")
        .args(["netns", "exec", &node.name, "sysctl", "-n"])
        .arg(format!(
            "net.ipv4.conf.{}.proxy_arp",
            attached[0].host_ifname
        ))
        .output()
        .expect("run sysctl");
    assert_eq!(String::from_utf8_lossy(&proxy_arp.stdout).trim(), "0");

    // Pod to pod through the node: the server sees the client pod's own address.
    let peer = tcp_exchange(&pods[1], pod_ip(2), &pods[0]);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(pod_ip(1)),
        "pod 2 saw pod 1 as {peer}"
    );
    let peer = tcp_exchange(&pods[0], pod_ip(1), &pods[2]);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(pod_ip(3)),
        "pod 1 saw pod 3 as {peer}"
    );
    // Node to pod.
    let peer = tcp_exchange(&pods[2], pod_ip(3), &node);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(NODE_IP),
        "pod 3 saw the node as {peer}"
    );
    // Pod to node.
    let peer = tcp_exchange(&node, NODE_IP, &pods[1]);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(pod_ip(2)),
        "the node saw pod 2 as {peer}"
    );
}

#[tokio::test]
async fn check_says_precisely_what_differs() {
    let node = node("check");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let pod = Netns::new("check", "pod");
    let p = pod_interface(5);
    let a = attach(&node_sockets, pod.fd(), &p).await.expect("attach");
    check(&host, pod.fd(), &p)
        .await
        .expect("fresh pod checks out");

    node.ip(&["route", "del", "10.244.0.5/32", "dev", &a.host_ifname]);
    let err = check(&host, pod.fd(), &p).await.expect_err("route gone");
    let text = err.to_string();
    assert!(matches!(err, DatapathError::Check(_)), "{err:?}");
    assert!(
        text.contains(&format!(
            "the node lacks the route 10.244.0.5/32 dev {} scope link proto 253 (it has none)",
            a.host_ifname
        )),
        "{text}"
    );
    assert!(text.contains("Delete the pod"), "{text}");

    pod.ip(&[
        "neigh",
        "replace",
        "169.254.1.1",
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "eth0",
    ]);
    pod.ip(&["route", "del", "default"]);
    let text = check(&host, pod.fd(), &p)
        .await
        .expect_err("changed")
        .to_string();
    assert!(
        text.contains("the pod lacks the permanent neighbour entry 169.254.1.1"),
        "{text}"
    );
    assert!(text.contains("it has lladdr 02:00:00:00:00:01"), "{text}");
    assert!(
        text.contains("the pod lacks the route default via 169.254.1.1 dev eth0"),
        "{text}"
    );

    pod.ip(&["addr", "del", "10.244.0.5/32", "dev", "eth0"]);
    pod.ip(&["addr", "add", "10.244.0.99/32", "dev", "eth0"]);
    pod.ip(&["link", "set", "eth0", "mtu", "1300"]);
    let text = check(&host, pod.fd(), &p)
        .await
        .expect_err("changed")
        .to_string();
    println!("check reported: {text}");
    assert!(
        text.contains(
            "eth0 in the pod should have exactly the IPv4 address 10.244.0.5/32 but has 10.244.0.99/32"
        ),
        "{text}"
    );
    assert!(
        text.contains("the pod's interface eth0 has MTU 1300, not 1400"),
        "{text}"
    );
    assert!(
        text.contains("the node lacks the route"),
        "still reported: {text}"
    );
    // Removing a device's last address makes the kernel flush its routes and neighbours.
    assert!(text.contains("the pod lacks the route default"), "{text}");

    detach(&host, &a.host_ifname).await.expect("detach");
    let text = check(&host, pod.fd(), &p)
        .await
        .expect_err("gone")
        .to_string();
    assert!(
        text.contains(&format!(
            "the node-side interface {} does not exist",
            a.host_ifname
        )) && text.contains("eth0 does not exist in the pod's namespace"),
        "{text}"
    );
}

#[tokio::test]
async fn a_retried_add_replaces_the_earlier_attempt() {
    let node = node("retry");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let pod = Netns::new("retry", "pod");
    let p = pod_interface(7);
    let first = attach(&node_sockets, pod.fd(), &p)
        .await
        .expect("first ADD");
    let second = attach(&node_sockets, pod.fd(), &p)
        .await
        .expect("retried ADD");
    assert_eq!(first.host_ifname, second.host_ifname);
    assert_eq!(first.host_mac, second.host_mac);
    check(&host, pod.fd(), &p).await.expect("check after retry");
    assert_eq!(
        host_interfaces(&host).await.expect("list"),
        std::slice::from_ref(&second.host_ifname)
    );

    // A retry with another address (IPAM should not do that, but nothing stale may remain).
    let moved = PodInterface {
        address: pod_ip(8),
        ..p.clone()
    };
    attach(&node_sockets, pod.fd(), &moved)
        .await
        .expect("ADD with a new address");
    check(&host, pod.fd(), &moved)
        .await
        .expect("check the new address");
    let routes = node.ip(&["route", "show", "proto", "253"]);
    assert!(!routes.contains("10.244.0.7"), "stale route: {routes}");
    assert_eq!(routes.lines().count(), 1, "{routes}");
}

#[tokio::test]
async fn detach_is_idempotent_and_leaves_nothing_behind() {
    let node = node("detach");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let pods: Vec<Netns> = (1..=2)
        .map(|i| Netns::new("detach", &format!("pod{i}")))
        .collect();
    let mut names = Vec::new();
    for (i, ns) in (1u8..).zip(&pods) {
        names.push(
            attach(&node_sockets, ns.fd(), &pod_interface(i))
                .await
                .expect("attach")
                .host_ifname,
        );
    }
    for name in &names {
        assert!(
            detach(&host, name).await.expect("first DEL"),
            "{name} existed"
        );
        assert!(
            !detach(&host, name).await.expect("second DEL"),
            "{name} is gone"
        );
    }
    assert_node_clean(&node);
    assert!(host_interfaces(&host).await.expect("list").is_empty());
    for ns in &pods {
        let links = ns.ip(&["-o", "link", "show"]);
        assert!(
            !links.contains("eth0"),
            "the pod side went with it: {links}"
        );
    }
}

#[tokio::test]
async fn detach_refuses_what_ferrite_did_not_make() {
    let node = node("refuse");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let err = detach(&host, "lo").await.expect_err("not a Ferrite name");
    assert!(matches!(err, DatapathError::Invalid(_)), "{err:?}");
    // A non-veth with a Ferrite-shaped name (vxlan: no dummy module on this kernel).
    node.ip(&[
        "link",
        "add",
        "fe0123456789a",
        "type",
        "vxlan",
        "id",
        "9",
        "dstport",
        "4789",
    ]);
    let err = detach(&host, "fe0123456789a")
        .await
        .expect_err("not a veth");
    assert!(err.to_string().contains("is not a veth"), "{err}");
    assert!(
        node.ip(&["link", "show", "fe0123456789a"])
            .contains("fe0123456789a")
    );
    assert!(
        host_interfaces(&host).await.expect("list").is_empty(),
        "vxlan is not listed"
    );
}

#[tokio::test]
async fn a_pod_that_already_has_the_interface_name_gets_nothing() {
    let node = node("taken");
    let node_sockets = node_sockets(&node);
    let pod = Netns::new("taken", "pod");
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other0",
    ]);
    let err = attach(&node_sockets, pod.fd(), &pod_interface(3))
        .await
        .expect_err("eth0 is taken");
    let text = err.to_string();
    assert!(
        text.starts_with("create veth pair")
            && text.contains("already has an interface named eth0"),
        "{text}"
    );
    assert_node_clean(&node);
    let links = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(
        links.contains("other0"),
        "the pod's own eth0 is untouched: {links}"
    );
}

#[tokio::test]
async fn a_failure_midway_removes_everything_made_so_far() {
    let node = node("midway");
    let node_sockets = node_sockets(&node);
    let pod = Netns::new("midway", "pod");
    // The pod already has a default route, so adding ours fails after the veth exists.
    pod.ip(&[
        "link", "add", "other0", "type", "veth", "peer", "name", "other1",
    ]);
    pod.ip(&["link", "set", "other0", "up"]);
    pod.ip(&["route", "add", "default", "dev", "other0"]);
    let err = attach(&node_sockets, pod.fd(), &pod_interface(4))
        .await
        .expect_err("default route taken");
    let text = err.to_string();
    assert!(
        text.starts_with("add route default via 169.254.1.1 dev eth0 in the pod's namespace: ")
            && err.errno() == Some(17),
        "{text} / {err:?}"
    );
    assert_node_clean(&node);
    let links = pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("eth0"), "no half-made eth0: {links}");
}

#[tokio::test]
async fn an_address_already_routed_on_the_node_is_refused_and_rolled_back() {
    let node = node("dup");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let first = Netns::new("dup", "pod1");
    let second = Netns::new("dup", "pod2");
    let p1 = pod_interface(9);
    attach(&node_sockets, first.fd(), &p1)
        .await
        .expect("first pod");
    let p2 = PodInterface {
        container_id: "other".into(),
        ..p1.clone()
    };
    let text = attach(&node_sockets, second.fd(), &p2)
        .await
        .expect_err("same address")
        .to_string();
    assert!(text.contains("another pod holds this address"), "{text}");
    assert_eq!(
        host_interfaces(&host).await.expect("list").len(),
        1,
        "the second veth was removed"
    );
    check(&host, first.fd(), &p1)
        .await
        .expect("the first pod is untouched");
}

#[tokio::test]
async fn attach_latency_over_100_pods() {
    let node = node("latency");
    let node_sockets = node_sockets(&node);
    let host = node_sockets.netlink.clone();
    let pods: Vec<Netns> = (0..100)
        .map(|i| Netns::new("latency", &format!("p{i}")))
        .collect();
    let mut took = Vec::new();
    for (i, ns) in (10u8..).zip(&pods) {
        let started = Instant::now();
        attach(&node_sockets, ns.fd(), &pod_interface(i))
            .await
            .expect("attach");
        took.push(started.elapsed());
    }
    let mut detach_took = Vec::new();
    for i in (10u8..).take(pods.len()) {
        let name = host_ifname(&pod_interface(i).container_id, "eth0");
        let started = Instant::now();
        assert!(detach(&host, &name).await.expect("detach"));
        detach_took.push(started.elapsed());
    }
    let report = |what: &str, mut d: Vec<Duration>| {
        d.sort();
        let at = |q: usize| d[(d.len() * q / 100).min(d.len() - 1)];
        println!(
            "{what} over {} pods: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}, total {:?}",
            d.len(),
            at(50),
            at(90),
            at(99),
            d[d.len() - 1],
            d.iter().sum::<Duration>()
        );
        at(50)
    };
    let p50 = report("attach", took);
    report("detach", detach_took);
    assert!(p50 < Duration::from_millis(50), "attach p50 {p50:?}");
    assert_node_clean(&node);
}

#[test]
fn proc_sys_net_follows_the_calling_threads_namespace() {
    // Set a per-namespace sysctl in a scratch namespace the ordinary way...
    let ns = Netns::new("sysctl", "x");
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_default_ttl=33",
        ])
        .status()
        .expect("run sysctl");
    assert!(out.success());
    let ours = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").expect("read");
    assert_ne!(ours.trim(), "33", "the test's own namespace differs");
    // ...then read it, and only then write it, from a thread that entered the namespace while
    // the process's other threads (and its /proc mount) stay where they are.
    let seen = netns::run_in(ns.fd(), || {
        let seen = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").expect("read");
        if seen.trim() == "33" {
            std::fs::write("/proc/sys/net/ipv4/ip_default_ttl", "44").expect("write");
        }
        seen
    })
    .expect("enter");
    assert_eq!(
        seen.trim(),
        "33",
        "a setns'd thread sees its namespace's sysctls"
    );
    let after = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "sysctl",
            "-n",
            "net.ipv4.ip_default_ttl",
        ])
        .output()
        .expect("run sysctl");
    assert_eq!(
        String::from_utf8_lossy(&after.stdout).trim(),
        "44",
        "the write landed there"
    );
    let ours_after = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl").expect("read");
    assert_eq!(ours, ours_after, "and not here");
}

/// The device and inode of a network namespace file (`/proc/.../ns/net` or a bind mount).
fn namespace_id(path: &str) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {path}: {e}"));
    (meta.dev(), meta.ino())
}

#[tokio::test]
async fn the_namespace_worker_runs_jobs_there_and_goes_home_after_each() {
    let home = namespace_id("/proc/thread-self/ns/net");
    let pod = Netns::new("worker", "pod");
    let pod_id = namespace_id(&format!("/run/netns/{}", pod.name));
    assert_ne!(home, pod_id);
    for _ in 0..3 {
        let (tid, seen) = netns::worker::run_in(pod.fd(), || {
            Ok((
                rustix::thread::gettid().as_raw_nonzero().get(),
                namespace_id("/proc/thread-self/ns/net"),
            ))
        })
        .await
        .expect("a job in the pod's namespace");
        assert_eq!(seen, pod_id, "the job ran in the pod's namespace");
        // The worker went back before answering, so it no longer holds the pod's namespace.
        assert_eq!(
            namespace_id(&format!("/proc/self/task/{tid}/ns/net")),
            home,
            "the worker thread {tid} is back in the agent's namespace"
        );
    }
    // A descriptor that is not a namespace fails the job, not the worker.
    let not_a_namespace = std::fs::File::open("/dev/null").expect("open /dev/null");
    let err = netns::worker::run_in(std::os::fd::AsFd::as_fd(&not_a_namespace), || Ok(()))
        .await
        .expect_err("/dev/null is no namespace");
    assert!(err.to_string().contains("setns"), "{err}");
    netns::worker::run_in(pod.fd(), || Ok(()))
        .await
        .expect("the worker still serves");
}

#[tokio::test]
async fn a_batch_answers_every_request_in_order_and_a_refusal_stops_none() {
    use ferrite_agent::datapath::batch::{self, Verb};
    use rtnetlink::packet_route::RouteNetlinkMessage;

    let ns = Netns::new("batch", "x");
    // The sockets an ADD opens in a pod's namespace.
    let sockets = netns::sockets_in_background(ns.fd())
        .await
        .expect("a batch connection and a device socket in the namespace");
    let batch = &sockets.netlink;
    let lo_up = rtnetlink::LinkUnspec::new_with_name("lo").up().build();
    let missing_link = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(Ipv4Addr::new(10, 9, 0, 0), 16)
        .output_interface(999)
        .build();
    let lo_index = netns::index_of(std::os::fd::AsFd::as_fd(&sockets.device), "lo")
        .expect("ioctl")
        .expect("lo exists");
    let address = rtnetlink::AddressMessageBuilder::<Ipv4Addr>::new()
        .index(lo_index)
        .address(Ipv4Addr::new(10, 9, 9, 9), 32)
        .build();
    let outcomes = batch
        .send(vec![
            batch::request(Verb::Set, RouteNetlinkMessage::SetLink(lo_up)),
            batch::request(Verb::Add, RouteNetlinkMessage::NewRoute(missing_link)),
            batch::request(Verb::Add, RouteNetlinkMessage::NewAddress(address)),
        ])
        .await
        .expect("the batch is answered");
    assert_eq!(outcomes.len(), 3);
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    match &outcomes[1] {
        Err(rtnetlink::Error::NetlinkError(e)) => {
            assert_eq!(e.raw_code(), -19, "ENODEV for interface 999: {e}");
        }
        other => panic!("the route via a missing interface is refused, got {other:?}"),
    }
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    let addresses = ns.ip(&["-4", "addr", "show", "dev", "lo"]);
    assert!(
        addresses.contains("UP") && addresses.contains("10.9.9.9/32"),
        "the requests before and after the refused one took effect: {addresses}"
    );
}
