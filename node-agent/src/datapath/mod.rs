//! The node's datapath, programmed through netlink: pod interfaces ([`pod`]) and the routes,
//! tunnel device and neighbours that reach other nodes' pods ([`node`]).

pub mod batch;
pub mod node;
pub mod pod;

/// Why a datapath operation failed. Shared by every datapath module; the messages name the
/// operation and the kernel object, so an operator can find it with `ip`.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The kernel refused a netlink request.
    #[error("{op} {object}: {source}")]
    Netlink {
        /// What was being done ("add route", "create veth pair", ...).
        op: String,
        /// The object and where it lives ("10.244.0.5/32 dev fe0123456789a in the node's
        /// namespace").
        object: String,
        /// The netlink error.
        source: rtnetlink::Error,
    },
    /// A system call outside netlink failed (entering a namespace, opening a socket, ...).
    #[error("{op} {object}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The object it was done to.
        object: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The kernel's state is not what it should be (found by a check, or in the way of a
    /// change); the message says what differs and what to do about it.
    #[error("{0}")]
    Check(String),
    /// The request itself cannot be carried out as given (an invalid name, MTU, ...).
    #[error("{0}")]
    Invalid(String),
}

impl DatapathError {
    /// The errno of a refused netlink request or failed system call, positive (compare with
    /// `rustix::io::Errno::EXIST.raw_os_error()` and friends).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Netlink {
                source: rtnetlink::Error::NetlinkError(message),
                ..
            } => Some(message.raw_code().abs()).filter(|code| *code != 0),
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
