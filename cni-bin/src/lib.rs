//! Ferrite's CNI plugin (`ferrite`, installed into `/opt/cni/bin`) and the protocol it shares
//! with the node agent.
//!
//! The plugin is thin: it parses the runtime's request ([`spec`]), asks the agent over a unix
//! socket, and prints the result or a CNI error. Types that cross the process boundary live
//! here, in the library, so the agent links this crate and not the other way round.
//!
//! Status: the plugin side is complete. [`spec`] parses the runtime's request; [`client`]
//! makes the one bounded call to the agent ([`proto`]: JSON over a unix socket, the pod's
//! network namespace passed as a descriptor); [`spool`] queues DELs while the agent is down.
//! The binary serves VERSION itself and forwards ADD, DEL, CHECK, STATUS and GC: ADD prints
//! the agent's result in the runtime's spec version, DEL succeeds even without a namespace or
//! an agent (the DEL is queued), and an unreachable or hung agent is a CNI error naming the
//! socket (11, or 50 for STATUS) after at most 30 s (5 s for STATUS).
//!
//! The agent's side is `server` (feature `server`, on tokio): it reads a request and its
//! descriptor, refusing anything inconsistent with a CNI error, and writes the reply. The
//! agent itself — acting on requests and replaying the spool with
//! [`spool::pending`]/[`spool::done`] — lives in `ferrite-agent` (node-agent/).

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
