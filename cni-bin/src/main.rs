//! `ferrite`: the CNI plugin binary. Thin: parse, (soon) ask the agent, print.
//!
//! It never panics on input: anything it cannot serve is answered with the spec's error JSON on
//! stdout and exit status 1.

use std::io::{Read, Write};
use std::process::ExitCode;

use ferrite_cni::spec::{self, CniError, Command, ErrorCode};

fn run(stdin: &[u8]) -> Result<serde_json::Value, CniError> {
    let invocation = spec::parse_environment(|k| std::env::var(k).ok())?;
    if invocation.command == Command::Version {
        // VERSION may come with a configuration naming the runtime's version, or with none.
        let asked: Option<String> = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned));
        return Ok(spec::version_reply(asked.as_deref()));
    }
    let _conf = spec::parse_config(stdin)?;
    // NB: the agent side of the protocol arrives with issue 4; until then nothing is attached
    // and the runtime is told so, rather than given a half-configured pod.
    Err(CniError::new(
        ErrorCode::PluginNotAvailable,
        format!(
            "{:?}: the Ferrite agent protocol is not implemented yet",
            invocation.command
        ),
    ))
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let read = std::io::stdin().read_to_end(&mut stdin);
    let version = serde_json::from_slice::<serde_json::Value>(&stdin)
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
                serde_json::to_value(&err).unwrap_or_default(),
                ExitCode::FAILURE,
            )
        }
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{reply}").is_err() {
        return ExitCode::FAILURE;
    }
    code
}
