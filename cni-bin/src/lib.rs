//! Ferrite's CNI plugin and the agent-CNI protocol.
//!
//! The library side holds the types shared with the agent; the binary parses a CNI request, asks the agent over its unix socket and prints the result.
//!
//! Nothing is implemented yet: issue 4 builds it. The binary says so and exits non-zero.

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
