//! Pod interfaces: the veth pair, its addresses, routes and neighbour entries.
//!
//! Pods are routed, Calico-style, with no bridge. For a pod with address `A`:
//!
//! - **node side**: a veth named [`host_ifname`] (`fe` + 11 hex digits), up, with the pod's
//!   MTU, a MAC derived from the same hash ([`host_mac`]) and one transmit queue (as its peer;
//!   the kernel otherwise cuts one per CPU down to one, which waits for an RCU grace period),
//!   and the route `A/32 dev fe… scope link proto 253` ([`POD_ROUTE_PROTOCOL`]). It has no
//!   address.
//! - **pod side**: the peer, created directly inside the pod's namespace under the runtime's
//!   interface name (`eth0`), then set up (the kernel refuses to create a veth peer up), with
//!   `A/32`, the pod's MTU and a MAC derived from the same hash ([`pod_mac`]); `lo` up;
//!   `169.254.1.1 dev eth0 scope link`, `default via 169.254.1.1 dev eth0`, and a PERMANENT
//!   neighbour entry `169.254.1.1 → the node side's MAC` ([`POD_GATEWAY`]).
//!
//! Because the pod's neighbour entry for its gateway is permanent, the pod never sends an
//! ARP request for `169.254.1.1`, so the node side needs neither an address nor `proxy_arp`
//! (Calico enables `proxy_arp` so the host answers for the gateway; here nothing has to
//! answer). The node still resolves the pod's address by ARP on the veth, which the pod
//! answers for its own address as any host does.
//!
//! Everything on the pod side hangs off the veth, so deleting the node side removes the pod
//! side, its address, routes and neighbour entry, and the node's `/32` route, in one request.
//!
//! The logic (names, messages, what differs from what should be) is in pure functions; the
//! async functions only talk to the kernel. Work in a pod's namespace goes through a netlink
//! socket opened there ([`netns::handle_in`], or for an ADD a [`Batch`] opened by
//! [`netns::worker`]); no tokio worker ever changes namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use super::DatapathError;
use super::batch::{self, Batch, Verb};
use crate::netns;
use crate::routing::POD_GATEWAY;

/// The route protocol (`proto` in `ip route`, `RTPROT_*`) of the node's `/32` routes to its
/// pods, and of the routes Ferrite adds inside pods: 253 (`0xfd`).
///
/// The kernel gives values above `RTPROT_STATIC` (4) no meaning; they only tell route owners
/// apart. 253 is listed neither in iproute2's `rt_protos` (kernel, boot, static, dhcp,
/// keepalived, babel, bird, bgp, ospf, ...) nor, as far as we know, used by another CNI. It
/// lets `ip route show proto 253` list exactly the pod routes, and lets the agent find
/// leftovers. The routes towards other nodes' pods use a different number (see `node`).
/// Never change it: an upgraded agent must still recognise routes an older one made.
pub const POD_ROUTE_PROTOCOL: u8 = 0xfd;

/// The prefix of every node-side pod veth name ([`host_ifname`]).
pub const HOST_IFNAME_PREFIX: &str = "fe";

/// How many hex digits of the hash follow [`HOST_IFNAME_PREFIX`] (2 + 11 = 13 ≤ 15).
const HOST_IFNAME_HEX: usize = 11;

/// The smallest MTU IPv4 allows (and the veth driver accepts).
const MIN_MTU: u32 = 68;
/// The largest MTU the veth driver accepts.
const MAX_MTU: u32 = 65535;
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const MAX_IFNAME: usize = 15;

/// The main routing table.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// One pod attachment to wire up: the runtime's sandbox and interface, and what IPAM and the
/// routing mode chose for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    /// The sandbox's container ID (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The interface name inside the pod (`CNI_IFNAME`, usually `eth0`).
    pub ifname: String,
    /// The pod's address (from IPAM); the pod gets it as a `/32`.
    pub address: Ipv4Addr,
    /// MTU of both ends of the veth (the routing mode's pod MTU).
    pub mtu: u32,
}

/// What [`attach`] made, for the CNI result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    /// The node-side veth's name ([`host_ifname`]).
    pub host_ifname: String,
    /// The node-side veth's MAC ([`host_mac`]).
    pub host_mac: [u8; 6],
    /// The pod-side interface's MAC (chosen by the kernel).
    pub pod_mac: [u8; 6],
    /// The pod-side interface's index inside the pod's namespace.
    pub pod_ifindex: u32,
}

/// FNV-1a, 64 bit (<http://www.isthe.com/chongo/tech/comp/fnv/>): tiny, fast, and fixed
/// forever, which is all a name needs (it is no defence against chosen inputs, and needs none).
fn fnv1a64(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// [`fnv1a64`] over `container_id`, a zero byte and `ifname` (the zero byte keeps
/// `("ab", "c")` and `("a", "bc")` apart; neither may contain one).
fn attachment_hash(container_id: &str, ifname: &str) -> u64 {
    fnv1a64(
        container_id
            .bytes()
            .chain(std::iter::once(0))
            .chain(ifname.bytes()),
    )
}

/// The node-side veth name of an attachment: `fe` followed by the low 44 bits of the
/// attachment's hash as 11 lowercase hex digits, e.g. `fe3f0c2a9b71d`.
///
/// The hash is FNV-1a 64 over the container ID, a zero byte and the interface name. This is
/// part of Ferrite's contract with itself: DEL, CHECK and a retried ADD find the interface by
/// recomputing its name, possibly in a newer agent than the one that made it, so the formula
/// must never change. Two attachments on one node share a name with probability about
/// n²/2⁴⁵ (3·10⁻⁸ for 1000 pods).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let hash = attachment_hash(container_id, ifname) & ((1 << (4 * HOST_IFNAME_HEX)) - 1);
    format!(
        "{HOST_IFNAME_PREFIX}{hash:0width$x}",
        width = HOST_IFNAME_HEX
    )
}

/// The node-side veth's MAC: `ee` followed by the low 40 bits of the same hash as
/// [`host_ifname`], so the MAC reads as the last ten digits of the name (`fe3f0c2a9b71d` →
/// `ee:f0:c2:a9:b7:1d`). Locally administered and unicast; it is known without asking the
/// kernel (the pod's neighbour entry needs it) and stays the same across a retried ADD.
pub fn host_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let b = attachment_hash(container_id, ifname).to_be_bytes();
    [0xee, b[3], b[4], b[5], b[6], b[7]]
}

/// The pod-side veth's MAC: `0e` followed by the same 40 bits as [`host_mac`]. Set when the
/// veth is made, so the CNI result needs no lookup; locally administered and unicast, and it
/// only has to be unique on its veth, whose other end is [`host_mac`].
pub fn pod_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let b = attachment_hash(container_id, ifname).to_be_bytes();
    [0x0e, b[3], b[4], b[5], b[6], b[7]]
}

/// Whether `name` has the shape of a [`host_ifname`] (`fe` + 11 lowercase hex digits).
pub fn is_host_ifname(name: &str) -> bool {
    name.strip_prefix(HOST_IFNAME_PREFIX).is_some_and(|hex| {
        hex.len() == HOST_IFNAME_HEX
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `aa:bb:cc:dd:ee:ff`.
fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why an interface name is one the kernel would refuse (`dev_valid_name`), if it is.
fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > MAX_IFNAME {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
    {
        Some("contains '/', ':', a NUL or white space")
    } else {
        None
    }
}

/// Checks that `pod` can be attached as given.
fn validate(pod: &PodInterface) -> Result<(), DatapathError> {
    if pod.container_id.is_empty() || pod.container_id.contains('\0') {
        return Err(DatapathError::Invalid(format!(
            "container ID {:?} is empty or contains a NUL byte; the runtime must pass CNI_CONTAINERID",
            pod.container_id
        )));
    }
    if let Some(problem) = ifname_problem(&pod.ifname) {
        return Err(DatapathError::Invalid(format!(
            "interface name {:?} {problem}; the runtime's CNI_IFNAME must be a valid Linux interface name",
            pod.ifname
        )));
    }
    if !(MIN_MTU..=MAX_MTU).contains(&pod.mtu) {
        return Err(DatapathError::Invalid(format!(
            "MTU {} is outside {MIN_MTU}..={MAX_MTU}; check ClusterNetwork.spec.mtu and the node's uplink MTU",
            pod.mtu
        )));
    }
    let a = pod.address;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
        return Err(DatapathError::Invalid(format!(
            "{a} cannot be a pod address; check the IPPool's CIDR"
        )));
    }
    if a == POD_GATEWAY {
        return Err(DatapathError::Invalid(format!(
            "{a} is the pods' gateway address and cannot be a pod address; check the IPPool's CIDR"
        )));
    }
    Ok(())
}

/// The request creating the veth pair: the node side `host_ifname` (up, MTU, MAC) and its
/// peer `pod.ifname` (MTU, [`pod_mac`]; still down) directly in the namespace `netns_fd`.
fn veth_message(
    host_ifname: &str,
    host_mac: [u8; 6],
    pod: &PodInterface,
    netns_fd: RawFd,
) -> LinkMessage {
    // Not `.up()`: the kernel applies the peer's flags before it links the pair, so veth's
    // open fails with ENOTCONN (seen on 6.18); the pod side is set up from inside the pod.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(pod.ifname.clone())
        .mtu(pod.mtu)
        .address(pod_mac(&pod.container_id, &pod.ifname).to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(VETH_TX_QUEUES))
        .setns_by_fd(netns_fd)
        .build();
    LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_ifname)
        .mtu(pod.mtu)
        .address(host_mac.to_vec())
        .append_extra_attribute(LinkAttribute::NumTxQueues(VETH_TX_QUEUES))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .up()
        .build()
}

/// Transmit queues each end of a pod's veth is made with.
///
/// Without the attribute the kernel allocates one per possible CPU and then, on the already
/// registered device, cuts the used count down to one (`veth_init_queues`), which waits for an
/// RCU grace period (`synchronize_net`), once per end. Asking for the one queue that is used
/// anyway skips both waits (`make bench` measures both kinds: docs/benchmarks.md, "The veth
/// pair"). The only loss is that `ethtool -L` cannot raise a pod veth's transmit queues, which
/// no CNI user does; the receive queues (veth's XDP/GRO rings) keep the default.
const VETH_TX_QUEUES: u32 = 1;

/// `<address>/32 dev <host_index> scope link proto 253` (main table).
fn host_route_message(address: Ipv4Addr, host_index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(address, 32)
        .output_interface(host_index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::from(POD_ROUTE_PROTOCOL))
        .build()
}

/// In the pod: `ip link set <pod_index> up`.
fn link_up_message(pod_index: u32) -> LinkMessage {
    LinkUnspec::new_with_index(pod_index).up().build()
}

/// In the pod: `ip link set lo up`.
fn loopback_up_message() -> LinkMessage {
    LinkUnspec::new_with_name("lo").up().build()
}

/// In the pod: `<address>/32 dev <pod_index>`.
fn address_message(address: Ipv4Addr, pod_index: u32) -> AddressMessage {
    AddressMessageBuilder::<Ipv4Addr>::new()
        .index(pod_index)
        .address(address, 32)
        .build()
}

/// In the pod: `169.254.1.1 lladdr <host_mac> dev <pod_index> nud permanent`, so the pod
/// never has to resolve its gateway (the node side answers no ARP).
fn gateway_neighbour_message(pod_index: u32, host_mac: [u8; 6]) -> NeighbourMessage {
    let mut message = NeighbourMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.ifindex = pod_index;
    message.header.state = NeighbourState::Permanent;
    message.attributes = vec![
        NeighbourAttribute::Destination(NeighbourAddress::Inet(POD_GATEWAY)),
        NeighbourAttribute::LinkLayerAddress(host_mac.to_vec()),
    ];
    message
}

/// In the pod: `169.254.1.1 dev <pod_index> scope link proto 253`.
fn gateway_route_message(pod_index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(POD_GATEWAY, 32)
        .output_interface(pod_index)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::from(POD_ROUTE_PROTOCOL))
        .build()
}

/// In the pod: `default via 169.254.1.1 dev <pod_index> proto 253`.
fn default_route_message(pod_index: u32) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(POD_GATEWAY)
        .output_interface(pod_index)
        .protocol(RouteProtocol::from(POD_ROUTE_PROTOCOL))
        .build()
}

/// A netlink error constructor naming the operation and object.
fn netlink(
    op: impl Into<String>,
    object: impl Into<String>,
) -> impl FnOnce(rtnetlink::Error) -> DatapathError {
    move |source| DatapathError::Netlink {
        op: op.into(),
        object: object.into(),
        source,
    }
}

const EEXIST: i32 = rustix::io::Errno::EXIST.raw_os_error();
const ENODEV: i32 = rustix::io::Errno::NODEV.raw_os_error();

/// Wires up the pod: creates the veth pair (the pod side directly in `netns`), configures both
/// ends, and routes the pod's address to it. `node` holds sockets in the node's namespace,
/// `netns` the pod's namespace.
///
/// Idempotent for a retried ADD: if the node side already exists (an earlier attempt), it is
/// deleted, taking the whole earlier attempt with it, and everything is made afresh. If a
/// step fails, what this call made is deleted again before the error (which names the step)
/// is returned, so a pod is never left half configured. If the future is dropped midway, the
/// veth may stay; the runtime's retried ADD or its DEL removes it.
///
/// The agent must not run two ADDs for the same attachment at once.
pub async fn attach(
    node: &netns::Sockets,
    netns: BorrowedFd<'_>,
    pod: &PodInterface,
) -> Result<Attached, DatapathError> {
    validate(pod)?;
    let host = &node.netlink;
    let host_ifname = host_ifname(&pod.container_id, &pod.ifname);
    let host_mac = host_mac(&pod.container_id, &pod.ifname);
    // The pod namespace's sockets are opened by the namespace worker while the kernel makes the
    // veth pair, the slowest step of an ADD.
    let (in_pod, created) = tokio::join!(
        pod_sockets_background(netns),
        create_veth(host, netns, pod, &host_ifname, host_mac)
    );
    created?;
    // The veth exists from here on: whatever fails removes it again.
    let attached = match in_pod {
        Ok(in_pod) => configure(node, &in_pod, pod, &host_ifname, host_mac).await,
        // A descriptor the kernel took for the veth's peer but that cannot be entered.
        Err(error) => Err(error),
    };
    if let Err(error) = &attached
        && let Err(cleanup) = delete_link_by_name(host, &host_ifname).await
    {
        tracing::warn!(
            %error, %cleanup, host_ifname,
            "attaching a pod failed and removing its half-made veth failed too; \
             the runtime's retry or DEL removes it, or run `ip link del {host_ifname}`"
        );
    }
    attached
}

/// A netlink handle inside the pod's namespace.
fn pod_handle(netns: BorrowedFd<'_>) -> Result<Handle, DatapathError> {
    netns::handle_in(netns).map_err(pod_socket_error)
}

/// A [`Batch`] connection and a device socket in the pod's namespace, opened by the namespace
/// worker while the caller's task goes on.
async fn pod_sockets_background(
    netns: BorrowedFd<'_>,
) -> Result<netns::Sockets<Batch>, DatapathError> {
    netns::sockets_in_background(netns)
        .await
        .map_err(pod_socket_error)
}

fn pod_socket_error(source: std::io::Error) -> DatapathError {
    DatapathError::Io {
        op: "open a netlink socket".into(),
        object: "in the pod's network namespace (is the descriptor a network namespace?)".into(),
        source,
    }
}

/// Creates the veth pair, replacing an earlier attempt's.
async fn create_veth(
    host: &Handle,
    netns: BorrowedFd<'_>,
    pod: &PodInterface,
    host_ifname: &str,
    host_mac: [u8; 6],
) -> Result<(), DatapathError> {
    let object = format!(
        "{host_ifname} (node) <-> {} (pod, MTU {})",
        pod.ifname, pod.mtu
    );
    let create = || async {
        let message = veth_message(host_ifname, host_mac, pod, netns.as_raw_fd());
        host.link()
            .add(message)
            .execute()
            .await
            .map_err(netlink("create veth pair", object.clone()))
    };
    let name_taken = || {
        DatapathError::Check(format!(
            "create veth pair {object}: the pod's network namespace already has an interface \
             named {}; Ferrite did not make it (another CNI plugin, or an interface name used \
             twice?) — remove it or use another CNI_IFNAME",
            pod.ifname
        ))
    };
    match create().await {
        Err(e) if e.errno() == Some(EEXIST) => {}
        done => return done,
    }
    // EEXIST: the node side exists (an earlier attempt of this ADD) or the pod already has an
    // interface of that name. Deleting the node side settles the first; if there was nothing
    // to delete, or the new attempt collides again, it is the second.
    if !delete_link_by_name(host, host_ifname).await? {
        return Err(name_taken());
    }
    match create().await {
        Err(e) if e.errno() == Some(EEXIST) => Err(name_taken()),
        done => done,
    }
}

/// Everything after the veth exists. On error the caller deletes the veth.
///
/// The pod's six settings go to the kernel as one [`Batch`] (one datagram, handled in the order
/// sent: the pod's link is up before its routes are added), and the node's route goes out on
/// the node's socket meanwhile. Every request is answered; the first failure in that order is
/// reported.
async fn configure(
    node: &netns::Sockets,
    in_pod: &netns::Sockets<Batch>,
    pod: &PodInterface,
    host_ifname: &str,
    host_mac: [u8; 6],
) -> Result<Attached, DatapathError> {
    let ifname = pod.ifname.as_str();
    // The indexes by ioctl: a system call each, where a netlink lookup is a round trip.
    let index = |socket: BorrowedFd<'_>, name: &str, namespace: &str| {
        netns::index_of(socket, name)
            .map_err(|source| DatapathError::Io {
                op: "look up the index of".into(),
                object: format!("{name} in {namespace} namespace"),
                source,
            })?
            .ok_or_else(|| vanished(name, namespace))
    };
    let host = &node.netlink;
    let host_index = index(node.device.as_fd(), host_ifname, "the node's")?;
    let pod_index = index(in_pod.device.as_fd(), ifname, "the pod's")?;
    let pod_mac = pod_mac(&pod.container_id, ifname);
    let in_pod = &in_pod.netlink;

    let route = format!(
        "{}/32 dev {host_ifname} scope link proto {POD_ROUTE_PROTOCOL} in the node's namespace",
        pod.address
    );
    // The pod's settings, in the order the kernel applies them (its link is up before its
    // routes are added), and what each error message names.
    let settings = [
        (
            batch::request(
                Verb::Set,
                RouteNetlinkMessage::SetLink(link_up_message(pod_index)),
            ),
            "set up",
            format!("{ifname} in the pod's namespace"),
        ),
        (
            batch::request(
                Verb::Add,
                RouteNetlinkMessage::NewAddress(address_message(pod.address, pod_index)),
            ),
            "add address",
            format!("{}/32 to {ifname} in the pod's namespace", pod.address),
        ),
        (
            batch::request(
                Verb::Set,
                RouteNetlinkMessage::SetLink(loopback_up_message()),
            ),
            "set up",
            "lo in the pod's namespace".to_owned(),
        ),
        (
            batch::request(
                Verb::Replace,
                RouteNetlinkMessage::NewNeighbour(gateway_neighbour_message(pod_index, host_mac)),
            ),
            "add permanent neighbour",
            format!(
                "{POD_GATEWAY} lladdr {} dev {ifname} in the pod's namespace",
                mac_string(&host_mac)
            ),
        ),
        (
            batch::request(
                Verb::Add,
                RouteNetlinkMessage::NewRoute(gateway_route_message(pod_index)),
            ),
            "add route",
            format!("{POD_GATEWAY}/32 dev {ifname} scope link in the pod's namespace"),
        ),
        (
            batch::request(
                Verb::Add,
                RouteNetlinkMessage::NewRoute(default_route_message(pod_index)),
            ),
            "add route",
            format!("default via {POD_GATEWAY} dev {ifname} in the pod's namespace"),
        ),
    ];
    let (requests, names): (Vec<_>, Vec<_>) = settings
        .into_iter()
        .map(|(request, op, object)| (request, (op, object)))
        .unzip();
    // The node's route goes out on its own socket meanwhile.
    let (in_pod, host_route) = tokio::join!(
        in_pod.send(requests),
        host.route()
            .add(host_route_message(pod.address, host_index))
            .execute(),
    );
    let in_pod = in_pod.map_err(|source| DatapathError::Io {
        op: "configure".into(),
        object: format!("{ifname} in the pod's namespace"),
        source,
    })?;
    // The first refusal in the order sent is the one reported.
    for (outcome, (op, object)) in in_pod.into_iter().zip(names) {
        outcome.map_err(netlink(op, object))?;
    }
    match host_route.map_err(netlink("add route", route.clone())) {
        Ok(()) => {}
        Err(e) if e.errno() == Some(EEXIST) => {
            return Err(DatapathError::Check(format!(
                "add route {route}: the node already routes {addr}/32 elsewhere (`ip route show \
                 {addr}`); another pod holds this address — check IPAM's state and delete the \
                 stale pod or route",
                addr = pod.address
            )));
        }
        Err(e) => return Err(e),
    }
    Ok(Attached {
        host_ifname: host_ifname.to_string(),
        host_mac,
        pod_mac,
        pod_ifindex: pod_index,
    })
}

/// The error for an interface that disappeared right after it was made.
fn vanished(name: &str, namespace: &str) -> DatapathError {
    DatapathError::Check(format!(
        "{name} disappeared from {namespace} namespace right after it was created; is something \
         else deleting interfaces (or the pod's sandbox being torn down)?"
    ))
}

/// The link named `name`, if there is one.
async fn find_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, DatapathError> {
    let result = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await
        .map_err(netlink("look up interface", name));
    match result {
        Ok(link) => Ok(link),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes the link named `name`; `Ok(false)` if there was none.
async fn delete_link_by_name(handle: &Handle, name: &str) -> Result<bool, DatapathError> {
    let message = LinkUnspec::new_with_name(name).build();
    let result = handle
        .link()
        .del_with_message(message)
        .execute()
        .await
        .map_err(netlink("delete interface", name));
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes a pod's interfaces: deletes the node-side veth `host_ifname`, which takes the pod
/// side, its addresses and routes, and the node's `/32` route with it. `Ok(false)` if it was
/// already gone (DEL is idempotent). Refuses names that are not [`host_ifname`]s and
/// interfaces that are not veths, so a wrong argument can never delete the node's uplink.
pub async fn detach(host: &Handle, host_ifname: &str) -> Result<bool, DatapathError> {
    if !is_host_ifname(host_ifname) {
        return Err(DatapathError::Invalid(format!(
            "{host_ifname:?} is not a Ferrite pod interface name (fe + 11 hex digits); refusing to delete it"
        )));
    }
    let Some(link) = find_link(host, host_ifname).await? else {
        return Ok(false);
    };
    if !LinkFacts::from_message(&link).veth {
        return Err(DatapathError::Check(format!(
            "{host_ifname} is not a veth, so Ferrite did not make it; refusing to delete it — \
             find out what created it (`ip -d link show {host_ifname}`)"
        )));
    }
    let result = host
        .link()
        .del(link.header.index)
        .execute()
        .await
        .map_err(netlink("delete interface", host_ifname));
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The names of all Ferrite pod veths in the node's namespace ([`is_host_ifname`] and kind
/// veth), sorted, for the agent's start-up sweep of orphans.
pub async fn host_interfaces(host: &Handle) -> Result<Vec<String>, DatapathError> {
    let links: Vec<LinkMessage> = host
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list interfaces", "in the node's namespace"))?;
    let mut names: Vec<String> = links
        .iter()
        .map(LinkFacts::from_message)
        .filter(|link| link.veth && is_host_ifname(&link.name))
        .map(|link| link.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Verifies that the pod's interfaces are as [`attach`] made them: the node-side veth exists,
/// is up, has the MTU and the `/32` route; the pod side exists, is its peer, is up, has the
/// MTU, exactly the pod's IPv4 address, the gateway and default routes and the permanent
/// neighbour entry. Reports every difference at once.
pub async fn check(
    host: &Handle,
    netns: BorrowedFd<'_>,
    pod: &PodInterface,
) -> Result<(), DatapathError> {
    validate(pod)?;
    let host_ifname = host_ifname(&pod.container_id, &pod.ifname);
    let mut problems = Vec::new();

    let host_link = find_link(host, &host_ifname)
        .await?
        .map(|m| LinkFacts::from_message(&m));
    match &host_link {
        None => problems.push(format!(
            "the node-side interface {host_ifname} does not exist"
        )),
        Some(link) => {
            problems.extend(link_problems(link, pod.mtu, "the node-side interface"));
            let routes = ipv4_routes(host, "the node's").await?;
            problems.extend(host_route_problems(&routes, pod.address, link));
        }
    }

    let in_pod = pod_handle(netns)?;
    match find_link(&in_pod, &pod.ifname).await? {
        None => problems.push(format!(
            "{} does not exist in the pod's namespace",
            pod.ifname
        )),
        Some(message) => {
            let link = LinkFacts::from_message(&message);
            problems.extend(link_problems(&link, pod.mtu, "the pod's interface"));
            if let Some(host_link) = &host_link {
                problems.extend(peer_problem(&link, host_link));
            }
            let addresses = ipv4_addresses(&in_pod, link.index).await?;
            problems.extend(address_problems(&addresses, pod.address, &link.name));
            let routes = ipv4_routes(&in_pod, "the pod's").await?;
            problems.extend(pod_route_problems(&routes, &link));
            let neighbours = ipv4_neighbours(&in_pod).await?;
            let gateway_mac = host_link
                .as_ref()
                .and_then(|l| l.mac)
                .unwrap_or_else(|| host_mac(&pod.container_id, &pod.ifname));
            problems.extend(neighbour_problems(&neighbours, &link, gateway_mac));
        }
    }
    check_result(pod, &problems)
}

/// The CHECK verdict from a list of differences.
fn check_result(pod: &PodInterface, problems: &[String]) -> Result<(), DatapathError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(DatapathError::Check(format!(
        "pod interface {}/{} ({}) is not as Ferrite set it up: {}. Delete the pod so the \
         runtime re-creates its sandbox (a new ADD rebuilds the interfaces)",
        pod.container_id,
        pod.ifname,
        pod.address,
        problems.join("; ")
    )))
}

async fn ipv4_routes(handle: &Handle, namespace: &str) -> Result<Vec<RouteFacts>, DatapathError> {
    let messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink(
            "list IPv4 routes",
            format!("in {namespace} namespace"),
        ))?;
    Ok(messages
        .iter()
        .filter_map(RouteFacts::from_message)
        .collect())
}

async fn ipv4_addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, DatapathError> {
    let messages: Vec<AddressMessage> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list addresses", "in the pod's namespace"))?;
    Ok(messages.iter().filter_map(ipv4_address).collect())
}

async fn ipv4_neighbours(handle: &Handle) -> Result<Vec<NeighbourFacts>, DatapathError> {
    let messages: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list neighbours", "in the pod's namespace"))?;
    Ok(messages
        .iter()
        .filter_map(NeighbourFacts::from_message)
        .collect())
}

/// What CHECK needs to know of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct LinkFacts {
    index: u32,
    name: String,
    veth: bool,
    up: bool,
    mtu: Option<u32>,
    mac: Option<[u8; 6]>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's namespace).
    peer_index: Option<u32>,
}

impl LinkFacts {
    fn from_message(message: &LinkMessage) -> Self {
        let mut facts = LinkFacts {
            index: message.header.index,
            up: message.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::IfName(name) => facts.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => facts.mtu = Some(*mtu),
                LinkAttribute::Address(mac) => facts.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Link(peer) => facts.peer_index = Some(*peer),
                LinkAttribute::LinkInfo(infos) => {
                    facts.veth = infos
                        .iter()
                        .any(|info| matches!(info, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        facts
    }
}

/// What CHECK needs to know of an IPv4 route in the main table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RouteFacts {
    destination: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    scope: RouteScope,
    protocol: u8,
}

impl RouteFacts {
    /// `None` for routes outside the main table and non-IPv4 routes.
    fn from_message(message: &RouteMessage) -> Option<Self> {
        if message.header.address_family != AddressFamily::Inet {
            return None;
        }
        let mut table = u32::from(message.header.table);
        let mut facts = RouteFacts {
            destination: Ipv4Addr::UNSPECIFIED,
            prefix_len: message.header.destination_prefix_length,
            gateway: None,
            oif: None,
            scope: message.header.scope,
            protocol: u8::from(message.header.protocol),
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => facts.destination = *a,
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => facts.gateway = Some(*a),
                RouteAttribute::Oif(index) => facts.oif = Some(*index),
                RouteAttribute::Table(t) => table = *t,
                _ => {}
            }
        }
        (table == MAIN_TABLE).then_some(facts)
    }

    fn describe(&self, names: impl Fn(u32) -> String) -> String {
        let mut s = if self.prefix_len == 0 {
            "default".to_string()
        } else {
            format!("{}/{}", self.destination, self.prefix_len)
        };
        if let Some(gw) = self.gateway {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(oif) = self.oif {
            s.push_str(&format!(" dev {}", names(oif)));
        }
        s.push_str(&format!(
            " scope {} proto {}",
            scope_name(self.scope),
            self.protocol
        ));
        s
    }
}

fn scope_name(scope: RouteScope) -> String {
    match scope {
        RouteScope::Universe => "global".into(),
        RouteScope::Link => "link".into(),
        RouteScope::Host => "host".into(),
        other => format!("{}", u8::from(other)),
    }
}

/// An IPv4 neighbour entry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NeighbourFacts {
    ifindex: u32,
    destination: Ipv4Addr,
    mac: Option<Vec<u8>>,
    state: NeighbourState,
}

impl NeighbourFacts {
    fn from_message(message: &NeighbourMessage) -> Option<Self> {
        let mut destination = None;
        let mut mac = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                    destination = Some(*a);
                }
                NeighbourAttribute::LinkLayerAddress(l) => mac = Some(l.clone()),
                _ => {}
            }
        }
        Some(NeighbourFacts {
            ifindex: message.header.ifindex,
            destination: destination?,
            mac,
            state: message.header.state,
        })
    }
}

fn ipv4_address(message: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    if message.header.family != AddressFamily::Inet {
        return None;
    }
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS the peer's on
    // point-to-point links); prefer it.
    let mut found = None;
    for attribute in &message.attributes {
        match attribute {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some((*a, message.header.prefix_len)),
            AddressAttribute::Address(IpAddr::V4(a)) => {
                found = Some((*a, message.header.prefix_len));
            }
            _ => {}
        }
    }
    found
}

/// Up and MTU.
fn link_problems(link: &LinkFacts, mtu: u32, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !link.up {
        problems.push(format!("{what} {} is down", link.name));
    }
    if link.mtu != Some(mtu) {
        problems.push(format!(
            "{what} {} has MTU {}, not {mtu}",
            link.name,
            link.mtu.map_or("(none)".to_string(), |m| m.to_string())
        ));
    }
    problems
}

/// The pod side must be the node side's veth peer (compared by index: `IFLA_LINK` of each
/// end is the other's index in its own namespace).
fn peer_problem(pod_link: &LinkFacts, host_link: &LinkFacts) -> Option<String> {
    let paired = pod_link.veth
        && pod_link.peer_index == Some(host_link.index)
        && host_link.peer_index == Some(pod_link.index);
    (!paired).then(|| {
        format!(
            "{} in the pod is not the veth peer of {} on the node",
            pod_link.name, host_link.name
        )
    })
}

/// The node's route to the pod: `<address>/32 dev <host link> scope link proto 253`.
fn host_route_problems(
    routes: &[RouteFacts],
    address: Ipv4Addr,
    host_link: &LinkFacts,
) -> Vec<String> {
    let expected = RouteFacts {
        destination: address,
        prefix_len: 32,
        gateway: None,
        oif: Some(host_link.index),
        scope: RouteScope::Link,
        protocol: POD_ROUTE_PROTOCOL,
    };
    let names = |index: u32| {
        if index == host_link.index {
            host_link.name.clone()
        } else {
            format!("#{index}")
        }
    };
    route_problems(routes, &expected, "the node", names)
}

/// The pod's gateway and default routes.
fn pod_route_problems(routes: &[RouteFacts], pod_link: &LinkFacts) -> Vec<String> {
    let gateway = RouteFacts {
        destination: POD_GATEWAY,
        prefix_len: 32,
        gateway: None,
        oif: Some(pod_link.index),
        scope: RouteScope::Link,
        protocol: POD_ROUTE_PROTOCOL,
    };
    let default = RouteFacts {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(POD_GATEWAY),
        oif: Some(pod_link.index),
        scope: RouteScope::Universe,
        protocol: POD_ROUTE_PROTOCOL,
    };
    let names = |index: u32| {
        if index == pod_link.index {
            pod_link.name.clone()
        } else {
            format!("#{index}")
        }
    };
    let mut problems = route_problems(routes, &gateway, "the pod", names);
    problems.extend(route_problems(routes, &default, "the pod", names));
    problems
}

/// Whether `expected` is among `routes`; if not, what holds its destination instead.
fn route_problems(
    routes: &[RouteFacts],
    expected: &RouteFacts,
    namespace: &str,
    names: impl Fn(u32) -> String + Copy,
) -> Vec<String> {
    if routes.contains(expected) {
        return Vec::new();
    }
    let same_destination: Vec<String> = routes
        .iter()
        .filter(|r| r.destination == expected.destination && r.prefix_len == expected.prefix_len)
        .map(|r| r.describe(names))
        .collect();
    let found = if same_destination.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has {}", same_destination.join(", "))
    };
    vec![format!(
        "{namespace} lacks the route {} ({found})",
        expected.describe(names)
    )]
}

/// Exactly `address/32`.
fn address_problems(addresses: &[(Ipv4Addr, u8)], address: Ipv4Addr, ifname: &str) -> Vec<String> {
    let expected = (address, 32);
    if addresses == [expected] {
        return Vec::new();
    }
    let list = |a: &[(Ipv4Addr, u8)]| {
        if a.is_empty() {
            "none".to_string()
        } else {
            a.iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    vec![format!(
        "{ifname} in the pod should have exactly the IPv4 address {address}/32 but has {}",
        list(addresses)
    )]
}

/// The permanent `169.254.1.1 → gateway_mac` entry on the pod's interface.
fn neighbour_problems(
    neighbours: &[NeighbourFacts],
    pod_link: &LinkFacts,
    gateway_mac: [u8; 6],
) -> Vec<String> {
    let entry = neighbours
        .iter()
        .find(|n| n.ifindex == pod_link.index && n.destination == POD_GATEWAY);
    let wanted = format!(
        "the permanent neighbour entry {POD_GATEWAY} lladdr {} on {}",
        mac_string(&gateway_mac),
        pod_link.name
    );
    match entry {
        None => vec![format!("the pod lacks {wanted} (it has none)")],
        Some(n)
            if n.state == NeighbourState::Permanent
                && n.mac.as_deref() == Some(&gateway_mac[..]) =>
        {
            Vec::new()
        }
        Some(n) => vec![format!(
            "the pod lacks {wanted} (it has lladdr {} in state {:?})",
            n.mac.as_deref().map_or("(none)".to_string(), mac_string),
            n.state
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodInterface {
        PodInterface {
            container_id: "3f9a2c".into(),
            ifname: "eth0".into(),
            address: Ipv4Addr::new(10, 244, 0, 5),
            mtu: 1400,
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        let fnv = |s: &str| fnv1a64(s.bytes());
        assert_eq!(fnv(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv("foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(attachment_hash("ab", "c"), fnv("ab\0c"));
    }

    #[test]
    fn host_ifnames_and_macs_are_stable_across_releases() {
        // A contract: DEL and a retried ADD recompute names an older agent made. If this test
        // fails, the formula changed — change it back. (Values cross-checked with an
        // independent FNV-1a implementation.)
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(host_ifname("abc", "eth0"), "feae81be81b20");
        assert_eq!(host_ifname("3f9a2c", "eth0"), "fe75498ff5d7a");
        assert_eq!(host_ifname(id, "eth0"), "fe2d13c4a2726");
        assert_eq!(host_ifname(id, "net1"), "fec887ac0c819");
        assert_eq!(host_mac(id, "eth0"), [0xee, 0xd1, 0x3c, 0x4a, 0x27, 0x26]);
    }

    #[test]
    fn host_ifnames_fit_the_kernel_limit_and_have_the_ferrite_shape() {
        for (id, ifname) in [("", ""), ("x", "eth0"), (&"f".repeat(64)[..], "net1")] {
            let name = host_ifname(id, ifname);
            assert!(name.len() <= MAX_IFNAME, "{name}");
            assert!(name.len() == 13 && is_host_ifname(&name), "{name}");
            assert!(ifname_problem(&name).is_none());
        }
    }

    #[test]
    fn host_ifnames_differ_by_container_and_interface() {
        let a = host_ifname("c1", "eth0");
        assert_ne!(a, host_ifname("c2", "eth0"));
        assert_ne!(a, host_ifname("c1", "eth1"));
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    }

    #[test]
    fn the_host_mac_is_locally_administered_unicast_and_matches_the_name() {
        let mac = host_mac("3f9a2c", "eth0");
        assert_eq!(mac[0] & 0b11, 0b10);
        let name = host_ifname("3f9a2c", "eth0");
        assert_eq!(mac_string(&mac[1..]).replace(':', ""), name[3..]);
        // The pod side: also locally administered unicast, never the node side's address.
        let pod = pod_mac("3f9a2c", "eth0");
        assert_eq!(pod[0] & 0b11, 0b10);
        assert_ne!(pod, mac);
        assert_eq!(pod[1..], mac[1..]);
        assert_ne!(pod_mac("3f9a2c", "eth1"), pod);
    }

    #[test]
    fn host_ifname_shape() {
        assert!(is_host_ifname("fe0123456789a"));
        assert!(!is_host_ifname("fe0123456789A"));
        assert!(!is_host_ifname("fe0123456789"));
        assert!(!is_host_ifname("fe0123456789ab"));
        assert!(!is_host_ifname("ff0123456789a"));
        assert!(!is_host_ifname("eth0"));
    }

    #[test]
    fn validation_rejects_what_the_kernel_would() {
        assert!(validate(&pod()).is_ok());
        let bad = [
            PodInterface {
                ifname: "".into(),
                ..pod()
            },
            PodInterface {
                ifname: "a".repeat(16),
                ..pod()
            },
            PodInterface {
                ifname: "a/b".into(),
                ..pod()
            },
            PodInterface {
                ifname: "a b".into(),
                ..pod()
            },
            PodInterface {
                ifname: "..".into(),
                ..pod()
            },
            PodInterface {
                container_id: "".into(),
                ..pod()
            },
            PodInterface { mtu: 67, ..pod() },
            PodInterface {
                mtu: 65536,
                ..pod()
            },
            PodInterface {
                address: Ipv4Addr::UNSPECIFIED,
                ..pod()
            },
            PodInterface {
                address: Ipv4Addr::BROADCAST,
                ..pod()
            },
            PodInterface {
                address: POD_GATEWAY,
                ..pod()
            },
        ];
        for p in bad {
            assert!(
                matches!(validate(&p), Err(DatapathError::Invalid(_))),
                "{p:?}"
            );
        }
        assert!(
            validate(&PodInterface {
                ifname: "a".repeat(15),
                ..pod()
            })
            .is_ok()
        );
    }

    #[test]
    fn the_veth_message_creates_the_node_side_up_and_the_peer_in_the_pod() {
        let m = veth_message("fe0123456789a", [0xee, 1, 2, 3, 4, 5], &pod(), 7);
        assert!(m.header.flags.contains(LinkFlags::Up));
        assert!(m.header.change_mask.contains(LinkFlags::Up));
        assert!(
            m.attributes
                .contains(&LinkAttribute::IfName("fe0123456789a".into()))
        );
        assert!(m.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(
            m.attributes
                .contains(&LinkAttribute::Address(vec![0xee, 1, 2, 3, 4, 5]))
        );
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::NetNsFd(_))),
            "the node side stays"
        );
        let infos = m.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        });
        let infos = infos.unwrap();
        assert!(infos.contains(&LinkInfo::Kind(InfoKind::Veth)));
        let peer = infos.iter().find_map(|i| match i {
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p),
            _ => None,
        });
        let peer = peer.unwrap();
        assert!(
            !peer.header.change_mask.contains(LinkFlags::Up),
            "ENOTCONN if it is"
        );
        assert!(
            peer.attributes
                .contains(&LinkAttribute::IfName("eth0".into()))
        );
        assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));
        assert!(peer.attributes.contains(&LinkAttribute::NetNsFd(7)));
        for (end, attributes) in [("node", &m.attributes), ("pod", &peer.attributes)] {
            assert!(
                attributes.contains(&LinkAttribute::NumTxQueues(1)),
                "the {end} side asks for one transmit queue, sparing a grace period"
            );
        }
    }

    #[test]
    fn route_messages_round_trip_to_the_facts_check_expects() {
        let host = LinkFacts {
            index: 9,
            name: "fe0123456789a".into(),
            ..Default::default()
        };
        let facts = RouteFacts::from_message(&host_route_message(pod().address, 9)).unwrap();
        assert!(host_route_problems(&[facts], pod().address, &host).is_empty());

        let p = LinkFacts {
            index: 2,
            name: "eth0".into(),
            ..Default::default()
        };
        let routes: Vec<_> = [gateway_route_message(2), default_route_message(2)]
            .iter()
            .map(|m| RouteFacts::from_message(m).unwrap())
            .collect();
        assert!(pod_route_problems(&routes, &p).is_empty());
        assert_eq!(routes[1].prefix_len, 0);
        assert_eq!(routes[0].protocol, POD_ROUTE_PROTOCOL);
    }

    #[test]
    fn a_missing_or_different_route_is_described() {
        let host = LinkFacts {
            index: 9,
            name: "fe0123456789a".into(),
            ..Default::default()
        };
        let problems = host_route_problems(&[], pod().address, &host);
        assert_eq!(
            problems,
            [
                "the node lacks the route 10.244.0.5/32 dev fe0123456789a scope link proto 253 (it has none)"
            ]
        );
        let mut other = RouteFacts::from_message(&host_route_message(pod().address, 4)).unwrap();
        other.protocol = 4;
        let problems = host_route_problems(&[other], pod().address, &host);
        assert_eq!(
            problems,
            [
                "the node lacks the route 10.244.0.5/32 dev fe0123456789a scope link proto 253 (it has 10.244.0.5/32 dev #4 scope link proto 4)"
            ]
        );
    }

    #[test]
    fn the_address_must_be_exactly_the_pods() {
        let a = pod().address;
        assert!(address_problems(&[(a, 32)], a, "eth0").is_empty());
        let other = Ipv4Addr::new(10, 244, 0, 6);
        assert_eq!(
            address_problems(&[(other, 32)], a, "eth0"),
            [
                "eth0 in the pod should have exactly the IPv4 address 10.244.0.5/32 but has 10.244.0.6/32"
            ]
        );
        assert_eq!(
            address_problems(&[(a, 32), (other, 24)], a, "eth0").len(),
            1
        );
        assert_eq!(address_problems(&[(a, 24)], a, "eth0").len(), 1);
        assert!(address_problems(&[], a, "eth0")[0].ends_with("has none"));
    }

    #[test]
    fn the_neighbour_entry_must_be_permanent_and_point_at_the_node_side() {
        let link = LinkFacts {
            index: 2,
            name: "eth0".into(),
            ..Default::default()
        };
        let mac = [0xee, 1, 2, 3, 4, 5];
        let entry = |state, mac: [u8; 6]| NeighbourFacts {
            ifindex: 2,
            destination: POD_GATEWAY,
            mac: Some(mac.to_vec()),
            state,
        };
        assert!(
            neighbour_problems(&[entry(NeighbourState::Permanent, mac)], &link, mac).is_empty()
        );
        assert_eq!(
            neighbour_problems(&[entry(NeighbourState::Reachable, mac)], &link, mac).len(),
            1
        );
        assert_eq!(
            neighbour_problems(&[entry(NeighbourState::Permanent, [0xee; 6])], &link, mac).len(),
            1
        );
        assert_eq!(neighbour_problems(&[], &link, mac).len(), 1);
    }

    #[test]
    fn link_state_and_pairing_are_checked() {
        let host = LinkFacts {
            index: 9,
            name: "fe0123456789a".into(),
            veth: true,
            up: true,
            mtu: Some(1400),
            peer_index: Some(2),
            ..Default::default()
        };
        let pod_link = LinkFacts {
            index: 2,
            name: "eth0".into(),
            veth: true,
            up: true,
            mtu: Some(1400),
            peer_index: Some(9),
            ..Default::default()
        };
        assert!(link_problems(&host, 1400, "x").is_empty());
        assert!(peer_problem(&pod_link, &host).is_none());
        let down = LinkFacts {
            up: false,
            mtu: Some(1500),
            ..pod_link.clone()
        };
        assert_eq!(
            link_problems(&down, 1400, "the pod's interface"),
            [
                "the pod's interface eth0 is down",
                "the pod's interface eth0 has MTU 1500, not 1400",
            ]
        );
        let stranger = LinkFacts {
            peer_index: Some(3),
            ..pod_link
        };
        assert!(peer_problem(&stranger, &host).is_some());
    }

    #[test]
    fn check_lists_every_difference_and_says_what_to_do() {
        assert!(check_result(&pod(), &[]).is_ok());
        let err = check_result(&pod(), &["a".into(), "b".into()]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("3f9a2c/eth0 (10.244.0.5)")
                && text.contains("a; b")
                && text.contains("Delete the pod"),
            "{text}"
        );
    }
}
