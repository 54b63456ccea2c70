//! The plugin binary as a runtime runs it: environment, stdin, stdout, exit status — against a
//! fake agent on a unix socket in a temporary directory.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use std::io::{IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ferrite_cni::proto::{Request, Response};
use ferrite_cni::spec::{
    self, Attachment, CniError, CniResult, ErrorCode, Interface, IpConfig, Route,
};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use serde_json::Value;

/// Runs the plugin; fails the test if it panicked.
fn exec(env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("plugin starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("plugin exits");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the plugin panicked: {stderr}"
    );
    out
}

/// Runs the plugin and parses its stdout, which must be JSON.
fn run(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
    let out = exec(env, stdin);
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), json)
}

/// Runs a command that prints nothing on success; asserts it succeeded silently.
fn run_silently(env: &[(&str, &str)], stdin: &str) {
    let out = exec(env, stdin);
    assert!(
        out.status.success(),
        "the plugin failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing should be printed, got {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// What the fake agent got from the plugin.
struct Received {
    request: Request,
    fds: Vec<OwnedFd>,
    /// The connection, kept open when the agent was told not to answer.
    _held: Option<UnixStream>,
}

/// A socket in `dir` answered once by `answer` (`None`: read the request, never answer).
fn fake_agent(
    dir: &Path,
    answer: impl FnOnce(&Request) -> Option<Response> + Send + 'static,
) -> (PathBuf, JoinHandle<Received>) {
    let path = dir.join("agent.sock");
    let listener = UnixListener::bind(&path).expect("bind the fake agent");
    let agent = thread::spawn(move || {
        let (stream, _) = listener.accept().expect("the plugin connects");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let (bytes, fds) = receive(&stream);
        let request: Request = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "the plugin sent something else than a request ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        });
        let held = match answer(&request) {
            Some(response) => {
                (&stream)
                    .write_all(&serde_json::to_vec(&response).expect("encode"))
                    .expect("reply");
                None
            }
            None => Some(stream),
        };
        Received {
            request,
            fds,
            _held: held,
        }
    });
    (path, agent)
}

/// Reads to EOF with `recvmsg`, collecting every descriptor that comes along.
fn receive(stream: &UnixStream) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut chunk = vec![0_u8; 64 * 1024];
    loop {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [IoSliceMut::new(&mut chunk)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        if got.bytes == 0 {
            return (bytes, fds);
        }
        bytes.extend_from_slice(&chunk[..got.bytes]);
    }
}

/// Ferrite's configuration pointing at `dir`'s socket and spool.
fn config(version: &str, dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": "ferrite",
        "type": "ferrite",
        "agentSocket": dir.join("agent.sock"),
        "spoolDir": dir.join("spool"),
    })
    .to_string()
}

/// (device, inode): the identity of an open file.
fn identity(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

fn add_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
    ]
}

fn del_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
    ]
}

fn added() -> Response {
    Response::Added(CniResult {
        cni_version: spec::LATEST_VERSION.into(),
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: None,
            sandbox: "/proc/self/ns/net".into(),
        }],
        ips: vec![
            IpConfig {
                address: "10.244.1.5/32".into(),
                gateway: None,
                interface: Some(0),
            },
            IpConfig {
                address: "fd00:244::5/128".into(),
                gateway: None,
                interface: Some(0),
            },
        ],
        routes: vec![Route {
            dst: "0.0.0.0/0".into(),
            gw: None,
        }],
        dns: Value::Null,
    })
}

/// The files in `dir` (none when it does not exist).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.expect("dir entry").path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn version_lists_the_supported_spec_versions() {
    let (ok, reply) = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(ok);
    assert_eq!(reply["cniVersion"], "1.0.0");
    assert!(
        reply["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "1.1.0")
    );
}

#[test]
fn no_environment_is_a_cni_error_not_a_panic() {
    let (ok, reply) = run(&[], "");
    assert!(!ok);
    assert_eq!(reply["code"], 4);
}

#[test]
fn garbage_config_is_a_decode_error_with_details() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (ok, reply) = run(&env, "{\"cniVersion\": ");
    assert!(!ok);
    assert_eq!(reply["code"], 6);
    assert!(!reply["details"].as_str().unwrap_or_default().is_empty());
}

#[test]
fn unsupported_version_is_refused_with_the_runtime_version_in_the_reply() {
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (ok, reply) = run(
        &env,
        r#"{"cniVersion":"0.2.0","name":"n","type":"ferrite"}"#,
    );
    assert!(!ok);
    assert_eq!(reply["code"], 1);
    assert_eq!(reply["cniVersion"], "0.2.0");
}

#[test]
fn add_sends_the_pods_netns_as_a_descriptor_and_prints_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(added()));
    let (ok, reply) = run(&add_env("/proc/self/ns/net"), &config("1.0.0", dir.path()));
    let got = agent.join().unwrap();
    assert!(ok, "{reply}");

    // The plugin's /proc/self/ns/net is its own namespace, which it shares with this test.
    assert_eq!(got.fds.len(), 1, "exactly one descriptor");
    let own = std::fs::File::open("/proc/self/ns/net").unwrap();
    assert_eq!(identity(&got.fds[0]), identity(&own));

    let r = &got.request;
    assert_eq!(r.command, spec::Command::Add);
    assert!(r.has_netns);
    assert_eq!(r.netns_path, "/proc/self/ns/net");
    assert_eq!((r.container_id.as_str(), r.ifname.as_str()), ("c1", "eth0"));
    assert_eq!(r.pod.name.as_deref(), Some("web-0"));
    assert_eq!(r.pod.namespace.as_deref(), Some("default"));
    assert_eq!(r.network, "ferrite");
    assert_eq!(r.cni_version, "1.0.0");
    assert!(!r.replayed);

    assert_eq!(reply["cniVersion"], "1.0.0");
    assert_eq!(reply["ips"][0]["address"], "10.244.1.5/32");
    assert!(reply["ips"][0].get("version").is_none(), "{reply}");
    assert_eq!(reply["interfaces"][0]["name"], "eth0");
    assert_eq!(reply["routes"][0]["dst"], "0.0.0.0/0");
}

#[test]
fn add_renders_the_result_for_cni_0_4_with_ip_versions() {
    let dir = tempfile::tempdir().unwrap();
    // Any file will do as the namespace: the descriptor must be that very file.
    let netns = dir.path().join("netns");
    std::fs::write(&netns, b"").unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(added()));
    let (ok, reply) = run(
        &add_env(netns.to_str().unwrap()),
        &config("0.4.0", dir.path()),
    );
    let got = agent.join().unwrap();
    assert!(ok, "{reply}");
    assert_eq!(got.fds.len(), 1);
    assert_eq!(
        identity(&got.fds[0]),
        identity(std::fs::File::open(&netns).unwrap())
    );
    assert_eq!(got.request.cni_version, "0.4.0");
    assert_eq!(reply["cniVersion"], "0.4.0");
    assert_eq!(reply["ips"][0]["version"], "4");
    assert_eq!(reply["ips"][1]["version"], "6");
}

#[test]
fn del_without_a_netns_sends_no_descriptor_and_prints_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(Response::Done));
    run_silently(&del_env(""), &config("1.0.0", dir.path()));
    let got = agent.join().unwrap();
    assert_eq!(got.request.command, spec::Command::Del);
    assert!(!got.request.has_netns);
    assert!(got.fds.is_empty());
    assert!(files(&dir.path().join("spool")).is_empty());
}

#[test]
fn del_of_a_vanished_netns_goes_on_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(Response::Done));
    run_silently(
        &del_env("/run/netns/long-gone"),
        &config("1.0.0", dir.path()),
    );
    let got = agent.join().unwrap();
    assert!(!got.request.has_netns);
    assert!(got.fds.is_empty());
    assert_eq!(got.request.netns_path, "/run/netns/long-gone");
}

#[test]
fn del_while_the_agent_is_down_is_queued_once_per_attachment() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let netns = dir.path().join("netns");
    std::fs::write(&netns, b"").unwrap();
    let conf = config("1.0.0", dir.path());

    // containerd's two DELs: with the namespace, then without.
    run_silently(&del_env(netns.to_str().unwrap()), &conf);
    let queued = files(&spool);
    assert_eq!(queued.len(), 1, "{queued:?}");
    run_silently(&del_env(""), &conf);
    assert_eq!(files(&spool), queued, "the second DEL replaces the first");

    let request: Request = serde_json::from_slice(&std::fs::read(&queued[0]).unwrap()).unwrap();
    assert_eq!(request.command, spec::Command::Del);
    assert_eq!(
        request.attachment(),
        Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into()
        }
    );
    assert!(!request.has_netns);

    // Another attachment gets its own file.
    let mut other = del_env("");
    other[1] = ("CNI_CONTAINERID", "c2");
    run_silently(&other, &conf);
    assert_eq!(files(&spool).len(), 2);
    let pending = ferrite_cni::spool::pending(&spool).unwrap();
    assert_eq!(pending.requests.len(), 2);
    assert!(pending.corrupt.is_empty());
}

#[test]
fn add_while_the_agent_is_down_says_try_again_and_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, reply) = run(&add_env("/proc/self/ns/net"), &config("1.0.0", dir.path()));
    assert!(!ok);
    assert_eq!(reply["code"], ErrorCode::TryAgainLater.code());
    assert_eq!(reply["cniVersion"], "1.0.0");
    let msg = reply["msg"].as_str().unwrap();
    let socket = dir.path().join("agent.sock");
    assert!(msg.contains(socket.to_str().unwrap()), "{msg}");
    assert!(msg.contains("ferrite-agent pod"), "{msg}");
    assert!(
        files(&dir.path().join("spool")).is_empty(),
        "only DEL is queued"
    );
}

#[test]
fn status_while_the_agent_is_down_is_plugin_not_available() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, reply) = run(&[("CNI_COMMAND", "STATUS")], &config("1.1.0", dir.path()));
    assert!(!ok);
    assert_eq!(reply["code"], 50);
}

#[test]
fn status_with_the_agent_up_succeeds_silently() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(Response::Done));
    run_silently(&[("CNI_COMMAND", "STATUS")], &config("1.1.0", dir.path()));
    let got = agent.join().unwrap();
    assert_eq!(got.request.command, spec::Command::Status);
    assert!(got.fds.is_empty());
}

#[test]
fn add_with_a_missing_netns_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, reply) = run(
        &add_env("/run/netns/missing-1"),
        &config("1.0.0", dir.path()),
    );
    assert!(!ok);
    assert_eq!(reply["code"], ErrorCode::InvalidEnvironment.code());
    assert!(
        reply["msg"]
            .as_str()
            .unwrap()
            .contains("/run/netns/missing-1"),
        "{reply}"
    );
}

#[test]
fn a_hung_agent_fails_the_add_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| None);
    let mut env = add_env("/proc/self/ns/net");
    env.push(("FERRITE_CNI_TIMEOUT_MS", "400"));
    let started = Instant::now();
    let (ok, reply) = run(&env, &config("1.0.0", dir.path()));
    let took = started.elapsed();
    let got = agent.join().unwrap();
    assert!(!ok);
    assert_eq!(
        got.request.command,
        spec::Command::Add,
        "the agent got the request"
    );
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(reply["code"], ErrorCode::TryAgainLater.code());
    let msg = reply["msg"].as_str().unwrap();
    assert!(msg.contains("did not answer within 400ms"), "{msg}");
    assert!(msg.contains("ferrite-agent pod"), "{msg}");
}

#[test]
fn an_agent_error_is_printed_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| {
        Some(Response::Error(
            CniError::new(
                ErrorCode::AddressesExhausted,
                "no address is free in 10.244.1.0/24",
            )
            .details("256 of 256 in use"),
        ))
    });
    let (ok, reply) = run(&add_env("/proc/self/ns/net"), &config("1.0.0", dir.path()));
    agent.join().unwrap();
    assert!(!ok);
    assert_eq!(
        reply,
        serde_json::json!({
            "cniVersion": "1.0.0",
            "code": 100,
            "msg": "no address is free in 10.244.1.0/24",
            "details": "256 of 256 in use",
        })
    );
}

#[test]
fn a_gc_with_5000_attachments_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let valid: Vec<Attachment> = (0..5000)
        .map(|i| Attachment {
            container_id: format!("{i:064x}"),
            ifname: if i % 2 == 0 { "eth0" } else { "net1" }.into(),
        })
        .collect();
    let mut conf: Value = serde_json::from_str(&config("1.1.0", dir.path())).unwrap();
    conf["cni.dev/valid-attachments"] = serde_json::to_value(&valid).unwrap();
    let (_, agent) = fake_agent(dir.path(), |_| Some(Response::Done));
    run_silently(&[("CNI_COMMAND", "GC")], &conf.to_string());
    let got = agent.join().unwrap();
    assert_eq!(got.request.command, spec::Command::Gc);
    assert!(got.fds.is_empty());
    assert_eq!(got.request.valid_attachments.as_deref(), Some(&valid[..]));
}
