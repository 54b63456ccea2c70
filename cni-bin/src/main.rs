//! `ferrite`: the CNI plugin binary. Thin: parse, ask the agent, print.
//!
//! It never panics on input: anything it cannot serve is answered with the spec's error JSON on
//! stdout and exit status 1. ADD prints its result; DEL, CHECK, STATUS and GC print nothing
//! when they succeed. A DEL that finds the agent down is queued for the agent to replay and
//! reported as done, so a pod's removal never waits for the agent.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ferrite_cni::client::{self, ClientError};
use ferrite_cni::proto::{Request, Response};
use ferrite_cni::spec::{self, CniError, Command, ErrorCode, Invocation, NetConf};
use ferrite_cni::{DEFAULT_AGENT_SOCKET, DEFAULT_SPOOL_DIR, spool};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use serde_json::Value;

/// Overrides every command's time limit, in milliseconds.
const TIMEOUT_ENV: &str = "FERRITE_CNI_TIMEOUT_MS";
/// How long ADD, DEL, CHECK and GC may take: a hung agent must not hang the runtime.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long STATUS may take: runtimes poll it, and it should be quick.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// What to tell the user when the agent does not serve this node.
const CHECK_AGENT: &str = "check the ferrite-agent pod on this node";

/// What to print on success (`None`: nothing).
fn run(stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let invocation = spec::parse_environment(|k| std::env::var(k).ok())?;
    let command = invocation.command;
    if command == Command::Version {
        // VERSION may come with a configuration naming the runtime's version, or with none.
        let asked: Option<String> = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned));
        return Ok(Some(spec::version_reply(asked.as_deref())));
    }
    let conf = spec::parse_config(stdin)?;
    let timeout = call_timeout(command, std::env::var(TIMEOUT_ENV).ok().as_deref())?;
    let mut request = build_request(&invocation, &conf)?;
    let netns = open_netns(command, &invocation.netns)?;
    request.has_netns = netns.is_some();
    let socket = agent_socket(&conf);
    let netns_fd = netns.as_ref().map(AsFd::as_fd);
    match client::call(&socket, &request, netns_fd, timeout) {
        Ok(response) => outcome(command, &conf.cni_version, response),
        Err(err) if err.is_unreachable() && command == Command::Del => {
            let dir = spool_dir(&conf);
            match spool::enqueue(&dir, &request) {
                Ok(_) => Ok(None),
                Err(e) => Err(CniError::new(
                    ErrorCode::Io,
                    format!(
                        "DEL: {err}, and the DEL could not be queued in {} for the agent to \
                         replay; {CHECK_AGENT}, and that the directory is writable",
                        dir.display()
                    ),
                )
                .details(e)),
            }
        }
        Err(err) => Err(client_error(command, &err)),
    }
}

/// The time limit for one command, or the override from [`TIMEOUT_ENV`].
fn call_timeout(command: Command, custom: Option<&str>) -> Result<Duration, CniError> {
    match custom {
        None => Ok(if command == Command::Status {
            STATUS_TIMEOUT
        } else {
            CALL_TIMEOUT
        }),
        Some(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "{TIMEOUT_ENV} is {ms:?}; it must be a positive number of milliseconds, or unset"
                ),
            )),
        },
    }
}

/// The agent's socket: from the configuration, else the default.
fn agent_socket(conf: &NetConf) -> PathBuf {
    PathBuf::from(
        conf.agent_socket
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_AGENT_SOCKET),
    )
}

/// Where DELs wait while the agent is down: from the configuration, else the default.
fn spool_dir(conf: &NetConf) -> PathBuf {
    PathBuf::from(
        conf.spool_dir
            .as_deref()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SPOOL_DIR),
    )
}

/// The request for the agent (`has_netns` is set once the namespace is open).
fn build_request(invocation: &Invocation, conf: &NetConf) -> Result<Request, CniError> {
    let command = invocation.command;
    let prev_result = match (command, &conf.prev_result) {
        (Command::Check, Some(prev)) => {
            Some(serde_json::from_value(prev.clone()).map_err(|e| {
                CniError::new(
                    ErrorCode::Decode,
                    "CHECK: prevResult in the network configuration is not a CNI result",
                )
                .details(e)
            })?)
        }
        _ => None,
    };
    Ok(Request {
        command,
        container_id: invocation.container_id.clone(),
        ifname: invocation.ifname.clone(),
        netns_path: invocation.netns.clone(),
        has_netns: false,
        pod: invocation.pod.clone(),
        network: conf.name.clone(),
        cni_version: conf.cni_version.clone(),
        prev_result,
        valid_attachments: if command == Command::Gc {
            conf.valid_attachments.clone()
        } else {
            None
        },
        replayed: false,
    })
}

/// Opens `CNI_NETNS` for ADD, DEL and CHECK (STATUS and GC concern no pod).
fn open_netns(command: Command, path: &str) -> Result<Option<OwnedFd>, CniError> {
    if path.is_empty() || !command.per_container() {
        return Ok(None);
    }
    match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => netns_unavailable(command, path, e).map(|()| None),
    }
}

/// Whether a namespace that cannot be opened stops the command. DEL goes on without it: the
/// agent removes an attachment by its container ID and interface, and a DEL that fails
/// blocks the pod's removal.
fn netns_unavailable(command: Command, path: &str, e: Errno) -> Result<(), CniError> {
    match (command, e) {
        (Command::Del, _) => Ok(()),
        (_, Errno::NOENT | Errno::NOTDIR) => Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "{command:?}: CNI_NETNS {path:?} does not exist; the pod's sandbox is gone or the \
                 runtime passed a wrong path"
            ),
        )),
        _ => Err(CniError::new(
            ErrorCode::Io,
            format!(
                "{command:?}: cannot open CNI_NETNS {path:?}; the plugin must run as root, as \
                 the runtime runs it"
            ),
        )
        .details(std::io::Error::from(e))),
    }
}

/// The CNI error for a failed call to the agent.
fn client_error(command: Command, err: &ClientError) -> CniError {
    let code = match err {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. }
            if command == Command::Status =>
        {
            ErrorCode::PluginNotAvailable
        }
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => ErrorCode::TryAgainLater,
        ClientError::BadReply { .. } => ErrorCode::Decode,
        ClientError::Io { .. } | ClientError::TooLarge { .. } | ClientError::InvalidRequest(_) => {
            ErrorCode::Io
        }
    };
    let hint = match err {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => {
            format!("; {CHECK_AGENT}")
        }
        _ => String::new(),
    };
    let cni = CniError::new(code, format!("{command:?}: {err}{hint}"));
    match err {
        ClientError::Unreachable { source, .. } | ClientError::Io { source, .. } => {
            cni.details(source)
        }
        _ => cni,
    }
}

/// What the agent's answer means for the runtime.
fn outcome(
    command: Command,
    cni_version: &str,
    response: Response,
) -> Result<Option<Value>, CniError> {
    match (command, response) {
        (_, Response::Error(e)) => Err(e),
        (Command::Add, Response::Added(result)) => Ok(Some(result.render(cni_version))),
        (Command::Add, Response::Done) => Err(mismatch(command, "Done")),
        (_, Response::Done) => Ok(None),
        (_, Response::Added(_)) => Err(mismatch(command, "Added")),
    }
}

/// The agent answered with the wrong kind of response.
fn mismatch(command: Command, got: &str) -> CniError {
    CniError::new(
        ErrorCode::Decode,
        format!(
            "{command:?}: the agent answered {got}, which does not fit the command; the plugin and \
             the agent may be different versions (restart the ferrite-agent pod to reinstall the plugin)"
        ),
    )
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<Value>(&stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
        .unwrap_or_else(|| spec::LATEST_VERSION.to_owned());
    let outcome = match read {
        Ok(_) => run(&stdin),
        Err(e) => Err(CniError::new(
            ErrorCode::Io,
            "cannot read the network configuration from stdin",
        )
        .details(e)),
    };
    let (reply, code) = match outcome {
        Ok(value) => (value, ExitCode::SUCCESS),
        Err(mut err) => {
            err.cni_version = version;
            (
                Some(serde_json::to_value(&err).unwrap_or_default()),
                ExitCode::FAILURE,
            )
        }
    };
    if let Some(reply) = reply {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{reply}").and_then(|()| out.flush()).is_err() {
            return ExitCode::FAILURE;
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ferrite_cni::spec::{Attachment, CniResult, IpConfig, PodRef};

    use super::*;

    fn conf(json: &str) -> NetConf {
        spec::parse_config(json.as_bytes()).unwrap()
    }

    fn invocation(command: Command) -> Invocation {
        Invocation {
            command,
            container_id: "c1".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: Default::default(),
            pod: PodRef {
                namespace: Some("default".into()),
                name: Some("web".into()),
                uid: None,
            },
        }
    }

    const BASE: &str = r#"{"cniVersion":"1.0.0","name":"ferrite","type":"ferrite"}"#;

    #[test]
    fn the_request_carries_the_invocation_and_the_network() {
        let r = build_request(&invocation(Command::Add), &conf(BASE)).unwrap();
        assert_eq!(r.command, Command::Add);
        assert_eq!((r.container_id.as_str(), r.ifname.as_str()), ("c1", "eth0"));
        assert_eq!(r.netns_path, "/run/netns/x");
        assert_eq!(r.network, "ferrite");
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.pod.name.as_deref(), Some("web"));
        assert!(!r.has_netns && r.prev_result.is_none() && r.valid_attachments.is_none());
    }

    #[test]
    fn check_carries_prev_result_and_refuses_a_malformed_one() {
        let with = r#"{"cniVersion":"1.0.0","name":"ferrite","type":"ferrite",
            "prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.2/32","version":"4"}]}}"#;
        let r = build_request(&invocation(Command::Check), &conf(with)).unwrap();
        assert_eq!(r.prev_result.unwrap().ips[0].address, "10.0.0.2/32");
        // DEL ignores it: containerd's second DEL has none, and both must behave alike.
        assert!(
            build_request(&invocation(Command::Del), &conf(with))
                .unwrap()
                .prev_result
                .is_none()
        );
        let bad =
            r#"{"cniVersion":"1.0.0","name":"ferrite","type":"ferrite","prevResult":{"ips":5}}"#;
        let err = build_request(&invocation(Command::Check), &conf(bad)).unwrap_err();
        assert_eq!(err.code, 6);
        assert!(err.msg.contains("prevResult"));
    }

    #[test]
    fn gc_carries_the_valid_attachments() {
        let gc = r#"{"cniVersion":"1.1.0","name":"ferrite","type":"ferrite",
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        let mut inv = invocation(Command::Gc);
        inv.container_id.clear();
        let r = build_request(&inv, &conf(gc)).unwrap();
        assert_eq!(
            r.valid_attachments.unwrap(),
            vec![Attachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn timeouts_per_command_and_the_override() {
        assert_eq!(call_timeout(Command::Add, None).unwrap(), CALL_TIMEOUT);
        assert_eq!(call_timeout(Command::Del, None).unwrap(), CALL_TIMEOUT);
        assert_eq!(call_timeout(Command::Status, None).unwrap(), STATUS_TIMEOUT);
        assert_eq!(
            call_timeout(Command::Add, Some("250")).unwrap(),
            Duration::from_millis(250)
        );
        for bad in ["0", "-1", "soon", ""] {
            let err = call_timeout(Command::Add, Some(bad)).unwrap_err();
            assert_eq!(err.code, 4, "{bad:?}");
            assert!(err.msg.contains(TIMEOUT_ENV));
        }
    }

    #[test]
    fn socket_and_spool_default_unless_configured() {
        let c = conf(BASE);
        assert_eq!(agent_socket(&c), Path::new(DEFAULT_AGENT_SOCKET));
        assert_eq!(spool_dir(&c), Path::new(DEFAULT_SPOOL_DIR));
        let c = conf(
            r#"{"cniVersion":"1.0.0","name":"f","type":"ferrite","agentSocket":"/tmp/a.sock","spoolDir":"/tmp/q"}"#,
        );
        assert_eq!(agent_socket(&c), Path::new("/tmp/a.sock"));
        assert_eq!(spool_dir(&c), Path::new("/tmp/q"));
    }

    #[test]
    fn a_missing_netns_stops_add_and_check_but_not_del() {
        assert!(netns_unavailable(Command::Del, "/x", Errno::NOENT).is_ok());
        assert!(netns_unavailable(Command::Del, "/x", Errno::ACCESS).is_ok());
        let err = netns_unavailable(Command::Add, "/run/netns/gone", Errno::NOENT).unwrap_err();
        assert_eq!(err.code, 4);
        assert!(err.msg.contains("/run/netns/gone"));
        let err = netns_unavailable(Command::Check, "/x", Errno::ACCESS).unwrap_err();
        assert_eq!(err.code, 5);
        assert!(!err.details.is_empty());
        // Nothing to open: no error, no descriptor.
        assert!(open_netns(Command::Del, "").unwrap().is_none());
        assert!(open_netns(Command::Gc, "/nonexistent").unwrap().is_none());
        assert!(
            open_netns(Command::Del, "/nonexistent/ns")
                .unwrap()
                .is_none()
        );
        assert_eq!(
            open_netns(Command::Add, "/nonexistent/ns")
                .unwrap_err()
                .code,
            4
        );
    }

    fn unreachable() -> ClientError {
        ClientError::Unreachable {
            socket: "/run/ferrite/cni.sock".into(),
            source: std::io::Error::from(Errno::NOENT),
        }
    }

    #[test]
    fn an_unreachable_agent_is_try_again_later_except_for_status() {
        let add = client_error(Command::Add, &unreachable());
        assert_eq!(add.code, 11);
        assert!(add.msg.contains("/run/ferrite/cni.sock"), "{}", add.msg);
        assert!(add.msg.contains("ferrite-agent pod"), "{}", add.msg);
        assert!(!add.details.is_empty());
        assert_eq!(client_error(Command::Status, &unreachable()).code, 50);
        let timeout = ClientError::Timeout {
            socket: "/s".into(),
            timeout: Duration::from_secs(30),
            phase: client::Phase::WaitingForReply,
        };
        assert_eq!(client_error(Command::Del, &timeout).code, 11);
        assert_eq!(client_error(Command::Status, &timeout).code, 50);
        let bad = ClientError::BadReply {
            socket: "/s".into(),
            reason: "x".into(),
        };
        assert_eq!(client_error(Command::Add, &bad).code, 6);
    }

    #[test]
    fn outcomes_print_a_result_only_for_add() {
        let result = CniResult {
            cni_version: "1.1.0".into(),
            interfaces: vec![],
            ips: vec![IpConfig {
                address: "10.0.0.2/32".into(),
                gateway: None,
                interface: None,
            }],
            routes: vec![],
            dns: Value::Null,
        };
        let printed = outcome(Command::Add, "0.4.0", Response::Added(result.clone()))
            .unwrap()
            .unwrap();
        assert_eq!(printed["cniVersion"], "0.4.0");
        assert_eq!(printed["ips"][0]["version"], "4");
        for c in [Command::Del, Command::Check, Command::Status, Command::Gc] {
            assert_eq!(outcome(c, "1.0.0", Response::Done).unwrap(), None);
            assert_eq!(
                outcome(c, "1.0.0", Response::Added(result.clone()))
                    .unwrap_err()
                    .code,
                6
            );
        }
        assert_eq!(
            outcome(Command::Add, "1.0.0", Response::Done)
                .unwrap_err()
                .code,
            6
        );
        let refused = CniError::new(ErrorCode::AddressesExhausted, "no addresses");
        assert_eq!(
            outcome(Command::Add, "1.0.0", Response::Error(refused.clone())).unwrap_err(),
            refused
        );
    }
}
