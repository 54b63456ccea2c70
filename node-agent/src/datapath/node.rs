//! Routes, the VXLAN device and its neighbour/FDB entries towards other nodes' pods.
//!
//! [`apply`] reconciles the kernel against a [`routing::Desired`] in three steps: read what the
//! kernel has, compute a plan (pure, unit-tested below), run the plan's steps in order. Ferrite
//! only ever touches its own objects: routes in the main table carrying
//! [`NODE_ROUTE_PROTOCOL`], and the device [`VXLAN_DEVICE`] with the neighbour and FDB entries
//! on it. A route somebody else installed for a peer block is left alone and reported
//! ([`Report::foreign`]); replacing it would silently take over their traffic.
//!
//! The steps run in an order that keeps pods connected while the routing mode switches:
//! the device, neighbour and FDB entries are made first, then every desired route is replaced
//! (`NLM_F_REPLACE`, so a route moves from the uplink to the tunnel or back in one operation),
//! and only then is anything stale deleted — routes, FDB and neighbour entries, and last the
//! device. Native → VXLAN therefore creates the device before a route points at it, and
//! VXLAN → Native moves every route to the uplink before the device goes away.
//!
//! Netlink handles are opened in the node's namespace by the caller
//! ([`crate::netns::handle_in`] or [`crate::netns::handle`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::routing::{self, Dev, Fdb, Neighbour, Route, VXLAN_DEVICE, VXLAN_OVERHEAD};

/// The route protocol (`rtm_protocol`, `ip route ... proto 254`) on every route to another
/// node's pods. It marks the routes this module owns: [`apply`] and [`remove_all`] never touch
/// a route without it. Pod /32 routes carry 0xfd (the pod module); 0xfe is neither a value
/// iproute2 names (`/etc/iproute2/rt_protos`) nor one the routing daemons register.
pub const NODE_ROUTE_PROTOCOL: u8 = 0xfe;

/// VXLAN parameters for the device [`VXLAN_DEVICE`] (from the ClusterNetwork and this node's
/// tunnel endpoint). The underlay device is the interface holding `local`, found by netlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// This node's tunnel endpoint: the outer source address.
    pub local: IpAddr,
}

/// What one [`apply`] changed, for logs and metrics. Routes, neighbour entries, FDB entries and
/// the device each count as one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Objects created.
    pub added: usize,
    /// Objects replaced or modified in place (a route moved to another next hop, the device
    /// recreated or its MTU changed, ...).
    pub changed: usize,
    /// Objects deleted.
    pub removed: usize,
    /// Objects that were already right.
    pub unchanged: usize,
    /// Desired routes not installed because a route Ferrite does not own already holds the
    /// destination in the main table (remove it, or resolve the overlap with the peer's block).
    pub foreign: Vec<IpNet>,
}

impl Report {
    /// Number of objects added, changed or removed; 0 when the kernel was already right.
    pub fn changes(&self) -> usize {
        self.added + self.changed + self.removed
    }
}

/// Reconciling the inter-node datapath failed. Steps before the failing one have been applied;
/// the next [`apply`] continues from whatever the kernel has.
#[derive(Debug, thiserror::Error)]
pub enum NodeDatapathError {
    /// The desired state has a VXLAN device but [`apply`] got no [`Tunnel`].
    #[error(
        "the desired state has the device {VXLAN_DEVICE} but no tunnel parameters (VNI, port, local endpoint) were given: a bug in the caller"
    )]
    MissingTunnel,
    /// A route through the tunnel was desired without the tunnel device.
    #[error(
        "{object} needs the device {VXLAN_DEVICE}, which does not exist: the desired state routes through VXLAN without a VXLAN device (a bug in the caller)"
    )]
    NoDevice {
        /// The route or entry that needed the device.
        object: String,
    },
    /// No interface holds the tunnel endpoint, so there is no underlay device.
    #[error(
        "no interface in this network namespace holds the tunnel endpoint {local}: set the node's tunnel endpoint (its NodeNetwork) to an address of this node"
    )]
    NoUnderlay {
        /// The tunnel endpoint.
        local: IpAddr,
    },
    /// Listing kernel objects failed.
    #[error(
        "list {object}: {source}; the agent needs CAP_NET_ADMIN in the node's network namespace"
    )]
    List {
        /// What was being listed (`links`, `routes`, ...).
        object: &'static str,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Creating the VXLAN device failed.
    #[error(
        "create the device {VXLAN_DEVICE} (VNI {vni}, UDP port {port}, local {local}, MTU {mtu}): {source}; if another VXLAN device (such as flannel.1) uses this VNI and port, remove it or choose another vni/port in the ClusterNetwork"
    )]
    CreateDevice {
        /// VXLAN network identifier.
        vni: u32,
        /// UDP port.
        port: u16,
        /// Local endpoint.
        local: IpAddr,
        /// Requested MTU.
        mtu: u32,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The device was created but could not be found afterwards.
    #[error(
        "created the device {VXLAN_DEVICE} but cannot find it afterwards (deleted concurrently?); the next reconcile retries"
    )]
    DeviceVanished,
    /// Changing the VXLAN device's MTU or state failed.
    #[error("set MTU {mtu} and up on the device {VXLAN_DEVICE}: {source}")]
    UpdateDevice {
        /// Requested MTU.
        mtu: u32,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting the VXLAN device failed.
    #[error("delete the device {VXLAN_DEVICE}: {source}")]
    DeleteDevice {
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A desired route cannot be expressed as a netlink message.
    #[error("route {route}: {reason} (a bug in the caller)")]
    InvalidRoute {
        /// The route.
        route: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Installing a route failed.
    #[error("replace the route {route}: {source}; {hint}")]
    ReplaceRoute {
        /// The route (`dst via gw dev`).
        route: String,
        /// What to check.
        hint: &'static str,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a stale route failed.
    #[error("delete the stale route to {dst} (proto {NODE_ROUTE_PROTOCOL}): {source}")]
    DeleteRoute {
        /// Its destination.
        dst: IpNet,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Installing a neighbour entry failed.
    #[error("set the permanent neighbour {ip} lladdr {mac} on {VXLAN_DEVICE}: {source}")]
    SetNeighbour {
        /// Gateway address.
        ip: IpAddr,
        /// The peer's VTEP MAC.
        mac: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a stale neighbour entry failed.
    #[error("delete the stale neighbour {ip} on {VXLAN_DEVICE}: {source}")]
    DeleteNeighbour {
        /// Gateway address.
        ip: IpAddr,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Installing an FDB entry failed.
    #[error("set the FDB entry {mac} dst {dst} on {VXLAN_DEVICE}: {source}")]
    SetFdb {
        /// The peer's VTEP MAC.
        mac: String,
        /// The peer's tunnel endpoint.
        dst: IpAddr,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// Deleting a stale FDB entry failed.
    #[error("delete the stale FDB entry {mac} dst {dst} on {VXLAN_DEVICE}: {source}")]
    DeleteFdb {
        /// The peer's VTEP MAC.
        mac: String,
        /// The peer's tunnel endpoint.
        dst: IpAddr,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
}

type Result<T> = std::result::Result<T, NodeDatapathError>;

/// Reconciles routes, the VXLAN device and its neighbour and FDB entries in the namespace of
/// `host` with `desired` (from [`routing::desired`]). `tunnel` is required when
/// `desired.vxlan_mac` is set and ignored otherwise. Idempotent: a second call with the same
/// arguments changes nothing and reports only unchanged objects.
///
/// The device gets the VTEP MAC, no learning, and MTU `desired.pod_mtu`, capped at the
/// underlay's MTU minus the VXLAN overhead (a larger device MTU would be refused). It is
/// recreated when its VNI, port, local address, underlay device or MAC differ.
pub async fn apply(
    host: &Handle,
    desired: &routing::Desired,
    tunnel: Option<&Tunnel>,
) -> Result<Report> {
    let spec = match (desired.vxlan_mac, tunnel) {
        (Some(mac), Some(tunnel)) => {
            let (underlay, underlay_mtu) = underlay(host, tunnel.local).await?;
            Some(VxlanSpec::new(
                tunnel,
                mac,
                underlay,
                underlay_mtu,
                desired.pod_mtu,
            ))
        }
        (Some(_), None) => return Err(NodeDatapathError::MissingTunnel),
        (None, _) => None,
    };
    let actual = read_actual(host).await?;
    let plan = plan(&actual, desired, spec.as_ref());
    execute(host, &plan.steps, actual.device.map(|d| d.index)).await?;
    Ok(plan.report)
}

/// Uninstalls the inter-node datapath: every route carrying [`NODE_ROUTE_PROTOCOL`] in the main
/// table and the device [`VXLAN_DEVICE`] (with its entries). Succeeds when nothing is left.
pub async fn remove_all(host: &Handle) -> Result<()> {
    apply(host, &routing::Desired::default(), None)
        .await
        .map(|_| ())
}

// ---- the plan: pure ----

/// The device as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
struct VxlanSpec {
    vni: u32,
    port: u16,
    local: IpAddr,
    /// Index of the underlay interface (the one holding `local`).
    underlay: u32,
    mac: [u8; 6],
    mtu: u32,
}

impl VxlanSpec {
    fn new(tunnel: &Tunnel, mac: [u8; 6], underlay: u32, underlay_mtu: u32, pod_mtu: u32) -> Self {
        let overhead = VXLAN_OVERHEAD + if tunnel.local.is_ipv6() { 20 } else { 0 };
        let most = underlay_mtu.saturating_sub(overhead);
        Self {
            vni: tunnel.vni,
            port: tunnel.port,
            local: tunnel.local,
            underlay,
            mac,
            mtu: if pod_mtu == 0 {
                most
            } else {
                pod_mtu.min(most)
            },
        }
    }
}

/// The device named [`VXLAN_DEVICE`] as the kernel has it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct VxlanLink {
    index: u32,
    is_vxlan: bool,
    vni: Option<u32>,
    port: Option<u16>,
    local: Option<IpAddr>,
    underlay: Option<u32>,
    learning: Option<bool>,
    mac: Option<Vec<u8>>,
    mtu: Option<u32>,
    up: bool,
}

impl VxlanLink {
    /// Whether the device can be kept (possibly after [`Step::UpdateDevice`]); anything else
    /// can only be changed by recreating it.
    fn keeps(&self, spec: &VxlanSpec) -> bool {
        self.is_vxlan
            && self.vni == Some(spec.vni)
            && self.port == Some(spec.port)
            && self.local == Some(spec.local)
            && self.underlay == Some(spec.underlay)
            && self.learning == Some(false)
            && self.mac.as_deref() == Some(&spec.mac[..])
    }

    fn settled(&self, spec: &VxlanSpec) -> bool {
        self.mtu == Some(spec.mtu) && self.up
    }
}

/// A route in the main table, with TOS 0.
#[derive(Clone, Debug, PartialEq, Eq)]
struct KernelRoute {
    dst: IpNet,
    via: Option<IpAddr>,
    /// [`Dev::Vxlan`] when it leaves through the current [`VXLAN_DEVICE`].
    dev: Dev,
    priority: u32,
    /// Whether it carries [`NODE_ROUTE_PROTOCOL`].
    ours: bool,
}

/// What the kernel has, as far as this module is concerned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Actual {
    device: Option<VxlanLink>,
    routes: Vec<KernelRoute>,
    /// Permanent neighbours on the device.
    neighbours: Vec<Neighbour>,
    /// FDB entries on the device.
    fdb: Vec<Fdb>,
}

/// One kernel change, in the order [`plan`] puts them.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    DeleteDevice(u32),
    CreateDevice(VxlanSpec),
    UpdateDevice(u32, VxlanSpec),
    SetNeighbour(Neighbour),
    SetFdb(Fdb),
    ReplaceRoute(Route),
    DeleteRoute { dst: IpNet, priority: u32 },
    DeleteFdb(Fdb),
    DeleteNeighbour(Neighbour),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Plan {
    steps: Vec<Step>,
    report: Report,
}

/// The priority (metric) a route gets when none is given: 0 for IPv4, 1024 for IPv6.
fn default_priority(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1024,
    }
}

/// The steps that turn `actual` into `desired` (with the device `spec`, if any), in the order
/// that keeps pods connected: device, neighbours, FDB, route replacements, then deletions with
/// the device last.
fn plan(actual: &Actual, desired: &routing::Desired, spec: Option<&VxlanSpec>) -> Plan {
    let mut report = Report::default();
    let mut steps = Vec::new();
    let mut delete_device = None;
    // A device (re)created now carries nothing yet: its entries and routes start from empty.
    let mut fresh = false;
    match (spec, &actual.device) {
        (Some(spec), None) => {
            steps.push(Step::CreateDevice(spec.clone()));
            report.added += 1;
            fresh = true;
        }
        (Some(spec), Some(link)) if !link.keeps(spec) => {
            steps.push(Step::DeleteDevice(link.index));
            steps.push(Step::CreateDevice(spec.clone()));
            report.changed += 1;
            fresh = true;
        }
        (Some(spec), Some(link)) if !link.settled(spec) => {
            steps.push(Step::UpdateDevice(link.index, spec.clone()));
            report.changed += 1;
        }
        (Some(_), Some(_)) => report.unchanged += 1,
        (None, Some(link)) => {
            delete_device = Some(link.index);
            report.removed += 1;
        }
        (None, None) => {}
    }
    let (have_neighbours, have_fdb): (&[Neighbour], &[Fdb]) = if fresh {
        (&[], &[])
    } else {
        (&actual.neighbours, &actual.fdb)
    };
    // Without a device nothing can sit on it.
    let (want_neighbours, want_fdb): (&[Neighbour], &[Fdb]) = if spec.is_some() {
        (&desired.neighbours, &desired.fdb)
    } else {
        (&[], &[])
    };

    // Neighbours: one per gateway address.
    let mut stale_neighbours: Vec<&Neighbour> = have_neighbours.iter().collect();
    for want in want_neighbours {
        match stale_neighbours.iter().position(|n| n.ip == want.ip) {
            Some(i) => {
                if stale_neighbours.remove(i).mac == want.mac {
                    report.unchanged += 1;
                } else {
                    steps.push(Step::SetNeighbour(want.clone()));
                    report.changed += 1;
                }
            }
            None => {
                steps.push(Step::SetNeighbour(want.clone()));
                report.added += 1;
            }
        }
    }

    // FDB: a MAC may have several remotes; a replace rewrites the first one, so an entry for
    // the same MAC with another endpoint is changed rather than deleted.
    let mut stale_fdb: Vec<&Fdb> = have_fdb.iter().collect();
    for want in want_fdb {
        if let Some(i) = stale_fdb.iter().position(|f| *f == want) {
            stale_fdb.remove(i);
            report.unchanged += 1;
        } else if let Some(i) = stale_fdb.iter().position(|f| f.mac == want.mac) {
            stale_fdb.remove(i);
            steps.push(Step::SetFdb(want.clone()));
            report.changed += 1;
        } else {
            steps.push(Step::SetFdb(want.clone()));
            report.added += 1;
        }
    }

    // Routes: a desired route replaces ours at the same destination and default priority.
    let present = actual
        .routes
        .iter()
        .filter(|r| !(fresh && r.dev == Dev::Vxlan));
    let occupied: Vec<IpNet> = present
        .clone()
        .filter(|r| !r.ours && r.priority == default_priority(&r.dst))
        .map(|r| r.dst)
        .collect();
    let mut stale_routes: Vec<&KernelRoute> = present.filter(|r| r.ours).collect();
    for want in &desired.routes {
        if occupied.contains(&want.dst) {
            report.foreign.push(want.dst);
            continue;
        }
        let same_slot =
            |r: &&KernelRoute| r.dst == want.dst && r.priority == default_priority(&want.dst);
        match stale_routes.iter().position(same_slot) {
            Some(i) => {
                let have = stale_routes.remove(i);
                if have.via == Some(want.via) && have.dev == want.dev {
                    report.unchanged += 1;
                } else {
                    steps.push(Step::ReplaceRoute(want.clone()));
                    report.changed += 1;
                }
            }
            None => {
                steps.push(Step::ReplaceRoute(want.clone()));
                report.added += 1;
            }
        }
    }

    for r in stale_routes {
        steps.push(Step::DeleteRoute {
            dst: r.dst,
            priority: r.priority,
        });
        report.removed += 1;
    }
    for f in stale_fdb {
        steps.push(Step::DeleteFdb(f.clone()));
        report.removed += 1;
    }
    for n in stale_neighbours {
        steps.push(Step::DeleteNeighbour(n.clone()));
        report.removed += 1;
    }
    if let Some(index) = delete_device {
        steps.push(Step::DeleteDevice(index));
    }
    Plan { steps, report }
}

// ---- netlink messages: pure ----

fn mac_string(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn route_string(r: &Route) -> String {
    let dev = match r.dev {
        Dev::Uplink => "the uplink".to_owned(),
        Dev::Vxlan => format!("{VXLAN_DEVICE} onlink"),
    };
    format!("{} via {} dev {dev}", r.dst, r.via)
}

fn vxlan_message(spec: &VxlanSpec) -> LinkMessage {
    let builder = LinkVxlan::new(VXLAN_DEVICE, spec.vni)
        .dev(spec.underlay)
        .port(spec.port)
        .learning(false);
    let builder = match spec.local {
        IpAddr::V4(a) => builder.local(a),
        IpAddr::V6(a) => builder.local6(a),
    };
    builder
        .address(spec.mac.to_vec())
        .mtu(spec.mtu)
        .up()
        .build()
}

fn parse_link(msg: &LinkMessage) -> VxlanLink {
    let mut link = VxlanLink {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..VxlanLink::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(mac) => link.mac = Some(mac.clone()),
            LinkAttribute::Mtu(mtu) => link.mtu = Some(*mtu),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.is_vxlan = *kind == InfoKind::Vxlan,
                        LinkInfo::Data(InfoData::Vxlan(data)) => {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(v) => link.vni = Some(*v),
                                    InfoVxlan::Port(p) => link.port = Some(*p),
                                    InfoVxlan::Local(a) => link.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => link.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Link(i) => link.underlay = Some(*i),
                                    InfoVxlan::Learning(l) => link.learning = Some(*l),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn route_address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// A main-table, TOS-0 route of `family`; `vxlan` is the current device's index.
fn parse_route(
    msg: &RouteMessage,
    family: AddressFamily,
    vxlan: Option<u32>,
) -> Option<KernelRoute> {
    let h = &msg.header;
    if h.address_family != family || h.tos != 0 {
        return None;
    }
    let mut table = u32::from(h.table);
    let mut dst = None;
    let mut via = None;
    let mut oif = None;
    let mut priority = 0;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => dst = route_address(a),
            RouteAttribute::Gateway(a) => via = route_address(a),
            RouteAttribute::Via(RouteVia::Inet(a)) => via = Some(IpAddr::V4(*a)),
            RouteAttribute::Via(RouteVia::Inet6(a)) => via = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => priority = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = dst.unwrap_or(match family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    Some(KernelRoute {
        dst: IpNet::new(dst, h.destination_prefix_length).ok()?,
        via,
        dev: if oif.is_some() && oif == vxlan {
            Dev::Vxlan
        } else {
            Dev::Uplink
        },
        priority,
        ours: u8::from(h.protocol) == NODE_ROUTE_PROTOCOL,
    })
}

fn neighbour_address(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // Bridge-family messages (FDB) carry the remote as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// `(ip or remote, MAC)` of a neighbour or FDB message on interface `index`.
fn parse_neighbour(msg: &NeighbourMessage, index: u32) -> Option<(IpAddr, [u8; 6])> {
    if msg.header.ifindex != index {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for attr in &msg.attributes {
        match attr {
            NeighbourAttribute::Destination(a) => ip = neighbour_address(a),
            NeighbourAttribute::LinkLayerAddress(l) => mac = <[u8; 6]>::try_from(&l[..]).ok(),
            _ => {}
        }
    }
    Some((ip?, mac?))
}

fn neighbour_destination(ip: IpAddr) -> NeighbourAttribute {
    NeighbourAttribute::Destination(match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    })
}

fn neighbour_delete_message(index: u32, n: &Neighbour) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match n.ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = index;
    msg.attributes.push(neighbour_destination(n.ip));
    msg
}

fn fdb_delete_message(index: u32, f: &Fdb) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.flags = NeighbourFlags::Own;
    msg.header.state = NeighbourState::Permanent;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.to_vec()));
    msg.attributes.push(neighbour_destination(f.dst));
    msg
}

fn route_replace_message(r: &Route, vxlan: Option<u32>) -> Result<RouteMessage> {
    let invalid = |reason: String| NodeDatapathError::InvalidRoute {
        route: route_string(r),
        reason,
    };
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.network(), r.dst.prefix_len())
        .and_then(|b| b.gateway(r.via))
        .map_err(|e| invalid(e.to_string()))?
        .protocol(RouteProtocol::Other(NODE_ROUTE_PROTOCOL));
    Ok(match r.dev {
        Dev::Uplink => builder.build(),
        Dev::Vxlan => {
            let index = vxlan.ok_or_else(|| NodeDatapathError::NoDevice {
                object: format!("the route {}", route_string(r)),
            })?;
            builder.output_interface(index).onlink().build()
        }
    })
}

/// Matches only our route at `dst` and `priority`, whatever its next hop or scope.
fn route_delete_message(dst: IpNet, priority: u32) -> Result<RouteMessage> {
    let builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| NodeDatapathError::InvalidRoute {
            route: dst.to_string(),
            reason: e.to_string(),
        })?
        .protocol(RouteProtocol::Other(NODE_ROUTE_PROTOCOL))
        .scope(RouteScope::NoWhere)
        .kind(RouteType::Unspec);
    Ok(if priority == 0 {
        builder.build()
    } else {
        builder.priority(priority).build()
    })
}

// ---- the kernel side: thin ----

/// Whether a delete failed only because the object is already gone.
fn is_gone(e: &rtnetlink::Error) -> bool {
    use rustix::io::Errno;
    match e {
        rtnetlink::Error::NetlinkError(m) => [Errno::NOENT, Errno::SRCH, Errno::NODEV]
            .iter()
            .any(|errno| -m.raw_code() == errno.raw_os_error()),
        _ => false,
    }
}

fn tolerate_gone(
    r: std::result::Result<(), rtnetlink::Error>,
) -> std::result::Result<(), rtnetlink::Error> {
    match r {
        Err(e) if is_gone(&e) => Ok(()),
        other => other,
    }
}

fn list(object: &'static str) -> impl FnOnce(rtnetlink::Error) -> NodeDatapathError {
    move |source| NodeDatapathError::List { object, source }
}

/// MTU of the uplink: the interface holding `local` (the node's address).
pub async fn uplink_mtu(host: &Handle, local: IpAddr) -> Result<u32> {
    Ok(underlay(host, local).await?.1)
}

/// Index and MTU of the interface holding `local`.
async fn underlay(host: &Handle, local: IpAddr) -> Result<(u32, u32)> {
    let mut index = None;
    let mut addresses = host.address().get().execute();
    // Read the whole dump rather than stopping early, so no reply is left on the socket.
    while let Some(msg) = addresses.try_next().await.map_err(list("addresses"))? {
        let holds = msg.attributes.iter().any(|a| {
            matches!(a, AddressAttribute::Address(ip) | AddressAttribute::Local(ip) if *ip == local)
        });
        if holds && index.is_none() {
            index = Some(msg.header.index);
        }
    }
    let index = index.ok_or(NodeDatapathError::NoUnderlay { local })?;
    let mut links = host.link().get().match_index(index).execute();
    let mut mtu = None;
    while let Some(msg) = links.try_next().await.map_err(list("links"))? {
        for attr in &msg.attributes {
            if let LinkAttribute::Mtu(m) = attr {
                mtu = Some(*m);
            }
        }
    }
    // The kernel always reports IFLA_MTU; were it missing, Ethernet's default is the best guess
    // (a device MTU too large for the underlay is refused, and the error says so).
    Ok((index, mtu.unwrap_or(1500)))
}

async fn read_device(host: &Handle) -> Result<Option<VxlanLink>> {
    let mut links = host.link().get().match_name(VXLAN_DEVICE).execute();
    let mut device = None;
    loop {
        match links.try_next().await {
            Ok(Some(msg)) => device = Some(parse_link(&msg)),
            Ok(None) => return Ok(device),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(list("links")(e)),
        }
    }
}

async fn read_actual(host: &Handle) -> Result<Actual> {
    let device = read_device(host).await?;
    let vxlan = device.as_ref().map(|d| d.index);
    let mut routes = Vec::new();
    let dumps = [
        (
            AddressFamily::Inet,
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
        ),
        (
            AddressFamily::Inet6,
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ),
    ];
    for (family, request) in dumps {
        let mut dump = host.route().get(request).execute();
        while let Some(msg) = dump.try_next().await.map_err(list("routes"))? {
            routes.extend(parse_route(&msg, family, vxlan));
        }
    }
    let mut neighbours = Vec::new();
    let mut fdb = Vec::new();
    if let Some(index) = vxlan {
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut dump = host.neighbours().get().set_address_family(family).execute();
            while let Some(msg) = dump.try_next().await.map_err(list("neighbours"))? {
                if msg.header.state == NeighbourState::Permanent
                    && let Some((ip, mac)) = parse_neighbour(&msg, index)
                {
                    neighbours.push(Neighbour { ip, mac });
                }
            }
        }
        let mut dump = host
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = dump.try_next().await.map_err(list("FDB entries"))? {
            if let Some((dst, mac)) = parse_neighbour(&msg, index) {
                fdb.push(Fdb { mac, dst });
            }
        }
    }
    Ok(Actual {
        device,
        routes,
        neighbours,
        fdb,
    })
}

async fn device_index(host: &Handle) -> Result<u32> {
    read_device(host)
        .await?
        .map(|d| d.index)
        .ok_or(NodeDatapathError::DeviceVanished)
}

fn needs_device(vxlan: Option<u32>, object: impl FnOnce() -> String) -> Result<u32> {
    vxlan.ok_or_else(|| NodeDatapathError::NoDevice { object: object() })
}

async fn execute(host: &Handle, steps: &[Step], mut vxlan: Option<u32>) -> Result<()> {
    for step in steps {
        match step {
            Step::DeleteDevice(index) => {
                tolerate_gone(host.link().del(*index).execute().await)
                    .map_err(|source| NodeDatapathError::DeleteDevice { source })?;
                vxlan = None;
            }
            Step::CreateDevice(spec) => {
                host.link()
                    .add(vxlan_message(spec))
                    .execute()
                    .await
                    .map_err(|source| NodeDatapathError::CreateDevice {
                        vni: spec.vni,
                        port: spec.port,
                        local: spec.local,
                        mtu: spec.mtu,
                        source,
                    })?;
                vxlan = Some(device_index(host).await?);
            }
            Step::UpdateDevice(index, spec) => {
                let msg = LinkUnspec::new_with_index(*index)
                    .mtu(spec.mtu)
                    .up()
                    .build();
                host.link().set(msg).execute().await.map_err(|source| {
                    NodeDatapathError::UpdateDevice {
                        mtu: spec.mtu,
                        source,
                    }
                })?;
            }
            Step::SetNeighbour(n) => {
                let index = needs_device(vxlan, || format!("the neighbour {}", n.ip))?;
                host.neighbours()
                    .add(index, n.ip)
                    .link_layer_address(&n.mac)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(|source| NodeDatapathError::SetNeighbour {
                        ip: n.ip,
                        mac: mac_string(&n.mac),
                        source,
                    })?;
            }
            Step::SetFdb(f) => {
                let index =
                    needs_device(vxlan, || format!("the FDB entry {}", mac_string(&f.mac)))?;
                host.neighbours()
                    .add_bridge(index, &f.mac)
                    .destination(f.dst)
                    .flags(NeighbourFlags::Own)
                    .state(NeighbourState::Permanent)
                    .replace()
                    .execute()
                    .await
                    .map_err(|source| NodeDatapathError::SetFdb {
                        mac: mac_string(&f.mac),
                        dst: f.dst,
                        source,
                    })?;
            }
            Step::ReplaceRoute(r) => {
                let msg = route_replace_message(r, vxlan)?;
                host.route()
                    .add(msg)
                    .replace()
                    .execute()
                    .await
                    .map_err(|source| NodeDatapathError::ReplaceRoute {
                        route: route_string(r),
                        hint: match r.dev {
                            Dev::Uplink => {
                                "Native routing needs the peer's node IP on a network directly connected to this node; otherwise use routingMode VXLAN"
                            }
                            Dev::Vxlan => "check that the device is up",
                        },
                        source,
                    })?;
            }
            Step::DeleteRoute { dst, priority } => {
                let msg = route_delete_message(*dst, *priority)?;
                tolerate_gone(host.route().del(msg).execute().await)
                    .map_err(|source| NodeDatapathError::DeleteRoute { dst: *dst, source })?;
            }
            Step::DeleteFdb(f) => {
                // Entries on a device that is already gone went with it.
                if let Some(index) = vxlan {
                    tolerate_gone(
                        host.neighbours()
                            .del(fdb_delete_message(index, f))
                            .execute()
                            .await,
                    )
                    .map_err(|source| NodeDatapathError::DeleteFdb {
                        mac: mac_string(&f.mac),
                        dst: f.dst,
                        source,
                    })?;
                }
            }
            Step::DeleteNeighbour(n) => {
                if let Some(index) = vxlan {
                    tolerate_gone(
                        host.neighbours()
                            .del(neighbour_delete_message(index, n))
                            .execute()
                            .await,
                    )
                    .map_err(|source| NodeDatapathError::DeleteNeighbour { ip: n.ip, source })?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::{Mode, Peer, desired, vtep_mac};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const VX: u32 = 7;
    const TUNNEL: Tunnel = Tunnel {
        vni: 42,
        port: 8472,
        local: IpAddr::V4(Ipv4Addr::new(192, 168, 77, 1)),
    };

    fn peers() -> Vec<Peer> {
        vec![
            Peer {
                name: "node2".into(),
                node_ip: ip("192.168.77.2"),
                tunnel_endpoint: None,
                blocks: vec![net("10.201.2.0/26")],
            },
            Peer {
                name: "node3".into(),
                node_ip: ip("192.168.77.3"),
                tunnel_endpoint: None,
                blocks: vec![net("10.201.3.0/26"), net("10.201.3.64/26")],
            },
        ]
    }

    fn want(mode: Mode, peers: &[Peer]) -> (routing::Desired, Option<VxlanSpec>) {
        let (d, _) = desired(
            mode,
            TUNNEL.local,
            &[net("10.201.1.0/26")],
            peers,
            1500,
            None,
        );
        let spec = d
            .vxlan_mac
            .map(|mac| VxlanSpec::new(&TUNNEL, mac, 2, 1500, d.pod_mtu));
        (d, spec)
    }

    const VXLAN: Mode = Mode::Vxlan {
        vni: 42,
        port: 8472,
    };

    /// The kernel state right after `plan` ran against an empty node.
    fn converged(d: &routing::Desired, spec: Option<&VxlanSpec>) -> Actual {
        Actual {
            device: spec.map(|s| VxlanLink {
                index: VX,
                is_vxlan: true,
                vni: Some(s.vni),
                port: Some(s.port),
                local: Some(s.local),
                underlay: Some(s.underlay),
                learning: Some(false),
                mac: Some(s.mac.to_vec()),
                mtu: Some(s.mtu),
                up: true,
            }),
            routes: d
                .routes
                .iter()
                .map(|r| KernelRoute {
                    dst: r.dst,
                    via: Some(r.via),
                    dev: r.dev,
                    priority: 0,
                    ours: true,
                })
                .collect(),
            neighbours: d.neighbours.clone(),
            fdb: d.fdb.clone(),
        }
    }

    fn position(steps: &[Step], pred: impl Fn(&Step) -> bool) -> Vec<usize> {
        steps
            .iter()
            .enumerate()
            .filter(|(_, s)| pred(s))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn native_on_an_empty_node_adds_one_route_per_peer_block_and_no_device() {
        let (d, spec) = want(Mode::Native, &peers());
        let p = plan(&Actual::default(), &d, spec.as_ref());
        assert_eq!(
            p.steps,
            d.routes
                .iter()
                .cloned()
                .map(Step::ReplaceRoute)
                .collect::<Vec<_>>()
        );
        assert_eq!(p.report.added, 3);
        assert_eq!(p.report.changes(), 3);
    }

    #[test]
    fn a_converged_node_needs_nothing() {
        for mode in [Mode::Native, VXLAN] {
            let (d, spec) = want(mode, &peers());
            let p = plan(&converged(&d, spec.as_ref()), &d, spec.as_ref());
            assert!(p.steps.is_empty(), "{mode:?}: {:?}", p.steps);
            assert_eq!(p.report.changes(), 0);
            assert!(p.report.unchanged > 0);
        }
    }

    #[test]
    fn native_to_vxlan_creates_device_neighbours_and_fdb_before_moving_routes() {
        let (native, _) = want(Mode::Native, &peers());
        let (d, spec) = want(VXLAN, &peers());
        let p = plan(&converged(&native, None), &d, spec.as_ref());
        assert_eq!(p.steps[0], Step::CreateDevice(spec.unwrap()));
        let entries = position(&p.steps, |s| {
            matches!(s, Step::SetNeighbour(_) | Step::SetFdb(_))
        });
        let routes = position(&p.steps, |s| matches!(s, Step::ReplaceRoute(_)));
        assert_eq!(entries.len(), 3 + 2, "3 gateways, 2 peers");
        assert_eq!(routes.len(), 3);
        assert!(entries.iter().max() < routes.iter().min(), "{:?}", p.steps);
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::DeleteRoute { .. })),
            "routes are replaced in place, never deleted and re-added"
        );
        assert_eq!(p.report.changed, 3, "the routes");
        assert_eq!(p.report.added, 1 + 5, "the device and its entries");
    }

    #[test]
    fn vxlan_to_native_moves_routes_first_and_deletes_the_device_last() {
        let (vx, vx_spec) = want(VXLAN, &peers());
        let (d, spec) = want(Mode::Native, &peers());
        let p = plan(&converged(&vx, vx_spec.as_ref()), &d, spec.as_ref());
        let routes = position(&p.steps, |s| matches!(s, Step::ReplaceRoute(_)));
        assert_eq!(routes, vec![0, 1, 2], "{:?}", p.steps);
        assert_eq!(p.steps.last(), Some(&Step::DeleteDevice(VX)));
        assert_eq!(p.report.changed, 3);
        assert_eq!(p.report.removed, 1 + 3 + 2, "device, neighbours, FDB");
    }

    #[test]
    fn a_peer_that_leaves_loses_its_routes_neighbours_and_fdb_entry() {
        let (before, spec) = want(VXLAN, &peers());
        let (d, _) = want(VXLAN, &peers()[..1]);
        let p = plan(&converged(&before, spec.as_ref()), &d, spec.as_ref());
        let mac3 = vtep_mac(ip("192.168.77.3"));
        assert_eq!(
            p.steps,
            vec![
                Step::DeleteRoute {
                    dst: net("10.201.3.0/26"),
                    priority: 0
                },
                Step::DeleteRoute {
                    dst: net("10.201.3.64/26"),
                    priority: 0
                },
                Step::DeleteFdb(Fdb {
                    mac: mac3,
                    dst: ip("192.168.77.3")
                }),
                Step::DeleteNeighbour(Neighbour {
                    ip: ip("10.201.3.0"),
                    mac: mac3
                }),
                Step::DeleteNeighbour(Neighbour {
                    ip: ip("10.201.3.64"),
                    mac: mac3
                }),
            ]
        );
        assert_eq!(p.report.removed, 5);
    }

    #[test]
    fn a_device_with_another_vni_is_recreated_and_everything_on_it_re_added() {
        let (d, spec) = want(VXLAN, &peers());
        let mut actual = converged(&d, spec.as_ref());
        if let Some(dev) = actual.device.as_mut() {
            dev.vni = Some(1);
        }
        let p = plan(&actual, &d, spec.as_ref());
        assert_eq!(p.steps[0], Step::DeleteDevice(VX));
        assert_eq!(p.steps[1], Step::CreateDevice(spec.unwrap()));
        // The kernel drops the old device's routes and entries with it.
        assert_eq!(p.steps.len(), 2 + 3 + 2 + 3, "{:?}", p.steps);
        assert!(!p.steps.iter().any(|s| matches!(
            s,
            Step::DeleteRoute { .. } | Step::DeleteFdb(_) | Step::DeleteNeighbour(_)
        )));
        assert_eq!(p.report.changed, 1);
        assert_eq!(p.report.added, 3 + 2 + 3);
    }

    #[test]
    fn port_local_underlay_learning_or_mac_differences_also_recreate() {
        let (d, spec) = want(VXLAN, &peers());
        let spec = spec.unwrap();
        let base = converged(&d, Some(&spec)).device.unwrap();
        let variants: Vec<VxlanLink> = vec![
            VxlanLink {
                port: Some(4789),
                ..base.clone()
            },
            VxlanLink {
                local: Some(ip("192.168.77.9")),
                ..base.clone()
            },
            VxlanLink {
                underlay: Some(99),
                ..base.clone()
            },
            VxlanLink {
                learning: Some(true),
                ..base.clone()
            },
            VxlanLink {
                mac: Some(vec![2, 0, 0, 0, 0, 1]),
                ..base.clone()
            },
            VxlanLink {
                is_vxlan: false,
                ..base.clone()
            },
        ];
        for link in variants {
            assert!(!link.keeps(&spec), "{link:?}");
        }
        assert!(base.keeps(&spec));
    }

    #[test]
    fn a_wrong_mtu_or_a_down_device_is_fixed_in_place() {
        let (d, spec) = want(VXLAN, &peers());
        for tweak in [
            |l: &mut VxlanLink| l.mtu = Some(1400),
            |l: &mut VxlanLink| l.up = false,
        ] {
            let mut actual = converged(&d, spec.as_ref());
            if let Some(dev) = actual.device.as_mut() {
                tweak(dev);
            }
            let p = plan(&actual, &d, spec.as_ref());
            assert_eq!(p.steps, vec![Step::UpdateDevice(VX, spec.clone().unwrap())]);
            assert_eq!(p.report.changed, 1);
        }
    }

    #[test]
    fn the_device_mtu_is_the_pod_mtu_capped_by_the_underlay() {
        let mac = [0; 6];
        assert_eq!(VxlanSpec::new(&TUNNEL, mac, 2, 1500, 1450).mtu, 1450);
        assert_eq!(VxlanSpec::new(&TUNNEL, mac, 2, 1500, 1280).mtu, 1280);
        assert_eq!(
            VxlanSpec::new(&TUNNEL, mac, 2, 1500, 1500).mtu,
            1450,
            "capped"
        );
        assert_eq!(
            VxlanSpec::new(&TUNNEL, mac, 2, 1400, 0).mtu,
            1350,
            "no pod MTU"
        );
        let v6 = Tunnel {
            local: ip("fd00::1"),
            ..TUNNEL
        };
        assert_eq!(
            VxlanSpec::new(&v6, mac, 2, 1500, 0).mtu,
            1430,
            "IPv6 outer header"
        );
    }

    #[test]
    fn a_route_somebody_else_owns_is_left_alone_and_reported() {
        let (d, spec) = want(Mode::Native, &peers());
        let actual = Actual {
            routes: vec![KernelRoute {
                dst: net("10.201.2.0/26"),
                via: Some(ip("192.168.77.254")),
                dev: Dev::Uplink,
                priority: 0,
                ours: false,
            }],
            ..Actual::default()
        };
        let p = plan(&actual, &d, spec.as_ref());
        assert_eq!(p.report.foreign, vec![net("10.201.2.0/26")]);
        assert!(p.steps.iter().all(|s| match s {
            Step::ReplaceRoute(r) => r.dst != net("10.201.2.0/26"),
            _ => true,
        }));
        assert_eq!(p.report.added, 2);
    }

    #[test]
    fn a_foreign_route_at_another_metric_does_not_block_ours() {
        let (d, spec) = want(Mode::Native, &peers());
        let actual = Actual {
            routes: vec![KernelRoute {
                dst: net("10.201.2.0/26"),
                via: None,
                dev: Dev::Uplink,
                priority: 100,
                ours: false,
            }],
            ..Actual::default()
        };
        let p = plan(&actual, &d, spec.as_ref());
        assert!(p.report.foreign.is_empty());
        assert_eq!(p.report.added, 3);
    }

    #[test]
    fn our_route_with_another_next_hop_is_replaced_and_one_at_another_metric_deleted() {
        let (d, spec) = want(Mode::Native, &peers()[..1]);
        let actual = Actual {
            routes: vec![
                KernelRoute {
                    dst: net("10.201.2.0/26"),
                    via: Some(ip("192.168.77.9")),
                    dev: Dev::Uplink,
                    priority: 0,
                    ours: true,
                },
                KernelRoute {
                    dst: net("10.201.2.0/26"),
                    via: Some(ip("192.168.77.2")),
                    dev: Dev::Uplink,
                    priority: 20,
                    ours: true,
                },
            ],
            ..Actual::default()
        };
        let p = plan(&actual, &d, spec.as_ref());
        assert_eq!(
            p.steps,
            vec![
                Step::ReplaceRoute(d.routes[0].clone()),
                Step::DeleteRoute {
                    dst: net("10.201.2.0/26"),
                    priority: 20
                }
            ]
        );
        assert_eq!((p.report.changed, p.report.removed), (1, 1));
    }

    #[test]
    fn a_peer_endpoint_change_replaces_its_fdb_entry_and_neighbour_macs() {
        let (before, spec) = want(VXLAN, &peers()[..1]);
        let mut moved = peers();
        moved.truncate(1);
        moved[0].tunnel_endpoint = Some(ip("192.168.77.22"));
        let (d, _) = want(VXLAN, &moved);
        let p = plan(&converged(&before, spec.as_ref()), &d, spec.as_ref());
        let new_mac = vtep_mac(ip("192.168.77.22"));
        assert_eq!(
            p.steps,
            vec![
                Step::SetNeighbour(Neighbour {
                    ip: ip("10.201.2.0"),
                    mac: new_mac
                }),
                Step::SetFdb(Fdb {
                    mac: new_mac,
                    dst: ip("192.168.77.22")
                }),
                Step::DeleteFdb(before.fdb[0].clone()),
            ],
            "the MAC follows the endpoint, so the old entry is another MAC and goes"
        );
    }

    #[test]
    fn an_fdb_entry_for_a_known_mac_with_a_new_endpoint_is_changed_not_deleted() {
        let (d, spec) = want(VXLAN, &peers()[..1]);
        let mut actual = converged(&d, spec.as_ref());
        actual.fdb[0].dst = ip("192.168.77.99");
        let p = plan(&actual, &d, spec.as_ref());
        assert_eq!(p.steps, vec![Step::SetFdb(d.fdb[0].clone())]);
        assert_eq!(p.report.changed, 1);
    }

    #[test]
    fn removing_everything_deletes_routes_then_entries_then_the_device() {
        let (vx, spec) = want(VXLAN, &peers());
        let mut actual = converged(&vx, spec.as_ref());
        actual.routes.push(KernelRoute {
            dst: net("0.0.0.0/0"),
            via: Some(ip("192.168.77.254")),
            dev: Dev::Uplink,
            priority: 0,
            ours: false,
        });
        let p = plan(&actual, &routing::Desired::default(), None);
        assert_eq!(p.steps.len(), 3 + 2 + 3 + 1);
        assert_eq!(p.steps.last(), Some(&Step::DeleteDevice(VX)));
        assert!(
            p.steps
                .iter()
                .all(|s| !matches!(s, Step::DeleteRoute { dst, .. } if dst.prefix_len() == 0)),
            "the default route is not ours"
        );
    }

    #[test]
    fn the_vxlan_message_parses_back_to_a_device_that_keeps_the_spec() {
        let (_, spec) = want(VXLAN, &peers());
        let spec = spec.unwrap();
        let mut msg = vxlan_message(&spec);
        msg.header.index = VX;
        let link = parse_link(&msg);
        assert!(link.keeps(&spec), "{link:?}");
        assert!(link.settled(&spec), "{link:?}");
        assert_eq!(link.index, VX);
    }

    #[test]
    fn routes_parse_with_protocol_device_and_priority_and_other_tables_are_skipped() {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 201, 2, 0), 26)
            .gateway(Ipv4Addr::new(10, 201, 2, 0))
            .output_interface(VX)
            .onlink()
            .protocol(RouteProtocol::Other(NODE_ROUTE_PROTOCOL))
            .build();
        assert_eq!(
            parse_route(&msg, AddressFamily::Inet, Some(VX)),
            Some(KernelRoute {
                dst: net("10.201.2.0/26"),
                via: Some(ip("10.201.2.0")),
                dev: Dev::Vxlan,
                priority: 0,
                ours: true,
            })
        );
        let foreign = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(Ipv4Addr::new(192, 168, 77, 254))
            .output_interface(2)
            .priority(100)
            .build();
        assert_eq!(
            parse_route(&foreign, AddressFamily::Inet, Some(VX)),
            Some(KernelRoute {
                dst: net("0.0.0.0/0"),
                via: Some(ip("192.168.77.254")),
                dev: Dev::Uplink,
                priority: 100,
                ours: false,
            })
        );
        let local_table = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(10, 201, 2, 0), 26)
            .table_id(255)
            .build();
        assert_eq!(parse_route(&local_table, AddressFamily::Inet, None), None);
        assert_eq!(
            parse_route(&msg, AddressFamily::Inet6, None),
            None,
            "another family's dump"
        );
    }

    #[test]
    fn fdb_remotes_parse_from_raw_bridge_family_bytes() {
        let mut msg = fdb_delete_message(
            VX,
            &Fdb {
                mac: [2, 0, 0, 0, 0, 1],
                dst: ip("192.168.77.2"),
            },
        );
        // What a bridge-family dump yields: the remote as raw bytes.
        msg.attributes[1] =
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![192, 168, 77, 2]));
        assert_eq!(
            parse_neighbour(&msg, VX),
            Some((ip("192.168.77.2"), [2, 0, 0, 0, 0, 1]))
        );
        assert_eq!(parse_neighbour(&msg, VX + 1), None, "another interface");
    }

    #[test]
    fn route_delete_messages_match_only_our_protocol_at_any_scope() {
        let msg = route_delete_message(net("10.201.2.0/26"), 0).unwrap();
        assert_eq!(u8::from(msg.header.protocol), NODE_ROUTE_PROTOCOL);
        assert_eq!(msg.header.scope, RouteScope::NoWhere);
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Priority(_)))
        );
        let msg = route_delete_message(net("fd00:201:2::/64"), 1024).unwrap();
        assert!(msg.attributes.contains(&RouteAttribute::Priority(1024)));
    }

    #[test]
    fn a_vxlan_route_without_a_device_is_an_error_not_a_panic() {
        let r = Route {
            dst: net("10.201.2.0/26"),
            via: ip("10.201.2.0"),
            dev: Dev::Vxlan,
        };
        assert!(matches!(
            route_replace_message(&r, None),
            Err(NodeDatapathError::NoDevice { .. })
        ));
        let msg = route_replace_message(&r, Some(VX)).unwrap();
        assert!(msg.attributes.contains(&RouteAttribute::Oif(VX)));
        assert_eq!(u8::from(msg.header.protocol), NODE_ROUTE_PROTOCOL);
    }
}
