//! The plugin ↔ agent protocol, over the agent's unix socket.
//!
//! One request per connection. The plugin connects, sends the JSON [`Request`] in one
//! `sendmsg` — with the pod's network namespace attached as an `SCM_RIGHTS` file descriptor
//! when it has one — shuts its write side, and reads the JSON [`Response`] to EOF.
//!
//! Passing the namespace as a descriptor (not a path) means the agent never has to see the
//! runtime's mount namespace: containerd pins pod namespaces under its own private `/run`,
//! which a containerised agent could only reach through mount propagation.

use serde::{Deserialize, Serialize};

use crate::spec::{Attachment, CniError, CniResult, Command, PodRef};

/// Largest request the agent accepts (a GC listing thousands of attachments fits easily).
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

/// What the plugin asks of the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// ADD, DEL, CHECK, STATUS or GC (VERSION never reaches the agent).
    pub command: Command,
    /// `CNI_CONTAINERID` (empty for STATUS and GC).
    #[serde(default)]
    pub container_id: String,
    /// `CNI_IFNAME` (empty for STATUS and GC).
    #[serde(default)]
    pub ifname: String,
    /// `CNI_NETNS` as the runtime gave it, for messages only: the namespace itself travels as
    /// a descriptor. Empty on containerd's second DEL.
    #[serde(default)]
    pub netns_path: String,
    /// Whether a namespace descriptor is attached to this request.
    #[serde(default)]
    pub has_netns: bool,
    /// The pod, from `CNI_ARGS`.
    #[serde(default)]
    pub pod: PodRef,
    /// The network's name (from the configuration).
    pub network: String,
    /// The spec version the runtime speaks; the plugin renders the reply in it.
    pub cni_version: String,
    /// CHECK: the result of the ADD being checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<CniResult>,
    /// GC: the attachments the runtime still holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Set when the plugin queued this DEL while the agent was down and the agent now
    /// replays it (for logs and metrics).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

impl Request {
    /// The attachment this request is about (ADD, DEL, CHECK).
    pub fn attachment(&self) -> Attachment {
        Attachment {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Response {
    /// ADD: the attachment's result (version-neutral; the plugin renders it).
    Added(CniResult),
    /// DEL, CHECK, STATUS, GC: done, nothing to print.
    Done,
    /// The request failed; the plugin prints this error.
    Error(CniError),
}
