//! The plugin binary as a runtime runs it: environment, stdin, stdout, exit status.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn run(env: &[(&str, &str)], stdin: &str) -> (bool, Value) {
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
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), json)
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
