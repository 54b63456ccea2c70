//! Ferrite's dashboard and flow API.
//!
//! Serves the browser dashboard and merges every agent's flow stream; it never links the datapath.
//!
//! Nothing is implemented yet: a later issue builds it. The binary says so and exits non-zero.

/// The version every Ferrite component reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
