//! Installs the CNI plugin on the node, as Cilium's and Calico's agents do: the `ferrite`
//! binary into the runtime's plugin directory and the network configuration into its
//! configuration directory. Both are written atomically (temp file + rename), so a runtime
//! never executes a half-copied binary or parses a half-written file.
//!
//! The configuration is written only once the agent serves its socket: until then the
//! runtime sees no network and the kubelet keeps the node NotReady, rather than handing pods
//! to a plugin that would fail.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// File name of Ferrite's network configuration: sorts before other plugins' files, so the
/// runtime (which takes the first) uses Ferrite.
pub const CONFLIST_NAME: &str = "05-ferrite.conflist";
/// The network's name.
pub const NETWORK_NAME: &str = "ferrite";

/// The network configuration list. `cniVersion` is 1.0.0, the newest containerd 1.6/1.7
/// accept; spec-1.1 runtimes read `cniVersions` and pick 1.1.0 (STATUS, GC). `portmap` is
/// chained for `hostPort` when the node has it.
pub fn conflist(agent_socket: &Path, spool_dir: &Path, with_portmap: bool) -> Value {
    let mut plugins = vec![json!({
        "type": "ferrite",
        "agentSocket": agent_socket,
        "spoolDir": spool_dir,
    })];
    if with_portmap {
        plugins.push(json!({"type": "portmap", "capabilities": {"portMappings": true}}));
    }
    json!({
        "cniVersion": "1.0.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": NETWORK_NAME,
        "plugins": plugins,
    })
}

/// Writes `bytes` to `path` atomically, with `mode`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ferrite-tmp"));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Copies the plugin binary `from` into `bin_dir` as `ferrite`, unless an identical one is
/// there already (a running runtime may be executing it; rename keeps that safe anyway).
pub fn install_plugin(from: &Path, bin_dir: &Path) -> io::Result<PathBuf> {
    let to = bin_dir.join("ferrite");
    let bytes = std::fs::read(from).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("read the plugin binary {}: {e}", from.display()),
        )
    })?;
    if std::fs::read(&to).is_ok_and(|existing| existing == bytes) {
        return Ok(to);
    }
    write_atomic(&to, &bytes, 0o755).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("install the plugin into {}: {e}", bin_dir.display()),
        )
    })?;
    Ok(to)
}

/// Writes the network configuration into `conf_dir`.
pub fn install_conflist(
    conf_dir: &Path,
    bin_dir: &Path,
    agent_socket: &Path,
    spool_dir: &Path,
) -> io::Result<PathBuf> {
    let path = conf_dir.join(CONFLIST_NAME);
    let with_portmap = bin_dir.join("portmap").exists();
    let text = serde_json::to_vec_pretty(&conflist(agent_socket, spool_dir, with_portmap))
        .map_err(io::Error::other)?;
    write_atomic(&path, &text, 0o644).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write the CNI configuration {}: {e}", path.display()),
        )
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_is_what_the_plugin_parses() {
        let v = conflist(
            Path::new("/run/ferrite/cni.sock"),
            Path::new("/var/spool"),
            true,
        );
        assert_eq!(v["name"], "ferrite");
        assert_eq!(v["plugins"][1]["type"], "portmap");
        // The plugin receives each entry merged with the list's name and version.
        let mut plugin = v["plugins"][0].clone();
        plugin["cniVersion"] = v["cniVersion"].clone();
        plugin["name"] = v["name"].clone();
        let conf = ferrite_cni::spec::parse_config(plugin.to_string().as_bytes()).unwrap();
        assert_eq!(conf.agent_socket.as_deref(), Some("/run/ferrite/cni.sock"));
        assert_eq!(conf.spool_dir.as_deref(), Some("/var/spool"));
        let v = conflist(Path::new("/s"), Path::new("/d"), false);
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn install_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src-ferrite");
        std::fs::write(&src, b"#!/bin/sh\n").unwrap();
        let bin = dir.path().join("bin");
        let to = install_plugin(&src, &bin).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"#!/bin/sh\n");
        install_plugin(&src, &bin).unwrap();
        let conf = install_conflist(
            &dir.path().join("net.d"),
            &bin,
            Path::new("/run/x.sock"),
            Path::new("/spool"),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(conf).unwrap()).unwrap();
        assert_eq!(
            v["plugins"].as_array().unwrap().len(),
            1,
            "no portmap in bin"
        );
        let names: Vec<_> = std::fs::read_dir(&bin)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["ferrite"], "no temp files left behind");
        let err = install_plugin(&dir.path().join("missing"), &bin).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
