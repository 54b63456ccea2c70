//! The node's datapath, programmed through netlink: pod interfaces ([`pod`]) and the routes,
//! tunnel device and neighbours that reach other nodes' pods ([`node`]).

pub mod node;
pub mod pod;
