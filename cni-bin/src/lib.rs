//! Ferrite's CNI plugin (`ferrite`, installed into `/opt/cni/bin`) and the protocol it shares
//! with the node agent.
//!
//! The plugin is thin: it parses the runtime's request ([`spec`]), asks the agent over a unix
//! socket, and prints the result or a CNI error. Types that cross the process boundary live
//! here, in the library, so the agent links this crate and not the other way round.
//!
//! Status: the protocol ([`spec`]) is implemented and tested; talking to the agent arrives with
//! the agent (issue 4). The binary answers VERSION, and refuses everything else with a CNI error.

pub mod client;
pub mod proto;
#[cfg(feature = "server")]
pub mod server;
pub mod spec;
pub mod spool;

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the agent listens for the plugin, on the node.
pub const DEFAULT_AGENT_SOCKET: &str = "/run/ferrite/cni.sock";
/// Where DEL requests wait while the agent is down.
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/cni/ferrite/pending-del";
