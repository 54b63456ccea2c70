//! The CNI protocol as the runtime speaks it: the `CNI_*` environment, the network
//! configuration on stdin, results, errors with the spec's well-known codes, and version
//! negotiation. Pure: parsing takes the environment and stdin as values, so every malformed
//! input is unit-tested and answered with a CNI error, never a panic.
//!
//! Ferrite speaks spec 1.1.0 (ADD, DEL, CHECK, VERSION, STATUS, GC) and every older version a
//! runtime may still ask for; containerd 1.6/1.7 send at most 1.0.0.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Spec versions this plugin accepts, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest spec version this plugin speaks.
pub const LATEST_VERSION: &str = "1.1.0";

/// The operation a runtime asks for (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it; idempotent, also without a netns or a prevResult.
    Del,
    /// Verify an attachment is as ADD left it.
    Check,
    /// Report the supported spec versions.
    Version,
    /// Report whether the plugin can serve ADD (spec 1.1).
    Status,
    /// Release everything not in the runtime's list of valid attachments (spec 1.1).
    Gc,
}

impl Command {
    fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "VERSION" => Self::Version,
            "STATUS" => Self::Status,
            "GC" => Self::Gc,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!(
                        "CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
                    ),
                ));
            }
        })
    }

    /// Whether the command concerns one container (and so needs `CNI_CONTAINERID` and `CNI_IFNAME`).
    pub const fn per_container(self) -> bool {
        matches!(self, Self::Add | Self::Del | Self::Check)
    }
}

/// The spec's well-known error codes (values 100 and up are the plugin's own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion,
    /// 2: unsupported field in the network configuration.
    UnsupportedField,
    /// 3: container unknown or does not exist.
    UnknownContainer,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment,
    /// 5: I/O failure.
    Io,
    /// 6: failed to decode content.
    Decode,
    /// 7: invalid network configuration.
    InvalidConfig,
    /// 11: try again later.
    TryAgainLater,
    /// 50: the plugin is not available (STATUS).
    PluginNotAvailable,
    /// 100: no address is free in the node's blocks.
    AddressesExhausted,
    /// 101: the datapath could not be set up (the message says which step).
    Datapath,
}

impl ErrorCode {
    /// The numeric code on the wire.
    pub const fn code(self) -> u32 {
        match self {
            Self::IncompatibleVersion => 1,
            Self::UnsupportedField => 2,
            Self::UnknownContainer => 3,
            Self::InvalidEnvironment => 4,
            Self::Io => 5,
            Self::Decode => 6,
            Self::InvalidConfig => 7,
            Self::TryAgainLater => 11,
            Self::PluginNotAvailable => 50,
            Self::AddressesExhausted => 100,
            Self::Datapath => 101,
        }
    }
}

/// A CNI error, printed as the spec's error JSON on stdout with a non-zero exit status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("CNI error {code}: {msg}")]
pub struct CniError {
    /// The spec version of the reply (filled in when printed).
    #[serde(
        rename = "cniVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cni_version: String,
    /// The error code.
    pub code: u32,
    /// What was wrong and what to do.
    pub msg: String,
    /// More detail, e.g. the underlying error.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with a well-known code.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        Self {
            cni_version: String::new(),
            code: code.code(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds detail (an underlying error).
    #[must_use]
    pub fn details(mut self, details: impl fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }
}

/// The Kubernetes identity of the pod, from `CNI_ARGS` (`K8S_POD_NAMESPACE=…;K8S_POD_NAME=…`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's namespace.
    pub namespace: Option<String>,
    /// The pod's name.
    pub name: Option<String>,
    /// The pod's UID.
    pub uid: Option<String>,
}

/// The `CNI_*` environment of one invocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`; empty on containerd's second DEL.
    pub netns: String,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, parsed.
    pub args: BTreeMap<String, String>,
    /// The pod, from `CNI_ARGS`.
    pub pod: PodRef,
}

/// Reads the invocation from the environment (`get` looks a variable up).
pub fn parse_environment(get: impl Fn(&str) -> Option<String>) -> Result<Invocation, CniError> {
    let command = get("CNI_COMMAND").ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime",
        )
    })?;
    let command = Command::parse(&command)?;
    let required = |name: &str| -> Result<String, CniError> {
        match get(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("{name} must be set for {command:?}"),
            )),
        }
    };
    let (container_id, ifname) = if command.per_container() {
        (required("CNI_CONTAINERID")?, required("CNI_IFNAME")?)
    } else {
        (
            get("CNI_CONTAINERID").unwrap_or_default(),
            get("CNI_IFNAME").unwrap_or_default(),
        )
    };
    if command.per_container() {
        validate_container_id(&container_id)?;
        validate_ifname(&ifname)?;
    }
    let netns = get("CNI_NETNS").unwrap_or_default();
    if matches!(command, Command::Add | Command::Check) && netns.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_NETNS must be set for {command:?}"),
        ));
    }
    let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
    let pod = PodRef {
        namespace: args.get("K8S_POD_NAMESPACE").cloned(),
        name: args.get("K8S_POD_NAME").cloned(),
        uid: args.get("K8S_POD_UID").cloned(),
    };
    Ok(Invocation {
        command,
        container_id,
        netns,
        ifname,
        args,
        pod,
    })
}

/// The spec allows alphanumerics, `_`, `.` and `-`, starting with an alphanumeric.
fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!("CNI_CONTAINERID {id:?} has characters outside [A-Za-z0-9_.-]"),
        ))
    }
}

/// Linux interface names: 1-15 bytes, no '/', ':' or white space, not "." or "..".
fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "CNI_IFNAME {name:?} is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// `KEY=VALUE;KEY=VALUE`; empty pairs are ignored.
fn parse_args(raw: &str) -> Result<BTreeMap<String, String>, CniError> {
    raw.split(';')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            )),
        })
        .collect()
}

/// A runtime's valid attachment, listed in a GC request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

/// Ferrite's network configuration (stdin), as written by the agent into `/etc/cni/net.d`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version the runtime speaks.
    pub cni_version: String,
    /// Versions the configuration allows (spec 1.1 negotiation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_versions: Vec<String>,
    /// The network's name.
    pub name: String,
    /// The plugin type: `ferrite`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The agent's socket. Default: [`crate::DEFAULT_AGENT_SOCKET`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket: Option<String>,
    /// Where DEL requests wait while the agent is down. Default: [`crate::DEFAULT_SPOOL_DIR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spool_dir: Option<String>,
    /// The previous result (DEL, CHECK in a chain).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// Runtime-provided capabilities (port mappings, bandwidth, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    /// GC: the attachments the runtime still holds.
    #[serde(
        rename = "cni.dev/valid-attachments",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Everything else the configuration carries (kept for the agent and the reply).
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// Parses the network configuration on stdin and checks the version is one we speak.
pub fn parse_config(stdin: &[u8]) -> Result<NetConf, CniError> {
    if stdin.iter().all(u8::is_ascii_whitespace) {
        return Err(CniError::new(
            ErrorCode::Decode,
            "no network configuration on stdin",
        ));
    }
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "the network configuration on stdin is not valid JSON of the expected shape",
        )
        .details(e)
    })?;
    if conf.plugin_type != "ferrite" {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "\"type\" is {:?}; this plugin is \"ferrite\"",
                conf.plugin_type
            ),
        ));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            "\"name\" must not be empty",
        ));
    }
    check_version(&conf.cni_version)?;
    Ok(conf)
}

/// Refuses versions this plugin does not speak.
pub fn check_version(version: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "cniVersion {version:?} is not supported; supported: {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ))
    }
}

/// The VERSION reply.
pub fn version_reply(asked: Option<&str>) -> Value {
    serde_json::json!({
        "cniVersion": asked.filter(|v| SUPPORTED_VERSIONS.contains(v)).unwrap_or(LATEST_VERSION),
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// An interface in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (spec 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for container interfaces; empty for host interfaces.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// CIDR notation: the address and its prefix.
    pub address: String,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route in a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

/// The result of ADD (spec 1.0 shape, also valid for 1.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The spec version of the reply.
    pub cni_version: String,
    /// Interfaces created.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes installed in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS settings (left to the runtime; Kubernetes sets them itself).
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// The result in the shape of `version`: 0.3.x/0.4.0 add `"version": "4"` to each IP.
    pub fn render(&self, version: &str) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        value["cniVersion"] = Value::String(version.to_owned());
        if version.starts_with("0.")
            && let Some(ips) = value["ips"].as_array_mut()
        {
            for ip in ips {
                let v6 = ip["address"].as_str().is_some_and(|a| a.contains(':'));
                ip["version"] = Value::String(if v6 { "6" } else { "4" }.into());
            }
        }
        if value["dns"].is_null() {
            value["dns"] = serde_json::json!({});
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u1",
        ),
    ];

    #[test]
    fn add_environment_yields_the_pod_identity() {
        let inv = parse_environment(env(ADD)).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.pod.namespace.as_deref(), Some("default"));
        assert_eq!(inv.pod.name.as_deref(), Some("web-0"));
        assert_eq!(inv.args["IgnoreUnknown"], "1");
    }

    #[test]
    fn missing_command_is_an_invalid_environment_error() {
        let err = parse_environment(env(&[])).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("CNI_COMMAND"));
    }

    #[test]
    fn unknown_command_is_refused_by_name() {
        let err = parse_environment(env(&[("CNI_COMMAND", "FROB")])).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("FROB"));
    }

    #[test]
    fn add_without_netns_is_refused() {
        let e: Vec<_> = ADD
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        assert!(
            parse_environment(env(&e))
                .unwrap_err()
                .msg
                .contains("CNI_NETNS")
        );
    }

    #[test]
    fn del_without_netns_is_accepted_as_containerd_sends_it() {
        let e = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", ""),
        ];
        let inv = parse_environment(env(&e)).unwrap();
        assert_eq!(inv.command, Command::Del);
        assert!(inv.netns.is_empty());
    }

    #[test]
    fn bad_container_ids_and_interface_names_are_refused() {
        for (k, v) in [
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_IFNAME", "eth/0"),
        ] {
            let e: Vec<_> = ADD
                .iter()
                .map(|&(kk, vv)| if kk == k { (kk, v) } else { (kk, vv) })
                .collect();
            assert_eq!(parse_environment(env(&e)).unwrap_err().code, 4, "{k}={v}");
        }
    }

    #[test]
    fn malformed_cni_args_are_refused() {
        let e: Vec<_> = ADD
            .iter()
            .map(|&(k, v)| {
                if k == "CNI_ARGS" {
                    (k, "K8S_POD_NAME")
                } else {
                    (k, v)
                }
            })
            .collect();
        assert!(
            parse_environment(env(&e))
                .unwrap_err()
                .msg
                .contains("KEY=VALUE")
        );
    }

    #[test]
    fn version_needs_no_container() {
        assert_eq!(
            parse_environment(env(&[("CNI_COMMAND", "VERSION")]))
                .unwrap()
                .command,
            Command::Version
        );
        assert_eq!(
            parse_environment(env(&[("CNI_COMMAND", "GC")]))
                .unwrap()
                .command,
            Command::Gc
        );
    }

    #[test]
    fn config_parses_and_keeps_unknown_fields() {
        let conf =
            parse_config(br#"{"cniVersion":"1.0.0","name":"ferrite","type":"ferrite","mtu":1450}"#)
                .unwrap();
        assert_eq!(conf.other["mtu"], 1450);
    }

    #[test]
    fn garbage_on_stdin_is_a_decode_error() {
        assert_eq!(parse_config(b"{not json").unwrap_err().code, 6);
        assert_eq!(parse_config(b"  \n").unwrap_err().code, 6);
        assert_eq!(
            parse_config(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().code,
            6
        );
    }

    #[test]
    fn wrong_type_or_empty_name_is_an_invalid_config() {
        assert_eq!(
            parse_config(br#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#)
                .unwrap_err()
                .code,
            7
        );
        assert_eq!(
            parse_config(br#"{"cniVersion":"1.0.0","name":"","type":"ferrite"}"#)
                .unwrap_err()
                .code,
            7
        );
    }

    #[test]
    fn unknown_version_is_incompatible() {
        let err =
            parse_config(br#"{"cniVersion":"2.0.0","name":"n","type":"ferrite"}"#).unwrap_err();
        assert_eq!(err.code, 1);
        assert!(err.msg.contains("1.1.0"));
    }

    #[test]
    fn gc_carries_the_valid_attachments() {
        let conf = parse_config(
            br#"{"cniVersion":"1.1.0","name":"n","type":"ferrite","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            conf.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn version_reply_lists_every_supported_version() {
        let reply = version_reply(Some("0.4.0"));
        assert_eq!(reply["cniVersion"], "0.4.0");
        assert_eq!(
            reply["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
        assert_eq!(version_reply(Some("9.9.9"))["cniVersion"], LATEST_VERSION);
    }

    #[test]
    fn old_versions_get_ip_version_fields() {
        let result = CniResult {
            cni_version: String::new(),
            interfaces: vec![],
            ips: vec![IpConfig {
                address: "10.244.0.5/32".into(),
                gateway: None,
                interface: Some(0),
            }],
            routes: vec![],
            dns: Value::Null,
        };
        assert_eq!(result.render("0.4.0")["ips"][0]["version"], "4");
        assert!(result.render("1.0.0")["ips"][0].get("version").is_none());
        assert_eq!(result.render("1.0.0")["cniVersion"], "1.0.0");
    }

    #[test]
    fn error_json_has_the_spec_shape() {
        let mut err =
            CniError::new(ErrorCode::TryAgainLater, "agent down").details("connect refused");
        err.cni_version = "1.0.0".into();
        let v = serde_json::to_value(&err).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","code":11,"msg":"agent down","details":"connect refused"})
        );
    }
}
