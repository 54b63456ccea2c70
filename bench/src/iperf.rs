//! iperf3: a server in one namespace, single-stream clients in another, their JSON parsed.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sys::{self, Daemon, Netns};

/// The port the servers listen on (inside benchmark namespaces only).
pub const PORT: u16 = 5201;

/// One client run, from iperf3's `-J` output.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Received throughput (`end.sum_received.bits_per_second`).
    pub bits_per_second: f64,
    /// Retransmitted segments (`end.sum_sent.retransmits`), when reported.
    pub retransmits: Option<u64>,
}

/// Parses iperf3's `-J` output; an `error` in it becomes the error.
pub fn parse(json: &str) -> Result<Sample> {
    let v: Value = serde_json::from_str(json.trim()).context("iperf3 -J output is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("iperf3: {e}");
    }
    let end = v
        .get("end")
        .context("iperf3 -J output has no \"end\" section")?;
    let bits_per_second = end
        .pointer("/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 -J output has no end.sum_received.bits_per_second")?;
    if !(bits_per_second.is_finite() && bits_per_second >= 0.0) {
        bail!("iperf3 reported {bits_per_second} bit/s");
    }
    let retransmits = end.pointer("/sum_sent/retransmits").and_then(Value::as_u64);
    Ok(Sample {
        bits_per_second,
        retransmits,
    })
}

/// An iperf3 server in `ns`, bound to `ip`, stopped on drop.
pub struct Server {
    _daemon: Daemon,
}

impl Server {
    /// Starts the server and waits until it listens.
    pub fn start(ns: &Netns, ip: IpAddr, log: &std::path::Path) -> Result<Self> {
        let mut daemon = Daemon::spawn(
            ns.exec("iperf3")
                .args(["-s", "-p", &PORT.to_string(), "-B", &ip.to_string()]),
            log,
        )?;
        sys::wait_for(
            &format!("iperf3 to listen on {ip}:{PORT} in {}", ns.name()),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                daemon.ensure_running()?;
                ns.listening(PORT)
            },
        )?;
        Ok(Self { _daemon: daemon })
    }
}

/// One single-stream TCP test of `seconds` from `client` to the server at `server_ip`.
pub fn measure(client: &Netns, server_ip: IpAddr, seconds: u32) -> Result<Sample> {
    let mut cmd = client.exec("iperf3");
    cmd.args([
        "-c",
        &server_ip.to_string(),
        "-p",
        &PORT.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]);
    let what = sys::describe(&cmd);
    let limit = Duration::from_secs(u64::from(seconds) + 30);
    let (status, stdout, stderr) = sys::run_bounded(&mut cmd, limit)?;
    // iperf3 -J reports its errors in the JSON, with a non-zero exit status.
    match parse(&stdout) {
        Ok(s) if status.success() => Ok(s),
        Ok(_) => bail!("`{what}` failed ({status}): {}", stderr.trim()),
        Err(e) => Err(e).with_context(|| format!("`{what}` ({status}) {}", stderr.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_receiver_side() {
        let json = r#"{
            "start": {"test_start": {"protocol": "TCP", "num_streams": 1}},
            "intervals": [],
            "end": {
                "sum_sent": {"bytes": 100, "bits_per_second": 2.2e10, "retransmits": 3},
                "sum_received": {"bytes": 99, "bits_per_second": 2.15e10}
            }
        }"#;
        let s = parse(json).unwrap();
        assert_eq!(s.bits_per_second, 2.15e10);
        assert_eq!(s.retransmits, Some(3));
    }

    #[test]
    fn errors_are_errors() {
        let err = parse(r#"{"start":{},"intervals":[],"end":{},"error":"unable to connect to server: Connection refused"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert!(parse("not json").is_err());
        assert!(parse(r#"{"end":{"sum_sent":{"bits_per_second":1}}}"#).is_err());
        assert!(parse(r#"{"end":{"sum_received":{"bits_per_second":-1}}}"#).is_err());
        // No retransmit count (UDP, or other platforms): still a sample.
        let s = parse(r#"{"end":{"sum_received":{"bits_per_second":5}}}"#).unwrap();
        assert_eq!(s.retransmits, None);
    }
}
