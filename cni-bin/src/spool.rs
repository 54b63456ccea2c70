//! DEL requests queued while the agent is down, replayed by the agent when it is back.
//!
//! A runtime does not retry a DEL that succeeded, and a DEL that fails blocks the pod's
//! removal. So when the agent is unreachable, the plugin queues the DEL here ([`enqueue`]) and
//! reports success; the agent replays the queue when it starts ([`pending`], then [`done`]).
//!
//! One file per attachment (`del-<container id>+<ifname>.json`), written atomically: a second
//! DEL of the same attachment — containerd sends two — replaces the first. Descriptors cannot
//! be stored, so a queued request never claims a namespace (`has_netns` is false).

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::proto::Request;
use crate::spec::Command;

/// Prefix of queued requests' file names.
const PREFIX: &str = "del-";
/// Suffix of queued requests' file names.
const SUFFIX: &str = ".json";
/// Suffix [`quarantine`] gives to files that cannot be replayed.
pub const CORRUPT_SUFFIX: &str = ".corrupt";
/// Longest file name we produce (most file systems allow 255 bytes).
const MAX_NAME: usize = 200;

/// What the agent finds in the spool.
#[derive(Debug, Default)]
pub struct Pending {
    /// Requests to replay (marked `replayed`), in file-name order.
    pub requests: Vec<(PathBuf, Request)>,
    /// Files that cannot be replayed, with the reason: log them and [`quarantine`] them.
    pub corrupt: Vec<(PathBuf, String)>,
}

/// Queues a DEL: writes it to `dir` atomically (temporary file, fsync, rename, fsync of the
/// directory), replacing an earlier DEL of the same attachment. Creates `dir` (mode 0700) when
/// missing. Returns the file's path.
pub fn enqueue(dir: &Path, request: &Request) -> io::Result<PathBuf> {
    if request.command != Command::Del || request.container_id.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "only a DEL with a container ID can be queued",
        ));
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let name = file_name(&request.container_id, &request.ifname);
    let path = dir.join(&name);
    let bytes = serde_json::to_vec_pretty(&spoolable(request)).map_err(io::Error::other)?;
    let tmp = dir.join(temp_name(&name));
    if let Err(e) = write_synced(&tmp, &bytes).and_then(|()| fs::rename(&tmp, &path)) {
        // Best effort: the temporary file is ignored by `pending` anyway.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)?.sync_all()?;
    Ok(path)
}

/// Lists the queued requests in `dir` (none when it does not exist). A file that cannot be
/// read or parsed does not stop the listing; it is returned in [`Pending::corrupt`].
pub fn pending(dir: &Path) -> io::Result<Pending> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Pending::default()),
        Err(e) => return Err(e),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        {
            paths.push(entry.path());
        }
    }
    paths.sort();
    let mut found = Pending::default();
    for path in paths {
        match fs::read(&path)
            .map_err(|e| format!("cannot read it: {e}"))
            .and_then(|bytes| parse(&bytes))
        {
            Ok(request) => found.requests.push((path, request)),
            Err(reason) => found.corrupt.push((path, reason)),
        }
    }
    Ok(found)
}

/// Removes a replayed request. Removing one that is already gone is not an error.
pub fn done(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Moves a file that cannot be replayed aside (adds [`CORRUPT_SUFFIX`]), so it is kept for
/// inspection but no longer listed. Returns the new path.
pub fn quarantine(path: &Path) -> io::Result<PathBuf> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(CORRUPT_SUFFIX);
    let aside = PathBuf::from(aside);
    fs::rename(path, &aside)?;
    Ok(aside)
}

/// A queued file's request, marked as replayed, or why it cannot be replayed.
fn parse(bytes: &[u8]) -> Result<Request, String> {
    let mut request: Request =
        serde_json::from_slice(bytes).map_err(|e| format!("not a Ferrite request: {e}"))?;
    if request.command != Command::Del {
        return Err(format!(
            "only DEL requests are queued, this is {:?}",
            request.command
        ));
    }
    request.replayed = true;
    Ok(request)
}

/// The request as it can be stored: without a namespace descriptor.
fn spoolable(request: &Request) -> Request {
    Request {
        has_netns: false,
        replayed: false,
        ..request.clone()
    }
}

/// `del-<container id>+<ifname>.json`, escaped so that any input gives a safe, distinct name;
/// over-long names are shortened with a hash of the whole.
fn file_name(container_id: &str, ifname: &str) -> String {
    let name = format!(
        "{PREFIX}{}+{}{SUFFIX}",
        escape(container_id),
        escape(ifname)
    );
    if name.len() <= MAX_NAME {
        return name;
    }
    let keep = MAX_NAME - PREFIX.len() - SUFFIX.len() - 17;
    let mut cut = name.len().min(PREFIX.len() + keep);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = fnv1a(format!("{container_id}\0{ifname}").as_bytes());
    format!("{}-{hash:016x}{SUFFIX}", &name[..cut])
}

/// Keeps `[A-Za-z0-9_.-]` and writes every other byte as `%XX`, so names cannot collide,
/// climb directories, or be hidden files (a leading `.` is escaped too).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0);
        if plain {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// FNV-1a, 64 bit: a stable hash (std's is not guaranteed stable across releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A hidden name, unique to this process and call, for the file before its rename.
fn temp_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".tmp-{}-{n}-{name}", std::process::id())
}

/// Creates `path` (mode 0600, must not exist), writes `bytes` and flushes them to disk.
fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::client::tests::{del_request, gc_request};

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_queued_del_is_listed_for_replay_without_a_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("a/b/pending-del");
        let mut request = del_request();
        request.has_netns = true;
        request.netns_path = "/run/netns/x".into();
        let path = enqueue(&spool, &request).unwrap();
        assert_eq!(
            fs::metadata(&spool).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let found = pending(&spool).unwrap();
        assert!(found.corrupt.is_empty());
        assert_eq!(found.requests.len(), 1);
        let (listed, replay) = &found.requests[0];
        assert_eq!(listed, &path);
        assert!(replay.replayed);
        assert!(!replay.has_netns, "a descriptor cannot be queued");
        assert_eq!(replay.netns_path, "/run/netns/x");
        assert_eq!(replay.container_id, "c1");
        done(&path).unwrap();
        done(&path).unwrap();
        assert!(pending(&spool).unwrap().requests.is_empty());
    }

    #[test]
    fn a_second_del_of_the_same_attachment_replaces_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = del_request();
        first.netns_path = "/run/netns/first".into();
        let second = del_request();
        let a = enqueue(dir.path(), &first).unwrap();
        let b = enqueue(dir.path(), &second).unwrap();
        assert_eq!(a, b);
        assert_eq!(names(dir.path()), vec!["del-c1+eth0.json".to_owned()]);
        let found = pending(dir.path()).unwrap();
        assert_eq!(found.requests[0].1.netns_path, "");
        let mut other = del_request();
        other.ifname = "net1".into();
        enqueue(dir.path(), &other).unwrap();
        assert_eq!(pending(dir.path()).unwrap().requests.len(), 2);
    }

    #[test]
    fn only_dels_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let err = enqueue(dir.path(), &gc_request(1)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn corrupt_files_are_reported_not_fatal_and_can_be_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        enqueue(dir.path(), &del_request()).unwrap();
        fs::write(dir.path().join("del-bad+eth0.json"), b"{\"command\":").unwrap();
        let mut add = del_request();
        add.command = Command::Add;
        fs::write(
            dir.path().join("del-add+eth0.json"),
            serde_json::to_vec(&add).unwrap(),
        )
        .unwrap();
        // Not ours: ignored entirely.
        fs::write(dir.path().join(".tmp-1-0-del-c1+eth0.json"), b"partial").unwrap();
        fs::write(dir.path().join("README"), b"x").unwrap();

        let found = pending(dir.path()).unwrap();
        assert_eq!(found.requests.len(), 1);
        assert_eq!(found.corrupt.len(), 2);
        let reasons: Vec<&str> = found.corrupt.iter().map(|(_, r)| r.as_str()).collect();
        assert!(
            reasons.iter().any(|r| r.contains("only DEL")),
            "{reasons:?}"
        );
        assert!(reasons.iter().any(|r| r.contains("EOF")), "{reasons:?}");

        for (path, _) in &found.corrupt {
            let aside = quarantine(path).unwrap();
            assert!(aside.to_string_lossy().ends_with(".json.corrupt"));
        }
        let again = pending(dir.path()).unwrap();
        assert_eq!((again.requests.len(), again.corrupt.len()), (1, 0));
    }

    #[test]
    fn a_missing_spool_has_nothing_pending() {
        let dir = tempfile::tempdir().unwrap();
        let found = pending(&dir.path().join("never-created")).unwrap();
        assert!(found.requests.is_empty() && found.corrupt.is_empty());
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(file_name("abc", "eth0"), "del-abc+eth0.json");
        assert_eq!(file_name("a.b_c-d", "eth0"), "del-a.b_c-d+eth0.json");
        // Separator and escape characters inside the parts are escaped, so no two
        // attachments share a name.
        assert_ne!(file_name("a+b", "c"), file_name("a", "b+c"));
        assert_eq!(file_name("a", "b+c"), "del-a+b%2Bc.json");
        assert_eq!(file_name("..", "x"), "del-%2E.+x.json");
        assert!(!file_name("../../etc/passwd", "x").contains('/'));
        let long = "x".repeat(300);
        let a = file_name(&long, "eth0");
        let b = file_name(&long, "eth1");
        assert!(a.len() <= MAX_NAME, "{}", a.len());
        assert_ne!(a, b);
        assert!(a.starts_with("del-") && a.ends_with(".json"));
        let multibyte = "é".repeat(100);
        assert!(file_name(&multibyte, "eth0").len() <= MAX_NAME);
    }
}
